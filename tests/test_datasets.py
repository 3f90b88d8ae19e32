"""st.datasets: the bundled digits and the synthetic spirals."""

import numpy as np
import pytest
import steepest as st


def test_digits_shapes_dtypes_and_range():
    (x_train, y_train), (x_test, y_test) = st.datasets.load_digits()
    assert x_train.shape == (1437, 64) and x_test.shape == (360, 64)
    assert y_train.shape == (1437,) and y_test.shape == (360,)
    assert x_train.dtype == np.float32 and y_train.dtype == np.int64
    x = np.concatenate([x_train, x_test])
    assert x.min() == 0.0 and x.max() == 1.0
    # Pixels are counts 0..16 divided by 16: every value is a multiple of 1/16.
    np.testing.assert_array_equal(x * 16, np.round(x * 16))
    assert set(np.unique(np.concatenate([y_train, y_test]))) == set(range(10))


def test_digits_images_are_the_flat_rows_reshaped():
    (flat, y_flat), _ = st.datasets.load_digits(seed=3)
    (img, y_img), _ = st.datasets.load_digits(seed=3, flatten=False)
    assert img.shape == (1437, 1, 8, 8) and img.dtype == np.float32
    np.testing.assert_array_equal(img.reshape(-1, 64), flat)
    np.testing.assert_array_equal(y_img, y_flat)


def test_digits_split_is_deterministic_and_a_partition():
    a = st.datasets.load_digits(seed=7)
    b = st.datasets.load_digits(seed=7)
    c = st.datasets.load_digits(seed=8)
    for (xa, ya), (xb, yb) in zip(a, b):
        np.testing.assert_array_equal(xa, xb)
        np.testing.assert_array_equal(ya, yb)
    assert not np.array_equal(a[0][0], c[0][0])

    def all_rows(split):
        """Train and test together, as sorted (pixels, label) rows."""
        (x, y), (xt, yt) = split
        rows = np.concatenate([np.c_[x, y], np.c_[xt, yt]])
        return rows[np.lexsort(rows.T[::-1])]

    # Whatever the seed, train + test hold each of the 1,797 images exactly once.
    assert all_rows(a).shape == (1797, 65)
    np.testing.assert_array_equal(all_rows(a), all_rows(c))


@pytest.mark.parametrize("test_size", [0.2, 0.5])
def test_digits_split_is_stratified(test_size):
    (_, y_train), (_, y_test) = st.datasets.load_digits(test_size=test_size)
    assert len(y_test) == int(np.ceil(test_size * 1797))
    fraction = np.bincount(y_test, minlength=10) / (
        np.bincount(y_test, minlength=10) + np.bincount(y_train, minlength=10)
    )
    assert np.all(np.abs(fraction - test_size) < 0.01)
    # Shuffled, not grouped by class: the first 50 training labels hold most digits.
    assert len(np.unique(y_train[:50])) >= 8


@pytest.mark.parametrize("bad", [0, 1, 1.5, -0.1, "0.2", True])
def test_digits_bad_test_size(bad):
    with pytest.raises(ValueError, match="test_size"):
        st.datasets.load_digits(test_size=bad)


def test_spirals():
    x, y = st.datasets.spirals(n=50, classes=4, seed=1)
    assert x.shape == (200, 2) and x.dtype == np.float32
    assert y.shape == (200,) and y.dtype == np.int64
    np.testing.assert_array_equal(np.bincount(y), [50] * 4)
    assert np.all(np.linalg.norm(x, axis=1) <= 1.0 + 1e-6)
    x2, y2 = st.datasets.spirals(n=50, classes=4, seed=1)
    np.testing.assert_array_equal(x, x2)
    np.testing.assert_array_equal(y, y2)
    assert not np.array_equal(x, st.datasets.spirals(n=50, classes=4, seed=2)[0])


def test_spirals_without_noise_follow_the_formula():
    x, y = st.datasets.spirals(n=5, classes=3, noise=0.0)
    r = np.linalg.norm(x, axis=1)
    theta = 4.0 * y + 4.0 * r
    np.testing.assert_allclose(x, np.stack([r * np.sin(theta), r * np.cos(theta)], 1), atol=1e-6)


@pytest.mark.parametrize("kwargs", [{"n": 0}, {"classes": 0}, {"noise": -1.0}, {"n": 2.5}])
def test_spirals_bad_arguments(kwargs):
    with pytest.raises(ValueError, match=r"\[spirals\]"):
        st.datasets.spirals(**kwargs)
