"""Feature extraction and a supervised train step of the natural-image backbones vs PyTorch.

    python benchmarks/bench_features.py [--repeat 5] [--rows ...] [--quick]

Rows (ours -> peer, the same random uint8 images normalised once, same weights on both sides;
image size and batch per row in ROWS, smaller with --quick):
  resnet18           96 px: get_model("resnet18", num_classes=0), pooled (N, 512), eval mode
                     -> tests/torch_backbones.py TResNet (torchvision's modules), conv1..avgpool
  efficientnet_lite0 224 px: EfficientNet-Lite0 num_classes=0, pooled (N, 1280), eval mode
                     -> efficientnet_lite_pytorch EfficientNet, extract_features + mean
  vgg16              224 px: VGG-16 'features' (N, 7, 7, 512), the last conv block and its max
                     pool = the classifier's input (XLA drops the unused fc layers) -> TVGG.features
  train_resnet18     32 px: one train step of get_model("resnet18", num_classes=10,
                     small_stem=True): forward + backward + SGD momentum 0.9, batch norm in train
                     mode, cross-entropy; jitted, state donated -> PyTorch eager, TResNet
                     small_stem, torch.optim.SGD(momentum=0.9)
Ours is the jitted network on float32 NHWC, the peer the torch module on float32 NCHW under
torch.no_grad (extraction); the resize/normalisation is outside both. torch uses as many threads
as the machine has cores (XLA uses them all); on a GPU both sides run there (``--torch-device``,
each timed call waits for its device), with each library's default float32 conv math. Warm timings: ours' first (compiling) call and the
peer's first call are untimed and reported apart; then --repeat rounds interleave the peer and
ours, two batches a side in a row with the second timed (steady state: ``_common.rounds``), and
the median time is kept (the best-of-rounds speedup is reported too).
LAST line: one JSON object; "speedup" = the worst row's peer time / our time, "target_met" whether
every row reaches the issue's 1.5x.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import statistics
import sys
import time

import jax
import numpy as np

HERE = pathlib.Path(__file__).resolve().parent
sys.path.insert(0, str(HERE))
from _common import (add_torch_device_option, block, emit, first_call, machine,  # noqa: E402
                     require_peers, rounds, torch_device, torch_synced)

TARGET = 1.5
# row -> (image size, batch) of the full run and of --quick
ROWS = {
    "resnet18": ((96, 32), (32, 2)),
    "efficientnet_lite0": ((224, 32), (64, 2)),
    "vgg16": ((224, 8), (32, 2)),
    "train_resnet18": ((32, 128), (32, 8)),
}


def fail(msg: str) -> None:
    """One line on stderr naming what failed, exit status 2."""
    script = pathlib.Path(sys.argv[0]).name if sys.argv and sys.argv[0] else "bench_features.py"
    print(f"error: {script}: {msg}", file=sys.stderr)
    raise SystemExit(2)


def images(n: int, size: int, seed: int = 0) -> np.ndarray:
    """(n, size, size, 3) random uint8 pixels normalised with ImageNet's mean/std: float32 NHWC."""
    x = np.random.default_rng(seed).integers(0, 256, (n, size, size, 3), dtype=np.uint8)
    mean, std = np.array([0.485, 0.456, 0.406]), np.array([0.229, 0.224, 0.225])
    return ((x / 255.0 - mean) / std).astype(np.float32)


def summary(batch: int, t_ours: list[float], t_peer: list[float], **extra) -> dict:
    mo, mp = statistics.median(t_ours), statistics.median(t_peer)
    return {"batch": batch, "ours_images_per_s": batch / mo, "torch_images_per_s": batch / mp,
            "speedup": mp / mo, "best_of_rounds_speedup": min(t_peer) / min(t_ours),
            "ours_s": t_ours, "torch_s": t_peer, **extra}


def rel_diff(a, b) -> float:
    a, b = np.asarray(a, np.float64), np.asarray(b, np.float64)
    return float(np.abs(a - b).max() / max(np.abs(b).max(), 1e-12))


# ----------------------------------------------------------------------------- peers

def build_peer(row: str, num_classes: int = 1000, device: str = "cpu"):
    """The PyTorch module of a row (randomised weights, eval mode); one clear line when it cannot
    be built."""
    try:
        if row.startswith("efficientnet"):
            from efficientnet_lite_pytorch import EfficientNet
            import torch
            torch.manual_seed(0)
            net = EfficientNet.from_name("efficientnet-lite0")
            g = torch.Generator().manual_seed(0)
            with torch.no_grad():          # BN statistics away from the identity
                for name, b in net.named_buffers():
                    if name.endswith("running_var"):
                        b.copy_(torch.rand(b.shape, generator=g) + 0.5)
                    elif name.endswith("running_mean"):
                        b.copy_(torch.randn(b.shape, generator=g) * 0.1)
            return net.eval().to(device)
        sys.path.insert(0, str(HERE.parent / "tests"))
        import torch_backbones as ref
        if row.startswith("vgg"):
            return ref.randomise(ref.build(ref.TVGG)).to(device)
        small = row.startswith("train")
        return ref.randomise(ref.build(ref.TResNet, ref.TBasic, (2, 2, 2, 2),
                                       num_classes=num_classes, small_stem=small)).to(device)
    except Exception as e:  # noqa: BLE001 - any failure is reported as one line
        peer = ("efficientnet_lite_pytorch EfficientNet('efficientnet-lite0')"
                if row.startswith("efficientnet") else "tests/torch_backbones.py "
                + ("TVGG" if row.startswith("vgg") else "TResNet"))
        fail(f"cannot build the PyTorch peer {peer} of row {row}: {type(e).__name__}: "
             f"{str(e).splitlines()[0] if str(e) else ''}")


def torch_resnet_pooled(net, x):
    """conv1 .. layer4 + global average pool of a TResNet (its fc is not run)."""
    y = net.relu(net.bn1(net.conv1(x)))
    if not net.small_stem:
        y = net.maxpool(y)
    for i in range(4):
        y = getattr(net, f"layer{i + 1}")(y)
    return y.mean((2, 3))


# ----------------------------------------------------------------------------- rows

def extraction_row(row: str, size: int, batch: int, repeat: int, device: str = "cpu") -> dict:
    import torch
    from aeclust_jax.models import get_model, import_torch
    from aeclust_jax.models.efficientnet import variables_from_torch

    net = build_peer(row, device=device)
    x = images(batch, size)
    xt = torch.from_numpy(np.ascontiguousarray(x.transpose(0, 3, 1, 2))).to(device)
    if row.startswith("resnet"):
        model, variables = import_torch("resnet18", net.state_dict(), num_classes=0)
        fwd = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
        peer_fn = lambda: torch_resnet_pooled(net, xt)  # noqa: E731
        to_ours = lambda t: t.numpy()  # noqa: E731
    elif row.startswith("efficientnet"):
        model = get_model("efficientnet_lite0", num_classes=0)
        variables = variables_from_torch(net.state_dict(), num_classes=0)
        fwd = lambda v, x: model.apply(v, x, train=False)  # noqa: E731
        peer_fn = lambda: net.extract_features(xt).mean((2, 3))  # noqa: E731
        to_ours = lambda t: t.numpy()  # noqa: E731
    else:
        model, variables = import_torch("vgg16", net.state_dict())
        fwd = lambda v, x: model.apply(  # noqa: E731
            v, x, train=False, mutable="intermediates")[1]["intermediates"]["features"][0]
        peer_fn = lambda: net.features(xt)  # noqa: E731
        to_ours = lambda t: t.numpy().transpose(0, 2, 3, 1)  # noqa: E731
    peer_fn = torch_synced(peer_fn, device)
    variables = jax.device_put(variables)
    xj = jax.device_put(x)
    f = jax.jit(fwd)
    first_s, out = first_call(lambda: f(variables, xj))
    with torch.inference_mode():
        t = time.perf_counter()
        ref = peer_fn()
        peer_first_s = time.perf_counter() - t
        t_ours, t_peer = rounds(lambda: f(variables, xj), peer_fn, repeat)
    return summary(batch, t_ours, t_peer, image_size=size, ours_first_call_s=first_s,
                   torch_first_call_s=peer_first_s, max_rel_diff=rel_diff(out, to_ours(ref.cpu())))


def train_row(row: str, size: int, batch: int, repeat: int, device: str = "cpu",
              lr: float = 0.01) -> dict:
    import optax
    import torch
    from aeclust_jax.models import import_torch

    net = build_peer(row, num_classes=10, device=device)
    model, variables = import_torch("resnet18", net.state_dict(), num_classes=10, small_stem=True)
    net.train()
    x = images(2 * batch, size, seed=1)
    y = np.random.default_rng(2).integers(0, 10, 2 * batch).astype(np.int32)
    xs = [jax.device_put(x[i * batch:(i + 1) * batch]) for i in range(2)]
    ys = [jax.device_put(y[i * batch:(i + 1) * batch]) for i in range(2)]
    xts = [torch.from_numpy(np.ascontiguousarray(xb.transpose(0, 3, 1, 2))).to(device)
           for xb in (x[:batch], x[batch:])]
    yts = [torch.from_numpy(y[i * batch:(i + 1) * batch].astype(np.int64)).to(device)
           for i in range(2)]

    tx = optax.sgd(lr, momentum=0.9)

    def step(state, x, y):
        params, stats, opt = state

        def loss_fn(p):
            logits, upd = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                      mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd
        (loss, upd), g = jax.value_and_grad(loss_fn, has_aux=True)(params)
        updates, opt = tx.update(g, opt, params)
        return (optax.apply_updates(params, updates), upd["batch_stats"], opt), loss

    params = jax.device_put(variables["params"])
    holder = {"state": (params, jax.device_put(variables["batch_stats"]), tx.init(params)), "i": 0}
    jstep = jax.jit(step, donate_argnums=(0,))

    def ours():
        i = holder["i"] = (holder["i"] + 1) % 2
        holder["state"], loss = jstep(holder["state"], xs[i], ys[i])
        return loss

    opt = torch.optim.SGD(net.parameters(), lr=lr, momentum=0.9)
    it = {"i": 0}

    def peer():
        i = it["i"] = (it["i"] + 1) % 2
        opt.zero_grad(set_to_none=True)
        loss = torch.nn.functional.cross_entropy(net(xts[i])[0], yts[i])
        loss.backward()
        opt.step()
        return loss

    peer = torch_synced(peer, device)
    first_s, loss0 = first_call(ours)
    t = time.perf_counter()
    tloss0 = peer()
    peer_first_s = time.perf_counter() - t
    t_ours, t_peer = rounds(ours, peer, repeat)
    last = float(block(ours()))
    if not np.isfinite(last):
        fail(f"row {row}: our loss is not finite ({last})")
    return summary(batch, t_ours, t_peer, image_size=size, ours_first_call_s=first_s,
                   torch_first_call_s=peer_first_s, first_loss=float(loss0),
                   torch_first_loss=float(tloss0.detach()))


def main(argv=None):
    p = argparse.ArgumentParser(allow_abbrev=False, formatter_class=argparse.ArgumentDefaultsHelpFormatter,
                                description=__doc__.splitlines()[0])
    p.add_argument("--rows", nargs="+", default=list(ROWS), choices=list(ROWS))
    p.add_argument("--repeat", type=int, default=3, help="interleaved timed rounds per row")
    p.add_argument("--batch", type=int, default=None, help="one batch for every row "
                   "(default per row: 32, 32, 8 (vgg16), 128 (train))")
    p.add_argument("--quick", action="store_true",
                   help="small setting (seconds): batch 2 (train 8), 32-64 px, 2 rounds")
    add_torch_device_option(p)
    a = p.parse_args(argv)
    require_peers("torch", "efficientnet_lite_pytorch")
    import torch
    torch.set_num_threads(os.cpu_count() or 1)
    device = torch_device(a.torch_device)
    repeat = 2 if a.quick and a.repeat == p.get_default("repeat") else a.repeat
    res = {"benchmark": "features", "quick": a.quick, "repeat": repeat, "target": TARGET,
           "torch": torch.__version__, "torch_threads": torch.get_num_threads(),
           "torch_device": device, "kernels": os.environ.get("AECLUST_KERNELS", "auto"),
           "machine": machine(), "rows": {}}
    for row in a.rows:
        size, batch = ROWS[row][1 if a.quick else 0]
        batch = a.batch or batch
        fn = train_row if row.startswith("train") else extraction_row
        r = res["rows"][row] = fn(row, size, batch, repeat, device)
        print(f"{row:26s} batch {batch:4d}  ours {r['ours_images_per_s']:8.1f} img/s  torch "
              f"{r['torch_images_per_s']:8.1f} img/s  speedup {r['speedup']:5.2f}x  "
              f"(first call {r['ours_first_call_s']:.1f} s)", flush=True)
    sp = {k: r["speedup"] for k, r in res["rows"].items()}
    res["speedup"] = min(sp.values())
    res["target_met"] = {k: v >= TARGET for k, v in sp.items()}
    res["machine"]["load_avg_1m_end"] = machine()["load_avg_1m"]
    emit(res)


if __name__ == "__main__":
    main()
