"""The ``steepest`` command line: ``steepest train`` fits a small network on the bundled
8×8 digits and saves it; ``steepest lr-find`` runs the learning-rate range test on it;
``steepest tune`` searches its hyper-parameters with Optuna.

``steepest train --model gpt`` trains a character-level GPT on ``--text`` instead.

Each subcommand is one ``_add_<name>_command`` function that registers its parser and
sets ``func``; a new command adds one such function to ``_COMMANDS``.

    steepest train                          # CNN, AdamW, 20 epochs -> digits_cnn.steepest
    steepest train --model mlp --optimizer sgd --lr 0.05 --epochs 30 --no-save
    steepest train --model gpt --text essay.txt
    steepest lr-find --model mlp --optimizer sgd --plot lr.png
    steepest tune --trials 30 --epochs 10
    python -m steepest train --help
"""

from __future__ import annotations

import argparse
import importlib.util
import math
import os
import sys
import tempfile
from typing import Any, Callable, Dict, List, Optional, Sequence

import numpy as np

import steepest as st

MODELS = ("cnn", "mlp", "gpt")
DEFAULT_EPOCHS = {"cnn": 20, "mlp": 20, "gpt": 15}
CORPORA = ("essay", "python-stdlib")
BPE_VOCAB = 512
PRECISIONS = ("float32", "mixed_float16", "mixed_bfloat16")

# The constructors, not st.optimizers.get: --lr has to reach the constructor, and get()
# also knows aliases (momentum, nesterov) whose settings a bare class would drop.
OPTIMIZERS: Dict[str, Callable[..., Any]] = {
    "sgd": st.optimizers.SGD,
    "adagrad": st.optimizers.Adagrad,
    "rmsprop": st.optimizers.RMSprop,
    "adam": st.optimizers.Adam,
    "adamw": st.optimizers.AdamW,
    "lamb": st.optimizers.Lamb,
    "adafactor": st.optimizers.Adafactor,
    "lion": st.optimizers.Lion,
    "muon": st.optimizers.Muon,
    "sophia": st.optimizers.Sophia,
    "kfac": st.optimizers.KFAC,
}


class CommandError(Exception):
    """A problem with the request that the user can fix; reported without a traceback."""


def build_model(kind: str, train_images: Any = None) -> st.Sequential:
    """The network ``steepest train --model kind`` trains, uncompiled.

    Both start with a Normalization layer (one mean and variance over all pixels),
    adapted to ``train_images`` when given: standardised inputs train faster and the
    statistics travel with the saved model.

    ``"cnn"`` takes (N, 1, 8, 8) images: Conv2D 32 3×3 same relu → MaxPool2D 2 → Conv2D 64
    3×3 same relu → MaxPool2D 2 → Flatten → Dense 64 relu → Dense 10.
    ``"mlp"`` takes (N, 64) rows: Dense 256 relu → Dense 256 relu → Dense 10.
    Both output logits for the 10 digits.
    """
    L = st.layers
    if kind == "cnn":
        model = st.Sequential(
            [
                L.Input((1, 8, 8)),
                L.Normalization(axis=None),
                L.Conv2D(32, 3, padding="same", activation="relu"),
                L.MaxPool2D(2),
                L.Conv2D(64, 3, padding="same", activation="relu"),
                L.MaxPool2D(2),
                L.Flatten(),
                L.Dense(64, activation="relu"),
                L.Dense(10),
            ],
            name="digits_cnn",
        )
    elif kind == "mlp":
        model = st.Sequential(
            [
                L.Input((64,)),
                L.Normalization(axis=None),
                L.Dense(256, activation="relu"),
                L.Dense(256, activation="relu"),
                L.Dense(10),
            ],
            name="digits_mlp",
        )
    else:
        raise ValueError(f"[build_model] unknown model {kind!r}; choose one of {', '.join(MODELS)}")
    if train_images is not None:
        model.layers[0].adapt(train_images)
    return model


def make_optimizer(name: str, learning_rate: Optional[float] = None) -> Any:
    """Optimizer ``name`` with its default hyperparameters, or with ``learning_rate``."""
    if name not in OPTIMIZERS:
        raise ValueError(
            f"[make_optimizer] unknown optimizer {name!r}; choose one of {', '.join(OPTIMIZERS)}"
        )
    if learning_rate is None:
        return OPTIMIZERS[name]()
    return OPTIMIZERS[name](learning_rate=learning_rate)


def _whole_number(text: str, low: int, high: int) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a whole number, got {text!r}") from None
    if value < low:
        raise argparse.ArgumentTypeError(f"must be at least {low}, got {value}")
    if value > high:
        raise argparse.ArgumentTypeError(f"must be at most {high}, got {value}")
    return value


def _positive_int(text: str) -> int:
    return _whole_number(text, 1, 2**31 - 1)


def _seed(text: str) -> int:
    return _whole_number(text, 0, 2**63 - 1)


def _positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"expected a number, got {text!r}") from None
    if not math.isfinite(value):
        raise argparse.ArgumentTypeError(f"must be a finite number, got {text}")
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be greater than 0, got {text}")
    return value


def _add_train_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "train",
        help="train a digits classifier, or a character-level GPT on a text",
        description=(
            "Train a small network on the 8x8 handwritten digits that ship with steepest "
            "(1,437 training / 360 test images), print the test accuracy and save the model; "
            "or, with --model gpt, a character-level GPT on --text (default: the essay that "
            "ships with steepest), printing the loss per epoch and a sample."
        ),
    )
    p.add_argument("--model", choices=MODELS, default="cnn",
                   help="cnn: 2 conv + 2 dense layers; mlp: 64-256-256-10; gpt: a 4-layer "
                        "character-level Transformer (default: cnn)")
    source = p.add_mutually_exclusive_group()
    source.add_argument("--text", metavar="FILE", default=None,
                        help="with --model gpt: a UTF-8 text to train on (default: the bundled essay)")
    source.add_argument("--corpus", choices=CORPORA, default="essay",
                        help="with --model gpt: essay (the bundled one, quick) or python-stdlib "
                             "(this Python's standard library .py files, whole files held out "
                             "for validation; default: essay)")
    p.add_argument("--max-chars", type=_positive_int, default=1_000_000,
                   help="with --corpus python-stdlib: characters to read (default: 1,000,000)")
    p.add_argument("--tokenizer", choices=("char", "bpe"), default="char",
                   help="with --model gpt: one token per character, or byte-level BPE with "
                        f"{BPE_VOCAB} tokens trained on the training text (needs the tokenizers "
                        "package; default: char)")
    p.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="adamw",
                   help="default: adamw")
    p.add_argument("--epochs", type=_positive_int, default=None,
                   help="passes over the training set (default: 20; 15 for gpt; 1 for gpt on "
                        "--corpus python-stdlib)")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="default: 32")
    p.add_argument("--lr", type=_positive_float, default=None,
                   help="learning rate (default: the optimizer's own default)")
    p.add_argument("--device", choices=("cpu", "cuda"), default="cpu", help="default: cpu")
    p.add_argument("--precision", choices=PRECISIONS, default=None,
                   help="default: float32; mixed_bfloat16 for gpt (the seed's LLM recipe)")
    p.add_argument("--seed", type=_seed, default=0,
                   help="seed of the weight initialisation and the batch order "
                        "(the train/test split is always the same; default: 0)")
    save = p.add_mutually_exclusive_group()
    save.add_argument("--save", metavar="PATH", default=None,
                      help="where to save the trained model (default: digits_<model>.steepest "
                           "in the current folder)")
    save.add_argument("--no-save", action="store_true", help="do not save the model")
    p.add_argument("--plot", metavar="PNG", default=None,
                   help="save loss/accuracy curves to this image (needs matplotlib)")
    p.add_argument("--quiet", action="store_true",
                   help="print only the final test accuracy (and where the model went)")
    p.set_defaults(func=_train)


def _add_lr_find_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "lr-find",
        help="the learning-rate range test (Smith 2017) on the digits network",
        description=(
            "Train the digits network of 'steepest train' for --steps batches while the "
            "learning rate grows exponentially from --start to --end, print the smoothed "
            "loss curve and a suggested learning rate (where the loss falls fastest), and "
            "optionally plot it. The model is not saved."
        ),
    )
    p.add_argument("--model", choices=MODELS[:2], default="cnn", help="default: cnn")
    p.add_argument("--optimizer", choices=tuple(OPTIMIZERS), default="adamw", help="default: adamw")
    p.add_argument("--batch-size", type=_positive_int, default=32, help="default: 32")
    p.add_argument("--start", type=_positive_float, default=1e-7, help="first learning rate (default: 1e-7)")
    p.add_argument("--end", type=_positive_float, default=10.0, help="last learning rate (default: 10)")
    p.add_argument("--steps", type=lambda text: _whole_number(text, 2, 100_000), default=100,
                   help="batches, one learning rate each (default: 100)")
    p.add_argument("--seed", type=_seed, default=0, help="default: 0")
    p.add_argument("--plot", metavar="PNG", default=None,
                   help="save the loss against the learning rate to this image (needs matplotlib)")
    p.set_defaults(func=_lr_find)


def _add_tune_command(commands: argparse._SubParsersAction) -> None:
    p = commands.add_parser(
        "tune",
        help="search learning rate, batch size and weight decay with Optuna",
        description=(
            "Search AdamW's learning rate, the batch size and the weight decay of the digits "
            "network with Optuna (TPE sampler, successive-halving pruning on val_loss; "
            "validation: the last 20%% of the training images) and print the best trial. "
            "Needs Optuna: pip install 'steepest[tune]'."
        ),
    )
    p.add_argument("--model", choices=MODELS[:2], default="cnn", help="default: cnn")
    p.add_argument("--trials", type=_positive_int, default=20, help="default: 20")
    p.add_argument("--epochs", type=_positive_int, default=10,
                   help="epochs of a trial that is not pruned (default: 10)")
    p.add_argument("--timeout", type=_positive_float, default=None,
                   help="stop starting trials after this many seconds")
    p.add_argument("--seed", type=_seed, default=0, help="default: 0")
    p.set_defaults(func=_tune)


_COMMANDS = (_add_train_command, _add_lr_find_command, _add_tune_command)


def build_parser() -> argparse.ArgumentParser:
    """The ``steepest`` argument parser with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="steepest",
        description="Train models with steepest, a C++ tensor/autograd engine.",
    )
    parser.add_argument("--version", action="version", version=f"steepest {st.__version__}")
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")
    commands.required = True
    for add in _COMMANDS:
        add(commands)
    return parser


def _check_device(device: str) -> None:
    backends = st.backends()
    if device != "cuda" or backends.get("cuda", False):
        return
    if backends.get("cuda_compiled", False):
        raise CommandError(
            "--device cuda: steepest was built with CUDA but sees no CUDA device; check the "
            "driver and CUDA_VISIBLE_DEVICES, or use --device cpu"
        )
    raise CommandError(
        "--device cuda: this build of steepest has no CUDA backend; use --device cpu, or "
        "reinstall on a machine with the CUDA toolkit: STEEPEST_CUDA=ON pip install ."
    )


def _set_precision(precision: str) -> Any:
    """Sets the global mixed-precision policy model.compile picks up; returns the
    previous one, which the caller restores (the CLI may run inside a longer process)."""
    previous = st.mixed_precision.global_policy()
    st.mixed_precision.set_global_policy(precision)
    return previous


def _check_plotting(path: str) -> None:
    # Checked before training: finding out after a long run that no plot can be drawn
    # would waste the run's time.
    if importlib.util.find_spec("matplotlib") is None:
        raise CommandError(
            f"--plot {path}: matplotlib is not installed; install it (pip install matplotlib) "
            "or leave out --plot"
        )
    _check_writable(path, "--plot")


def _check_writable(path: str, option: str) -> None:
    # Checked before training: a run must not end in a save that cannot happen.
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise CommandError(f"{option} {path}: the folder {folder} does not exist; create it first")
    if os.path.isdir(path):
        raise CommandError(f"{option} {path}: is a folder; give a file name")
    try:
        with tempfile.TemporaryFile(dir=folder):
            pass
    except OSError as e:
        raise CommandError(f"{option} {path}: cannot write in {folder} ({e.strerror})") from None


def _plot_history(history: Dict[str, List[float]], path: str, title: str) -> None:
    import matplotlib

    matplotlib.use("Agg")  # writes a file; must not need a display
    import matplotlib.pyplot as plt

    metrics = [m for m in ("loss", "accuracy") if m in history]
    fig, axes = plt.subplots(1, len(metrics), figsize=(5 * len(metrics), 4), squeeze=False)
    for ax, metric in zip(axes[0], metrics):
        for key, label in ((metric, "train"), ("val_" + metric, "test")):
            if key in history:
                epochs = range(1, len(history[key]) + 1)
                ax.plot(epochs, history[key], marker="o", label=label)
        ax.set_xlabel("epoch")
        ax.set_ylabel(metric)
        ax.grid(alpha=0.3)
        ax.legend()
    fig.suptitle(title)
    fig.tight_layout()
    fig.savefig(path, dpi=120)
    plt.close(fig)


def _processes() -> str:
    ranks = st.distributed.world_size()
    return f", {ranks} processes (data parallel)" if ranks > 1 else ""


def _train(args: argparse.Namespace) -> int:
    if args.precision is None:
        args.precision = "mixed_bfloat16" if args.model == "gpt" else "float32"
    if args.model == "gpt":
        return _train_gpt(args)
    if args.text is not None:
        raise CommandError("--text is for --model gpt")
    if args.corpus != "essay" or args.tokenizer != "char":
        raise CommandError("--corpus and --tokenizer are for --model gpt")
    epochs = args.epochs if args.epochs is not None else DEFAULT_EPOCHS[args.model]
    save_path = None if args.no_save else (args.save or f"digits_{args.model}.steepest")

    _check_device(args.device)
    if save_path is not None:
        _check_writable(save_path, "--save")
    if args.plot is not None:
        _check_plotting(args.plot)
    previous_policy = _set_precision(args.precision)
    try:
        (x_train, y_train), (x_test, y_test) = st.datasets.load_digits(
            flatten=args.model == "mlp"
        )
        st.manual_seed(args.seed)
        model = build_model(args.model, x_train)
        if args.device != "cpu":
            model.to(args.device)
        optimizer = make_optimizer(args.optimizer, args.lr)
        model.compile(
            optimizer=optimizer, loss="sparse_categorical_crossentropy", metrics=["accuracy"]
        )
        if not args.quiet:
            print(
                f"Training {'a CNN' if args.model == 'cnn' else 'an MLP'} on the 8x8 digits: "
                f"{len(x_train):,} train / {len(x_test):,} test images, {type(optimizer).__name__} "
                f"(learning rate {optimizer.learning_rate:g}), batch {args.batch_size}, "
                f"{epochs} epochs, {args.device}, {args.precision}{_processes()}"
            )
        history = model.fit(
            x_train,
            y_train,
            batch_size=args.batch_size,
            epochs=epochs,
            validation_data=(x_test, y_test),
            verbose=0 if args.quiet else 1,
            seed=args.seed,
        )
        test_loss, test_accuracy = model.evaluate(x_test, y_test, verbose=0)
    finally:
        st.mixed_precision.set_global_policy(previous_policy)

    print(f"Test accuracy: {test_accuracy:.2%} (loss {test_loss:.4f}) "
          f"on {len(x_test)} images")
    if save_path is not None:
        model.save(save_path)
        print(f"Saved the model to {os.path.abspath(save_path)} "
              "(load it with steepest.models.load_model)")
    if args.plot is not None and st.distributed.rank() == 0:
        _plot_history(history.history, args.plot, f"digits {args.model}, {args.optimizer}")
        print(f"Saved the training curves to {os.path.abspath(args.plot)}")
    return 0


def _lr_find(args: argparse.Namespace) -> int:
    if not args.start < args.end:
        raise CommandError(f"--start {args.start:g} must be below --end {args.end:g}")
    if args.plot is not None:
        _check_plotting(args.plot)
    (x_train, y_train), _ = st.datasets.load_digits(flatten=args.model == "mlp")
    st.manual_seed(args.seed)
    model = build_model(args.model, x_train)
    model.compile(optimizer=make_optimizer(args.optimizer),
                  loss="sparse_categorical_crossentropy")
    rates, losses, suggestion = model.find_learning_rate(
        x_train, y_train, start=args.start, end=args.end, steps=args.steps,
        batch_size=args.batch_size, seed=args.seed)
    print(f"Learning-rate range test, digits {args.model}, {args.optimizer}, batch {args.batch_size}: "
          f"{len(rates)} steps from {args.start:g} to {rates[-1]:g}"
          + (" (stopped: the loss diverged)" if len(rates) < args.steps else ""))
    print(f"{'learning rate':>14s}  smoothed loss")
    for i in np.unique(np.linspace(0, len(rates) - 1, min(len(rates), 12)).astype(int)):
        print(f"{rates[i]:14.3g}  {losses[i]:.4f}")
    print(f"Suggested learning rate: {suggestion:.3g}")
    if args.plot is not None and st.distributed.rank() == 0:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt

        fig, ax = plt.subplots(figsize=(6, 4))
        ax.semilogx(rates, losses)
        ax.axvline(suggestion, color="tab:red", ls="--", label=f"suggestion {suggestion:.3g}")
        ax.set_xlabel("learning rate")
        ax.set_ylabel("smoothed training loss")
        ax.legend()
        ax.grid(alpha=0.3)
        fig.tight_layout()
        fig.savefig(args.plot, dpi=120)
        plt.close(fig)
        print(f"Saved the plot to {os.path.abspath(args.plot)}")
    return 0


def _tune(args: argparse.Namespace) -> int:
    if importlib.util.find_spec("optuna") is None:
        raise CommandError("Optuna is not installed: pip install 'steepest[tune]' (or pip install optuna)")
    from .integrations.optuna import tune_digits

    study = tune_digits(args.model, trials=args.trials, epochs=args.epochs, seed=args.seed,
                        timeout=args.timeout, verbose=False)
    states = [t.state.name for t in study.trials]
    print(f"{len(states)} trials: {states.count('COMPLETE')} complete, {states.count('PRUNED')} pruned")
    best = study.best_trial
    print(f"Best trial #{best.number}: val_loss {best.value:.4f}, "
          f"val_accuracy {best.user_attrs['val_accuracy']:.2%}")
    for name, value in best.params.items():
        print(f"  {name}: {value:.4g}" if isinstance(value, float) else f"  {name}: {value}")
    return 0


def _train_gpt(args: argparse.Namespace) -> int:
    """The seed's LLM recipe at small scale: causal LM loss, AdamW with warmup + cosine
    decay, clipnorm 1.0, activation checkpointing."""
    if args.epochs is not None:
        epochs = args.epochs
    else:
        epochs = 1 if args.corpus == "python-stdlib" else DEFAULT_EPOCHS["gpt"]
    save_path = None if args.no_save else (args.save or "tiny_gpt.steepest")
    _check_device(args.device)
    if save_path is not None:
        _check_writable(save_path, "--save")
    if args.plot is not None:
        _check_plotting(args.plot)
    context = 64
    train_texts, val_texts = _gpt_texts(args)
    text = "".join(train_texts + val_texts)
    if args.tokenizer == "bpe":
        if importlib.util.find_spec("tokenizers") is None:
            raise CommandError("--tokenizer bpe needs the `tokenizers` package: pip install tokenizers")
        tokenizer: Any = st.text.BPETokenizer(train_texts, vocab_size=BPE_VOCAB)
    else:
        tokenizer = st.text.CharTokenizer.from_text(text)
    tokens = np.concatenate([tokenizer.encode(t) for t in train_texts])
    val_tokens = np.concatenate([tokenizer.encode(t) for t in val_texts])
    if len(tokens) < 2 * context or len(val_tokens) < context + 1:
        raise CommandError(f"the text gives {len(tokens)} training and {len(val_tokens)} validation "
                           f"tokens; a GPT with context {context} needs at least {2 * context} and "
                           f"{context + 1}")
    # The essay is small: overlapping windows; a corpus is large enough for disjoint ones.
    stride = context // 4 if len(train_texts) == 1 else context
    train = st.text.windows(tokens, context, stride=stride)
    val = st.text.windows(val_tokens, context, stride=stride)
    # nats per token -> bits per character of the held-out text
    bits_per_char = len(val_tokens) / sum(len(t) for t in val_texts) / math.log(2)
    st.manual_seed(args.seed)
    model = st.models.GPT(tokenizer.vocab_size, context, d_model=128, num_heads=4, num_layers=4, remat=True)
    steps = epochs * ((len(train) + args.batch_size - 1) // args.batch_size)
    peak = args.lr if args.lr is not None else 3e-3
    schedule = st.schedules.WarmupCosine(peak, warmup_steps=max(steps // 10, 1), total_steps=steps,
                                         final_learning_rate=peak / 10)
    previous_policy = _set_precision(args.precision)
    try:
        optimizer = st.optimizers.AdamW(learning_rate=schedule, weight_decay=0.1, clipnorm=1.0)
        optimizer.exclude_from_weight_decay(var_names=st.models.GPT_NO_WEIGHT_DECAY)
        model.compile(optimizer, loss=st.losses.CausalLMCrossEntropy())
    finally:
        st.mixed_precision.set_global_policy(previous_policy)
    entropy = st.text.unigram_entropy(tokens)
    if not args.quiet:
        kind = "BPE" if args.tokenizer == "bpe" else "character"
        print(f"Training a {kind} GPT ({model.count_params():,} parameters) on {len(text):,} "
              f"characters ({len(train_texts):,} training / {len(val_texts):,} held-out texts), "
              f"vocabulary {tokenizer.vocab_size}, context {context}, {epochs} epochs, "
              f"{args.precision}{_processes()}; unigram entropy {entropy:.3f} nats")
    history = model.fit(train, train, batch_size=args.batch_size, epochs=epochs,
                        validation_data=(val, val), verbose=0 if args.quiet else 2, seed=args.seed)
    final, best = history.history["val_loss"][-1], min(history.history["val_loss"])
    print(f"Validation loss {final:.3f} (best {best:.3f}) nats per token, "
          f"{final * bits_per_char:.3f} bits per character; unigram entropy {entropy:.3f}")
    sample = st.models.generate(model, tokens[:context // 2], 200, temperature=0.8, top_k=10, seed=args.seed)
    print("Sample:\n" + tokenizer.decode(sample))
    if save_path is not None:
        model.save(save_path)
        print(f"Saved the model to {os.path.abspath(save_path)} (load it with steepest.models.load_model)")
    if args.plot is not None and st.distributed.rank() == 0:
        _plot_history(history.history, args.plot, "character GPT")
        print(f"Saved the training curves to {os.path.abspath(args.plot)}")
    return 0


def _gpt_texts(args: argparse.Namespace) -> tuple[List[str], List[str]]:
    """(training texts, held-out texts) for --model gpt."""
    if args.corpus == "python-stdlib":
        try:
            return st.text.python_stdlib_corpus(args.max_chars)
        except ValueError as e:
            raise CommandError(str(e)) from None
    if args.text is None:
        text = st.text.default_text()
    else:
        try:
            with open(args.text, encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError) as e:
            raise CommandError(f"cannot read --text {args.text}: {e}") from None
        if not text:
            raise CommandError(f"--text {args.text} is empty")
    split = int(0.9 * len(text))
    return [text[:split]], [text[split:]]


def main(argv: Optional[Sequence[str]] = None) -> int:
    """Runs the ``steepest`` command line with ``argv`` (default: ``sys.argv[1:]``).

    Returns the exit status: 0 on success, 1 when the request cannot be carried out (the
    message says what to change), 130 when interrupted. Invalid options raise SystemExit
    through argparse, with a usage message.
    """
    args = build_parser().parse_args(argv)
    # Under mpirun every rank trains its share; rank 0 alone reports (one progress bar,
    # one accuracy line) and writes files (model.save writes on rank 0 only).
    st.distributed._ensure_initialized()
    if st.distributed.rank() != 0:
        sys.stdout = open(os.devnull, "w")
    try:
        return args.func(args)
    except CommandError as e:
        print(f"steepest {args.command}: error: {e}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print(f"\nsteepest {args.command}: interrupted", file=sys.stderr)
        return 130
