#!/usr/bin/env python
"""K-means benchmark: aeclust_jax.cluster.kmeans vs scikit-learn KMeans(algorithm="lloyd") and
faiss-cpu Kmeans, same data, same process, k=10, n_init=10, max_iter=300, tol=1e-4.

    python benchmarks/bench_kmeans.py [--case small|mnist|both] [--repeat 3]

Cases: "small" = 10000 x 30 (S1-latent sized: 10 Gaussian blobs, overlapping); "mnist" = 70000 x
784 MNIST pixels (train + test from $AECLUST_MANUAL_DIR, else uniform random of that shape).
faiss runs its own Lloyd (10 restarts, 300 iterations, no tolerance, full data: its default
subsampling to 256 points per centroid is switched off so that all three fit the same problem).
Ours is also timed with the restarts batched by vmap (the design alternative; see
docs/cluster.md). Warm timings (best of --repeat); compile time apart. Last line: JSON.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import best_of, emit, first_call, machine, mnist_pixels  # noqa: E402

from aeclust_jax.cluster import _kmeans as K  # noqa: E402
from aeclust_jax.cluster import kmeans  # noqa: E402

K_CLUSTERS, N_INIT, MAX_ITER, TOL = 10, 10, 300, 1e-4


def data(case: str) -> tuple[np.ndarray, str]:
    if case == "small":
        from sklearn.datasets import make_blobs
        x, _ = make_blobs(10000, n_features=30, centers=10, cluster_std=4.0, random_state=0)
        return x.astype(np.float32), "blobs 10000x30"
    x = mnist_pixels()
    if x is not None:
        return x, "MNIST pixels 70000x784"
    return np.random.default_rng(0).random((70000, 784), np.float32), "uniform random 70000x784"


def ours_vmap(x, key):
    """The alternative: all restarts in one vmapped while_loop (runs as long as the slowest)."""
    xc = x - x.mean(0)
    x_sq = (xc * xc).sum(1)
    tol = float(np.var(x, 0).mean() * TOL)
    block = K._block_rows(x.shape[0], K_CLUSTERS)
    run = jax.jit(jax.vmap(lambda k: K._single.__wrapped__(xc, x_sq, tol, k, K_CLUSTERS, MAX_ITER,
                                                          "k-means++", block)))
    keys = jax.random.split(key, N_INIT)
    return lambda: run(keys)


def bench(case: str, repeat: int) -> dict:
    x, desc = data(case)
    key = jax.random.key(0)
    out = {"data": desc}

    ours = lambda: kmeans(x, K_CLUSTERS, key=key, n_init=N_INIT, max_iter=MAX_ITER, tol=TOL)  # noqa: E731
    out["ours_first_call_s"], _ = first_call(ours)
    out["ours_s"], r = best_of(ours, repeat)
    out["ours_inertia"] = float(r.inertia)

    vm = ours_vmap(jax.numpy.asarray(x), key)
    first, _ = first_call(vm)
    out["ours_vmap_s"], rv = best_of(vm, 1)
    out["ours_vmap_inertia"] = float(rv.inertia.min())

    from sklearn.cluster import KMeans
    sk = lambda: KMeans(K_CLUSTERS, n_init=N_INIT, max_iter=MAX_ITER, tol=TOL, algorithm="lloyd",  # noqa: E731
                        random_state=0).fit(x)
    out["sklearn_s"], m = best_of(sk, repeat)
    out["sklearn_inertia"] = float(m.inertia_)
    # sklearn's OpenMP threads suffer badly from oversubscription on a loaded machine; one
    # thread is the fairer peer there (both figures reported).
    from threadpoolctl import threadpool_limits
    with threadpool_limits(1):
        out["sklearn_1thread_s"], _ = best_of(sk, repeat)

    try:
        import faiss

        def fa():
            km = faiss.Kmeans(x.shape[1], K_CLUSTERS, niter=MAX_ITER, nredo=N_INIT, seed=0,
                              max_points_per_centroid=x.shape[0])
            km.train(x)
            d, _ = km.index.search(x, 1)
            return float(d.sum())
        out["faiss_s"], out["faiss_inertia"] = best_of(fa, repeat)
    except ImportError:
        out["faiss_s"] = None

    out["speedup_vs_sklearn"] = out["sklearn_s"] / out["ours_s"]
    out["speedup_vs_sklearn_1thread"] = out["sklearn_1thread_s"] / out["ours_s"]
    out["speedup_vs_faiss"] = out["faiss_s"] / out["ours_s"] if out.get("faiss_s") else None
    out["inertia_rel_diff_vs_sklearn"] = out["ours_inertia"] / out["sklearn_inertia"] - 1
    if out.get("faiss_s"):
        out["inertia_rel_diff_vs_faiss"] = out["ours_inertia"] / out["faiss_inertia"] - 1
    return out


def main(argv=None):
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=("small", "mnist", "both"), default="both")
    p.add_argument("--repeat", type=int, default=3, help="warm runs, best taken (mnist uses 1)")
    a = p.parse_args(argv)
    cases = ["small", "mnist"] if a.case == "both" else [a.case]
    res = {"benchmark": "kmeans", "k": K_CLUSTERS, "n_init": N_INIT, "max_iter": MAX_ITER,
           "tol": TOL, "machine": machine()}
    for c in cases:
        res[c] = bench(c, a.repeat if c == "small" else 1)
        print(c, res[c], flush=True)
    res["speedup"] = min(res[c]["speedup_vs_sklearn"] for c in cases)
    res["speedup_vs_sklearn_1thread"] = min(res[c]["speedup_vs_sklearn_1thread"] for c in cases)
    res["machine"]["load_avg_1m_end"] = machine()["load_avg_1m"]
    emit(res)


if __name__ == "__main__":
    main()
