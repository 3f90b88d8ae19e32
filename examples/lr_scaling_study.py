"""Which learning-rate rule keeps a digits MLP's accuracy as the batch grows from 32 to 1024?

The seed (大模型训练) quotes the rule of thumb "√倍批大小，√倍学习率": multiply the batch by
k, multiply the learning rate by √k. This study trains the MLP of ``steepest train --model
mlp`` (Normalization → Dense 256 relu → Dense 256 relu → Dense 10) on the digits for the
same number of epochs at batch 32 (the base, with a learning rate that works there) and at
larger batches, with the learning rate given by ``st.optimizers.scale_learning_rate``:

* ``none``:   the base rate unchanged;
* ``sqrt``:   lr·√(b/32) (the seed's rule; keeps the update variance η²σ²/b);
* ``linear``: lr·b/32 (Goyal et al. 2017; keeps the distance moved per epoch).

for SGD with the seed's momentum (β = 0.9) and for Adam. Equal epochs mean that batch 1024
takes 32 times fewer steps than batch 32 (2 steps an epoch on 1,437 images). Prints the
mean (± std over seeds) test accuracy and final training loss; a run whose loss becomes
NaN or inf counts as diverged (its accuracy is what the model then predicts).

    python examples/lr_scaling_study.py [--epochs 20] [--seeds 3]
"""

from __future__ import annotations

import argparse
import time
from typing import Dict, List, NamedTuple, Tuple

import numpy as np

import steepest as st
from steepest.cli import build_model

BASE_BATCH = 32
BATCHES = (32, 128, 512, 1024)
RULES = ("none", "sqrt", "linear")
BASE_LR = {"SGD(momentum=0.9)": 0.1, "Adam": 1e-3}


class Result(NamedTuple):
    learning_rate: float
    accuracy: float
    loss: float


def make_optimizer(name: str, learning_rate: float) -> st.optimizers.Optimizer:
    if name == "Adam":
        return st.optimizers.Adam(learning_rate)
    return st.optimizers.SGD(learning_rate, momentum=0.9)


def train(name: str, batch_size: int, rule: str, seed: int, epochs: int,
          data: Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]]) -> Result:
    """The learning rate, test accuracy and final training loss of one run."""
    (x, y), (x_test, y_test) = data
    lr = BASE_LR[name]
    if rule != "none":
        lr = st.optimizers.scale_learning_rate(lr, BASE_BATCH, batch_size, rule=rule)
    st.manual_seed(seed)
    model = build_model("mlp", x)
    model.compile(make_optimizer(name, lr), "sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    history = model.fit(x, y, batch_size=batch_size, epochs=epochs, verbose=0, seed=seed)
    accuracy = model.evaluate(x_test, y_test, return_dict=True, verbose=0)["accuracy"]
    return Result(lr, float(accuracy), float(history.history["loss"][-1]))


def study(epochs: int, seeds: int, batches=BATCHES,
          optimizers=tuple(BASE_LR)) -> Dict[Tuple[str, int, str], List[Result]]:
    data = st.datasets.load_digits()
    out: Dict[Tuple[str, int, str], List[Result]] = {}
    for name in optimizers:
        for b in batches:
            for rule in RULES if b != BASE_BATCH else ("none",):
                out[name, b, rule] = [train(name, b, rule, s, epochs, data) for s in range(seeds)]
    return out


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, default=3)
    args = parser.parse_args()
    start = time.perf_counter()
    results = study(args.epochs, args.seeds)
    print(f"digits MLP, {args.epochs} epochs at every batch size, {args.seeds} seeds, "
          f"base batch {BASE_BATCH}; test accuracy mean ± std (final train loss)")
    print("| optimizer | base lr | batch | rule | lr | test accuracy | train loss |")
    print("|---|---|---|---|---|---|---|")
    for (name, b, rule), runs in results.items():
        acc = np.array([r.accuracy for r in runs])
        loss = np.array([r.loss for r in runs])
        diverged = int(np.sum(~np.isfinite(loss)))
        note = f" ({diverged} diverged)" if diverged else ""
        mean_loss = np.mean(loss[np.isfinite(loss)]) if diverged < len(runs) else float("nan")
        print(f"| {name} | {BASE_LR[name]:g} | {b} | {rule} | {runs[0].learning_rate:.4g} | "
              f"{acc.mean():.4f} ± {acc.std():.4f}{note} | {mean_loss:.4f} |")
    print(f"\n{time.perf_counter() - start:.0f} s; python examples/lr_scaling_study.py "
          f"--epochs {args.epochs} --seeds {args.seeds}")


if __name__ == "__main__":
    main()
