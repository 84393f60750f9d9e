#!/usr/bin/env python
"""S4 benchmark: DSC fine-tune + post-processing + spectral clustering, ours (JAX) vs DSC-Net's way
(PyTorch CPU network of the same shape + numpy/scipy/scikit-learn post-processing), same data,
same pretrained weights, same process.

    python benchmarks/bench_dsc.py [--channels 15] [--pretrain-epochs 20] [--finetune-iters 40]

The peer follows DSC-Net's public code (XifengGuo/DSC-Net): Conv2d + same-pad, ConvTranspose2d +
crop, a self-expression Linear(N, N, bias=False) weight C = 1e-8, Adam, full batch, then
``thrC`` (a Python loop over the columns of C) and ``post_proC`` (scipy ``svds``, sklearn
``normalize`` and ``SpectralClustering(affinity='precomputed', assign_labels='discretize')``).
Ours: ``studies.dsc`` fine-tune (jitted step) + ``cluster.dsc_affinity`` + ``cluster.spectral``.
Timings are warm (compile time reported apart). The pretraining (ours only; the peer gets the
same weights) is timed too. Last line: one JSON object with the figures and ``speedup``.
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import pathlib
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parent))
from _common import require_peers  # noqa: E402

from aeclust_jax.cluster.reference import post_proC, thrC  # noqa: E402


# ----------------------------------------------------------------------------- the peer
def torch_peer(channels: int, image_channels: int, n: int, weights: dict, c_init: float):
    """DSC-Net's PyTorch COIL-20 network (one conv layer) with the given flax weights."""
    import torch
    import torch.nn.functional as F

    class Peer(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.enc = torch.nn.Conv2d(image_channels, channels, 3, stride=2)
            self.dec = torch.nn.ConvTranspose2d(channels, image_channels, 3, stride=2)
            self.C = torch.nn.Parameter(torch.full((n, n), c_init))

        def forward(self, x):                      # x (N, C, H, W)
            z4 = F.relu(self.enc(F.pad(x, (0, 1, 0, 1))))   # TF/flax SAME for stride 2, k 3
            z = z4.reshape(n, -1)
            z_c = self.C @ z
            y = F.relu(self.dec(z_c.reshape(z4.shape)))
            return y[:, :, :x.shape[2], :x.shape[3]], z, z_c

    m = Peer()
    enc, dec = weights["encoder"]["conv0"], weights["decoder"]["deconv0"]
    with torch.no_grad():
        m.enc.weight.copy_(torch.from_numpy(np.asarray(enc["kernel"]).transpose(3, 2, 0, 1).copy()))
        m.enc.bias.copy_(torch.from_numpy(np.array(enc["bias"])))
        k = np.asarray(dec["kernel"])[::-1, ::-1]           # flax: (kh, kw, in, out), unflipped
        m.dec.weight.copy_(torch.from_numpy(k.transpose(2, 3, 0, 1).copy()))
        m.dec.bias.copy_(torch.from_numpy(np.array(dec["bias"])))
    return m


def peer_finetune(model, x_nchw, iters: int, lambda1: float, lambda2: float, lr: float):
    import torch

    opt = torch.optim.Adam(model.parameters(), lr=lr)
    for _ in range(iters):
        x_hat, z, z_c = model(x_nchw)
        loss = (0.5 * ((x_hat - x_nchw) ** 2).sum() + lambda1 * (model.C ** 2).sum()
                + lambda2 / 2 * ((z - z_c) ** 2).sum())
        opt.zero_grad()
        loss.backward()
        opt.step()
    return model.C.detach().numpy()


# ----------------------------------------------------------------------------- main
def main(argv=None) -> dict:
    p = argparse.ArgumentParser(allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description=__doc__.split("\n\n")[0])
    p.add_argument("--channels", type=int, default=15, help="latent channels c (16x16xc)")
    p.add_argument("--pretrain-epochs", type=int, default=20)
    p.add_argument("--finetune-iters", type=int, default=40)
    p.add_argument("--threads", type=int, default=0, help="torch threads (0: torch's default)")
    p.add_argument("--seed", type=int, default=0)
    a = p.parse_args(argv)
    require_peers("torch", "sklearn", "scipy")
    import torch

    from aeclust_jax.cluster import dsc_affinity, spectral
    from aeclust_jax.data import load
    from aeclust_jax.metrics import acc, nmi
    from aeclust_jax.studies import dsc

    if a.threads:
        torch.set_num_threads(a.threads)
    ds = load("coil20")
    x = dsc.as_float_images(ds.images)
    y = ds.labels
    n, k = len(x), int(ds.num_classes)
    cfg = dsc.preset("coil20", channels=(a.channels,), pretrain_epochs=a.pretrain_epochs,
                     finetune_iters=a.finetune_iters)
    k_pre, k_fine, k_cluster = jax.random.split(jax.random.key(a.seed), 3)

    # Pretraining (ours; the peer starts from the same weights).
    t = time.perf_counter()
    ae, pre_s = dsc.pretrain(x, cfg, k_pre, progress=False)
    pre_wall = time.perf_counter() - t

    # Ours: fine-tune through train.fit, compile apart (a 1-iteration run compiles the same step).
    model, params0 = dsc.init_finetune_params(x, ae, cfg, k_fine)
    xd = jnp.asarray(x)
    t = time.perf_counter()
    dsc.finetune(x, ae, dataclasses.replace(cfg, finetune_iters=1), k_fine, progress=False)
    step_compile = time.perf_counter() - t
    t = time.perf_counter()
    params, _ = dsc.finetune(x, ae, cfg, k_fine, progress=False)
    c_ours = jax.block_until_ready(params["C"])
    ours_ft = time.perf_counter() - t

    # Ours: post-processing + spectral (first call compiles; then warm).
    def cluster_once(c):
        aff = dsc_affinity(c, k, d=cfg.d, alpha=cfg.alpha, ro=cfg.ro)
        return jax.block_until_ready(spectral(aff, k, key=k_cluster))
    t = time.perf_counter()
    cluster_once(c_ours)
    cluster_first = time.perf_counter() - t
    t = time.perf_counter()
    labels_ours = np.asarray(cluster_once(c_ours))
    ours_cl = time.perf_counter() - t

    # Peer: same initial weights, same iterations, then DSC-Net's post-processing.
    peer = torch_peer(a.channels, x.shape[-1], n, jax.device_get(ae), cfg.c_init)
    x_nchw = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2)))
    with torch.no_grad():     # forward parity of the two networks at the pretrained weights
        ours_rec = np.asarray(model.apply({"params": params0}, xd, method=dsc.DSCNet.reconstruct))
        z4 = torch.relu(peer.enc(torch.nn.functional.pad(x_nchw, (0, 1, 0, 1))))
        peer_rec = torch.relu(peer.dec(z4))[:, :, :32, :32].numpy().transpose(0, 2, 3, 1)
    parity = float(np.abs(ours_rec - peer_rec).max())
    peer_finetune(torch_peer(a.channels, x.shape[-1], n, jax.device_get(ae), cfg.c_init),
                  x_nchw, 1, cfg.lambda1, cfg.lambda2, cfg.finetune_lr)       # warm-up
    t = time.perf_counter()
    c_peer = peer_finetune(peer, x_nchw, cfg.finetune_iters, cfg.lambda1, cfg.lambda2,
                           cfg.finetune_lr)
    peer_ft = time.perf_counter() - t
    t = time.perf_counter()
    labels_peer = post_proC(thrC(c_peer.astype(np.float64), cfg.ro), k, cfg.d, cfg.alpha, a.seed)
    peer_cl = time.perf_counter() - t

    res = {
        "bench": "dsc", "dataset": "coil20", "n": n, "latent": f"16x16x{a.channels}",
        "finetune_iters": cfg.finetune_iters, "pretrain_epochs": cfg.pretrain_epochs,
        "pretrain_seconds": pre_s, "pretrain_wall_seconds": pre_wall,
        "pretrain_seconds_per_epoch": pre_s / max(1, cfg.pretrain_epochs),
        "ours_finetune_seconds": ours_ft, "ours_cluster_seconds": ours_cl,
        "ours_step_compile_seconds": step_compile, "ours_cluster_first_call_seconds": cluster_first,
        "peer_finetune_seconds": peer_ft, "peer_cluster_seconds": peer_cl,
        "ours_seconds": ours_ft + ours_cl, "peer_seconds": peer_ft + peer_cl,
        "finetune_speedup": peer_ft / ours_ft, "cluster_speedup": peer_cl / ours_cl,
        "speedup": (peer_ft + peer_cl) / (ours_ft + ours_cl),
        "ours_acc": acc(y, labels_ours), "ours_nmi": float(nmi(y, labels_ours)),
        "peer_acc": acc(y, labels_peer), "peer_nmi": float(nmi(y, labels_peer)),
        "forward_parity_max_abs": parity, "torch_threads": torch.get_num_threads(),
        "jax_devices": [str(d) for d in jax.devices()],
    }
    print(json.dumps(res))
    return res


if __name__ == "__main__":
    main()
