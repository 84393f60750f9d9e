"""Parity of aeclust_jax.metrics with scikit-learn / skimage on random and edge-case labelings."""

import subprocess
import sys
import textwrap

import hypothesis.extra.numpy as hnp
import jax
import numpy as np
import pytest
from hypothesis import given, settings, strategies as st
from scipy.optimize import linear_sum_assignment
from skimage.metrics import peak_signal_noise_ratio
from sklearn import metrics as skm

from aeclust_jax import metrics as M

ATOL = 2e-5  # float32 sums


def labelings(max_n=200):
    """Pairs of int labelings of equal length with arbitrary (also negative, sparse) values."""
    return st.integers(1, max_n).flatmap(lambda n: st.tuples(
        hnp.arrays(np.int64, n, elements=st.integers(-3, 12) | st.sampled_from([10**6, -10**5])),
        hnp.arrays(np.int32, n, elements=st.integers(0, 7))))


def ref_acc(t, p):
    _, ti = np.unique(t, return_inverse=True)
    _, pi = np.unique(p, return_inverse=True)
    table = np.zeros((ti.max() + 1, pi.max() + 1))
    np.add.at(table, (ti, pi), 1)
    r, c = linear_sum_assignment(-table)
    return table[r, c].sum() / len(t)


def ref_pairwise(t, p):
    same_t = t[:, None] == t[None, :]
    same_p = p[:, None] == p[None, :]
    iu = np.triu_indices(len(t), 1)
    tp = np.sum(same_t[iu] & same_p[iu])
    prec = tp / same_p[iu].sum() if same_p[iu].sum() else 1.0
    rec = tp / same_t[iu].sum() if same_t[iu].sum() else 1.0
    return prec, rec, (2 * prec * rec / (prec + rec) if prec + rec else 0.0)


def ref_bcubed(t, p):
    same_t = t[:, None] == t[None, :]
    same_p = p[:, None] == p[None, :]
    both = (same_t & same_p).sum(1)
    prec, rec = np.mean(both / same_p.sum(1)), np.mean(both / same_t.sum(1))
    return prec, rec, 2 * prec * rec / (prec + rec)


def ref_purity(t, p):
    return sum(np.bincount(np.unique(t, return_inverse=True)[1][p == c]).max()
               for c in np.unique(p)) / len(t)


def check_all(t, p):
    for avg in M.AVERAGES:
        assert float(M.nmi(t, p, avg)) == pytest.approx(
            skm.normalized_mutual_info_score(t, p, average_method=avg), abs=ATOL), avg
    assert float(M.ari(t, p)) == pytest.approx(skm.adjusted_rand_score(t, p), abs=ATOL)
    assert M.acc(t, p) == pytest.approx(ref_acc(t, p), abs=1e-12)
    assert float(M.purity(t, p)) == pytest.approx(ref_purity(t, p), abs=ATOL)
    np.testing.assert_allclose(np.array(M.pairwise_prf(t, p)), ref_pairwise(t, p), atol=ATOL)
    np.testing.assert_allclose(np.array(M.bcubed_prf(t, p)), ref_bcubed(t, p), atol=ATOL)
    assert float(M.accuracy(t, p)) == pytest.approx(np.mean(t == p))


@settings(max_examples=30, deadline=None)
@given(labelings())
def test_eager_parity_random(tp):
    check_all(*tp)


# The jitted (sort-based, traced) path: one compile per length, so a few fixed lengths.
_jitted = {name: jax.jit(getattr(M, name)) for name in ("ari", "purity", "pairwise_prf", "bcubed_prf")}
_jitted.update({f"nmi_{a}": jax.jit(lambda t, p, a=a: M.nmi(t, p, a)) for a in M.AVERAGES})


@settings(max_examples=25, deadline=None)
@given(st.sampled_from([1, 7, 64]).flatmap(lambda n: st.tuples(
    hnp.arrays(np.int32, n, elements=st.integers(-5, 9)),
    hnp.arrays(np.int32, n, elements=st.integers(100, 104)))))
def test_jit_parity_random(tp):
    t, p = tp
    for a in M.AVERAGES:
        assert float(_jitted[f"nmi_{a}"](t, p)) == pytest.approx(
            skm.normalized_mutual_info_score(t, p, average_method=a), abs=ATOL)
    assert float(_jitted["ari"](t, p)) == pytest.approx(skm.adjusted_rand_score(t, p), abs=ATOL)
    assert float(_jitted["purity"](t, p)) == pytest.approx(ref_purity(t, p), abs=ATOL)
    np.testing.assert_allclose(np.array(_jitted["pairwise_prf"](t, p)), ref_pairwise(t, p), atol=ATOL)
    np.testing.assert_allclose(np.array(_jitted["bcubed_prf"](t, p)), ref_bcubed(t, p), atol=ATOL)


@pytest.mark.parametrize("t, p", [
    ([3], [7]),                                  # N = 1
    ([1, 1, 1, 1], [5, 5, 5, 5]),                # single cluster both sides
    ([0, 0, 0, 0], [0, 1, 2, 3]),                # all singletons predicted
    ([0, 1, 2, 3], [0, 0, 0, 0]),                # single cluster predicted
    ([10, 10, 20, 20, 30, 30], [1, 1, 2, 2, 3, 3]),  # labels not from 0, perfect match
    ([0, 0, 1, 1, 2, 2], [0, 1, 2, 3, 4, 5]),    # more clusters than classes
    ([0, 0, 1, 1], [0, 1, 0, 1]),                # ARI -0.5
])
def test_edge_cases(t, p):
    check_all(np.array(t), np.array(p))


def test_vmap_over_labelings():
    rng = np.random.default_rng(0)
    t, p = rng.integers(0, 4, (3, 50)), rng.integers(0, 3, (3, 50))
    got = jax.vmap(M.ari)(t, p)
    np.testing.assert_allclose(got, [skm.adjusted_rand_score(a, b) for a, b in zip(t, p)], atol=ATOL)


def test_large_labels_no_quadratic_memory():
    rng = np.random.default_rng(1)
    n = 2_000_000
    t = rng.integers(0, 10, n)
    p = np.where(rng.random(n) < 0.7, t, rng.integers(0, 12, n))
    assert float(M.nmi(t, p)) == pytest.approx(skm.normalized_mutual_info_score(t, p), abs=1e-4)
    assert float(M.ari(t, p)) == pytest.approx(skm.adjusted_rand_score(t, p), abs=1e-4)
    assert M.acc(t, p) == pytest.approx(ref_acc(t, p), abs=1e-9)


def test_float64_subprocess():
    code = textwrap.dedent("""
        import jax, numpy as np
        jax.config.update("jax_enable_x64", True)
        from sklearn import metrics as skm
        from aeclust_jax import metrics as M
        rng = np.random.default_rng(2)
        t, p = rng.integers(0, 6, 5000), rng.integers(-2, 9, 5000)
        for a in M.AVERAGES:
            v = M.nmi(t, p, a)
            assert v.dtype == np.float64, v.dtype
            assert abs(float(v) - skm.normalized_mutual_info_score(t, p, average_method=a)) < 1e-12
        assert abs(float(M.ari(t, p)) - skm.adjusted_rand_score(t, p)) < 1e-12
        assert abs(float(jax.jit(M.ari)(t, p)) - skm.adjusted_rand_score(t, p)) < 1e-12
        print("ok")
    """)
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert out.returncode == 0 and "ok" in out.stdout, out.stderr


def test_bad_input():
    with pytest.raises(ValueError, match="differ in length"):
        M.nmi([0, 1], [0, 1, 2])
    with pytest.raises(ValueError, match="integers"):
        M.ari([0.5, 1.0], [0, 1])
    with pytest.raises(ValueError, match="average must be one of"):
        M.nmi([0, 1], [0, 1], average="harmonic")
    with pytest.raises(TypeError, match="cannot be traced"):
        jax.jit(M.acc)(np.array([0, 1]), np.array([0, 1]))


@settings(max_examples=25, deadline=None)
@given(st.integers(1, 3), st.integers(2, 9), st.integers(1, 3), st.integers(0, 2**31 - 1))
def test_psnr_matches_skimage(n, hw, c, seed):
    rng = np.random.default_rng(seed)
    x = rng.random((n, hw, hw, c)).astype(np.float32)
    y = np.clip(x + rng.normal(0, 0.1, x.shape), 0, 1).astype(np.float32)
    got = np.asarray(M.psnr(x, y))
    want = [peak_signal_noise_ratio(x[i], y[i], data_range=1.0) for i in range(n)]
    np.testing.assert_allclose(got, want, rtol=1e-4)
    got255 = np.asarray(M.psnr(x * 255, y * 255, max_val=255.0))
    np.testing.assert_allclose(got255, want, rtol=1e-4)


def test_psnr_identical_is_inf_and_shape_checked():
    x = np.random.default_rng(0).random((2, 4, 4, 1))
    assert np.all(np.isinf(np.asarray(M.psnr(x, x))))
    with pytest.raises(ValueError, match="differ in shape"):
        M.psnr(x, x[:1])
