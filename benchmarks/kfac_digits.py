"""Epochs and wall time to 97% test accuracy on the bundled digits: K-FAC against SGD with
momentum and AdamW, on `steepest train`'s MLP and CNN (batch 32).

Each (model, optimizer) trains from several seeds, one epoch at a time; the test accuracy
is taken after every epoch (evaluation time excluded from the wall time). A run that does
not reach the target within --max-epochs counts as not reaching it. The runs of the three
optimizers are interleaved per seed, so a busy machine slows them alike.

    PYTHONPATH=.site python3 benchmarks/kfac_digits.py [--seeds 3] [--max-epochs 30]
"""

import argparse
import statistics
import time

import steepest as st
from steepest.cli import build_model

TARGET = 0.97

OPTIMIZERS = {
    "KFAC": (lambda: st.optimizers.KFAC(), "KFAC() defaults: lr 0.01, damping 0.1, momentum 0.9, "
             "stats_decay 0.95, inverse every 10 steps, kl_clip 0.01"),
    "SGD+momentum": (lambda: st.optimizers.SGD(learning_rate=0.1, momentum=0.9),
                     "SGD(0.1, momentum=0.9) (the seed's EMA momentum: torch's lr 0.01)"),
    "AdamW": (lambda: st.optimizers.AdamW(), "AdamW() defaults: lr 1e-3, weight_decay 0.01"),
}


def time_to_target(kind, make_optimizer, seed, max_epochs):
    """(epochs, seconds of fit) until the test accuracy first reaches TARGET, or None."""
    (x, y), (x_test, y_test) = st.datasets.load_digits(flatten=kind == "mlp")
    st.manual_seed(seed)
    model = build_model(kind, x)
    model.compile(make_optimizer(), "sparse_categorical_crossentropy", metrics=["accuracy"])
    seconds = 0.0
    for epoch in range(1, max_epochs + 1):
        start = time.perf_counter()
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=seed * 1000 + epoch)
        seconds += time.perf_counter() - start
        if model.evaluate(x_test, y_test, return_dict=True, verbose=0)["accuracy"] >= TARGET:
            return epoch, seconds
    return None


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--max-epochs", type=int, default=30)
    parser.add_argument("--models", default="mlp,cnn")
    args = parser.parse_args()
    rows = []
    for kind in args.models.split(","):
        results = {name: [] for name in OPTIMIZERS}
        for seed in range(args.seeds):
            for name, (make, _) in OPTIMIZERS.items():
                results[name].append(time_to_target(kind, make, seed, args.max_epochs))
        for name, runs in results.items():
            reached = [r for r in runs if r is not None]
            if reached:
                epochs = statistics.median(r[0] for r in reached)
                seconds = statistics.median(r[1] for r in reached)
                per_epoch = statistics.median(r[1] / r[0] for r in reached)
                rows.append((kind, name, f"{len(reached)}/{len(runs)}", f"{epochs:g}",
                             f"{seconds:.2f}", f"{per_epoch:.3f}"))
            else:
                rows.append((kind, name, f"0/{len(runs)}", "-", "-", "-"))
    print(f"| model | optimizer | runs reaching {TARGET:.0%} | median epochs | median wall s "
          "| s/epoch |")
    print("|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    for name, (_, description) in OPTIMIZERS.items():
        print(f"- {name}: {description}")


if __name__ == "__main__":
    main()
