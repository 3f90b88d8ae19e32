"""The portable build against a -march=native build: fit epochs, the GEMM, elementwise ops.

Each build is a directory holding the steepest package (pip install --target DIR), given
as NAME=DIR; STEEPEST_CPU_ISA=LEVEL may follow (NAME=DIR:LEVEL) to time a lower level of
the portable build. The cases are those of fit_vs_torch.py (its digits-mlp, digits-cnn
and wide-mlp models, AdamW), float32 products (square, and the forward X·W and the weight
gradient Xᵀ·G of a 1024-wide layer at batch 256, Xᵀ passed as a view) and exp, tanh and
gelu on 4M elements, gelu also through the autograd.

Times are CPU seconds of one thread (time.process_time), best of the rounds: on a shared
machine the wall clock mostly measures the other jobs, while the CPU time of a
single-threaded process does not count the time it waits. The builds run in turns, one
worker process per build per round.

    pip install --target /tmp/site_default .
    STEEPEST_NATIVE=ON pip install --target /tmp/site_native .
    python benchmarks/portable_vs_native.py default=/tmp/site_default native=/tmp/site_native
"""

import argparse
import json
import os
import subprocess
import sys
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
PRODUCTS = {
    "512³": ((512, 512, 512), False),
    "1024³": ((1024, 1024, 1024), False),
    "X·W 256×1024×1024": ((256, 1024, 1024), False),
    "Xᵀ·G 1024×256×1024": ((1024, 256, 1024), True),
}
ELEMENTS = 4 * 1024 * 1024


def best_of(fn, reps):
    fn()
    times = []
    for _ in range(reps):
        t0 = time.process_time()
        fn()
        times.append(time.process_time() - t0)
    return min(times)


def worker():
    sys.path.insert(0, HERE)
    # fit_vs_torch times its epochs with perf_counter: make that the process's CPU time.
    time.perf_counter = time.process_time
    import fit_vs_torch
    import steepest as st

    st.set_num_threads(1)
    out = {"cpu_isa": st.backends()["cpu_isa"]}
    for case in ("digits-mlp", "digits-cnn", "wide-mlp"):
        x, y = fit_vs_torch.load_data(case, st)
        epochs = 2 if case == "wide-mlp" else 3
        times, _ = fit_vs_torch.run_steepest(case, x, y, epochs, 1, "float32")
        out[f"fit {case} (s/epoch)"] = min(times)
    rng = np.random.default_rng(0)

    def matrix(*shape):
        return st.tensor(rng.standard_normal(shape).astype(np.float32))

    for name, ((m, k, n), transposed) in PRODUCTS.items():
        a = matrix(k, m).T if transposed else matrix(m, k)
        b = matrix(k, n)
        seconds = best_of(lambda: st.ops.matmul(a, b), 5)
        out[f"GEMM {name} (GFLOP/s)"] = 2 * m * k * n / seconds / 1e9
    x = matrix(ELEMENTS)
    for name in ("exp", "tanh", "gelu"):
        fn = getattr(st.ops, name)
        out[f"{name} 4M (ms)"] = best_of(lambda: fn(x), 7) * 1e3
    xg = st.tensor(rng.standard_normal(ELEMENTS).astype(np.float32), requires_grad=True)
    out["gelu fwd+bwd 4M (ms)"] = best_of(lambda: st.ops.gelu(xg).sum().backward(), 7) * 1e3
    print(json.dumps(out))


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("builds", nargs="*", help="NAME=DIR or NAME=DIR:LEVEL")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--worker", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        return worker()
    if len(args.builds) < 2:
        parser.error("give at least two builds, e.g. default=DIR native=DIR")
    builds = {}
    for spec in args.builds:
        name, _, where = spec.partition("=")
        directory, _, level = where.partition(":")
        builds[name] = (directory, level)
    results = {name: [] for name in builds}
    for _ in range(args.rounds):
        for name, (directory, level) in builds.items():
            env = dict(os.environ, PYTHONPATH=directory, OMP_NUM_THREADS="1")
            env.pop("STEEPEST_CPU_ISA", None)
            if level:
                env["STEEPEST_CPU_ISA"] = level
            done = subprocess.run([sys.executable, __file__, "--worker"], env=env, check=True,
                                  capture_output=True, text=True)
            results[name].append(json.loads(done.stdout.strip().splitlines()[-1]))
    names = list(builds)
    keys = [k for k in results[names[0]][0] if k != "cpu_isa"]
    header = [f"{n} ({results[n][0]['cpu_isa']})" for n in names]
    print("| case | " + " | ".join(header) + f" | {names[0]} vs {names[1]} |")
    print("| --- " * (len(names) + 2) + "|")
    for key in keys:
        rate = "GFLOP/s" in key  # higher is better; times: lower is better
        pick = max if rate else min
        values = [pick(r[key] for r in results[n]) for n in names]
        change = values[0] / values[1] - 1 if rate else values[1] / values[0] - 1
        cells = " | ".join(f"{v:.3g}" for v in values)
        print(f"| {key} | {cells} | {100 * change:+.1f}% |")


if __name__ == "__main__":
    main()
