"""k-nearest-neighbour classification in jnp (= scikit-learn's KNeighborsClassifier, brute force)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["knn_classify", "knn_graph"]

# Query rows per distance block: (rows x N_train) scores of about 16 MB, so the GEMM's output is
# still in cache when top_k reads it, but at least 256 rows, so a large training set keeps GEMMs
# big enough. Measured (2-core AVX-512 CPU): 5000 x 128 -> 8000 84 ms vs 137 ms with 64 MB blocks,
# the 10-NN graph of 10000 x 50 161 vs 184 ms, MNIST 60000 x 784 -> 10000 unchanged (2.97 s).
_BLOCK_ENTRIES = 1 << 22
_MIN_BLOCK_ROWS = 256


def _block_rows(n_train: int, n_queries: int) -> int:
    """Query rows per distance block for a search of n_queries rows among n_train."""
    return int(max(1, min(n_queries, max(_MIN_BLOCK_ROWS, _BLOCK_ENTRIES // n_train))))


@functools.partial(jax.jit, static_argnames=("k", "block"))
def _nearest_rows(train_x, queries, k: int, block: int):
    """Indices (M, k) int32 of the k rows of train_x (N, D) nearest to each row of queries (M, D),
    nearest first: per block of query rows one score GEMM + ``lax.top_k``."""
    train_sq = jnp.sum(train_x * train_x, axis=1)
    m = queries.shape[0]
    nb = -(-m // block)
    qb = jnp.pad(queries, ((0, nb * block - m), (0, 0))).reshape(nb, block, -1)

    def one_block(t):
        # ||t||^2 is constant per row and does not change the ranking.
        return jax.lax.top_k(2.0 * (t @ train_x.T) - train_sq[None, :], k)[1]

    return jax.lax.map(one_block, qb).reshape(nb * block, k)[:m]


@functools.partial(jax.jit, static_argnames=("k", "n_classes", "block"))
def _knn_votes(train_x, train_y, test_x, k: int, n_classes: int, block: int):
    """Majority class among the k nearest training rows of each test row -> (M,) class index.
    Ties in the vote go to the smallest class index (scikit-learn's rule)."""
    idx = _nearest_rows(train_x, test_x, k, block)
    votes = jax.nn.one_hot(train_y[idx], n_classes, dtype=jnp.int32).sum(axis=1)
    return jnp.argmax(votes, axis=1)


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
    block = _block_rows(train_x.shape[0], test_x.shape[0])
    idx = _knn_votes(train_x, jnp.asarray(y, jnp.int32), test_x, k, len(classes), block)
    return jnp.asarray(classes)[idx]


def knn_graph(x, n_neighbors: int = 10, *, include_self: bool = True, symmetric: bool = True):
    """kNN connectivity graph of x (N, D) -> ``scipy.sparse.csr_matrix`` (N, N) float64.

    Row i has a 1 at each of the ``n_neighbors`` rows nearest to x[i] (Euclidean; the row itself
    counts as one when ``include_self``, else it is left out), as ``kneighbors_graph(x,
    n_neighbors, include_self=...)``; ``symmetric`` returns 0.5 (A + A^T), the affinity of
    ``SpectralClustering(affinity="nearest_neighbors")`` (entries 1 and 0.5). The search is a
    blocked GEMM + ``lax.top_k`` in jnp (ties between equal distances may pick other rows than
    scikit-learn); the graph is assembled on the host.
    """
    import scipy.sparse as sps
    x = jnp.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"knn_graph: x must be (N, D), got shape {x.shape}")
    n = x.shape[0]
    extra = 0 if include_self else 1
    if isinstance(n_neighbors, bool) or not isinstance(n_neighbors, (int, np.integer)) \
            or not 1 <= n_neighbors <= n - extra:
        raise ValueError(f"knn_graph: n_neighbors must be an int in [1, {n - extra}], got {n_neighbors!r}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        x = x.astype(jnp.float32)
    k = int(n_neighbors) + extra
    block = _block_rows(n, n)
    idx = np.array(_nearest_rows(x, x, k, block))
    if not include_self:       # drop the row itself (or, when a duplicate outranked it, the last)
        own = idx == np.arange(n)[:, None]
        drop = np.where(own.any(axis=1), own.argmax(axis=1), k - 1)
        idx = idx[np.arange(k)[None, :] != drop[:, None]].reshape(n, k - 1)
    a = sps.csr_matrix((np.ones(idx.size), idx.ravel(), np.arange(0, idx.size + 1, idx.shape[1])),
                       shape=(n, n))
    a.sort_indices()
    return 0.5 * (a + a.T).tocsr() if symmetric else a
