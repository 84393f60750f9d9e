#!/usr/bin/env python
"""K-means benchmark: aeclust_jax.cluster.kmeans vs scikit-learn KMeans(algorithm="lloyd"),
scikit-learn-intelex (oneDAL) KMeans, faiss-cpu Kmeans and ott-jax's k_means, same data, same
process, k=10, n_init=10, max_iter=300, tol=1e-4.

    python benchmarks/bench_kmeans.py [--case small|mnist|both] [--repeat 3] [--skip faiss ott ...]

Cases: "small" = 10000 x 30 (S1-latent sized: 10 Gaussian blobs, overlapping); "mnist" = 70000 x
784 MNIST pixels (train + test from $AECLUST_MANUAL_DIR, else uniform random of that shape).
Peers: scikit-learn (required; default threads and pinned to one thread), and, when installed
(the bench extra), sklearnex (``sklearnex.cluster.KMeans`` imported directly: sklearn itself is
not patched), faiss (its own Lloyd: 10 restarts, 300 iterations, no tolerance, full data: its
subsampling to 256 points per centroid is off) and ott-jax (``ott.tools.k_means.k_means``,
jitted, k-means++, same n_init / tol / max_iter). A peer that is not installed is reported as
"missing", one skipped by --skip as "skipped". Each peer's inertia is reported; equal quality =
within 0.5% of scikit-learn's. Warm timings (best of --repeat; mnist: 1), compile
time apart. Last line: JSON with speedup_vs_<peer> = peer time / our time.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import jax
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import (peers_to_time, best_of, emit, first_call, machine, mnist_pixels,  # noqa: E402
                     optional_peers, require_peers, add_speedups, worst_case_speedups)

from aeclust_jax.cluster import kmeans  # noqa: E402

K_CLUSTERS, N_INIT, MAX_ITER, TOL = 10, 10, 300, 1e-4
OPTIONAL = ("sklearnex", "faiss", "ott")


def data(case: str) -> tuple[np.ndarray, str]:
    if case == "small":
        from sklearn.datasets import make_blobs
        x, _ = make_blobs(10000, n_features=30, centers=10, cluster_std=4.0, random_state=0)
        return x.astype(np.float32), "blobs 10000x30"
    x = mnist_pixels()
    if x is not None:
        return x, "MNIST pixels 70000x784"
    return np.random.default_rng(0).random((70000, 784), np.float32), "uniform random 70000x784"


def peer_runs(x: np.ndarray, peers: dict) -> dict:
    """name -> a function returning (inertia, n_iter or None) for each available peer."""
    from sklearn.cluster import KMeans

    def sk():
        m = KMeans(K_CLUSTERS, n_init=N_INIT, max_iter=MAX_ITER, tol=TOL, algorithm="lloyd",
                   random_state=0).fit(x)
        return m.inertia_, m.n_iter_
    runs = {"sklearn": sk}
    if peers.get("sklearnex"):
        from sklearnex.cluster import KMeans as XKMeans

        def skx():
            m = XKMeans(K_CLUSTERS, n_init=N_INIT, max_iter=MAX_ITER, tol=TOL, algorithm="lloyd",
                        random_state=0).fit(x)
            return m.inertia_, m.n_iter_
        runs["sklearnex"] = skx
    if peers.get("faiss"):
        faiss = peers["faiss"]

        def fa():
            km = faiss.Kmeans(x.shape[1], K_CLUSTERS, niter=MAX_ITER, nredo=N_INIT, seed=0,
                              max_points_per_centroid=x.shape[0])
            km.train(x)
            d, _ = km.index.search(x, 1)
            return float(d.sum()), MAX_ITER
        runs["faiss"] = fa
    if peers.get("ott"):
        from ott.tools.k_means import k_means
        run = jax.jit(lambda a, rng: k_means(a, K_CLUSTERS, n_init=N_INIT, tol=TOL,
                                             max_iterations=MAX_ITER, rng=rng))
        xj = jax.numpy.asarray(x)

        def ot():
            o = jax.block_until_ready(run(xj, jax.random.key(0)))
            return float(o.error), int(o.iteration)
        runs["ott"] = ot
    return runs


def bench(case: str, repeat: int, peers: dict, skip: tuple[str, ...]) -> dict:
    x, desc = data(case)
    key = jax.random.key(0)
    out = {"data": desc}

    ours = lambda: kmeans(x, K_CLUSTERS, key=key, n_init=N_INIT, max_iter=MAX_ITER, tol=TOL)  # noqa: E731
    out["ours_first_call_s"], _ = first_call(ours)
    out["ours_s"], r = best_of(ours, repeat)
    out["ours_inertia"], out["ours_n_iter_best"] = float(r.inertia), int(r.n_iter)

    out["load_avg_1m_after_ours"] = machine()["load_avg_1m"]

    runs = peer_runs(x, peers)
    for name in peers_to_time(("sklearn",) + OPTIONAL, runs, skip, out):
        if name == "ott":   # compile apart
            out["ott_first_call_s"], _ = first_call(runs[name])
        out[f"{name}_s"], (inertia, n_iter) = best_of(runs[name], repeat)
        out[f"{name}_inertia"], out[f"{name}_n_iter"] = float(inertia), n_iter
        out[f"load_avg_1m_after_{name}"] = machine()["load_avg_1m"]
        if name == "sklearn":
            # sklearn's OpenMP threads suffer from oversubscription on a loaded machine; one
            # thread is the other fair figure there (both reported).
            from threadpoolctl import threadpool_limits
            with threadpool_limits(1):
                out["sklearn_1thread_s"], _ = best_of(runs[name], repeat)

    add_speedups(out, ("sklearn", "sklearn_1thread") + OPTIONAL)
    for name in OPTIONAL:
        if isinstance(out.get(f"{name}_inertia"), float):
            out[f"{name}_inertia_rel_diff_vs_sklearn"] = out[f"{name}_inertia"] / out["sklearn_inertia"] - 1
    out["inertia_rel_diff_vs_sklearn"] = out["ours_inertia"] / out["sklearn_inertia"] - 1
    return out


def main(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description=__doc__.splitlines()[0])
    p.add_argument("--case", choices=("small", "mnist", "both"), default="both")
    p.add_argument("--repeat", type=int, default=3, help="warm runs, best taken (mnist uses 1)")
    p.add_argument("--skip", nargs="*", default=[], choices=OPTIONAL,
                   help="optional peers not to time (reported as skipped)")
    p.add_argument("--no-faiss", action="store_true", help="same as --skip faiss")
    a = p.parse_args(argv)
    require_peers("sklearn", "threadpoolctl")
    skip = tuple(a.skip) + (("faiss",) if a.no_faiss else ())
    peers = optional_peers(*(n for n in OPTIONAL if n not in skip))
    cases = ["small", "mnist"] if a.case == "both" else [a.case]
    res = {"benchmark": "kmeans", "k": K_CLUSTERS, "n_init": N_INIT, "max_iter": MAX_ITER,
           "tol": TOL, "machine": machine()}
    for c in cases:
        res[c] = bench(c, a.repeat if c == "small" else 1, peers, skip)
        print(c, res[c], flush=True)
    worst_case_speedups(res, cases, ("sklearn_1thread",) + OPTIONAL)
    res["machine"]["load_avg_1m_end"] = machine()["load_avg_1m"]
    emit(res)


if __name__ == "__main__":
    main()
