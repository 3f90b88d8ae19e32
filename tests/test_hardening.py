"""Regression tests for the hardening issue: sizes that overflow, layer arguments that
used to crash the process, deep graphs, threads, and values that used to be silently
wrong. Calls that used to kill the interpreter run in a child process, so that a
regression fails the test instead of the whole suite."""

import subprocess
import sys
import threading

import numpy as np
import pytest

import steepest as st


def run_isolated(code, timeout=60):
    """Runs `import steepest as st; <code>` in a fresh interpreter: (returncode, stderr)."""
    proc = subprocess.run([sys.executable, "-c", "import steepest as st\n" + code],
                          capture_output=True, text=True, timeout=timeout)
    return proc.returncode, proc.stderr


@pytest.mark.parametrize("code, error, text", [
    ("st.zeros(2**62)", "MemoryError", "[empty]"),
    ("st.ones(2**62)", "MemoryError", "[empty]"),
    ("st.randn(2**62)", "MemoryError", "[empty]"),
    ("st.arange(0, 2**62)", "MemoryError", "[empty]"),
    ("st.zeros(5, 2**62)", "ValueError", "more elements than 2^63 - 1"),
    ("st.zeros(2**61 + 1)", "MemoryError", "[empty]"),  # used to hang: the size class wrapped to 0
    ("st.zeros(2**63)", "ValueError", "does not fit in 64 bits"),
    ("st.zeros(2**32, 2**32)", "ValueError", "more elements than 2^63 - 1"),
    ("st.arange(-2**63, 2**63 - 1)", "ValueError", "[arange]"),
])
def test_sizes_that_overflow_raise(code, error, text):
    rc, err = run_isolated(code)
    assert rc == 1 and f"{error}: " in err and text in err, err


@pytest.mark.parametrize("layers", [
    "st.layers.Flatten(), st.layers.Dense(2**62)",
    "st.layers.Conv2D(2**62, 3)",
])
def test_huge_layers_raise_when_built(layers):
    rc, err = run_isolated(f"st.Sequential([st.layers.Input((1, 8, 8)), {layers}]).build()")
    assert rc == 1 and "ValueError: " in err and "more elements than 2^63 - 1" in err, err


@pytest.mark.parametrize("make", [
    lambda: st.layers.MaxPool2D(0),
    lambda: st.layers.AvgPool2D(0),
    lambda: st.layers.MaxPool2D(2, strides=0),
    lambda: st.layers.MaxPool2D(-1),
])
def test_pool_arguments_are_checked(make):
    with pytest.raises(ValueError, match="must be positive"):
        make()


def test_deleting_a_deep_graph_does_not_overflow_the_stack():
    code = ("w = st.randn(4, requires_grad=True)\n"
            "total = st.zeros(())\n"
            "for _ in range(200_000):\n"
            "    total = total + (w * 0.5).sum()\n"
            "del total\n"
            "print('freed')\n")
    proc = subprocess.run([sys.executable, "-c", "import steepest as st\n" + code],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0 and "freed" in proc.stdout, proc.stderr


def test_backward_of_one_graph_from_several_threads():
    x = st.randn(64, 64, requires_grad=True)
    y = ((x @ x).relu() @ x).sum()
    errors = []

    def backward():
        try:
            y.backward()
        except RuntimeError as e:
            errors.append(str(e))

    threads = [threading.Thread(target=backward) for _ in range(6)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    # One thread ran it; the others found the graph released.
    assert len(errors) == 5 and all("second time" in e for e in errors)
    assert x.grad is not None and np.isfinite(x.grad.numpy()).all()


def test_relu_keeps_nan():
    out = st.ops.relu(st.tensor([float("nan"), -1.0, 2.0])).numpy()
    assert np.isnan(out[0]) and out[1] == 0.0 and out[2] == 2.0


def test_uint8_arrays_are_refused_not_read_as_bool():
    with pytest.raises(TypeError, match="uint8"):
        st.from_dlpack(np.array([0, 1, 2], dtype=np.uint8))


@pytest.mark.parametrize("data, dtype, error", [
    ([2**63], None, OverflowError),
    ([2**40], "int32", OverflowError),
    ([float("nan")], "int64", ValueError),
    ([float("inf")], "int32", ValueError),
    ([1e19], "int64", OverflowError),
])
def test_integer_tensors_refuse_values_they_cannot_hold(data, dtype, error):
    with pytest.raises(error, match=r"\[tensor\]"):
        st.tensor(data, dtype=dtype)
    assert st.tensor([2**62, -(2**63)]).numpy().tolist() == [2**62, -(2**63)]
