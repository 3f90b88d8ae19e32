"""Keras layers (``st.layers``). Each wraps a C++ layer whose forward pass runs inside
the C++ training loop; the Python object keeps the constructor arguments so a model
can be saved and rebuilt."""

from __future__ import annotations

import inspect
import itertools
import math
from collections import defaultdict
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple, Union

import numpy as np

from . import _core, mixed_precision
from .config import standardize_data_format
from ._core import Tensor

_model = _core.model
_name_counters: Dict[str, "itertools.count[int]"] = defaultdict(itertools.count)

IntPair = Union[int, Tuple[int, int]]


def _unique_name(base: str) -> str:
    index = next(_name_counters[base])
    return base if index == 0 else f"{base}_{index}"


def _pair(owner: str, name: str, value: IntPair) -> Tuple[int, int]:
    if isinstance(value, int):
        return (value, value)
    if isinstance(value, (tuple, list)) and len(value) == 2 and all(isinstance(v, int) for v in value):
        return (int(value[0]), int(value[1]))
    raise ValueError(f"[{owner}] {name} must be an int or a pair of ints, got {value!r}")


def _activation(owner: str, activation: Optional[str]) -> str:
    if activation is None:
        return "linear"
    if not isinstance(activation, str):
        raise TypeError(f"[{owner}] activation must be a name such as 'relu', got {activation!r}")
    return activation


def _regularizer(owner: str, regularizer: Any) -> Tuple[float, float]:
    if regularizer is None:
        return (0.0, 0.0)
    if hasattr(regularizer, "l1") or hasattr(regularizer, "l2"):
        return (float(getattr(regularizer, "l1", 0.0)), float(getattr(regularizer, "l2", 0.0)))
    raise TypeError(
        f"[{owner}] a regularizer must be st.regularizers.L1, L2 or L1L2, got {regularizer!r}"
    )


class Layer:
    """Base class. ``layer(x, training=False)`` runs the layer eagerly (with autograd).

    As in Keras, a layer takes the global mixed-precision policy in force when it is
    constructed (``st.mixed_precision.set_global_policy``): used on its own it computes
    in that policy's dtype. A model applies its own policy to its layers: float32 until
    ``compile``, then the global policy at compile time.

    Subclass it to write a layer in Python, as in Keras::

        class MyDense(st.layers.Layer):
            def __init__(self, units, **kwargs):
                super().__init__(**kwargs)
                self.units = units

            def build(self, input_shape):
                self.kernel = self.add_weight((input_shape[-1], self.units), name="kernel")
                self.bias = self.add_weight((self.units,), initializer="zeros", name="bias")

            def call(self, x, training=None):
                return x @ self.kernel + self.bias

            def get_config(self):
                return {**super().get_config(), "units": self.units}

    ``call`` uses steepest ops on Tensors, so autograd differentiates it; inside ``fit``
    the C++ loop takes the GIL for it. Its weights (``add_weight``) are trained, saved,
    moved by ``model.to`` and, under a mixed-precision policy, kept in float32 while
    ``call`` sees them (the attributes holding them) and its input in the compute dtype.
    ``compute_output_shape`` is optional: without it, build runs ``call`` on a batch of
    zeros to learn the output shape. Load a saved model holding one with
    ``st.models.load_model(path, custom_objects={"MyDense": MyDense})``.
    """

    def __init__(self, name: Optional[str] = None, config: Optional[Dict[str, Any]] = None,
                 **kwargs: Any) -> None:
        unknown = set(kwargs) - {"trainable", "dtype"}
        if unknown:
            raise TypeError(f"[{type(self).__name__}] unexpected keyword arguments {sorted(unknown)}")
        self.name = name or _unique_name(_snake(type(self).__name__))
        self._construction_policy = mixed_precision.global_policy()
        # Built-in layers pass their constructor arguments and set their C++ layer;
        # a Python subclass gets a C++ layer that calls back into it.
        self._config = {} if config is None else config
        if config is None:
            self._python_weights: List[Tensor] = []
            self._impl = _model.PyLayer(self.name, self, type(self).__name__)

    @property
    def _impl(self) -> Any:
        try:
            return self._core_layer
        except AttributeError:
            raise TypeError(
                f"[{type(self).__name__}] the layer is not initialised: its __init__ must call "
                f"super().__init__(**kwargs)"
            ) from None

    @_impl.setter
    def _impl(self, core_layer: Any) -> None:
        core_layer.compute_dtype = self._construction_policy.compute_dtype
        self._core_layer = core_layer

    def get_config(self) -> Dict[str, Any]:
        """The constructor arguments (JSON-serialisable) that rebuild this layer."""
        return {"name": self.name, **self._config}

    @property
    def weights(self) -> Dict[str, Tensor]:
        return dict(self._impl.weights)

    @property
    def built(self) -> bool:
        return self._impl.built

    @built.setter
    def built(self, value: bool) -> None:
        """Keras' ``self.built = True`` at the end of build: the C++ layer keeps the state."""

    @property
    def trainable_weights(self) -> List[Tensor]:
        return [w for w in (w for _, w in self._impl.weights) if w.requires_grad]

    @property
    def non_trainable_weights(self) -> List[Tensor]:
        return [w for w in (w for _, w in self._impl.weights) if not w.requires_grad]

    @property
    def output_shape(self) -> Tuple[Optional[int], ...]:
        return (None, *self._impl.output_shape)

    @property
    def compute_dtype(self) -> str:
        """The dtype the forward pass computes in (see the class docstring)."""
        return self._impl.compute_dtype

    @property
    def variable_dtype(self) -> str:
        """The dtype of the weights: float32 under every policy (the master copy)."""
        return "float32"

    @property
    def dtype_policy(self) -> "mixed_precision.Policy":
        """The policy the layer computes under now (see the class docstring)."""
        names = {"float32": "float32", "float16": "mixed_float16", "bfloat16": "mixed_bfloat16"}
        return mixed_precision.Policy(names[self.compute_dtype])

    def count_params(self) -> int:
        return sum(w.numel() for w in self.weights.values())

    def __call__(self, x: Tensor, training: bool = False) -> Tensor:
        if not self._impl.built:
            self._impl.build(list(x.shape[1:]), _core.next_seed())
        return self._impl.forward(x, training)

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "Layer":
        return cls(**config)

    # ---------------------------------------------------------- Python layers

    def build(self, input_shape: Tuple[Optional[int], ...]) -> None:
        """Creates the weights (``add_weight``) for ``input_shape`` (batch axis None)."""

    def call(self, x: Tensor, training: Optional[bool] = None) -> Tensor:
        raise NotImplementedError(f"[{type(self).__name__}] a Python layer must define call(x, training=None)")

    def compute_output_shape(self, input_shape: Tuple[Optional[int], ...]) -> Tuple[Optional[int], ...]:
        raise NotImplementedError

    def add_weight(self, shape: Sequence[int], initializer: Union[str, Callable[..., Any]] = "glorot_uniform",
                   trainable: bool = True, name: Optional[str] = None,
                   dtype: Optional[str] = None) -> Tensor:
        """A new float32 weight (in ``build``). ``initializer``: glorot_uniform,
        glorot_normal, he_uniform, he_normal, random_uniform, random_normal, zeros, ones,
        or a callable ``(shape, dtype) -> array``. Non-trainable weights are saved but
        the optimizer leaves them alone."""
        if not isinstance(self._impl, _model.PyLayer):
            raise TypeError(f"[{type(self).__name__}] add_weight is for Python layers only")
        if dtype not in (None, "float32"):
            raise TypeError(f"[{type(self).__name__}.add_weight] weights are float32, got dtype={dtype!r}")
        shape = (shape,) if isinstance(shape, int) else tuple(shape)
        if not all(isinstance(d, (int, np.integer)) and d >= 0 for d in shape):
            raise ValueError(f"[{type(self).__name__}.add_weight] shape must be a tuple of ints >= 0, got {shape!r}")
        shape = tuple(int(d) for d in shape)
        # Keras' fans: the last two axes, times the receptive field of the others.
        if len(shape) == 0:
            fan_in = fan_out = 1
        elif len(shape) == 1:
            fan_in = fan_out = shape[0]
        else:
            receptive = math.prod(shape[:-2])
            fan_in, fan_out = shape[-2] * receptive, shape[-1] * receptive
        name = name or f"weight_{len(self._python_weights)}"
        drawn = initializer if isinstance(initializer, str) else "zeros"
        weight = self._impl.add_weight(name, list(shape), drawn, fan_in, fan_out, bool(trainable))
        if not isinstance(initializer, str):
            value = np.asarray(initializer(shape, dtype="float32"), dtype=np.float32)
            if value.shape != shape:
                raise ValueError(f"[{type(self).__name__}.add_weight] the initializer gave shape {value.shape}, "
                                 f"expected {shape}")
            from .creation import from_numpy

            weight.copy_(from_numpy(np.ascontiguousarray(value)))
        self._python_weights.append(weight)
        return weight

    def _st_build(self, input_shape: List[int]) -> List[int]:
        """Called by the C++ layer's build: the user's build, then the output shape."""
        self._python_weights = []
        shape = (None, *input_shape)
        self.build(shape)
        if type(self).compute_output_shape is not Layer.compute_output_shape:
            out = tuple(self.compute_output_shape(shape))
        else:
            from .autograd import no_grad
            from .creation import zeros

            # Two samples, so that a call that squeezes or mixes the batch axis shows.
            with no_grad():
                out = tuple(self._st_call(zeros(2, *input_shape, dtype=self._impl.compute_dtype), False).shape)
            out = (None, *out[1:])
        if not out or not all(isinstance(d, (int, np.integer)) for d in out[1:]):
            raise ValueError(f"[{type(self).__name__}] the output shape must be (None, ints...), got {out!r}")
        return [int(d) for d in out[1:]]

    def _st_call(self, x: Tensor, training: bool) -> Tensor:
        """Called by the C++ layer's forward (with the GIL). Under a mixed policy the
        attributes that hold weights show the weights in the compute dtype for the call
        (as Keras autocasts), and get the float32 masters back after it."""
        dtype = self._impl.compute_dtype
        swapped: List[Tuple[str, Tensor]] = []
        if dtype != "float32" and self._python_weights:
            ids = {id(w) for w in self._python_weights}
            swapped = [(k, v) for k, v in vars(self).items() if id(v) in ids]
            for k, v in swapped:
                setattr(self, k, v.astype(dtype))
        try:
            if _takes_training(type(self)):
                out = self.call(x, training=training)
            else:
                out = self.call(x)
        finally:
            for k, v in swapped:
                setattr(self, k, v)
        return out


_TAKES_TRAINING: Dict[type, bool] = {}


def _takes_training(cls: type) -> bool:
    """Whether cls.call has a ``training`` parameter (Keras passes it only then)."""
    known = _TAKES_TRAINING.get(cls)
    if known is None:
        parameters = inspect.signature(cls.call).parameters  # type: ignore[attr-defined]
        known = "training" in parameters or any(p.kind is p.VAR_KEYWORD for p in parameters.values())
        _TAKES_TRAINING[cls] = known
    return known


def _snake(name: str) -> str:
    out = []
    for i, c in enumerate(name):
        if c.isupper() and i and not name[i - 1].isupper():
            out.append("_")
        out.append(c.lower())
    return "".join(out)


_INPUT_DTYPES = ("float32", "float16", "bfloat16", "float64", "int32", "int64")


class Input:
    """Declares the per-sample input shape (images: (C, H, W) channels-first, (H, W, C)
    for channels-last layers) and,
    as Keras does, its dtype: ``Input((T,), dtype="int64")`` for token ids. Without a
    dtype, inputs are float32 unless the first layer is an embedding."""

    def __init__(self, shape: Sequence[int], dtype: Optional[str] = None) -> None:
        if isinstance(shape, int):
            shape = (shape,)
        shape = tuple(shape)
        if not shape or not all(isinstance(d, int) and d > 0 for d in shape):
            raise ValueError(f"[Input] shape must be a tuple of positive ints, got {shape!r}")
        if dtype is not None and str(dtype) not in _INPUT_DTYPES:
            raise TypeError(f"[Input] dtype must be one of {', '.join(_INPUT_DTYPES)}, got {dtype!r}")
        self.shape = shape
        self.dtype = None if dtype is None else str(dtype)

    def __repr__(self) -> str:
        return f"Input({self.shape})" if self.dtype is None else f"Input({self.shape}, dtype={self.dtype!r})"


class Dense(Layer):
    """Y = activation(X·W + b), W of shape (in, units) as in the seed."""

    def __init__(self, units: int, activation: Optional[str] = None, use_bias: bool = True,
                 kernel_initializer: str = "glorot_uniform", bias_initializer: str = "zeros",
                 kernel_regularizer: Any = None, bias_regularizer: Any = None,
                 name: Optional[str] = None) -> None:
        if not isinstance(units, int) or units <= 0:
            raise ValueError(f"[Dense] units must be a positive int, got {units!r}")
        activation = _activation("Dense", activation)
        super().__init__(name, {
            "units": units, "activation": activation, "use_bias": use_bias,
            "kernel_initializer": kernel_initializer, "bias_initializer": bias_initializer,
            "kernel_regularizer": _regularizer("Dense", kernel_regularizer),
            "bias_regularizer": _regularizer("Dense", bias_regularizer),
        })
        c = self._config
        self._impl = _model.Dense(self.name, units, activation, use_bias, kernel_initializer,
                                  bias_initializer, c["kernel_regularizer"], c["bias_regularizer"])


def _positive_int(owner: str, name: str, value: Any) -> int:
    if isinstance(value, (tuple, list)) and len(value) == 1:
        value = value[0]
    if not isinstance(value, int) or isinstance(value, bool):
        raise ValueError(f"[{owner}] {name} must be an int, got {value!r}")
    return int(value)


class Conv2D(Layer):
    """2-D convolution via im2col + GEMM. ``data_format`` (default
    ``st.config.image_data_format()``): "channels_first" images are (C, H, W),
    "channels_last" ones (H, W, C). ``padding="same"`` pads as TF/Keras do, the odd
    pixel after, so the output is ceil(input / strides) at any stride.
    ``dilation_rate`` spaces the kernel taps; ``groups`` splits the channels into that
    many independent convolutions (it must divide the input channels and ``filters``)."""

    def __init__(self, filters: int, kernel_size: IntPair, strides: IntPair = 1,
                 padding: str = "valid", data_format: Optional[str] = None,
                 dilation_rate: IntPair = 1, groups: int = 1,
                 activation: Optional[str] = None, use_bias: bool = True,
                 kernel_initializer: str = "glorot_uniform", kernel_regularizer: Any = None,
                 name: Optional[str] = None) -> None:
        if padding not in ("valid", "same"):
            raise ValueError(f"[Conv2D] padding must be 'valid' or 'same', got {padding!r}")
        activation = _activation("Conv2D", activation)
        kernel = _pair("Conv2D", "kernel_size", kernel_size)
        stride = _pair("Conv2D", "strides", strides)
        dilation = _pair("Conv2D", "dilation_rate", dilation_rate)
        groups = _positive_int("Conv2D", "groups", groups)
        data_format = standardize_data_format(data_format, "Conv2D")
        super().__init__(name, {
            "filters": filters, "kernel_size": list(kernel), "strides": list(stride),
            "padding": padding, "data_format": data_format, "dilation_rate": list(dilation),
            "groups": groups, "activation": activation,
            "use_bias": use_bias, "kernel_initializer": kernel_initializer,
            "kernel_regularizer": _regularizer("Conv2D", kernel_regularizer),
        })
        self._impl = _model.Conv2D(self.name, filters, kernel, stride, padding == "same", activation,
                                   use_bias, kernel_initializer, self._config["kernel_regularizer"],
                                   data_format, rank=2, dilation=dilation, groups=groups)


class DepthwiseConv2D(Layer):
    """Depthwise 2-D convolution: each input channel convolved with its own
    ``depth_multiplier`` kernels (a Conv2D with groups = input channels). The kernel is
    stored (channels · depth_multiplier, 1, kh, kw), as torch stores it."""

    def __init__(self, kernel_size: IntPair, strides: IntPair = 1, padding: str = "valid",
                 depth_multiplier: int = 1, data_format: Optional[str] = None,
                 dilation_rate: IntPair = 1, activation: Optional[str] = None,
                 use_bias: bool = True, depthwise_initializer: str = "glorot_uniform",
                 depthwise_regularizer: Any = None, name: Optional[str] = None) -> None:
        owner = "DepthwiseConv2D"
        if padding not in ("valid", "same"):
            raise ValueError(f"[{owner}] padding must be 'valid' or 'same', got {padding!r}")
        activation = _activation(owner, activation)
        kernel = _pair(owner, "kernel_size", kernel_size)
        stride = _pair(owner, "strides", strides)
        dilation = _pair(owner, "dilation_rate", dilation_rate)
        multiplier = _positive_int(owner, "depth_multiplier", depth_multiplier)
        if multiplier <= 0:
            raise ValueError(f"[{owner}] depth_multiplier must be positive, got {multiplier}")
        data_format = standardize_data_format(data_format, owner)
        super().__init__(name, {
            "kernel_size": list(kernel), "strides": list(stride), "padding": padding,
            "depth_multiplier": multiplier, "data_format": data_format,
            "dilation_rate": list(dilation), "activation": activation, "use_bias": use_bias,
            "depthwise_initializer": depthwise_initializer,
            "depthwise_regularizer": _regularizer(owner, depthwise_regularizer),
        })
        self._impl = _model.Conv2D(self.name, 0, kernel, stride, padding == "same", activation,
                                   use_bias, depthwise_initializer,
                                   self._config["depthwise_regularizer"], data_format, rank=2,
                                   dilation=dilation, depth_multiplier=multiplier)


class Conv1D(Layer):
    """1-D convolution over sequences, on Conv2D's path. ``data_format``
    "channels_last" (the Keras default) takes (L, C) samples, "channels_first" (C, L).
    ``padding``: "valid", "same" (TF/Keras) or "causal" (``dilation_rate·(k − 1)``
    zeros before the sequence, so output t sees inputs up to t only)."""

    def __init__(self, filters: int, kernel_size: int, strides: int = 1, padding: str = "valid",
                 data_format: str = "channels_last", dilation_rate: int = 1, groups: int = 1,
                 activation: Optional[str] = None, use_bias: bool = True,
                 kernel_initializer: str = "glorot_uniform", kernel_regularizer: Any = None,
                 name: Optional[str] = None) -> None:
        owner = "Conv1D"
        if padding not in ("valid", "same", "causal"):
            raise ValueError(f"[{owner}] padding must be 'valid', 'same' or 'causal', got {padding!r}")
        activation = _activation(owner, activation)
        kernel = _positive_int(owner, "kernel_size", kernel_size)
        stride = _positive_int(owner, "strides", strides)
        dilation = _positive_int(owner, "dilation_rate", dilation_rate)
        groups = _positive_int(owner, "groups", groups)
        data_format = standardize_data_format(data_format, owner)
        super().__init__(name, {
            "filters": filters, "kernel_size": kernel, "strides": stride, "padding": padding,
            "data_format": data_format, "dilation_rate": dilation, "groups": groups,
            "activation": activation, "use_bias": use_bias,
            "kernel_initializer": kernel_initializer,
            "kernel_regularizer": _regularizer(owner, kernel_regularizer),
        })
        self._impl = _model.Conv2D(self.name, filters, (1, kernel), (1, stride), padding == "same",
                                   activation, use_bias, kernel_initializer,
                                   self._config["kernel_regularizer"], data_format, rank=1,
                                   dilation=(1, dilation), groups=groups, causal=padding == "causal")


class _Pool2D(Layer):
    _max: bool

    def __init__(self, pool_size: IntPair = 2, strides: Optional[IntPair] = None,
                 padding: str = "valid", data_format: Optional[str] = None,
                 name: Optional[str] = None) -> None:
        owner = type(self).__name__
        if padding not in ("valid", "same"):
            raise ValueError(f"[{owner}] padding must be 'valid' or 'same', got {padding!r}")
        pool = _pair(owner, "pool_size", pool_size)
        stride = pool if strides is None else _pair(owner, "strides", strides)
        data_format = standardize_data_format(data_format, owner)
        super().__init__(name, {"pool_size": list(pool), "strides": list(stride),
                                "padding": padding, "data_format": data_format})
        self._impl = _model.Pool2D(self.name, self._max, pool, stride, data_format,
                                   same=padding == "same", rank=2)


class MaxPool2D(_Pool2D):
    """Max pooling; a window's gradient goes to its maximum, split evenly among tied
    maxima. ``padding="same"`` pads as TF/Keras do."""

    _max = True


class AvgPool2D(_Pool2D):
    """Average pooling. With ``padding="same"`` a window averages the input pixels it
    covers (the padding is not counted), as in TF/Keras."""

    _max = False


class _Pool1D(Layer):
    _max: bool

    def __init__(self, pool_size: int = 2, strides: Optional[int] = None, padding: str = "valid",
                 data_format: str = "channels_last", name: Optional[str] = None) -> None:
        owner = type(self).__name__
        if padding not in ("valid", "same"):
            raise ValueError(f"[{owner}] padding must be 'valid' or 'same', got {padding!r}")
        pool = _positive_int(owner, "pool_size", pool_size)
        stride = pool if strides is None else _positive_int(owner, "strides", strides)
        data_format = standardize_data_format(data_format, owner)
        super().__init__(name, {"pool_size": pool, "strides": stride, "padding": padding,
                                "data_format": data_format})
        self._impl = _model.Pool2D(self.name, self._max, (1, pool), (1, stride), data_format,
                                   same=padding == "same", rank=1)


class MaxPooling1D(_Pool1D):
    """Max pooling over sequences ((L, C) samples, or (C, L) with channels_first)."""

    _max = True


class AveragePooling1D(_Pool1D):
    """Average pooling over sequences ((L, C) samples, or (C, L) with channels_first)."""

    _max = False


# Keras spells the pooling layers both ways.
MaxPooling2D = MaxPool2D
AveragePooling2D = AvgPool2D
MaxPool1D = MaxPooling1D
AvgPool1D = AveragePooling1D


class Flatten(Layer):
    """(N, ...) -> (N, prod(...))."""

    def __init__(self, name: Optional[str] = None) -> None:
        super().__init__(name, {})
        self._impl = _model.Flatten(self.name)


class Activation(Layer):
    """An activation by name: relu, sigmoid, tanh, gelu, softmax or linear."""

    def __init__(self, activation: str, name: Optional[str] = None) -> None:
        activation = _activation("Activation", activation)
        super().__init__(name, {"activation": activation})
        self._impl = _model.Activation(self.name, activation)


class Dropout(Layer):
    """Inverted dropout during training; the identity at inference."""

    def __init__(self, rate: float, seed: Optional[int] = None, name: Optional[str] = None) -> None:
        seed = int(_core.next_seed()) if seed is None else int(seed)
        super().__init__(name, {"rate": float(rate), "seed": seed})
        self._impl = _model.Dropout(self.name, float(rate), seed)


class LayerNormalization(Layer):
    """Normalises the last axis, then scales by gamma and shifts by beta."""

    def __init__(self, epsilon: float = 1e-3, center: bool = True, scale: bool = True,
                 name: Optional[str] = None) -> None:
        super().__init__(name, {"epsilon": float(epsilon), "center": center, "scale": scale})
        self._impl = _model.LayerNormalization(self.name, float(epsilon), center, scale)


class Normalization(Layer):
    """Standardises inputs: (x - mean) / sqrt(variance), with statistics fixed before
    training (``adapt(data)``, or ``mean=``/``variance=``), as Keras' Normalization.

    ``axis=-1`` keeps one mean/variance per entry of the last axis; ``axis=None`` one
    scalar pair for all inputs. The statistics are saved with the model and not trained.
    """

    def __init__(self, axis: Optional[int] = -1, mean: Any = None, variance: Any = None,
                 name: Optional[str] = None) -> None:
        if axis not in (-1, None):
            raise ValueError(f"[Normalization] axis must be -1 or None, got {axis!r}")
        if (mean is None) != (variance is None):
            raise ValueError("[Normalization] give both mean and variance, or neither")
        mean_list = [] if mean is None else [float(v) for v in np.ravel(mean)]
        variance_list = [] if variance is None else [float(v) for v in np.ravel(variance)]
        super().__init__(name, {"axis": axis, "mean": mean_list or None, "variance": variance_list or None})
        self._impl = _model.Normalization(self.name, axis == -1, mean_list, variance_list)

    def adapt(self, data: Any) -> None:
        """Computes the mean and variance of ``data`` (samples along axis 0)."""
        array = np.asarray(data, dtype=np.float64)
        if array.ndim < 2 or array.shape[0] == 0:
            raise ValueError(f"[Normalization.adapt] expected a batch of samples, got shape {array.shape}")
        if self._config["axis"] is None:
            mean, variance = [float(array.mean())], [float(array.var())]
        else:
            flat = array.reshape(-1, array.shape[-1])
            mean, variance = flat.mean(axis=0).tolist(), flat.var(axis=0).tolist()
        self._impl.set_statistics(mean, variance)
        self._config["mean"], self._config["variance"] = mean, variance


class Embedding(Layer):
    """Integer indices -> rows of a (input_dim, output_dim) table."""

    def __init__(self, input_dim: int, output_dim: int, embeddings_initializer: str = "uniform",
                 name: Optional[str] = None) -> None:
        super().__init__(name, {"input_dim": input_dim, "output_dim": output_dim,
                                "embeddings_initializer": embeddings_initializer})
        self._impl = _model.Embedding(self.name, input_dim, output_dim, embeddings_initializer)


class TokenAndPositionEmbedding(Layer):
    """(B, T) token ids -> token embeddings + learned positional embeddings (B, T, d_model)."""

    def __init__(self, vocab_size: int, context: int, d_model: int, name: Optional[str] = None) -> None:
        super().__init__(name, {"vocab_size": vocab_size, "context": context, "d_model": d_model})
        self._impl = _model.TokenAndPositionEmbedding(self.name, vocab_size, context, d_model)


class TransformerBlock(Layer):
    """Pre-LayerNorm decoder block: x + MultiHeadAttention(LN(x)), then
    x + MLP(LN(x)) with a GELU MLP of width ``mlp_ratio * d_model``.

    ``causal=True`` masks future positions; ``remat=True`` checkpoints the block
    (forward keeps only its input, backward recomputes it: less memory, same gradients).
    """

    def __init__(self, d_model: int, num_heads: int, mlp_ratio: int = 4, dropout: float = 0.0,
                 causal: bool = True, remat: bool = False, seed: Optional[int] = None,
                 name: Optional[str] = None) -> None:
        seed = int(_core.next_seed()) if seed is None else int(seed)
        super().__init__(name, {"d_model": d_model, "num_heads": num_heads, "mlp_ratio": mlp_ratio,
                                "dropout": float(dropout), "causal": causal, "remat": remat,
                                "seed": seed})
        self._impl = _model.TransformerBlock(self.name, d_model, num_heads, mlp_ratio, float(dropout),
                                             causal, remat, seed)


class BatchNormalization(Layer):
    """Keras' BatchNormalization: ``(x - mean) / sqrt(var + epsilon) * gamma + beta`` per
    entry of ``axis``.

    While training (``fit``, or ``layer(x, training=True)``) mean and var are the batch's
    (the biased variance over every axis but ``axis``) and the non-trainable weights
    ``moving_mean`` / ``moving_variance`` follow them as in Keras 3:
    ``moving = moving * momentum + batch * (1 - momentum)`` (torch's ``momentum=m`` is
    ``1 - m`` here, and torch feeds the unbiased variance to its running variance). At
    inference (``evaluate``, ``predict``, ``training=False``) the moving statistics are used.

    ``axis`` counts the batch axis (0); by default it follows
    ``st.config.image_data_format()``: 1 (the channels of (N, C, H, W), the features of
    (N, F)) under "channels_first", -1 under "channels_last". Statistics are float32
    under a mixed-precision policy. Under ``st.distributed`` each rank normalises with
    the statistics of its own share of the batch (no synchronised batch norm, as Keras
    and torch without SyncBatchNorm).
    """

    def __init__(self, axis: Optional[int] = None, momentum: float = 0.99, epsilon: float = 1e-3,
                 center: bool = True, scale: bool = True, name: Optional[str] = None) -> None:
        if axis is None:
            axis = 1 if standardize_data_format(None, "BatchNormalization") == "channels_first" else -1
        if isinstance(axis, (list, tuple)) and len(axis) == 1:
            axis = axis[0]
        if not isinstance(axis, int) or isinstance(axis, bool):
            raise ValueError(f"[BatchNormalization] axis must be an int, got {axis!r}")
        super().__init__(name, {"axis": axis, "momentum": float(momentum), "epsilon": float(epsilon),
                                "center": bool(center), "scale": bool(scale)})
        self._impl = _model.BatchNormalization(self.name, axis, float(momentum), float(epsilon),
                                               bool(center), bool(scale))


class _GlobalPool2D(Layer):
    _max: bool

    def __init__(self, data_format: Optional[str] = None, keepdims: bool = False,
                 name: Optional[str] = None) -> None:
        owner = type(self).__name__
        data_format = standardize_data_format(data_format, owner)
        super().__init__(name, {"data_format": data_format, "keepdims": bool(keepdims)})
        self._impl = _model.GlobalPool2D(self.name, self._max, data_format, bool(keepdims))


class GlobalAveragePooling2D(_GlobalPool2D):
    """The mean of each channel over its pixels: (N, C), or (N, C, 1, 1) / (N, 1, 1, C)
    with ``keepdims=True``."""

    _max = False


class GlobalMaxPooling2D(_GlobalPool2D):
    """The maximum of each channel over its pixels (the gradient split evenly among tied
    maxima): (N, C), or (N, C, 1, 1) / (N, 1, 1, C) with ``keepdims=True``."""

    _max = True


GlobalAvgPool2D = GlobalAveragePooling2D
GlobalMaxPool2D = GlobalMaxPooling2D


class Reshape(Layer):
    """Reshapes each sample to ``target_shape`` (the batch axis is kept); one entry may
    be -1, inferred from the sample's size."""

    def __init__(self, target_shape: Sequence[int], name: Optional[str] = None) -> None:
        if isinstance(target_shape, int) and not isinstance(target_shape, bool):
            target_shape = (target_shape,)
        if (not isinstance(target_shape, (tuple, list)) or not target_shape
                or not all(isinstance(d, int) and not isinstance(d, bool) for d in target_shape)):
            raise ValueError(f"[Reshape] target_shape must be a tuple of ints, got {target_shape!r}")
        target = [int(d) for d in target_shape]
        super().__init__(name, {"target_shape": target})
        self._impl = _model.Reshape(self.name, target)


def _padding2d(value: Any) -> Tuple[Tuple[int, int], Tuple[int, int]]:
    def is_int(v: Any) -> bool:
        return isinstance(v, int) and not isinstance(v, bool)

    bad = ValueError("[ZeroPadding2D] padding must be an int, (rows, cols) or "
                     f"((top, bottom), (left, right)) of ints >= 0, got {value!r}")
    if is_int(value):
        rows = cols = (value, value)
    elif isinstance(value, (tuple, list)) and len(value) == 2:
        if all(is_int(v) for v in value):
            rows, cols = (value[0], value[0]), (value[1], value[1])
        elif all(isinstance(v, (tuple, list)) and len(v) == 2 and all(is_int(u) for u in v)
                 for v in value):
            rows, cols = (value[0][0], value[0][1]), (value[1][0], value[1][1])
        else:
            raise bad
    else:
        raise bad
    if min(*rows, *cols) < 0:
        raise bad
    return (int(rows[0]), int(rows[1])), (int(cols[0]), int(cols[1]))


class ZeroPadding2D(Layer):
    """Pads images with zeros: ``padding`` an int (all sides), (rows, cols) (symmetric)
    or ((top, bottom), (left, right))."""

    def __init__(self, padding: Any = (1, 1), data_format: Optional[str] = None,
                 name: Optional[str] = None) -> None:
        rows, cols = _padding2d(padding)
        data_format = standardize_data_format(data_format, "ZeroPadding2D")
        super().__init__(name, {"padding": [list(rows), list(cols)], "data_format": data_format})
        self._impl = _model.ZeroPadding2D(self.name, rows, cols, data_format)


class Add:
    """Keras' merge layer: ``Add()([a, b, ...])`` is the elementwise sum of same-shape
    Tensors (residual connections). It has no weights and works on Tensors directly
    (with autograd); it takes a list, so it is not a layer of a Sequential model."""

    def __init__(self, name: Optional[str] = None) -> None:
        self.name = name or _unique_name("add")

    def get_config(self) -> Dict[str, Any]:
        return {"name": self.name}

    def count_params(self) -> int:
        return 0

    def __call__(self, inputs: Sequence[Tensor], training: bool = False) -> Tensor:
        if isinstance(inputs, Tensor) or not isinstance(inputs, (list, tuple)) or not inputs:
            raise ValueError(f"[{self.name}] Add takes a non-empty list of Tensors, got {inputs!r}")
        for i, t in enumerate(inputs):
            if not isinstance(t, Tensor):
                raise TypeError(f"[{self.name}] input {i} is {type(t).__name__}, expected a Tensor")
            if tuple(t.shape) != tuple(inputs[0].shape):
                shapes = ", ".join(str(tuple(u.shape)) for u in inputs)
                raise ValueError(f"[{self.name}] Add needs inputs of one shape, got {shapes}")
        total = inputs[0]
        for t in inputs[1:]:
            total = _core.ops.add(total, t)
        return total

    def __repr__(self) -> str:
        return "Add()"


_BY_NAME = {cls.__name__: cls for cls in (Dense, Conv2D, DepthwiseConv2D, Conv1D, MaxPool2D,
                                          AvgPool2D, MaxPooling1D, AveragePooling1D, Flatten,
                                          Activation, Dropout, LayerNormalization, Normalization,
                                          Embedding, TokenAndPositionEmbedding, TransformerBlock,
                                          BatchNormalization, GlobalAveragePooling2D,
                                          GlobalMaxPooling2D, Reshape, ZeroPadding2D)}


def deserialize(entry: Dict[str, Any], custom_objects: Optional[Dict[str, Any]] = None) -> Layer:
    """Rebuilds a layer from ``{"class_name": ..., "config": ...}``; Python layers come
    from ``custom_objects`` ({class name: class})."""
    class_name = entry.get("class_name")
    custom = (custom_objects or {}).get(class_name) if isinstance(class_name, str) else None
    if custom is not None:
        if not (isinstance(custom, type) and issubclass(custom, Layer)):
            raise TypeError(f"custom_objects[{class_name!r}] must be a subclass of st.layers.Layer, got {custom!r}")
        return custom.from_config(dict(entry["config"]))
    cls = _BY_NAME.get(class_name)
    if cls is None:
        raise ValueError(f"unknown layer type {class_name!r}: a Python layer must be passed as "
                         f"load_model(path, custom_objects={{{class_name!r}: {class_name}}})")
    config = dict(entry["config"])
    for key in ("kernel_regularizer", "bias_regularizer", "depthwise_regularizer"):
        if key in config:
            l1, l2 = config[key]
            from .regularizers import L1L2

            config[key] = L1L2(l1=l1, l2=l2) if (l1 or l2) else None
    return cls(**config)


__all__ = ["Activation", "Add", "AveragePooling1D", "AveragePooling2D", "AvgPool1D", "AvgPool2D", "Conv1D",
           "Conv2D", "Dense", "DepthwiseConv2D", "Dropout", "Embedding", "Flatten",
           "Input", "Layer", "LayerNormalization", "MaxPool1D", "MaxPool2D", "MaxPooling1D",
           "MaxPooling2D", "Normalization", "BatchNormalization", "GlobalAveragePooling2D",
           "GlobalAvgPool2D", "GlobalMaxPool2D", "GlobalMaxPooling2D", "Reshape", "ZeroPadding2D",
           "TokenAndPositionEmbedding", "TransformerBlock"]
