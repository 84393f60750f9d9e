#!/usr/bin/env python
"""Spectral clustering benchmark on a 1440-node affinity (COIL-20 sized, S4): ours
(dsc_affinity + spectral) vs DSC-Net's numpy/scipy/scikit-learn way (thrC loop + svds post_proC +
SpectralClustering(affinity="precomputed", assign_labels="discretize")), same data, same process;
and (--case mnist_knn) on the sparse kNN graph of the MNIST test images.

    python benchmarks/bench_spectral.py [--case dsc|mnist_knn|both] [--repeat 3]

Case mnist_knn: the 10000 MNIST test images ($AECLUST_MANUAL_DIR; uniform random pixels and
random labels when unset), 784 pixels / 255 reduced by PCA to 50 dims (numpy SVD, not timed),
the 10-NN connectivity graph with the point itself (kneighbors_graph(include_self=True)),
symmetrised 0.5 (A + A^T): the affinity of SpectralClustering(affinity="nearest_neighbors").
Times: graph construction (ours ``knn_graph`` vs sklearn ``kneighbors_graph`` + symmetrise) and,
on the SAME graph (sklearn's), graph -> labels: ours ``spectral`` (sparse path) with each solver
(solver="chebyshev": jnp Chebyshev-filtered subspace iteration; solver="eigsh": scipy ARPACK;
``ours_s`` is the one solver="auto" picks on this backend: eigsh on CPU, chebyshev on a GPU) vs
SpectralClustering(10, affinity="precomputed", assign_labels="kmeans", random_state=0) with its
default threads and pinned to one BLAS/OpenMP thread; assign_labels="discretize" once for its
quality. ACC / NMI of each vs the true digits. speedup = sklearn (default threads) / ours.
With --case both the top-level ``speedup`` stays the dsc case's; mnist_knn's is under its key.

Ours: ``spectral`` with its default solver (shift-invert subspace iteration, float64 on the
host) and with the full jnp eigh (``ours_eigh_*``).
Data: 20 clusters x 72 points on random 4-D subspaces of R^60 (noise 0.05), and a ridge
self-expression C = (X X^T + 0.1 I)^-1 X X^T as DSC's L2 self-expressive layer would learn. Times:
(a) spectral clustering of the same affinity L (the issue's target), (b) the post-processing
C -> L, ours (eigh) vs the published numpy (svds), plus our randomized-SVD alternative. Accuracy
of both label sets vs the true clusters (Hungarian). Warm timings; compile apart. Last line: JSON.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import best_of, emit, first_call, machine, mnist_pixels, require_peers  # noqa: E402

from aeclust_jax import metrics  # noqa: E402
from aeclust_jax.cluster import dsc_affinity, knn_graph, spectral  # noqa: E402
from aeclust_jax.cluster.reference import post_proC_affinity, thrC  # noqa: E402
from aeclust_jax.cluster._spectral import sparse_auto_solver  # noqa: E402

K, PER, D, ALPHA, RO = 20, 72, 12, 8.0, 0.04


def data(seed=0):
    rng = np.random.default_rng(seed)
    x = np.concatenate([rng.normal(size=(PER, 4)) @ rng.normal(size=(4, 60)) for _ in range(K)])
    x += 0.05 * rng.normal(size=x.shape)
    g = x @ x.T
    c = np.linalg.solve(g + 0.1 * np.eye(len(x)), g)
    return c.astype(np.float32), np.repeat(np.arange(K), PER)


@jax.jit
def randomized_post_pro(c, key):
    """The alternative to full eigh: rank-r randomized range finder (r + 10 columns, 2 power
    iterations) then eigh of the small projected matrix."""
    from aeclust_jax.cluster._spectral import threshold_columns
    r = D * K + 1
    c = threshold_columns(c, RO)
    c = 0.5 * (c + c.T)
    q = jax.random.normal(key, (c.shape[0], r + 10), c.dtype)
    for _ in range(2):
        q, _ = jnp.linalg.qr(c @ q)
    w, v = jnp.linalg.eigh(q.T @ c @ q)
    top = jnp.argsort(-jnp.abs(w))[:r]
    u = (q @ v[:, top]) * jnp.sqrt(jnp.abs(w[top]))
    u = u / jnp.linalg.norm(u, axis=1, keepdims=True)
    z = jnp.maximum(u @ u.T, 0.0)
    l = z ** ALPHA
    l = l / l.max()
    return 0.5 * (l + l.T)


def bench_dsc(repeat: int) -> dict:
    """The 1440-node DSC affinity case (the keys of the JSON's top level)."""
    from sklearn.cluster import SpectralClustering

    c, y = data()
    res = {"n": len(y), "k": K}
    L = np.asarray(dsc_affinity(c, K, d=D, alpha=ALPHA, ro=RO))
    key = jax.random.key(0)

    ours = lambda: spectral(L, K, key=key)  # noqa: E731
    res["ours_first_call_s"], _ = first_call(ours)
    res["ours_s"], lab = best_of(ours, repeat)
    peer = lambda: SpectralClustering(K, affinity="precomputed", assign_labels="discretize",  # noqa: E731
                                      random_state=0).fit_predict(L)
    res["sklearn_s"], lab_sk = best_of(peer, repeat)
    full = lambda: spectral(L, K, key=key, solver="eigh")  # noqa: E731  the full-eigh solver
    first_call(full)
    res["ours_eigh_s"], lab_eigh = best_of(full, repeat)
    res["ours_eigh_acc"] = metrics.acc(y, lab_eigh)
    res["ours_acc"], res["sklearn_acc"] = metrics.acc(y, lab), metrics.acc(y, lab_sk)
    res["ours_nmi"], res["sklearn_nmi"] = float(metrics.nmi(y, lab)), float(metrics.nmi(y, lab_sk))
    res["speedup"] = res["sklearn_s"] / res["ours_s"]
    res["speedup_eigh_solver"] = res["sklearn_s"] / res["ours_eigh_s"]

    post = lambda: dsc_affinity(c, K, d=D, alpha=ALPHA, ro=RO)  # noqa: E731
    res["post_ours_first_call_s"], _ = first_call(post)
    res["post_ours_eigh_s"], _ = best_of(post, repeat)
    rnd = lambda: randomized_post_pro(jnp.asarray(c), key)  # noqa: E731
    first_call(rnd)
    res["post_ours_randomized_s"], L_rnd = best_of(rnd, repeat)
    res["post_randomized_max_abs_diff"] = float(np.abs(np.asarray(L_rnd) - L).max())
    c64 = c.astype(np.float64)
    res["post_numpy_s"], L_np = best_of(lambda: post_proC_affinity(thrC(c64, RO), K, D, ALPHA), 1)
    res["post_max_abs_diff_vs_numpy"] = float(np.abs(L_np - L).max())
    res["post_speedup"] = res["post_numpy_s"] / res["post_ours_eigh_s"]
    return res


MNIST_N, MNIST_PCA, MNIST_NEIGHBORS, MNIST_K = 10000, 50, 10, 10


def mnist_knn_data() -> tuple[np.ndarray, np.ndarray, str]:
    """(PCA-50 features (10000, 50) float32, labels (10000,), description)."""
    x = mnist_pixels()
    if x is not None:
        from aeclust_jax.data import load
        x, y, desc = x[-MNIST_N:], load("mnist", "test").labels, "MNIST test 10000 x 784 pixels"
    else:
        rng = np.random.default_rng(0)
        x = rng.random((MNIST_N, 784), np.float32)
        y, desc = rng.integers(0, MNIST_K, MNIST_N), "uniform random 10000 x 784 (random labels)"
    x = x - x.mean(axis=0)
    _, _, vt = np.linalg.svd(x, full_matrices=False)
    return (x @ vt[:MNIST_PCA].T).astype(np.float32), np.asarray(y), desc + f" -> PCA {MNIST_PCA}"


def bench_mnist_knn(repeat: int) -> dict:
    """Spectral clustering of the 10-NN graph of MNIST test features: ours vs sklearn."""
    from sklearn.cluster import SpectralClustering
    from sklearn.neighbors import kneighbors_graph
    from threadpoolctl import threadpool_limits

    z, y, desc = mnist_knn_data()
    out = {"data": desc, "n": len(y), "k": MNIST_K, "n_neighbors": MNIST_NEIGHBORS,
           "load_avg_1m_start": machine()["load_avg_1m"]}

    def sk_graph():
        a = kneighbors_graph(z, MNIST_NEIGHBORS, include_self=True)
        return 0.5 * (a + a.T)
    ours_graph = lambda: knn_graph(z, MNIST_NEIGHBORS)  # noqa: E731
    out["graph_ours_first_call_s"], _ = first_call(ours_graph)
    out["graph_ours_s"], g_ours = best_of(ours_graph, repeat)
    out["graph_sklearn_s"], g = best_of(sk_graph, repeat)
    out["graph_nnz"] = int(g.nnz)
    out["graph_entries_differing"] = int((abs(g_ours - g) > 0).nnz)
    out["graph_speedup"] = out["graph_sklearn_s"] / out["graph_ours_s"]

    key = jax.random.key(0)
    for solver in ("chebyshev", "eigsh"):
        run = lambda: spectral(g, MNIST_K, key=key, solver=solver)  # noqa: E731
        out[f"ours_{solver}_first_call_s"], _ = first_call(run)
        out[f"ours_{solver}_s"], lab = best_of(run, repeat)
        out[f"ours_{solver}_acc"] = metrics.acc(y, lab)
        out[f"ours_{solver}_nmi"] = float(metrics.nmi(y, lab))
    out["auto_picks"] = pick = sparse_auto_solver()           # solver="auto" on this backend
    for what in ("s", "acc", "nmi", "first_call_s"):
        out[f"ours_{what}"] = out[f"ours_{pick}_{what}"]
    out["load_avg_1m_after_ours"] = machine()["load_avg_1m"]

    def peer(assign="kmeans"):
        return SpectralClustering(MNIST_K, affinity="precomputed", assign_labels=assign,
                                  random_state=0).fit_predict(g)
    out["sklearn_s"], lab = best_of(peer, repeat)
    out["sklearn_acc"], out["sklearn_nmi"] = metrics.acc(y, lab), float(metrics.nmi(y, lab))
    with threadpool_limits(1):
        out["sklearn_1thread_s"], _ = best_of(peer, repeat)
    out["sklearn_discretize_s"], lab = best_of(lambda: peer("discretize"), 1)
    out["sklearn_discretize_acc"] = metrics.acc(y, lab)
    out["sklearn_discretize_nmi"] = float(metrics.nmi(y, lab))
    out["load_avg_1m_end"] = machine()["load_avg_1m"]
    out["speedup"] = out["sklearn_s"] / out["ours_s"]
    out["speedup_vs_sklearn_1thread"] = out["sklearn_1thread_s"] / out["ours_s"]
    for solver in ("chebyshev", "eigsh"):
        out[f"speedup_{solver}_solver"] = out["sklearn_s"] / out[f"ours_{solver}_s"]
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=("dsc", "mnist_knn", "both"), default="dsc")
    ap.add_argument("--repeat", type=int, default=3)
    a = ap.parse_args(argv)
    require_peers("sklearn", "scipy")

    res = {"benchmark": "spectral", "machine": machine()}
    if a.case in ("dsc", "both"):
        res.update(bench_dsc(a.repeat))
    if a.case in ("mnist_knn", "both"):
        res["mnist_knn"] = bench_mnist_knn(a.repeat)
        print("mnist_knn", res["mnist_knn"], flush=True)
        if a.case == "mnist_knn":
            res["speedup"] = res["mnist_knn"]["speedup"]
    res["machine"]["load_avg_1m_end"] = machine()["load_avg_1m"]
    emit(res)


if __name__ == "__main__":
    main()
