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
    """(epochs, seconds of fit) until the test accuracy first reaches TARGET, or None; and
    the best test accuracy seen and the mean seconds per epoch."""
    (x, y), (x_test, y_test) = st.datasets.load_digits(flatten=kind == "mlp")
    st.manual_seed(seed)
    model = build_model(kind, x)
    model.compile(make_optimizer(), "sparse_categorical_crossentropy", metrics=["accuracy"])
    seconds, best = 0.0, 0.0
    for epoch in range(1, max_epochs + 1):
        start = time.perf_counter()
        model.fit(x, y, batch_size=32, epochs=1, verbose=0, seed=seed * 1000 + epoch)
        seconds += time.perf_counter() - start
        best = max(best, model.evaluate(x_test, y_test, return_dict=True, verbose=0)["accuracy"])
        if best >= TARGET:
            return (epoch, seconds), best, seconds / epoch
    return None, best, seconds / max_epochs


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
            reached = [r[0] for r in runs if r[0] is not None]
            best = statistics.median(r[1] for r in runs)
            per_epoch = statistics.median(r[2] for r in runs)
            epochs = f"{statistics.median(r[0] for r in reached):g}" if reached else "-"
            seconds = f"{statistics.median(r[1] for r in reached):.1f}" if reached else "-"
            rows.append((kind, name, f"{len(reached)}/{len(runs)}", epochs, seconds,
                         f"{per_epoch:.2f}", f"{best:.3f}"))
    print(f"| model | optimizer | runs reaching {TARGET:.0%} (≤ {args.max_epochs} epochs) "
          "| median epochs | median wall s | s/epoch | best test accuracy |")
    print("|---|---|---|---|---|---|---|")
    for row in rows:
        print("| " + " | ".join(row) + " |")
    print()
    for name, (_, description) in OPTIMIZERS.items():
        print(f"- {name}: {description}")


if __name__ == "__main__":
    main()
