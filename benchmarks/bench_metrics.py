#!/usr/bin/env python
"""Metrics benchmark: aeclust_jax.metrics vs scikit-learn / numpy references on 10^6 labels.

    python benchmarks/bench_metrics.py [--n 1000000] [--k 10] [--repeat 5]

Peers: sklearn normalized_mutual_info_score and adjusted_rand_score; for acc, pairwise F and
BCubed F the usual numpy implementations: sklearn's contingency_matrix + scipy
linear_sum_assignment (acc) and closed forms over that table (pairwise, BCubed). Labels: 10
classes, predictions agreeing 70% of the time. Warm timings (best of --repeat); the first call
(compiles) reported apart. Last line: JSON, "speedup" = geometric mean over the five metrics.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import best_of, emit, first_call, machine, require_peers  # noqa: E402

from aeclust_jax import metrics  # noqa: E402


def np_table(t, p):
    from sklearn.metrics.cluster import contingency_matrix
    return contingency_matrix(t, p).astype(np.float64)


def np_acc(t, p):
    from scipy.optimize import linear_sum_assignment
    c = np_table(t, p)
    r, k = linear_sum_assignment(-c)
    return c[r, k].sum() / len(t)


def np_pairwise_f(t, p):
    c = np_table(t, p)
    tp = (c * (c - 1) / 2).sum()
    a, b = c.sum(1), c.sum(0)
    prec, rec = tp / (b * (b - 1) / 2).sum(), tp / (a * (a - 1) / 2).sum()
    return 2 * prec * rec / (prec + rec)


def np_bcubed_f(t, p):
    c = np_table(t, p)
    a, b = c.sum(1, keepdims=True), c.sum(0, keepdims=True)
    prec, rec = (c * c / b).sum() / len(t), (c * c / a).sum() / len(t)
    return 2 * prec * rec / (prec + rec)


def main(argv=None):
    ap = argparse.ArgumentParser(allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=1_000_000)
    ap.add_argument("--k", type=int, default=10)
    ap.add_argument("--repeat", type=int, default=5)
    a = ap.parse_args(argv)
    require_peers("sklearn", "scipy")
    from sklearn import metrics as skm

    rng = np.random.default_rng(0)
    t = rng.integers(0, a.k, a.n)
    p = np.where(rng.random(a.n) < 0.7, t, rng.integers(0, a.k, a.n))
    pairs = {
        "nmi": (metrics.nmi, skm.normalized_mutual_info_score),
        "ari": (metrics.ari, skm.adjusted_rand_score),
        "acc": (metrics.acc, np_acc),
        "pairwise_f": (metrics.pairwise_f, np_pairwise_f),
        "bcubed_f": (metrics.bcubed_f, np_bcubed_f),
    }
    res = {"benchmark": "metrics", "n": a.n, "k": a.k, "machine": machine()}
    speedups = []
    for name, (ours, peer) in pairs.items():
        first, _ = first_call(lambda: ours(t, p))
        t_ours, v_ours = best_of(lambda: ours(t, p), a.repeat)
        t_peer, v_peer = best_of(lambda: peer(t, p), a.repeat)
        res[name] = {"ours_s": t_ours, "ours_first_call_s": first, "peer_s": t_peer,
                     "speedup": t_peer / t_ours, "ours": float(v_ours), "peer": float(v_peer),
                     "abs_diff": abs(float(v_ours) - float(v_peer))}
        speedups.append(t_peer / t_ours)
        print(name, res[name], flush=True)
    res["speedup"] = float(np.exp(np.mean(np.log(speedups))))
    res["speedup_min"] = min(speedups)
    res["machine"]["load_avg_1m_end"] = machine()["load_avg_1m"]
    emit(res)


if __name__ == "__main__":
    main()
