"""The cost of Python parts inside fit's C++ loop, in ms per training step.

The digits MLP (64-256-256-10, relu, AdamW, batch 32, 1,437 rows: 45 steps an epoch),
trained by ``model.fit`` as

    builtin       built-in Dense layers and the built-in sparse cross-entropy
    python-dense  the second hidden Dense replaced by the same layer written in Python
                  (st.layers.Layer subclass: x @ kernel + bias, relu): the loop takes the
                  GIL for its forward once a step
    python-loss   built-in layers, the loss a Python function fn(y_true, y_pred) calling
                  st.ops.cross_entropy

and the same model in a plain PyTorch eager loop (torch is optional). Every variant
runs in this process with the same thread count; the rounds interleave the variants
and each timing is preceded by a pause, so that the other library's OpenMP workers
have stopped spinning. Reported per step (one epoch's time / steps): the median and the
minimum over rounds of the wall time, and the median of the process CPU time (all
threads), which a loaded machine disturbs less.

    python benchmarks/python_layer.py
    python benchmarks/python_layer.py --threads 2 --rounds 7
"""

import argparse
import os
import statistics
import sys
import time

import numpy as np

try:
    import steepest as st
except ImportError:  # not installed: use the in-place build under python/
    sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "..", "python"))
    import steepest as st

from steepest import ops

BATCH = 32
ADAMW = {"learning_rate": 1e-3, "weight_decay": 0.01}


class PyDense(st.layers.Layer):
    def __init__(self, units, **kwargs):
        super().__init__(**kwargs)
        self.units = units

    def build(self, input_shape):
        self.kernel = self.add_weight((input_shape[-1], self.units), name="kernel")
        self.bias = self.add_weight((self.units,), initializer="zeros", name="bias")

    def compute_output_shape(self, input_shape):
        return (*input_shape[:-1], self.units)

    def call(self, x, training=None):
        return ops.relu(x @ self.kernel + self.bias)


def python_ce(y_true, y_pred):
    return ops.cross_entropy(y_pred, y_true)


def steepest_model(variant):
    L = st.layers
    st.manual_seed(0)
    second = PyDense(256) if variant == "python-dense" else L.Dense(256, activation="relu")
    model = st.Sequential([L.Input((64,)), L.Dense(256, activation="relu"), second, L.Dense(10)])
    loss = python_ce if variant == "python-loss" else "sparse_categorical_crossentropy"
    model.compile(st.optimizers.AdamW(**ADAMW), loss)
    return model


def torch_epoch_runner(x, y, threads):
    import torch
    from torch import nn

    torch.set_num_threads(threads)
    torch.manual_seed(0)
    model = nn.Sequential(nn.Linear(64, 256), nn.ReLU(), nn.Linear(256, 256), nn.ReLU(), nn.Linear(256, 10))
    optimizer = torch.optim.AdamW(model.parameters(), lr=ADAMW["learning_rate"],
                                  weight_decay=ADAMW["weight_decay"])
    xt, yt = torch.from_numpy(x), torch.from_numpy(y)
    generator = torch.Generator().manual_seed(0)

    def epoch():
        perm = torch.randperm(len(xt), generator=generator)
        for start in range(0, len(xt), BATCH):
            idx = perm[start:start + BATCH]
            optimizer.zero_grad(set_to_none=True)
            loss = torch.nn.functional.cross_entropy(model(xt[idx]), yt[idx])
            loss.backward()
            optimizer.step()

    return epoch


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--rounds", type=int, default=7)
    p.add_argument("--pause", type=float, default=0.5, help="seconds of idling before each timing")
    p.add_argument("--no-torch", action="store_true")
    args = p.parse_args(argv)

    (x, y), _ = st.datasets.load_digits()
    x, y = np.ascontiguousarray(x, np.float32), y.astype(np.int64)
    steps = (len(x) + BATCH - 1) // BATCH
    st.set_num_threads(args.threads)
    runners = {}
    for variant in ("builtin", "python-dense", "python-loss"):
        model = steepest_model(variant)
        runners[variant] = (lambda m: lambda: m.fit(x, y, batch_size=BATCH, epochs=1, verbose=0))(model)
    if not args.no_torch:
        try:
            runners["torch"] = torch_epoch_runner(x, y, args.threads)
        except ImportError:
            print("torch not installed: reporting steepest only")
    for run in runners.values():  # warm-up epoch
        run()
    wall = {name: [] for name in runners}
    cpu = {name: [] for name in runners}
    for _ in range(args.rounds):
        for name, run in runners.items():
            time.sleep(args.pause)
            t0, c0 = time.perf_counter(), time.process_time()
            run()
            wall[name].append((time.perf_counter() - t0) / steps * 1e3)
            cpu[name].append((time.process_time() - c0) / steps * 1e3)

    def stats(name):
        return statistics.median(wall[name]), min(wall[name]), statistics.median(cpu[name])

    base = stats("builtin")
    print(f"digits MLP 64-256-256-10, batch {BATCH}, {steps} steps/epoch, {args.threads} threads, "
          f"{args.rounds} epochs each")
    print(f"{'variant':<14}{'wall median':>12}{'wall min':>10}{'cpu median':>12}   ratios to builtin")
    for name in runners:
        values = stats(name)
        ratios = " / ".join(f"{v / b:.2f}x" for v, b in zip(values, base))
        print(f"{name:<14}{values[0]:>12.3f}{values[1]:>10.3f}{values[2]:>12.3f}   {ratios}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
