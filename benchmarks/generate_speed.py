"""Sampling speed of st.models.generate with key/value caches, against the previous
implementation (the whole window recomputed for every token) and against PyTorch running
the same model with its own simple KV cache (same weights, same thread count).

    python benchmarks/generate_speed.py                  # context 256, 255 new tokens
    python benchmarks/generate_speed.py --d-model 192 --heads 6 --layers 4

Greedy decoding (temperature 0) from a one-token prompt to a full context, so every
implementation produces the same tokens (checked).
"""

import argparse
import time

import numpy as np

import steepest as st

try:
    import torch
    import torch.nn.functional as F
except ImportError:
    torch = None


def recompute_generate(model, prompt, new):
    """generate() before the cache: one forward over the whole text per token."""
    tokens = list(prompt)
    with st.no_grad():
        for _ in range(new):
            window = np.asarray(tokens, dtype=np.int64)[None, :]
            tokens.append(int(np.argmax(model(st.from_numpy(window)).numpy()[0, -1])))
    return np.asarray(tokens)


def torch_generate(weights, args, prompt, new):
    """The same GPT in torch, decoding with a per-layer KV cache (torch.cat per token)."""
    w = {k: torch.tensor(v) for k, v in weights.items()}
    d, h = args.d_model, args.heads

    def layer_norm(x, prefix):
        return F.layer_norm(x, (d,), w[prefix + "gamma"], w[prefix + "beta"], 1e-5)

    def run(tokens, start, cache):
        x = w["emb.token_embeddings"][tokens] + w["emb.position_embeddings"][start:start + len(tokens)]
        x = x[None]
        t = x.shape[1]
        for i in range(args.layers):
            p = f"block{i}."
            qkv = layer_norm(x, p + "ln1_") @ w[p + "qkv_kernel"] + w[p + "qkv_bias"]
            q, k, v = qkv.reshape(1, t, 3, h, d // h).permute(2, 0, 3, 1, 4)
            if i in cache:
                k = torch.cat([cache[i][0], k], 2)
                v = torch.cat([cache[i][1], v], 2)
            cache[i] = (k, v)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=start == 0)
            x = x + a.permute(0, 2, 1, 3).reshape(1, t, d) @ w[p + "out_kernel"] + w[p + "out_bias"]
            m = F.gelu(layer_norm(x, p + "ln2_") @ w[p + "fc1_kernel"] + w[p + "fc1_bias"])
            x = x + m @ w[p + "fc2_kernel"] + w[p + "fc2_bias"]
        x = F.layer_norm(x, (d,), w["ln.gamma"], w["ln.beta"], 1e-5)
        return (x @ w["head.kernel"] + w["head.bias"])[0, -1]

    tokens, cache = list(prompt), {}
    with torch.no_grad():
        logits = run(torch.tensor(tokens), 0, cache)
        for _ in range(new):
            tokens.append(int(torch.argmax(logits)))
            if len(tokens) - 1 < args.context and _ < new - 1:
                logits = run(torch.tensor(tokens[-1:]), len(tokens) - 1, cache)
    return np.asarray(tokens)


def named_weights(model):
    """The model's weights under the names torch_generate uses."""
    out = {}
    layers = [layer for layer in model.layers if layer.weights]
    emb, blocks, ln, head = layers[0], layers[1:-2], layers[-2], layers[-1]
    for name, value in emb.weights.items():
        out["emb." + name.split("/")[-1]] = value.numpy()
    for i, block in enumerate(blocks):
        for name, value in block.weights.items():
            out[f"block{i}." + name.split("/")[-1]] = value.numpy()
    for prefix, layer in (("ln.", ln), ("head.", head)):
        for name, value in layer.weights.items():
            out[prefix + name.split("/")[-1]] = value.numpy()
    return out


def timed(fn, repeats):
    best, result = float("inf"), None
    for _ in range(repeats):
        start = time.perf_counter()
        result = fn()
        best = min(best, time.perf_counter() - start)
    return best, result


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=96)
    parser.add_argument("--context", type=int, default=256)
    parser.add_argument("--d-model", type=int, default=192)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    args = parser.parse_args()
    st.set_num_threads(args.threads)
    st.manual_seed(0)
    model = st.models.GPT(args.vocab, args.context, args.d_model, args.heads, args.layers)
    model.build()
    prompt, new = [1], args.context - 1
    print(f"GPT vocab {args.vocab}, d_model {args.d_model}, {args.heads} heads, {args.layers} layers, "
          f"context {args.context}: {new} greedy tokens from a 1-token prompt, {args.threads} thread(s)")
    cached_s, cached = timed(lambda: st.models.generate(model, prompt, new, temperature=0), args.repeats)
    full_s, full = timed(lambda: recompute_generate(model, prompt, new), max(1, args.repeats - 1))
    print(f"steepest, KV cache      {new / cached_s:10.1f} tokens/s")
    print(f"steepest, recompute     {new / full_s:10.1f} tokens/s  (the previous generate)")
    print(f"KV cache speed-up       {full_s / cached_s:10.2f}x  (target >= 5)")
    assert np.array_equal(cached, full), "the cached and recomputed tokens differ"
    if torch is None:
        print("torch not installed: no comparison")
        return
    torch.set_num_threads(args.threads)
    weights = named_weights(model)
    torch_s, theirs = timed(lambda: torch_generate(weights, args, prompt, new), args.repeats)
    print(f"torch, KV cache (eager) {new / torch_s:10.1f} tokens/s  "
          f"(steepest at {torch_s / cached_s:.2f}x torch's speed)")
    agree = int(np.sum(np.asarray(theirs[:len(cached)]) == cached))
    print(f"tokens equal to steepest's: {agree}/{len(cached)}")


if __name__ == "__main__":
    main()
