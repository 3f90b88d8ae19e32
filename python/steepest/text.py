"""Tokenizers for character-level language models (``st.text``)."""

from __future__ import annotations

import os
from typing import Dict, Iterable, List

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


def windows(tokens: np.ndarray, context: int, stride: int = 1) -> np.ndarray:
    """All length-``context`` windows of a token array (one training sequence each)."""
    tokens = np.asarray(tokens, dtype=np.int64)
    if len(tokens) < context:
        raise ValueError(f"[windows] the text has {len(tokens)} tokens, fewer than the context {context}")
    starts = np.arange(0, len(tokens) - context + 1, stride)
    return tokens[starts[:, None] + np.arange(context)[None, :]]


__all__ = ["ByteTokenizer", "CharTokenizer", "default_text", "unigram_entropy", "windows"]
