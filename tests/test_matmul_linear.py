"""matmul (2-D and batched with numpy batch broadcasting) and linear (w stored in x out)."""

import pytest

import steepest as st
from helpers import LOOSE_ATOL, LOOSE_RTOL, F, check_op, torch

ops = st.ops

# Float32 GEMM summation order is implementation-defined: documented looser bound.
MM_TOL = dict(rtol=LOOSE_RTOL, atol=LOOSE_ATOL)

MATMUL_CASES = [
    pytest.param((3, 4), (4, 2), None, id="3x4@4x2"),
    pytest.param((1, 4), (4, 1), None, id="1x4@4x1"),
    pytest.param((4, 1), (1, 3), None, id="outer-4x1@1x3"),
    pytest.param((2, 3, 4), (2, 4, 5), None, id="batched-2x3x4@2x4x5"),
    pytest.param((2, 3, 4), (4, 5), None, id="bcast-rhs-2x3x4@4x5"),
    pytest.param((3, 4), (2, 4, 5), None, id="bcast-lhs-3x4@2x4x5"),
    pytest.param((2, 1, 3, 4), (3, 4, 2), None, id="bcast-batch-2x1x3x4@3x4x2"),
    pytest.param((1, 3, 2), (4, 2, 3), None, id="bcast-size1-batch-1x3x2@4x2x3"),
    pytest.param((3, 4), (4, 2), ("T", None), id="T@contig"),
    pytest.param((3, 4), (4, 2), (None, "T"), id="contig@T"),
    pytest.param((3, 4), (4, 2), ("T", "T"), id="T@T"),
    pytest.param((3, 4), (4, 2), ("slice", "slice"), id="slice@slice"),
    pytest.param((2, 3, 4), (4, 5), ("T", "slice"), id="batched-T@slice"),
]


@pytest.mark.parametrize("a, b, layouts", MATMUL_CASES)
def test_matmul(a, b, layouts):
    check_op(ops.matmul, lambda x, y: torch.matmul(x, y), [a, b], noncontig=layouts, **MM_TOL)


def test_matmul_operator():
    check_op(lambda x, y: x @ y, lambda x, y: x @ y, [(2, 3, 4), (4, 2)], **MM_TOL)


@pytest.mark.parametrize("grad_inputs", [pytest.param((0,), id="grad-a"),
                                         pytest.param((1,), id="grad-b")])
def test_matmul_single_grad_input(grad_inputs):
    # Only one operand requires grad: the other must be left alone (.grad stays None).
    check_op(ops.matmul, lambda x, y: x @ y, [(3, 4), (4, 2)], grad_inputs=grad_inputs,
             **MM_TOL)


@pytest.mark.parametrize("x, w, b, layouts", [
    pytest.param((3, 4), (4, 2), (2,), None, id="3x4-bias"),
    pytest.param((1, 5), (5, 1), (1,), None, id="1x5-bias"),
    pytest.param((2, 3, 4), (4, 2), (2,), None, id="3d-input-bias"),
    pytest.param((3, 4), (4, 2), (2,), (None, "T", None), id="transposed-w"),
    pytest.param((3, 4), (4, 2), (2,), ("slice", None, "slice"), id="sliced-x-b"),
])
def test_linear(x, w, b, layouts):
    check_op(ops.linear, lambda x_, w_, b_: F.linear(x_, w_.T, b_), [x, w, b],
             noncontig=layouts, **MM_TOL)


@pytest.mark.parametrize("x, w", [
    pytest.param((3, 4), (4, 2), id="3x4"),
    pytest.param((2, 3, 4), (4, 5), id="3d-input"),
])
def test_linear_without_bias(x, w):
    check_op(lambda x_, w_: ops.linear(x_, w_), lambda x_, w_: F.linear(x_, w_.T),
             [x, w], **MM_TOL)
    check_op(lambda x_, w_: ops.linear(x_, w_, None), lambda x_, w_: F.linear(x_, w_.T),
             [x, w], **MM_TOL)
