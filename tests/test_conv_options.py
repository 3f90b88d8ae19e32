"""Convolution and pooling options: dilation, groups (depthwise), asymmetric and
"same"/"valid" padding, ceil_mode, count_include_pad, the 1-D forms, the layers built on
them (Conv1D, DepthwiseConv2D, 1-D pooling), and overflow-checked output sizes."""

import re

import numpy as np
import pytest

import steepest as st
from helpers import LOOSE_ATOL, LOOSE_RTOL, F, check_op, raises_op, torch
from test_cuda import check_devices, normal, requires_cuda

ops = st.ops
L = st.layers

# im2col + GEMM (or any other summation order) differs from torch's float32 rounding.
CONV_TOL = dict(rtol=LOOSE_RTOL, atol=LOOSE_ATOL)

CONV2D_CASES = [
    # x, w, stride, padding, dilation, groups
    pytest.param((2, 3, 9, 8), (4, 3, 3, 3), 1, 2, 2, 1, id="dilation2"),
    pytest.param((1, 2, 10, 9), (3, 2, 3, 2), 2, 1, (2, 3), 1, id="dilation-rect-stride2"),
    pytest.param((2, 4, 6, 6), (6, 2, 3, 3), 1, 1, 1, 2, id="groups2"),
    pytest.param((2, 6, 7, 7), (6, 2, 2, 3), (2, 1), 0, 1, 3, id="groups3-strided"),
    pytest.param((2, 4, 7, 6), (4, 1, 3, 3), 1, 1, 1, 4, id="depthwise"),
    pytest.param((2, 3, 8, 7), (6, 1, 3, 3), 2, 1, 2, 3, id="depthwise-x2-dilated-strided"),
    pytest.param((1, 4, 5, 5), (4, 2, 1, 1), 1, 0, 1, 2, id="pointwise-groups"),
    pytest.param((2, 4, 6, 7), (4, 1, 3, 3), 1, "same", 2, 4, id="same-depthwise-dilated"),
    pytest.param((1, 2, 6, 5), (3, 2, 2, 2), 1, "same", 1, 1, id="same-even-kernel"),
    pytest.param((1, 2, 5, 5), (3, 2, 3, 3), 1, "valid", 1, 1, id="valid"),
    pytest.param((1, 2, 6, 7), (2, 1, 3, 3), 2, (0, 2, 1, 0), 1, 2, id="4-tuple-groups"),
    pytest.param((1, 2, 6, 7), (2, 2, 2, 3), 1, ((1, 0), (0, 2)), 2, 1, id="nested-dilated"),
]


def _torch_padding(padding):
    """(top, bottom, left, right) of a steepest padding given as a tuple."""
    if isinstance(padding, tuple) and len(padding) == 4:
        return padding
    (top, bottom), (left, right) = padding
    return top, bottom, left, right


def _torch_conv(conv, x, w, b, stride, padding, dilation, groups):
    if isinstance(padding, tuple):
        top, bottom, left, right = _torch_padding(padding)
        x = F.pad(x, (left, right, top, bottom) if conv is F.conv2d else (top, bottom))
        padding = 0
    return conv(x, w, b, stride=stride, padding=padding, dilation=dilation, groups=groups)


@pytest.mark.filterwarnings("ignore:Using padding='same' with even kernel")
@pytest.mark.parametrize("x, w, stride, padding, dilation, groups", CONV2D_CASES)
def test_conv2d_options(x, w, stride, padding, dilation, groups):
    check_op(lambda x_, w_, b_: ops.conv2d(x_, w_, b_, stride=stride, padding=padding,
                                           dilation=dilation, groups=groups),
             lambda x_, w_, b_: _torch_conv(F.conv2d, x_, w_, b_, stride, padding, dilation, groups),
             [x, w, (w[0],)], noncontig={0: "slice"}, **CONV_TOL)


def test_conv2d_options_without_bias_and_transposed_input():
    check_op(lambda x_, w_: ops.conv2d(x_, w_, padding=1, dilation=2, groups=2),
             lambda x_, w_: F.conv2d(x_, w_, padding=1, dilation=2, groups=2),
             [(1, 4, 7, 7), (4, 2, 3, 3)], noncontig={0: "T"}, **CONV_TOL)


def test_depthwise_matches_grouped_gemm_path():
    # The depthwise loops and the per-group GEMMs compute the same function; a depthwise
    # conv written as groups=C with an extra (zero-weight) channel per group goes the GEMM way.
    rng = np.random.default_rng(3)
    x = rng.standard_normal((2, 3, 9, 8))
    w = rng.standard_normal((3, 1, 3, 3))
    b = rng.standard_normal(3)
    direct = ops.conv2d(st.tensor(x, dtype="float64"), st.tensor(w, dtype="float64"),
                        st.tensor(b, dtype="float64"), stride=2, padding=1, dilation=2, groups=3)
    x2 = np.concatenate([x[:, :, None], np.ones_like(x)[:, :, None]], axis=2).reshape(2, 6, 9, 8)
    w2 = np.concatenate([w, np.zeros_like(w)], axis=1)
    grouped = ops.conv2d(st.tensor(x2, dtype="float64"), st.tensor(w2, dtype="float64"),
                         st.tensor(b, dtype="float64"), stride=2, padding=1, dilation=2, groups=3)
    np.testing.assert_allclose(direct.numpy(), grouped.numpy(), rtol=1e-12, atol=1e-12)


CONV1D_CASES = [
    # x, w, stride, padding, dilation, groups
    pytest.param((2, 3, 11), (4, 3, 3), 1, 0, 1, 1, id="plain"),
    pytest.param((2, 4, 12), (6, 2, 3), 2, 2, 3, 2, id="strided-dilated-groups"),
    pytest.param((1, 3, 9), (3, 1, 4), 1, "same", 2, 3, id="same-depthwise"),
    pytest.param((1, 2, 8), (2, 2, 3), 1, (2, 0), 1, 1, id="causal-pair"),
]


@pytest.mark.parametrize("x, w, stride, padding, dilation, groups", CONV1D_CASES)
def test_conv1d(x, w, stride, padding, dilation, groups):
    def reference(x_, w_, b_):
        if isinstance(padding, tuple):
            return F.conv1d(F.pad(x_, padding), w_, b_, stride=stride, dilation=dilation, groups=groups)
        return F.conv1d(x_, w_, b_, stride=stride, padding=padding, dilation=dilation, groups=groups)

    check_op(lambda x_, w_, b_: ops.conv1d(x_, w_, b_, stride=stride, padding=padding,
                                           dilation=dilation, groups=groups),
             reference, [x, w, (w[0],)], noncontig={0: "slice"}, **CONV_TOL)


MAX_POOL_CASES = [
    # x, kernel, stride, padding, dilation, ceil_mode
    pytest.param((2, 2, 7, 7), 3, 2, 1, 1, True, id="ceil"),
    pytest.param((1, 2, 8, 9), 3, 2, 1, 2, False, id="dilation2"),
    pytest.param((1, 2, 9, 8), (2, 3), (2, 3), (1, 0), (2, 1), True, id="rect-dilated-ceil"),
    pytest.param((1, 1, 6, 6), 3, 3, 1, 1, True, id="ceil-last-window-dropped"),
    pytest.param((1, 1, 5, 5), 2, 2, 0, 1, True, id="ceil-partial-window"),
]


@pytest.mark.parametrize("x, kernel, stride, padding, dilation, ceil_mode", MAX_POOL_CASES)
def test_max_pool2d_options(x, kernel, stride, padding, dilation, ceil_mode):
    check_op(lambda t: ops.max_pool2d(t, kernel, stride=stride, padding=padding, dilation=dilation,
                                      ceil_mode=ceil_mode),
             lambda t: F.max_pool2d(t, kernel, stride=stride, padding=padding, dilation=dilation,
                                    ceil_mode=ceil_mode),
             [x], noncontig="slice")


AVG_POOL_CASES = [
    # x, kernel, stride, padding, ceil_mode, count_include_pad
    pytest.param((2, 2, 7, 7), 3, 2, 1, True, True, id="ceil-include-pad"),
    pytest.param((2, 2, 7, 7), 3, 2, 1, True, False, id="ceil-exclude-pad"),
    pytest.param((1, 2, 6, 5), 2, 2, 1, False, False, id="exclude-pad"),
    pytest.param((1, 1, 5, 6), (3, 2), (2, 3), (1, 1), True, True, id="rect-ceil"),
    pytest.param((1, 1, 6, 6), 3, 3, 1, True, False, id="ceil-last-window-dropped"),
]


@pytest.mark.parametrize("x, kernel, stride, padding, ceil_mode, count_include_pad", AVG_POOL_CASES)
def test_avg_pool2d_options(x, kernel, stride, padding, ceil_mode, count_include_pad):
    check_op(lambda t: ops.avg_pool2d(t, kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
                                      count_include_pad=count_include_pad),
             lambda t: F.avg_pool2d(t, kernel, stride=stride, padding=padding, ceil_mode=ceil_mode,
                                    count_include_pad=count_include_pad),
             [x], noncontig="slice")


def test_avg_pool2d_asymmetric_padding_excludes_it():
    # Keras "same" pooling: the odd padding pixel after, the average over input pixels only.
    x = np.arange(16.0).reshape(1, 1, 4, 4)
    out = ops.avg_pool2d(st.tensor(x, dtype="float64"), 2, stride=2, padding=(0, 1, 0, 1),
                         count_include_pad=False).numpy()
    expected = [[2.5, 4.5], [10.5, 12.5]]
    np.testing.assert_allclose(out[0, 0, :2, :2], expected)
    assert out.shape == (1, 1, 2, 2)
    x = np.arange(15.0).reshape(1, 1, 3, 5)
    out = ops.avg_pool2d(st.tensor(x, dtype="float64"), 2, stride=2, padding=(0, 1, 0, 1),
                         count_include_pad=False).numpy()
    np.testing.assert_allclose(out[0, 0], [[3.0, 5.0, 6.5], [10.5, 12.5, 14.0]])


@pytest.mark.parametrize("kind", ["max", "avg"])
def test_pool1d(kind):
    if kind == "max":
        check_op(lambda t: ops.max_pool1d(t, 3, stride=2, padding=1, dilation=2, ceil_mode=True),
                 lambda t: F.max_pool1d(t, 3, stride=2, padding=1, dilation=2, ceil_mode=True),
                 [(2, 3, 12)], noncontig="slice")
    else:
        check_op(lambda t: ops.avg_pool1d(t, 3, stride=2, padding=1, ceil_mode=True,
                                          count_include_pad=False),
                 lambda t: F.avg_pool1d(t, 3, stride=2, padding=1, ceil_mode=True,
                                        count_include_pad=False),
                 [(2, 3, 12)], noncontig="slice")


# ------------------------------------------------------------------ max-pool ties

def test_max_pool_ties_split_the_gradient_evenly():
    x = np.array([[1.0, 3.0, 3.0, 0.0],
                  [3.0, 2.0, 1.0, 3.0],
                  [5.0, 5.0, 5.0, 5.0],
                  [5.0, 5.0, 4.0, 5.0]]).reshape(1, 1, 4, 4)
    t = st.tensor(x, dtype="float64", requires_grad=True)
    y = ops.max_pool2d(t, 2)
    y.backward(st.tensor(np.array([1.0, 2.0, 3.0, 4.0]).reshape(1, 1, 2, 2), dtype="float64"))
    expected = np.array([[0.0, 0.5, 1.0, 0.0],
                         [0.5, 0.0, 0.0, 1.0],
                         [0.75, 0.75, 4 / 3, 4 / 3],
                         [0.75, 0.75, 0.0, 4 / 3]])
    np.testing.assert_allclose(t.grad.numpy()[0, 0], expected)


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_max_pool_ties_match_torch_amax():
    # Non-overlapping windows: max pooling is amax over each window, whose gradient torch
    # splits evenly among ties.
    rng = np.random.default_rng(1)
    x = rng.integers(0, 3, (2, 3, 6, 6)).astype(np.float64)
    g = rng.standard_normal((2, 3, 3, 3))
    t = st.tensor(x, dtype="float64", requires_grad=True)
    ops.max_pool2d(t, 2).backward(st.tensor(g, dtype="float64"))
    tx = torch.tensor(x, requires_grad=True)
    windows = tx.reshape(2, 3, 3, 2, 3, 2).amax(dim=(3, 5))
    windows.backward(torch.tensor(g))
    np.testing.assert_allclose(t.grad.numpy(), tx.grad.numpy(), rtol=1e-12, atol=1e-12)


def test_max_pool_nan_and_empty_windows():
    x = np.array([[1.0, np.nan], [np.nan, 2.0]]).reshape(1, 1, 2, 2)
    t = st.tensor(x, dtype="float64", requires_grad=True)
    y = ops.max_pool2d(t, 2)
    assert np.isnan(y.numpy()).all()
    y.sum().backward()
    assert t.grad.numpy().sum() == 1.0
    # kernel 2, dilation 2, padding 1 on a length-1 axis: the window's taps are both padding.
    t = st.tensor(np.ones((1, 1, 1, 3)), dtype="float64", requires_grad=True)
    y = ops.max_pool2d(t, (2, 1), stride=1, padding=(1, 0), dilation=(2, 1))
    assert y.shape == (1, 1, 1, 3) and np.isneginf(y.numpy()).all()
    y.sum().backward()
    np.testing.assert_array_equal(t.grad.numpy(), 0.0)


# ------------------------------------------------------------------------- errors

def test_conv_option_errors():
    x, w = st.randn((1, 4, 5, 5)), st.randn((6, 2, 3, 3))
    with raises_op(ValueError, "conv2d", (1, 4, 5, 5), contains=("groups=3",)):
        ops.conv2d(x, st.randn((6, 1, 3, 3)), groups=3)
    with raises_op(ValueError, "conv2d", (1, 4, 5, 5), (6, 2, 3, 3), contains=("groups=1",)):
        ops.conv2d(x, w)
    with raises_op(ValueError, "conv2d", contains=("groups must be positive",)):
        ops.conv2d(x, w, groups=0)
    with raises_op(ValueError, "conv2d", contains=("dilation must be positive",)):
        ops.conv2d(x, w, groups=2, dilation=0)
    with raises_op(ValueError, "conv2d", contains=("spans 5 pixels", "dilation 2")):
        ops.conv2d(st.randn((1, 4, 4, 4)), w, groups=2, dilation=2)
    with raises_op(ValueError, "conv2d", contains=("stride 1",)):
        ops.conv2d(x, w, groups=2, stride=2, padding="same")
    with raises_op(ValueError, "conv2d", contains=("'full'",)):
        ops.conv2d(x, w, groups=2, padding="full")
    with raises_op(ValueError, "conv1d", (1, 4, 5, 5)):
        ops.conv1d(x, st.randn((6, 2, 3)))
    with raises_op(ValueError, "conv1d", contains=("groups=4",)):
        ops.conv1d(st.randn((1, 6, 5)), st.randn((6, 2, 3)), groups=4)


def test_pool_option_errors():
    x = st.randn((1, 1, 5, 5))
    with raises_op(ValueError, "max_pool2d", contains=("dilation must be positive",)):
        ops.max_pool2d(x, 2, dilation=0)
    with raises_op(ValueError, "max_pool2d", contains=("at most half",)):
        ops.max_pool2d(x, 2, padding=(0, 2, 0, 0))
    with raises_op(ValueError, "max_pool2d", contains=("spans 7 pixels",)):
        ops.max_pool2d(x, 3, dilation=3)
    with raises_op(ValueError, "avg_pool1d", (1, 5, 5, 1)):
        ops.avg_pool1d(st.randn((1, 5, 5, 1)), 2)
    with pytest.raises(TypeError, match="avg_pool2d"):
        ops.avg_pool2d(x, 2, padding="same")


# ----------------------------------------------------------- overflow of sizes

@pytest.mark.parametrize("layers", [
    "L.Input((2**62, 2**62, 3)), L.Conv2D(4, 3, data_format='channels_last')",
    "L.Input((2**62, 2**62, 3)), L.Conv2D(4, 3, padding='same', data_format='channels_last')",
    "L.Input((1, 8, 8)), L.Conv2D(4, 3, dilation_rate=2**62, data_format='channels_first')",
    "L.Input((1, 8, 8)), L.Conv2D(4, 2**62, padding='same', data_format='channels_first')",
    "L.Input((2**62, 2**62, 3)), L.DepthwiseConv2D(3, depth_multiplier=2**62, data_format='channels_last')",
    "L.Input((2**62, 3)), L.Conv1D(4, 2**62, padding='causal', dilation_rate=2**62)",
    "L.Input((2**62, 2**62, 3)), L.MaxPool2D(2**62, strides=1, padding='same', data_format='channels_last')",
    "L.Input((1, 8, 8)), L.AvgPool2D(2**62, strides=2**62, data_format='channels_first')",
    "L.Input((2**62, 3)), L.MaxPooling1D(2, strides=1)",
])
def test_absurd_sizes_raise_value_errors(layers):
    with pytest.raises(ValueError) as info:
        st.Sequential(eval(f"[{layers}]")).build()
    assert re.match(r"\[(Conv2D|DepthwiseConv2D|Conv1D|MaxPool2D|AvgPool2D|MaxPooling1D)\]", str(info.value)) \
        or "more elements than 2^63 - 1" in str(info.value), str(info.value)


@pytest.mark.parametrize("layers, shape", [
    ("L.Input((1, 8, 8)), L.Conv2D(4, 3, strides=2**62, padding='same', data_format='channels_first')",
     (None, 4, 1, 1)),
    ("L.Input((2**62, 2**62, 3)), L.MaxPool2D(2**62, padding='same', data_format='channels_last')",
     (None, 1, 1, 3)),
])
def test_huge_but_valid_sizes_build(layers, shape):
    model = st.Sequential(eval(f"[{layers}]"))
    model.build()
    assert model.layers[-1].output_shape == shape


def test_window_output_extent_overflow_in_ops():
    with raises_op(ValueError, "max_pool2d", contains=("overflow",)):
        ops.max_pool2d(st.randn((1, 1, 4, 4)), 2**62, dilation=4)
    with raises_op(ValueError, "conv2d", contains=("overflow",)):
        ops.conv2d(st.randn((1, 1, 4, 4)), st.randn((1, 1, 2, 2)), padding=(2**62, 2**62, 0, 0))


# -------------------------------------------------------------------------- layers

def _fit_save_load(tmp_path, model, x, y):
    model.compile(optimizer="adam", loss="sparse_categorical_crossentropy")
    history = model.fit(x, y, epochs=2, batch_size=8, verbose=0)
    assert all(np.isfinite(history.history["loss"]))
    path = str(tmp_path / "model.steepest")
    model.save(path)
    loaded = st.models.load_model(path)
    np.testing.assert_array_equal(loaded.predict(x), model.predict(x))
    return loaded


@pytest.mark.training
def test_conv2d_options_and_depthwise_layers_fit_save_load(tmp_path):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((32, 10, 10, 4)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    model = st.Sequential([
        L.Input((10, 10, 4)),
        L.Conv2D(8, 3, padding="same", dilation_rate=2, groups=2, data_format="channels_last",
                 activation="relu"),
        L.DepthwiseConv2D(3, depth_multiplier=2, padding="same", data_format="channels_last"),
        L.MaxPooling2D(2, padding="same", data_format="channels_last"),
        L.AveragePooling2D(3, strides=2, padding="same", data_format="channels_last"),
        L.Flatten(), L.Dense(3)])
    loaded = _fit_save_load(tmp_path, model, x, y)
    assert [layer.output_shape for layer in model.layers[:4]] == [
        (None, 10, 10, 8), (None, 10, 10, 16), (None, 5, 5, 16), (None, 3, 3, 16)]
    assert model.layers[0].weights["kernel"].shape == (8, 2, 3, 3)
    assert model.layers[1].weights["kernel"].shape == (16, 1, 3, 3)
    assert loaded.layers[1].get_config()["depth_multiplier"] == 2


@pytest.mark.training
def test_conv1d_and_pool1d_layers_fit_save_load(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 16, 3)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    model = st.Sequential([
        L.Input((16, 3)),
        L.Conv1D(6, 3, padding="causal", dilation_rate=2, activation="relu"),
        L.MaxPooling1D(2),
        L.Conv1D(6, 3, padding="same", groups=3),
        L.AveragePooling1D(2, padding="same"),
        L.Conv1D(4, 2, strides=2),
        L.Flatten(), L.Dense(3)])
    _fit_save_load(tmp_path, model, x, y)
    assert [layer.output_shape for layer in model.layers[:5]] == [
        (None, 16, 6), (None, 8, 6), (None, 8, 6), (None, 4, 6), (None, 2, 4)]
    assert model.layers[2].weights["kernel"].shape == (6, 2, 3)


@pytest.mark.skipif(torch is None, reason="torch not installed")
def test_conv1d_causal_layer_matches_torch():
    rng = np.random.default_rng(2)
    layer = L.Conv1D(4, 3, padding="causal", dilation_rate=2, data_format="channels_first")
    x = rng.standard_normal((2, 3, 9)).astype(np.float32)
    out = layer(st.tensor(x)).numpy()
    w, b = (layer.weights[k].numpy() for k in ("kernel", "bias"))
    expected = F.conv1d(F.pad(torch.tensor(x), (4, 0)), torch.tensor(w), torch.tensor(b), dilation=2)
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)
    # Output t depends on inputs up to t only.
    x2 = x.copy()
    x2[..., 5:] += 1.0
    np.testing.assert_array_equal(layer(st.tensor(x2)).numpy()[..., :5], out[..., :5])


def test_conv_layer_argument_errors():
    with pytest.raises(ValueError, match=r"^\[Conv2D\] groups=3 must divide filters=4"):
        L.Conv2D(4, 3, groups=3)
    with pytest.raises(ValueError, match=r"^\[Conv2D\] dilation_rate must be positive"):
        L.Conv2D(4, 3, dilation_rate=0)
    with pytest.raises(ValueError, match=r"^\[Conv1D\] padding must be"):
        L.Conv1D(4, 3, padding="full")
    with pytest.raises(ValueError, match=r"^\[DepthwiseConv2D\] depth_multiplier must be positive"):
        L.DepthwiseConv2D(3, depth_multiplier=0)
    with pytest.raises(ValueError, match=r"^\[Conv2D\] groups=4 must divide the input channels"):
        st.Sequential([L.Input((6, 8, 8)), L.Conv2D(4, 3, groups=4, data_format="channels_first")]).build()
    with pytest.raises(ValueError, match=r"^\[Conv1D\] expects channels-last sequences"):
        st.Sequential([L.Input((6, 8, 8)), L.Conv1D(4, 3)]).build()


# --------------------------------------------------------------------------- CUDA

@requires_cuda
@pytest.mark.parametrize("x_shape, w_shape, stride, padding, dilation, groups", [
    ((2, 3, 9, 8), (4, 3, 3, 3), 1, 2, 2, 1),
    ((2, 4, 6, 6), (6, 2, 3, 3), 2, 1, 1, 2),
    ((2, 4, 7, 6), (8, 1, 3, 3), 1, 1, 2, 4),
    ((1, 4, 5, 5), (4, 2, 1, 1), 1, 0, 1, 2),
    ((32, 64, 14, 14), (64, 1, 3, 3), 1, 1, 1, 64),
])
def test_cuda_conv2d_options(rng, x_shape, w_shape, stride, padding, dilation, groups):
    check_devices(lambda x, w, b: ops.conv2d(x, w, b, stride=stride, padding=padding,
                                             dilation=dilation, groups=groups),
                  normal(rng, *x_shape), normal(rng, *w_shape), normal(rng, w_shape[0]))


@requires_cuda
def test_cuda_conv1d(rng):
    check_devices(lambda x, w: ops.conv1d(x, w, stride=2, padding=1, dilation=2, groups=2),
                  normal(rng, 2, 4, 12), normal(rng, 6, 2, 3))


@requires_cuda
@pytest.mark.parametrize("pool", [
    lambda x: ops.max_pool2d(x, 3, stride=2, padding=1, dilation=2, ceil_mode=True),
    lambda x: ops.max_pool2d(x, 2, ceil_mode=True),
    lambda x: ops.avg_pool2d(x, 3, stride=2, padding=1, ceil_mode=True, count_include_pad=False),
    lambda x: ops.avg_pool2d(x, 3, stride=2, padding=(0, 1, 1, 0), ceil_mode=True),
    lambda x: ops.max_pool1d(x[:, :, 0], 3, stride=2, padding=1, ceil_mode=True),
], ids=["max-dilated-ceil", "max-ceil", "avg-exclude", "avg-asymmetric", "max1d"])
def test_cuda_pool_options(rng, pool):
    check_devices(pool, normal(rng, 2, 3, 9, 8))


@requires_cuda
def test_cuda_max_pool_ties(rng):
    check_devices(lambda x: ops.max_pool2d(x, 3, stride=2, padding=1),
                  rng.integers(0, 2, (2, 3, 9, 8)).astype("float32"))
