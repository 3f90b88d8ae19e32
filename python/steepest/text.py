"""Tokenizers and training texts for small language models (``st.text``)."""

from __future__ import annotations

import hashlib
import os
import sysconfig
from typing import Any, Dict, Iterable, List, Tuple

import numpy as np

_DATA = os.path.join(os.path.dirname(os.path.abspath(__file__)), "text_data")


def default_text() -> str:
    """The public-domain (CC0) essay that ships with steepest: the default training
    text of the tiny GPT (text_data/README.md)."""
    with open(os.path.join(_DATA, "descent.txt"), encoding="utf-8") as f:
        return f.read()


def unigram_entropy(tokens: np.ndarray) -> float:
    """Entropy in nats of the token frequencies: the loss of a model that ignores context."""
    counts = np.bincount(np.asarray(tokens, dtype=np.int64))
    p = counts[counts > 0] / counts.sum()
    return float(-(p * np.log(p)).sum())


class ByteTokenizer:
    """UTF-8 bytes as tokens: a fixed vocabulary of 256, any text round-trips."""

    vocab_size = 256

    def encode(self, text: str) -> np.ndarray:
        return np.frombuffer(text.encode("utf-8"), dtype=np.uint8).astype(np.int64)

    def decode(self, tokens: Iterable[int]) -> str:
        return bytes(int(t) for t in tokens).decode("utf-8", errors="replace")

    def get_config(self) -> Dict[str, object]:
        return {"kind": "bytes"}


class CharTokenizer:
    """One token per distinct character of a training text (sorted, so the mapping is
    reproducible from the text alone)."""

    def __init__(self, characters: Iterable[str]) -> None:
        self.characters: List[str] = sorted(set(characters))
        if not self.characters:
            raise ValueError("[CharTokenizer] the text has no characters")
        self._index = {c: i for i, c in enumerate(self.characters)}

    @classmethod
    def from_text(cls, text: str) -> "CharTokenizer":
        return cls(text)

    @property
    def vocab_size(self) -> int:
        return len(self.characters)

    def encode(self, text: str) -> np.ndarray:
        try:
            return np.fromiter((self._index[c] for c in text), dtype=np.int64, count=len(text))
        except KeyError as e:
            raise ValueError(f"[CharTokenizer] character {e.args[0]!r} is not in the vocabulary") from None

    def decode(self, tokens: Iterable[int]) -> str:
        return "".join(self.characters[int(t)] for t in tokens)

    def get_config(self) -> Dict[str, object]:
        return {"kind": "chars", "characters": "".join(self.characters)}


class BPETokenizer:
    """Byte-level BPE from the ``tokenizers`` package (an optional dependency), trained on
    the given texts: any text round-trips, and a token covers several characters."""

    def __init__(self, texts: Iterable[str], vocab_size: int = 512) -> None:
        try:
            import tokenizers
        except ImportError:
            raise ImportError("[BPETokenizer] needs the `tokenizers` package: "
                              "pip install tokenizers") from None
        from tokenizers import decoders, models, pre_tokenizers, trainers

        tokenizer = tokenizers.Tokenizer(models.BPE())
        tokenizer.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
        tokenizer.decoder = decoders.ByteLevel()
        trainer = trainers.BpeTrainer(vocab_size=vocab_size, show_progress=False,
                                      initial_alphabet=pre_tokenizers.ByteLevel.alphabet())
        tokenizer.train_from_iterator(list(texts), trainer=trainer)
        self._tokenizer: Any = tokenizer

    @property
    def vocab_size(self) -> int:
        return int(self._tokenizer.get_vocab_size())

    def encode(self, text: str) -> np.ndarray:
        return np.asarray(self._tokenizer.encode(text).ids, dtype=np.int64)

    def decode(self, tokens: Iterable[int]) -> str:
        return str(self._tokenizer.decode([int(t) for t in tokens]))

    def get_config(self) -> Dict[str, object]:
        return {"kind": "bpe", "tokenizer": self._tokenizer.to_str()}


def python_stdlib_corpus(max_chars: int = 1_000_000, validation_fraction: float = 0.1
                         ) -> Tuple[List[str], List[str]]:
    """The Python standard library's own ``.py`` files as a training corpus, which every
    machine that runs steepest has: (training texts, held-out texts), one text per file.

    The files (third-party ``site-packages`` excluded) are taken in an order fixed by a
    hash of their relative paths, so the selection is the same on every run yet mixes
    packages; files are added until ``max_chars`` characters are reached, each cut to at
    most a twentieth of that, so that no file dominates. Whole files are
    held out (a file goes to validation while the held-out share is below
    ``validation_fraction``), so validation text is never seen in training.
    """
    if max_chars <= 0:
        raise ValueError(f"[python_stdlib_corpus] max_chars must be positive, got {max_chars}")
    if not 0 < validation_fraction < 1:
        raise ValueError(f"[python_stdlib_corpus] validation_fraction must be in (0, 1), got "
                         f"{validation_fraction}")
    root = sysconfig.get_paths()["stdlib"]
    paths = []
    for directory, subdirs, files in os.walk(root):
        subdirs[:] = [d for d in subdirs if d not in ("site-packages", "dist-packages", "__pycache__")]
        paths += [os.path.relpath(os.path.join(directory, f), root) for f in files if f.endswith(".py")]
    paths.sort(key=lambda p: hashlib.sha256(p.encode("utf-8")).hexdigest())
    train: List[str] = []
    held_out: List[str] = []
    total = held_out_chars = 0
    per_file = max(max_chars // 20, 1)
    for path in paths:
        if total >= max_chars:
            break
        try:
            with open(os.path.join(root, path), encoding="utf-8") as f:
                text = f.read()
        except (OSError, UnicodeDecodeError):
            continue  # a few test files are deliberately not UTF-8
        if not text:
            continue
        text = text[: min(per_file, max_chars - total)]
        if train and held_out_chars < validation_fraction * total:
            held_out.append(text)
            held_out_chars += len(text)
        else:
            train.append(text)
        total += len(text)
    if not train or not held_out:
        raise ValueError(f"[python_stdlib_corpus] {total} characters from {root} do not make a "
                         "training and a held-out split; raise max_chars")
    return train, held_out


def windows(tokens: np.ndarray, context: int, stride: int = 1) -> np.ndarray:
    """All length-``context`` windows of a token array (one training sequence each)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) < context:
        raise ValueError(f"[windows] the text has {len(tokens)} tokens, fewer than the context {context}")
    starts = np.arange(0, len(tokens) - context + 1, stride)
    return tokens[starts[:, None] + np.arange(context)[None, :]]


__all__ = ["BPETokenizer", "ByteTokenizer", "CharTokenizer", "default_text", "python_stdlib_corpus",
           "unigram_entropy", "windows"]
