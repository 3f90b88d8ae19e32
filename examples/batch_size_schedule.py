"""Don't decay the learning rate, increase the batch size (Smith et al. 2017) on digits.

SGD's noise scale is about ε·N/B (learning rate ε, N samples, batch B): dividing ε by k
or multiplying B by k lowers it alike. Two runs of the same MLP with SGD + momentum:

* decay: batch 32 throughout, learning rate divided by ``factor`` at each milestone
  (st.schedules.StepDecay is per step, so LearningRateScheduler does it per epoch);
* grow: learning rate fixed, batch multiplied by ``factor`` at the same milestones
  (st.callbacks.BatchSizeScheduler), the seed's Future Work 5 (dynamic batch sizes).

Prints, per seed, the test accuracy and the number of optimizer updates of each run: the
claim is similar accuracy with fewer updates for the growing batch.

    python examples/batch_size_schedule.py [--epochs 30] [--seeds 0 1 2]
"""

from __future__ import annotations

import argparse
from typing import Dict, List, Sequence

import numpy as np

import steepest as st


def milestones_for(epochs: int) -> List[int]:
    return [epochs // 2, (3 * epochs) // 4]


def times_crossed(epoch: int, milestones: Sequence[int]) -> int:
    return sum(epoch >= m for m in milestones)


def run(mode: str, seed: int, epochs: int, learning_rate: float = 0.1, batch_size: int = 32,
        factor: int = 5) -> Dict[str, float]:
    """Test accuracy and optimizer updates of one run; mode "decay" or "grow"."""
    (x, y), (x_test, y_test) = st.datasets.load_digits(flatten=True)
    milestones = milestones_for(epochs)
    st.manual_seed(seed)
    model = st.Sequential([st.layers.Input((64,)), st.layers.Dense(128, activation="relu"),
                           st.layers.Dense(10)])
    model.compile(optimizer=st.optimizers.SGD(learning_rate, momentum=0.9),
                  loss=st.losses.SparseCategoricalCrossentropy(from_logits=True),
                  metrics=["accuracy"])
    if mode == "decay":
        callback: st.callbacks.Callback = st.callbacks.LearningRateScheduler(
            lambda epoch, lr: learning_rate / factor ** times_crossed(epoch, milestones))
    else:
        callback = st.callbacks.BatchSizeScheduler(
            lambda epoch, size: batch_size * factor ** times_crossed(epoch, milestones))
    model.fit(x, y, batch_size=batch_size, epochs=epochs, seed=seed, verbose=0, callbacks=[callback])
    _, accuracy = model.evaluate(x_test, y_test)
    return {"accuracy": float(accuracy), "updates": float(model.optimizer.iterations)}


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=30)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    args = parser.parse_args(argv)
    print(f"digits MLP 64-128-10, SGD(0.1, momentum=0.9), {args.epochs} epochs, "
          f"milestones at epochs {milestones_for(args.epochs)}, factor 5")
    print(f"{'seed':>4s}  {'decay: accuracy':>15s} {'updates':>8s}  {'grow: accuracy':>14s} {'updates':>8s}")
    results = {"decay": [], "grow": []}
    for seed in args.seeds:
        row = {mode: run(mode, seed, args.epochs) for mode in results}
        for mode in results:
            results[mode].append(row[mode])
        print(f"{seed:>4d}  {row['decay']['accuracy']:>15.4f} {row['decay']['updates']:>8.0f}  "
              f"{row['grow']['accuracy']:>14.4f} {row['grow']['updates']:>8.0f}")
    means = {mode: np.mean([r["accuracy"] for r in rs]) for mode, rs in results.items()}
    print(f"mean  {means['decay']:>15.4f} {'':>8s}  {means['grow']:>14.4f}")


if __name__ == "__main__":
    main()
