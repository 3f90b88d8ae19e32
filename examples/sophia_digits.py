"""Sophia-H against AdamW on the bundled digits (the MLP of ``steepest train``).

Sophia (Liu et al. 2023) divides its momentum by an EMA of the Hessian's diagonal,
estimated every ``update_period`` steps by Hutchinson's u ⊙ (H·u) from one Hessian-vector
product of the step's own loss, and clips each coordinate's step to ±η. ``fit`` computes
the estimate itself on the steps that want it. Prints the test accuracy and the time of
each run (the Sophia steps that estimate the Hessian cost a double backward).

    python examples/sophia_digits.py [--epochs 20] [--seed 0]
"""

from __future__ import annotations

import argparse
import time
from typing import List

import steepest as st
from steepest.cli import build_model


def train(optimizer: st.optimizers.Optimizer, epochs: int, seed: int) -> float:
    (x, y), (x_test, y_test) = st.datasets.load_digits(flatten=True)
    st.manual_seed(seed)
    model = build_model("mlp", x)
    model.compile(optimizer, "sparse_categorical_crossentropy", metrics=["accuracy"])
    model.fit(x, y, batch_size=32, epochs=epochs, verbose=0, seed=seed)
    return float(model.evaluate(x_test, y_test, return_dict=True)["accuracy"])


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--epochs", type=int, default=20)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    for name, optimizer in (
        ("AdamW(lr=1e-3)", st.optimizers.AdamW()),
        ("Sophia(lr=1e-3, k=10)", st.optimizers.Sophia(learning_rate=1e-3, weight_decay=0.01)),
    ):
        start = time.perf_counter()
        accuracy = train(optimizer, args.epochs, args.seed)
        print(f"{name:24s} test accuracy {accuracy:.4f}  ({time.perf_counter() - start:.1f} s)")


if __name__ == "__main__":
    main()
