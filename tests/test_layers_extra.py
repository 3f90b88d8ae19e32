"""GlobalAveragePooling2D, GlobalMaxPooling2D, Reshape, ZeroPadding2D and Add."""

import numpy as np
import pytest

import steepest as st
from helpers import F, check_op, requires_torch, torch

L = st.layers


def _layer_fn(layer):
    return lambda x: layer(x, training=True)


# -------------------------------------------------------------------- global pooling

@pytest.mark.parametrize("keepdims", [False, True])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_global_average_pooling(data_format, keepdims):
    layer = L.GlobalAveragePooling2D(data_format=data_format, keepdims=keepdims)
    axes = (2, 3) if data_format == "channels_first" else (1, 2)
    shape = (2, 3, 4, 5)
    check_op(_layer_fn(layer), lambda x: x.mean(dim=axes, keepdim=keepdims), [shape])
    c = shape[1] if data_format == "channels_first" else shape[3]
    expect = (c,) if not keepdims else ((c, 1, 1) if data_format == "channels_first" else (1, 1, c))
    assert layer.output_shape == (None, *expect)


@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_global_max_pooling(data_format):
    layer = L.GlobalMaxPooling2D(data_format=data_format)
    axes = (2, 3) if data_format == "channels_first" else (1, 2)
    check_op(_layer_fn(layer), lambda x: x.amax(dim=axes), [(2, 3, 4, 5)])


def test_global_pooling_errors():
    with pytest.raises(ValueError, match=r"^\[GlobalAveragePooling2D\].*\(2, 3\)"):
        L.GlobalAveragePooling2D()(st.ones((1, 2, 3)))
    with pytest.raises(ValueError, match=r"^\[GlobalMaxPooling2D\] data_format"):
        L.GlobalMaxPooling2D(data_format="nchw")


# ------------------------------------------------------------------------- reshape

@pytest.mark.parametrize("target", [(4, 6), (-1, 3), (2, -1, 2), (24,)])
def test_reshape(target):
    layer = L.Reshape(target)
    check_op(_layer_fn(layer), lambda x: x.reshape((2, *target)), [(2, 3, 8)], noncontig=["T"])
    expect = tuple(24 // -int(np.prod(target)) if d == -1 else d for d in target)
    assert layer.output_shape == (None, *expect)


def test_reshape_errors():
    with pytest.raises(ValueError, match=r"^\[Reshape\].*one -1"):
        L.Reshape((-1, -1))
    with pytest.raises(ValueError, match=r"^\[Reshape\].*positive"):
        L.Reshape((0, 3))
    with pytest.raises(ValueError, match=r"^\[Reshape\] target_shape must be"):
        L.Reshape("abc")
    with pytest.raises(ValueError, match=r"^\[Reshape\] cannot reshape.*\(5,\).*\(2, 3\)"):
        L.Reshape((2, 3))(st.ones((1, 5)))
    with pytest.raises(ValueError, match=r"^\[Reshape\] cannot reshape"):
        L.Reshape((-1, 3))(st.ones((1, 5)))


# -------------------------------------------------------------------- zero padding

@pytest.mark.parametrize("padding, torch_pad", [
    (1, (1, 1, 1, 1)),
    ((2, 1), (1, 1, 2, 2)),
    (((1, 0), (0, 2)), (0, 2, 1, 0)),
])
@pytest.mark.parametrize("data_format", ["channels_first", "channels_last"])
def test_zero_padding(padding, torch_pad, data_format):
    layer = L.ZeroPadding2D(padding, data_format=data_format)

    def ref(x):
        if data_format == "channels_first":
            return F.pad(x, torch_pad)
        return F.pad(x.permute(0, 3, 1, 2), torch_pad).permute(0, 2, 3, 1)

    check_op(_layer_fn(layer), ref, [(2, 3, 4, 5)])
    (t, b, l, r) = torch_pad[2], torch_pad[3], torch_pad[0], torch_pad[1]
    if data_format == "channels_first":
        assert layer.output_shape == (None, 3, 4 + t + b, 5 + l + r)
    else:
        assert layer.output_shape == (None, 3 + t + b, 4 + l + r, 5)


def test_zero_padding_errors():
    for bad in (-1, (1, 2, 3), ((1, 2), 3), "same", (1.5, 1)):
        with pytest.raises(ValueError, match=r"^\[ZeroPadding2D\] padding must be"):
            L.ZeroPadding2D(bad)
    with pytest.raises(ValueError, match=r"^\[ZeroPadding2D\].*\(3, 4\)"):
        L.ZeroPadding2D(1)(st.ones((2, 3, 4)))


# ------------------------------------------------------------------------------ add

def test_add_sums_and_backpropagates():
    add = L.Add()
    check_op(lambda a, b, c: add([a, b, c]), lambda a, b, c: a + b + c, [(2, 3), (2, 3), (2, 3)],
             noncontig=[None, "T", "slice"])
    assert add.count_params() == 0


def test_add_residual_block_in_python():
    conv = L.Conv2D(3, 3, padding="same")
    bn = L.BatchNormalization()
    x = st.tensor(np.random.default_rng(0).standard_normal((2, 3, 5, 5)).astype(np.float32),
                  requires_grad=True)
    y = L.Add()([x, bn(conv(x), training=True)])
    y.sum().backward()
    assert x.grad is not None and x.grad.shape == x.shape


def test_add_errors():
    add = L.Add()
    with pytest.raises(ValueError, match=r"non-empty list"):
        add(st.ones((2,)))
    with pytest.raises(ValueError, match=r"non-empty list"):
        add([])
    with pytest.raises(ValueError, match=r"one shape.*\(2,\).*\(3,\)"):
        add([st.ones((2,)), st.ones((3,))])
    with pytest.raises(TypeError, match=r"input 1 is ndarray"):
        add([st.ones((2,)), np.ones(2)])
    # A merge layer takes a list: it has no place in a Sequential.
    with pytest.raises(TypeError, match=r"^\[Sequential.add\].*Add"):
        st.Sequential([L.Input((3,)), L.Add()])


# ------------------------------------------------------------ models: fit, save, load

def test_new_layers_in_a_model_save_and_load(tmp_path):
    rng = np.random.default_rng(1)
    x = rng.standard_normal((32, 1, 6, 6)).astype(np.float32)
    y = rng.integers(0, 3, 32)
    model = st.Sequential([
        L.Input((1, 6, 6)),
        L.ZeroPadding2D(1),
        L.Conv2D(4, 3),
        L.BatchNormalization(),
        L.Activation("relu"),
        L.Reshape((4, 36)),
        L.Reshape((4, 6, 6)),
        L.GlobalMaxPooling2D(keepdims=True),
        L.Reshape((-1,)),
        L.Dense(3),
    ])
    model.compile(optimizer="adamw", loss="sparse_categorical_crossentropy")
    model.fit(x, y, batch_size=8, epochs=1, verbose=0, seed=0)
    lines = []
    model.summary(print_fn=lines.append)
    text = "\n".join(lines)
    for name in ("ZeroPadding2D", "BatchNormalization", "Reshape", "GlobalMaxPooling2D"):
        assert name in text
    assert model.layers[0].output_shape == (None, 1, 8, 8)
    path = tmp_path / "extra"
    model.save(path)
    loaded = st.models.load_model(path)
    np.testing.assert_allclose(loaded.predict(x), model.predict(x), rtol=1e-6, atol=1e-6)
    assert [type(l).__name__ for l in loaded.layers] == [type(l).__name__ for l in model.layers]
