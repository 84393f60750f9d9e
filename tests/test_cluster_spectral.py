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
