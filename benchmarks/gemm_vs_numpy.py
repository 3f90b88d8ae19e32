"""float32 GEMM throughput: steepest vs numpy (OpenBLAS) vs PyTorch, same run, same threads.

Square products 128…2048 and the tall-skinny products of training at width 1024 (batch
32 and 256: forward X·W, dX = G·Wᵀ, dW = Xᵀ·G, transposes passed as views), on 1 and 2
threads. Each library runs in its own worker process so that no two thread pools share
one process; the rounds interleave the three workers and the table reports medians, so a
burst of load on a shared machine hits all three alike.

numpy's worker starts with OPENBLAS_CORETYPE and OPENBLAS_L2_SIZE removed from its
environment (numpy reads them at import; some machines pin an older, safer kernel with
them) so the comparison is against OpenBLAS's best kernel for this CPU; threadpoolctl
reports which one it runs. Thread counts: OMP_NUM_THREADS, OPENBLAS_NUM_THREADS and
MKL_NUM_THREADS in every worker, plus threadpool_limits / torch.set_num_threads /
st.set_num_threads.

    python benchmarks/gemm_vs_numpy.py                 # full table, 1 and 2 threads
    python benchmarks/gemm_vs_numpy.py --threads 1 --rounds 5 --sizes 512 1024
    python benchmarks/gemm_vs_numpy.py --against /tmp/old-site   # A/B two builds

The st/np column is the median over rounds of each round's own ratio (the two libraries
timed back to back), with the lowest and highest round's ratio beside it: on a loaded
machine that paired ratio is steadier than the ratio of the medians. --clock cpu times the
worker's CPU seconds instead of wall-clock ones, which a busy machine disturbs less; use it
with one thread (with more, it counts the seconds threads spend waiting at barriers).
--best makes each round report its fastest call, the one least disturbed by other work.
--against SITE adds a worker running the steepest installed in SITE (a --target
directory), so a change to the GEMM is compared with the build before it in the same run.

Peak FLOP/s = threads × FMA units × fp32 lanes × 2 × clock; the clock is --clock-ghz, or
"cpu MHz" from /proc/cpuinfo (the base clock: pass the measured boost clock for a true
fraction).
"""

import argparse
import json
import os
import statistics
import subprocess
import sys
import time

LIBRARIES = ("steepest", "numpy", "torch")
# Variables that make numpy's OpenBLAS pick a kernel other than its best for this CPU.
OPENBLAS_OVERRIDES = ("OPENBLAS_CORETYPE", "OPENBLAS_L2_SIZE")


# --- worker side ---------------------------------------------------------------------


def _library_info(lib):
    if lib == "numpy":
        import numpy as np
        from threadpoolctl import threadpool_info

        pools = [f"{p.get('internal_api')} {p.get('version')} kernel={p.get('architecture')} "
                 f"threads={p.get('num_threads')}" for p in threadpool_info()]
        return f"numpy {np.__version__}: " + "; ".join(pools)
    if lib == "torch":
        import torch

        return (f"torch {torch.__version__}: threads={torch.get_num_threads()} "
                f"mkl={torch.backends.mkl.is_available()}")
    import steepest as st

    return f"steepest {st.__version__}: threads={st.get_num_threads()} {json.dumps(st.backends())}"


def _make_matmul(lib, threads):
    """Returns (make(shape_a, shape_b, trans_a, trans_b) -> operands, matmul(a, b))."""
    import numpy as np

    rng = np.random.default_rng(0)

    def values(shape, trans):
        # A transposed operand is stored transposed and passed as a view.
        stored = rng.standard_normal(shape[::-1] if trans else shape).astype(np.float32)
        return stored, trans

    if lib == "numpy":
        from threadpoolctl import threadpool_limits

        threadpool_limits(threads)

        def make(sa, sb, ta, tb):
            (a, _), (b, _) = values(sa, ta), values(sb, tb)
            return (a.T if ta else a), (b.T if tb else b)

        return make, np.matmul
    if lib == "torch":
        import torch

        torch.set_num_threads(threads)

        def make(sa, sb, ta, tb):
            (a, _), (b, _) = values(sa, ta), values(sb, tb)
            a, b = torch.from_numpy(a), torch.from_numpy(b)
            return (a.T if ta else a), (b.T if tb else b)

        return make, torch.matmul
    import steepest as st

    st.set_num_threads(threads)

    def make(sa, sb, ta, tb):
        (a, _), (b, _) = values(sa, ta), values(sb, tb)
        a, b = st.tensor(a, dtype="float32"), st.tensor(b, dtype="float32")
        return (a.T if ta else a), (b.T if tb else b)

    return make, st.ops.matmul


def run_worker(lib, threads, clock):
    """Answers one JSON request per stdin line: info, or time a product `reps` times."""
    make, matmul = _make_matmul(lib, threads)
    now = time.process_time if clock == "cpu" else time.perf_counter
    operands = {}
    for line in sys.stdin:
        req = json.loads(line)
        if req["op"] == "info":
            reply = {"info": _library_info(lib)}
        else:
            key = (tuple(req["a"]), tuple(req["b"]), req["ta"], req["tb"])
            if key not in operands:
                operands[key] = make(*key)
                for _ in range(3):
                    matmul(*operands[key])
            a, b = operands[key]
            times = []
            for _ in range(req["reps"]):
                t0 = now()
                matmul(a, b)
                times.append(now() - t0)
            reply = {"seconds": min(times) if req.get("best") else sum(times) / len(times)}
        sys.stdout.write(json.dumps(reply) + "\n")
        sys.stdout.flush()


# --- coordinator side -----------------------------------------------------------------


class Worker:
    """A benchmark worker process for one library at one thread count."""

    def __init__(self, script, lib, threads, extra_env=None, clock=None):
        env = dict(os.environ)
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            env[name] = str(threads)
        # steepest sets libgomp's barrier spin to 10,000 at import (see its __init__); torch
        # uses libgomp too and gets the same, so both wait alike when cores are shared.
        env.setdefault("GOMP_SPINCOUNT", "10000")
        if lib == "numpy":
            for name in OPENBLAS_OVERRIDES:
                env.pop(name, None)
        env.update(extra_env or {})
        # Only this script's workers take --clock (other benchmarks reuse Worker).
        clock_args = ["--clock", clock] if clock else []
        self.proc = subprocess.Popen(
            [sys.executable, script, "--worker", lib, "--threads", str(threads)] + clock_args,
            stdin=subprocess.PIPE, stdout=subprocess.PIPE, text=True, env=env)

    def ask(self, **request):
        self.proc.stdin.write(json.dumps(request) + "\n")
        self.proc.stdin.flush()
        line = self.proc.stdout.readline()
        if not line:
            raise RuntimeError(f"benchmark worker {self.proc.args} exited")
        return json.loads(line)

    def close(self):
        self.proc.stdin.close()
        self.proc.wait()


def interleaved_samples(workers, request, rounds, min_seconds, pause, best=False):
    """Seconds per call of each worker in each round, timing them in turn round after round.

    `pause` lets the previous library's idle threads stop spinning before the next one is
    timed: OpenBLAS keeps a core busy for about 0.1 s after every call (measured), which
    would otherwise land on the next library's two-thread run."""
    first = workers[0].ask(**request, reps=1)["seconds"]
    reps = max(1, int(min_seconds / max(first, 1e-9)))
    samples = {i: [] for i in range(len(workers))}
    for r in range(rounds):
        order = list(range(len(workers)))
        order = order[r % len(order):] + order[:r % len(order)]
        for i in order:
            time.sleep(pause)
            samples[i].append(workers[i].ask(**request, reps=reps, best=best)["seconds"])
    return [samples[i] for i in range(len(workers))]


def interleaved_medians(workers, request, rounds, min_seconds, pause):
    """Median seconds per call for each worker (see interleaved_samples)."""
    return [statistics.median(s)
            for s in interleaved_samples(workers, request, rounds, min_seconds, pause)]


def paired_ratio(faster, slower):
    """Median, min and max over rounds of slower/faster seconds (a speed ratio)."""
    ratios = [s / f for f, s in zip(faster, slower)]
    return statistics.median(ratios), min(ratios), max(ratios)


def cpu_peak_gflops(threads, clock_ghz, fma_units):
    flags, mhz = "", None
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags") and not flags:
                    flags = line
                if line.startswith("cpu MHz") and mhz is None:
                    mhz = float(line.split(":")[1])
    except OSError:
        pass
    lanes = 16 if "avx512f" in flags else 8 if "avx2" in flags else 4
    ghz = clock_ghz or (mhz / 1000 if mhz else None)
    if ghz is None:
        return None, "clock unknown"
    source = "--clock-ghz" if clock_ghz else "/proc/cpuinfo"
    peak = threads * fma_units * lanes * 2 * ghz
    return peak, f"{threads} thr × {fma_units} FMA × {lanes} lanes × 2 × {ghz:.2f} GHz ({source})"


def layer_cases(rows, fan_in, fan_out):
    """Y = X·W, dX = G·Wᵀ (W stored fan_in×fan_out), dW = Xᵀ·G (X stored rows×fan_in)."""
    return [
        (f"fwd  X·W   {rows}x{fan_in}·{fan_in}x{fan_out}", (rows, fan_in), (fan_in, fan_out),
         False, False),
        (f"dX = G·Wᵀ  {rows}x{fan_out}·({fan_in}x{fan_out})ᵀ", (rows, fan_out),
         (fan_out, fan_in), False, True),
        (f"dW = Xᵀ·G  ({rows}x{fan_in})ᵀ·{rows}x{fan_out}", (fan_in, rows), (rows, fan_out),
         True, False),
    ]


# The GPT of benchmarks/gpt_step.py (batch 16 × context 128 rows, d_model 192): the fused
# QKV projection, the MLP's up and down projections.
GPT_LAYERS = ((2048, 192, 576), (2048, 192, 768), (2048, 768, 192))


def gemm_cases(sizes, batches, width, gpt=False):
    """(label, op(A) shape, op(B) shape, trans_a, trans_b) of every product measured."""
    cases = [(f"{n}x{n}x{n}", (n, n), (n, n), False, False) for n in sizes]
    for b in batches:
        cases += layer_cases(b, width, width)
    if gpt:
        for layer in GPT_LAYERS:
            cases += layer_cases(*layer)
    return cases


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--threads", type=int, nargs="+", default=[1, 2])
    parser.add_argument("--sizes", type=int, nargs="*", default=[128, 256, 512, 1024, 2048])
    parser.add_argument("--batches", type=int, nargs="*", default=[32, 256])
    parser.add_argument("--width", type=int, default=1024)
    parser.add_argument("--gpt", action="store_true",
                        help="add the GPT step's projections (forward and both gradients)")
    parser.add_argument("--rounds", type=int, default=7)
    parser.add_argument("--min-seconds", type=float, default=0.05,
                        help="time per timed batch of calls")
    parser.add_argument("--pause", type=float, default=0.25,
                        help="idle seconds before each timed batch")
    parser.add_argument("--clock-ghz", type=float, default=None)
    parser.add_argument("--fma-units", type=int, default=2)
    parser.add_argument("--clock", choices=("wall", "cpu"), default="wall")
    parser.add_argument("--best", action="store_true",
                        help="each round reports its fastest call instead of the mean")
    parser.add_argument("--against", metavar="SITE",
                        help="also time the steepest installed in this directory")
    parser.add_argument("--worker", choices=LIBRARIES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.worker:
        run_worker(args.worker, args.threads[0], args.clock)
        return

    script = os.path.abspath(__file__)
    for threads in args.threads:
        workers = [Worker(script, lib, threads, clock=args.clock) for lib in LIBRARIES]
        if args.against:
            path = os.pathsep.join(p for p in (os.path.abspath(args.against),
                                               os.environ.get("PYTHONPATH")) if p)
            workers.append(Worker(script, "steepest", threads, {"PYTHONPATH": path},
                                  args.clock))
        try:
            print(f"\n== float32 GEMM, {threads} thread(s), {args.clock} clock, "
                  f"median of {args.rounds} rounds")
            for w in workers:
                print("  " + w.ask(op="info")["info"])
            peak, how = cpu_peak_gflops(threads, args.clock_ghz, args.fma_units)
            if peak:
                print(f"  peak {peak:.0f} GFLOP/s = {how}")
            against = f" {'st@base':>9} {'st/base (min-max)':>19}" if args.against else ""
            print(f"  {'product':34} {'steepest':>9} {'numpy':>9} {'torch':>9}"
                  f" {'st/np (min-max)':>17} {'st/torch':>8} {'st %peak':>8}{against}"
                  "   (GFLOP/s)")
            for name, sa, sb, ta, tb in gemm_cases(args.sizes, args.batches, args.width,
                                                  args.gpt):
                (m, k), n = sa, sb[1]
                request = {"op": "time", "a": list(sa), "b": list(sb), "ta": ta, "tb": tb}
                samples = interleaved_samples(workers, request, args.rounds, args.min_seconds,
                                              args.pause, args.best)
                gflops = [2.0 * m * n * k / statistics.median(s) / 1e9 for s in samples]
                frac = f"{100 * gflops[0] / peak:7.1f}%" if peak else ""
                ratio, low, high = paired_ratio(samples[0], samples[1])
                line = (f"  {name:34} {gflops[0]:9.1f} {gflops[1]:9.1f} {gflops[2]:9.1f}"
                        f" {ratio:5.2f} ({low:4.2f}-{high:4.2f})"
                        f" {statistics.median(samples[2]) / statistics.median(samples[0]):8.2f}"
                        f" {frac:>8}")
                if args.against:
                    ratio, low, high = paired_ratio(samples[0], samples[3])
                    line += f" {gflops[3]:9.1f}   {ratio:5.3f} ({low:4.2f}-{high:4.2f})"
                print(line, flush=True)
        finally:
            for w in workers:
                w.close()


if __name__ == "__main__":
    main()
