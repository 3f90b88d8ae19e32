"""The Python standard library as a training corpus (st.text.python_stdlib_corpus,
`steepest train --model gpt --corpus python-stdlib`) and the optional BPE tokenizer."""

import importlib.util
import sysconfig

import pytest

import steepest as st
from steepest.cli import main

HAS_TOKENIZERS = importlib.util.find_spec("tokenizers") is not None


def run(capsys, *args):
    rc = main(list(args))
    out, err = capsys.readouterr()
    return rc, out, err


def test_stdlib_corpus_is_deterministic_capped_and_split_by_file():
    train, held_out = st.text.python_stdlib_corpus(max_chars=100_000)
    again = st.text.python_stdlib_corpus(max_chars=100_000)
    assert (train, held_out) == again
    total = sum(map(len, train)) + sum(map(len, held_out))
    assert total <= 100_000 and total > 50_000
    assert 0 < sum(map(len, held_out)) < 0.3 * total
    assert not set(train) & set(held_out)
    assert any("def " in text or "import " in text for text in train)


@pytest.mark.parametrize("kwargs, match", [(dict(max_chars=0), "max_chars"),
                                           (dict(validation_fraction=1.0), "validation_fraction"),
                                           (dict(max_chars=1), "raise max_chars")])
def test_stdlib_corpus_bad_arguments(kwargs, match):
    with pytest.raises(ValueError, match=match):
        st.text.python_stdlib_corpus(**kwargs)


def test_stdlib_corpus_reads_this_pythons_library():
    assert sysconfig.get_paths()["stdlib"]
    train, _ = st.text.python_stdlib_corpus(max_chars=20_000)
    assert all(isinstance(text, str) and text for text in train)


@pytest.mark.training
def test_train_gpt_on_the_stdlib(capsys):
    rc, out, err = run(capsys, "train", "--model", "gpt", "--corpus", "python-stdlib",
                       "--max-chars", "40000", "--epochs", "1", "--no-save", "--quiet")
    assert rc == 0, err
    assert "bits per character" in out and "Validation loss" in out and "Sample:" in out


@pytest.mark.training
@pytest.mark.skipif(not HAS_TOKENIZERS, reason="the tokenizers package is not installed")
def test_train_gpt_with_bpe(capsys):
    rc, out, err = run(capsys, "train", "--model", "gpt", "--corpus", "python-stdlib",
                       "--tokenizer", "bpe", "--max-chars", "40000", "--epochs", "1",
                       "--no-save", "--quiet")
    assert rc == 0, err
    assert "bits per character" in out


@pytest.mark.skipif(not HAS_TOKENIZERS, reason="the tokenizers package is not installed")
def test_bpe_tokenizer_round_trips():
    train, held_out = st.text.python_stdlib_corpus(max_chars=50_000)
    tokenizer = st.text.BPETokenizer(train, vocab_size=300)
    assert tokenizer.vocab_size == 300
    ids = tokenizer.encode(held_out[0][:500])
    assert tokenizer.decode(ids) == held_out[0][:500] and len(ids) < 500


def test_bpe_without_the_package_is_a_clear_error(capsys, monkeypatch):
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec",
                        lambda name, *a: None if name == "tokenizers" else real(name, *a))
    rc, _, err = run(capsys, "train", "--model", "gpt", "--tokenizer", "bpe", "--no-save")
    assert rc == 1 and "pip install tokenizers" in err


def test_corpus_is_only_for_gpt(capsys):
    rc, _, err = run(capsys, "train", "--model", "mlp", "--corpus", "python-stdlib", "--no-save")
    assert rc == 1 and "--corpus and --tokenizer are for --model gpt" in err
