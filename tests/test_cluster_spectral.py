"""Spectral clustering and DSC-Net's affinity post-processing vs the published numpy procedure."""

import jax
import numpy as np
import pytest
from sklearn.cluster import SpectralClustering
from sklearn.metrics import adjusted_rand_score

from aeclust_jax import metrics
from aeclust_jax.cluster import dsc_affinity, spectral, spectral_embedding
from aeclust_jax.cluster._spectral import threshold_columns
from aeclust_jax.cluster.reference import post_proC_affinity, thrC


def subspace_data(n_clusters=4, per=40, dim=4, seed=0):
    """A self-expression-like C (N, N): block diagonal, each block a random rank-`dim` PSD matrix
    (distinct, well separated singular values), plus small dense noise; labels (N,)."""
    rng = np.random.default_rng(seed)
    n = n_clusters * per
    C = 1e-3 * rng.normal(size=(n, n))
    for i in range(n_clusters):
        w = rng.normal(size=(per, dim)) * rng.uniform(0.5, 2.0, dim)
        C[i * per:(i + 1) * per, i * per:(i + 1) * per] += w @ w.T / per
    return C, np.repeat(np.arange(n_clusters), per)


def test_threshold_columns_matches_thrC():
    rng = np.random.default_rng(1)
    C = rng.normal(size=(60, 60)) * rng.random((60, 60)) ** 4
    for ro in (0.04, 0.3, 0.9):
        np.testing.assert_allclose(threshold_columns(C.astype(np.float32), ro),
                                   thrC(C.astype(np.float32), ro), atol=1e-7)


def test_dsc_affinity_matches_post_proC():
    # ro = 0.3 and rank d*k+1 = 17 > the 16 signal directions: every row keeps support in the
    # kept subspace (with ro = 0.04 some rows vanish and their normalised direction is noise).
    C, _ = subspace_data()
    L_ref = post_proC_affinity(thrC(C, 0.3), 4, 4, 8.0)
    with jax.enable_x64(True):
        L = np.asarray(dsc_affinity(C, 4, d=4, alpha=8.0, ro=0.3))
    np.testing.assert_allclose(L, L_ref, atol=1e-8)
    L32 = np.asarray(dsc_affinity(C.astype(np.float32), 4, d=4, alpha=8.0, ro=0.3))
    np.testing.assert_allclose(L32, L_ref, atol=1e-3)


def test_spectral_recovers_subspaces_like_sklearn():
    C, y = subspace_data(seed=2)
    L = np.asarray(dsc_affinity(C, 4, d=4, ro=0.3))
    ours = np.asarray(spectral(L, 4, key=jax.random.key(0)))
    ref = SpectralClustering(4, affinity="precomputed", assign_labels="discretize",
                             random_state=0).fit_predict(L)
    assert metrics.acc(y, ours) >= metrics.acc(y, ref) - 1e-9
    assert metrics.acc(y, ours) > 0.95


def test_spectral_noisy_blocks_agree_with_sklearn():
    rng = np.random.default_rng(3)
    y = np.repeat(np.arange(5), 30)
    A = np.where(y[:, None] == y[None, :], 0.6, 0.25) * rng.random((150, 150))
    A = 0.5 * (A + A.T)
    ours = np.asarray(spectral(A, 5, key=jax.random.key(0)))
    ref = SpectralClustering(5, affinity="precomputed", random_state=0).fit_predict(A)
    assert adjusted_rand_score(ref, ours) > 0.9
    assert metrics.acc(y, ours) >= metrics.acc(y, ref) - 0.02


def test_n_clusters_keyword_and_deprecated_k():
    C, _ = subspace_data(seed=2)
    L = dsc_affinity(C, n_clusters=4, d=4, ro=0.3)
    with pytest.warns(DeprecationWarning, match="n_clusters"):
        np.testing.assert_array_equal(dsc_affinity(C, k=4, d=4, ro=0.3), L)
    labels = spectral(L, n_clusters=4, key=0)
    np.testing.assert_array_equal(spectral(L, 4, key=jax.random.key(0)), labels)  # int = key
    with pytest.warns(DeprecationWarning, match="n_clusters"):
        np.testing.assert_array_equal(spectral(L, k=4, key=0), labels)
    with pytest.warns(DeprecationWarning, match="n_components"):
        np.testing.assert_array_equal(spectral_embedding(L, k=4), spectral_embedding(L, n_components=4))


def test_bad_input():
    with pytest.raises(ValueError, match="n_clusters must be"):
        spectral(np.ones((3, 3)), 4, key=0)
    with pytest.raises(ValueError, match="square"):
        spectral(np.ones((3, 4)), 2, key=0)
    with pytest.raises(ValueError, match="non-negative"):
        spectral(-np.ones((3, 3)), 2, key=0)
    with pytest.raises(ValueError, match="exceeds N"):
        dsc_affinity(np.eye(10), 2, d=12)


# ----------------------------------------------------------------------------- eigensolvers

def _projector_numpy(m, k):
    """Reference: the projector onto the k leading eigenvectors of m by numpy's float64 eigh."""
    w, v = np.linalg.eigh(m)
    u = v[:, np.argsort(w)[::-1][:k]]
    return u @ u.T, np.sort(w)[::-1][:k]


def _normalised(a):
    a = 0.5 * (a + a.T)
    d = a.sum(1)
    s = np.where(d > 0, 1 / np.sqrt(np.where(d > 0, d, 1)), 0)
    return s[:, None] * a * s[None, :]


def _graphs():
    rng = np.random.default_rng(7)
    y = np.repeat(np.arange(6), 25)
    noisy = np.where(y[:, None] == y[None, :], 0.6, 0.05) * rng.random((150, 150))
    # DSC-like: exactly disconnected blocks, eigenvalue 1 six times, ties inside the blocks
    blocks = np.where(y[:, None] == y[None, :], 1.0, 0.0) * rng.integers(1, 3, (150, 150))
    isolated = noisy.copy()
    isolated[:5] = isolated[:, :5] = 0.0                     # five nodes of degree 0
    constant_blocks = np.where(y[:, None] == y[None, :], 0.5, 0.0) + np.where(
        (y[:, None] // 3) == (y[None, :] // 3), 1e-3, 0.0)   # near-degenerate: 2 groups of 3
    return {"noisy": noisy, "blocks": blocks, "isolated": isolated, "constant": constant_blocks}


@pytest.mark.parametrize("name", sorted(_graphs()))
def test_shift_invert_matches_numpy_eigh(name):
    """The k leading eigenpairs of D^-1/2 A D^-1/2: the same eigenvalues and the same invariant
    subspace (projector) as numpy's full eigh, on noisy blocks, exactly disconnected blocks with
    integer ties, isolated nodes and near-degenerate constant blocks."""
    from aeclust_jax.cluster._spectral import leading_eigvecs_shift_invert
    m = _normalised(_graphs()[name])
    for k in (2, 6):
        if name in ("constant", "blocks") and k == 2:
            continue         # eigenvalue 1 (blocks) or 2 = 3 (constant): no unique 2-d subspace
        p_ref, w_ref = _projector_numpy(m, k)
        u, w, res, iters = leading_eigvecs_shift_invert(m, k)
        np.testing.assert_allclose(w, w_ref, atol=1e-7)
        np.testing.assert_allclose(u @ u.T, p_ref, atol=1e-6)
        assert res < 1e-8 and iters <= 100
        assert np.linalg.norm(m @ u - u * w, axis=0).max() < 1e-8   # the residual, with m itself


def test_spectral_solvers_give_the_same_clusters_and_fall_back():
    import aeclust_jax.cluster._spectral as sp
    g = _graphs()["isolated"]
    a, b = (np.asarray(spectral_embedding(g, 6, solver=s)) for s in ("shift_invert", "eigh"))
    np.testing.assert_allclose(a @ a.T, b @ b.T, atol=2e-4)     # rows: unit length, same angles
    assert np.all(a[:5] == 0) and np.allclose(np.linalg.norm(a[5:], axis=1), 1, atol=1e-5)
    labels = {s: np.asarray(spectral(g, 6, key=0, solver=s)) for s in ("shift_invert", "eigh")}
    assert adjusted_rand_score(labels["eigh"], labels["shift_invert"]) == 1.0
    # no convergence within max_iter -> None, and spectral_embedding falls back to eigh
    assert sp.leading_eigvecs_shift_invert(_normalised(g), 6, max_iter=1, tol=0.0) is None
    orig = sp._shift_invert                    # the solve spectral_embedding calls
    try:
        sp._shift_invert = lambda *a, **k: None
        np.testing.assert_array_equal(np.asarray(spectral_embedding(g, 6)), b)
    finally:
        sp._shift_invert = orig
    # under jit, auto means eigh; shift_invert (host float64) says it cannot be traced
    jitted = jax.jit(lambda x: spectral_embedding(x, 6))(g)
    np.testing.assert_allclose(np.asarray(jitted), b, atol=1e-6)
    with pytest.raises(ValueError, match="under jit use solver='eigh'"):
        jax.jit(lambda x: spectral_embedding(x, 6, solver="shift_invert"))(g)
    with pytest.raises(ValueError, match="solver must be"):
        spectral_embedding(g, 6, solver="arpack")


# ----------------------------------------------------------------------------- sparse affinities
# N = 150, k = 6 throughout (the shapes of the dense tests above): one K-means compile, one
# Chebyshev compile per nnz bucket, so these tests stay within a few seconds.

def _knn_blobs(n_clusters=6, per=25, seed=0):
    """A 15-NN graph (scipy CSR, 150 x 150) of well-separated Gaussian blobs, made connected by a
    ring of weak edges (0.05) between the blobs, and the blob labels. (Its nnz shares the
    Chebyshev compile of the "blocks" graph.)"""
    import scipy.sparse as sps

    from aeclust_jax.cluster import knn_graph
    rng = np.random.default_rng(seed)
    centres = 10.0 * rng.normal(size=(n_clusters, 8))
    x = np.repeat(centres, per, axis=0) + rng.normal(size=(n_clusters * per, 8))
    starts = np.arange(n_clusters) * per
    ring = sps.csr_matrix((np.full(n_clusters, 0.05), (starts, np.roll(starts, 1))), shape=(len(x),) * 2)
    g = (knn_graph(x.astype(np.float32), 15) + ring + ring.T).tocsr()
    return x.astype(np.float32), g, np.repeat(np.arange(n_clusters), per)


def test_knn_graph_equals_sklearn():
    from sklearn.neighbors import kneighbors_graph

    from aeclust_jax.cluster import knn_graph
    x = np.random.default_rng(0).normal(size=(150, 6)).astype(np.float32)
    for include_self in (True, False):
        ref = kneighbors_graph(x, 10, include_self=include_self)
        a = knn_graph(x, 10, include_self=include_self, symmetric=False)
        assert abs(a - ref).max() == 0 and a.shape == (150, 150)
        s = knn_graph(x, 10, include_self=include_self)          # SpectralClustering's affinity
        assert abs(s - 0.5 * (ref + ref.T)).max() == 0
    with pytest.raises(ValueError, match="n_neighbors must be"):
        knn_graph(x, 150, include_self=False)
    with pytest.raises(ValueError, match=r"x must be \(N, D\)"):
        knn_graph(x[0], 3)


def _dense_projector(a, k):
    """Reference sharing no code with the solver: numpy's float64 eigh of D^-1/2 A D^-1/2."""
    return _projector_numpy(_normalised(np.asarray(a.todense() if hasattr(a, "todense") else a)), k)


def _knn_isolated():
    """The blobs' kNN graph with nodes 0-4 cut off (degree 0)."""
    g = _knn_blobs()[1].tolil()
    g[:5] = 0
    g[:, :5] = 0
    return g.tocsr()


@pytest.mark.parametrize("name", ["knn", "blocks", "isolated"])
def test_chebyshev_matches_numpy_eigh(name):
    """Leading eigenpairs of the sparse normalised adjacency: the eigenvalues and invariant
    subspace of numpy's dense float64 eigh (blocks: exactly 6 components, eigenvalue 1 six times;
    isolated: five nodes of degree 0)."""
    import scipy.sparse as sps

    import aeclust_jax.cluster._spectral as sp
    a = {"knn": _knn_blobs()[1], "isolated": _knn_isolated(), "blocks": sps.csr_matrix(_graphs()["blocks"])}[name]
    m, _ = sp._normalised_sparse(sps.coo_matrix(a))
    p_ref, w_ref = _dense_projector(a, 6)
    u, w, res, steps = sp.leading_eigvecs_chebyshev(m, 6)
    np.testing.assert_allclose(w, w_ref, atol=1e-5)
    np.testing.assert_allclose(u @ u.T, p_ref, atol=1e-3)
    assert res <= sp.CHEB_TOL and steps <= sp.CHEB_MAX_ITER


def test_sparse_spectral_matches_sklearn_and_dense():
    import scipy.sparse as sps
    from jax.experimental import sparse as jsparse
    _, g, y = _knn_blobs()
    ours = np.asarray(spectral(g, 6, key=0))
    ref = SpectralClustering(6, affinity="precomputed", random_state=0).fit_predict(g)
    assert adjusted_rand_score(ref, ours) == 1.0 and metrics.acc(y, ours) == 1.0
    import aeclust_jax.cluster._spectral as sp                 # auto on the CPU is host ARPACK;
    assert sp.sparse_auto_solver() == "eigsh"                  # the jnp solver gives the same
    np.testing.assert_array_equal(np.asarray(spectral(g, 6, key=0, solver="chebyshev")), ours)
    dense = np.asarray(g.todense())
    np.testing.assert_array_equal(np.asarray(spectral(dense, 6, key=0)), ours)
    e_sparse, e_dense = np.asarray(spectral_embedding(g, 6)), np.asarray(spectral_embedding(dense, 6))
    np.testing.assert_allclose(e_sparse @ e_sparse.T, e_dense @ e_dense.T, atol=1e-3)
    # other sparse containers: BCOO, COO / CSC / sparse arrays, a directed (unsymmetrised) graph
    coo = g.tocoo()
    bcoo = jsparse.BCOO((coo.data, np.stack([coo.row, coo.col], 1)), shape=g.shape)
    np.testing.assert_array_equal(np.asarray(spectral(bcoo, 6, key=0)), ours)
    np.testing.assert_array_equal(np.asarray(spectral(sps.coo_array(g), 6, key=0)), ours)
    directed = sps.csc_matrix(2 * np.triu(dense, 1) + np.diag(np.diag(dense)))  # 0.5 (A + A^T) = g
    e_dir = np.asarray(spectral_embedding(directed, 6))
    np.testing.assert_allclose(e_dir @ e_dir.T, e_sparse @ e_sparse.T, atol=1e-3)


def test_sparse_isolated_nodes_and_components():
    import scipy.sparse as sps
    g = _knn_isolated()                                        # five nodes of degree 0
    e = np.asarray(spectral_embedding(g, 6))
    assert np.all(e[:5] == 0) and np.allclose(np.linalg.norm(e[5:], axis=1), 1, atol=1e-5)
    b = np.asarray(spectral_embedding(g.toarray(), 6, solver="eigh"))
    np.testing.assert_allclose(e @ e.T, b @ b.T, atol=1e-3)
    assert adjusted_rand_score(np.asarray(spectral(g.toarray(), 6, key=0, solver="eigh")),
                               np.asarray(spectral(g, 6, key=0))) == 1.0
    # exactly k = 6 connected components (sparse blocks): each is one cluster
    blocks = _graphs()["blocks"]
    y = np.repeat(np.arange(6), 25)
    assert adjusted_rand_score(y, np.asarray(spectral(sps.csr_matrix(blocks), 6, key=0))) == 1.0


def test_sparse_fallback_to_eigsh(monkeypatch):
    import scipy.sparse as sps

    import aeclust_jax.cluster._spectral as sp
    _, g, _ = _knn_blobs()
    labels = np.asarray(spectral(g, 6, key=0))
    m, _ = sp._normalised_sparse(sps.coo_matrix(g))
    assert sp.leading_eigvecs_chebyshev(m, 6, max_iter=1, tol=0.0) is None
    calls = []
    orig = sp.leading_eigvecs_eigsh
    monkeypatch.setattr(sp, "leading_eigvecs_eigsh", lambda *a, **k: calls.append(1) or orig(*a, **k))
    monkeypatch.setattr(sp, "CHEB_MAX_ITER", 1)                 # no convergence -> eigsh
    assert adjusted_rand_score(np.asarray(spectral(g, 6, key=0, solver="chebyshev")), labels) == 1.0
    assert calls == [1]
    assert adjusted_rand_score(np.asarray(spectral(g, 6, key=0, solver="eigsh")), labels) == 1.0
    u, w = orig(m, 6)                                          # eigsh itself vs numpy's eigh
    p_ref, w_ref = _dense_projector(g, 6)
    np.testing.assert_allclose(w, w_ref, atol=1e-10)
    np.testing.assert_allclose(u @ u.T, p_ref, atol=1e-8)


def test_sparse_bad_input():
    import scipy.sparse as sps
    from jax.experimental import sparse as jsparse
    g = sps.random(10, 10, density=0.5, random_state=0, format="csr")
    with pytest.raises(ValueError, match=r"affinity must be a square \(N, N\) matrix"):
        spectral(sps.random(10, 9, density=0.5, format="csr"), 2, key=0)
    with pytest.raises(ValueError, match=r"affinity must be a square \(N, N\) matrix"):
        spectral(jsparse.BCOO((np.ones(2), np.array([[0, 1], [2, 3]])), shape=(3, 4)), 2, key=0)
    with pytest.raises(ValueError, match="affinity must be non-negative"):
        spectral(-g, 2, key=0)
    for bad in (0, 11, True, 2.0):
        with pytest.raises(ValueError, match=r"n_clusters must be an int in \[1, N=10\]"):
            spectral(g, bad, key=0)
    with pytest.raises(ValueError, match="n_components must be"):
        spectral_embedding(g, 11)
    with pytest.raises(ValueError, match="solver for a sparse affinity must be"):
        spectral_embedding(g, 2, solver="shift_invert")
    with pytest.raises(ValueError, match="not under jit"):
        jax.jit(lambda v: spectral_embedding(jsparse.BCOO((v, np.array([[0, 1], [1, 0]])), shape=(4, 4)),
                                             2))(np.ones(2))
