"""k-nearest-neighbour classification in jnp (= scikit-learn's KNeighborsClassifier, brute force)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["knn_classify"]

# Test rows per distance block: the block's (rows x N_train) distances stay around 64 MB.
_BLOCK_ENTRIES = 1 << 24


@functools.partial(jax.jit, static_argnames=("k", "n_classes", "block"))
def _knn_votes(train_x, train_y, test_x, k: int, n_classes: int, block: int):
    """Majority class among the k nearest training rows of each test row -> (M,) class index.

    Ties in the vote go to the smallest class index (scikit-learn's rule)."""
    train_sq = jnp.sum(train_x * train_x, axis=1)
    m = test_x.shape[0]
    nb = -(-m // block)
    xb = jnp.pad(test_x, ((0, nb * block - m), (0, 0))).reshape(nb, block, -1)

    def one_block(t):
        # ||t||^2 is constant per row and does not change the ranking.
        score = 2.0 * (t @ train_x.T) - train_sq[None, :]
        _, idx = jax.lax.top_k(score, k)
        votes = jax.nn.one_hot(train_y[idx], n_classes, dtype=jnp.int32).sum(axis=1)
        return jnp.argmax(votes, axis=1)

    return jax.lax.map(one_block, xb).reshape(-1)[:m]


def knn_classify(train_x, train_y, test_x, k: int = 5):
    """Labels (M,) for test_x (M, D) by majority vote of the k nearest rows of train_x (N, D).

    Euclidean distance, uniform weights, ties to the smallest label: the answers of
    ``KNeighborsClassifier(k, algorithm="brute")`` (up to exact distance ties). train_y (N,) may
    hold any labels; the result uses the same values. Eager (the label set is read on the host).
    """
    train_x, test_x = jnp.asarray(train_x), jnp.asarray(test_x)
    if train_x.ndim != 2 or test_x.ndim != 2 or train_x.shape[1] != test_x.shape[1]:
        raise ValueError(f"knn_classify: need train_x (N, D) and test_x (M, D), got {train_x.shape} "
                         f"and {test_x.shape}")
    classes, y = np.unique(np.asarray(train_y), return_inverse=True)
    if y.shape[0] != train_x.shape[0]:
        raise ValueError(f"knn_classify: train_y has {y.shape[0]} labels for {train_x.shape[0]} rows")
    if not 1 <= k <= train_x.shape[0]:
        raise ValueError(f"knn_classify: k must be in [1, N={train_x.shape[0]}], got {k}")
    if not jnp.issubdtype(train_x.dtype, jnp.floating):
        train_x = train_x.astype(jnp.float32)
    test_x = test_x.astype(train_x.dtype)
    block = int(max(1, min(test_x.shape[0], _BLOCK_ENTRIES // train_x.shape[0])))
    idx = _knn_votes(train_x, jnp.asarray(y, jnp.int32), test_x, k, len(classes), block)
    return jnp.asarray(classes)[idx]
