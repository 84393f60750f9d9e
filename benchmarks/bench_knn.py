#!/usr/bin/env python
"""kNN classification benchmark: aeclust_jax.cluster.knn_classify vs scikit-learn
KNeighborsClassifier(algorithm="brute"), 5000 x 128 training rows, 8000 test rows, k=5.

    python benchmarks/bench_knn.py [--repeat 3]

Data: 10 Gaussian classes in 128-D (feature-like). Warm timings (best of --repeat), compile
apart; both predictions compared. Last line: JSON.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import best_of, emit, first_call, machine, require_peers  # noqa: E402

from aeclust_jax.cluster import knn_classify  # noqa: E402


def main(argv=None):
    ap = argparse.ArgumentParser(allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--repeat", type=int, default=3)
    ap.add_argument("--k", type=int, default=5)
    a = ap.parse_args(argv)
    require_peers("sklearn")
    from sklearn.datasets import make_blobs
    from sklearn.neighbors import KNeighborsClassifier

    x, y = make_blobs(13000, n_features=128, centers=10, cluster_std=8.0, random_state=0)
    x = x.astype(np.float32)
    tx, ty, qx, qy = x[:5000], y[:5000], x[5000:], y[5000:]
    ours = lambda: knn_classify(tx, ty, qx, k=a.k)  # noqa: E731
    res = {"benchmark": "knn", "train": list(tx.shape), "test": list(qx.shape), "k": a.k,
           "machine": machine()}
    res["ours_first_call_s"], _ = first_call(ours)
    res["ours_s"], got = best_of(ours, a.repeat)
    sk = lambda: KNeighborsClassifier(a.k, algorithm="brute").fit(tx, ty).predict(qx)  # noqa: E731
    res["sklearn_s"], want = best_of(sk, a.repeat)
    res["agreement"] = float(np.mean(np.asarray(got) == want))
    res["ours_test_accuracy"] = float(np.mean(np.asarray(got) == qy))
    res["speedup"] = res["sklearn_s"] / res["ours_s"]
    res["machine"]["load_avg_1m_end"] = machine()["load_avg_1m"]
    emit(res)


if __name__ == "__main__":
    main()
