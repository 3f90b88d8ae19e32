"""Small data sets that work offline (``st.datasets``).

``load_digits`` reads the 8×8 handwritten digits bundled with the package (see
``data/README.md`` for their origin and licence); ``spirals`` generates the classic
interleaved-spirals classification problem. Both return NumPy arrays ready for
``model.fit``: float32 features and int64 class labels.
"""

from __future__ import annotations

import functools
import gzip
import os
from typing import Tuple

import numpy as np

__all__ = ["load_digits", "spirals"]

_DATA_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "data")
_DIGITS_FILE = os.path.join(_DATA_DIR, "digits.csv.gz")

ArrayPair = Tuple[np.ndarray, np.ndarray]


@functools.lru_cache(maxsize=1)
def _digits_raw() -> ArrayPair:
    """All 1,797 rows as (pixels uint8 (n, 64), labels int64 (n,)); parsed once per process."""
    if not os.path.exists(_DIGITS_FILE):
        raise FileNotFoundError(
            f"[load_digits] the bundled data file is missing: {_DIGITS_FILE}; "
            "reinstall steepest (the file ships inside the package)"
        )
    with gzip.open(_DIGITS_FILE, "rt") as f:
        table = np.loadtxt(f, delimiter=",", dtype=np.int64)
    pixels, labels = table[:, :64].astype(np.uint8), table[:, 64].copy()
    # The arrays are shared between calls through the cache, so nobody may write to them.
    pixels.flags.writeable = False
    labels.flags.writeable = False
    return pixels, labels


def _stratified_split(
    labels: np.ndarray, test_size: float, rng: np.random.Generator
) -> Tuple[np.ndarray, np.ndarray]:
    """Train and test indices with every class split in the same proportion.

    The test set has ceil(test_size·n) rows (as scikit-learn's train_test_split); they are
    shared out between the classes by largest remainder so the class proportions of the
    two sets differ by at most one sample per class.
    """
    n = labels.shape[0]
    n_test = int(np.ceil(test_size * n))
    classes, counts = np.unique(labels, return_counts=True)
    exact = n_test * counts / n
    per_class = np.floor(exact).astype(np.int64)
    # Ties in the remainders are broken by class order, which keeps the split deterministic.
    short = n_test - int(per_class.sum())
    per_class[np.argsort(-(exact - per_class), kind="stable")[:short]] += 1

    train_parts, test_parts = [], []
    for c, k in zip(classes, per_class):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test_parts.append(idx[:k])
        train_parts.append(idx[k:])
    # Without the final shuffle the sets would be sorted by class, and a batch would
    # hold a single digit.
    train = rng.permutation(np.concatenate(train_parts))
    test = rng.permutation(np.concatenate(test_parts))
    return train, test


def load_digits(
    test_size: float = 0.2, seed: int = 0, flatten: bool = True
) -> Tuple[ArrayPair, ArrayPair]:
    """The 8×8 handwritten digits (1,797 images, 10 classes), split into train and test.

    Args:
        test_size: fraction of the images in the test set, 0 < test_size < 1. The split is
            stratified: every digit is split in (almost exactly) this proportion.
        seed: seed of the split and of the order of the rows; the same seed always gives
            the same arrays.
        flatten: True gives images as rows of 64 pixels, shape (n, 64), for an MLP; False
            gives channels-first images, shape (n, 1, 8, 8), for ``Conv2D``.

    Returns:
        ``(x_train, y_train), (x_test, y_test)``: x float32 in [0, 1] (pixel counts 0..16
        divided by 16), y int64 digits 0..9. With the default test_size, 1,437 training
        and 360 test images.
    """
    if isinstance(test_size, bool) or not isinstance(test_size, (float, int)) or not (
        0.0 < float(test_size) < 1.0
    ):
        raise ValueError(
            f"[load_digits] test_size must be a fraction strictly between 0 and 1, "
            f"got {test_size!r}"
        )
    pixels, labels = _digits_raw()
    train, test = _stratified_split(labels, float(test_size), np.random.default_rng(seed))
    shape = (-1, 64) if flatten else (-1, 1, 8, 8)

    def take(idx: np.ndarray) -> ArrayPair:
        x = (pixels[idx].astype(np.float32) / np.float32(16.0)).reshape(shape)
        return x, labels[idx].astype(np.int64)

    return take(train), take(test)


def spirals(
    n: int = 100, classes: int = 3, seed: int = 0, noise: float = 0.2
) -> ArrayPair:
    """The classic interleaved spirals (as in Stanford CS231n), a data set no linear model
    can separate.

    Class j has ``n`` points at radius r = 0..1 and angle θ = 4j + 4r (radians) plus
    Gaussian noise of standard deviation ``noise`` on θ; the point is (r·sin θ, r·cos θ).

    Args:
        n: points per class (≥ 1).
        classes: number of spiral arms / classes (≥ 1).
        seed: seed of the noise and of the row order.
        noise: standard deviation of the angle noise, in radians (≥ 0).

    Returns:
        ``(x, y)``: x float32 of shape (n·classes, 2) inside the unit disc, y int64 class
        indices; rows are shuffled so any contiguous slice holds every class.
    """
    if int(n) != n or n < 1:
        raise ValueError(f"[spirals] n (points per class) must be an int >= 1, got {n!r}")
    if int(classes) != classes or classes < 1:
        raise ValueError(f"[spirals] classes must be an int >= 1, got {classes!r}")
    if noise < 0:
        raise ValueError(f"[spirals] noise must be >= 0, got {noise!r}")
    n, classes = int(n), int(classes)
    rng = np.random.default_rng(seed)
    r = np.tile(np.linspace(0.0, 1.0, n), classes)
    y = np.repeat(np.arange(classes, dtype=np.int64), n)
    theta = 4.0 * y + 4.0 * r + rng.normal(0.0, noise, size=n * classes)
    x = np.stack([r * np.sin(theta), r * np.cos(theta)], axis=1).astype(np.float32)
    order = rng.permutation(n * classes)
    return x[order], y[order]
