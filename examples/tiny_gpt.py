"""Train a character-level GPT the way the seed's LLM section describes: causal
language-modelling cross-entropy, AdamW, linear warmup + cosine decay, global-norm
clipping, BF16 mixed precision with FP32 master weights and activation checkpointing —
on a small text, on the CPU.

    python examples/tiny_gpt.py                     # the bundled essay, ~0.8M parameters
    python examples/tiny_gpt.py --text book.txt --epochs 40 --plot loss.png

It prints the training and validation loss per epoch next to the unigram entropy of the
text (the loss of a model that ignores context) and samples text at the end.
"""

import argparse
import time

import numpy as np

import steepest as st


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--text", help="a UTF-8 text file (default: the essay bundled with steepest)")
    parser.add_argument("--context", type=int, default=64)
    parser.add_argument("--d-model", type=int, default=128)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--layers", type=int, default=4)
    parser.add_argument("--epochs", type=int, default=15)
    parser.add_argument("--batch-size", type=int, default=32)
    parser.add_argument("--lr", type=float, default=3e-3)
    parser.add_argument("--no-remat", action="store_true", help="keep all activations (more memory)")
    parser.add_argument("--precision", default="mixed_bfloat16",
                        choices=("float32", "mixed_bfloat16", "mixed_float16"))
    parser.add_argument("--temperature", type=float, default=0.8)
    parser.add_argument("--top-k", type=int, default=10)
    parser.add_argument("--plot", help="save the loss curves to this PNG (needs matplotlib)")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()

    text = open(args.text, encoding="utf-8").read() if args.text else st.text.default_text()
    tokenizer = st.text.CharTokenizer.from_text(text)
    tokens = tokenizer.encode(text)
    split = int(0.9 * len(tokens))
    train = st.text.windows(tokens[:split], args.context, stride=args.context // 4)
    val = st.text.windows(tokens[split - args.context:], args.context, stride=args.context // 4)
    entropy = st.text.unigram_entropy(tokens)

    st.mixed_precision.set_global_policy(args.precision)
    st.manual_seed(args.seed)
    model = st.models.GPT(tokenizer.vocab_size, args.context, args.d_model, args.heads, args.layers,
                          remat=not args.no_remat)
    steps = args.epochs * ((len(train) + args.batch_size - 1) // args.batch_size)
    schedule = st.schedules.WarmupCosine(args.lr, warmup_steps=max(steps // 10, 1), total_steps=steps,
                                         final_learning_rate=args.lr / 10)
    model.compile(st.optimizers.AdamW(learning_rate=schedule, weight_decay=0.1, clipnorm=1.0),
                  loss=st.losses.CausalLMCrossEntropy())
    print(f"{len(text):,} characters, vocabulary {tokenizer.vocab_size}, {model.count_params():,} parameters, "
          f"{len(train)} training windows of {args.context}, {args.precision}; "
          f"unigram entropy {entropy:.3f} nats")
    start = time.process_time()
    history = model.fit(train, train, batch_size=args.batch_size, epochs=args.epochs,
                        validation_data=(val, val), verbose=2, seed=args.seed)
    cpu_minutes = (time.process_time() - start) / 60
    best = min(history.history["val_loss"])
    print(f"best validation loss {best:.3f} nats vs unigram entropy {entropy:.3f} "
          f"({'below' if best < entropy else 'not below'}), {cpu_minutes:.1f} CPU minutes")

    prompt = tokenizer.encode(text[:args.context // 2])
    sample = st.models.generate(model, prompt, 200, temperature=args.temperature, top_k=args.top_k, seed=args.seed)
    print("---\n" + tokenizer.decode(sample) + "\n---")

    if args.plot:
        try:
            import matplotlib

            matplotlib.use("Agg")
            import matplotlib.pyplot as plt
        except ImportError:
            print("--plot needs matplotlib (pip install matplotlib); no plot written")
            return

        plt.plot(history.history["loss"], label="train")
        plt.plot(history.history["val_loss"], label="validation")
        plt.axhline(entropy, linestyle="--", color="gray", label="unigram entropy")
        plt.xlabel("epoch")
        plt.ylabel("cross-entropy (nats)")
        plt.legend()
        plt.savefig(args.plot, dpi=120)
        print(f"saved {args.plot}")


if __name__ == "__main__":
    main()
