"""The seed's optimizer guide, "dense data, generalisation first" (稠密数据 → 追求极致泛化
性能 → SGD+Momentum, 配合学习率调度（如warmup+余弦衰减）、权重衰减、BatchNorm): a small
CNN with BatchNormalization on the 8×8 digits, trained with the recipe that
``st.optimizers.choose(data="dense", goal="generalization")`` returns — SGD with
momentum 0.9 and Nesterov's look-ahead, warmup + cosine decay, weight decay 5e-4 — and,
for comparison, the same model with AdamW's defaults (the guide's "speed" row), over a
few seeds. Prints a Markdown table of test accuracies (the one in README.md).

    python examples/cnn_batchnorm_sgd.py [--epochs 20] [--seeds 0 1 2] [--batch-size 32]
"""

from __future__ import annotations

import argparse
import time
from typing import Dict, List, Tuple

import numpy as np

import steepest as st

L = st.layers


def build_model(bn_momentum: float = 0.99) -> st.Sequential:
    """Conv → BatchNorm → ReLU blocks (channels-first (1, 8, 8) digits), global average
    pooling and a linear classifier. With Keras' default momentum 0.99 the moving
    statistics need a few hundred steps to forget their start (mean 0, variance 1):
    short runs evaluate better with a smaller ``bn_momentum``."""
    return st.Sequential([
        L.Input((1, 8, 8)),
        L.Conv2D(32, 3, padding="same", use_bias=False),
        L.BatchNormalization(momentum=bn_momentum),
        L.Activation("relu"),
        L.Conv2D(32, 3, padding="same", use_bias=False),
        L.BatchNormalization(momentum=bn_momentum),
        L.Activation("relu"),
        L.MaxPool2D(2),
        L.Conv2D(64, 3, padding="same", use_bias=False),
        L.BatchNormalization(momentum=bn_momentum),
        L.Activation("relu"),
        L.GlobalAveragePooling2D(),
        L.Dense(10),
    ], name="digits_cnn_bn")


def make_optimizer(name: str, total_steps: int) -> st.optimizers.Optimizer:
    if name == "sgd_recipe":
        optimizer, _ = st.optimizers.choose(data="dense", goal="generalization",
                                            total_steps=total_steps)
        return optimizer
    if name == "adamw":
        return st.optimizers.AdamW()
    raise ValueError(f"unknown optimizer {name!r}")


def run(name: str, seed: int, epochs: int, batch_size: int,
        data: Tuple[Tuple[np.ndarray, np.ndarray], Tuple[np.ndarray, np.ndarray]],
        bn_momentum: float = 0.99) -> float:
    """Test accuracy of one training run."""
    (x_train, y_train), (x_test, y_test) = data
    st.manual_seed(seed)
    model = build_model(bn_momentum)
    steps = epochs * -(-len(x_train) // batch_size)
    model.compile(optimizer=make_optimizer(name, steps), loss="sparse_categorical_crossentropy",
                  metrics=["accuracy"])
    model.fit(x_train, y_train, batch_size=batch_size, epochs=epochs, verbose=0, seed=seed)
    _, accuracy = model.evaluate(x_test, y_test, batch_size=256)
    return float(accuracy)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seeds", type=int, nargs="+", default=[0, 1, 2])
    parser.add_argument("--batch-size", type=int, default=32)
    args = parser.parse_args()

    data = st.datasets.load_digits(flatten=False)
    optimizer, reason = st.optimizers.choose(data="dense", goal="generalization")
    print(f"choose(data='dense', goal='generalization') -> {type(optimizer).__name__}: {reason}")
    results: Dict[str, List[float]] = {}
    for name in ("sgd_recipe", "adamw"):
        for seed in args.seeds:
            start = time.perf_counter()
            accuracy = run(name, seed, args.epochs, args.batch_size, data)
            results.setdefault(name, []).append(accuracy)
            print(f"  {name:10s} seed {seed}: test accuracy {accuracy:.4f} "
                  f"({time.perf_counter() - start:.1f} s)")

    labels = {"sgd_recipe": "SGD + Nesterov momentum 0.9, warmup + cosine, weight decay 5e-4",
              "adamw": "AdamW (defaults: lr 1e-3, weight decay 0.01)"}
    seeds = " ".join(str(s) for s in args.seeds)
    print(f"\n| optimizer ({args.epochs} epochs, batch {args.batch_size}) | "
          + " | ".join(f"seed {s}" for s in args.seeds) + " | mean |")
    print("|---|" + "---|" * (len(args.seeds) + 1))
    for name, accs in results.items():
        print(f"| {labels[name]} | " + " | ".join(f"{a:.4f}" for a in accs)
              + f" | {np.mean(accs):.4f} |")
    print(f"\n(seeds {seeds}; digits test split of 360 images)")


if __name__ == "__main__":
    main()
