"""Weight gradients written straight into an existing p.grad (GEMM with beta = 1).

When a leaf already has a plain, contiguous .grad (a second backward, gradient
accumulation, data-parallel buckets), MatmulBackward adds dW = Xᵀ·G into it and
EmbeddingBackward scatters into it, instead of building a temporary that AccumulateGrad
then adds. Every case here compares with the out-of-place sum: st.autograd.grad never
accumulates into leaves, so it gives the gradient the old path added. The sums are
bitwise equal where their order is the same (one product added to the old .grad; the
GEMM's depth fits one block), else equal to float32 rounding.
"""

import numpy as np
import pytest
import steepest as st


@pytest.fixture(autouse=True)
def _restore_policy():
    before = st.mixed_precision.global_policy()
    yield
    st.mixed_precision.set_global_policy(before)


def leaf(array):
    t = st.tensor(np.asarray(array, dtype=np.float32))
    t.requires_grad = True
    return t


def out_of_place(loss_fn, params):
    """The gradients of loss_fn() as st.autograd.grad returns them (no leaf accumulation)."""
    return [g.numpy() for g in st.autograd.grad([loss_fn()], params)]


def test_second_backward_adds_into_the_first_gradient_bitwise(rng):
    w = leaf(rng.standard_normal((5, 3)))
    x1, x2 = (st.tensor(rng.standard_normal((8, 5)).astype(np.float32)) for _ in range(2))
    losses = [lambda x=x: (st.ops.matmul(x, w) ** 2).sum() for x in (x1, x2)]
    (g1,), (g2,) = (out_of_place(f, [w]) for f in losses)
    for f in losses:
        f().backward()
    np.testing.assert_array_equal(w.grad.numpy(), g1 + g2)


def test_batched_input_folds_into_rows_and_adds_in_place(rng):
    # A 3-D X times a 2-D W: dW is one tall GEMM over all the rows.
    w = leaf(rng.standard_normal((6, 4)))
    x = st.tensor(rng.standard_normal((3, 7, 6)).astype(np.float32))
    start = rng.standard_normal((6, 4)).astype(np.float32)
    w.grad = st.tensor(start)
    (g,) = out_of_place(lambda: st.ops.matmul(x, w).sum(), [w])
    st.ops.matmul(x, w).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), start + g)


def test_a_reference_to_grad_sees_the_accumulated_value(rng):
    w = leaf(rng.standard_normal((4, 4)))
    x = st.tensor(rng.standard_normal((6, 4)).astype(np.float32))
    w.grad = st.ones((4, 4))
    held = w.grad
    (g,) = out_of_place(lambda: st.ops.matmul(x, w).sum(), [w])
    st.ops.matmul(x, w).sum().backward()
    np.testing.assert_array_equal(held.numpy(), 1.0 + g)
    np.testing.assert_array_equal(w.grad.numpy(), held.numpy())


def test_tied_weight_in_place_and_through_pending(rng):
    # W is the right operand twice (both products add in place) and the left operand
    # once (that gradient is a tensor that reaches AccumulateGrad the usual way).
    w = leaf(rng.standard_normal((4, 4)))
    x = st.tensor(rng.standard_normal((5, 4)).astype(np.float32))
    z = st.tensor(rng.standard_normal((4, 3)).astype(np.float32))

    def loss():
        return (st.ops.matmul(st.ops.matmul(x, w), w) ** 2).sum() + st.ops.matmul(w, z).sum()

    (g,) = out_of_place(loss, [w])
    start = rng.standard_normal((4, 4)).astype(np.float32)
    w.grad = st.tensor(start)
    loss().backward()
    np.testing.assert_allclose(w.grad.numpy(), start + g, rtol=1e-6, atol=1e-5)
    # Against float64 too: d/dW |x·W·W|² + sum(W·z).
    x64, w64, z64 = (t.numpy().astype(np.float64) for t in (x, w, z))
    y = x64 @ w64 @ w64
    expected = (x64 @ w64).T @ (2 * y) + x64.T @ (2 * y) @ w64.T + np.ones((4, 3)) @ z64.T
    np.testing.assert_allclose(w.grad.numpy(), start + expected, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("layout", ["strided", "offset"])
def test_grad_views_fall_back_or_stay_inside_their_slice(rng, layout):
    w = leaf(rng.standard_normal((4, 3)))
    x = st.tensor(rng.standard_normal((6, 4)).astype(np.float32))
    base = rng.standard_normal((5, 6)).astype(np.float32)
    buffer = st.tensor(base)
    # strided: every other column (not contiguous, so AccumulateGrad adds as before);
    # offset: rows 1..4 of a (5, 3) block, contiguous at an offset (a data-parallel bucket's
    # slice), written in place.
    view = buffer[:, ::2][:4] if layout == "strided" else st.ops.reshape(buffer, (10, 3))[1:5]
    before = view.numpy().copy()
    w.grad = view
    (g,) = out_of_place(lambda: st.ops.matmul(x, w).sum(), [w])
    st.ops.matmul(x, w).sum().backward()
    np.testing.assert_array_equal(w.grad.numpy(), before + g)
    np.testing.assert_array_equal(view.numpy(), before + g)
    # Nothing outside the view moved.
    after = buffer.numpy()
    mask = np.ones(base.shape, bool)
    if layout == "strided":
        mask[:4, ::2] = False
    else:
        mask.reshape(10, 3)[1:5] = False
    np.testing.assert_array_equal(after[mask], base[mask])


def test_create_graph_accumulates_out_of_place_with_second_order_unchanged(rng):
    x64 = rng.standard_normal((6, 3))
    w64 = rng.standard_normal((3, 2))
    x = st.tensor(x64.astype(np.float32))
    w = leaf(w64)
    w.grad = st.ones((3, 2))
    (st.ops.matmul(x, w) ** 2).sum().backward(create_graph=True)
    # W.grad = 1 + 2XᵀXW, a function of W: d/dW |W.grad|² = 4XᵀX·W.grad.
    xtx = x64.T @ x64
    first = 1.0 + 2.0 * xtx @ w64
    np.testing.assert_allclose(w.grad.numpy(), first, rtol=1e-5, atol=1e-5)
    (second,) = st.autograd.grad([(w.grad * w.grad).sum()], [w])
    np.testing.assert_allclose(second.numpy(), 4.0 * xtx @ first, rtol=1e-5, atol=1e-4)


def test_autograd_grad_leaves_existing_grads_alone(rng):
    w = leaf(rng.standard_normal((4, 3)))
    x = leaf(rng.standard_normal((6, 4)))
    start = rng.standard_normal((4, 3)).astype(np.float32)
    w.grad = st.tensor(start)
    x.grad = st.zeros((6, 4))
    (gw,) = st.autograd.grad([st.ops.matmul(x, w).sum()], [w])
    (gx,) = st.autograd.grad([st.ops.matmul(x, w).sum()], [x])
    np.testing.assert_array_equal(w.grad.numpy(), start)
    np.testing.assert_array_equal(x.grad.numpy(), np.zeros((6, 4), np.float32))
    np.testing.assert_allclose(gw.numpy(), x.numpy().T @ np.ones((6, 3)), rtol=1e-6)
    np.testing.assert_allclose(gx.numpy(), np.ones((6, 3)) @ w.numpy().T, rtol=1e-6)


def test_mixed_bfloat16_dense_adds_float32_sums_into_the_master_grad(rng):
    st.mixed_precision.set_global_policy("mixed_bfloat16")
    st.manual_seed(0)
    model = st.Sequential([st.layers.Input((8,)), st.layers.Dense(16, activation="relu"),
                           st.layers.Dense(4)])
    x = st.tensor(rng.standard_normal((10, 8)).astype(np.float32))

    def loss():
        return model(x, training=True).astype("float32").sum()

    params = model.parameters()
    grads = out_of_place(loss, params)
    starts = [rng.standard_normal(p.shape).astype(np.float32) for p in params]
    for p, s in zip(params, starts):
        p.grad = st.tensor(s)
    loss().backward()
    for p, s, g in zip(params, starts, grads):
        assert p.grad.dtype == "float32"
        np.testing.assert_array_equal(p.grad.numpy(), s + g)


def test_embedding_scatters_into_the_existing_grad(rng):
    table = leaf(rng.standard_normal((7, 3)))
    indices = st.tensor(np.array([[1, 4, 1], [6, 1, 0]], dtype=np.int64))
    upstream = rng.standard_normal((2, 3, 3)).astype(np.float32)

    def loss():
        return (st.ops.embedding(indices, table) * st.tensor(upstream)).sum()

    (g,) = out_of_place(loss, [table])
    start = rng.standard_normal((7, 3)).astype(np.float32)
    table.grad = st.tensor(start)
    held = table.grad
    loss().backward()
    expected = start.astype(np.float64)
    np.add.at(expected, indices.numpy().ravel(), upstream.reshape(-1, 3))
    np.testing.assert_allclose(table.grad.numpy(), expected, rtol=1e-6, atol=1e-6)
    np.testing.assert_allclose(table.grad.numpy(), start + g, rtol=1e-6, atol=1e-6)
    np.testing.assert_array_equal(held.numpy(), table.grad.numpy())


def test_fit_with_gradient_accumulation_matches_out_of_place_steps(rng):
    x = rng.standard_normal((32, 6)).astype(np.float32)
    y = rng.integers(0, 3, 32)

    def make():
        st.manual_seed(0)
        model = st.Sequential([st.layers.Input((6,)), st.layers.Dense(8, activation="tanh"),
                               st.layers.Dense(3)])
        model.compile(st.optimizers.SGD(learning_rate=0.5), "sparse_categorical_crossentropy")
        return model

    fitted = make()
    fitted.fit(x, y, batch_size=8, epochs=1, shuffle=False, verbose=0,
               gradient_accumulation_steps=2)
    # The same two steps by hand: each micro-batch's mean loss weighted by its share of
    # the step (8 of 16 samples), gradients from st.autograd.grad, summed, SGD applied.
    manual = make()
    params = manual.parameters()
    for step in range(2):
        total = [np.zeros(p.shape, np.float32) for p in params]
        for micro in range(2):
            rows = slice(16 * step + 8 * micro, 16 * step + 8 * (micro + 1))
            logits = manual(st.tensor(x[rows]), training=True)
            loss = st.ops.cross_entropy(logits, st.tensor(y[rows])) * 0.5
            for t, g in zip(total, st.autograd.grad([loss], params)):
                t += g.numpy()
        for p, t in zip(params, total):
            p.copy_(st.tensor(p.numpy() - 0.5 * t))
    for a, b in zip(fitted.get_weights(), manual.get_weights()):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)


def _dense_step_peak(grads):
    """Peak bytes above the start of one forward+backward of a 2-layer 256×256 MLP whose
    .grad tensors are `grads` (allocated before the step, as under accumulation)."""
    st.manual_seed(0)
    model = st.Sequential([st.layers.Input((256,)), st.layers.Dense(256, activation="relu"),
                           st.layers.Dense(256)])
    x = st.randn((4, 256), seed=1)
    model(x)
    for p, g in zip(model.parameters(), grads(model.parameters())):
        p.grad = g
    st.reset_peak_memory_stats()
    base = st.memory_stats()["allocated_bytes"]
    model(x, training=True).sum().backward()
    return st.memory_stats()["peak_allocated_bytes"] - base


def test_in_place_weight_gradient_has_no_weight_sized_temporary():
    dw_bytes = 256 * 256 * 4
    contiguous = _dense_step_peak(lambda ps: [st.zeros(p.shape) for p in ps])
    # Every other column of a twice-as-wide buffer: not contiguous, so each dW is a
    # temporary that AccumulateGrad adds, as before.
    strided = _dense_step_peak(
        lambda ps: [st.zeros((p.shape[0], 2 * p.shape[1]))[:, ::2] if len(p.shape) == 2
                    else st.zeros(p.shape) for p in ps])
    assert contiguous < dw_bytes
    assert strided - contiguous >= dw_bytes


def test_in_place_embedding_gradient_has_no_table_sized_temporary():
    table = st.randn((1000, 64), seed=2)
    table.requires_grad = True
    table.grad = st.zeros((1000, 64))
    indices = st.tensor(np.arange(8, dtype=np.int64) * 3)
    st.reset_peak_memory_stats()
    base = st.memory_stats()["allocated_bytes"]
    st.ops.embedding(indices, table).sum().backward()
    peak = st.memory_stats()["peak_allocated_bytes"] - base
    assert peak < table.numel() * 4


def test_bfloat16_weight_gradient_added_over_several_row_blocks(rng):
    # dW = Xᵀ·G has 300 rows, more than one GEMM row block, so the GEMM sums each half of
    # them in its float32 block in turn, starting from that half of the bfloat16 .grad.
    def bf16(shape):
        return st.tensor(rng.standard_normal(shape).astype(np.float32)).astype("bfloat16")

    w, x, g, start = bf16((300, 40)), bf16((64, 300)), bf16((64, 40)), bf16((300, 40))
    start64 = start.astype("float32").numpy().astype(np.float64)  # before it is added into
    w.requires_grad = True
    w.grad = start
    st.ops.matmul(x, w).backward(g)
    x64, g64 = (t.astype("float32").numpy().astype(np.float64) for t in (x, g))
    exact = start64 + x64.T @ g64
    bound = 2.0**-8 * np.abs(exact) + 2e-6 * (np.abs(start64) + np.abs(x64.T) @ np.abs(g64))
    assert w.grad.dtype == "bfloat16"
    assert np.all(np.abs(w.grad.astype("float32").numpy() - exact) <= bound)
