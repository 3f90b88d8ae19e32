"""The `steepest` command line (steepest.cli)."""

import importlib.util
import os
import re
import subprocess
import sys

import pytest
import steepest as st
from steepest.cli import main

ACCURACY = re.compile(r"Test accuracy: (\d+\.\d+)%")


def run(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_train_mlp_quiet(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run(capsys, "train", "--model", "mlp", "--epochs", "1", "--no-save", "--quiet")
    assert rc == 0
    match = ACCURACY.search(out)
    assert match and 50.0 < float(match.group(1)) <= 100.0, out
    assert "Epoch" not in out  # --quiet: no progress bar
    assert not os.listdir(tmp_path)  # --no-save wrote nothing


def test_train_cnn_saves_a_loadable_model(capsys, tmp_path):
    path = tmp_path / "cnn.steepest"
    rc, out, _ = run(capsys, "train", "--epochs", "1", "--save", str(path), "--optimizer", "adam",
                     "--lr", "0.003", "--batch-size", "64")
    assert rc == 0
    assert "Epoch 1/1" in out and "Adam (learning rate 0.003)" in out
    assert str(path) in out
    accuracy = float(ACCURACY.search(out).group(1))
    (_, _), (x_test, y_test) = st.datasets.load_digits(flatten=False)
    _, test_accuracy = st.models.load_model(str(path)).evaluate(x_test, y_test, verbose=0)
    assert test_accuracy * 100 == pytest.approx(accuracy, abs=0.01)


def test_default_save_path_is_in_the_current_folder(capsys, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    rc, out, _ = run(capsys, "train", "--model", "mlp", "--epochs", "1", "--quiet")
    assert rc == 0
    assert (tmp_path / "digits_mlp.steepest").is_file()
    assert str(tmp_path / "digits_mlp.steepest") in out


def test_same_seed_same_result(capsys):
    args = ("train", "--model", "mlp", "--epochs", "1", "--no-save", "--quiet",
            "--optimizer", "sgd", "--seed", "5")
    first = ACCURACY.search(run(capsys, *args)[1]).group(0)
    assert ACCURACY.search(run(capsys, *args)[1]).group(0) == first


@pytest.mark.parametrize(
    "args, message",
    [
        ([], "required: COMMAND"),
        (["fly"], "invalid choice: 'fly'"),
        (["train", "--model", "rnn"], "invalid choice: 'rnn'"),
        (["train", "--optimizer", "adamax"], "invalid choice: 'adamax'"),
        (["train", "--epochs", "0"], "--epochs: must be at least 1"),
        (["train", "--batch-size", "many"], "--batch-size: expected a whole number"),
        (["train", "--lr", "-0.1"], "--lr: must be greater than 0"),
        (["train", "--save", "m.steepest", "--no-save"], "not allowed with argument --save"),
    ],
)
def test_bad_options_exit_with_a_message(capsys, args, message):
    with pytest.raises(SystemExit) as exit_info:
        main(args)
    assert exit_info.value.code == 2
    assert message in capsys.readouterr().err


def test_cuda_without_cuda_is_a_clear_error(capsys):
    if st.backends()["cuda"]:
        pytest.skip("CUDA is available here")
    rc, _, err = run(capsys, "train", "--device", "cuda", "--no-save")
    assert rc == 1
    assert "--device cuda" in err and "--device cpu" in err


def test_mixed_precision(capsys):
    args = ("train", "--model", "mlp", "--epochs", "1", "--no-save", "--quiet",
            "--precision", "mixed_bfloat16")
    if not hasattr(st, "mixed_precision"):
        rc, _, err = run(capsys, *args)
        assert rc == 1 and "not available" in err and "--precision float32" in err
        return
    before = st.mixed_precision.global_policy()
    rc, out, err = run(capsys, *args)
    assert rc == 0 and ACCURACY.search(out) or rc == 1 and "--precision" in err
    # The CLI may run inside a longer process (as here): it must not leave its policy behind.
    assert str(st.mixed_precision.global_policy()) == str(before)


def test_plot(capsys, tmp_path):
    png = tmp_path / "curves.png"
    args = ("train", "--model", "mlp", "--epochs", "2", "--no-save", "--quiet", "--plot", str(png))
    rc, _, err = run(capsys, *args)
    if importlib.util.find_spec("matplotlib") is None:
        assert rc == 1 and "pip install matplotlib" in err
        assert not png.exists()
    else:
        assert rc == 0 and png.stat().st_size > 0


def test_python_dash_m(tmp_path):
    env = dict(os.environ, PYTHONPATH=os.path.dirname(os.path.dirname(st.__file__)))
    proc = subprocess.run([sys.executable, "-m", "steepest", "train", "--help"],
                          capture_output=True, text=True, env=env, cwd=tmp_path, check=False)
    assert proc.returncode == 0, proc.stderr
    assert "--optimizer" in proc.stdout


def test_train_gpt_on_the_bundled_text(capsys):
    assert main(["train", "--model", "gpt", "--epochs", "1", "--no-save", "--quiet"]) == 0
    out = capsys.readouterr().out
    assert "Validation loss" in out and "unigram entropy" in out and "Sample:" in out


def test_text_is_only_for_gpt(capsys):
    assert main(["train", "--model", "mlp", "--text", "x.txt", "--no-save"]) == 1
    assert "--text is for --model gpt" in capsys.readouterr().err


@pytest.mark.parametrize("args, text", [
    (["--lr", "inf"], "--lr: must be a finite number"),
    (["--lr", "nan"], "--lr: must be a finite number"),
    (["--seed", "-1"], "--seed: must be at least 0"),
    (["--batch-size", str(10**30)], "--batch-size: must be at most"),
])
def test_train_refuses_bad_numbers_before_training(capsys, args, text):
    with pytest.raises(SystemExit) as exit_info:
        main(["train", "--model", "mlp", "--no-save", *args])
    assert exit_info.value.code == 2 and text in capsys.readouterr().err


@pytest.mark.parametrize("save, text", [("{tmp}", "is a folder"), ("/proc/steepest-x.steepest", "cannot write")])
def test_train_checks_the_save_path_before_training(capsys, tmp_path, save, text):
    rc, out, err = run(capsys, "train", "--model", "mlp", "--epochs", "1", "--save", save.format(tmp=tmp_path))
    assert rc == 1 and text in err and "Epoch" not in out


def test_train_gpt_refuses_an_empty_text(capsys, tmp_path):
    empty = tmp_path / "empty.txt"
    empty.write_text("")
    rc, _, err = run(capsys, "train", "--model", "gpt", "--text", str(empty), "--no-save")
    assert rc == 1 and "is empty" in err
