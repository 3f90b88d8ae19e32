"""``st.Sequential`` and ``st.models.load_model``.

The model is a C++ object (``steepest._core.model.Sequential``); ``fit`` hands it whole
epochs. Python validates inputs, keeps the Keras bookkeeping (history, callbacks,
validation) and draws the progress bar, which the C++ loop refreshes at most ten
times a second. Warnings (Ctrl-C, a NaN loss) go to the ``logging`` logger "steepest".
"""

from __future__ import annotations

import functools
import json
import logging
import sys
import time
import weakref
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core, io
from . import callbacks as callbacks_module
from . import data as data_module
from . import distributed
from . import layers as layers_module
from . import lr_finder
from . import losses as losses_module
from . import metrics as metrics_module
from . import mixed_precision
from . import optimizers as optimizers_module
from ._core import Tensor
from .creation import from_numpy

_FORMAT_VERSION = "1"
_logger = logging.getLogger("steepest")


def _as_array(name: str, data: Any) -> np.ndarray:
    if isinstance(data, Tensor):
        return data.numpy()
    try:
        return np.asarray(data)
    except Exception as e:  # noqa: BLE001 - any unconvertible input
        raise TypeError(f"[fit] {name} must be array-like, got {type(data).__name__}: {e}") from None


def _as_float32(op: str, name: str, array: np.ndarray) -> np.ndarray:
    """A contiguous float32 copy, refusing wider floats that float32 cannot hold: cast,
    they would become inf and train the weights to NaN."""
    if array.dtype.kind == "f" and array.dtype.itemsize > 4:
        beyond = np.abs(array) > np.finfo(np.float32).max
        if beyond.any():
            first = tuple(int(i) for i in np.argwhere(beyond)[0])
            raise ValueError(f"[{op}] {name} has values beyond float32's range (first at index {first}); rescale it")
    return np.ascontiguousarray(array, dtype=np.float32)


def _interactive() -> bool:
    """Whether a progress bar can be redrawn in place: a terminal or a Jupyter notebook.
    Redrawn to a file or a CI log, every ``\\r`` would become a line of its own."""
    isatty = getattr(sys.stdout, "isatty", None)
    return bool(isatty and isatty()) or "ipykernel" in sys.modules


def _assign(weight: Tensor, value: Any) -> None:
    """Writes an array into a weight in place, on whatever device it lives: writing into
    ``weight.numpy()`` would change only a host copy of a GPU weight."""
    weight.copy_(from_numpy(np.ascontiguousarray(value)))


def _optional_count(op: str, name: str, value: Optional[int]) -> int:
    """A positive count, or 0 for None ("all of them")."""
    if value is None:
        return 0
    if not isinstance(value, int) or isinstance(value, bool) or value <= 0:
        raise ValueError(f"[{op}] {name} must be a positive int or None, got {value!r}")
    return value


def _validation_schedule(validation_freq: Union[int, Sequence[int]]) -> Callable[[int], bool]:
    """Keras' validation_freq: every n-th epoch (an int), or the listed 1-based epochs."""
    if isinstance(validation_freq, int) and not isinstance(validation_freq, bool):
        if validation_freq < 1:
            raise ValueError(f"[fit] validation_freq must be >= 1, got {validation_freq}")
        return lambda epoch: (epoch + 1) % validation_freq == 0
    if isinstance(validation_freq, (list, tuple, set, range)) and all(isinstance(e, int) for e in validation_freq):
        listed = set(validation_freq)
        return lambda epoch: epoch + 1 in listed
    raise ValueError(f"[fit] validation_freq must be an int or a list of epochs, got {validation_freq!r}")


class _CtrlC:
    """Ctrl-C that lands in Python code fit runs between batches (a callback, a hook):
    caught and remembered, so that fit stops at the next batch boundary as it does for
    Ctrl-C inside the C++ loop, instead of unwinding through that loop."""

    def __init__(self) -> None:
        self.pressed = False

    def call(self, function: Callable[..., Any], *args: Any) -> None:
        try:
            function(*args)
        except KeyboardInterrupt:
            self.pressed = True

    def each(self, callbacks: Sequence[callbacks_module.Callback], hook: str, *args: Any) -> None:
        for cb in callbacks:
            self.call(getattr(cb, hook), *args)


def _hooks(callbacks: Sequence[callbacks_module.Callback], hook: str, make_logs: Callable[[Any], Any],
           ctrl_c: Optional[_CtrlC] = None) -> Optional[Callable[[int, Any], None]]:
    """A function (batch, raw logs) that calls ``hook`` on the callbacks that override
    it, or None when none does, so that the batch loop stays in C++. With ``ctrl_c``,
    Ctrl-C in a hook is remembered there instead of raised."""
    chosen = callbacks_module.overriding(list(callbacks), hook)
    if not chosen:
        return None

    def call(batch: int, raw: Any = None) -> None:
        logs = make_logs(raw)
        for cb in chosen:
            if ctrl_c is None:
                getattr(cb, hook)(batch, logs)
            else:
                ctrl_c.call(getattr(cb, hook), batch, logs)

    return call


def _broadcast_product(a: np.ndarray, b: np.ndarray) -> np.ndarray:
    """a · b for arrays whose shapes agree on their leading axes: (B,) and (B, T) give (B, T)."""
    ndim = max(a.ndim, b.ndim)
    return a.reshape(a.shape + (1,) * (ndim - a.ndim)) * b.reshape(b.shape + (1,) * (ndim - b.ndim))


class _ProgressBar:
    """Keras-style progress line: ``12/57 [=====>....] - ETA: 1s - loss: 0.4123``.

    verbose=1 redraws it during the epoch where that can be done in place (see
    ``_interactive``) and otherwise, like verbose=2, prints one line per epoch."""

    def __init__(self, total: int, verbose: int, width: int = 30) -> None:
        """total: batches in the epoch; 0 when unknown (a stream that runs until it ends)."""
        if verbose == 1 and not _interactive():
            verbose = 2
        self.total, self.verbose, self.width = total, verbose, width
        self.start = time.perf_counter()

    @property
    def redraws(self) -> bool:
        return self.verbose == 1

    def _values(self, logs: Dict[str, float]) -> str:
        return "".join(f" - {k}: {v:.4f}" for k, v in logs.items())

    def update(self, batch: int, logs: Dict[str, float]) -> None:
        if self.verbose != 1:
            return
        elapsed = time.perf_counter() - self.start
        if not self.total:
            sys.stdout.write(f"\r{batch}/Unknown - {elapsed:.0f}s{self._values(logs)}")
            sys.stdout.flush()
            return
        filled = int(self.width * batch / max(self.total, 1))
        bar = "=" * max(filled - 1, 0) + (">" if batch < self.total else "=") if filled else ""
        bar = bar.ljust(self.width, ".")
        digits = len(str(self.total))
        if batch < self.total:
            eta = elapsed / max(batch, 1) * (self.total - batch)
            timing = f" - ETA: {eta:.0f}s"
        else:
            timing = f" - {elapsed:.0f}s {elapsed / max(self.total, 1) * 1e3:.0f}ms/step"
        sys.stdout.write(f"\r{batch:{digits}d}/{self.total} [{bar}]{timing}{self._values(logs)}")
        sys.stdout.flush()

    def finish(self, logs: Dict[str, float], batches: int = 0) -> None:
        """batches: those the epoch ran, which set an unknown total."""
        self.total = self.total or batches
        elapsed = time.perf_counter() - self.start
        if self.verbose == 1:
            self.update(self.total, {})
            sys.stdout.write(self._values(logs) + "\n")
        elif self.verbose == 2:
            sys.stdout.write(f"{self.total}/{self.total} - {elapsed:.0f}s{self._values(logs)}\n")
        sys.stdout.flush()


class Sequential:
    """A linear stack of layers trained by a C++ loop.

    >>> model = st.Sequential([st.layers.Input((64,)), st.layers.Dense(10)])
    >>> model.compile(optimizer="adamw", loss="sparse_categorical_crossentropy",
    ...               metrics=["accuracy"])
    >>> history = model.fit(x, y, epochs=5)
    """

    def __init__(self, layers: Optional[Sequence[Any]] = None, name: str = "sequential") -> None:
        self.name = name
        self._impl = _core.model.Sequential()
        self.layers: List[layers_module.Layer] = []
        self._input_shape: Optional[Tuple[int, ...]] = None
        self._input_dtype: Optional[str] = None  # Input(dtype=...); None: guessed
        self.optimizer: Optional[optimizers_module.Optimizer] = None
        self.loss: Optional[losses_module.Loss] = None
        self._policy: Optional[mixed_precision.Policy] = None
        # Dynamic loss scaling of fit under "mixed_float16" (set by compile).
        self.loss_scaler: Optional[mixed_precision.LossScaler] = None
        self.metrics_names: List[str] = []
        # The custom metrics (st.metrics.Metric), and where each compile-order metric's
        # value sits in the C++ logs: the built-in ones first, then the custom ones.
        self._custom_metrics: List[metrics_module.Metric] = []
        self._metric_slots: List[int] = []
        self._builtin_metrics: List[str] = []
        self._shard_optimizer_state = False
        self.stop_training = False
        self._epochs_done = 0
        self._batch_size = 32  # fit's batch size of the epoch running (BatchSizeScheduler)
        # fit's shuffling seed and first epoch, which BackupAndRestore saves and restores.
        self._shuffle_seed = 0
        self._initial_epoch = 0
        self._interrupted = False  # the last fit was stopped by Ctrl-C
        # Drawn now, so that st.manual_seed(s) before constructing fixes the weights.
        self._seed = int(_core.next_seed())
        for layer in layers or []:
            self.add(layer)

    # ------------------------------------------------------------------ structure

    def add(self, layer: Any) -> None:
        """Appends a layer (an ``Input`` only as the first entry)."""
        if isinstance(layer, layers_module.Input):
            if self.layers or self._input_shape is not None:
                raise ValueError("[Sequential.add] Input must come first, and only once")
            self._input_shape, self._input_dtype = layer.shape, layer.dtype
            return
        if not isinstance(layer, layers_module.Layer):
            raise TypeError(f"[Sequential.add] expected an st.layers layer, got {type(layer).__name__}")
        if self._impl.built:
            raise ValueError("[Sequential.add] the model is already built; add layers before fit")
        self._impl.add(layer._impl)
        self.layers.append(layer)

    @property
    def built(self) -> bool:
        return self._impl.built

    @property
    def input_shape(self) -> Optional[Tuple[Optional[int], ...]]:
        return None if self._input_shape is None else (None, *self._input_shape)

    def build(self, input_shape: Optional[Sequence[int]] = None) -> None:
        """Creates the weights for per-sample ``input_shape`` (or the Input layer's)."""
        if self._impl.built:
            return
        shape = tuple(input_shape) if input_shape is not None else self._input_shape
        if shape is None:
            raise ValueError(
                "[Sequential.build] the input shape is unknown; start the model with "
                "st.layers.Input(shape) or call build(input_shape)"
            )
        if not self.layers:
            raise ValueError("[Sequential.build] the model has no layers")
        self._claim_layers()
        self._input_shape = tuple(int(d) for d in shape)
        self._impl.build(list(self._input_shape), self._seed)
        if self.optimizer is not None:
            self._compile_impl()

    def _claim_layers(self) -> None:
        """A layer's weights belong to one model: building them again for a second model
        would silently re-draw the first one's."""
        for layer in self.layers:
            ref = getattr(layer, "_built_by", None)
            owner = ref() if ref is not None else None
            if owner is not None and owner is not self:
                raise ValueError(
                    f"[Sequential.build] layer {layer.name!r} already belongs to model {owner.name!r}; "
                    f"building it again would replace that model's weights: give each model its own layers"
                )
        for layer in self.layers:
            layer._built_by = weakref.ref(self)

    def parameters(self) -> List[Tensor]:
        """The trainable weights, in a fixed order (the optimizer state follows it)."""
        return self._impl.parameters()

    def get_weights(self) -> List[np.ndarray]:
        """Host copies of the trainable weights, wherever the model runs."""
        return [np.array(p.numpy()) for p in self.parameters()]

    def set_weights(self, weights: Sequence[np.ndarray]) -> None:
        """Writes the trainable weights in place (to the GPU for a model moved there)."""
        params = self.parameters()
        if len(weights) != len(params):
            raise ValueError(f"[set_weights] expected {len(params)} arrays, got {len(weights)}")
        for p, w in zip(params, weights):
            w = np.asarray(w)
            if tuple(w.shape) != tuple(p.shape):
                raise ValueError(f"[set_weights] weight of shape {w.shape} for a parameter of shape {p.shape}")
            _assign(p, w)

    # ------------------------------------------------------------------ compile

    def compile(self, optimizer: Any = "adamw", loss: Any = None,
                metrics: Optional[Sequence[Any]] = None,
                shard_optimizer_state: bool = False) -> None:
        """Chooses the optimizer (name or object), the loss (name, st.losses object, a
        subclass overriding ``call``, or a function ``fn(y_true, y_pred) -> Tensor``) and
        the metrics (names, ``st.metrics.Metric`` objects or functions
        ``fn(y_true, y_pred) -> Tensor``, named by ``__name__``), and takes the global
        mixed-precision policy
        (``st.mixed_precision``): under ``"mixed_float16"`` fit scales the loss with a new
        ``self.loss_scaler``.

        ``shard_optimizer_state=True`` (ZeRO stage 1) makes each rank of a data-parallel
        job keep the optimizer state of only its 1/world share of the parameters (laid end
        to end and cut into equal chunks); the weights trained are the same. It needs an
        elementwise optimizer (SGD, RMSprop, Adam, AdamW). Between fits
        ``optimizer.state_dict()`` then shows this rank's shard; ``save`` gathers the
        whole state.
        """
        if not isinstance(shard_optimizer_state, bool):
            raise TypeError(f"[compile] shard_optimizer_state must be True or False, got {shard_optimizer_state!r}")
        if loss is None:
            raise ValueError("[compile] a loss is required, e.g. loss='sparse_categorical_crossentropy'")
        self.optimizer = optimizers_module.get(optimizer)
        self.loss = losses_module.get(loss)
        if self.loss.reduction == "none":
            raise ValueError("[compile] fit needs a scalar loss: a loss with reduction='none' cannot train; "
                             "use 'sum_over_batch_size', 'sum' or 'mean_with_sample_weight'")
        self._policy = mixed_precision.global_policy()
        self.loss_scaler = mixed_precision.LossScaler() if self._policy.loss_scaling else None
        chosen = [metrics_module.get(m) for m in (metrics or [])]
        builtin = [m for m in chosen if isinstance(m, str)]
        self._custom_metrics = [m for m in chosen if not isinstance(m, str)]
        self.metrics_names = [m if isinstance(m, str) else m.name for m in chosen]
        builtin_slots, custom_slots = iter(range(len(builtin))), iter(range(len(builtin), len(chosen)))
        self._metric_slots = [next(builtin_slots if isinstance(m, str) else custom_slots) for m in chosen]
        self._builtin_metrics = builtin
        self._shard_optimizer_state = shard_optimizer_state
        if self._impl.built or self._input_shape is not None:
            self.build()

    def _from_logits(self) -> bool:
        # By name, cross-entropies expect probabilities (Keras); a model that ends
        # without softmax/sigmoid produces logits, so they are treated as such. The C++
        # loss fuses a final softmax/sigmoid into log-softmax either way.
        last = self.layers[-1]._impl.final_activation if self.layers else "linear"
        if self.loss.from_logits:
            return True
        return last not in ("softmax", "sigmoid")

    def _compile_impl(self) -> None:
        scaler = None if self.loss_scaler is None else self.loss_scaler._impl
        builtin = _builtin_loss(self.loss)
        custom = builtin is None
        self._impl.compile(self.optimizer._impl, "" if builtin is None else builtin.loss_name, self._from_logits(),
                           self._builtin_metrics, compute_dtype=self.dtype_policy.compute_dtype,
                           loss_scaler=scaler,
                           shard_optimizer_state=self._shard_optimizer_state,
                           custom_loss=_loss_callable(self.loss) if custom else None,
                           reduction=self.loss.reduction,
                           custom_metrics=metrics_module._MetricSet(self._custom_metrics) if self._custom_metrics else None,
                           custom_metric_count=len(self._custom_metrics))

    @property
    def dtype_policy(self) -> mixed_precision.Policy:
        """The mixed-precision policy compile took (before compile: the global one)."""
        return self._policy if self._policy is not None else mixed_precision.global_policy()

    # ------------------------------------------------------------------ data checks

    def _prepare_x(self, op: str, x: Any) -> Tensor:
        array = _as_array("x", x)
        if array.dtype.kind not in "fiub":
            raise TypeError(f"[{op}] x must be numeric, got dtype {array.dtype}")
        if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
            bad = tuple(int(i) for i in np.argwhere(~np.isfinite(array))[0])
            raise ValueError(f"[{op}] x contains NaN or inf (first at index {bad}); clean the data first")
        if array.ndim < 1:
            raise ValueError(f"[{op}] x must have a batch axis, got a scalar")
        if not self._impl.built:
            self.build(array.shape[1:])
        expected = self._input_shape
        if tuple(array.shape[1:]) != tuple(expected):
            raise ValueError(
                f"[{op}] the model expects inputs of shape {(None, *expected)}, got x of shape "
                f"{array.shape}; reshape x or rebuild the model with st.layers.Input({tuple(array.shape[1:])})"
            )
        if self._integer_input():
            if array.dtype.kind == "f" and np.any(array != np.round(array)):
                raise ValueError(f"[{op}] the model takes integer inputs (token ids), got x with fractions")
            return from_numpy(np.ascontiguousarray(array, dtype=np.int64))
        return from_numpy(_as_float32(op, "x", array))

    def _integer_input(self) -> bool:
        if self._input_dtype is not None:
            return self._input_dtype.startswith("int")
        return bool(self.layers) and isinstance(
            self.layers[0], (layers_module.Embedding, layers_module.TokenAndPositionEmbedding))

    def _prepare_y(self, op: str, y: Any, n: int) -> Tensor:
        array = _as_array("y", y)
        if array.shape[:1] != (n,):
            raise ValueError(f"[{op}] x has {n} samples but y has shape {array.shape}; they must match")
        if losses_module._is_custom(self.loss):
            # A custom loss gets the labels as given: integers as int64, the rest float32.
            if array.dtype.kind in "iub":
                array = array.astype(np.int64)
            else:
                if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                    raise ValueError(f"[{op}] y contains NaN or inf; clean the labels first")
                array = _as_float32(op, "y", array)
        elif _builtin_labels(self.loss) == "next_tokens":
            if array.dtype.kind not in "iu":
                raise TypeError(f"[{op}] causal language modelling needs integer token ids as y")
            array = array.astype(np.int64)
            vocab = self.layers[-1].output_shape[-1]
            if array.size and (array.min() < 0 or array.max() >= vocab):
                raise ValueError(f"[{op}] token ids must be in [0, {vocab - 1}] for a vocabulary of {vocab}")
        elif _builtin_labels(self.loss) == "class_indices":
            if array.dtype.kind == "f":
                if not np.all(np.isfinite(array)) or np.any(array != np.round(array)):
                    raise ValueError(f"[{op}] sparse labels must be integer class indices")
            output_shape = (n, *self.layers[-1].output_shape[1:])
            expected = output_shape[:-1]
            # Keras also takes a trailing axis of 1, as in (B, 1) labels for (B, C) outputs.
            if array.shape == (*expected, 1):
                array = array.reshape(expected)
            if array.shape != expected:
                raise ValueError(
                    f"[{op}] sparse labels of shape {array.shape} do not fit outputs of shape "
                    f"{output_shape}: expected class indices of shape {expected}"
                )
            array = array.astype(np.int64)
            classes = output_shape[-1]
            if array.size and (array.min() < 0 or array.max() >= classes):
                bad = array.min() if array.min() < 0 else array.max()
                raise ValueError(
                    f"[{op}] label {bad} is out of range: the model outputs {classes} classes "
                    f"(labels must be in [0, {classes - 1}])"
                )
        else:
            if array.dtype.kind == "f" and not np.all(np.isfinite(array)):
                raise ValueError(f"[{op}] y contains NaN or inf; clean the labels first")
            array = _as_float32(op, "y", array)
        return from_numpy(np.ascontiguousarray(array))

    def _prepare_weights(self, op: str, sample_weight: Any, class_weight: Optional[Dict[int, float]],
                         y: Tensor) -> Optional[Tensor]:
        """Per-sample (or per-position) loss weights: sample_weight times the weight of
        each label's class, or None when neither is given."""
        weights = None
        if sample_weight is not None:
            weights = _as_array("sample_weight", sample_weight)
            if weights.dtype.kind not in "fiub":
                raise TypeError(f"[{op}] sample_weight must be numeric, got dtype {weights.dtype}")
            if weights.ndim == 0 or weights.shape[0] != y.shape[0]:
                raise ValueError(
                    f"[{op}] sample_weight of shape {weights.shape} for {y.shape[0]} samples; "
                    f"expected one weight per sample, shape ({y.shape[0]},)"
                )
            if not np.all(np.isfinite(weights)):
                raise ValueError(f"[{op}] sample_weight contains NaN or inf")
        if class_weight is not None:
            if not isinstance(class_weight, dict):
                raise TypeError(f"[{op}] class_weight must be a dict {{class index: weight}}, got {class_weight!r}")
            labels = y.numpy()
            # Keras: class indices, one-hot rows (argmax), or 0/1 targets (rounded).
            if labels.dtype.kind in "iu":
                classes = labels
            elif labels.ndim > 1 and labels.shape[-1] > 1:
                classes = labels.argmax(axis=-1)
            else:
                classes = np.round(labels.reshape(labels.shape[:-1] if labels.ndim > 1 else labels.shape))
            classes = classes.astype(np.int64)
            table = np.ones(max([int(classes.max(initial=0)), *map(int, class_weight)]) + 1)
            for c, w in class_weight.items():
                table[int(c)] = float(w)
            by_class = table[classes]
            weights = by_class if weights is None else _broadcast_product(weights, by_class)
        if weights is None:
            return None
        return from_numpy(_as_float32(op, "sample_weight", weights))

    def _prepare_batch(self, op: str, index: int, raw: Any, class_weight: Optional[Dict[int, float]] = None,
                       labelled: bool = True) -> data_module.Prepared:
        """One batch of a generator or PyDataset, checked as arrays are, with its index
        in the messages: (x, y[, sample_weight]) for fit and evaluate; for predict x, or
        a tuple whose first entry is x."""
        if isinstance(raw, list):
            raw = tuple(raw)
        if not isinstance(raw, tuple):
            if labelled:
                raise TypeError(f"[{op}] batch {index}: expected a tuple (x, y) or (x, y, sample_weight), "
                                f"got {type(raw).__name__}")
            raw = (raw,)
        if not 1 <= len(raw) <= 3 or (labelled and len(raw) == 1):
            raise ValueError(f"[{op}] batch {index}: expected a tuple (x, y) or (x, y, sample_weight), "
                             f"got a tuple of {len(raw)} entries")
        x, y, w = (*raw, None, None)[:3]
        try:
            xt = self._prepare_x(op, x)
            if xt.shape[0] == 0:
                raise ValueError("the batch has no samples")
            if not labelled:
                return xt, None, None
            if y is None:
                raise ValueError("the batch has no labels (y is None)")
            yt = self._prepare_y(op, y, xt.shape[0])
            return xt, yt, self._prepare_weights(op, w, class_weight, yt)
        except (ValueError, TypeError) as e:
            message = str(e)
            message = message[len(f"[{op}] "):] if message.startswith(f"[{op}] ") else message
            raise type(e)(f"[{op}] batch {index}: {message}") from None

    def _stream(self, op: str, x: Any, y: Any, steps: int, sample_weight: Any = None,
                labelled: bool = True) -> data_module.Stream:
        """A generator, iterable or PyDataset as a Stream, the model built from its first
        batch when it has no Input."""
        if y is not None or sample_weight is not None:
            raise ValueError(f"[{op}] y and sample_weight cannot be given when x is a generator, iterable or "
                             f"PyDataset: its batches hold them, as (x, y[, sample_weight])")
        stream = data_module.Stream(op, x, steps)
        if not self._impl.built:
            self._prepare_batch(op, 0, stream.peek(), labelled=labelled)
        return stream

    def _stream_pass(self, stream: data_module.Stream, run: Callable[[Any], Any],
                     prepare: Callable[[int, Any], data_module.Prepared],
                     order_seed: Optional[Sequence[int]] = None) -> Any:
        """One pass over a stream by the C++ loop `run(queue)`; a producer's exception
        reaches the caller as it was raised."""
        queue = stream.start(prepare, order_seed)
        try:
            result = run(queue)
        except BaseException:
            stream.raise_error()
            raise
        stream.end_pass()
        return result

    def _check_compiled(self, op: str) -> None:
        if self.optimizer is None:
            raise RuntimeError(f"[{op}] the model must be compiled first: call model.compile(optimizer=..., loss=...)")

    # ------------------------------------------------------------------ training

    def fit(self, x: Any, y: Any = None, batch_size: int = 32, epochs: int = 1,
            validation_data: Optional[Tuple[Any, ...]] = None, validation_split: float = 0.0,
            shuffle: bool = True, verbose: int = 1,
            callbacks: Optional[Sequence[callbacks_module.Callback]] = None,
            seed: Optional[int] = None, sample_weight: Any = None,
            class_weight: Optional[Dict[int, float]] = None, initial_epoch: int = 0,
            steps_per_epoch: Optional[int] = None, validation_steps: Optional[int] = None,
            validation_freq: Union[int, Sequence[int]] = 1,
            gradient_accumulation_steps: int = 1) -> callbacks_module.History:
        """Trains from epoch ``initial_epoch`` up to ``epochs``; returns a History whose
        ``.history`` maps "loss", each metric, and their "val_" counterparts to per-epoch
        values.

        As in Keras: ``sample_weight`` (one weight per sample, or per position such as
        (B, T)) and ``class_weight`` ({class: weight}) weigh the loss terms, which the
        loss's ``reduction`` then reduces, by default to Σ w·loss divided by the number of
        loss terms, exactly as calling the loss object does (metrics stay unweighted); ``validation_data`` may be
        (x, y) or (x, y, sample_weight). ``steps_per_epoch`` runs only the first that many
        batches of each epoch's order, ``validation_steps`` evaluates that many validation
        batches, and ``validation_freq`` validates every that many epochs (an int) or
        after the listed epochs (1-based).

        ``x`` may also be a generator or iterable of ``(x, y[, sample_weight])`` batches
        or an ``st.data.PyDataset`` (``validation_data`` too). A generator cannot restart:
        each epoch continues where the last ended, and an endless one needs
        ``steps_per_epoch``. An input that runs out before ``steps_per_epoch`` batches
        stops training with a warning. ``shuffle`` shuffles a PyDataset's batch order.

        Ctrl-C stops after the current step and keeps the weights of the last finished
        step. With ``seed`` the shuffling is reproducible, also across save/load.
        ``gradient_accumulation_steps=k`` sums the gradients of k batches before each
        optimizer step: the same update as a batch k times larger.

        Under ``st.distributed`` with several processes (``mpirun -n 2 python train.py``)
        every rank passes the same data; ``batch_size`` is the global batch, each rank
        computes its contiguous share of every batch, and the update uses the gradient of
        the mean loss over the whole global batch. Rank 0's initial weights go to every
        rank, losses, metrics and History are global, only rank 0 prints, and stop
        decisions (callbacks, NaN, Ctrl-C) are taken by all ranks together.
        """
        distributed._ensure_initialized()
        ranks = distributed.world_size()
        if not isinstance(gradient_accumulation_steps, int) or gradient_accumulation_steps < 1:
            raise ValueError(
                f"[fit] gradient_accumulation_steps must be a positive int, got {gradient_accumulation_steps!r}"
            )
        self._check_compiled("fit")
        if not isinstance(batch_size, int) or batch_size <= 0:
            raise ValueError(f"[fit] batch_size must be a positive int, got {batch_size!r}")
        if verbose not in (0, 1, 2):
            raise ValueError(f"[fit] verbose must be 0, 1 or 2, got {verbose!r}")
        if distributed.rank() != 0:
            verbose = 0
        if not 0.0 <= validation_split < 1.0:
            raise ValueError(f"[fit] validation_split must be in [0, 1), got {validation_split}")
        if not isinstance(initial_epoch, int) or initial_epoch < 0:
            raise ValueError(f"[fit] initial_epoch must be an int >= 0, got {initial_epoch!r}")
        steps = _optional_count("fit", "steps_per_epoch", steps_per_epoch)
        validation_batches = _optional_count("fit", "validation_steps", validation_steps)
        validates = _validation_schedule(validation_freq)
        stream: Optional[data_module.Stream] = None
        if data_module.is_stream(x, y):
            if validation_split:
                raise ValueError("[fit] validation_split needs arrays; pass validation_data with a generator or PyDataset")
            stream = self._stream("fit", x, y, steps, sample_weight)
            xt = yt = wt = None
        else:
            xt, yt, wt, split = self._fit_arrays(x, y, sample_weight, class_weight,
                                                 validation_split if validation_data is None else 0.0)
            validation_data = split if split is not None else validation_data
        self._compile_impl()
        if ranks > 1:
            self._impl.synchronize_replicas()
        validation: Union[None, Tuple[Tensor, Tensor, Optional[Tensor]], data_module.Stream] = None
        if validation_data is not None and data_module.is_stream(validation_data, None):
            validation = self._stream("fit", validation_data, None, validation_batches)
        elif validation_data is not None:
            if not isinstance(validation_data, (tuple, list)) or len(validation_data) not in (2, 3):
                raise ValueError("[fit] validation_data must be (x, y), (x, y, sample_weight), a generator or a PyDataset")
            vx, vy, vw = (*validation_data, None)[:3]
            vxt = self._prepare_x("fit", vx)
            vyt = self._prepare_y("fit", vy, vxt.shape[0])
            validation = (vxt, vyt, self._prepare_weights("fit", vw, None, vyt))
        try:
            return self._train(xt, yt, wt, stream, batch_size, epochs, validation, shuffle, verbose, callbacks,
                               seed, class_weight, steps, validation_batches, validates,
                               gradient_accumulation_steps, ranks, initial_epoch)
        finally:
            # The producers of streamed inputs stop and are joined, however fit ends.
            for source in (stream, validation):
                if isinstance(source, data_module.Stream):
                    source.close()

    def _fit_arrays(self, x: Any, y: Any, sample_weight: Any, class_weight: Optional[Dict[int, float]],
                    validation_split: float
                    ) -> Tuple[Tensor, Tensor, Optional[Tensor], Optional[Tuple[Any, ...]]]:
        """fit's arrays as tensors, and with validation_split the validation data split off."""
        x_array, y_array = _as_array("x", x), _as_array("y", y)
        if x_array.ndim == 0 or y_array.ndim == 0 or len(x_array) != len(y_array):
            raise ValueError(
                f"[fit] x and y must have the same number of samples, got x of shape "
                f"{x_array.shape} and y of shape {y_array.shape}"
            )
        w_array = None if sample_weight is None else _as_array("sample_weight", sample_weight)
        split = None
        if validation_split:
            # Keras: the last fraction of the samples, taken before shuffling.
            cut = int(len(x_array) * (1.0 - validation_split))
            split = (x_array[cut:], y_array[cut:], None if w_array is None else w_array[cut:])
            x_array, y_array = x_array[:cut], y_array[:cut]
            w_array = None if w_array is None else w_array[:cut]
        xt = self._prepare_x("fit", x_array)
        yt = self._prepare_y("fit", y_array, len(x_array))
        return xt, yt, self._prepare_weights("fit", w_array, class_weight, yt), split

    def _train(self, xt: Optional[Tensor], yt: Optional[Tensor], wt: Optional[Tensor],
               stream: Optional[data_module.Stream], batch_size: int, epochs: int,
               validation: Union[None, Tuple[Tensor, Tensor, Optional[Tensor]], data_module.Stream],
               shuffle: bool, verbose: int, callbacks: Optional[Sequence[callbacks_module.Callback]],
               seed: Optional[int], class_weight: Optional[Dict[int, float]], steps: int,
               validation_batches: int, validates: Callable[[int], bool], gradient_accumulation_steps: int,
               ranks: int, initial_epoch: int) -> callbacks_module.History:
        """fit's epochs over (xt, yt, wt) or the stream."""
        history = callbacks_module.History()
        # History last, as in Keras: it records the logs as the other callbacks left them
        # (ReduceLROnPlateau adds the learning rate).
        all_callbacks = [*(callbacks or []), history]
        stop_on_nan = any(getattr(cb, "stop_on_nan", False) for cb in all_callbacks)
        for cb in all_callbacks:
            cb.set_model(self)
        self.stop_training = False
        self._interrupted = False
        ctrl_c = _CtrlC()

        def stop_for_ctrl_c() -> None:
            if verbose and not self._interrupted:
                _logger.warning("Training interrupted (Ctrl-C): weights are those of the last finished step.")
            self._interrupted = self.stop_training = True

        base_seed = int(seed) if seed is not None else int(np.random.SeedSequence().entropy % (2**63))
        if ranks > 1:  # one shuffle order for all ranks
            base_seed = int(distributed._broadcast_object(base_seed, 0))
        n = 0 if xt is None else xt.shape[0]

        def array_batches(size: int) -> int:
            count = (n + size - 1) // size
            return min(count, steps) if steps else count

        batches = array_batches(batch_size) if stream is None else stream.steps  # 0: unknown until the end
        # BatchSizeScheduler's on_epoch_begin may change it for the epoch that starts.
        self._batch_size = batch_size
        prepare = functools.partial(self._prepare_batch, "fit", class_weight=class_weight)
        # BackupAndRestore's on_train_begin may move both on, to resume a crashed fit.
        self._shuffle_seed, self._initial_epoch = base_seed, initial_epoch
        try:
            ctrl_c.each(all_callbacks, "on_train_begin", None)
            base_seed = self._shuffle_seed
            batch_begin = _hooks(all_callbacks, "on_train_batch_begin", lambda logs: None, ctrl_c)
            batch_end = _hooks(all_callbacks, "on_train_batch_end", lambda logs: self._named(logs, train=True),
                               ctrl_c)
            logs: Dict[str, float] = {}
            try:
                for epoch in range(self._initial_epoch, epochs):
                    if not ctrl_c.pressed:
                        ctrl_c.each(all_callbacks, "on_epoch_begin", epoch, None)
                    if ctrl_c.pressed:
                        stop_for_ctrl_c()
                        break
                    if self._batch_size != batch_size:
                        if stream is not None:
                            raise ValueError("[fit] BatchSizeScheduler sets the batch size of array inputs; "
                                             "a generator or PyDataset makes its own batches")
                        batch_size = self._batch_size
                        batches = array_batches(batch_size)
                    if verbose:
                        print(f"Epoch {epoch + 1}/{epochs}")
                    order = None
                    if shuffle and stream is None:
                        rng = np.random.default_rng([base_seed, self._epochs_done])
                        order = rng.permutation(n).astype(np.int64)
                    bar = _ProgressBar(batches, verbose)

                    def progress(batch: int, total: int, logs: Dict[str, Any]) -> bool:
                        if bar.redraws:
                            bar.update(batch, self._named(logs, train=True))
                        if batch_end is not None:
                            batch_end(batch - 1, logs)
                        return not (self.stop_training or ctrl_c.pressed)

                    # Python runs after every batch only for a batch hook; for the bar
                    # alone, at most every 0.1 s.
                    hooked = batch_end is not None or batch_begin is not None
                    report = progress if bar.redraws or hooked else None
                    if stream is None:
                        result = self._impl.train_epoch(xt, yt, batch_size, order, stop_on_nan, report,
                                                        report_seconds=0.0 if hooked else 0.1,
                                                        accumulation_steps=gradient_accumulation_steps,
                                                        sample_weight=wt, steps=steps, batch_begin=batch_begin)
                    else:
                        result = self._stream_pass(
                            stream, lambda queue: self._impl.train_epoch_stream(
                                queue, stream.steps, stop_on_nan, report, report_seconds=0.0 if hooked else 0.1,
                                accumulation_steps=gradient_accumulation_steps, batch_begin=batch_begin),
                            prepare, [base_seed, self._epochs_done] if shuffle else None)
                        if result["exhausted"] and not result["interrupted"]:
                            _logger.warning(
                                "Your input ran out of data; interrupting training. Make sure that your dataset "
                                "or generator can generate at least `steps_per_epoch * epochs` batches.")
                            self.stop_training = True
                            if not result["batches"]:
                                break
                    self._epochs_done += 1
                    logs = self._named(result, train=True)
                    if validation is not None and not result["stopped"] and not ctrl_c.pressed and validates(epoch):
                        try:
                            if isinstance(validation, data_module.Stream):
                                val = self._run_evaluation(None, None, None, batch_size, validation_batches,
                                                           all_callbacks, validation)
                            else:
                                val = self._run_evaluation(*validation, batch_size, validation_batches, all_callbacks)
                        except KeyboardInterrupt:  # the epoch is kept, without its partial validation
                            ctrl_c.pressed = True
                        else:
                            logs.update({f"val_{k}": v for k, v in val.items()})
                    bar.finish(logs, result["batches"])
                    if result["interrupted"] or ctrl_c.pressed:
                        stop_for_ctrl_c()
                    if result["nan_loss"]:
                        if verbose:
                            _logger.warning("Batch %d: invalid loss, terminating training", result["batches"] + 1)
                        self.stop_training = True
                    ctrl_c.each(all_callbacks, "on_epoch_end", epoch, logs)
                    if ctrl_c.pressed:
                        stop_for_ctrl_c()
                    if ranks > 1:
                        self.stop_training = distributed._agree_any(self.stop_training)
                    if self.stop_training:
                        break
            except KeyboardInterrupt:  # landed in fit's own Python code between two epochs
                stop_for_ctrl_c()
            for cb in all_callbacks:
                cb.on_train_end(logs)
        except BaseException:
            # A callback that raised (or a second Ctrl-C) ends fit; files still get closed.
            for cb in all_callbacks:
                getattr(cb, "_close", lambda: None)()
            raise
        return history

    def _run_evaluation(self, xt: Optional[Tensor], yt: Optional[Tensor], wt: Optional[Tensor], batch_size: int,
                        steps: int, callbacks: Sequence[callbacks_module.Callback],
                        stream: Optional[data_module.Stream] = None) -> Dict[str, float]:
        """The test loop of evaluate and of fit's validation, with the test hooks; over
        (xt, yt, wt) or the stream."""
        for cb in callbacks:
            cb.on_test_begin(None)
        ctrl_c = _CtrlC()
        batch_begin = _hooks(callbacks, "on_test_batch_begin", lambda logs: None, ctrl_c)
        batch_end = _hooks(callbacks, "on_test_batch_end", self._named, ctrl_c)

        def progress(batch: int, total: int, logs: Dict[str, Any]) -> bool:
            if batch_end is not None:
                batch_end(batch - 1, logs)
            return not ctrl_c.pressed

        hooked = batch_end is not None or batch_begin is not None
        report = progress if hooked else None
        if stream is None:
            result = self._impl.evaluate(xt, yt, batch_size, sample_weight=wt, steps=steps, callback=report,
                                         report_seconds=0.0 if hooked else 0.25, batch_begin=batch_begin)
        else:
            result = self._stream_pass(
                stream, lambda queue: self._impl.evaluate_stream(queue, stream.steps, callback=report,
                                                                 report_seconds=0.0 if hooked else 0.25,
                                                                 batch_begin=batch_begin),
                functools.partial(self._prepare_batch, stream.op))
            if result["exhausted"] and not result["interrupted"]:
                raise ValueError(f"[{stream.op}] the evaluation input ran out of data before its first batch; "
                                 "a generator cannot restart: give validation_steps, or pass a PyDataset")
        if result["interrupted"] or ctrl_c.pressed:
            # Raised, not returned: the loss of the batches done would pass for the whole data's.
            raise KeyboardInterrupt
        logs = self._named(result)
        for cb in callbacks:
            cb.on_test_end(logs)
        return logs

    def _named(self, logs: Dict[str, Any], train: bool = False) -> Dict[str, float]:
        named = {"loss": float(logs["loss"])}
        for name, slot in zip(self.metrics_names, self._metric_slots):
            named[name] = float(logs["metrics"][slot])
        if train and "loss_scale" in logs:  # under mixed_float16: the scale after the step
            named["loss_scale"] = float(logs["loss_scale"])
        return named

    def evaluate(self, x: Any, y: Any = None, batch_size: int = 32, verbose: int = 0,
                 sample_weight: Any = None, steps: Optional[int] = None,
                 callbacks: Optional[Sequence[callbacks_module.Callback]] = None,
                 return_dict: bool = False) -> Union[float, List[float], Dict[str, float]]:
        """The loss and metrics over (x, y), as Keras 3 returns them: the loss as a float
        when the model has no metrics, else ``[loss, *metrics]`` in compile order; with
        ``return_dict=True`` a dict keyed by name. ``sample_weight`` weighs the loss as
        in ``fit``; ``steps`` evaluates only the first that many batches; callbacks get
        the test hooks. ``x`` may be a generator, iterable or PyDataset of
        ``(x, y[, sample_weight])`` batches, as in fit."""
        self._check_compiled("evaluate")
        distributed._ensure_initialized()
        count = _optional_count("evaluate", "steps", steps)
        stream: Optional[data_module.Stream] = None
        if data_module.is_stream(x, y):
            stream = self._stream("evaluate", x, y, count, sample_weight)
            xt = yt = wt = None
        else:
            xt = self._prepare_x("evaluate", x)
            yt = self._prepare_y("evaluate", y, xt.shape[0])
            wt = self._prepare_weights("evaluate", sample_weight, None, yt)
        self._compile_impl()
        callbacks = list(callbacks or [])
        for cb in callbacks:
            cb.set_model(self)
        try:
            logs = self._run_evaluation(xt, yt, wt, batch_size, count, callbacks, stream)
        finally:
            if stream is not None:
                stream.close()
        if verbose and distributed.rank() == 0:
            print(" - ".join(f"{k}: {v:.4f}" for k, v in logs.items()))
        if return_dict:
            return logs
        values = list(logs.values())
        return values if len(values) > 1 else values[0]

    def predict(self, x: Any, batch_size: int = 32, verbose: int = 0,
                callbacks: Optional[Sequence[callbacks_module.Callback]] = None,
                steps: Optional[int] = None) -> np.ndarray:
        """The model's outputs for x (inference mode: dropout off) as a NumPy array.
        Callbacks get the predict hooks; a batch's end sees ``{"outputs": array}``.
        ``x`` may be a generator, iterable or PyDataset of batches (x, or tuples whose
        first entry is x); ``steps`` predicts only that many batches."""
        count = _optional_count("predict", "steps", steps)
        stream = self._stream("predict", x, None, count, labelled=False) if data_module.is_stream(x, None) else None
        xt = self._prepare_x("predict", x) if stream is None else None
        callbacks = list(callbacks or [])
        for cb in callbacks:
            cb.set_model(self)
            cb.on_predict_begin(None)
        batch_end = _hooks(callbacks, "on_predict_batch_end", lambda outputs: {"outputs": outputs.numpy()})
        batch_begin = _hooks(callbacks, "on_predict_batch_begin", lambda logs: None)
        if stream is None:
            if count:
                xt = xt[: count * batch_size]
            outputs = self._impl.predict(xt, batch_size, batch_begin=batch_begin, batch_end=batch_end).numpy()
        else:
            try:
                outputs = self._stream_pass(
                    stream, lambda queue: self._impl.predict_stream(queue, stream.steps, batch_begin=batch_begin,
                                                                    batch_end=batch_end),
                    functools.partial(self._prepare_batch, "predict", labelled=False)).numpy()
            finally:
                stream.close()
        for cb in callbacks:
            cb.on_predict_end(None)
        return outputs

    def __call__(self, x: Tensor, training: bool = False) -> Tensor:
        """Eager forward pass with autograd (for custom training loops)."""
        if not self._impl.built:
            self.build(x.shape[1:])
        return self._impl.forward(x, training)

    # ------------------------------------------------------------------ reporting

    def count_params(self) -> int:
        return sum(p.numel() for p in self.parameters())

    def summary(self, print_fn=print) -> None:
        """Prints the layers with their output shapes and parameter counts."""
        if not self._impl.built:
            self.build()
        rows = [(f"{layer.name} ({type(layer).__name__})", str(layer.output_shape), f"{layer.count_params():,}")
                for layer in self.layers]
        headers = ("Layer (type)", "Output Shape", "Param #")
        widths = [max(len(h), *(len(r[i]) for r in rows)) + 2 for i, h in enumerate(headers)]
        line = "─" * sum(widths)
        policy = self.dtype_policy
        print_fn(f'Model: "{self.name}"')
        print_fn(f"Dtype policy: {policy.name} (variables {policy.variable_dtype}, "
                 f"compute {policy.compute_dtype})")
        print_fn(line)
        print_fn("".join(h.ljust(w) for h, w in zip(headers, widths)))
        print_fn(line)
        for r in rows:
            print_fn("".join(c.ljust(w) for c, w in zip(r, widths)))
        print_fn(line)
        total = sum(layer.count_params() for layer in self.layers)
        trainable = self.count_params()
        print_fn(f"Total params: {total:,} ({total * 4 / 1024:.2f} KB, {policy.variable_dtype})")
        print_fn(f"Trainable params: {trainable:,}")
        print_fn(f"Non-trainable params: {total - trainable:,}")
        print_fn(line)

    def to(self, device: str) -> "Sequential":
        """Moves the weights to ``device`` ("cpu", "cuda" or "cuda:N") and keeps them there.

        fit, evaluate and predict then copy each batch from the host to the device, so x
        and y stay NumPy arrays or CPU tensors; predict returns host arrays. The optimizer
        state follows the parameters at the next step. get/set_weights, save and
        BackupAndRestore copy through host memory.
        """
        if device != "cpu":
            backends = _core.backends()
            if not backends["cuda"]:
                raise RuntimeError(
                    f"[Sequential.to] device {device!r} is not available: this build of steepest "
                    f"{'has no CUDA backend' if not backends['cuda_compiled'] else 'found no GPU'}"
                )
        self._impl.to(device)
        return self

    # ------------------------------------------------------------------ persistence

    def get_config(self) -> Dict[str, Any]:
        return {
            "name": self.name,
            "input_shape": list(self._input_shape) if self._input_shape else None,
            "input_dtype": self._input_dtype,
            "layers": [{"class_name": type(l).__name__, "config": l.get_config()} for l in self.layers],
        }

    def _optimizer_state(self) -> Dict[str, Any]:
        """The optimizer's per-parameter state_dict. After a fit with sharded state (ZeRO)
        each rank holds its shard only, so this gathers it first: a collective, which
        every rank calls."""
        if distributed.world_size() > 1:
            self._impl.gather_optimizer_state()
        return self.optimizer.state_dict()

    def save(self, path: str) -> None:
        """Writes weights, optimizer state and the architecture/compile config to one
        safetensors file, atomically.

        In a data-parallel job every rank calls it (as the same script runs everywhere)
        and only rank 0 writes; sharded optimizer state is gathered there first.
        """
        self._write(path, {})

    def _write(self, path: str, extra_metadata: Dict[str, str]) -> None:
        if not self._impl.built:
            self.build()
        state = self._optimizer_state() if self.optimizer is not None else None
        if distributed.rank() != 0:
            return
        tensors: Dict[str, np.ndarray] = {}
        for layer in self.layers:
            for wname, w in layer.weights.items():
                tensors[f"model/{layer.name}/{wname}"] = w.numpy()
        metadata = {"format": "steepest", "format_version": _FORMAT_VERSION,
                    "config": json.dumps(self.get_config()),
                    "epochs_done": str(self._epochs_done), **extra_metadata}
        if state is not None:
            slots = []
            for index, entry in enumerate(state["state"]):
                if entry is None:
                    slots.append(None)
                    continue
                record = {"step": int(entry["step"]), "slots": []}
                for key, value in entry.items():
                    if key == "step":
                        continue
                    tensors[f"optimizer/{index}/{key}"] = np.asarray(value)
                    record["slots"].append(key)
                slots.append(record)
            compile_config = {
                "optimizer": {"class_name": state["class_name"], "config": state["config"],
                              "iterations": state["iterations"], "state": slots,
                              "exclude_from_weight_decay": state["exclude_from_weight_decay"]},
                "loss": _loss_entry(self.loss),
                "metrics": self._metric_entries(),
                "dtype_policy": self.dtype_policy.name,
            }
            if self.loss_scaler is not None:
                compile_config["loss_scaler"] = self.loss_scaler.state_dict()
            metadata["compile"] = json.dumps(compile_config)
        io.write(path, tensors, metadata)

    def _metric_entries(self) -> List[Any]:
        """The metrics as saved: built-in names, {"function": name} for functions and
        {"class_name", "config"} for Metric objects (both brought back by custom_objects)."""
        entries: List[Any] = []
        for name, slot in zip(self.metrics_names, self._metric_slots):
            if slot < len(self._builtin_metrics):
                entries.append(name)
                continue
            metric = self._custom_metrics[slot - len(self._builtin_metrics)]
            if isinstance(metric, metrics_module.MeanMetricWrapper):
                entries.append({"function": metric.name})
            else:
                entries.append({"class_name": type(metric).__name__, "config": metric.get_config()})
        return entries

    def _load_weights(self, tensors: Dict[str, np.ndarray], path: str,
                      saved_names: Optional[List[str]] = None) -> None:
        """Weights by layer name; with ``saved_names``, the i-th layer takes the weights
        saved under the i-th name (a model built again gets new automatic names)."""
        names = saved_names if saved_names is not None else [layer.name for layer in self.layers]
        if len(names) != len(self.layers):
            raise ValueError(f"[load_model] {path} holds {len(names)} layers, the model has {len(self.layers)}")
        for layer, name in zip(self.layers, names):
            for wname, w in layer.weights.items():
                key = f"model/{name}/{wname}"
                if key not in tensors:
                    raise ValueError(f"[load_model] {path} has no weight {key!r}")
                _assign(w, tensors[key])

    def _save_backup(self, path: str, epochs_finished: int) -> None:
        """BackupAndRestore's file: ``save`` plus where fit stands."""
        state = {"epoch": epochs_finished, "shuffle_seed": self._shuffle_seed}
        self._write(path, {"backup": json.dumps(state)})

    def _restore_backup(self, path: str) -> None:
        """Puts the model, its optimizer and fit's epoch and shuffling back where
        ``_save_backup`` left them."""
        tensors, metadata = io.read(path)
        if "backup" not in metadata or "compile" not in metadata:
            raise ValueError(f"[BackupAndRestore] {path} is not a backup written by BackupAndRestore")
        saved_layers = json.loads(metadata["config"])["layers"]
        self._load_weights(tensors, path, [entry["config"]["name"] for entry in saved_layers])
        self._epochs_done = int(metadata["epochs_done"])
        compile_config = json.loads(metadata["compile"])
        self.optimizer.load_state_dict(_saved_optimizer_state(tensors, compile_config["optimizer"]))
        if self.loss_scaler is not None and "loss_scaler" in compile_config:
            self.loss_scaler.load_state_dict(compile_config["loss_scaler"])
        self._compile_impl()
        state = json.loads(metadata["backup"])
        self._shuffle_seed, self._initial_epoch = int(state["shuffle_seed"]), int(state["epoch"])

    def find_learning_rate(self, x: Any, y: Any = None, start: float = 1e-7, end: float = 10.0,
                           steps: int = 100, batch_size: int = 32, smoothing: float = 0.98,
                           divergence: float = 4.0,
                           seed: Optional[int] = None) -> Tuple[np.ndarray, np.ndarray, float]:
        """The learning-rate range test (Smith 2017): ``steps`` training steps with the rate
        growing exponentially from ``start`` to ``end``; returns ``(learning_rates,
        smoothed_losses, suggestion)`` and leaves the weights and the optimizer state
        untouched. See :func:`steepest.lr_finder.find_learning_rate`."""
        if not self._impl.built and self._input_shape is None:
            # The weights must exist before the test, to be put back after it.
            if not isinstance(x, np.ndarray):
                raise ValueError("[find_learning_rate] build the model first (st.layers.Input or "
                                 "model.build(input_shape)) when x is not an array")
            self.build(x.shape[1:])
        self.build()
        return lr_finder.find_learning_rate(self, x, y, start=start, end=end, steps=steps,
                                            batch_size=batch_size, smoothing=smoothing,
                                            divergence=divergence, seed=seed)


def _saved_optimizer_state(tensors: Dict[str, np.ndarray], saved: Dict[str, Any]) -> Dict[str, Any]:
    """The optimizer's state_dict from what ``save`` wrote."""
    state = []
    for index, record in enumerate(saved["state"]):
        if record is None:
            state.append(None)
            continue
        entry: Dict[str, Any] = {"step": record["step"]}
        for key in record["slots"]:
            entry[key] = tensors[f"optimizer/{index}/{key}"]
        state.append(entry)
    return {"class_name": saved["class_name"], "config": saved["config"],
            "iterations": saved["iterations"], "state": state,
            "exclude_from_weight_decay": saved.get("exclude_from_weight_decay", [])}


def _saved_layers(path: str, config: Any,
                  custom_objects: Optional[Dict[str, Any]] = None) -> Tuple[Tuple[int, ...], List[layers_module.Layer]]:
    """The input shape and the (unbuilt) layers a saved config describes."""
    if not isinstance(config, dict) or not isinstance(config.get("layers"), list):
        raise ValueError(f"[load_model] {path}: the config must be an object with a list of layers")
    input_shape = config.get("input_shape")
    if not isinstance(input_shape, list) or not all(type(d) is int for d in input_shape):
        raise ValueError(f"[load_model] {path}: the config's input_shape must be a list of ints, got {input_shape!r}")
    layers = []
    for entry in config["layers"]:
        if not isinstance(entry, dict) or not isinstance(entry.get("config"), dict):
            raise ValueError(f"[load_model] {path}: a layer entry must be {{'class_name': ..., 'config': {{...}}}}, "
                             f"got {entry!r:.200}")
        layers.append(layers_module.deserialize(entry, custom_objects))
    names = [layer.name for layer in layers]
    if len(set(names)) != len(names):
        raise ValueError(f"[load_model] {path}: the config names two layers alike ({names})")
    return tuple(input_shape), layers


def _check_config_against_tensors(path: str, input_shape: Tuple[int, ...], layers: List[layers_module.Layer],
                                  tensors: Dict[str, np.ndarray]) -> None:
    """Every weight the layers would build must be in the file with that shape, checked
    before anything is allocated: a file's config can ask only for memory its own tensors
    justify."""
    shape = list(input_shape)
    for layer in layers:
        if isinstance(layer._impl, _core.model.PyLayer):
            # Python layers cannot plan; their code is the caller's own (custom_objects),
            # so they build, and build again with the model.
            shape = layer._impl.build(shape, 0)
            weights = [(name, w.shape) for name, w in layer._impl.weights]
        else:
            shape, weights = layer._impl.plan(shape)
        for wname, wshape in weights:
            key = f"model/{layer.name}/{wname}"
            if key not in tensors:
                raise ValueError(f"[load_model] {path}: the config asks for weight {key!r} of shape "
                                 f"{tuple(wshape)}, which the file does not hold")
            if tuple(tensors[key].shape) != tuple(wshape):
                raise ValueError(f"[load_model] {path}: the config asks for weight {key!r} of shape "
                                 f"{tuple(wshape)}, the file holds shape {tuple(tensors[key].shape)}")


def _loss_entry(loss: losses_module.Loss) -> Dict[str, Any]:
    """The loss as saved: {"function": name} for a function, else its class and config."""
    if isinstance(loss, losses_module.LossFunctionWrapper):
        return {"function": loss.name, "reduction": loss.reduction}
    return {"class_name": type(loss).__name__, "config": loss.get_config()}


def _builtin_loss(loss: Optional[losses_module.Loss]) -> Optional[losses_module._BuiltinLoss]:
    """The loss as a C++ table entry, or None for a custom loss (fit calls it back)."""
    if loss is None or losses_module._is_custom(loss) or not isinstance(loss, losses_module._BuiltinLoss):
        return None
    return loss


def _builtin_labels(loss: Optional[losses_module.Loss]) -> Optional[str]:
    builtin = _builtin_loss(loss)
    return None if builtin is None else builtin.labels


def _loss_callable(loss: losses_module.Loss) -> Callable[[Tensor, Tensor], Tensor]:
    """What fit calls for a custom loss: a wrapped function itself (one Python call less
    per step), else the loss's call."""
    return loss.fn if isinstance(loss, losses_module.LossFunctionWrapper) else loss.call


def _custom_object(custom_objects: Optional[Dict[str, Any]], name: str, what: str) -> Any:
    found = (custom_objects or {}).get(name)
    if found is None:
        raise ValueError(f"unknown {what} {name!r}: pass it as load_model(path, custom_objects={{{name!r}: ...}})")
    return found


def _saved_loss(entry: Any, custom_objects: Optional[Dict[str, Any]] = None) -> losses_module.Loss:
    if "function" in entry:
        fn = _custom_object(custom_objects, entry["function"], "loss function")
        return losses_module.LossFunctionWrapper(fn, name=entry["function"],
                                                 reduction=entry.get("reduction", "sum_over_batch_size"))
    cls = (custom_objects or {}).get(entry["class_name"]) or getattr(losses_module, entry["class_name"], None)
    if cls is None:
        cls = _custom_object(custom_objects, entry["class_name"], "loss")
    if not (isinstance(cls, type) and issubclass(cls, losses_module.Loss)):
        raise ValueError(f"unknown loss {entry['class_name']!r}")
    return cls.from_config(entry["config"])


def _saved_metric(entry: Any, custom_objects: Optional[Dict[str, Any]]) -> Any:
    if isinstance(entry, str):
        return entry
    if "function" in entry:
        return metrics_module.MeanMetricWrapper(_custom_object(custom_objects, entry["function"], "metric"),
                                                name=entry["function"])
    cls = _custom_object(custom_objects, entry["class_name"], "metric")
    if not (isinstance(cls, type) and issubclass(cls, metrics_module.Metric)):
        raise ValueError(f"custom_objects[{entry['class_name']!r}] must be an st.metrics.Metric subclass")
    return cls.from_config(entry["config"])


def _model_from_file(path: str, tensors: Dict[str, np.ndarray], metadata: Dict[str, str],
                     custom_objects: Optional[Dict[str, Any]] = None) -> Sequential:
    config = json.loads(metadata["config"])
    input_shape, layers = _saved_layers(path, config, custom_objects)
    _check_config_against_tensors(path, input_shape, layers, tensors)
    model = Sequential(name=str(config.get("name", "sequential")))
    model.add(layers_module.Input(input_shape, dtype=config.get("input_dtype")))
    for layer in layers:
        model.add(layer)
    model.build()
    model._load_weights(tensors, path)
    model._epochs_done = int(metadata.get("epochs_done", "0"))
    if "compile" in metadata:
        compile_config = json.loads(metadata["compile"])
        opt = compile_config["optimizer"]
        optimizer = optimizers_module.get(opt["class_name"].lower())
        optimizer.load_state_dict(_saved_optimizer_state(tensors, opt))
        model.compile(optimizer=optimizer, loss=_saved_loss(compile_config["loss"], custom_objects),
                      metrics=[_saved_metric(m, custom_objects) for m in compile_config["metrics"]])
        # Training resumes under the policy it was saved with, whatever the global one.
        model._policy = mixed_precision.Policy(compile_config.get("dtype_policy", "float32"))
        model.loss_scaler = None
        if "loss_scaler" in compile_config:
            model.loss_scaler = mixed_precision.LossScaler()
            model.loss_scaler.load_state_dict(compile_config["loss_scaler"])
        model._compile_impl()
    return model


def load_model(path: str, custom_objects: Optional[Dict[str, Any]] = None) -> Sequential:
    """Restores a model saved with ``model.save``: predictions are bit-identical and
    training continues exactly where it stopped.

    ``custom_objects`` maps names to the Python layers, losses and metrics the model
    uses ({"MyLayer": MyLayer, "my_loss": my_loss}), as in Keras; one missing is a
    ValueError naming it.

    The file is distrusted: its config is checked against its tensors before any layer
    is built, and whatever in it does not make sense is a ValueError starting with
    ``[load_model] path``."""
    tensors, metadata = io.read(path)
    if metadata.get("format") != "steepest":
        raise ValueError(f"[load_model] {path} is a safetensors file but not a steepest model")
    try:
        return _model_from_file(path, tensors, metadata, custom_objects)
    except (ValueError, TypeError, KeyError, IndexError, AttributeError, OverflowError, RecursionError) as e:
        if str(e).startswith(f"[load_model] {path}"):
            raise
        detail = f"missing key {e}" if isinstance(e, KeyError) else f"{type(e).__name__}: {e}"
        raise ValueError(f"[load_model] {path}: the config does not describe a model ({detail:.500})") from None


# nanoGPT's weight decay: matrices only (matmul kernels and embeddings), not biases nor
# LayerNorm gains and shifts; pass to optimizer.exclude_from_weight_decay(var_names=...).
GPT_NO_WEIGHT_DECAY = ("bias", "gamma", "beta")


def GPT(vocab_size: int, context: int, d_model: int, num_heads: int, num_layers: int,
        mlp_ratio: int = 4, dropout: float = 0.0, remat: bool = False,
        name: str = "gpt") -> Sequential:
    """A decoder-only Transformer language model as a Sequential: token + learned
    position embeddings, ``num_layers`` causal TransformerBlocks, a final LayerNorm and
    a Dense head to ``vocab_size`` logits. Train it with
    ``loss=st.losses.CausalLMCrossEntropy()`` and ``fit(tokens, tokens)``; as nanoGPT,
    decay only the matrices: ``opt.exclude_from_weight_decay(var_names=GPT_NO_WEIGHT_DECAY)``.
    """
    L = layers_module
    stack: List[Any] = [L.Input((context,), dtype="int64"), L.TokenAndPositionEmbedding(vocab_size, context, d_model)]
    stack += [L.TransformerBlock(d_model, num_heads, mlp_ratio=mlp_ratio, dropout=dropout, remat=remat)
              for _ in range(num_layers)]
    stack += [L.LayerNormalization(epsilon=1e-5), L.Dense(vocab_size)]
    return Sequential(stack, name=name)


def generate(model: Sequential, prompt: Sequence[int], max_new_tokens: int,
             temperature: float = 1.0, top_k: Optional[int] = None,
             seed: Optional[int] = None) -> np.ndarray:
    """Samples ``max_new_tokens`` tokens after ``prompt`` from a causal language model.

    ``temperature`` divides the logits (0 picks the most likely token); ``top_k`` keeps
    only the k most likely tokens before sampling.

    A GPT-like model (token-and-position embedding, causal TransformerBlocks, position-wise
    layers) decodes with key/value caches: the prompt runs once, then each new token
    attends to the cached keys and values of the earlier ones. Once the text outgrows the
    context, the window slides and every step runs the whole window again (the positions
    of all its tokens change), as does any other model.
    """
    from .autograd import no_grad

    if not model.built:
        model.build()
    if temperature < 0:
        raise ValueError(f"[generate] temperature must be >= 0, got {temperature}")
    context = model.input_shape[1]
    tokens = [int(t) for t in prompt]
    if not tokens:
        raise ValueError("[generate] the prompt needs at least one token")
    rng = np.random.default_rng(seed)
    impl = model._impl
    state = _core.model.DecodeState() if impl.supports_decode() else None
    with no_grad():
        for _ in range(max_new_tokens):
            if state is not None and len(tokens) <= context:
                new = tokens[state.length:]
                out = impl.decode(from_numpy(np.asarray(new, dtype=np.int64)[None, :]), state)
            else:
                window = np.asarray(tokens[-context:], dtype=np.int64)[None, :]
                out = model(from_numpy(window))
            logits = out.numpy()[0, -1].astype(np.float64)
            if temperature == 0:
                tokens.append(int(np.argmax(logits)))
                continue
            logits /= temperature
            if top_k is not None and top_k < len(logits):
                cutoff = np.partition(logits, -top_k)[-top_k]
                logits[logits < cutoff] = -np.inf
            p = np.exp(logits - logits.max())
            tokens.append(int(rng.choice(len(p), p=p / p.sum())))
    return np.asarray(tokens, dtype=np.int64)


__all__ = ["GPT", "GPT_NO_WEIGHT_DECAY", "Sequential", "generate", "load_model"]
