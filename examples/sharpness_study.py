"""Flat minima (the seed's Future Work 3; Keskar et al. 2017): does a small batch find a
flatter minimum that generalises better than a large batch's?

A digits MLP (standardised pixels → Dense 128 relu → Dense 128 relu → Dense 10, float64,
written with steepest tensors) is trained from the same initialisation with a small batch
(b = 16, lr 0.05) and with full batches (b = N = 1,437, i.e. GD; lr 0.05·√(N/16) ≈ 0.47 by
the seed's √ rule, ``st.optimizers.scale_learning_rate``), both with the seed's momentum SGD
(β = 0.9), until the full training loss, checked once an epoch, first falls below the same
target. Per seed:

* sharpness: the largest eigenvalue of the Hessian of the training loss at the solution,
  ``st.analysis.hessian_eigenvalues(loss_fn, params, k=1)`` (Lanczos on Hessian-vector
  products);
* test accuracy and test loss;
* a 1-D slice of the training and test loss along θ(α) = (1 − α)θ_s + αθ_l,
  α ∈ [−0.5, 1.5], θ_s the small-batch and θ_l the large-batch solution (Keskar's Fig. 3).

    python examples/sharpness_study.py [--seeds 3] [--plot docs/img/sharpness_slice.png]
"""

from __future__ import annotations

import argparse
import time
from typing import Callable, List, NamedTuple, Sequence, Tuple

import numpy as np

import steepest as st

HIDDEN = 128
TARGET_LOSS = 0.01
SMALL_BATCH = 16
SMALL_LEARNING_RATE = 0.05

Params = List[st.Tensor]


class Data(NamedTuple):
    x: st.Tensor
    y: st.Tensor
    x_test: st.Tensor
    y_test: st.Tensor
    x_np: np.ndarray
    y_np: np.ndarray


def load_data() -> Data:
    (x, y), (x_test, y_test) = st.datasets.load_digits()
    mean, std = x.mean(), x.std()  # one mean and variance over all pixels, as the CLI's MLP
    x = ((x - mean) / std).astype(np.float64)
    x_test = ((x_test - mean) / std).astype(np.float64)
    return Data(st.tensor(x, dtype="float64"), st.tensor(y, dtype="int64"),
                st.tensor(x_test, dtype="float64"), st.tensor(y_test, dtype="int64"), x, y)


def init_params(seed: int) -> List[np.ndarray]:
    """He-normal weights, zero biases: W1 (64, H), b1, W2 (H, H), b2, W3 (H, 10), b3."""
    rng = np.random.default_rng(seed)
    shapes = [(64, HIDDEN), (HIDDEN, HIDDEN), (HIDDEN, 10)]
    out: List[np.ndarray] = []
    for fan_in, fan_out in shapes:
        out.append(rng.standard_normal((fan_in, fan_out)) * np.sqrt(2.0 / fan_in))
        out.append(np.zeros(fan_out))
    return out


def logits(params: Sequence[st.Tensor], x: st.Tensor) -> st.Tensor:
    w1, b1, w2, b2, w3, b3 = params
    h = st.ops.linear(x, w1, b1).relu()
    h = st.ops.linear(h, w2, b2).relu()
    return st.ops.linear(h, w3, b3)


def loss(params: Sequence[st.Tensor], x: st.Tensor, y: st.Tensor) -> st.Tensor:
    return st.ops.cross_entropy(logits(params, x), y)


def as_tensors(arrays: Sequence[np.ndarray], requires_grad: bool = False) -> Params:
    return [st.tensor(a, dtype="float64", requires_grad=requires_grad) for a in arrays]


def evaluate(arrays: Sequence[np.ndarray], x: st.Tensor, y: st.Tensor) -> Tuple[float, float]:
    """(mean cross-entropy, accuracy) of the network with weights ``arrays`` on (x, y)."""
    with st.no_grad():
        params = as_tensors(arrays)
        out = logits(params, x)
        value = st.ops.cross_entropy(out, y).item()
        accuracy = float(np.mean(out.numpy().argmax(axis=1) == y.numpy()))
    return value, accuracy


def train(data: Data, seed: int, batch_size: int, learning_rate: float,
          target: float = TARGET_LOSS, max_steps: int = 20000) -> Tuple[List[np.ndarray], int]:
    """Momentum SGD from init_params(seed) until the full training loss is < target;
    returns the weights and the steps taken. The loss is checked once an epoch."""
    params = as_tensors(init_params(seed), requires_grad=True)
    opt = st.optimizers.SGD(learning_rate, momentum=0.9)
    n = len(data.y_np)
    rng = np.random.default_rng(1000 + seed)
    steps = 0
    while steps < max_steps:
        order = rng.permutation(n)
        for start in range(0, n - batch_size + 1, batch_size):
            rows = order[start:start + batch_size]
            x = data.x if batch_size == n else st.tensor(data.x_np[rows], dtype="float64")
            y = data.y if batch_size == n else st.tensor(data.y_np[rows], dtype="int64")
            opt.zero_grad(params)
            loss(params, x, y).backward()
            opt.step(params)
            steps += 1
        arrays = [p.numpy().copy() for p in params]
        if evaluate(arrays, data.x, data.y)[0] < target:
            return arrays, steps
    raise RuntimeError(f"[train] batch {batch_size}: training loss ≥ {target} after {steps} steps")


def sharpness(loss_fn: Callable[[Params], st.Tensor], arrays: Sequence[np.ndarray]) -> float:
    """λ_max of ∇²J at ``arrays``: ``st.analysis.hessian_eigenvalues`` (Lanczos on
    Hessian-vector products from double backward)."""
    params = as_tensors(arrays, requires_grad=True)
    return st.analysis.hessian_eigenvalues(lambda: loss_fn(params), params, k=1)[0]


def loss_slice(a: Sequence[np.ndarray], b: Sequence[np.ndarray], x: st.Tensor, y: st.Tensor,
               alphas: Sequence[float]) -> np.ndarray:
    """Loss and accuracy of the weights (1 − α)a + αb for every α: shape (len(alphas), 2)."""
    return np.array([evaluate([(1 - t) * p + t * q for p, q in zip(a, b)], x, y)
                     for t in alphas])


class Solution(NamedTuple):
    arrays: List[np.ndarray]
    steps: int
    sharpness: float
    train_loss: float
    test_loss: float
    test_accuracy: float


def solve(data: Data, seed: int, batch_size: int, learning_rate: float) -> Solution:
    arrays, steps = train(data, seed, batch_size, learning_rate)
    value = sharpness(lambda p: loss(p, data.x, data.y), arrays)
    train_loss, _ = evaluate(arrays, data.x, data.y)
    test_loss, accuracy = evaluate(arrays, data.x_test, data.y_test)
    return Solution(arrays, steps, value, train_loss, test_loss, accuracy)


def plot(alphas: np.ndarray, slices: List[Tuple[np.ndarray, np.ndarray]], path: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(f"matplotlib is not installed: {path} not written")
        return
    fig, ax = plt.subplots(figsize=(7, 4.5))
    for i, (train_slice, test_slice) in enumerate(slices):
        ax.semilogy(alphas, train_slice[:, 0], "C0", alpha=0.8,
                    label="train loss" if i == 0 else None)
        ax.semilogy(alphas, test_slice[:, 0], "C1--", alpha=0.8,
                    label="test loss" if i == 0 else None)
    ax.axvline(0, color="k", lw=0.5)
    ax.axvline(1, color="k", lw=0.5)
    ax.set(xlabel=f"α   (0: small batch b={SMALL_BATCH}, 1: large batch b=N)",
           ylabel="cross-entropy", title="θ(α) = (1 − α)θ_small + αθ_large, one curve per seed")
    ax.legend()
    ax.grid(True, which="both", alpha=0.3)
    fig.tight_layout()
    fig.savefig(path, dpi=110)
    print(f"saved {path}")


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seeds", type=int, default=3)
    parser.add_argument("--plot", default="sharpness_slice.png")
    args = parser.parse_args()
    start = time.perf_counter()
    data = load_data()
    n = len(data.y_np)
    alphas = np.linspace(-0.5, 1.5, 41)
    large_lr = st.optimizers.scale_learning_rate(SMALL_LEARNING_RATE, SMALL_BATCH, n, rule="sqrt")
    rows, slices = [], []
    for seed in range(args.seeds):
        small = solve(data, seed, SMALL_BATCH, SMALL_LEARNING_RATE)
        large = solve(data, seed, n, large_lr)
        rows += [(seed, f"small b={SMALL_BATCH}", small), (seed, f"large b={n}", large)]
        slices.append((loss_slice(small.arrays, large.arrays, data.x, data.y, alphas),
                       loss_slice(small.arrays, large.arrays, data.x_test, data.y_test, alphas)))
    print(f"digits MLP 64-{HIDDEN}-{HIDDEN}-10, momentum SGD (β = 0.9, lr {SMALL_LEARNING_RATE} "
          f"at b={SMALL_BATCH}, {large_lr:.3f} at b={n} by the √ rule), trained to train loss "
          f"< {TARGET_LOSS}; sharpness = λ_max(∇²J_train), st.analysis.hessian_eigenvalues")
    print("| seed | batch | steps | train loss | sharpness λ_max | test loss | test accuracy |")
    print("|---|---|---|---|---|---|---|")
    for seed, name, s in rows:
        print(f"| {seed} | {name} | {s.steps} | {s.train_loss:.4f} | {s.sharpness:.3f} | "
              f"{s.test_loss:.4f} | {s.test_accuracy:.4f} |")
    for tag in (f"small b={SMALL_BATCH}", f"large b={n}"):
        sel = [s for _, name, s in rows if name == tag]
        print(f"mean {tag}: sharpness {np.mean([s.sharpness for s in sel]):.3f}, "
              f"test accuracy {np.mean([s.test_accuracy for s in sel]):.4f}, "
              f"test loss {np.mean([s.test_loss for s in sel]):.4f}")
    print("\nslice θ(α) = (1 − α)θ_small + αθ_large, seed 0: α, train loss, test loss")
    train_slice, test_slice = slices[0]
    for i in range(0, len(alphas), 5):
        print(f"  {alphas[i]:+.2f}  {train_slice[i, 0]:.4f}  {test_slice[i, 0]:.4f}")
    print(f"\n{time.perf_counter() - start:.0f} s; python examples/sharpness_study.py "
          f"--seeds {args.seeds}")
    plot(alphas, slices, args.plot)


if __name__ == "__main__":
    main()
