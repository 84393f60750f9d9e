"""The S1 pipeline stage by stage: one MNIST training epoch and each evaluation stage, ours vs peers.

    python benchmarks/bench_pipeline.py [--model cae_skip] [--train-limit 60000] [--batch 32]

Stages (ours -> peer, same data, same process):
  epoch    one training epoch (engine: jitted step, uint8 on device)  -> PyTorch eager, same model
  encode   latent + latent_skip + per-image PSNR of the 10000 test images  -> PyTorch eager forward
  tsne     t-SNE of the first 3000 latents (aeclust_jax.cluster.tsne)  -> sklearn.manifold.TSNE
  kmeans   K-means k=10, n_init=10 on the 2-D embedding (aeclust_jax.cluster.kmeans) -> sklearn KMeans
  metrics  NMI + ACC + ARI (aeclust_jax.metrics)  -> sklearn.metrics (+ scipy Hungarian for ACC)
Warm timings: every stage of ours runs once untimed first (compile times reported apart).
The model is untrained (timing only). LAST line: one JSON object; "speedup" = the peers' total
time / our total time.
"""

from __future__ import annotations

import argparse
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import require_peers  # noqa: E402
from bench_train_step import make_torch, mnist_images, torch_model  # noqa: E402

from aeclust_jax import train  # noqa: E402
from aeclust_jax.studies import skip_ae as s1  # noqa: E402


def clock(fn, *args):
    t = time.perf_counter()
    out = fn(*args)
    jax.block_until_ready(out)
    return out, time.perf_counter() - t


def main(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description=__doc__.splitlines()[0])
    p.add_argument("--model", default="cae_skip")
    p.add_argument("--train-limit", type=int, default=60000)
    p.add_argument("--batch", type=int, default=32)
    p.add_argument("--n-cluster", type=int, default=3000)
    p.add_argument("--skip-torch-epoch", action="store_true", help="peer epoch is slow: skip it")
    a = p.parse_args(argv)
    require_peers("torch", "sklearn", "scipy")
    images = mnist_images(a.train_limit)
    from aeclust_jax.data import load
    try:
        test = load("mnist", "test")
        test_images, test_labels = test.images, test.labels
    except Exception:
        test_images, test_labels = images[:10000], np.arange(min(10000, len(images))) % 10
    n = a.n_cluster
    cfg = s1.S1Config(model=a.model, batch_size=a.batch, cluster_limit=n, progress=False)
    model = s1.build_model(cfg, (28, 28, 1))
    mesh = train.make_mesh()
    state = train.create_train_state(model, jax.random.key(0), jnp.zeros((1, 28, 28, 1)),
                                     train.make_optimizer("adadelta", frozen=s1.frozen_params(cfg)),
                                     init_kwargs={"with_latent_skip": True})
    ours, peer, compile_s = {}, {}, {}

    # --- epoch: fit for 2 epochs; epoch 1 includes compilation, epoch 2 is the warm epoch
    res = train.fit(state, {"image": images}, s1.make_loss(model), batch_size=a.batch, epochs=2,
                    key=jax.random.key(1), mesh=mesh, progress=False)
    compile_s["epoch"] = res.history[0]["seconds"] - res.history[1]["seconds"]
    ours["epoch"] = res.history[1]["seconds"]
    params = res.state.params
    if not a.skip_torch_epoch:
        run = make_torch(a.model, images, a.batch)
        steps = -(-len(images) // a.batch)
        _, peer["epoch"] = clock(run, steps)

    # --- encode
    enc = lambda: s1.encode(model, params, test_images, batch_size=1000, mesh=mesh)
    _, first = clock(enc)
    out, ours["encode"] = clock(enc)
    compile_s["encode"] = first - ours["encode"]
    import torch
    tx = torch.from_numpy(np.ascontiguousarray(test_images.transpose(0, 3, 1, 2)))
    net = torch_model(a.model).eval()

    def torch_forward():
        with torch.no_grad():
            for i in range(0, len(tx), 1000):
                x = tx[i:i + 1000].float() / 255
                r = net(x)
                ((r - x) ** 2).mean(dim=(1, 2, 3))
    torch_forward()
    _, peer["encode"] = clock(torch_forward)

    # --- tsne
    lat = out["latent"][:n].astype(np.float32)
    emb, ours["tsne"] = clock(lambda: s1._tsne(lat, cfg))
    from sklearn.manifold import TSNE
    _, peer["tsne"] = clock(lambda: TSNE(n_components=2, random_state=0).fit_transform(lat))

    # --- kmeans
    from aeclust_jax.cluster import kmeans
    km = lambda: kmeans(jnp.asarray(emb), 10, key=jax.random.key(0), n_init=10).labels
    _, first = clock(km)
    pred, ours["kmeans"] = clock(km)
    compile_s["kmeans"] = first - ours["kmeans"]
    from sklearn.cluster import KMeans
    _, peer["kmeans"] = clock(lambda: KMeans(10, n_init=10, random_state=0).fit(emb).labels_)

    # --- metrics
    from aeclust_jax.metrics import acc, ari, nmi
    labels, pred = np.asarray(test_labels[:n]), np.asarray(pred)
    met = lambda: (float(nmi(labels, pred)), acc(labels, pred), float(ari(labels, pred)))
    met()
    _, ours["metrics"] = clock(met)
    from scipy.optimize import linear_sum_assignment
    from sklearn import metrics as skm

    def sk_metrics():
        t = skm.confusion_matrix(labels, pred)
        r, c = linear_sum_assignment(-t)
        return (skm.normalized_mutual_info_score(labels, pred), t[r, c].sum() / t.sum(),
                skm.adjusted_rand_score(labels, pred))
    _, peer["metrics"] = clock(sk_metrics)

    for k in ours:
        pk = peer.get(k)
        print(f"{k:8s} ours {ours[k]:8.2f}s  peer {pk if pk is None else round(pk, 2)}s"
              + (f"  speedup {pk / ours[k]:.2f}x" if pk else ""))
    common = [k for k in ours if k in peer]
    report = {"benchmark": "pipeline", "model": a.model, "train_images": len(images), "batch": a.batch,
              "n_cluster": n, "platform": jax.devices()[0].platform, "ours_s": ours, "peer_s": peer,
              "compile_s": compile_s,
              "epoch_images_per_s": len(images) / ours["epoch"],
              "speedup_per_stage": {k: peer[k] / ours[k] for k in common},
              "speedup": sum(peer[k] for k in common) / sum(ours[k] for k in common)}
    print(json.dumps(report))


if __name__ == "__main__":
    main()
