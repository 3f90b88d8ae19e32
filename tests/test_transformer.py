"""Attention, Transformer blocks, activation checkpointing, the causal LM loss and
gradient accumulation."""

import numpy as np
import pytest

import steepest as st
from helpers import check_op, torch

ops = st.ops


@pytest.mark.parametrize("causal", [False, True])
@pytest.mark.parametrize("shapes", [
    pytest.param([(2, 3, 5, 4), (2, 3, 5, 4), (2, 3, 5, 4)], id="BHTD"),
    pytest.param([(4, 3), (6, 3), (6, 2)], id="Tq4.Tk6"),
])
def test_scaled_dot_product_attention(shapes, causal):
    torch_fn = None
    if torch is not None:
        def torch_fn(q, k, v):
            return torch.nn.functional.scaled_dot_product_attention(q, k, v, is_causal=causal)
    check_op(lambda q, k, v: ops.scaled_dot_product_attention(q, k, v, causal=causal), torch_fn,
             shapes, rtol=1e-5, atol=1e-5)


def test_attention_is_causal():
    rng = np.random.default_rng(0)
    q, k, v = (rng.standard_normal((1, 6, 4)) for _ in range(3))
    base = ops.scaled_dot_product_attention(*(st.tensor(a) for a in (q, k, v)), causal=True).numpy()
    k2, v2 = k.copy(), v.copy()
    k2[0, 3] += 5.0
    v2[0, 3] -= 3.0
    changed = ops.scaled_dot_product_attention(*(st.tensor(a) for a in (q, k2, v2)), causal=True).numpy()
    np.testing.assert_array_equal(changed[0, :3], base[0, :3])  # positions before 3 untouched
    assert not np.allclose(changed[0, 3:], base[0, 3:])


def test_attention_bad_shapes():
    with pytest.raises(ValueError, match=r"\[scaled_dot_product_attention\].*\(2, 3\).*\(2, 4\)"):
        ops.scaled_dot_product_attention(st.zeros(2, 3), st.zeros(2, 4), st.zeros(2, 4))


def test_checkpoint_gradients_are_bit_identical():
    rng = np.random.default_rng(1)
    w = st.tensor(rng.standard_normal((5, 5)), dtype="float64", requires_grad=True)
    x = st.tensor(rng.standard_normal((3, 5)), dtype="float64", requires_grad=True)

    def f(x):
        return ops.gelu(x @ w) @ w

    (f(x) ** 2).sum().backward()
    plain = (x.grad.numpy().copy(), w.grad.numpy().copy())
    x.grad = w.grad = None
    (st.checkpoint(f, x) ** 2).sum().backward()
    np.testing.assert_array_equal(x.grad.numpy(), plain[0])
    np.testing.assert_array_equal(w.grad.numpy(), plain[1])


def test_checkpoint_check_op():
    # The recomputing node (CheckpointBackward) against the plain graph's torch twin.
    check_op(lambda x, w: st.checkpoint(lambda t: ops.gelu(t @ w) * t, x),
             lambda x, w: torch.nn.functional.gelu(x @ w) * x, [(3, 4), (4, 4)],
             second_order="checkpoint recomputes with grad mode on only for first-order backward")


def _block_pair(seed=3, dropout=0.0):
    plain = st.layers.TransformerBlock(16, 4, dropout=dropout, seed=seed)
    remat = st.layers.TransformerBlock(16, 4, dropout=dropout, seed=seed, remat=True)
    return plain, remat


@pytest.mark.parametrize("dropout", [0.0, 0.2])
def test_transformer_block_remat_matches(dropout):
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 7, 16)).astype(np.float32)
    plain, remat = _block_pair(dropout=dropout)
    results = []
    for layer in (plain, remat):
        st.manual_seed(11)
        layer._impl.build([7, 16], 5)
        xt = st.tensor(x, requires_grad=True)
        out = layer._impl.forward(xt, True, 3)
        (out * out).sum().backward()
        results.append([out.numpy(), xt.grad.numpy()] + [w.grad.numpy() for w in layer.weights.values()])
    for a, b in zip(*results):
        np.testing.assert_array_equal(a, b)


@pytest.mark.skipif(torch is None, reason="torch is not installed")
def test_transformer_block_matches_torch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((2, 5, 8)).astype(np.float32)
    block = st.layers.TransformerBlock(8, 2, seed=1)
    out = block(st.tensor(x)).numpy()
    w = {k: torch.from_numpy(v.numpy().copy()) for k, v in block.weights.items()}
    F = torch.nn.functional
    t = torch.from_numpy(x)
    b, n, d, h = 2, 5, 8, 2
    qkv = F.layer_norm(t, (d,), w["ln1_gamma"], w["ln1_beta"]) @ w["qkv_kernel"] + w["qkv_bias"]
    q, k, v = qkv.reshape(b, n, 3, h, d // h).permute(2, 0, 3, 1, 4)
    a = F.scaled_dot_product_attention(q, k, v, is_causal=True).permute(0, 2, 1, 3).reshape(b, n, d)
    t1 = t + a @ w["out_kernel"] + w["out_bias"]
    hidden = F.gelu(F.layer_norm(t1, (d,), w["ln2_gamma"], w["ln2_beta"]) @ w["fc1_kernel"] + w["fc1_bias"])
    expected = t1 + hidden @ w["fc2_kernel"] + w["fc2_bias"]
    np.testing.assert_allclose(out, expected.numpy(), rtol=1e-5, atol=1e-5)


def test_causal_lm_loss_is_next_token_cross_entropy():
    rng = np.random.default_rng(0)
    logits = rng.standard_normal((2, 5, 7))
    tokens = rng.integers(0, 7, (2, 5))
    loss = st.losses.CausalLMCrossEntropy()(st.tensor(tokens), st.tensor(logits, dtype="float64")).item()
    z = logits[:, :-1]
    log_p = z - np.log(np.exp(z).sum(-1, keepdims=True))
    expected = -np.take_along_axis(log_p, tokens[:, 1:, None], axis=-1).mean()
    assert loss == pytest.approx(expected, rel=1e-12)


def test_gradient_accumulation_equals_large_batch():
    rng = np.random.default_rng(0)
    x = rng.standard_normal((64, 6)).astype(np.float32)
    y = rng.integers(0, 3, 64)
    weights = []
    for batch, steps in [(32, 1), (8, 4)]:
        st.manual_seed(0)
        model = st.Sequential([st.layers.Input((6,)), st.layers.Dense(8, activation="tanh"), st.layers.Dense(3)])
        model.compile(st.optimizers.SGD(learning_rate=0.5), "sparse_categorical_crossentropy")
        model.fit(x, y, batch_size=batch, epochs=3, shuffle=False, verbose=0,
                  gradient_accumulation_steps=steps)
        assert model.optimizer.iterations == 6
        weights.append(model.get_weights())
    for a, b in zip(*weights):
        np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6)


@pytest.mark.training
def test_tiny_gpt_learns_a_repeating_text():
    text = "the quick brown fox jumps over the lazy dog. " * 20
    tokenizer = st.text.CharTokenizer.from_text(text)
    data = st.text.windows(tokenizer.encode(text), context=16, stride=3)
    st.manual_seed(0)
    model = st.models.GPT(tokenizer.vocab_size, context=16, d_model=32, num_heads=4, num_layers=2)
    model.compile(st.optimizers.AdamW(learning_rate=3e-3), st.losses.CausalLMCrossEntropy())
    history = model.fit(data, data, batch_size=16, epochs=8, verbose=0, seed=0)
    assert history.history["loss"][-1] < 0.5 * history.history["loss"][0]
    prompt = tokenizer.encode("the quick ")
    sample = tokenizer.decode(st.models.generate(model, prompt, 10, temperature=0))
    assert sample.startswith("the quick ") and len(sample) == 20
