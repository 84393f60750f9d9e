"""knn_classify = scikit-learn's KNeighborsClassifier(algorithm="brute") predictions."""

import numpy as np
import pytest
from sklearn.datasets import load_digits
from sklearn.neighbors import KNeighborsClassifier

from aeclust_jax.cluster import knn_classify
from aeclust_jax.cluster import _knn


def sk_predict(tx, ty, qx, k):
    return KNeighborsClassifier(k, algorithm="brute").fit(tx, ty).predict(qx)


@pytest.mark.parametrize("k", [1, 4, 5])
def test_digits_matches_sklearn(k):
    x, y = load_digits(return_X_y=True)
    x = x.astype(np.float32)
    got = np.asarray(knn_classify(x[:1200], y[:1200] * 3 + 7, x[1200:], k=k))  # labels not 0..K-1
    np.testing.assert_array_equal(got, sk_predict(x[:1200], y[:1200] * 3 + 7, x[1200:], k))


def test_vote_ties_go_to_smallest_label():
    # k=4 with two labels each twice among the neighbours -> smallest label, like sklearn.
    rng = np.random.default_rng(0)
    tx = rng.normal(size=(200, 8)).astype(np.float32)
    ty = rng.integers(0, 2, 200) * 5 - 1
    qx = rng.normal(size=(300, 8)).astype(np.float32)
    np.testing.assert_array_equal(np.asarray(knn_classify(tx, ty, qx, k=4)), sk_predict(tx, ty, qx, 4))


def test_blocked_path(monkeypatch):
    monkeypatch.setattr(_knn, "_BLOCK_ENTRIES", 150 * 7)  # 7 test rows per block, last one padded
    monkeypatch.setattr(_knn, "_MIN_BLOCK_ROWS", 1)
    assert _knn._block_rows(150, 40) == 7
    rng = np.random.default_rng(1)
    tx, ty, qx = rng.normal(size=(150, 5)), rng.integers(0, 3, 150), rng.normal(size=(40, 5))
    np.testing.assert_array_equal(np.asarray(knn_classify(tx, ty, qx, k=3)), sk_predict(tx, ty, qx, 3))


def test_bad_input():
    with pytest.raises(ValueError, match="train_x"):
        knn_classify(np.zeros((5, 2)), np.zeros(5), np.zeros((3, 4)))
    with pytest.raises(ValueError, match="k must be"):
        knn_classify(np.zeros((5, 2)), np.zeros(5), np.zeros((3, 2)), k=6)
    with pytest.raises(ValueError, match="labels for"):
        knn_classify(np.zeros((5, 2)), np.zeros(4), np.zeros((3, 2)))
