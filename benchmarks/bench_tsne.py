#!/usr/bin/env python
"""t-SNE benchmark on 3000 x 30: each available backend of aeclust_jax.cluster.tsne vs openTSNE
and scikit-learn TSNE, same data, same process, with one quality yardstick (exact KL(P||Q) at
perplexity 30, ``kl_divergence``) for every embedding.

    python benchmarks/bench_tsne.py [--n 3000]

Data: MNIST test images projected on their first 30 principal components (from
$AECLUST_MANUAL_DIR), else 10 Gaussian blobs in 30-D. Schedules: 250 early-exaggeration + 500
iterations for our backends and openTSNE, sklearn's default (1000 iterations, Barnes-Hut).
Timings: one warm run each (the jnp backend is compiled by a first call on the same shape,
reported apart). Last line: JSON with speedup = openTSNE time / time of auto's pick, and per
backend speedups vs openTSNE and vs sklearn.
"""

from __future__ import annotations

import argparse
import pathlib
import sys

import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import best_of, emit, first_call, machine, mnist_pixels, require_peers  # noqa: E402

from aeclust_jax.cluster import kl_divergence, tsne  # noqa: E402
from aeclust_jax.cluster._tsne import available_backends, pick_backend  # noqa: E402


def data(n):
    x = mnist_pixels()
    if x is not None:
        x = x[-10000:][:n]
        x = x - x.mean(0)
        _, _, vt = np.linalg.svd(x, full_matrices=False)
        return (x @ vt[:30].T).astype(np.float32), f"MNIST test PCA-30 {n}x30"
    from sklearn.datasets import make_blobs
    x, _ = make_blobs(n, n_features=30, centers=10, cluster_std=3.0, random_state=0)
    return x.astype(np.float32), f"blobs {n}x30"


def main(argv=None):
    ap = argparse.ArgumentParser(allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                 description=__doc__.splitlines()[0])
    ap.add_argument("--n", type=int, default=3000)
    a = ap.parse_args(argv)
    require_peers("openTSNE", "sklearn")
    import openTSNE
    from sklearn.manifold import TSNE

    x, desc = data(a.n)
    res = {"benchmark": "tsne", "data": desc, "auto_picks": pick_backend(a.n), "machine": machine()}
    runs = {}
    for b in available_backends():
        if b == "jax":
            res["jax_first_call_s"], _ = first_call(lambda: tsne(x, backend="jax", seed=0))
        runs[f"ours_{b}"] = lambda b=b: tsne(x, backend=b, seed=0)
    runs["opentsne"] = lambda: np.asarray(openTSNE.TSNE(random_state=0).fit(x.astype(np.float64)))
    runs["sklearn"] = lambda: TSNE(random_state=0).fit_transform(x)
    for name, fn in runs.items():
        t, y = best_of(fn, 1)
        res[name] = {"s": t, "kl": kl_divergence(x, y)}
        print(name, res[name], flush=True)
    for name in runs:
        if name.startswith("ours_"):
            res[name]["speedup_vs_opentsne"] = res["opentsne"]["s"] / res[name]["s"]
            res[name]["speedup_vs_sklearn"] = res["sklearn"]["s"] / res[name]["s"]
            res[name]["kl_rel_to_opentsne"] = res[name]["kl"] / res["opentsne"]["kl"] - 1
    res["speedup"] = res["opentsne"]["s"] / res[f"ours_{res['auto_picks']}"]["s"]
    res["machine"]["load_avg_1m_end"] = machine()["load_avg_1m"]
    emit(res)


if __name__ == "__main__":
    main()
