"""softmax, log_softmax, cross_entropy, mse_loss, binary_cross_entropy, and Keras' losses as
ops (loss, reduce_loss)."""

import numpy as np
import pytest

import steepest as st
from helpers import F, check_op, torch

ops = st.ops

REDUCTIONS = ["mean", "sum", "none"]

SOFTMAX_CASES = [
    pytest.param((3, 4), -1, None, id="3x4-ax-1"),
    pytest.param((3, 4), 0, None, id="3x4-ax0"),
    pytest.param((3, 4), 1, None, id="3x4-ax1"),
    pytest.param((2, 3, 4), 1, None, id="2x3x4-ax1"),
    pytest.param((2, 3, 4), -1, None, id="2x3x4-ax-1"),
    pytest.param((5,), 0, None, id="5-ax0"),
    pytest.param((4, 1), -1, None, id="4x1-single-class"),
    pytest.param((3, 4), -1, "T", id="3x4-transposed"),
    pytest.param((3, 4), -1, "slice", id="3x4-sliced"),
]


@pytest.mark.parametrize("shape, axis, layout", SOFTMAX_CASES)
def test_softmax(shape, axis, layout):
    check_op(lambda x: ops.softmax(x, axis=axis), lambda x: torch.softmax(x, dim=axis),
             [shape], noncontig=[layout])


@pytest.mark.parametrize("shape, axis, layout", SOFTMAX_CASES)
def test_log_softmax(shape, axis, layout):
    check_op(lambda x: ops.log_softmax(x, axis=axis),
             lambda x: torch.log_softmax(x, dim=axis), [shape], noncontig=[layout])


def test_softmax_default_axis_is_last():
    check_op(ops.softmax, lambda x: torch.softmax(x, dim=-1), [(2, 3, 4)])
    check_op(ops.log_softmax, lambda x: torch.log_softmax(x, dim=-1), [(2, 3, 4)])


def _probabilities(rng, n, c):
    p = rng.uniform(0.1, 1.0, (n, c))
    return p / p.sum(axis=1, keepdims=True)


LABEL_DTYPES = [pytest.param(np.int64, id="int64"), pytest.param(np.int32, id="int32")]


@pytest.mark.parametrize("label_dtype", LABEL_DTYPES)
@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_class_indices(reduction, label_dtype):
    labels = np.array([0, 3, 1, 3, 4, 2], dtype=label_dtype)  # repeated classes on purpose
    check_op(lambda z, y: ops.cross_entropy(z, y, reduction=reduction),
             lambda z, y: F.cross_entropy(z, y, reduction=reduction), [(6, 5), labels])


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_probabilities(reduction, rng):
    # Labels are constants: only the logits are differentiated.
    probs = _probabilities(rng, 4, 5)
    check_op(lambda z, y: ops.cross_entropy(z, y, reduction=reduction),
             lambda z, y: F.cross_entropy(z, y, reduction=reduction), [(4, 5), probs],
             grad_inputs=(0,))


def test_cross_entropy_one_hot_probabilities_match_indices():
    labels = np.array([2, 0, 1])
    z = np.array([[0.5, -1.0, 2.0], [1.5, 0.0, -0.5], [0.2, 0.3, 0.1]], dtype=np.float32)
    by_index = ops.cross_entropy(st.tensor(z), st.tensor(labels, dtype="int64"))
    by_prob = ops.cross_entropy(st.tensor(z), st.tensor(np.eye(3, dtype=np.float32)[labels]))
    np.testing.assert_allclose(by_index.item(), by_prob.item(), rtol=1e-6)


def test_cross_entropy_default_reduction_is_mean():
    labels = np.array([1, 0, 2])
    check_op(ops.cross_entropy, lambda z, y: F.cross_entropy(z, y), [(3, 3), labels])


@pytest.mark.parametrize("layout", ["T", "slice"])
def test_cross_entropy_noncontiguous_logits(layout):
    labels = np.array([1, 0, 3])
    check_op(ops.cross_entropy, lambda z, y: F.cross_entropy(z, y), [(3, 4), labels],
             noncontig=[layout, None])


def test_cross_entropy_single_sample():
    check_op(ops.cross_entropy, lambda z, y: F.cross_entropy(z, y),
             [(1, 4), np.array([2])])


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("shape", [pytest.param((3, 4), id="3x4"),
                                   pytest.param((5,), id="5"),
                                   pytest.param((1, 1), id="1x1")])
def test_mse_loss(shape, reduction):
    # Both pred and target are differentiable: the loss is symmetric in them.
    check_op(lambda p, t: ops.mse_loss(p, t, reduction=reduction),
             lambda p, t: F.mse_loss(p, t, reduction=reduction), [shape, shape])


def test_mse_loss_default_reduction_is_mean():
    check_op(ops.mse_loss, lambda p, t: F.mse_loss(p, t), [(3, 4), (3, 4)])


def test_mse_loss_noncontiguous():
    check_op(ops.mse_loss, lambda p, t: F.mse_loss(p, t), [(3, 4), (3, 4)],
             noncontig=("T", "slice"))


@pytest.mark.parametrize("reduction", REDUCTIONS)
@pytest.mark.parametrize("targets", [
    pytest.param(np.array([[1.0, 0.0, 1.0], [0.0, 0.0, 1.0]]), id="hard"),
    pytest.param(np.array([[0.3, 0.9, 0.5], [0.0, 0.75, 1.0]]), id="soft"),
])
def test_binary_cross_entropy_from_logits(targets, reduction):
    check_op(lambda z, y: ops.binary_cross_entropy(z, y, from_logits=True,
                                                   reduction=reduction),
             lambda z, y: F.binary_cross_entropy_with_logits(z, y, reduction=reduction),
             [(2, 3), targets], grad_inputs=(0,))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_binary_cross_entropy_from_probabilities(reduction):
    targets = np.array([1.0, 0.0, 0.0, 1.0, 0.4])
    check_op(lambda p, y: ops.binary_cross_entropy(p, y, from_logits=False,
                                                   reduction=reduction),
             lambda p, y: F.binary_cross_entropy(p, y, reduction=reduction),
             [(5,), targets], domain="unit", grad_inputs=(0,))


def test_binary_cross_entropy_defaults_are_logits_and_mean():
    targets = np.array([1.0, 0.0, 1.0, 1.0])
    check_op(ops.binary_cross_entropy,
             lambda z, y: F.binary_cross_entropy_with_logits(z, y), [(4,), targets],
             grad_inputs=(0,))


def test_binary_cross_entropy_noncontiguous_logits():
    targets = np.array([[1.0, 0.0], [0.0, 1.0], [1.0, 1.0]])
    check_op(ops.binary_cross_entropy,
             lambda z, y: F.binary_cross_entropy_with_logits(z, y),
             [(3, 2), targets], noncontig=["T", None], grad_inputs=(0,))


@pytest.mark.parametrize("reduction", REDUCTIONS)
def test_cross_entropy_sequence_logits(reduction):
    # (B, T, C) logits with (B, T) labels, the language-model layout (class axis last;
    # torch puts classes on axis 1, hence the transpose in the reference).
    labels = np.array([[0, 3, 1], [2, 2, 4]])
    check_op(lambda z, y: ops.cross_entropy(z, y, reduction=reduction),
             lambda z, y: F.cross_entropy(z.transpose(1, 2), y, reduction=reduction),
             [(2, 3, 5), labels])


def test_cross_entropy_sequence_probabilities_and_slices(rng):
    probs = _probabilities(rng, 6, 5).reshape(2, 3, 5)
    check_op(lambda z, y: ops.cross_entropy(z[:, 1:], y[:, 1:], reduction="none"),
             lambda z, y: F.cross_entropy(z[:, 1:].transpose(1, 2), y[:, 1:].transpose(1, 2), reduction="none"),
             [(2, 3, 5), probs], grad_inputs=(0, 1))


# ------------------------------------------------- Keras' losses as ops (st.ops.loss)
# The one definition st.losses and Sequential.fit share (cpp/ops/losses.cpp).

def _causal_lm(z, y):
    return F.cross_entropy(z[:, :-1].reshape(-1, z.shape[-1]), y[:, 1:].reshape(-1))


LOSS_CASES = [
    pytest.param("sparse_categorical_crossentropy", True, [(4, 5), np.array([0, 3, 1, 4])], "normal",
                 lambda z, y: F.cross_entropy(z, y), id="sparse-logits"),
    pytest.param("sparse_categorical_crossentropy", False, [(4, 5), np.array([0, 3, 1, 4])], "unit",
                 lambda p, y: F.cross_entropy(torch.log(p), y), id="sparse-probabilities"),
    pytest.param("categorical_crossentropy", True, [(3, 4), np.eye(4)[[1, 0, 3]] * 0.8 + 0.05], "normal",
                 lambda z, y: F.cross_entropy(z, y), id="categorical-logits"),
    pytest.param("binary_crossentropy", True, [(6,), np.array([1.0, 0.0, 0.3, 1.0, 0.0, 0.5])], "normal",
                 lambda z, y: F.binary_cross_entropy_with_logits(z, y), id="binary-logits"),
    pytest.param("binary_crossentropy", False, [(2, 3), np.array([[1.0, 0.0, 0.3], [1.0, 0.0, 0.5]])], "unit",
                 lambda p, y: F.binary_cross_entropy(p, y), id="binary-probabilities"),
    pytest.param("mse", True, [(3, 4), (3, 4)], "normal", lambda p, y: F.mse_loss(p, y), id="mse"),
    pytest.param("mean_absolute_error", True, [(3, 4), (3, 4)], "normal", lambda p, y: F.l1_loss(p, y), id="mae"),
    pytest.param("causal_lm_crossentropy", True, [(2, 4, 5), np.array([[1, 2, 0, 4], [3, 3, 1, 0]])], "normal",
                 _causal_lm, id="causal-lm"),
]


@pytest.mark.parametrize("name, from_logits, inputs, domain, torch_fn", LOSS_CASES)
def test_loss_op_matches_torch(name, from_logits, inputs, domain, torch_fn):
    check_op(lambda p, y: ops.loss(name, y, p, from_logits=from_logits), torch_fn, inputs,
             grad_inputs=(0,), domain=domain, noncontig=["slice" if len(inputs[0]) == 2 else None, None])


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean_with_sample_weight", "none"])
def test_loss_op_with_sample_weights(reduction):
    w = np.array([0.5, 2.0, 0.0])

    def reference(p, y):
        values = (p - y) ** 2 * torch.from_numpy(w)[:, None].to(p.dtype)
        if reduction == "none":
            return values
        if reduction == "sum":
            return values.sum()
        if reduction == "mean_with_sample_weight":
            return values.sum() / (w.sum() * 4)
        return values.mean()

    check_op(lambda p, y, sw: ops.loss("mse", y, p, sample_weight=sw, reduction=reduction),
             lambda p, y, sw: reference(p, y), [(3, 4), (3, 4), w], grad_inputs=(0,))


@pytest.mark.parametrize("reduction", ["sum_over_batch_size", "sum", "mean_with_sample_weight", "none"])
def test_reduce_loss_op(reduction):
    w = np.array([1.0, 3.0, 0.5, 2.0])

    def reference(v):
        weighted = v * torch.from_numpy(w)[:, None].to(v.dtype)
        return {"none": weighted, "sum": weighted.sum(), "mean_with_sample_weight": weighted.sum() / (w.sum() * 2)
                }.get(reduction, weighted.mean())

    check_op(lambda v, sw: ops.reduce_loss(v, sample_weight=sw, reduction=reduction), lambda v, sw: reference(v),
             [(4, 2), w], grad_inputs=(0,), noncontig=["T", None])
    check_op(lambda v: ops.reduce_loss(v, reduction=reduction),
             lambda v: v if reduction == "none" else v.sum() if reduction == "sum" else v.mean(), [(4, 2)])


def test_loss_objects_run_the_loss_op():
    # st.losses.X.__call__ is st.ops.loss: the same clamp as fit. A probability of exactly
    # 0 for a positive label (or 1 for a negative one) gave inf in a custom loop before;
    # it is clipped to [1e-7, 1 - 1e-7] (about 16 nats).
    y = st.tensor(np.array([[1.0], [0.0]], dtype=np.float32))
    p = st.tensor(np.array([[0.0], [1.0]], dtype=np.float32))
    loss = st.losses.BinaryCrossentropy()(y, p)
    assert loss.item() == ops.loss("binary_crossentropy", y, p).item()
    assert 15.0 < loss.item() < 17.0
    w = st.tensor(np.array([1.0, 3.0], dtype=np.float32))
    for cls, name in [(st.losses.MeanSquaredError, "mse"), (st.losses.MeanAbsoluteError, "mae")]:
        for reduction in ["sum_over_batch_size", "sum", "mean_with_sample_weight"]:
            got = cls(reduction=reduction)(y, p, sample_weight=w)
            assert got.item() == ops.loss(name, y, p, sample_weight=w, reduction=reduction).item()


def test_loss_object_equals_fit_loss():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((16, 3)).astype(np.float32)
    y = (rng.random((16, 1)) > 0.5).astype(np.float32)
    w = rng.random(16).astype(np.float32)
    for loss in [st.losses.BinaryCrossentropy(from_logits=True), st.losses.MeanSquaredError(reduction="sum"),
                 st.losses.MeanAbsoluteError()]:
        model = st.Sequential([st.layers.Input((3,)), st.layers.Dense(1)])
        model.compile(optimizer="sgd", loss=loss)
        fit_loss = model.evaluate(x, y, sample_weight=w, batch_size=16, verbose=0)
        direct = loss(st.tensor(y), st.tensor(model.predict(x, verbose=0)), sample_weight=st.tensor(w))
        np.testing.assert_allclose(fit_loss, direct.item(), rtol=1e-6)


def test_loss_table_is_the_one_name_table():
    table = st._core.ops.loss_table()
    names = {e["name"] for e in table} | {a for e in table for a in e["aliases"]}
    for name in names:
        assert st.losses.get(name).loss_name in {e["name"] for e in table}
    with pytest.raises(ValueError, match=r"^\[loss\] unknown loss 'hinge'; expected one of .*mse"):
        ops.loss("hinge", st.tensor([1.0]), st.tensor([1.0]))
