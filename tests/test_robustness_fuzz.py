"""Continuous checks of the hardening issue: property tests over sizes and ops (hypothesis,
bounded examples), a fuzz target for the model loader (mutated files must be refused
with a ValueError, never crash or load), and a kill-during-save loop. The sanitizer run
includes them."""

import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest

import steepest as st

hypothesis = pytest.importorskip("hypothesis")
from hypothesis import HealthCheck, given, settings  # noqa: E402
from hypothesis import strategies as strategies  # noqa: E402

BOUNDED = settings(max_examples=60, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Dimensions from 0 to past the overflow boundary of int64 element and byte counts.
dims = strategies.one_of(strategies.integers(0, 6), strategies.integers(2**20, 2**40),
                         strategies.integers(2**61, 2**63 - 1))


@BOUNDED
@given(shape=strategies.lists(dims, min_size=1, max_size=4))
def test_creating_any_shape_succeeds_or_raises_cleanly(shape):
    elements = int(np.prod(shape, dtype=object))
    # Sizes a machine could hold are only created small: the point is the boundary where
    # the counts overflow or exceed any memory (2^48 bytes), which must raise before
    # anything is allocated.
    hypothesis.assume(elements <= 2**20 or elements * 4 > 2**48)
    try:
        t = st.zeros(tuple(shape))
    except (ValueError, MemoryError) as e:
        assert str(e).startswith("[") and elements * 4 > 2**48
    else:
        assert t.shape == tuple(shape) and t.numel() == elements


@BOUNDED
@given(shape=strategies.lists(strategies.integers(1, 5), min_size=1, max_size=3),
       seed=strategies.integers(0, 2**32 - 1),
       op=strategies.sampled_from(["add", "mul", "sub", "relu", "tanh", "exp", "sum", "max"]))
def test_ops_on_random_shapes_match_numpy(shape, seed, op):
    rng = np.random.default_rng(seed)
    a = rng.standard_normal(shape).astype(np.float64)
    b = rng.standard_normal(shape).astype(np.float64)
    x, y = st.tensor(a, dtype="float64"), st.tensor(b, dtype="float64")
    expected = {"add": lambda: a + b, "mul": lambda: a * b, "sub": lambda: a - b,
                "relu": lambda: np.maximum(a, 0), "tanh": lambda: np.tanh(a), "exp": lambda: np.exp(a),
                "sum": lambda: a.sum(), "max": lambda: a.max()}[op]()
    got = {"add": lambda: x + y, "mul": lambda: x * y, "sub": lambda: x - y, "relu": lambda: x.relu(),
           "tanh": lambda: x.tanh(), "exp": lambda: x.exp(), "sum": lambda: x.sum(), "max": lambda: x.max()}[op]()
    np.testing.assert_allclose(got.numpy(), expected, rtol=1e-12, atol=1e-12)


@pytest.fixture(scope="module")
def model_file(tmp_path_factory):
    path = tmp_path_factory.mktemp("fuzz") / "model.steepest"
    model = st.Sequential([st.layers.Input((4,)), st.layers.Dense(3, activation="relu"), st.layers.Dense(2)])
    model.compile(optimizer="adam", loss="mse")
    model.fit(np.ones((8, 4), np.float32), np.zeros((8, 2), np.float32), epochs=1, verbose=0)
    model.save(str(path))
    return path.read_bytes()


@BOUNDED
@given(data=strategies.data())
def test_mutated_model_files_are_refused(tmp_path, model_file, data):
    blob = bytearray(model_file)
    kind = data.draw(strategies.sampled_from(["flip", "truncate", "insert", "length"]))
    if kind == "flip":
        index = data.draw(strategies.integers(0, len(blob) - 1))
        blob[index] ^= 1 << data.draw(strategies.integers(0, 7))
    elif kind == "truncate":
        blob = blob[:data.draw(strategies.integers(0, len(blob) - 1))]
    elif kind == "insert":
        index = data.draw(strategies.integers(0, len(blob)))
        blob[index:index] = data.draw(strategies.binary(min_size=1, max_size=16))
    else:
        blob[:8] = data.draw(strategies.integers(0, 2**64 - 1)).to_bytes(8, "little")
    path = tmp_path / "mutated.steepest"
    path.write_bytes(bytes(blob))
    if bytes(blob) == model_file:
        return
    with pytest.raises(ValueError, match=r"^\[load_model\] "):
        st.models.load_model(str(path))


_SAVER = """
import sys, numpy as np, steepest as st
model = st.Sequential([st.layers.Input((64,)), st.layers.Dense(256), st.layers.Dense(10)])
model.compile(optimizer="adam", loss="mse")
model.fit(np.ones((4, 64), np.float32), np.zeros((4, 10), np.float32), epochs=1, verbose=0)
print("ready", flush=True)
while True:
    model.save(sys.argv[1])
"""


def test_killed_saves_leave_the_last_complete_file(tmp_path):
    path = tmp_path / "model.steepest"
    rng = np.random.default_rng(0)
    for kill in range(8):
        child = subprocess.Popen([sys.executable, "-c", _SAVER, str(path)], stdout=subprocess.PIPE, text=True)
        assert child.stdout.readline().strip() == "ready"
        time.sleep(float(rng.uniform(0.0, 0.05)))
        child.send_signal(signal.SIGKILL)
        child.wait()
        if path.exists():  # never a torn file: the previous complete save, or this one
            assert st.models.load_model(str(path)).count_params() > 0
    leftovers = [p for p in os.listdir(tmp_path) if p.endswith(".tmp")]
    st.io.save_file({"x": np.zeros(1, np.float32)}, str(path))
    assert not [p for p in os.listdir(tmp_path) if p.endswith(".tmp")], leftovers
