"""The seed's terrain problems (地形问题) for every optimizer of st.optimizers.

Three landscapes, every optimizer from the same start on each:

* ravine (沟壑): J = ½(x² + 100y²), condition number 100 — plain gradient descent
  zig-zags across the valley, momentum and adaptive rates do not;
* Rosenbrock's curved valley: J = (1 − x)² + 100(y − x²)², minimum J* = 0 at (1, 1);
* saddle (鞍点): J = ½x² + ¼y⁴ − ½y², a saddle at the origin and minima J* = −¼ at
  (0, ±1), started next to the saddle's stable direction.

Beside them, the seed's second-order methods (Future Work 2) through
``st.optimize.minimize(method=...)``: L-BFGS and Newton-CG, whose steps are search directions
with a line search.

Prints, per problem, the steps each optimizer needs to reach J − J* < 1e-6, and saves a
contour plot with the trajectories (matplotlib is optional: without it the plot is
skipped with a note). Learning rates are set per problem; on Rosenbrock the
constant-step adaptive methods get a decaying schedule, as they otherwise circle the
minimum at the scale of the step. AdamW runs without weight decay here, since decay
moves the minimum away from J's.

    python examples/optimizer_trajectories.py [--output optimizer_trajectories.png]
"""

from __future__ import annotations

import argparse
from typing import Callable, Dict, List, NamedTuple, Tuple

import numpy as np

import steepest as st

optim = st.optimizers
S = st.schedules
TARGET = 1e-6


class Problem(NamedTuple):
    fn: Callable[[st.Tensor], st.Tensor]
    start: Tuple[float, float]
    minimum: float  # J*
    max_steps: int
    view: Tuple[float, float, float, float]  # x0, x1, y0, y1 of the plot
    optimizers: Callable[[], Dict[str, optim.Optimizer]]


SECOND_ORDER = {"L-BFGS": "lbfgs", "Newton-CG": "newton-cg"}


def ravine(x: st.Tensor) -> st.Tensor:
    return 0.5 * (x[0] ** 2 + 100.0 * x[1] ** 2)


def rosenbrock(x: st.Tensor) -> st.Tensor:
    return (1.0 - x[0]) ** 2 + 100.0 * (x[1] - x[0] ** 2) ** 2


def saddle(x: st.Tensor) -> st.Tensor:
    return 0.5 * x[0] ** 2 + 0.25 * x[1] ** 4 - 0.5 * x[1] ** 2


PROBLEMS: Dict[str, Problem] = {
    "ravine": Problem(ravine, (1.0, 1.0), 0.0, 5000, (-1.2, 1.2, -1.2, 1.2), lambda: {
        "SGD": optim.SGD(0.015),
        "Momentum": optim.SGD(0.015, momentum=0.9),
        "Nesterov": optim.SGD(0.015, momentum=0.9, nesterov=True),
        "RMSprop": optim.RMSprop(0.01),
        "Adam": optim.Adam(0.1),
        "AdamW": optim.AdamW(0.1, weight_decay=0.0),
        "Lamb": optim.Lamb(0.1),
        "Adafactor": optim.Adafactor(),
    }),
    "rosenbrock": Problem(rosenbrock, (-1.2, 1.0), 0.0, 20000, (-1.6, 1.6, -0.6, 1.6), lambda: {
        "SGD": optim.SGD(1e-3),
        "Momentum": optim.SGD(0.015, momentum=0.9),
        "Nesterov": optim.SGD(0.01, momentum=0.9, nesterov=True),
        "RMSprop": optim.RMSprop(S.StepDecay(0.01, 1000, 0.7)),
        "Adam": optim.Adam(0.1),
        "AdamW": optim.AdamW(0.05, weight_decay=0.0),
        "Lamb": optim.Lamb(S.CosineDecay(0.02, 20000)),
        "Adafactor": optim.Adafactor(S.StepDecay(0.05, 1000, 0.7), relative_step=False),
    }),
    "saddle": Problem(saddle, (1.0, 1e-3), -0.25, 5000, (-1.2, 1.2, -1.5, 1.5), lambda: {
        "SGD": optim.SGD(0.1),
        "Momentum": optim.SGD(0.1, momentum=0.9),
        "Nesterov": optim.SGD(0.1, momentum=0.9, nesterov=True),
        "RMSprop": optim.RMSprop(S.StepDecay(0.01, 500, 0.7)),
        "Adam": optim.Adam(0.05),
        "AdamW": optim.AdamW(0.05, weight_decay=0.0),
        "Lamb": optim.Lamb(S.CosineDecay(0.05, 5000)),
        "Adafactor": optim.Adafactor(S.StepDecay(0.05, 500, 0.7), relative_step=False),
    }),
}


def run(problem: Problem) -> Dict[str, st.optimize.OptimizeResult]:
    results = {
        name: st.optimize.minimize(problem.fn, np.array(problem.start), opt,
                                   max_steps=problem.max_steps, grad_tol=1e-9)
        for name, opt in problem.optimizers().items()
    }
    for name, method in SECOND_ORDER.items():
        results[name] = st.optimize.minimize(problem.fn, np.array(problem.start), method=method,
                                             max_steps=problem.max_steps, grad_tol=1e-9)
    return results


def steps_to_target(result: st.optimize.OptimizeResult, minimum: float) -> int:
    """First step with J − J* < TARGET, or -1."""
    below = np.nonzero(result.fs - minimum < TARGET)[0]
    return int(below[0]) if below.size else -1


def print_table(results: Dict[str, Dict[str, st.optimize.OptimizeResult]]) -> None:
    names = list(next(iter(results.values())))
    print(f"steps to reach J - J* < {TARGET:g} ('-' = not within the step budget)")
    print(f"{'optimizer':12s}" + "".join(f"{p:>12s}" for p in results))
    for name in names:
        cells = []
        for problem, by_optimizer in results.items():
            steps = steps_to_target(by_optimizer[name], PROBLEMS[problem].minimum)
            cells.append(f"{steps:>12d}" if steps >= 0 else f"{'-':>12s}")
        print(f"{name:12s}" + "".join(cells))


def plot(results: Dict[str, Dict[str, st.optimize.OptimizeResult]], output: str) -> None:
    try:
        import matplotlib

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print("note: matplotlib is not installed; skipping the contour plot "
              "(pip install matplotlib to get it)")
        return
    fig, axes = plt.subplots(1, len(results), figsize=(6 * len(results), 5.5))
    for ax, (problem_name, by_optimizer) in zip(axes, results.items()):
        problem = PROBLEMS[problem_name]
        x0, x1, y0, y1 = problem.view
        xs, ys = np.meshgrid(np.linspace(x0, x1, 300), np.linspace(y0, y1, 300))
        grid = st.tensor(np.stack([xs, ys]), dtype="float64")
        zs = problem.fn(grid).numpy() - problem.minimum
        levels = np.logspace(-3, np.log10(zs.max()), 25)
        ax.contour(xs, ys, zs, levels=levels, cmap="Greys", linewidths=0.6)
        for name, result in by_optimizer.items():
            path = result.xs
            ax.plot(path[:, 0], path[:, 1], lw=1.2, label=name)
        ax.plot(*problem.start, "ko", ms=4)
        ax.set_title(problem_name)
        ax.set_xlim(x0, x1)
        ax.set_ylim(y0, y1)
    axes[0].legend(loc="lower left", fontsize=8)
    fig.tight_layout()
    fig.savefig(output, dpi=120)
    print(f"saved {output}")


def main(argv: List[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description="Optimizer trajectories on the seed's terrains")
    parser.add_argument("--output", default="optimizer_trajectories.png", help="PNG to write")
    args = parser.parse_args(argv)
    results = {name: run(problem) for name, problem in PROBLEMS.items()}
    print_table(results)
    plot(results, args.output)


if __name__ == "__main__":
    main()
