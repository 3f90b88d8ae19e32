"""st.profiler: per-op wall-clock sums from the op front-ends and the autograd engine."""

import os
import subprocess
import sys

import numpy as np
import pytest

import steepest as st


def small_gpt_step():
    st.manual_seed(0)
    model = st.models.GPT(13, 16, d_model=16, num_heads=2, num_layers=1)
    model.compile(st.optimizers.AdamW(learning_rate=1e-3), st.losses.CausalLMCrossEntropy())
    data = np.random.default_rng(0).integers(0, 13, (8, 16))
    return model, data


def test_profile_lists_forward_and_backward_ops():
    model, data = small_gpt_step()
    with st.profiler.profile() as prof:
        model.fit(data, data, batch_size=8, epochs=1, verbose=0)
    stats = {(s.name, s.phase): s for s in prof.key_averages()}
    for key in [("matmul", "forward"), ("layer_norm", "forward"),
                ("qkv_attention", "forward"), ("AttentionBackward", "backward"),
                ("LayerNormBackward", "backward"), ("optimizer_step", "forward"),
                ("add_layer_norm", "forward"), ("bias_gelu", "forward"),
                ("BiasGeluBackward", "backward")]:
        assert key in stats, f"{key} missing from {sorted(stats)}"
    # The block's qkv projection and the vocabulary head (the block's other projections
    # leave their bias to the fused ops that follow them).
    linear = stats[("linear", "forward")]
    assert linear.calls >= 2 and linear.total >= linear.self_time >= 0
    table = prof.table()
    assert "matmul" in table and "self %" in table and "AttentionBackward" in table
    assert prof.key_averages()[0].self_time >= prof.key_averages()[-1].self_time


def test_profiler_is_off_by_default_and_sessions_are_separate():
    x = st.tensor(np.ones((3, 3)))
    with st.profiler.profile() as prof:
        st.ops.exp(x)
    x @ x  # after the session: not recorded
    names = [s.name for s in prof.key_averages()]
    assert names == ["exp"]
    with st.profiler.profile() as second:
        x @ x
    calls = {s.name: s.calls for s in second.key_averages()}
    assert calls["matmul"] == 1 and "exp" not in calls


def test_ops_calling_themselves_count_once():
    a = st.tensor(np.ones(3), dtype="float32")
    b = st.tensor(np.ones(3), dtype="float64")
    with st.profiler.profile() as prof:
        st.ops.mul(a, b)  # promotes, then calls mul again
    mul = [s for s in prof.key_averages() if s.name == "mul"]
    assert len(mul) == 1 and mul[0].calls == 1


def test_key_averages_needs_a_finished_session():
    prof = st.profiler.profile()
    with prof:
        with pytest.raises(RuntimeError, match="finished session"):
            prof.key_averages()


def test_environment_variable_prints_a_table_at_exit(tmp_path):
    env = dict(os.environ, STEEPEST_PROFILE="1")
    code = "import steepest as st; x = st.ones(4, 4); (x @ x).sum()"
    proc = subprocess.run([sys.executable, "-c", code], env=env, capture_output=True, text=True,
                          cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "matmul" in proc.stderr and "self ms" in proc.stderr
