"""Seconds per training epoch: steepest ``model.fit`` vs a plain PyTorch training loop.

Same data, same architecture, same optimizer (AdamW, lr 1e-3, betas (0.9, 0.999), eps 1e-8,
weight decay 0.01), same batch size, same thread count. Cases:

    digits-mlp  8x8 digits (1,437 training rows), 64-256-256-10 relu MLP, batch 32
    digits-cnn  8x8 digits as (1, 8, 8) images, the `steepest train` CNN, batch 32
    wide-mlp    8,192 random rows, 1024-1024-1024-10 relu MLP, batch 256

steepest runs ``model.fit(x, y, epochs=1, verbose=0)`` once per epoch (so per-call setup is
counted against it); torch runs an eager loop over a ``torch.randperm`` permutation with
``model.train()``, ``zero_grad(set_to_none=True)``, ``backward()``, ``step()``. One warm-up
epoch, then the median of --epochs timed epochs. Each (framework, case) runs in its own
subprocess so the peak RSS (``ru_maxrss``) of one is not inflated by the other.
torch is optional: without it only steepest is reported.

--precision mixed_bfloat16 (or mixed_float16) trains steepest under that policy
(st.mixed_precision) and torch under torch.autocast("cpu", dtype=...), with float32
master weights on both sides; the targets are those of float32. (torch's CPU autocast
has no loss scaling; with mixed_float16 steepest scales its loss, torch does not.)

    python benchmarks/fit_vs_torch.py                     # all cases, 3 epochs, 2 threads
    python benchmarks/fit_vs_torch.py --cases digits-mlp --epochs 5
    python benchmarks/fit_vs_torch.py --precision mixed_bfloat16
"""

import argparse
import importlib.util
import json
import os
import resource
import statistics
import subprocess
import sys
import time

import numpy as np

BATCH = {"digits-mlp": 32, "digits-cnn": 32, "wide-mlp": 256}
# Minimum torch/steepest time ratio each case should reach.
TARGET = {"digits-mlp": 3.0, "digits-cnn": 1.5, "wide-mlp": 1.0}
WIDE_ROWS, WIDE_DIM = 8192, 1024
ADAMW = {
    "learning_rate": 1e-3, "beta_1": 0.9, "beta_2": 0.999, "epsilon": 1e-8, "weight_decay": 0.01,
}


def import_steepest():
    try:
        import steepest as st
    except ImportError:  # not installed: use the in-place build under python/
        sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
        import steepest as st
    return st


def load_data(case, st):
    """(x, y) training arrays of a case; identical for both frameworks."""
    if case == "wide-mlp":
        rng = np.random.default_rng(0)
        x = rng.standard_normal((WIDE_ROWS, WIDE_DIM), dtype=np.float32)
        y = rng.integers(0, 10, WIDE_ROWS, dtype=np.int64)
        return x, y
    (x, y), _ = st.datasets.load_digits(flatten=case == "digits-mlp")
    return x, y


def run_steepest(case, x, y, epochs, threads, precision):
    st = import_steepest()
    from steepest.cli import build_model

    st.set_num_threads(threads)
    st.mixed_precision.set_global_policy(precision)
    st.manual_seed(0)
    if case == "wide-mlp":
        L = st.layers
        model = st.Sequential([
            L.Input((WIDE_DIM,)),
            L.Dense(WIDE_DIM, activation="relu"),
            L.Dense(WIDE_DIM, activation="relu"),
            L.Dense(10),
        ])
    else:
        model = build_model(case.split("-")[1])
    # No metrics: the torch loop computes none either, only the epoch's mean loss.
    model.compile(optimizer=st.optimizers.AdamW(**ADAMW), loss="sparse_categorical_crossentropy")
    times, loss = [], float("nan")
    for epoch in range(epochs + 1):
        t0 = time.perf_counter()
        history = model.fit(x, y, batch_size=BATCH[case], epochs=1, verbose=0, seed=epoch)
        times.append(time.perf_counter() - t0)
        loss = history.history["loss"][-1]
    return times[1:], loss


def run_torch(case, x, y, epochs, threads, precision):
    import torch
    import torch.nn.functional as F
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    if case == "digits-cnn":
        model = nn.Sequential(
            nn.Conv2d(1, 32, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Conv2d(32, 64, 3, padding=1), nn.ReLU(), nn.MaxPool2d(2),
            nn.Flatten(), nn.Linear(64 * 2 * 2, 64), nn.ReLU(), nn.Linear(64, 10),
        )
    else:
        d_in, width = (WIDE_DIM, WIDE_DIM) if case == "wide-mlp" else (64, 256)
        model = nn.Sequential(
            nn.Linear(d_in, width), nn.ReLU(), nn.Linear(width, width), nn.ReLU(),
            nn.Linear(width, 10),
        )
    optimizer = torch.optim.AdamW(
        model.parameters(), lr=ADAMW["learning_rate"], betas=(ADAMW["beta_1"], ADAMW["beta_2"]),
        eps=ADAMW["epsilon"], weight_decay=ADAMW["weight_decay"],
    )
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    n, batch = len(xt), BATCH[case]
    generator = torch.Generator().manual_seed(0)

    compute = {"float32": None, "mixed_bfloat16": torch.bfloat16,
               "mixed_float16": torch.float16}[precision]

    def epoch():
        model.train()
        total = 0.0
        perm = torch.randperm(n, generator=generator)
        for start in range(0, n, batch):
            idx = perm[start:start + batch]
            optimizer.zero_grad(set_to_none=True)
            with torch.autocast("cpu", dtype=compute or torch.bfloat16, enabled=compute is not None):
                logits = model(xt[idx])
            loss = F.cross_entropy(logits.float(), yt[idx])
            loss.backward()
            optimizer.step()
            total += loss.item() * len(idx)
        return total / n

    times, loss = [], float("nan")
    for _ in range(epochs + 1):
        t0 = time.perf_counter()
        loss = epoch()
        times.append(time.perf_counter() - t0)
    return times[1:], loss


def worker(framework, case, epochs, threads, precision):
    """Runs one case in this process and prints its result as one JSON line."""
    x, y = load_data(case, import_steepest())
    run = run_steepest if framework == "steepest" else run_torch
    times, loss = run(case, x, y, epochs, threads, precision)
    # Linux reports ru_maxrss in KiB.
    rss_mib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024
    print(json.dumps({"times": times, "loss": loss, "rss_mib": rss_mib}))


def measure(framework, case, epochs, threads, precision):
    cmd = [sys.executable, os.path.abspath(__file__), "--worker", framework, case,
           "--epochs", str(epochs), "--threads", str(threads), "--precision", precision]
    proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
    if proc.returncode != 0:
        raise RuntimeError(f"{framework} {case} failed (exit {proc.returncode}):\n{proc.stderr}")
    result = json.loads(proc.stdout.strip().splitlines()[-1])
    result["median"] = statistics.median(result["times"])
    return result


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--cases", default=",".join(BATCH),
                   help=f"comma-separated cases (default: {','.join(BATCH)})")
    p.add_argument("--epochs", type=int, default=3,
                   help="timed epochs after one warm-up; the median is reported (default 3)")
    p.add_argument("--threads", type=int, default=2, help="threads for both (default 2)")
    p.add_argument("--precision", default="float32",
                   choices=["float32", "mixed_bfloat16", "mixed_float16"],
                   help="steepest's policy; torch autocasts to the same 16-bit type")
    p.add_argument("--no-torch", action="store_true", help="skip the torch baseline")
    p.add_argument("--strict", action="store_true", help="exit 1 if a target is missed")
    p.add_argument("--worker", nargs=2, metavar=("FRAMEWORK", "CASE"), help=argparse.SUPPRESS)
    args = p.parse_args(argv)

    cases = [c.strip() for c in args.cases.split(",") if c.strip()]
    unknown = [c for c in cases if c not in BATCH]
    if unknown:
        p.error(f"unknown case(s) {', '.join(unknown)}; choose from {', '.join(BATCH)}")
    if args.epochs < 1 or args.threads < 1:
        p.error("--epochs and --threads must be at least 1")
    if args.worker:
        worker(args.worker[0], args.worker[1], args.epochs, args.threads, args.precision)
        return 0

    # Only looked up, not imported: Linux carries ru_maxrss across fork/exec, so a parent
    # holding torch's few hundred MiB would show up in every worker's peak RSS.
    have_torch = not args.no_torch and importlib.util.find_spec("torch") is not None
    if not args.no_torch and not have_torch:
        print("torch not installed: reporting steepest only")

    print(f"AdamW, {args.precision}, {args.threads} thread(s), median of {args.epochs} epoch(s) "
          "after 1 warm-up, each run in its own process")
    # With a core taken by another process, an OpenMP barrier can wait a whole scheduler
    # time slice: seconds per epoch then swing by 10-100x and say nothing about the code.
    load = os.getloadavg()[0]
    if load >= (os.cpu_count() or 1):
        print(f"warning: load average {load:.1f} on {os.cpu_count()} CPUs: the machine is busy "
              "and these timings are unreliable; rerun when it is idle")
    header = f"{'case':11s} {'batch':>5s} {'steepest s/ep':>13s} {'RSS MiB':>8s} {'loss':>7s}"
    if have_torch:
        header += (f" {'torch s/ep':>10s} {'RSS MiB':>8s} {'loss':>7s}"
                   f" {'torch/steepest':>14s} {'target':>7s}")
    print(header)
    all_met = True
    for case in cases:
        s = measure("steepest", case, args.epochs, args.threads, args.precision)
        line = (f"{case:11s} {BATCH[case]:5d} {s['median']:13.4f} {s['rss_mib']:8.0f} "
                f"{s['loss']:7.4f}")
        if have_torch:
            t = measure("torch", case, args.epochs, args.threads, args.precision)
            ratio = t["median"] / s["median"]
            met = ratio >= TARGET[case]
            all_met &= met
            line += (f" {t['median']:10.4f} {t['rss_mib']:8.0f} {t['loss']:7.4f}"
                     f" {ratio:13.2f}x {'>=' + format(TARGET[case], 'g') + 'x':>7s}"
                     f" {'' if met else 'MISSED'}")
        print(line, flush=True)
    return 1 if args.strict and not all_met else 0


if __name__ == "__main__":
    sys.exit(main())
