"""Seconds per fit epoch from arrays vs from an st.data.PyDataset whose __getitem__ is slow.

The dataset slices the same arrays, waits --latency ms (a disk or network read) and does
some NumPy work (a per-batch standardisation and a noise augmentation) before returning
the batch. Batches are prepared on background threads while the C++ loop trains on the
previous ones, so with enough workers the epoch should take about as long as from arrays;
with workers=1 the latency adds up once it exceeds a step's compute.

    python benchmarks/input_pipeline.py                   # latency 100 ms, workers 1 and 4
    python benchmarks/input_pipeline.py --latency 20 --workers 1 2 8
"""

import argparse
import statistics
import time

import numpy as np

import steepest as st

ROWS, FEATURES, CLASSES, BATCH = 16384, 512, 10, 256


class SlowSlices(st.data.PyDataset):
    def __init__(self, x, y, latency, **kwargs):
        super().__init__(**kwargs)
        self.x, self.y, self.latency = x, y, latency
        self.rng = np.random.default_rng(0)

    def __len__(self):
        return len(self.x) // BATCH

    def __getitem__(self, i):
        time.sleep(self.latency)
        xb = self.x[i * BATCH:(i + 1) * BATCH]
        xb = (xb - xb.mean(axis=0)) / (xb.std(axis=0) + 1e-6)
        xb = xb + np.random.default_rng(i).normal(scale=0.01, size=xb.shape).astype(np.float32)
        return xb.astype(np.float32), self.y[i * BATCH:(i + 1) * BATCH]


def model():
    m = st.Sequential([st.layers.Input((FEATURES,)), st.layers.Dense(512, activation="relu"),
                       st.layers.Dense(512, activation="relu"), st.layers.Dense(CLASSES)])
    m.compile(optimizer="adamw", loss=st.losses.SparseCategoricalCrossentropy(from_logits=True))
    return m


def median_seconds(fits, epochs):
    """Median seconds per call of each fit, the calls interleaved so that a change in the
    machine's load hits all of them alike; one warm-up call each first."""
    for fit in fits:
        fit()
    times = [[] for _ in fits]
    for _ in range(epochs):
        for fit, spent in zip(fits, times):
            start = time.perf_counter()
            fit()
            spent.append(time.perf_counter() - start)
    return [statistics.median(spent) for spent in times]


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--latency", type=float, default=100.0, help="ms each __getitem__ waits")
    parser.add_argument("--workers", type=int, nargs="+", default=[1, 4])
    parser.add_argument("--epochs", type=int, default=3)
    args = parser.parse_args()
    rng = np.random.default_rng(0)
    x = rng.normal(size=(ROWS, FEATURES)).astype(np.float32)
    y = rng.integers(0, CLASSES, ROWS)
    m = model()
    fits = [lambda: m.fit(x, y, batch_size=BATCH, epochs=1, shuffle=False, verbose=0)]
    for workers in args.workers:
        data = SlowSlices(x, y, args.latency / 1e3, workers=workers)
        fits.append(lambda data=data: m.fit(data, epochs=1, shuffle=False, verbose=0))
    base, *streamed = median_seconds(fits, args.epochs)
    steps = ROWS // BATCH
    print(f"{steps} batches of {BATCH} x {FEATURES}, MLP {FEATURES}-512-512-{CLASSES}, "
          f"{st.get_num_threads()} threads, __getitem__ latency {args.latency:g} ms")
    print(f"arrays:              {base:.3f} s/epoch ({base / steps * 1e3:.1f} ms/step)")
    for workers, t in zip(args.workers, streamed):
        print(f"PyDataset workers={workers}: {t:.3f} s/epoch, {t / base:.2f}x the array time")
    serial = base + steps * args.latency / 1e3
    print(f"(serial reading, no prefetch, would take at least {serial:.3f} s/epoch: {serial / base:.2f}x)")


if __name__ == "__main__":
    main()
