"""Optimizers (``st.optimizers``): the seed's update rules, each a fused C++ kernel.

An optimizer is constructed without parameters. ``opt.step(params)`` updates, in place,
every parameter in ``params`` from its ``.grad``; parameters whose grad is None are
skipped and their state is left as it was. State (velocity, moments) is kept **per
position in ``params``**: pass the same parameters in the same order on every step
(``model.parameters()`` is stable). State has the parameter's dtype: float32, or float64
for float64 parameters.

``learning_rate`` is a float or a schedule (any callable ``step -> float``, e.g. from
:mod:`steepest.schedules`), evaluated at ``opt.iterations``. ``weight_decay`` is
decoupled (θ −= ηλθ) for AdamW, Lamb and Adafactor and added to the gradient elsewhere
(g += λθ, the gradient of ½λ‖θ‖², as torch's ``weight_decay``). ``clipnorm`` rescales
the gradients of one step together by clipnorm / (norm + 1e-6) when their global norm
exceeds it (before weight decay is added); ``param.grad`` itself is not modified.
"""

from __future__ import annotations

from typing import Any, Callable, Dict, Iterable, List, Optional, Tuple

import numpy as np

from . import _core
from . import autograd as _autograd
from . import schedules as _schedules
from ._core import Tensor
from .creation import tensor as _tensor
from .schedules import LearningRate

_optim = _core.optim


def _copy_slot(value: Any) -> Tensor:
    """A steepest tensor holding a copy of a state array, in the array's dtype."""
    array = np.asarray(value)
    return _tensor(array, dtype=str(array.dtype))


class Optimizer:
    """Base class of the optimizers: stepping, state and configuration."""

    _core_class: Any = None

    def __init__(self, **config: Any) -> None:
        self._impl = self._core_class(**config)
        self._config = config

    def step(self, params: Iterable[Tensor], skip: bool = False) -> None:
        """Updates every parameter of ``params`` that has a grad, in place.

        ``skip=True`` does nothing and does not count as a step (``iterations`` and the
        schedule stay where they are): a loss scaler skips a step whose gradients hold
        inf/NaN this way.
        """
        self._impl.step(list(params), skip)

    @property
    def hessian_due(self) -> bool:
        """Whether the next step wants an estimate of the diagonal of the loss's Hessian
        (Sophia: every ``update_period`` steps, the first included; never for the
        first-order rules): then call :meth:`update_hessian` before :meth:`step`."""
        return bool(self._impl.wants_curvature)

    def update_hessian(self, loss: Tensor, params: Iterable[Tensor]) -> None:
        """Hands the optimizer Hutchinson's estimate u ⊙ (H·u) of the diagonal of the
        Hessian H of ``loss`` (a scalar computed from ``params`` with grad enabled), with
        a fresh Rademacher u per parameter; Sophia folds it into h ← β₂h + (1 − β₂)ĥ. An
        optimizer that keeps no curvature raises.

        The gradient is taken with ``create_graph=True`` and the graph is kept, so
        ``loss.backward()`` may follow. ``params`` must be those passed to :meth:`step`,
        in the same order."""
        params = list(params)
        grads = _autograd.grad(loss, params, create_graph=True, retain_graph=True,
                               allow_unused=True)
        estimates = _optim.hutchinson_hessian_diagonal(params, grads)
        self._impl.update_curvature(params, estimates)

    def exclude_from_weight_decay(self, var_list: Optional[Iterable[Tensor]] = None,
                                  var_names: Optional[Iterable[str]] = None) -> None:
        """As Keras: the tensors of ``var_list``, and the parameters whose name contains
        one of ``var_names``, get no weight decay (decoupled or L2). Names are Keras
        variable paths, ``"<layer name>/<weight name>"`` (``"dense/bias"``,
        ``"layer_normalization/gamma"``), as ``model.save_weights`` writes them; a model's
        ``fit`` matches them. Replaces earlier exclusions; the names are saved with the
        optimizer state."""
        names = [var_names] if isinstance(var_names, str) else list(var_names or [])
        if not all(isinstance(n, str) for n in names):
            raise TypeError(f"[{type(self).__name__}.exclude_from_weight_decay] var_names must be "
                            f"strings, got {names!r}")
        self._impl.exclude_from_weight_decay(list(var_list or []), names)
        self._excluded_tensors = list(var_list or [])

    def zero_grad(self, params: Iterable[Tensor]) -> None:
        """Sets the grad of every parameter to None."""
        for p in params:
            p.grad = None

    @property
    def iterations(self) -> int:
        """Number of steps taken (skipped steps excluded)."""
        return self._impl.iterations

    @property
    def learning_rate(self) -> float:
        """The learning rate the next step uses (the schedule at ``iterations``).
        Assigning a float or a schedule calls :meth:`set_learning_rate`."""
        return self._impl.learning_rate

    @learning_rate.setter
    def learning_rate(self, value: LearningRate) -> None:
        self.set_learning_rate(value)

    def set_learning_rate(self, learning_rate: LearningRate) -> None:
        """Replaces the learning rate (a float or a schedule) in place: state,
        iterations and a model compiled with this optimizer are kept."""
        self._impl.set_learning_rate(learning_rate)
        self._config["learning_rate"] = learning_rate

    def get_config(self) -> Dict[str, Any]:
        """The constructor arguments of this optimizer."""
        return dict(self._config)

    @classmethod
    def from_config(cls, config: Dict[str, Any]) -> "Optimizer":
        return cls(**config)

    def state_size_bytes(self, params: Iterable[Tensor]) -> int:
        """Bytes of optimizer state for ``params`` once each has been stepped."""
        return self._impl.state_size_bytes(list(params))

    def state_dict(self) -> Dict[str, Any]:
        """A snapshot: class, hyperparameters, iterations and per-parameter state.

        ``state`` lists, by parameter position, None (never stepped) or
        ``{"step": int, <slot>: numpy array}``; the arrays are copies.
        """
        config = dict(self._config)
        config["learning_rate"] = _schedules.serialize(config["learning_rate"])
        state = [
            None
            if entry is None
            else {k: (v if k == "step" else v.numpy()) for k, v in entry.items()}
            for entry in self._impl.state()
        ]
        return {
            "class_name": type(self).__name__,
            "config": config,
            "iterations": self._impl.iterations,
            "state": state,
            "exclude_from_weight_decay": list(self._impl.excluded_names),
        }

    def load_state_dict(self, state_dict: Dict[str, Any]) -> None:
        """Restores a :meth:`state_dict` snapshot (hyperparameters included), so that
        stepping continues exactly as it would have from the snapshot.

        With the same hyperparameters the state is loaded in place; otherwise the
        optimizer is rebuilt with the snapshot's, and a model compiled with it must be
        compiled again.
        """
        name = state_dict.get("class_name")
        if name != type(self).__name__:
            raise ValueError(
                f"[{type(self).__name__}.load_state_dict] the state is from a {name} optimizer"
            )
        config = dict(state_dict["config"])
        config["learning_rate"] = _schedules.deserialize(config["learning_rate"])
        # Hyperparameters are fixed in the C++ optimizer: another configuration means a
        # new one (a model compiled with this optimizer must then be compiled again).
        impl = self._impl if config == self.get_config() else self._core_class(**config)
        entries = [
            None
            if entry is None
            else {k: (int(v) if k == "step" else _copy_slot(v)) for k, v in entry.items()}
            for entry in state_dict["state"]
        ]
        impl.load_state(entries, int(state_dict["iterations"]))
        impl.exclude_from_weight_decay(getattr(self, "_excluded_tensors", []),
                                       list(state_dict.get("exclude_from_weight_decay", [])))
        self._impl, self._config = impl, config

    def __repr__(self) -> str:
        args = ", ".join(f"{k}={v!r}" for k, v in self._config.items())
        return f"{type(self).__name__}({args})"


class SGD(Optimizer):
    """Gradient descent with the seed's momentum.

    momentum β > 0: v = βv + (1 − d)g, θ −= ηv with v₀ = 0, where the dampening d is β
    when None (the seed's moving average) and d = 0 gives PyTorch's v = βv + g.

    nesterov=True follows the seed's look-ahead exactly: the gradient is taken at
    θ − ηβv. To get it from an ordinary forward/backward, the parameters are kept *at
    the look-ahead point* φ = θ − ηβv and updated as φ −= η((1 − d)g + βv). The model's
    weights are therefore the look-ahead weights; the seed's θ is φ + ηβv.
    """

    _core_class = _optim.SGD

    def __init__(
        self,
        learning_rate: LearningRate = 0.01,
        momentum: float = 0.0,
        nesterov: bool = False,
        dampening: Optional[float] = None,
        weight_decay: float = 0.0,
        clipnorm: Optional[float] = None,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            momentum=momentum,
            nesterov=nesterov,
            dampening=dampening,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
        )


class RMSprop(Optimizer):
    """The seed's RMSProp: E[g²] = ρE[g²] + (1 − ρ)g², θ −= ηg/(√E[g²] + ε)."""

    _core_class = _optim.RMSprop

    def __init__(
        self,
        learning_rate: LearningRate = 0.001,
        rho: float = 0.9,
        epsilon: float = 1e-8,
        weight_decay: float = 0.0,
        clipnorm: Optional[float] = None,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            rho=rho,
            epsilon=epsilon,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
        )


class Adagrad(Optimizer):
    """AdaGrad (Duchi et al. 2011), the step of the seed's history between momentum and
    RMSProp: G = Σg² (from initial_accumulator_value), θ −= ηg/(√G + ε) — RMSProp's rule
    without the decay, so the effective step only shrinks. torch.optim.Adagrad's form
    (lr_decay 0); Keras' defaults. weight_decay adds λθ to the gradient."""

    _core_class = _optim.Adagrad

    def __init__(
        self,
        learning_rate: LearningRate = 0.001,
        initial_accumulator_value: float = 0.1,
        epsilon: float = 1e-7,
        weight_decay: float = 0.0,
        clipnorm: Optional[float] = None,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            initial_accumulator_value=initial_accumulator_value,
            epsilon=epsilon,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
        )


class Lion(Optimizer):
    """Lion (Chen et al. 2023, "Symbolic Discovery of Optimization Algorithms", Alg. 2):
    c = β₁m + (1 − β₁)g, θ −= η(sign(c) + λθ), m = β₂m + (1 − β₂)g. Every coordinate moves
    by ±η, so the learning rate is typically 3–10× smaller than AdamW's and the weight
    decay as much larger. Keras' defaults; weight_decay is decoupled."""

    _core_class = _optim.Lion

    def __init__(
        self,
        learning_rate: LearningRate = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.99,
        weight_decay: float = 0.0,
        clipnorm: Optional[float] = None,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
        )


class Sophia(Optimizer):
    """Sophia-H (Liu et al. 2023, "Sophia: A Scalable Stochastic Second-order Optimizer",
    Algorithm 3): a momentum step divided by a running estimate of the diagonal of the
    loss's Hessian, clipped per coordinate::

        m ← β₁m + (1 − β₁)g
        every k steps (the first included):  ĥ = u ⊙ (H·u),  u Rademacher (±1),
                                             h ← β₂h + (1 − β₂)ĥ
        θ ← θ − ηλθ                                   (decoupled weight decay)
        θ ← θ − η·clip(m / max(γ·h, ε), 1)            (clip: elementwise to [−1, 1])

    ĥ is Hutchinson's estimate, E[u ⊙ Hu] = diag(H), from one Hessian-vector product
    (double backward, :func:`steepest.autograd.hvp`'s method) of the step's own mini-batch
    loss. Where the curvature is small or negative the clip makes the step η·sign(m), so
    η is the largest move of any coordinate. Defaults are the paper's (β₁ = 0.965,
    β₂ = 0.99, γ = 0.01, ε = 1e-12, k = ``update_period`` = 10, λ = 0.1); the paper tunes
    η near 0.2–0.5× AdamW's on GPT-2.

    ``model.fit`` computes ĥ itself on the steps that want it (it needs every layer and
    the loss to support ``create_graph``; one that does not raises naming its op). In a
    custom loop, as the Sophia reference code does with ``update_hessian()``::

        loss = loss_fn(model(x), y)
        if opt.hessian_due:                    # every update_period steps
            opt.update_hessian(loss, params)   # ĥ = u ⊙ (H·u), h ← β₂h + (1 − β₂)ĥ
        loss.backward()
        opt.step(params)
    """

    _core_class = _optim.Sophia

    def __init__(
        self,
        learning_rate: LearningRate = 1e-4,
        beta_1: float = 0.965,
        beta_2: float = 0.99,
        gamma: float = 0.01,
        epsilon: float = 1e-12,
        update_period: int = 10,
        weight_decay: float = 0.1,
        clipnorm: Optional[float] = None,
    ) -> None:
        if isinstance(update_period, bool) or not isinstance(update_period, (int, np.integer)):
            raise TypeError(f"[Sophia] update_period must be an int >= 1, got {update_period!r}")
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            gamma=gamma,
            epsilon=epsilon,
            update_period=int(update_period),
            weight_decay=weight_decay,
            clipnorm=clipnorm,
        )


class Muon(Optimizer):
    """Muon (Jordan et al. 2024, "Muon: An optimizer for hidden layers"; torch.optim.Muon's
    rule) for 2-D weights: momentum B = μB + (1 − μ)G, U = (1 − μ)G + μB with nesterov
    (else U = B), orthogonalised by ``ns_steps`` quintic Newton–Schulz iterations
    X ← aX + (bA + cA²)X with A = XXᵀ, (a, b, c) = (3.4445, −4.7750, 2.0315), from
    X = U / max(‖U‖_F, ε); then θ = (1 − ηλ)θ − η·√max(1, rows/cols)·X. The step follows
    the gradient's singular directions with every singular value near 1, so no direction
    of a weight matrix is starved. Every other parameter (biases, normalisation scales,
    convolution kernels) takes AdamW's step with learning rate η·adam_lr_ratio, as in
    Keras' Muon. weight_decay is decoupled for both."""

    _core_class = _optim.Muon

    def __init__(
        self,
        learning_rate: LearningRate = 0.001,
        momentum: float = 0.95,
        nesterov: bool = True,
        ns_steps: int = 5,
        epsilon: float = 1e-7,
        adam_beta_1: float = 0.9,
        adam_beta_2: float = 0.999,
        adam_lr_ratio: float = 0.1,
        weight_decay: float = 0.1,
        clipnorm: Optional[float] = None,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            momentum=momentum,
            nesterov=nesterov,
            ns_steps=ns_steps,
            epsilon=epsilon,
            adam_beta_1=adam_beta_1,
            adam_beta_2=adam_beta_2,
            adam_lr_ratio=adam_lr_ratio,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
        )


class KFAC(Optimizer):
    """K-FAC natural gradient (Martens & Grosse 2015; Grosse & Martens 2016 for
    convolutions) for the Dense and Conv2D layers of a model trained with ``compile``/``fit``.

    A kernel's Fisher block is approximated by A ⊗ G. A = E[aaᵀ] over the layer's inputs a
    (a Conv2D layer's im2col patches, summed over the output positions and averaged over the
    batch, KFC's Ω) and G = E[ggᵀ] over the per-example gradients g = N·∂L/∂s at its
    pre-activation output s (N the batch, undoing the mean loss's 1/N; averaged over the
    output positions, KFC's Γ). The layers collect both in C++ during fit's forward and
    backward; each step folds them into running averages A ← βA + (1 − β)A_batch with
    β = ``stats_decay`` (the first batch starts them). Every ``inverse_update_interval``
    steps (and at the first) A = Q_A diag(s_A) Q_Aᵀ and G = Q_G diag(s_G) Q_Gᵀ are
    recomputed (a float64 symmetric eigensolver on the host: Householder + QL). The step then preconditions the
    kernel's gradient V (with L2 weight decay, V = ∇ + λ_wd·θ) exactly as

        P = (A ⊗ G + λI)⁻¹ vec(V) = Q_A [(Q_Aᵀ V Q_G) ⊘ (s_A s_Gᵀ + λ)] Q_Gᵀ

    for a Dense kernel (in, out) (a Conv2D kernel is read as (out, in·kh·kw), with G's
    basis on the left), λ = ``damping``; and takes the momentum step v = μv + νP,
    θ −= ηv. ν = min(1, √(κ / (η²⟨P, V⟩))) with κ = ``kl_clip`` (Ba, Grosse & Martens
    2017's KL clipping, taken per kernel) bounds the predicted change of the model's
    output distribution, which keeps the first steps, when the factors are poor
    estimates, from blowing up; ``kl_clip=None`` gives the exact step ν = 1.

    Every other parameter — biases (not folded into A), normalisation scales, embeddings,
    grouped or depthwise or 1-D convolutions, and every parameter of ``opt.step(params)``
    called outside ``fit`` — takes SGD with the same momentum, v = μv + g, θ −= ηv. The
    running factors and their eigenbases are optimizer state, saved and restored with it
    (``state_dict`` slots ``A``, ``G``, ``A_basis``, ``A_eigenvalues``, ``G_basis``,
    ``G_eigenvalues`` of each kernel). Not supported, and refused by ``fit``:
    data-parallel training (the factors are not all-reduced) and mixed-precision loss
    scaling. With ``accumulation_steps > 1`` the factors average the micro-batches.
    """

    _core_class = _optim.KFAC

    def __init__(
        self,
        learning_rate: LearningRate = 0.01,
        damping: float = 0.1,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        stats_decay: float = 0.95,
        inverse_update_interval: int = 10,
        kl_clip: Optional[float] = 1e-2,
        clipnorm: Optional[float] = None,
    ) -> None:
        if isinstance(inverse_update_interval, bool) or not isinstance(
                inverse_update_interval, (int, np.integer)):
            raise TypeError(f"[KFAC] inverse_update_interval must be an int >= 1, got "
                            f"{inverse_update_interval!r}")
        super().__init__(
            learning_rate=learning_rate,
            damping=damping,
            momentum=momentum,
            weight_decay=weight_decay,
            stats_decay=stats_decay,
            inverse_update_interval=int(inverse_update_interval),
            kl_clip=kl_clip,
            clipnorm=clipnorm,
        )

    def preconditioned(self, param: Tensor) -> bool:
        """Whether K-FAC preconditions ``param`` (a Dense or Conv2D kernel of a model that
        has begun ``fit`` with this optimizer)."""
        return bool(self._impl.preconditioned(param))


class Adam(Optimizer):
    """The seed's Adam: moments m, v with bias correction m̂ = m/(1 − β₁ᵗ),
    v̂ = v/(1 − β₂ᵗ), and θ −= η m̂/(√v̂ + ε). weight_decay adds λθ to the gradient."""

    _core_class = _optim.Adam

    def __init__(
        self,
        learning_rate: LearningRate = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        weight_decay: float = 0.0,
        clipnorm: Optional[float] = None,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
        )


class AdamW(Adam):
    """The seed's AdamW: Adam with decoupled decay, θ −= η(m̂/(√v̂ + ε) + λθ)."""

    _core_class = _optim.AdamW

    def __init__(
        self,
        learning_rate: LearningRate = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-8,
        weight_decay: float = 0.01,
        clipnorm: Optional[float] = None,
    ) -> None:
        super().__init__(learning_rate, beta_1, beta_2, epsilon, weight_decay, clipnorm)


class Lamb(Optimizer):
    """LAMB (You et al. 2019, as optax implements it): Adam's r = m̂/(√v̂ + ε), then per
    parameter tensor θ −= η·(‖θ‖/‖r + λθ‖)·(r + λθ), the ratio taken as 1 when either
    norm is 0. Keeps the update of every layer proportional to its weights, which makes
    very large batches trainable."""

    _core_class = _optim.Lamb

    def __init__(
        self,
        learning_rate: LearningRate = 0.001,
        beta_1: float = 0.9,
        beta_2: float = 0.999,
        epsilon: float = 1e-6,
        weight_decay: float = 0.0,
        clipnorm: Optional[float] = None,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            beta_1=beta_1,
            beta_2=beta_2,
            epsilon=epsilon,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
        )


class Adafactor(Optimizer):
    """Adafactor (Shazeer & Stern 2018), without momentum.

    The second moment of g² + ε₁ decays with β̂₂ = 1 − t^beta_2_decay. For parameters
    with ndim ≥ 2 it is factored over the last two axes into row and column means
    (an n×m matrix keeps n + m numbers instead of n·m); v̂ = R Cᵀ / mean(R). The update
    U = g/√v̂ is clipped to U / max(1, RMS(U)/clip_threshold).

    relative_step=True: step α = max(ε₂, RMS(θ))·min(η, 1/√t) with η = learning_rate,
    or 1e-2 when learning_rate is None. relative_step=False: α = learning_rate.
    weight_decay is decoupled, θ −= ηλθ, as in torch.optim.Adafactor.
    """

    _core_class = _optim.Adafactor

    def __init__(
        self,
        learning_rate: Optional[LearningRate] = None,
        beta_2_decay: float = -0.8,
        epsilon_1: float = 1e-30,
        epsilon_2: float = 1e-3,
        clip_threshold: float = 1.0,
        relative_step: bool = True,
        weight_decay: float = 0.0,
        clipnorm: Optional[float] = None,
    ) -> None:
        super().__init__(
            learning_rate=learning_rate,
            beta_2_decay=beta_2_decay,
            epsilon_1=epsilon_1,
            epsilon_2=epsilon_2,
            clip_threshold=clip_threshold,
            relative_step=relative_step,
            weight_decay=weight_decay,
            clipnorm=clipnorm,
        )


_BY_NAME = {
    "sgd": SGD,
    "momentum": lambda: SGD(momentum=0.9),
    "nesterov": lambda: SGD(momentum=0.9, nesterov=True),
    "adagrad": Adagrad,
    "rmsprop": RMSprop,
    "adam": Adam,
    "adamw": AdamW,
    "lamb": Lamb,
    "adafactor": Adafactor,
    "lion": Lion,
    "muon": Muon,
    "sophia": Sophia,
    "kfac": KFAC,
}


def get(identifier: Any) -> Optimizer:
    """An optimizer with default hyperparameters from its name (case-insensitive), or
    ``identifier`` itself when it already is an Optimizer.

    Names: sgd, momentum (SGD with β = 0.9), nesterov, adagrad, rmsprop, adam, adamw,
    lamb, adafactor, lion, muon, sophia, kfac.
    """
    if isinstance(identifier, Optimizer):
        return identifier
    if isinstance(identifier, str) and identifier.lower() in _BY_NAME:
        return _BY_NAME[identifier.lower()]()
    raise ValueError(
        f"[optimizers.get] unknown optimizer {identifier!r}; valid names: {', '.join(_BY_NAME)}"
    )


# Where the seed's flowchart says 数十亿参数 (billions of parameters).
BILLIONS = 1_000_000_000


def sgd_recipe(total_steps: int, peak_learning_rate: float = 0.1,
               weight_decay: float = 5e-4, nesterov: bool = True) -> "SGD":
    """The seed's recipe for dense data when generalisation comes first: SGD with
    momentum 0.9 (Nesterov by default), a linear warmup over the first 5% of
    ``total_steps`` then a cosine decay to 0, and L2 weight decay. Used by :func:`choose`."""
    schedule = _schedules.WarmupCosine(peak_learning_rate, max(1, int(total_steps) // 20),
                                       int(total_steps))
    return SGD(learning_rate=schedule, momentum=0.9, nesterov=nesterov,
               weight_decay=weight_decay)


def choose(
    data: str = "dense",
    goal: str = "generalization",
    num_params: int = 0,
    memory: str = "normal",
    total_steps: int = 10_000,
) -> Tuple[Optimizer, str]:
    """The seed's "Choose Optimizer" flowchart: returns (configured optimizer, reason).

    1. data: "sparse" (text, recommendation: features of very different frequencies)
       → AdamW; "dense" (images) → by goal: "generalization" → the seed's complete
       recipe (配合学习率调度（如warmup+余弦衰减）、权重衰减、BatchNorm): SGD with
       momentum 0.9 and Nesterov's look-ahead (NAG, the seed's advanced option;
       ``nesterov=False`` in its config gives plain momentum), learning rate
       ``schedules.WarmupCosine(0.1, total_steps // 20, total_steps)`` and
       ``weight_decay=5e-4``, for a model with BatchNormalization after its
       convolutions (examples/cnn_batchnorm_sgd.py); "speed" → AdamW.
       ``total_steps`` (optimizer steps: epochs × batches per epoch) sizes the schedule.
    2. num_params ≥ 1e9 (数十亿参数): Adam's two full-size moments no longer fit →
       Lamb (large-batch training on clusters), or Adafactor when memory="tight"
       (its factored second moment is the smallest adaptive state).
    3. Otherwise memory="tight" (embedded devices, small GPUs) → plain SGD, which keeps
       no state at all; memory="normal" keeps the choice of step 1.

    Adagrad, Lion, Muon and Sophia are never chosen: the seed's guide gives them no
    place (it names Adagrad only as an example of optimizer state that costs memory).
    """
    if data not in ("sparse", "dense"):
        raise ValueError(f"[choose] data must be 'sparse' or 'dense', got {data!r}")
    if goal not in ("generalization", "speed"):
        raise ValueError(f"[choose] goal must be 'generalization' or 'speed', got {goal!r}")
    if memory not in ("tight", "normal"):
        raise ValueError(f"[choose] memory must be 'tight' or 'normal', got {memory!r}")
    if not isinstance(num_params, (int, np.integer)) or num_params < 0:
        raise ValueError(f"[choose] num_params must be an int >= 0, got {num_params!r}")
    if isinstance(total_steps, bool) or not isinstance(total_steps, (int, np.integer)) \
            or total_steps < 1:
        raise ValueError(f"[choose] total_steps must be an int >= 1, got {total_steps!r}")

    steps: List[str] = []
    if data == "sparse":
        steps.append(
            "sparse/high-dimensional data -> Adam/AdamW: per-parameter adaptive rates give "
            "rare features (small gradients) larger steps"
        )
        optimizer: Optimizer = AdamW()
    elif goal == "generalization":
        steps.append(
            "dense data, generalization first -> SGD + momentum (Nesterov): its gradient "
            "noise finds flatter minima; with warmup + cosine decay, weight decay 5e-4 and "
            "BatchNormalization in the model"
        )
        optimizer = sgd_recipe(total_steps)
    else:
        steps.append(
            "dense data, speed and stability first -> AdamW: fast convergence with default "
            "hyperparameters, decoupled weight decay"
        )
        optimizer = AdamW()

    if num_params >= BILLIONS:
        if memory == "tight":
            steps.append(
                f"{num_params:.3g} parameters with tight memory -> Adafactor: its factored "
                "second moment keeps n + m numbers per n x m matrix instead of Adam's 2nm"
            )
            optimizer = Adafactor()
        else:
            steps.append(
                f"{num_params:.3g} parameters -> LAMB: layer-wise trust ratios keep "
                "very large batches stable on clusters"
            )
            optimizer = Lamb()
    elif memory == "tight":
        steps.append(
            "tight memory (embedded device, small GPU) -> plain SGD: no optimizer state "
            "beyond the gradient"
        )
        optimizer = SGD(learning_rate=0.01)
    else:
        steps.append(f"{num_params:.3g} parameters (< 1e9) -> keep {type(optimizer).__name__}")
    return optimizer, "; ".join(steps)


def clip_grad_norm(params: Iterable[Tensor], max_norm: float) -> float:
    """Clips the gradients of ``params`` to a global norm of at most ``max_norm``.

    Returns the total norm before clipping; when it exceeds max_norm every grad is
    scaled in place by max_norm / (norm + 1e-6), as torch.nn.utils.clip_grad_norm_.
    """
    return _optim.clip_grad_norm(list(params), float(max_norm))


SCALING_RULES = ("sqrt", "linear")
_BUILT_IN_SCHEDULES = (_schedules.Constant, _schedules.CosineDecay, _schedules.StepDecay,
                       _schedules.WarmupCosine)


class _ScaledSchedule:
    """``factor * schedule(step)`` for a user's callable schedule (a built-in schedule is
    rebuilt with scaled rates instead, so it stays in C++ and stays serialisable)."""

    def __init__(self, schedule: Callable[[int], float], factor: float) -> None:
        self.schedule = schedule
        self.factor = factor

    def __call__(self, step: int) -> float:
        return self.factor * float(self.schedule(step))

    def __repr__(self) -> str:
        return f"_ScaledSchedule({self.schedule!r}, factor={self.factor!r})"


def scale_learning_rate(learning_rate: LearningRate, base_batch_size: int, batch_size: int,
                        rule: str = "sqrt") -> LearningRate:
    """The learning rate for ``batch_size`` given one tuned for ``base_batch_size``.

    ``rule="sqrt"`` gives lr·√(b/b₀): the seed's "√倍批大小，√倍学习率", which keeps the
    variance of one step's update, η²σ²/b, as it was (Krizhevsky 2014, Hoffer et al. 2017).
    ``rule="linear"`` gives lr·b/b₀: k steps of batch b then move as far as k·b/b₀ steps
    of batch b₀ (Goyal et al. 2017, with warm-up for large b).

    A float gives a float. A schedule is scaled at every step: a built-in one
    (``st.schedules``) is rebuilt with every ``*learning_rate`` entry of its config
    multiplied, which multiplies the whole curve (each is linear in those rates), so it
    still runs in C++ and serialises; any other callable is wrapped so that it returns
    factor·schedule(step). Step counts (warm-up, decay steps) are left as they are: with
    a larger batch an epoch has fewer steps, and shortening them is the caller's choice.
    """
    for name, size in (("base_batch_size", base_batch_size), ("batch_size", batch_size)):
        if isinstance(size, bool) or not isinstance(size, (int, np.integer)) or size <= 0:
            raise ValueError(f"[scale_learning_rate] {name} must be a positive int, got {size!r}")
    if rule not in SCALING_RULES:
        raise ValueError(f"[scale_learning_rate] unknown rule {rule!r}; valid rules: "
                         f"{', '.join(SCALING_RULES)}")
    ratio = float(batch_size) / float(base_batch_size)
    factor = ratio ** 0.5 if rule == "sqrt" else ratio
    if isinstance(learning_rate, _BUILT_IN_SCHEDULES):
        config = {key: value * factor if key.endswith("learning_rate") else value
                  for key, value in learning_rate.get_config().items()}
        return type(learning_rate)(**config)
    if callable(learning_rate):
        return _ScaledSchedule(learning_rate, factor)
    if isinstance(learning_rate, bool) or not isinstance(learning_rate, (float, int, np.floating,
                                                                         np.integer)):
        raise TypeError(f"[scale_learning_rate] learning_rate must be a float or a schedule, "
                        f"got {type(learning_rate).__name__}")
    return float(learning_rate) * factor


__all__ = [
    "Adafactor",
    "Adagrad",
    "Adam",
    "AdamW",
    "KFAC",
    "Lamb",
    "Lion",
    "Muon",
    "Optimizer",
    "RMSprop",
    "SGD",
    "Sophia",
    "choose",
    "sgd_recipe",
    "clip_grad_norm",
    "get",
    "scale_learning_rate",
]
