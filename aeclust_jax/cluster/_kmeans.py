"""K-means in jnp: greedy k-means++ init and vectorised Lloyd iterations, scikit-learn's algorithm.

``kmeans`` is a pure function (jit-compiled inside, one compile per shape / k / options);
``KMeans`` is a thin scikit-learn-style wrapper. Follows sklearn's ``KMeans(algorithm="lloyd")``:
data centred before fitting, tolerance ``tol * mean(var(x, axis=0))`` on the squared centre shift,
stop early when the labels stop changing, empty clusters re-seeded with the points farthest from
their centres, best of ``n_init`` restarts by inertia.

Distances use the matmul form ||x||^2 - 2 x.c + ||c||^2; when N x k is large the distance pass
runs over row blocks (``lax.map``) so memory stays O(block x k). Restarts run one after another
(a jitted restart each): measured on a 2-core CPU this beat ``vmap`` over restarts, whose batched
``while_loop`` runs every restart for as many iterations as the slowest one (see docs/cluster.md).
"""

from __future__ import annotations

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["kmeans", "KMeans", "KMeansResult", "assign", "kmeans_plusplus"]

INITS = ("k-means++", "random")
# Distance blocks hold at most this many entries (N_block x k); bigger problems are chunked.
_BLOCK_ENTRIES = 1 << 22


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


def kmeans_plusplus(x, x_sq, k: int, key, block: int | None = None):
    """Greedy k-means++ (sklearn's): 2 + log(k) candidates per step, keep the best. -> (k, D)."""
    n = x.shape[0]
    n_trials = 2 + int(np.log(k))
    key0, key = jax.random.split(key)
    first = jax.random.randint(key0, (), 0, n)

    def sq_to(points):  # points (T, D) -> (T, N) squared distances
        if block is None:
            d = x_sq[:, None] - 2.0 * (x @ points.T) + jnp.sum(points * points, 1)[None, :]
            return jnp.maximum(d, 0.0).T
        return jax.vmap(lambda p: assign(x, x_sq, p[None], block)[1])(points)

    centers = jnp.zeros((k, x.shape[1]), x.dtype).at[0].set(x[first])
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

    centers, _, _ = jax.lax.fori_loop(1, k, body, (centers, closest, key))
    return centers


def _update(x, labels, dist, k: int):
    """New centres = cluster means; empty clusters take the points farthest from their centre."""
    sums = jax.ops.segment_sum(x, labels, num_segments=k)
    counts = jax.ops.segment_sum(jnp.ones_like(dist), labels, num_segments=k)
    means = sums / jnp.maximum(counts, 1)[:, None]
    empty = counts == 0
    far = jax.lax.top_k(dist, min(k, x.shape[0]))[1]
    slot = jnp.clip(jnp.cumsum(empty) - 1, 0, far.shape[0] - 1)
    return jnp.where(empty[:, None], x[far[slot]], means)


@functools.partial(jax.jit, static_argnames=("k", "max_iter", "init", "block"))
def _single(x, x_sq, tol, key, k: int, max_iter: int, init: str, block, init_centers=None):
    """One restart on centred x: init, Lloyd until converged, final E-step. -> KMeansResult."""
    if init_centers is not None:
        c0 = init_centers.astype(x.dtype)
    elif init == "k-means++":
        c0 = kmeans_plusplus(x, x_sq, k, key, block)
    else:
        c0 = x[jax.random.choice(key, x.shape[0], (k,), replace=False)]

    def cond(s):
        i, _, _, done = s
        return (i < max_iter) & ~done

    def body(s):
        i, c, old, _ = s
        labels, dist = assign(x, x_sq, c, block)
        new = _update(x, labels, dist, k)
        strict = jnp.all(labels == old)
        shift = jnp.sum(jnp.square(new - c))
        return i + 1, new, labels, strict | (shift <= tol)

    labels0 = jnp.full((x.shape[0],), -1, jnp.int32)
    n_iter, c, _, _ = jax.lax.while_loop(cond, body, (jnp.asarray(0), c0, labels0, jnp.asarray(False)))
    labels, dist = assign(x, x_sq, c, block)
    inertia = jnp.sum(dist)
    return KMeansResult(labels, c, inertia, n_iter)


def _validate(x, k, n_init, max_iter, tol, init):
    if x.ndim != 2:
        raise ValueError(f"kmeans: x must be 2-D (N, D), got shape {x.shape}")
    if not jnp.issubdtype(x.dtype, jnp.floating):
        raise ValueError(f"kmeans: x must be floating point, got dtype {x.dtype}")
    if not isinstance(k, (int, np.integer)) or k < 1:
        raise ValueError(f"kmeans: k must be a positive int, got {k!r}")
    if k > x.shape[0]:
        raise ValueError(f"kmeans: k={k} exceeds the number of samples N={x.shape[0]}")
    if n_init < 1 or max_iter < 1 or tol < 0:
        raise ValueError(f"kmeans: need n_init >= 1, max_iter >= 1, tol >= 0; got {n_init}, {max_iter}, {tol}")
    if isinstance(init, str):
        if init not in INITS:
            raise ValueError(f"kmeans: init must be one of {INITS} or a (k, D) array, got {init!r}")
    elif tuple(np.shape(init)) != (k, x.shape[1]):
        raise ValueError(f"kmeans: init array must have shape {(k, x.shape[1])}, got {np.shape(init)}")


def kmeans(x, k: int, *, key, n_init: int = 10, max_iter: int = 300, tol: float = 1e-4,
           init="k-means++") -> KMeansResult:
    """K-means clustering of x (N, D) float32/float64 into k clusters; best of n_init restarts.

    key: a jax PRNG key (or an int seed). init: "k-means++" (greedy, sklearn's), "random" (k
    distinct rows), or a (k, D) array (then a single run). Returns KMeansResult(labels (N,) int32,
    centers (k, D), inertia (), n_iter ()) of the restart with the lowest inertia.
    Traceable (jit, vmap over datasets) with static k / n_init / max_iter / init; x may be sharded.
    """
    x = jnp.asarray(x)
    _validate(x, k, n_init, max_iter, tol, init)
    if isinstance(key, (int, np.integer)):
        key = jax.random.key(int(key))
    mean = jnp.mean(x, axis=0)
    xc = x - mean
    x_sq = jnp.sum(xc * xc, axis=1)
    tol_abs = jnp.mean(jnp.var(x, axis=0)) * tol
    block = _block_rows(x.shape[0], int(k))
    if not isinstance(init, str):
        r = _single(xc, x_sq, tol_abs, key, int(k), max_iter, "k-means++", block,
                    jnp.asarray(init, x.dtype) - mean)
        return r._replace(centers=r.centers + mean)
    best = None
    for sub in jax.random.split(key, n_init):
        r = _single(xc, x_sq, tol_abs, sub, int(k), max_iter, init, block)
        if best is None:
            best = r
        else:  # keep the first restart among equals; jnp.where keeps this traceable
            better = r.inertia < best.inertia
            best = jax.tree.map(lambda new, old: jnp.where(better, new, old), r, best)
    return best._replace(centers=best.centers + mean)


class KMeans:
    """scikit-learn-style wrapper over ``kmeans``: fit / predict / fit_predict.

    Attributes after fit: labels_ (N,), cluster_centers_ (k, D), inertia_ (float), n_iter_ (int).
    """

    def __init__(self, n_clusters: int = 8, *, init="k-means++", n_init: int = 10,
                 max_iter: int = 300, tol: float = 1e-4, seed: int = 0):
        self.n_clusters, self.init, self.n_init = n_clusters, init, n_init
        self.max_iter, self.tol, self.seed = max_iter, tol, seed

    def fit(self, x, y=None) -> "KMeans":
        r = kmeans(x, self.n_clusters, key=jax.random.key(self.seed), n_init=self.n_init,
                   max_iter=self.max_iter, tol=self.tol, init=self.init)
        self.labels_, self.cluster_centers_ = r.labels, r.centers
        self.inertia_, self.n_iter_ = float(r.inertia), int(r.n_iter)
        return self

    def predict(self, x) -> jax.Array:
        """Nearest fitted centre of each row of x (M, D) -> (M,) int32."""
        if not hasattr(self, "cluster_centers_"):
            raise ValueError("KMeans.predict called before fit")
        x = jnp.asarray(x)
        c = self.cluster_centers_
        return assign(x, jnp.sum(x * x, 1), c, _block_rows(x.shape[0], c.shape[0]))[0]

    def fit_predict(self, x, y=None) -> jax.Array:
        return self.fit(x).labels_
