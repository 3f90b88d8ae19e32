"""st.models.generate with key/value caches: the prompt runs once, then one token at a
time; the tokens must be those of recomputing the whole window for every token."""

import numpy as np
import pytest

import steepest as st


def tiny_gpt(context=24):
    st.manual_seed(5)
    model = st.models.GPT(11, context, d_model=16, num_heads=2, num_layers=2)
    model.build()
    return model


def recompute_generate(model, prompt, max_new_tokens, temperature=1.0, top_k=None, seed=None):
    """generate() as it was before the cache: the whole window for every token."""
    context = model.input_shape[1]
    tokens = list(prompt)
    rng = np.random.default_rng(seed)
    with st.no_grad():
        for _ in range(max_new_tokens):
            window = np.asarray(tokens[-context:], dtype=np.int64)[None, :]
            logits = model(st.from_numpy(window)).numpy()[0, -1].astype(np.float64)
            if temperature == 0:
                tokens.append(int(np.argmax(logits)))
                continue
            logits /= temperature
            if top_k is not None and top_k < len(logits):
                logits[logits < np.partition(logits, -top_k)[-top_k]] = -np.inf
            p = np.exp(logits - logits.max())
            tokens.append(int(rng.choice(len(p), p=p / p.sum())))
    return np.asarray(tokens, dtype=np.int64)


@pytest.mark.parametrize("prompt_length, new", [(1, 10), (5, 19), (5, 30), (24, 3), (30, 4)],
                         ids=["one", "fills", "slides", "full-prompt", "long-prompt"])
@pytest.mark.parametrize("sampling", [dict(temperature=0.0), dict(temperature=1.0, seed=7),
                                      dict(temperature=0.8, top_k=4, seed=3)],
                         ids=["greedy", "seeded", "top-k"])
def test_cached_generate_matches_recompute(prompt_length, new, sampling):
    model = tiny_gpt()
    prompt = [int(t) for t in np.random.default_rng(prompt_length).integers(0, 11, prompt_length)]
    expected = recompute_generate(model, prompt, new, **sampling)
    np.testing.assert_array_equal(st.models.generate(model, prompt, new, **sampling), expected)


def test_decode_equals_forward_at_every_position():
    model = tiny_gpt()
    tokens = np.random.default_rng(0).integers(0, 11, (2, 20))
    full = model(st.from_numpy(tokens)).numpy()
    impl = model._impl
    assert impl.supports_decode()
    state = st._core.model.DecodeState()
    parts = [impl.decode(st.from_numpy(tokens[:, :7]), state).numpy()]
    for t in range(7, 20):
        parts.append(impl.decode(st.from_numpy(tokens[:, t:t + 1]), state).numpy())
    assert state.length == 20
    np.testing.assert_allclose(np.concatenate(parts, axis=1), full, rtol=1e-5, atol=1e-5)


def test_decode_refuses_what_it_cannot_cache():
    model = tiny_gpt(context=8)
    impl, state = model._impl, st._core.model.DecodeState()
    impl.decode(st.from_numpy(np.zeros((1, 3), dtype=np.int64)), state)
    with pytest.raises(ValueError, match="one token at a time"):
        impl.decode(st.from_numpy(np.zeros((1, 2), dtype=np.int64)), state)
    with pytest.raises(ValueError, match="positions 0 to 9 do not fit the context 8"):
        impl.decode(st.from_numpy(np.zeros((1, 9), dtype=np.int64)), st._core.model.DecodeState())


def test_models_without_a_cache_path_still_generate():
    st.manual_seed(0)
    model = st.Sequential([st.layers.Input((4,), dtype="int64"), st.layers.Embedding(5, 3),
                           st.layers.Dense(5)])
    model.build()
    assert not model._impl.supports_decode()
    out = st.models.generate(model, [1, 2], 3, temperature=0)
    np.testing.assert_array_equal(out, recompute_generate(model, [1, 2], 3, temperature=0))
