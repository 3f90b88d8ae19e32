"""st.optimizers.scale_learning_rate: the √ and linear batch-size rules."""

import math

import pytest

import steepest as st

scale = st.optimizers.scale_learning_rate
S = st.schedules


def test_exported():
    assert "scale_learning_rate" in st.optimizers.__all__


@pytest.mark.parametrize("b0, b, rule, factor", [
    (32, 128, "sqrt", 2.0),
    (32, 128, "linear", 4.0),
    (256, 64, "sqrt", 0.5),
    (256, 64, "linear", 0.25),
    (32, 32, "sqrt", 1.0),
    (32, 1024, "sqrt", math.sqrt(32.0)),
])
def test_float_rules(b0, b, rule, factor):
    out = scale(0.1, b0, b, rule=rule)
    assert isinstance(out, float)
    assert out == pytest.approx(0.1 * factor, rel=1e-15)


def test_default_rule_is_sqrt():
    assert scale(0.01, 10, 40) == pytest.approx(0.02)


# Built inside the test: a C++ schedule held by pytest's parameters until interpreter exit
# would be reported by nanobind's leak check.
@pytest.mark.parametrize("name, kwargs", [
    ("WarmupCosine", dict(peak_learning_rate=0.1, warmup_steps=10, total_steps=100,
                          final_learning_rate=0.01)),
    ("CosineDecay", dict(initial_learning_rate=0.1, decay_steps=100, alpha=0.1)),
    ("StepDecay", dict(initial_learning_rate=0.1, step_size=10, gamma=0.5)),
    ("Constant", dict(learning_rate=0.3)),
])
@pytest.mark.parametrize("rule, factor", [("sqrt", 2.0), ("linear", 4.0)])
def test_built_in_schedule_is_scaled_at_every_step(name, kwargs, rule, factor):
    schedule = getattr(S, name)(**kwargs)
    out = scale(schedule, 32, 128, rule=rule)
    assert type(out) is type(schedule)  # still a C++ schedule, still serialisable
    for step in (0, 1, 5, 10, 37, 99, 150):
        assert out(step) == pytest.approx(factor * schedule(step), rel=1e-12, abs=1e-15)
    # Step counts are kept: only the rates change.
    for key, value in schedule.get_config().items():
        if not key.endswith("learning_rate"):
            assert out.get_config()[key] == value
    assert st.schedules.deserialize(st.schedules.serialize(out))(7) == pytest.approx(out(7))


def test_callable_schedule_is_wrapped():
    out = scale(lambda step: 1.0 / (1 + step), 16, 64, rule="linear")
    assert out(0) == pytest.approx(4.0)
    assert out(3) == pytest.approx(1.0)


def test_scaled_schedule_drives_an_optimizer():
    x = st.tensor([1.0], dtype="float64", requires_grad=True)
    opt = st.optimizers.SGD(scale(lambda step: 0.1, 1, 4, rule="sqrt"))
    (x * x).sum().backward()
    opt.step([x])
    assert x.item() == pytest.approx(1.0 - 0.2 * 2.0)


@pytest.mark.parametrize("b0, b", [(0, 32), (32, 0), (-1, 32), (32, -8), (32.0, 64), (32, True)])
def test_bad_batch_sizes(b0, b):
    with pytest.raises(ValueError, match=r"\[scale_learning_rate\].*positive int"):
        scale(0.1, b0, b)


def test_unknown_rule():
    with pytest.raises(ValueError, match=r"unknown rule 'square'.*sqrt, linear"):
        scale(0.1, 32, 64, rule="square")


@pytest.mark.parametrize("bad", ["0.1", None, True])
def test_bad_learning_rate(bad):
    with pytest.raises(TypeError, match=r"\[scale_learning_rate\] learning_rate"):
        scale(bad, 32, 64)
