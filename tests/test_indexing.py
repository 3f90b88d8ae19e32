"""Indexing (issue 22): None/Ellipsis, slices of any step, integer-array and bool-mask
indexing with their scatter-add backward, __setitem__ with broadcasting, and squeeze /
unsqueeze / expand / flatten with PyTorch semantics. Values against NumPy, gradients
through check_op (float64 gradcheck, torch parity, non-contiguous inputs)."""

import numpy as np
import pytest

import steepest as st
from helpers import check_op, requires_torch, torch

A = np.arange(60.0).reshape(3, 4, 5)
MASK = A[:, :, 0] % 3 == 1  # (3, 4)

READ_KEYS = [
    (None,),
    (None, Ellipsis, None),
    (Ellipsis, 1),
    (1, Ellipsis),
    (slice(None, None, -1),),
    (slice(None), slice(3, None, -2), slice(None, 1, -1)),
    ([2, 0, 2],),
    (np.array([[0, 1], [2, 2]]),),
    (slice(None), [1, -1]),
    (Ellipsis, [4, 0, 0]),
    ([0, 2], slice(None), [1, 3]),     # separated arrays: their dimension comes first
    (slice(None), [0, 3], [1, 4]),     # adjacent arrays: in place
    (1, slice(None), [0, 2]),          # an int beside an array counts as an array
    ([[0], [2]], [1, 2, 3]),           # broadcast index arrays
    (A[:, 0, 0] > 10,),
    (MASK,),
    (A > 30,),
    (slice(None), A[0, :, 0] < 8),
    (Ellipsis, A[0, 0] > 1),
    (None, [1], slice(None, None, -1), None),
    ([],),
]


def _ids(key):
    return repr(key)[:60]


@pytest.mark.parametrize("key", READ_KEYS, ids=_ids)
@pytest.mark.parametrize("dtype", ["float32", "float64", "int64", "int32", "bool"])
def test_read_matches_numpy(key, dtype):
    base = A.astype(dtype) if dtype != "bool" else A % 2 == 0
    got = st.tensor(base, dtype=dtype)[key]
    expected = base[key]
    assert got.shape == expected.shape and got.dtype == dtype
    np.testing.assert_array_equal(got.numpy(), expected)


@pytest.mark.parametrize("key", READ_KEYS, ids=_ids)
def test_index_with_steepest_tensors(key):
    converted = tuple(st.tensor(k) if isinstance(k, (list, np.ndarray)) and len(k) else k
                      for k in key)
    np.testing.assert_array_equal(st.tensor(A)[converted].numpy(), A[key])


@pytest.mark.parametrize("key", READ_KEYS[:-1], ids=_ids)
def test_gradients(key):
    # The backward of a gather is a scatter-add: repeated indices add up.
    check_op(lambda x: x[key], None, [A.shape])
    check_op(lambda x: x[key], None, [A.shape], noncontig=["slice"])


@requires_torch
@pytest.mark.parametrize("key", [
    ([2, 0, 2, 2],), (slice(None), [1, -1, 1]), (MASK,), ([0, 2], slice(None), [1, 3]),
    (slice(None), slice(None), [0, 0, 4]), ([[0], [2]], [1, 2, 3]),
], ids=_ids)
def test_gradients_match_torch(key):
    def torch_key(k):
        return tuple(torch.as_tensor(np.asarray(i)) if isinstance(i, (list, np.ndarray)) else i
                     for i in k)
    check_op(lambda x: x[key], lambda t: t[torch_key(key)], [A.shape], noncontig=["T"])


def test_repeated_indices_accumulate():
    x = st.tensor([1.0, 2.0, 3.0], requires_grad=True)
    x[[0, 0, 2, 0]].sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), [3.0, 0.0, 1.0])


@requires_torch
@pytest.mark.parametrize("axis", [0, 1, -1])
def test_index_select(axis):
    idx = np.array([3, 0, 3, -1]) if axis else np.array([2, 0, -1])
    check_op(lambda x: st.ops.index_select(x, axis, st.tensor(idx)),
             lambda t: torch.index_select(t, axis % 3, torch.as_tensor(idx % A.shape[axis])),
             [A.shape], noncontig=["T"])


def test_index_errors():
    t = st.tensor(A)
    with pytest.raises(IndexError, match=r"index 5 is out of bounds for axis 0 with size 3"):
        t[[0, 5]]
    with pytest.raises(IndexError, match=r"index -4 is out of bounds"):
        t[[-4]]
    with pytest.raises(IndexError, match=r"integer or bool"):
        t[st.tensor([0.0, 1.0])]
    with pytest.raises(IndexError, match=r"bool mask of shape \(4,\)"):
        t[np.ones(4, dtype=bool)]
    with pytest.raises(IndexError, match="too many indices"):
        t[0, 0, 0, 0]
    with pytest.raises(TypeError, match=r"\[index\]"):
        t["a"]
    with pytest.raises(ValueError, match="step cannot be zero"):
        t[::0]


# ---------------------------------------------------------------------- __setitem__

SET_CASES = [
    ((1,), 7.0),
    ((slice(None), 0), np.array([1.0, 2.0, 3.0, 4.0, 5.0])),
    ((Ellipsis, 2), np.arange(12.0).reshape(3, 4)),
    ((slice(None, None, -1), 1), np.arange(5.0)),         # broadcast over the first axis
    ((slice(None), slice(1, 3)), np.array([[[9.0]]])),    # leading 1s are dropped
    (([0, 2],), -1.0),
    (([2, 0], slice(None), [1, 1]), np.array([[5.0], [6.0]])),
    ((MASK,), 0.5),
    ((A > 40,), np.arange(19.0)),
    ((slice(None), A[0, :, 0] > 7), np.arange(5.0)),
    ((None, 0, [1, 2]), 3),
]


@pytest.mark.parametrize("key, value", SET_CASES, ids=lambda v: repr(v)[:40])
@pytest.mark.parametrize("as_tensor", [False, True])
def test_setitem_matches_numpy(key, value, as_tensor):
    expected = A.copy()
    expected[key] = value
    t = st.tensor(A, dtype="float64")
    t[key] = st.tensor(value, dtype="float64") if as_tensor else value
    np.testing.assert_array_equal(t.numpy(), expected)


def test_setitem_into_views_and_dtypes():
    t = st.zeros(4, 6)
    view = t[:, 1::2]              # writes go through a strided view into t
    view[view == 0] = 2.0
    view[0] = st.tensor([1, 2, 3])  # int value cast to float32
    assert t.numpy()[:, 1::2].tolist() == [[1, 2, 3]] + [[2, 2, 2]] * 3
    assert t.numpy()[:, ::2].sum() == 0
    m = st.tensor([[1, 2], [3, 4]], dtype="int32")
    m[m > 2] = 0
    m[0, :] = 9.7  # as NumPy and torch: cast to the tensor's dtype
    assert m.numpy().tolist() == [[9, 9], [0, 0]] and m.dtype == "int32"
    b = st.tensor([True, False, True])
    b[1] = True
    assert b.numpy().tolist() == [True, True, True]


def test_setitem_overlapping_value():
    t = st.tensor(np.arange(6.0))
    t[1:] = t[:-1]
    np.testing.assert_array_equal(t.numpy(), [0, 0, 1, 2, 3, 4])


def test_setitem_refused_where_a_gradient_is_wanted():
    w = st.ones(3, requires_grad=True)
    with pytest.raises(RuntimeError, match=r"\[setitem\] a leaf tensor that requires grad"):
        w[0] = 2.0
    y = w * 2
    with pytest.raises(RuntimeError, match=r"\[setitem\] in-place assignment"):
        y[0] = 1.0
    with st.no_grad():
        w[0] = 2.0  # as torch: allowed without gradient tracking
    w.detach()[1] = 5.0
    np.testing.assert_array_equal(w.detach().numpy(), [2.0, 5.0, 1.0])


def test_setitem_shape_errors():
    t = st.zeros(3, 4)
    with pytest.raises(ValueError):
        t[0] = st.ones(3)
    with pytest.raises(ValueError):
        t[[0, 1]] = st.ones(3, 4)


# ------------------------------------------- squeeze / unsqueeze / expand / flatten

@requires_torch
def test_shape_ops_match_torch():
    x = (2, 1, 3, 1)
    check_op(lambda t: t.squeeze(), lambda t: t.squeeze(), [x])
    check_op(lambda t: t.squeeze(1), lambda t: t.squeeze(1), [x])
    check_op(lambda t: t.squeeze(0), lambda t: t.squeeze(0), [x])
    check_op(lambda t: st.ops.squeeze(t, (1, -1)), lambda t: t.squeeze((1, -1)), [x])
    check_op(lambda t: t.unsqueeze(-1), lambda t: t.unsqueeze(-1), [(2, 3)], noncontig=["T"])
    check_op(lambda t: st.ops.unsqueeze(t, 0), lambda t: t.unsqueeze(0), [(2, 3)])
    check_op(lambda t: t.expand(4, -1, 3), lambda t: t.expand(4, -1, 3), [(2, 1)])
    check_op(lambda t: st.ops.expand(t, (2, -1, -1)), lambda t: t.expand(2, -1, -1), [(3, 4)],
             noncontig=["T"])
    check_op(lambda t: t.flatten(), lambda t: t.flatten(), [(2, 3, 4)])
    check_op(lambda t: t.flatten(1), lambda t: t.flatten(1), [(2, 3, 4)], noncontig=["T"])
    check_op(lambda t: t.flatten(0, -2), lambda t: t.flatten(0, -2), [(2, 3, 4)])
    check_op(lambda t: st.ops.flatten(t, 1, 2), lambda t: torch.flatten(t, 1, 2), [(2, 3, 4, 2)])


def test_shape_op_shapes_and_errors():
    x = st.zeros(2, 3, 4)
    assert st.ops.flatten(x).shape == (2, 12)  # the documented default keeps the batch axis
    assert x.flatten().shape == (24,)          # Tensor.flatten is torch's
    assert x.flatten(-1, -1).shape == (2, 3, 4)
    assert st.zeros(3, 1).expand(-1, 4).shape == (3, 4)
    with pytest.raises(ValueError, match="expand"):
        st.zeros(3, 1).expand(-1, -1, 4)
    with pytest.raises(ValueError, match="expand"):
        st.zeros(3, 2).expand(3, 4)
    with pytest.raises(ValueError, match="flatten"):
        x.flatten(2, 1)
    with pytest.raises(ValueError, match="unsqueeze"):
        x.unsqueeze(4)
    assert x.unsqueeze(3).shape == (2, 3, 4, 1) and x.unsqueeze(-4).shape == (1, 2, 3, 4)


@pytest.mark.skipif(not st.backends()["cuda"], reason="no CUDA device")
def test_cuda_indexing_matches_cpu():
    t = st.tensor(A, device="cuda", requires_grad=True)
    out = t[[2, 0, 2], ::-1]
    np.testing.assert_array_equal(out.detach().numpy(), A[[2, 0, 2], ::-1])
    out.sum().backward()
    expected = np.zeros_like(A)
    expected[0] += 1
    expected[2] += 2
    np.testing.assert_array_equal(t.grad.numpy(), expected)
    np.testing.assert_array_equal(t.detach()[st.tensor(MASK, device="cuda")].numpy(), A[MASK])
    u = st.tensor(A, device="cuda")
    u[MASK] = -1.0
    u[:, 0] = 5.0
    expected = A.copy()
    expected[MASK] = -1.0
    expected[:, 0] = 5.0
    np.testing.assert_array_equal(u.numpy(), expected)
