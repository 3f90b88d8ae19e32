"""Learning-rate schedules: values against their closed forms (and torch's StepLR), their
use by the optimizers at opt.iterations, serialization and argument checks."""

import math
import os

import numpy as np
import pytest

import steepest as st

S = st.schedules


def test_constant():
    s = S.Constant(0.3)
    assert [s(k) for k in (0, 1, 10**9)] == [0.3, 0.3, 0.3]


def test_warmup_cosine_closed_form():
    peak, warmup, total, final = 0.1, 10, 110, 0.01
    s = S.WarmupCosine(peak, warmup, total, final_learning_rate=final)
    for k in range(0, 130):
        if k < warmup:
            expected = peak * k / warmup  # linear from 0
        else:
            progress = min(1.0, (k - warmup) / (total - warmup))
            expected = final + (peak - final) * 0.5 * (1 + math.cos(math.pi * progress))
        assert s(k) == pytest.approx(expected, rel=1e-12, abs=1e-15)
    assert s(0) == 0.0 and s(warmup) == pytest.approx(peak) and s(total) == pytest.approx(final)
    assert S.WarmupCosine(1.0, 0, 10)(0) == 1.0  # no warmup: the cosine starts at once
    assert S.WarmupCosine(1.0, 5, 5)(5) == 0.0  # no decay phase: final right after warmup


def test_cosine_decay_is_keras():
    initial, decay_steps, alpha = 0.2, 50, 0.1
    s = S.CosineDecay(initial, decay_steps, alpha=alpha)
    for k in range(0, 80):
        fraction = min(k, decay_steps) / decay_steps
        cosine = 0.5 * (1 + math.cos(math.pi * fraction))
        assert s(k) == pytest.approx(initial * ((1 - alpha) * cosine + alpha), rel=1e-12)
    assert S.CosineDecay(1.0, 10)(10) == pytest.approx(0.0, abs=1e-16)


def test_step_decay():
    s = S.StepDecay(0.5, step_size=3, gamma=0.1)
    assert [s(k) for k in range(7)] == pytest.approx([0.5, 0.5, 0.5, 0.05, 0.05, 0.05, 0.005])


def test_step_decay_matches_torch_step_lr():
    if os.environ.get("STEEPEST_TEST_NO_TORCH") == "1":
        pytest.skip("STEEPEST_TEST_NO_TORCH=1")
    torch = pytest.importorskip("torch")
    p = torch.zeros(1, requires_grad=True)
    opt = torch.optim.SGD([p], lr=0.5)
    sched = torch.optim.lr_scheduler.StepLR(opt, step_size=4, gamma=0.3)
    ours = S.StepDecay(0.5, 4, 0.3)
    for k in range(20):
        assert ours(k) == pytest.approx(opt.param_groups[0]["lr"], rel=1e-12)
        opt.step()
        sched.step()


def test_optimizer_evaluates_the_schedule_at_iterations():
    sched = S.StepDecay(1.0, step_size=2, gamma=0.5)
    p = st.tensor([0.0], dtype="float64")
    opt = st.optimizers.SGD(sched)
    deltas = []
    for k in range(6):
        p.grad = st.tensor([1.0], dtype="float64")
        before = p.numpy()[0]
        opt.step([p], skip=(k == 2))
        deltas.append(before - p.numpy()[0])
    # Step 2 is skipped: no update, and the schedule resumes where it stood.
    assert deltas == pytest.approx([1.0, 1.0, 0.0, 0.5, 0.5, 0.25])
    assert opt.iterations == 5 and opt.learning_rate == 0.25


def test_serialize_round_trip():
    for s in (S.WarmupCosine(0.1, 5, 50, 0.001), S.CosineDecay(0.2, 10, 0.5),
              S.StepDecay(0.5, 3, 0.9), S.Constant(0.01)):
        config = S.serialize(s)
        assert config["class_name"] == type(s).__name__
        again = S.deserialize(config)
        assert type(again) is type(s) and again.get_config() == s.get_config()
        assert [again(k) for k in range(60)] == [s(k) for k in range(60)]
    assert S.serialize(0.1) == 0.1 and S.deserialize(0.1) == 0.1
    with pytest.raises(ValueError, match="'Nope'"):
        S.deserialize({"class_name": "Nope", "config": {}})
    assert (repr(S.StepDecay(0.5, 3, 0.9))
            == "StepDecay(initial_learning_rate=0.5, step_size=3, gamma=0.9)")


def test_state_dict_serializes_schedules():
    opt = st.optimizers.AdamW(S.WarmupCosine(0.1, 5, 50))
    config = opt.state_dict()["config"]["learning_rate"]
    assert config == {"class_name": "WarmupCosine",
                      "config": {"peak_learning_rate": 0.1, "warmup_steps": 5, "total_steps": 50,
                                 "final_learning_rate": 0.0}}


@pytest.mark.parametrize("make,message", [
    (lambda: S.Constant(-1.0), "learning_rate.*-1"),
    (lambda: S.WarmupCosine(-0.1, 1, 10), "peak_learning_rate.*-0.1"),
    (lambda: S.WarmupCosine(0.1, -1, 10), "warmup_steps.*-1"),
    (lambda: S.WarmupCosine(0.1, 20, 10), "total_steps.*10"),
    (lambda: S.WarmupCosine(0.1, 0, 10, final_learning_rate=float("inf")), "final.*inf"),
    (lambda: S.CosineDecay(0.1, 0), "decay_steps.*0"),
    (lambda: S.CosineDecay(0.1, 10, alpha=1.5), "alpha.*1.5"),
    (lambda: S.StepDecay(0.1, 0, 0.5), "step_size.*0"),
    (lambda: S.StepDecay(0.1, 5, -0.5), "gamma.*-0.5"),
], ids=["constant", "peak", "warmup", "total", "final", "decay_steps", "alpha", "step_size",
        "gamma"])
def test_bad_arguments(make, message):
    with pytest.raises(ValueError, match=message):
        make()


def test_any_callable_is_a_schedule():
    p = st.tensor(np.zeros(2), dtype="float64")
    opt = st.optimizers.Adam(lambda step: 0.1 / (1 + step))
    for _ in range(3):
        p.grad = st.tensor([1.0, -1.0], dtype="float64")
        opt.step([p])
    assert opt.learning_rate == pytest.approx(0.025)
    assert opt.get_config()["learning_rate"](1) == 0.05
