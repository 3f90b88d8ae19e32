"""softmax, log_softmax, cross_entropy, mse_loss, binary_cross_entropy."""

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
