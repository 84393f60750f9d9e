"""K-means in jnp: greedy k-means++ init and vectorised Lloyd iterations, scikit-learn's algorithm.

``kmeans`` is a pure function (jit-compiled inside, one compile per shape / n_clusters / options);
``KMeans`` is a scikit-learn estimator over it (get_params / set_params / clone, Pipeline,
GridSearchCV). Follows sklearn's ``KMeans(algorithm="lloyd")``: data centred before fitting,
tolerance ``tol * mean(var(x, axis=0))`` on the squared centre shift, stop early when the labels
stop changing, empty clusters re-seeded as sklearn's ``_relocate_empty_clusters`` does (below),
best of ``n_init`` restarts by inertia.

Distances use the matmul form ||x||^2 - 2 x.c + ||c||^2; when N x k is large the distance pass
runs over row blocks (``lax.map``) so memory stays O(block x k). Restarts run one after another
(a jitted restart each): measured on a 2-core CPU this beat ``vmap`` over restarts, whose batched
``while_loop`` runs every restart for as many iterations as the slowest one (see docs/cluster.md).
On large inputs the centre sums are updated from the rows whose label changed (``_delta_sums``).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from sklearn.base import BaseEstimator, ClassNamePrefixFeaturesOutMixin, ClusterMixin, TransformerMixin
from sklearn.utils import check_random_state
from sklearn.utils.validation import check_array, check_is_fitted

from aeclust_jax.cluster._common import as_key, renamed_kwarg

__all__ = ["kmeans", "KMeans", "KMeansResult", "assign", "kmeans_plusplus"]

INITS = ("k-means++", "random")
# Distance blocks hold at most this many entries (N_block x k); bigger problems are chunked.
_BLOCK_ENTRIES = 1 << 22
# From this many entries of x (N x D) on, the centre sums are updated from the changed rows when
# at most N / 8 labels changed (``_delta_sums``): MNIST 70000 x 784, 3 restarts, same run: 15.4 s
# vs 16.7 s; on 10000 x 30 it cost time (73 vs 62 ms), hence the threshold.
_DELTA_MIN_ENTRIES = 1 << 22


def _delta_cap(n: int, d: int) -> int:
    """The ``cap`` of ``_single`` for x (n, d): n // 8 on large inputs, 0 (off) below."""
    return max(1, n // 8) if n * d >= _DELTA_MIN_ENTRIES else 0


class KMeansResult(NamedTuple):
    """labels (N,) int32, centers (k, D), inertia scalar (sum of squared distances), n_iter scalar."""
    labels: jax.Array
    centers: jax.Array
    inertia: jax.Array
    n_iter: jax.Array


def _block_rows(n: int, k: int) -> int | None:
    """Rows per distance block, or None when the whole (n, k) distance matrix is small enough."""
    if n * k <= _BLOCK_ENTRIES:
        return None
    return max(256, _BLOCK_ENTRIES // k)


def _assign_dense(x, x_sq, c):
    d = x_sq[:, None] - 2.0 * (x @ c.T) + jnp.sum(c * c, axis=1)[None, :]
    labels = jnp.argmin(d, axis=1).astype(jnp.int32)
    return labels, jnp.maximum(jnp.take_along_axis(d, labels[:, None], axis=1)[:, 0], 0.0)


def assign(x, x_sq, centers, block: int | None = None):
    """Nearest centre of each row. x (N, D), x_sq (N,) = ||x||^2, centers (k, D).

    Returns labels (N,) int32 and squared distances to the nearest centre (N,). ``block`` rows at
    a time when given (memory O(block * k)); traceable.
    """
    n = x.shape[0]
    if block is None or n <= block:
        return _assign_dense(x, x_sq, centers)
    nb = -(-n // block)
    pad = nb * block - n
    xp = jnp.pad(x, ((0, pad), (0, 0))).reshape(nb, block, x.shape[1])
    sp = jnp.pad(x_sq, (0, pad)).reshape(nb, block)
    labels, d = jax.lax.map(lambda a: _assign_dense(a[0], a[1], centers), (xp, sp))
    return labels.reshape(-1)[:n], d.reshape(-1)[:n]


def kmeans_plusplus(x, x_sq, n_clusters: int, key, block: int | None = None):
    """Greedy k-means++ (sklearn's): 2 + log(k) candidates per step, keep the best.

    x (N, D), x_sq (N,), key a typed PRNG key -> centres (n_clusters, D)."""
    n = x.shape[0]
    n_trials = 2 + int(np.log(n_clusters))
    key0, key = jax.random.split(key)
    first = jax.random.randint(key0, (), 0, n)

    def sq_to(points):  # points (T, D) -> (T, N) squared distances
        if block is None:
            d = x_sq[:, None] - 2.0 * (x @ points.T) + jnp.sum(points * points, 1)[None, :]
            return jnp.maximum(d, 0.0).T
        return jax.vmap(lambda p: assign(x, x_sq, p[None], block)[1])(points)

    centers = jnp.zeros((n_clusters, x.shape[1]), x.dtype).at[0].set(x[first])
    closest = sq_to(x[first][None])[0]

    def body(c, state):
        centers, closest, key = state
        key, sub = jax.random.split(key)
        cum = jnp.cumsum(closest)
        r = jax.random.uniform(sub, (n_trials,), closest.dtype) * cum[-1]
        ids = jnp.clip(jnp.searchsorted(cum, r), 0, n - 1)
        cand = jnp.minimum(closest[None, :], sq_to(x[ids]))
        best = jnp.argmin(jnp.sum(cand, axis=1))
        return centers.at[c].set(x[ids[best]]), cand[best], key

    centers, _, _ = jax.lax.fori_loop(1, n_clusters, body, (centers, closest, key))
    return centers


def _relocate(x, labels, centers, sums, counts):
    """sklearn's ``_relocate_empty_clusters_dense`` on the M-step's sums (k, D) and counts (k,).

    The n_empty points farthest from their (old) centre, x (N, D) vs centers (k, D), re-seed the
    empty clusters: the farthest goes to the lowest-numbered empty cluster, and so on (sklearn's
    order among these points is argpartition's, unspecified). Each moved point is taken OUT of its
    old cluster (its sum and count lose it). Nothing moves when every distance is 0 (more
    clusters than distinct points), as in sklearn.
    """
    k = counts.shape[0]
    dist = jnp.sum(jnp.square(x - centers[labels]), axis=1)
    empty = counts == 0
    far = jax.lax.top_k(dist, k - 1)[1]             # at most k - 1 clusters can be empty
    new = jnp.nonzero(empty, size=k - 1, fill_value=k)[0]
    use = (jnp.arange(k - 1) < jnp.sum(empty)) & (jnp.max(dist) > 0)
    pts, old, w = x[far], labels[far], use.astype(x.dtype)
    sums = sums.at[old].add(-pts * w[:, None])
    counts = counts.at[old].add(-w)
    dest = jnp.where(use, new, k)                    # index k: dropped
    return sums.at[dest].set(pts, mode="drop"), counts.at[dest].set(1.0, mode="drop")


def _update(x, labels, centers, n_clusters: int):
    """M-step: x (N, D), labels (N,), old centers (k, D) -> new centres (k, D).

    Cluster means; empty clusters re-seeded by ``_relocate``; a cluster still empty after that
    (only when all points sit on their centres, or a re-seed emptied a singleton) takes the centre
    of the largest cluster (sklearn's ``_average_centers``)."""
    return _centres(x, labels, centers, *_sums(x, labels, n_clusters), n_clusters)


def _sums(x, labels, n_clusters: int):
    """Per-cluster sums (k, D) and counts (k,) of x (N, D) under labels (N,)."""
    sums = jax.ops.segment_sum(x, labels, num_segments=n_clusters)
    counts = jax.ops.segment_sum(jnp.ones(x.shape[0], x.dtype), labels, num_segments=n_clusters)
    return sums, counts


def _delta_sums(x, labels, old, sums, counts, cap: int):
    """``_sums(x, labels)`` from the sums / counts of the previous labels ``old`` (N,): when at
    most ``cap`` labels changed, only those rows are gathered and moved (added to the new
    cluster, subtracted from the old), else the full segment sums. Late Lloyd iterations change
    few labels, so the second pass over x becomes a read of the changed rows only."""
    changed = labels != old
    n_changed = jnp.sum(changed)
    n_clusters = sums.shape[0]

    def moved(s, c):
        idx = jnp.nonzero(changed, size=cap, fill_value=0)[0]
        w = (jnp.arange(cap) < n_changed).astype(x.dtype)
        rows = x[idx] * w[:, None]
        new_l, old_l = labels[idx], jnp.where(w > 0, old[idx], 0)
        return s.at[new_l].add(rows).at[old_l].add(-rows), c.at[new_l].add(w).at[old_l].add(-w)

    return jax.lax.cond(n_changed <= cap, moved, lambda s, c: _sums(x, labels, n_clusters),
                        sums, counts)


def _centres(x, labels, centers, sums, counts, n_clusters: int):
    """New centres (k, D) from the M-step's sums / counts (see ``_update``)."""
    if n_clusters > 1:
        sums, counts = jax.lax.cond(jnp.any(counts == 0),
                                    functools.partial(_relocate, x, labels, centers),
                                    lambda s, c: (s, c), sums, counts)
    means = sums / jnp.where(counts > 0, counts, 1)[:, None]
    return jnp.where((counts > 0)[:, None], means, means[jnp.argmax(counts)])


@functools.partial(jax.jit, static_argnames=("n_clusters", "max_iter", "init", "block", "cap"))
def _single(x, x_sq, tol, key, n_clusters: int, max_iter: int, init: str, block, init_centers=None,
            cap: int = 0):
    """One restart on centred x: init, Lloyd until converged, final E-step. -> KMeansResult.

    cap > 0: the centre sums are updated from the rows whose label changed when at most cap did
    (``_delta_sums``), else recomputed; cap = 0: recomputed every iteration."""
    if init_centers is not None:
        c0 = init_centers.astype(x.dtype)
    elif init == "k-means++":
        c0 = kmeans_plusplus(x, x_sq, n_clusters, key, block)
    else:
        c0 = x[jax.random.choice(key, x.shape[0], (n_clusters,), replace=False)]

    def cond(s):
        i, _, _, done, _, _ = s
        return (i < max_iter) & ~done

    def body(s):
        i, c, old, _, sums, counts = s
        labels, _ = assign(x, x_sq, c, block)
        if cap:
            sums, counts = jax.lax.cond(i == 0, lambda s, n: _sums(x, labels, n_clusters),
                                        lambda s, n: _delta_sums(x, labels, old, s, n, cap),
                                        sums, counts)
        else:
            sums, counts = _sums(x, labels, n_clusters)
        new = _centres(x, labels, c, sums, counts, n_clusters)
        strict = jnp.all(labels == old)
        shift = jnp.sum(jnp.square(new - c))
        return i + 1, new, labels, strict | (shift <= tol), sums, counts

    labels0 = jnp.full((x.shape[0],), -1, jnp.int32)
    z = (jnp.zeros_like(c0), jnp.zeros(n_clusters, x.dtype))
    n_iter, c, *_ = jax.lax.while_loop(cond, body, (jnp.asarray(0), c0, labels0, jnp.asarray(False)) + z)
    labels, dist = assign(x, x_sq, c, block)
    inertia = jnp.sum(dist)
    return KMeansResult(labels, c, inertia, n_iter)


def _validate(x, n_clusters, n_init, max_iter, tol, init):
    if x.ndim != 2:
        raise ValueError(f"kmeans: x must be 2-D (N, D), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"kmeans: x must be floating point, got dtype {x.dtype}")
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) or n_clusters < 1:
        raise ValueError(f"kmeans: n_clusters must be a positive int, got {n_clusters!r}")
    if n_clusters > x.shape[0]:
        raise ValueError(f"kmeans: n_clusters={n_clusters} exceeds the number of samples N={x.shape[0]}")
    if n_init < 1 or max_iter < 1 or tol < 0:
        raise ValueError(f"kmeans: need n_init >= 1, max_iter >= 1, tol >= 0; got {n_init}, {max_iter}, {tol}")
    if isinstance(init, str):
        if init not in INITS:
            raise ValueError(f"kmeans: init must be one of {INITS} or a (k, D) array, got {init!r}")
    elif tuple(np.shape(init)) != (n_clusters, x.shape[1]):
        raise ValueError(f"kmeans: init array must have shape {(n_clusters, x.shape[1])}, "
                         f"got {np.shape(init)}")


@jax.jit
def _prepare(x, tol):
    """Centred x (N, D), its squared row norms (N,), the mean (D,), the absolute tolerance ()."""
    mean = jnp.mean(x, axis=0)
    xc = x - mean
    return xc, jnp.sum(xc * xc, axis=1), mean, jnp.mean(jnp.var(x, axis=0)) * tol


@jax.jit
def _better(r: KMeansResult, best: KMeansResult) -> KMeansResult:
    """The restart with the lower inertia; the earlier one (best) among equals."""
    better = r.inertia < best.inertia
    return jax.tree.map(lambda new, old: jnp.where(better, new, old), r, best)


@renamed_kwarg("k", "n_clusters")
def kmeans(x, n_clusters: int, *, key, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4,
           init="k-means++") -> KMeansResult:
    """K-means clustering of x (N, D) float32/float64 into n_clusters; best of n_init restarts.

    key: a ``jax.random.key`` or an int seed. init: "k-means++" (greedy, sklearn's), "random"
    (k distinct rows), or a (n_clusters, D) array (then a single run). Returns KMeansResult(labels
    (N,) int32, centers (n_clusters, D), inertia (), n_iter ()) of the restart with the lowest
    inertia, as jax arrays. Traceable (jit, vmap over datasets) with static n_clusters / n_init /
    max_iter / init; x may be sharded. ``k=`` is a deprecated alias of ``n_clusters``.
    """
    x = jnp.asarray(x)
    _validate(x, n_clusters, n_init, max_iter, tol, init)
    key = as_key(key)
    n_clusters = int(n_clusters)
    xc, x_sq, mean, tol_abs = _prepare(x, tol)
    block = _block_rows(x.shape[0], n_clusters)
    cap = _delta_cap(*x.shape)
    if not isinstance(init, str):
        r = _single(xc, x_sq, tol_abs, key, n_clusters, max_iter, "k-means++", block,
                    jnp.asarray(init, x.dtype) - mean, cap=cap)
        return r._replace(centers=r.centers + mean)
    best = None
    for sub in jax.random.split(key, n_init):
        r = _single(xc, x_sq, tol_abs, sub, n_clusters, max_iter, init, block, cap=cap)
        if best is None:
            best = r
        else:
            best = _better(r, best)
    return best._replace(centers=best.centers + mean)


def _shift(x, centers):
    """x (M, D) and centers (k, D) minus the centres' mean: distances are unchanged and the matmul
    form loses less precision near the origin."""
    m = jnp.mean(centers, axis=0)
    return x - m, centers - m


@functools.partial(jax.jit, static_argnames=("block",))
def _nearest(x, centers, block=None):
    """Nearest centre (M,) int32 and its squared distance (M,) of each row of x (M, D)."""
    x, c = _shift(x, centers)
    return assign(x, jnp.sum(x * x, 1), c, block)


@jax.jit
def _distances(x, centers):
    """Euclidean distances (M, k) of x (M, D) to centers (k, D)."""
    x, c = _shift(x, centers)
    d = jnp.sum(x * x, 1)[:, None] - 2.0 * (x @ c.T) + jnp.sum(c * c, 1)[None, :]
    return jnp.sqrt(jnp.maximum(d, 0.0))


class KMeans(ClassNamePrefixFeaturesOutMixin, TransformerMixin, ClusterMixin, BaseEstimator):
    """scikit-learn estimator over ``kmeans``: fit / predict / fit_predict / transform / score.

    Parameters are stored as given (sklearn's rules: get_params, set_params, clone work).
    random_state: int (used as the JAX key, so ``KMeans(n, random_state=s)`` gives
    ``kmeans(x, n, key=s)``), None (a fresh seed from numpy's global RNG at each fit, as sklearn)
    or a ``np.random.RandomState`` (a seed drawn from it). n_init="auto" is sklearn's rule (1 for
    k-means++ and array init, 10 for random). X is computed in float32 unless ``jax_enable_x64``;
    cluster_centers_ and transform come back in X's dtype (float32 or float64).

    After fit (numpy): labels_ (N,) int32, cluster_centers_ (k, D), inertia_ float, n_iter_ int,
    n_features_in_. transform(X) -> Euclidean distances (M, k) to the centres; score(X) -> minus
    the sum of squared distances of X to the nearest centre (sklearn's ``KMeans.score``, so
    GridSearchCV needs no scorer).
    """

    def __init__(self, n_clusters: int = 8, *, init="k-means++", n_init=10, max_iter: int = 300,
                 tol: float = 1e-4, random_state=None):
        self.n_clusters = n_clusters
        self.init = init
        self.n_init = n_init
        self.max_iter = max_iter
        self.tol = tol
        self.random_state = random_state

    def _check_X(self, X, reset: bool):
        """X as a float array in the dtype JAX computes in (float32 unless x64), and X's dtype."""
        X = check_array(X, dtype=[np.float64, np.float32])
        dtype = X.dtype
        if not jax.config.jax_enable_x64:
            X = X.astype(np.float32, copy=False)
        if reset:
            self.n_features_in_ = X.shape[1]
        elif X.shape[1] != self.n_features_in_:
            raise ValueError(f"X has {X.shape[1]} features, but KMeans is expecting "
                             f"{self.n_features_in_} features as input")
        return X, dtype

    def _seed(self):
        if isinstance(self.random_state, (int, np.integer)) and not isinstance(self.random_state, bool):
            return int(self.random_state)
        return int(check_random_state(self.random_state).randint(np.iinfo(np.int32).max))

    def fit(self, X, y=None) -> "KMeans":
        """Clusters X (N, D); sets labels_, cluster_centers_, inertia_, n_iter_. Returns self."""
        X, dtype = self._check_X(X, reset=True)
        init = self.init if isinstance(self.init, str) else np.asarray(self.init, X.dtype)
        n_init = self.n_init
        if isinstance(n_init, str) and n_init == "auto":
            n_init = 10 if isinstance(init, str) and init == "random" else 1
        r = kmeans(X, self.n_clusters, key=self._seed(), n_init=int(n_init),
                   max_iter=self.max_iter, tol=self.tol, init=init)
        self.labels_ = np.asarray(r.labels)
        self.cluster_centers_ = np.asarray(r.centers).astype(dtype, copy=False)
        self.inertia_ = float(r.inertia)
        self.n_iter_ = int(r.n_iter)
        self._n_features_out = self.cluster_centers_.shape[0]
        return self

    def _nearest(self, X):
        check_is_fitted(self)
        X, _ = self._check_X(X, reset=False)
        c = self.cluster_centers_.astype(X.dtype)
        return _nearest(X, c, _block_rows(X.shape[0], c.shape[0]))

    def predict(self, X) -> np.ndarray:
        """Nearest fitted centre of each row of X (M, D) -> (M,) int32 numpy."""
        return np.asarray(self._nearest(X)[0])

    def transform(self, X) -> np.ndarray:
        """Euclidean distances (M, k) numpy, in X's dtype, of X (M, D) to the fitted centres."""
        check_is_fitted(self)
        X, dtype = self._check_X(X, reset=False)
        return np.asarray(_distances(X, self.cluster_centers_.astype(X.dtype))).astype(dtype, copy=False)

    def score(self, X, y=None) -> float:
        """Minus the K-means objective of X (M, D): -sum of squared distances to the nearest centre."""
        return -float(jnp.sum(self._nearest(X)[1]))
