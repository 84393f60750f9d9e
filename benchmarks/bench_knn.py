#!/usr/bin/env python
"""kNN classification benchmark: aeclust_jax.cluster.knn_classify vs scikit-learn
KNeighborsClassifier(algorithm="brute"), scikit-learn-intelex (oneDAL) KNeighborsClassifier and a
faiss IndexFlatL2 search + majority vote; k=5, same process.

    python benchmarks/bench_knn.py [--case small|mnist|both] [--repeat 3] [--skip sklearnex faiss]

Cases: "small" = 5000 x 128 training rows, 8000 test rows (10 Gaussian classes in 128-D,
feature-like); "mnist" = MNIST pixels, 60000 x 784 train -> 10000 test (from
$AECLUST_MANUAL_DIR, else random data of that shape). sklearnex's classifier is imported directly
(``sklearnex.neighbors``; sklearn itself is not patched). faiss only returns neighbours: the vote
(ties to the smallest label, sklearn's rule) is done in numpy and timed with it. A peer that is
not installed is reported as "missing". Equal quality = the same predictions as scikit-learn
(agreement reported per peer). Warm timings (best of --repeat; mnist: 1), compile apart. Last
line: JSON with speedup_vs_<peer> = peer time / our time; ``speedup`` = vs scikit-learn.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import (add_speedups, best_of, emit, first_call, machine, optional_peers,  # noqa: E402
                     peers_to_time, require_peers, worst_case_speedups)

from aeclust_jax.cluster import knn_classify  # noqa: E402

OPTIONAL = ("sklearnex", "faiss")


def data(case: str):
    if case == "small":
        from sklearn.datasets import make_blobs
        x, y = make_blobs(13000, n_features=128, centers=10, cluster_std=8.0, random_state=0)
        x = x.astype(np.float32)
        return x[:5000], y[:5000], x[5000:], y[5000:], "blobs 5000x128 -> 8000"
    import os
    if os.environ.get("AECLUST_MANUAL_DIR"):
        from aeclust_jax.data import load
        tr, te = load("mnist", "train"), load("mnist", "test")
        f = lambda d: d.images.reshape(len(d.images), -1).astype(np.float32) / 255.0  # noqa: E731
        return f(tr), tr.labels, f(te), te.labels, "MNIST pixels 60000x784 -> 10000"
    rng = np.random.default_rng(0)
    return (rng.random((60000, 784), np.float32), rng.integers(0, 10, 60000),
            rng.random((10000, 784), np.float32), rng.integers(0, 10, 10000),
            "uniform random 60000x784 -> 10000")


def bench(case: str, k: int, repeat: int, peers: dict, skip) -> dict:
    from sklearn.neighbors import KNeighborsClassifier
    tx, ty, qx, qy, desc = data(case)
    out = {"data": desc}
    ours = lambda: knn_classify(tx, ty, qx, k=k)  # noqa: E731
    out["ours_first_call_s"], _ = first_call(ours)
    out["ours_s"], got = best_of(ours, repeat)
    got = np.asarray(got)
    out["load_avg_1m_after_ours"] = machine()["load_avg_1m"]
    runs = {"sklearn": lambda: KNeighborsClassifier(k, algorithm="brute").fit(tx, ty).predict(qx)}
    if peers.get("sklearnex"):
        from sklearnex.neighbors import KNeighborsClassifier as XKNN
        runs["sklearnex"] = lambda: XKNN(k, algorithm="brute").fit(tx, ty).predict(qx)
    if peers.get("faiss"):
        faiss = peers["faiss"]
        classes, yi = np.unique(ty, return_inverse=True)

        def fa():
            index = faiss.IndexFlatL2(tx.shape[1])
            index.add(tx)
            _, idx = index.search(qx, k)
            votes = np.zeros((len(qx), len(classes)), np.int32)
            np.add.at(votes, (np.arange(len(qx))[:, None], yi[idx]), 1)
            return classes[np.argmax(votes, axis=1)]       # ties: the smallest label
        runs["faiss"] = fa
    want = None
    for name in peers_to_time(("sklearn",) + OPTIONAL, runs, skip, out):
        out[f"{name}_s"], pred = best_of(runs[name], repeat)
        pred = np.asarray(pred)
        out[f"load_avg_1m_after_{name}"] = machine()["load_avg_1m"]
        if name == "sklearn":
            want = pred
        else:
            out[f"{name}_agreement_vs_sklearn"] = float(np.mean(pred == want))
    out["agreement"] = float(np.mean(got == want))
    out["ours_test_accuracy"] = float(np.mean(got == qy))
    add_speedups(out, ("sklearn",) + OPTIONAL)
    return out


def main(argv=None):
    ap = argparse.ArgumentParser(allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--case", choices=("small", "mnist", "both"), default="small")
    ap.add_argument("--repeat", type=int, default=3, help="warm runs, best taken (mnist uses 1)")
    ap.add_argument("--k", type=int, default=5)
    ap.add_argument("--skip", nargs="*", default=[], choices=OPTIONAL)
    a = ap.parse_args(argv)
    require_peers("sklearn")
    peers = optional_peers(*(n for n in OPTIONAL if n not in a.skip))
    cases = ["small", "mnist"] if a.case == "both" else [a.case]
    res = {"benchmark": "knn", "k": a.k, "machine": machine()}
    for c in cases:
        res[c] = bench(c, a.k, a.repeat if c == "small" else 1, peers, tuple(a.skip))
        print(c, res[c], flush=True)
    # the keys earlier versions had at the top level (the small case's)
    first = res[cases[0]]
    res.update(ours_s=first["ours_s"], sklearn_s=first["sklearn_s"], agreement=first["agreement"])
    worst_case_speedups(res, cases, OPTIONAL)
    res["machine"]["load_avg_1m_end"] = machine()["load_avg_1m"]
    emit(res)


if __name__ == "__main__":
    main()
