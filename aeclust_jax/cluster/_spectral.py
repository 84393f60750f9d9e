"""Normalised spectral clustering and DSC-Net's affinity post-processing, in jnp.

``spectral``: the k leading eigenvectors of D^-1/2 A D^-1/2 (= the k smallest of the normalised
Laplacian I - D^-1/2 A D^-1/2), rows scaled to unit length (Ng, Jordan, Weiss 2001), K-means;
for a dense affinity (N, N) or a sparse one (scipy.sparse / BCOO, e.g. ``knn_graph``'s), whose
eigenvectors come from a Chebyshev-filtered subspace iteration in jnp (eigsh as fallback).
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

__all__ = ["spectral", "spectral_embedding", "dsc_affinity", "threshold_columns",
           "leading_eigvecs_chebyshev"]


def _check_square(a, name, xp=jnp):
    """a as an (N, N) floating array of ``xp`` (jnp, or np to stay on the host)."""
    a = xp.asarray(a)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{name} must be a square (N, N) matrix, got shape {a.shape}")
    if not xp.issubdtype(a.dtype, xp.floating):
        a = a.astype(xp.float32)
    return a


def _normalised_adjacency(a):
    """D^-1/2 A D^-1/2 of the symmetrised affinity (isolated nodes, degree 0: zero rows)."""
    a = 0.5 * (a + a.T)
    deg = a.sum(axis=1)
    dinv = jnp.where(deg > 0, 1.0 / jnp.sqrt(jnp.where(deg > 0, deg, 1.0)), 0.0)
    return dinv[:, None] * a * dinv[None, :]


def _shifted_adjacency_host(affinity, sigma: float) -> tuple[np.ndarray, np.ndarray]:
    """sigma I - D^-1/2 A D^-1/2 of the symmetrised affinity (N, N) in float64 numpy, built in
    place on one buffer (the host solver's input), and the isolated-node mask (N,) bool. A + A^T
    is summed in the input's precision (exact for a symmetric input)."""
    a = np.asarray(affinity)
    if not np.issubdtype(a.dtype, np.floating):
        a = a.astype(np.float64)
    m = np.multiply(np.add(a, a.T), 0.5, dtype=np.float64)
    deg = m.sum(axis=1)
    isolated = deg == 0
    dinv = np.where(isolated, 0.0, 1.0 / np.sqrt(np.where(isolated, 1.0, deg)))
    m *= dinv[:, None]
    m *= -dinv[None, :]
    m.flat[::m.shape[0] + 1] += sigma
    return m, isolated


def _isolated(affinity):
    """(N,) bool: the nodes of degree 0 in the symmetrised dense affinity (N, N)."""
    return (affinity + affinity.T).sum(axis=1) == 0


def _unit_rows(u, isolated):
    """Rows of u (N, k) scaled to unit length; the rows of isolated nodes (mask (N,)) set to 0
    (their tiny eigenvector entries would otherwise be scaled up to unit rows)."""
    xp = jnp if isinstance(u, jax.Array) else np
    norm = xp.linalg.norm(u, axis=1, keepdims=True)
    return xp.where(isolated[:, None], 0.0, u / xp.where(norm > 0, norm, 1.0))


@functools.partial(jax.jit, static_argnames=("n_components",))
def _embedding_eigh(affinity, n_components: int):
    _, vecs = jnp.linalg.eigh(_normalised_adjacency(affinity))
    return _unit_rows(vecs[:, -n_components:], _isolated(affinity))


SHIFT = 1e-9           # shift-invert: sigma = 1 + SHIFT just above the top eigenvalue (1)
EXTRA_VECTORS = 8      # block of n_components + 8 vectors
MAX_ITER = 100
TOL = 1e-8             # max residual ||M u - theta u|| of the n_components wanted vectors


def leading_eigvecs_shift_invert(m: np.ndarray, k: int, *, seed: int = 0,
                                 max_iter: int = MAX_ITER, tol: float = TOL):
    """The k leading eigenpairs of a normalised adjacency m (N, N) (symmetric, spectrum in
    [-1, 1]) by shift-invert subspace iteration in float64 on the host: one Cholesky factor of
    sigma I - m (sigma = 1 + SHIFT), then y = (sigma I - m)^-1 x, x <- qr(y) with a
    Rayleigh-Ritz step, a block of k + 8 vectors. An eigenvalue lam maps to 1 / (sigma - lam),
    so the ones near 1 (the clusters) separate by orders of magnitude even when 1 - lam differs
    by 1e-5 (a DSC affinity: 20 eigenvalues at 1, the 21st at 1 - 2e-5), where
    Lanczos/LOBPCG/Chebyshev filters stall. The iteration needs no product with m: m y = sigma y
    - x. Returns (vectors (N, k), values (k,), residual, iterations), or None when the
    factorisation fails or the residual is above ``tol`` after ``max_iter`` (callers fall back
    to a full eigh).

    Threads: the factorisation (N^3 / 3 flops, most of the time) runs with BLAS's own setting
    (all cores unless ``threadpoolctl`` or ``OPENBLAS_NUM_THREADS`` limit it), like XLA's pool:
    1.6x faster on 2 idle cores than on one, the same numbers on one machine. The iteration's
    small products run on one thread: numpy and scipy each bring their own OpenBLAS, and two
    pools of spinning threads made it 2.3x slower (docs/cluster.md)."""
    shifted = np.negative(m)
    shifted.flat[::m.shape[0] + 1] += 1.0 + SHIFT
    return _shift_invert(shifted, k, seed, max_iter, tol)


def _shift_invert(shifted, k, seed, max_iter, tol):
    """``leading_eigvecs_shift_invert`` from sigma I - m (N, N), which it overwrites."""
    import scipy.linalg
    try:
        factor = scipy.linalg.cho_factor(shifted, lower=True, overwrite_a=True, check_finite=False)
    except np.linalg.LinAlgError:
        return None
    with _blas_controller().limit(limits=1, user_api="blas"):
        return _shift_invert_iterations(factor, shifted.shape[0], k, seed, max_iter, tol)


@functools.cache
def _blas_controller():
    """threadpoolctl's view of the loaded BLAS libraries, found once (``threadpool_limits``
    searches them on every call: 1.8 ms); scipy's own OpenBLAS is loaded first so it is seen."""
    import importlib
    from threadpoolctl import ThreadpoolController
    importlib.import_module("scipy.linalg")
    return ThreadpoolController()


def _shift_invert_iterations(factor, n, k, seed, max_iter, tol):
    import scipy.linalg
    sigma = 1.0 + SHIFT
    x = np.linalg.qr(np.random.default_rng(seed).standard_normal((n, min(n, k + EXTRA_VECTORS))))[0]
    for it in range(1, max_iter + 1):
        q, r = np.linalg.qr(scipy.linalg.cho_solve(factor, x, check_finite=False))
        # y = q r and (sigma I - m) y = x, so m q = sigma q - x r^-1 (no N x N product)
        mq = sigma * q - scipy.linalg.solve_triangular(r, x.T, trans="T", check_finite=False).T
        h = q.T @ mq
        w, v = np.linalg.eigh(0.5 * (h + h.T))
        w, v = w[::-1], v[:, ::-1]                       # descending
        x, mx = q @ v, mq @ v
        res = float(np.linalg.norm(mx[:, :k] - x[:, :k] * w[:k], axis=0).max())
        if not np.isfinite(res):
            return None
        if res < tol:
            return x[:, :k], w[:k], res, it
    return None


# ----------------------------------------------------------------------------- sparse affinities

CHEB_DEGREE = 10          # Chebyshev polynomial degree per filter step (matvecs per step)
CHEB_EXTRA = 10           # block of n_components + 10 vectors
CHEB_MAX_ITER = 60        # filter steps before the scipy eigsh fallback
CHEB_TOL = 1e-5           # max residual ||M u - theta u|| (float32) of the wanted unit vectors


def _is_sparse(a) -> bool:
    import scipy.sparse as sps
    from jax.experimental import sparse as jsparse
    return sps.issparse(a) or isinstance(a, jsparse.BCOO)


def _sparse_affinity(a, fn: str):
    """A scipy.sparse matrix or a 2-D BCOO -> scipy COO float64 (N, N), checked square and
    non-negative (one ValueError naming ``affinity``). Host only: not under jit."""
    import scipy.sparse as sps
    if not sps.issparse(a):                                   # BCOO
        if isinstance(a.data, jax.core.Tracer):
            raise ValueError(f"{fn}: a sparse affinity is solved on the host; not under jit")
        if a.ndim != 2 or a.n_batch or a.n_dense:
            raise ValueError(f"{fn}: affinity must be a square (N, N) matrix, got a BCOO of shape "
                             f"{a.shape} (n_batch={a.n_batch}, n_dense={a.n_dense})")
        idx, data = np.asarray(a.indices), np.asarray(a.data)
        keep = (idx < np.asarray(a.shape)).all(axis=1)        # BCOO pads with out-of-range indices
        a = sps.coo_matrix((data[keep], (idx[keep, 0], idx[keep, 1])), shape=a.shape)
    if a.ndim != 2 or a.shape[0] != a.shape[1]:
        raise ValueError(f"{fn}: affinity must be a square (N, N) matrix, got shape {a.shape}")
    a = sps.coo_matrix(a, dtype=np.float64)
    if a.nnz and a.data.min() < 0:
        raise ValueError(f"{fn}: affinity must be non-negative")
    return a


def _normalised_sparse(a):
    """D^-1/2 A D^-1/2 (CSR float64, sorted indices) of the symmetrised COO affinity a, and the
    isolated-node mask (N,) (degree 0: zero rows), as ``_normalised_adjacency``."""
    import scipy.sparse as sps
    a = (0.5 * (a + a.T)).tocsr()
    a.sum_duplicates()
    a.eliminate_zeros()
    deg = np.asarray(a.sum(axis=1)).ravel()
    dinv = np.where(deg > 0, 1.0 / np.sqrt(np.where(deg > 0, deg, 1.0)), 0.0)
    m = (sps.diags(dinv) @ a @ sps.diags(dinv)).tocsr()
    m.sort_indices()
    return m, deg == 0


@jax.jit
def _chebyshev_subspace(rows, cols, vals, x0, k, degree, max_iter, tol):
    """Chebyshev-filtered subspace iteration (Zhou & Saad 2007) for the k leading eigenpairs of
    a symmetric sparse M (N, N) with spectrum in [-1, 1], given as COO rows (sorted) / cols /
    vals (nnz,), from a start block x0 (N, s), s > k. Each step applies the degree-``degree``
    Chebyshev polynomial bounded by 1 on [-1, cut] (cut = the smallest Ritz value of the block:
    the negative end and the unwanted middle are damped together, no shift needed) that grows
    fast above it, then QR and Rayleigh-Ritz; it stops when the k wanted residuals are below tol
    or after max_iter steps. k, degree, max_iter are traced (one compile per N, nnz, s).
    Returns (vectors (N, s), Ritz values (s,) descending, max residual of the k, steps)."""
    n, s = x0.shape
    wanted = jnp.arange(s) < k

    def mv(x):
        return jax.ops.segment_sum(vals[:, None] * x[cols], rows, n, indices_are_sorted=True)

    def rayleigh_ritz(y):
        q = jnp.linalg.qr(y)[0]
        mq = mv(q)
        w, v = jnp.linalg.eigh(0.5 * (q.T @ mq + mq.T @ q))
        w, v = w[::-1], v[:, ::-1]
        x, mx = q @ v, mq @ v
        res = jnp.where(wanted, jnp.linalg.norm(mx - x * w, axis=0), 0.0).max()
        return x, w, res

    def step(state):
        x, w, _, it = state
        cut = jnp.minimum(w[-1], 1.0 - 1e-3)                 # damp [-1, cut]
        c, e = 0.5 * (cut - 1.0), 0.5 * (cut + 1.0)

        def three_term(_, ys):
            y_prev, y = ys
            return y, 2.0 * (mv(y) - c * y) / e - y_prev

        y = jax.lax.fori_loop(1, degree, three_term, (x, (mv(x) - c * x) / e))[1]
        return rayleigh_ritz(y) + (it + 1,)

    def cond(state):
        return (state[2] > tol) & (state[3] < max_iter)

    x, w, res = rayleigh_ritz(x0)
    return jax.lax.while_loop(cond, step, (x, w, res, jnp.int32(0)))


def leading_eigvecs_chebyshev(m, k: int, *, seed: int = 0, degree: int = CHEB_DEGREE,
                              max_iter: int = CHEB_MAX_ITER, tol: float = CHEB_TOL):
    """The k leading eigenpairs of a sparse normalised adjacency m (N, N) (scipy sparse,
    symmetric, spectrum in [-1, 1]) by ``_chebyshev_subspace`` in float32 jnp over sparse
    mat-vecs: a block of k + ``CHEB_EXTRA`` vectors (rounded up to a multiple of 8, at most N)
    from a seeded normal start; nnz padded to a power of two (zero entries), so graphs of one
    size share a compile. Returns (vectors (N, k) numpy, values (k,), residual, steps), or None
    when the residual is above ``tol`` after ``max_iter`` steps (callers then use eigsh)."""
    n = m.shape[0]
    s = min(n, -(-(k + CHEB_EXTRA) // 8) * 8)
    coo = m.tocsr().tocoo()                                  # rows sorted
    pad = max(1024, 1 << int(np.ceil(np.log2(max(coo.nnz, 1))))) - coo.nnz
    rows = np.concatenate([coo.row, np.full(pad, n - 1)]).astype(np.int32)
    cols = np.concatenate([coo.col, np.zeros(pad)]).astype(np.int32)
    vals = np.concatenate([coo.data, np.zeros(pad)]).astype(np.float32)
    x0 = np.random.default_rng(seed).standard_normal((n, s)).astype(np.float32)
    # XLA's QR/eigh call LAPACK: with OpenBLAS's own threads beside XLA's pool, a (10000, 20) QR
    # took 210 ms, not 1.8
    with _blas_controller().limit(limits=1, user_api="blas"):
        x, w, res, it = jax.block_until_ready(
            _chebyshev_subspace(rows, cols, vals, x0, k, degree, max_iter, tol))
    res = float(res)
    if not np.isfinite(res) or res > tol:
        return None
    return np.asarray(x[:, :k]), np.asarray(w[:k]), res, int(it)


def leading_eigvecs_eigsh(m, k: int, *, seed: int = 0):
    """The fallback: the k leading eigenpairs of m (N, N) (scipy sparse, symmetric) by scipy's
    ``eigsh(which="LA")`` (ARPACK, float64), or numpy's dense eigh when k >= N - 1 (ARPACK
    needs k < N). Returns (vectors (N, k), values (k,) descending)."""
    import scipy.sparse.linalg
    n = m.shape[0]
    if k >= n - 1:
        w, v = np.linalg.eigh(m.toarray())
    else:
        v0 = np.random.default_rng(seed).uniform(-1, 1, n)
        with _blas_controller().limit(limits=1, user_api="blas"):
            w, v = scipy.sparse.linalg.eigsh(m, k, which="LA", v0=v0)
    order = np.argsort(w)[::-1][:k]
    return v[:, order], w[order]


def sparse_auto_solver() -> str:
    """``solver="auto"``'s pick for a sparse affinity: ``eigsh`` (host ARPACK) when JAX runs on
    the CPU, where it measured 2.3x faster than the jnp solver (the block mat-vecs bound that
    one), else ``chebyshev`` (its mat-vecs and QR on the accelerator)."""
    return "eigsh" if jax.default_backend() == "cpu" else "chebyshev"


def _sparse_embedding(a, n_components: int, solver: str):
    """The spectral embedding (N, n_components) float32 of a checked sparse COO affinity."""
    m, isolated = _normalised_sparse(a)
    if solver == "auto":
        solver = sparse_auto_solver()
    got = None
    if solver != "eigsh":
        got = leading_eigvecs_chebyshev(m, n_components, max_iter=CHEB_MAX_ITER, tol=CHEB_TOL)
    u = got[0].astype(np.float64) if got is not None else leading_eigvecs_eigsh(m, n_components)[0]
    return jnp.asarray(_unit_rows(u, isolated), jnp.float32)


SPARSE_SOLVERS = ("auto", "chebyshev", "eigsh")


def _check_sparse_solver(solver, fn: str):
    if solver not in SPARSE_SOLVERS:
        raise ValueError(f"{fn}: solver for a sparse affinity must be auto, chebyshev or eigsh, "
                         f"got {solver!r}")


@renamed_kwarg("k", "n_components")
def spectral_embedding(affinity, n_components: int, *, solver: str = "auto"):
    """Row-normalised spectral embedding (N, n_components) float32 of a symmetric non-negative
    affinity (N, N): the n_components leading eigenvectors of D^-1/2 A D^-1/2, rows scaled to
    unit length (isolated nodes, degree 0, get a zero row). ``n_components`` = the number of
    clusters in ``spectral``; ``k=`` is deprecated.

    affinity: a dense array (numpy / jax), or a sparse matrix (any ``scipy.sparse`` matrix or
    array, or a 2-D ``jax.experimental.sparse.BCOO``; symmetrised 0.5 (A + A^T) like the dense one).
    solver, dense affinity: ``eigh`` (a full jnp eigh; jittable), ``shift_invert``
    (``leading_eigvecs_shift_invert``: float64 on the host, only the vectors needed, with a full
    eigh as fallback when it does not converge) or ``auto`` (shift_invert, eigh under a jax
    transformation). Measured at N = 1440, k = 20 (a DSC affinity, 2-core CPU): eigh 1.4 s;
    shift-invert converges in 1-2 iterations, the same clusters. LOBPCG and Chebyshev-filtered
    subspace iteration did not converge there (see docs/cluster.md).
    solver, sparse affinity (host, not jittable): ``chebyshev``
    (``leading_eigvecs_chebyshev``: Chebyshev-filtered subspace iteration in float32 jnp over
    sparse mat-vecs until the residual is below ``CHEB_TOL`` = 1e-5, else the fallback),
    ``eigsh`` (the fallback itself: scipy's ARPACK ``eigsh(which="LA")``, float64) or ``auto``
    (``sparse_auto_solver()``: eigsh when JAX runs on the CPU, chebyshev on an accelerator). Measured on
    the 10-NN graph of the 10000 MNIST test images (PCA-50, nnz 136882; 2-core CPU, load ~5):
    ``spectral`` 0.61 s with chebyshev (7 steps; the solve 0.45 s), 0.27 s with eigsh, against
    scikit-learn's SpectralClustering 7.5 s (4.6 s on one thread); the same clusters from both
    solvers (ACC 0.703). On a CPU ``solver="eigsh"`` is the faster one (docs/cluster.md).
    """
    if _is_sparse(affinity):
        _check_sparse_solver(solver, "spectral_embedding")
        a = _sparse_affinity(affinity, "spectral_embedding")
        _check_n(n_components, a.shape[0], "spectral_embedding", "n_components")
        return _sparse_embedding(a, int(n_components), solver)
    if solver not in ("auto", "eigh", "shift_invert"):
        raise ValueError(f"spectral_embedding: solver must be auto, eigh or shift_invert, got {solver!r}")
    traced = isinstance(affinity, jax.core.Tracer)
    if solver == "eigh" or (solver == "auto" and traced):
        return _embedding_eigh(affinity, int(n_components))
    if traced:
        raise ValueError("spectral_embedding: solver='shift_invert' runs on the host; under jit "
                         "use solver='eigh'")
    shifted, isolated = _shifted_adjacency_host(affinity, 1.0 + SHIFT)
    got = _shift_invert(shifted, int(n_components), 0, MAX_ITER, TOL)
    if got is None:
        return _embedding_eigh(jnp.asarray(affinity), int(n_components))
    return jnp.asarray(_unit_rows(got[0], isolated), jnp.float32)


def _check_n(n_clusters, n: int, fn: str, name: str):
    if isinstance(n_clusters, bool) or not isinstance(n_clusters, (int, np.integer)) \
            or not 1 <= n_clusters <= n:
        raise ValueError(f"{fn}: {name} must be an int in [1, N={n}], got {n_clusters!r}")


@renamed_kwarg("k", "n_clusters")
def spectral(affinity, n_clusters: int, *, key, n_init: int = 10,
             solver: str = "auto") -> jax.Array:
    """Normalised spectral clustering of an affinity (N, N) (symmetrised, non-negative) -> (N,) int32.

    affinity: dense (numpy / jax array) or sparse (``scipy.sparse``, ``BCOO``), e.g. a kNN graph
    from ``knn_graph`` (never densified; see ``spectral_embedding`` for the solvers and times).
    key: a ``jax.random.key`` or an int seed, for the K-means restarts on the spectral embedding.
    solver: the eigensolver of ``spectral_embedding``. ``k=`` is a deprecated alias of ``n_clusters``.
    """
    if _is_sparse(affinity):
        _check_sparse_solver(solver, "spectral")
        a = _sparse_affinity(affinity, "spectral")
        _check_n(n_clusters, a.shape[0], "spectral", "n_clusters")
        emb = _sparse_embedding(a, int(n_clusters), solver)
        return kmeans(emb, int(n_clusters), key=key, n_init=n_init).labels
    xp = jnp if isinstance(affinity, jax.Array) else np     # a host array stays on the host
    a = _check_square(affinity, "affinity", xp)
    _check_n(n_clusters, a.shape[0], "spectral", "n_clusters")
    if not isinstance(a, jax.core.Tracer) and bool(xp.any(a < 0)):
        raise ValueError("spectral: affinity must be non-negative")
    n_clusters = int(n_clusters)
    emb = spectral_embedding(a, n_clusters, solver=solver)
    return kmeans(emb, n_clusters, key=key, n_init=n_init).labels


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
