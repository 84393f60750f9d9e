"""Normalised spectral clustering and DSC-Net's affinity post-processing, in jnp.

``spectral``: the k leading eigenvectors of D^-1/2 A D^-1/2 (= the k smallest of the normalised
Laplacian I - D^-1/2 A D^-1/2), rows scaled to unit length (Ng, Jordan, Weiss 2001), K-means.
``dsc_affinity``: the post-processing that DSC-Net (Ji et al. 2017, panji1990/Deep-subspace-
clustering-networks, ``thrC`` + ``post_proC``) applies to a learned self-expression matrix C
before spectral clustering (see STUDIES.md S4).
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

from aeclust_jax.cluster._common import renamed_kwarg
from aeclust_jax.cluster._kmeans import kmeans

__all__ = ["spectral", "spectral_embedding", "dsc_affinity", "threshold_columns"]


def _check_square(a, name):
    a = jnp.asarray(a)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) matrix, got shape {a.shape}")
    if not jnp.issubdtype(a.dtype, jnp.floating):
        a = a.astype(jnp.float32)
    return a


@renamed_kwarg("k", "n_components")
@functools.partial(jax.jit, static_argnames=("n_components",))
def spectral_embedding(affinity, n_components: int):
    """Row-normalised spectral embedding (N, n_components) of a symmetric non-negative affinity
    (N, N) (``n_components`` = the number of clusters in ``spectral``; ``k=`` is deprecated).

    The n_components leading eigenvectors of D^-1/2 A D^-1/2 by a full ``eigh`` (isolated nodes, degree 0,
    get a zero row). Measured at N = 1440, k = 20 on a 2-core CPU: full eigh 1.4 s; JAX's
    ``lobpcg_standard`` (k + 4 vectors, 200 iterations) 1.6 s and not converged on a DSC
    affinity (20 near-degenerate leading eigenvalues); partial eigh (subset_by_index) is TPU-only.
    """
    a = 0.5 * (affinity + affinity.T)
    deg = jnp.sum(a, axis=1)
    dinv = jnp.where(deg > 0, 1.0 / jnp.sqrt(jnp.where(deg > 0, deg, 1.0)), 0.0)
    m = dinv[:, None] * a * dinv[None, :]
    _, vecs = jnp.linalg.eigh(m)
    u = vecs[:, -n_components:]
    norm = jnp.linalg.norm(u, axis=1, keepdims=True)
    return u / jnp.where(norm > 0, norm, 1.0)


@renamed_kwarg("k", "n_clusters")
def spectral(affinity, n_clusters: int, *, key, n_init: int = 10) -> jax.Array:
    """Normalised spectral clustering of an affinity (N, N) (symmetrised, non-negative) -> (N,) int32.

    key: a ``jax.random.key`` or an int seed, for the K-means restarts on the spectral embedding.
    ``k=`` is a deprecated alias of ``n_clusters``.
    """
    a = _check_square(affinity, "affinity")
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) \
            or not 1 <= n_clusters <= a.shape[0]:
        raise ValueError(f"spectral: n_clusters must be an int in [1, N={a.shape[0]}], got {n_clusters!r}")
    if not isinstance(a, jax.core.Tracer) and bool(jnp.any(a < 0)):
        raise ValueError("spectral: affinity must be non-negative")
    n_clusters = int(n_clusters)
    return kmeans(spectral_embedding(a, n_clusters), n_clusters, key=key, n_init=n_init).labels


@jax.jit
def threshold_columns(c, ro: float):
    """DSC-Net's ``thrC``: per column keep the largest-|.| entries until their running sum exceeds
    ro x the column's L1 norm (the entry that crosses is kept); zero the rest. c (N, N)."""
    absc = jnp.abs(c)
    order = jnp.argsort(-absc, axis=0)
    s = jnp.take_along_axis(absc, order, axis=0)
    csum = jnp.cumsum(s, axis=0)
    keep_sorted = (csum - s) <= ro * csum[-1:, :]
    cols = jnp.broadcast_to(jnp.arange(c.shape[1])[None, :], c.shape)
    keep = jnp.zeros(c.shape, bool).at[order, cols].set(keep_sorted)
    return jnp.where(keep, c, 0.0)


@functools.partial(jax.jit, static_argnames=("rank",))
def _post_pro(c, rank: int, alpha: float):
    c = 0.5 * (c + c.T)
    # Singular triplets of a symmetric matrix: |eigenvalues|, eigenvectors (signs cancel in U U^T).
    w, v = jnp.linalg.eigh(c)
    top = jnp.argsort(-jnp.abs(w))[:rank]
    u = v[:, top] * jnp.sqrt(jnp.abs(w[top]))[None, :]
    norm = jnp.linalg.norm(u, axis=1, keepdims=True)
    u = u / jnp.where(norm == 0, 1.0, norm)  # sklearn's normalize(norm="l2")
    z = u @ u.T
    z = jnp.where(z > 0, z, 0.0)
    l = jnp.abs(z ** alpha)
    l = l / jnp.max(l)
    return 0.5 * (l + l.T)


@renamed_kwarg("k", "n_clusters")
def dsc_affinity(C, n_clusters: int, *, d: int = 12, alpha: float = 8.0, ro: float = 0.04) -> jax.Array:
    """DSC-Net's affinity from a self-expression matrix C (N, N) for n_clusters -> (N, N).

    thrC(C, ro) (skipped when ro >= 1), C = (C + C^T)/2, rank r = d*n_clusters + 1 singular
    triplets, U sqrt(S) row-normalised, Z = U U^T, keep Z > 0, L = |Z|^alpha / max, symmetrised.
    ``k=`` is a deprecated alias of ``n_clusters``.
    """
    c = _check_square(C, "C")
    rank = d * int(n_clusters) + 1
    if rank > c.shape[0]:
        raise ValueError(f"dsc_affinity: rank d*n_clusters+1 = {rank} exceeds N = {c.shape[0]}; lower d")
    if ro < 1:
        c = threshold_columns(c, ro)
    return _post_pro(c, rank, alpha)
