"""Training-step speed of a small GPT: steepest vs the same model in PyTorch, eager and
under torch.compile (CPU, same run, same threads), and the peak activation memory of
steepest with and without activation checkpointing (remat).

    python benchmarks/gpt_step.py                  # speed at issue 21's configuration:
                                                   # vocab 96, context 128, d_model 192,
                                                   # 6 heads, 4 layers, batch 16, AdamW
    python benchmarks/gpt_step.py --no-compile     # torch eager only (compiling takes minutes)
    python benchmarks/gpt_step.py --memory         # peak memory: 6 layers at context 256
    python benchmarks/gpt_step.py --precision mixed_bfloat16   # torch under autocast
    python benchmarks/gpt_step.py --profile        # plus st.profiler's per-op table of a step
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


def torch_gpt(vocab, context, d, heads, layers):
    class Block(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.ln1, self.ln2 = torch.nn.LayerNorm(d), torch.nn.LayerNorm(d)
            self.qkv, self.out = torch.nn.Linear(d, 3 * d), torch.nn.Linear(d, d)
            self.fc1, self.fc2 = torch.nn.Linear(d, 4 * d), torch.nn.Linear(4 * d, d)

        def forward(self, x):
            b, t, _ = x.shape
            q, k, v = self.qkv(self.ln1(x)).reshape(b, t, 3, heads, d // heads).permute(2, 0, 3, 1, 4)
            a = F.scaled_dot_product_attention(q, k, v, is_causal=True)
            x = x + self.out(a.permute(0, 2, 1, 3).reshape(b, t, d))
            return x + self.fc2(F.gelu(self.fc1(self.ln2(x))))

    class GPT(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.tok, self.pos = torch.nn.Embedding(vocab, d), torch.nn.Parameter(torch.randn(context, d) * 0.05)
            self.blocks = torch.nn.Sequential(*[Block() for _ in range(layers)])
            self.ln, self.head = torch.nn.LayerNorm(d), torch.nn.Linear(d, vocab)

        def forward(self, idx):
            return self.head(self.ln(self.blocks(self.tok(idx) + self.pos[: idx.shape[1]])))

    return GPT()


def speed(args):
    rng = np.random.default_rng(0)
    data = rng.integers(0, args.vocab, (args.batch * args.steps, args.context))
    tokens_per_step = args.batch * args.context
    st.manual_seed(0)
    st.mixed_precision.set_global_policy(args.precision)
    model = st.models.GPT(args.vocab, args.context, args.d_model, args.heads, args.layers)
    model.compile(st.optimizers.AdamW(learning_rate=1e-3), st.losses.CausalLMCrossEntropy())
    model.fit(data[: args.batch * 2], data[: args.batch * 2], batch_size=args.batch, verbose=0, seed=0)
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        model.fit(data, data, batch_size=args.batch, verbose=0, shuffle=False)
        times.append((time.perf_counter() - t) / args.steps)
    st_step = float(np.median(times))
    print(f"GPT d_model={args.d_model} layers={args.layers} heads={args.heads} context={args.context} "
          f"batch={args.batch}, {model.count_params():,} parameters, {args.threads} thread(s), "
          f"{args.precision}")
    print(f"{'steepest':14}{st_step * 1e3:8.1f} ms/step  {tokens_per_step / st_step:10,.0f} tokens/s")
    if args.profile:
        with st.profiler.profile() as prof:
            model.fit(data, data, batch_size=args.batch, verbose=0, shuffle=False)
        print(f"st.profiler over {args.steps} steps (per-op sums; total includes the ops an op calls):")
        print(prof.table(row_limit=args.profile_rows))
    if torch is None:
        print("torch not installed: no comparison")
        return
    compute = {"mixed_bfloat16": torch.bfloat16, "mixed_float16": torch.float16}.get(args.precision)
    x = torch.from_numpy(data)
    modes = ["eager"] + ([] if args.no_compile else ["torch.compile"])
    for mode in modes:
        torch_step = time_torch(args, x, compute, compiled=mode != "eager")
        print(f"{mode:14}{torch_step * 1e3:8.1f} ms/step  {tokens_per_step / torch_step:10,.0f} tokens/s"
              f"   steepest is {torch_step / st_step:.2f}x its speed")
    print("issue 21's targets: >= 1.5x torch eager, >= 1.25x torch.compile")


def time_torch(args, x, compute, compiled):
    """Median seconds per AdamW step of the same GPT in PyTorch, after a warm-up step
    (which, compiled, includes the compilation)."""
    torch.manual_seed(0)
    tm = torch_gpt(args.vocab, args.context, args.d_model, args.heads, args.layers)
    opt = torch.optim.AdamW(tm.parameters(), lr=1e-3)
    forward = torch.compile(tm) if compiled else tm

    def step(batch):
        opt.zero_grad(set_to_none=True)
        with torch.autocast("cpu", dtype=compute or torch.bfloat16, enabled=compute is not None):
            logits = forward(batch)
        loss = F.cross_entropy(logits[:, :-1].float().reshape(-1, args.vocab),
                               batch[:, 1:].reshape(-1))
        loss.backward()
        opt.step()

    step(x[: args.batch])
    times = []
    for _ in range(args.repeats):
        t = time.perf_counter()
        for i in range(args.steps):
            step(x[i * args.batch:(i + 1) * args.batch])
        times.append((time.perf_counter() - t) / args.steps)
    return float(np.median(times))


def memory(args):
    rng = np.random.default_rng(0)
    context, batch = 256, 8
    x = st.tensor(rng.integers(0, args.vocab, (batch, context)))
    print(f"6-layer GPT, d_model {args.d_model}, context {context}, batch {batch}: peak bytes held by "
          "tensors during forward + backward")
    for remat in (False, True):
        st.manual_seed(0)
        model = st.models.GPT(args.vocab, context, args.d_model, args.heads, 6, remat=remat)
        model.build()
        loss_fn = st.losses.CausalLMCrossEntropy()
        st.reset_peak_memory_stats()
        base = st.memory_stats()["allocated_bytes"]
        loss_fn(x, model(x, training=True)).backward()
        peak = st.memory_stats()["peak_allocated_bytes"] - base
        print(f"  remat={remat!s:5}  peak {peak / 2**20:8.1f} MiB above the weights")


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--vocab", type=int, default=96)
    parser.add_argument("--context", type=int, default=128)
    parser.add_argument("--d-model", type=int, default=192)
    parser.add_argument("--heads", type=int, default=6)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--batch", type=int, default=16)
    parser.add_argument("--steps", type=int, default=10)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--memory", action="store_true")
    parser.add_argument("--no-compile", action="store_true", help="skip the torch.compile comparison")
    parser.add_argument("--profile", action="store_true",
                        help="after timing, profile one more fit and print the per-op table")
    parser.add_argument("--profile-rows", type=int, default=25)
    parser.add_argument("--precision", default="float32",
                        choices=["float32", "mixed_bfloat16", "mixed_float16"],
                        help="steepest's policy; torch autocasts to the same 16-bit type")
    args = parser.parse_args()
    st.set_num_threads(args.threads)
    if torch is not None:
        torch.set_num_threads(args.threads)
    memory(args) if args.memory else speed(args)


if __name__ == "__main__":
    main()
