"""S5's recipe: the data subsets, the classifiers (a pooled head, or a VGG trained by the
supervised study), the feature autoencoders and the baselines, the evaluation of every
(method, size, precision) point, one run (``run``), its figure, and ``train.py --model feature_ae``.
"""

from __future__ import annotations

import dataclasses
import functools
import json
import pathlib
import time
from typing import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax

from aeclust_jax import runs, train
from aeclust_jax.cli import make_parser, prog_name
from aeclust_jax.config import (ConfigError, add_config_options, add_run_options, config_overrides,
                                load_config, to_dict)
from aeclust_jax.models.feature_ae import PRECISIONS, FeatureAE, bits_per_image, code_shape, quantize
from aeclust_jax.studies.feature_compression.config import METHODS, FeatureCompressionConfig

SEED_COMPRESSION = 1 - (128 * 5 * 5) / (512 * 7 * 7)          # 0.872


# ----------------------------------------------------------------------------- data

def load_subsets(cfg: FeatureCompressionConfig):
    """(train Dataset, test Dataset): seeded class-balanced subsets (``subset_seed``)."""
    from aeclust_jax.data import balanced_subset, load
    opts = {"path": cfg.path} if cfg.dataset == "image_folder" else {}
    tr, te = (load(cfg.dataset, split, progress=cfg.progress, **opts) for split in ("train", "test"))
    out = []
    for ds, n in ((tr, cfg.train_per_class), (te, cfg.test_per_class)):
        if (ds.labels < 0).any():
            raise ConfigError(f"dataset {cfg.dataset} has unlabeled rows; S5 needs labels")
        counts = np.bincount(ds.labels, minlength=ds.num_classes)
        if counts.min() < n:
            raise ConfigError(f"{n} images per class asked, but a class of {cfg.dataset} has only "
                              f"{counts.min()} in a split; lower --train-per-class/--test-per-class")
        rows = balanced_subset(ds.labels, n, cfg.subset_seed)
        out.append(dataclasses.replace(ds, images=ds.images[rows], labels=ds.labels[rows]))
    return out[0], out[1]


# ----------------------------------------------------------------------------- classifiers

class PooledHead(nn.Module):
    """EfficientNet-Lite0's own head on its last map: (N, H, W, C) -> global average pool ->
    Dense -> logits (N, num_classes) (its dropout left out: trained on frozen features)."""
    num_classes: int

    @nn.compact
    def __call__(self, f):
        return nn.Dense(self.num_classes, name="classifier")(f.astype(jnp.float32).mean((1, 2)))


@functools.lru_cache(maxsize=8)
def _ce_loss(head):
    def loss_fn(params, batch, rng):
        logits = head.apply({"params": params}, batch["feature"])
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        hit = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return train.masked_mean(ce, batch["mask"]), {"train_acc": train.masked_mean(hit, batch["mask"])}
    return loss_fn


def train_head(cfg, f_train: np.ndarray, y_train: np.ndarray, num_classes: int, *, key,
               history_path=None):
    """(head, variables): a PooledHead trained on cached maps (N, H, W, C) with cross-entropy."""
    from aeclust_jax.train import supervised as sup
    head = PooledHead(num_classes)
    tx = sup.make_classifier_optimizer(cfg.classifier_optimizer, cfg.classifier_lr)
    k_init, k_fit = jax.random.split(key)
    state = train.create_train_state(head, k_init, jnp.zeros((1,) + f_train.shape[1:]), tx)
    batch = min(cfg.classifier_batch_size, len(f_train))
    result = train.fit(state, {"feature": f_train, "label": y_train.astype(np.int32)},
                       _ce_loss(head), batch_size=batch, epochs=cfg.classifier_epochs, key=k_fit,
                       scan_epoch=True, history_path=history_path)
    return head, {"params": result.state.params}, result.history


def supervised_config(cfg: FeatureCompressionConfig):
    """The supervised study's config that trains (or fine-tunes) the VGG of ``cfg``."""
    from aeclust_jax.studies.supervised import SupervisedConfig
    return SupervisedConfig(
        model=cfg.backbone, dataset=cfg.dataset, path=cfg.path, image_size=cfg.image_size,
        pretrained="" if cfg.weights == "train" else cfg.weights, epochs=cfg.classifier_epochs,
        batch_size=min(cfg.classifier_batch_size, cfg.train_per_class * 10),
        optimizer=cfg.classifier_optimizer, lr=cfg.classifier_lr,
        weight_decay=5e-4 if cfg.classifier_optimizer == "sgd" else 0.0,
        train_per_class=cfg.train_per_class, test_limit=cfg.test_per_class * 10,
        seed=cfg.subset_seed, eval_every=cfg.classifier_epochs, eval_batch_size=cfg.eval_batch_size,
        checkpoint_every=cfg.classifier_epochs, keep_checkpoints=1, progress=cfg.progress)


def trained_vgg(cfg: FeatureCompressionConfig, folder: pathlib.Path, *, resume: bool):
    """(model, variables, metrics) of the VGG trained by the supervised study in ``folder``
    (reused when complete: it depends on the data and classifier settings only)."""
    from aeclust_jax.studies import supervised
    scfg = supervised_config(cfg)
    if runs.is_complete(folder):
        saved = runs.read_config(folder / "config.yaml")
        runs.check_resume_config(saved, to_dict(scfg), folder / "config.yaml",
                                 may_differ=supervised.RESUME_MAY_DIFFER)
        metrics = runs.read_json(folder / "metrics.json")
    else:
        metrics = supervised.run(scfg, folder, resume=resume and folder.is_dir())
    model = supervised.build_model(scfg, len(metrics["per_class_accuracy"]), metrics["image_size"])
    ckpt = train.Checkpointer(folder / "checkpoints", every=1, keep=1)
    try:
        saved = ckpt.read()
    finally:
        ckpt.close()
    variables = {k: jax.tree.map(jnp.asarray, saved[k]) for k in ("params", "batch_stats")
                 if k in saved}
    return model, variables, metrics


def classify_fn(cfg: FeatureCompressionConfig, model, variables):
    """(features float (N, H, W, C)) -> int32 labels (N,), batched and jitted: the network after
    the cut (VGG) or the pooled head (efficientnet)."""
    mesh = train.make_mesh()
    if isinstance(model, PooledHead):
        fn = _head_labels(model)
    else:
        fn = _vgg_labels(model, cfg.resolved_layer())

    def classify(f):
        return np.asarray(train.predict(fn, variables, {"feature": np.asarray(f)},
                                        batch_size=cfg.eval_batch_size, mesh=mesh))
    return classify


@functools.lru_cache(maxsize=8)
def _head_labels(head):
    return lambda v, b: jnp.argmax(head.apply(v, b["feature"]), -1).astype(jnp.int32)


@functools.lru_cache(maxsize=8)
def _vgg_labels(model, layer):
    def fn(v, b):
        logits = model.apply(v, b["feature"].astype(jnp.float32), train=False, start=layer)
        return jnp.argmax(logits, -1).astype(jnp.int32)
    return fn


# ----------------------------------------------------------------------------- the autoencoder

@functools.lru_cache(maxsize=16)
def _mse_loss(ae):
    def loss_fn(params, batch, rng):
        x = batch["feature"].astype(jnp.float32)
        mse = train.masked_mean((ae.apply({"params": params}, x) - x) ** 2, batch["mask"])
        return mse, {"mse": mse}
    return loss_fn


def train_ae(cfg, f_train: np.ndarray, width: int, *, key, checkpoint_dir=None, resume=False,
             history_path=None):
    """(ae, params, history): a FeatureAE of ``width`` trained on the maps (N, H, W, C) with MSE
    (Adam ``ae_lr``, ``ae_epochs`` epochs of batch ``ae_batch_size``, the last batch padded)."""
    ae = FeatureAE(channels=f_train.shape[-1], width=width, hidden=cfg.hidden, kernel=cfg.kernel)
    k_init, k_fit = jax.random.split(key)
    tx = train.make_optimizer("adam", cfg.ae_lr)
    state = train.create_train_state(ae, k_init, jnp.zeros((1,) + f_train.shape[1:]), tx)
    ckpt = (train.Checkpointer(checkpoint_dir, every=cfg.ae_epochs, keep=1)
            if checkpoint_dir is not None else None)
    try:
        result = train.fit(state, {"feature": f_train}, _mse_loss(ae), batch_size=cfg.ae_batch_size,
                           epochs=cfg.ae_epochs, key=k_fit, checkpointer=ckpt,
                           resume=resume and ckpt is not None, scan_epoch=True,
                           history_path=history_path)
    finally:
        if ckpt is not None:
            ckpt.close()
    return ae, result.state.params, result.history


@functools.lru_cache(maxsize=16)
def _ae_roundtrip(ae, precision):
    def fn(params, b):
        code = ae.apply({"params": params}, b["feature"].astype(jnp.float32),
                        method=FeatureAE.encode)
        return ae.apply({"params": params}, quantize(code, precision), method=FeatureAE.decode)
    return fn


def ae_reconstruct(ae, params, f: np.ndarray, precision: str, *, batch_size: int) -> np.ndarray:
    """float32 (N, H, W, C): encode, send the code at ``precision``, decode."""
    return np.asarray(train.predict(_ae_roundtrip(ae, precision), params, {"feature": f},
                                    batch_size=batch_size, mesh=train.make_mesh()))


# ----------------------------------------------------------------------------- baselines

def fit_pca(f_train: np.ndarray, *, max_rows: int = 60000, seed: int = 0):
    """(mean (C,), components (C, C) by decreasing variance) of the channel vectors of the maps
    (N, H, W, C): PCA over channels, one C-vector per position (at most ``max_rows`` of them,
    drawn with ``seed``)."""
    x = np.asarray(f_train, np.float32).reshape(-1, f_train.shape[-1])
    if len(x) > max_rows:
        x = x[np.random.default_rng(seed).choice(len(x), max_rows, replace=False)]
    mean = x.mean(0)
    cov = np.asarray(jnp.asarray(x - mean).T @ jnp.asarray(x - mean)) / len(x)
    vals, vecs = np.linalg.eigh(cov.astype(np.float64))
    return mean, vecs[:, ::-1].astype(np.float32)


def pca_reconstruct(f: np.ndarray, mean: np.ndarray, components: np.ndarray, k: int,
                    precision: str) -> np.ndarray:
    """float32 (N, H, W, C): the first ``k`` PCA coefficients per position, sent at
    ``precision`` (quantised per image), projected back."""
    v = jnp.asarray(components[:, :k])
    coef = (jnp.asarray(f, jnp.float32) - mean) @ v                     # (N, H, W, k)
    return np.asarray(quantize(coef, precision) @ v.T + mean)


def pool_reconstruct(f: np.ndarray, size: int, precision: str) -> np.ndarray:
    """float32 (N, H, W, C): average pooling to size x size (torch's adaptive bins), sent at
    ``precision``, resized back (bilinear)."""
    from aeclust_jax.models.vgg import adaptive_avg_pool
    x = jnp.asarray(f, jnp.float32)
    small = quantize(adaptive_avg_pool(x, (size, size)), precision)
    return np.asarray(jax.image.resize(small, x.shape, "bilinear"))


def pca_components_for(values: int, map_shape) -> int:
    """PCA components per position whose values per image (k * H * W) come nearest ``values``."""
    h, w, c = map_shape
    return int(min(c, max(1, round(values / (h * w)))))


# ----------------------------------------------------------------------------- evaluation

def _chunks(f: np.ndarray, fn, batch: int) -> np.ndarray:
    return np.concatenate([fn(f[i:i + batch]) for i in range(0, len(f), batch)])


def evaluate_points(cfg, classify, f_test: np.ndarray, y_test: np.ndarray, num_classes: int, *,
                    aes: dict, pca, progress: bool = False) -> list[dict]:
    """One record per (method, size, precision): values and bits per image, accuracy, per-class
    accuracy, relative MSE of the reconstruction. ``aes``: width -> (ae, params)."""
    from aeclust_jax.train.supervised import per_class_accuracy
    shape = f_test.shape[1:]
    raw_values = int(np.prod(shape))
    energy = float(np.mean(np.asarray(f_test, np.float32) ** 2))
    batch = cfg.eval_batch_size
    points = []

    def add(method, param, precision, values, recon_fn):
        t = time.perf_counter()
        recon = _chunks(f_test, recon_fn, batch)
        pred = classify(recon)
        rel = float(np.mean((recon - np.asarray(f_test, np.float32)) ** 2) / max(energy, 1e-30))
        bits = bits_per_image(values, precision)
        points.append({
            "method": method, "param": param, "precision": precision, "values": values,
            "bits": bits, "value_compression": 1 - values / raw_values,
            "bit_compression": 1 - bits / (32 * raw_values),
            "accuracy": float(np.mean(pred == y_test)),
            "per_class_accuracy": per_class_accuracy(y_test, pred, num_classes).tolist(),
            "relative_mse": rel, "seconds": time.perf_counter() - t})
        if progress:
            print(f"[s5]   {method} {param} {precision}: {bits} bits, accuracy "
                  f"{points[-1]['accuracy']:.4f}", flush=True)

    for p in cfg.precisions:                               # raw map (float32 = the reference)
        add("quant", "raw", p, raw_values, lambda x, p=p: np.asarray(quantize(x, p)))
    for width, (ae, params) in aes.items():
        values = int(np.prod(code_shape(shape, width, cfg.kernel)))
        for p in cfg.precisions:
            add("ae", width, p, values, lambda x, ae=ae, params=params, p=p:
                ae_reconstruct(ae, params, x, p, batch_size=batch))
    mean, comps = pca
    for width in aes:
        k = pca_components_for(int(np.prod(code_shape(shape, width, cfg.kernel))), shape)
        for p in cfg.precisions:
            add("pca", k, p, k * shape[0] * shape[1],
                lambda x, k=k, p=p: pca_reconstruct(x, mean, comps, k, p))
    for s in pool_sizes(cfg, shape):
        for p in cfg.precisions:
            add("pool", s, p, s * s * shape[2], lambda x, s=s, p=p: pool_reconstruct(x, s, p))
    return points


def pool_sizes(cfg, shape) -> list[int]:
    """The pooling baseline's grids: ``cfg.pool_sizes``, else the AE code's grid."""
    if cfg.pool_sizes:
        return [s for s in cfg.pool_sizes if s <= min(shape[:2])]
    return [code_shape(shape, 1, cfg.kernel)[0]]


def seed_point(points: list[dict]) -> dict | None:
    """The claim's AE point: the float32 code of the widest AE that is at least as small as the
    seed's (>= 87.2% fewer values than the map); else the smallest code there is."""
    ae = [p for p in points if p["method"] == "ae" and p["precision"] == "float32"]
    if not ae:
        return None
    small = [p for p in ae if p["value_compression"] >= SEED_COMPRESSION - 1e-9]
    return (min(small, key=lambda p: p["value_compression"]) if small
            else max(ae, key=lambda p: p["value_compression"]))


# ----------------------------------------------------------------------------- one run

def run(cfg: FeatureCompressionConfig, out: str | pathlib.Path, *, resume: bool = False) -> dict:
    """One seed of S5 into ``out`` (the run-folder contract); returns metrics.json's content.
    The config, ``out`` and the data are checked before anything is written."""
    from aeclust_jax.features import extract
    cfg = cfg.validate()
    out = runs.check_run_dir(out, resume=resume)
    if resume:
        runs.check_resume(out, to_dict(cfg), may_differ=RESUME_MAY_DIFFER)
        if runs.is_complete(out):
            print(f"{out} is already complete; nothing to do")
            return runs.read_json(out / "metrics.json")
    t0 = time.perf_counter()
    tr, te = load_subsets(cfg)
    times = {"load": time.perf_counter() - t0}
    out = runs.prepare_run_dir(out, resume=resume)
    runs.write_config(out / "config.yaml", to_dict(cfg))
    cache = pathlib.Path(cfg.feature_cache).expanduser() if cfg.feature_cache else \
        out.parent / "features"
    layer, size = cfg.resolved_layer(), cfg.image_size or None
    say = (lambda s: print(f"[s5] {s}", flush=True)) if cfg.progress else (lambda s: None)
    key = jax.random.key(cfg.seed)
    k_head, k_ae = jax.random.split(key)
    history = out / "history.jsonl"
    if not resume:
        history.unlink(missing_ok=True)

    # 1-2: backbone, features (cached), classifier
    t = time.perf_counter()
    if cfg.backbone == "efficientnet_lite0":
        from aeclust_jax.models import efficientnet_lite0_imagenet
        backbone, bvars = efficientnet_lite0_imagenet(num_classes=0)
        backbone_metrics = {}
    else:
        say(f"training {cfg.backbone} ({cfg.weights}) with the supervised study")
        folder = out.parent / f"classifier-{_classifier_key(cfg)}"
        backbone, bvars, backbone_metrics = trained_vgg(cfg, folder, resume=resume)
    times["backbone"] = time.perf_counter() - t
    t = time.perf_counter()
    say(f"extracting '{layer}' of {len(tr)} + {len(te)} images (cache {cache})")
    opts = dict(layer=layer, image_size=size, batch_size=min(cfg.eval_batch_size, 64), cache=cache,
                dtype="float16", progress=cfg.progress)
    f_train = extract(backbone, bvars, tr.images, **opts)
    f_test = extract(backbone, bvars, te.images, **opts)
    times["extract"] = time.perf_counter() - t
    shape = f_train.shape[1:]
    for w in cfg.widths:
        code_shape(shape, w, cfg.kernel)                  # the map is large enough for the AE
    t = time.perf_counter()
    if cfg.backbone == "efficientnet_lite0":
        say(f"training the pooled head on the cached {shape} maps")
        model, variables, hist = train_head(cfg, f_train, tr.labels, tr.num_classes, key=k_head)
        _append_history(history, "head", hist)
    else:
        model, variables = backbone, bvars
    classify = classify_fn(cfg, model, variables)
    times["classifier"] = time.perf_counter() - t

    # 3: one AE per width
    aes, ae_seconds = {}, {}
    for i, w in enumerate(cfg.widths):
        t = time.perf_counter()
        say(f"training the AE of width {w} ({cfg.ae_epochs} epochs, batch {cfg.ae_batch_size})")
        ae, params, hist = train_ae(cfg, f_train, w, key=jax.random.fold_in(k_ae, w),
                                    checkpoint_dir=out / "checkpoints" / f"w{w}", resume=resume)
        _append_history(history, f"ae_w{w}", hist)
        aes[w] = (ae, params)
        ae_seconds[w] = time.perf_counter() - t
    t = time.perf_counter()
    pca = fit_pca(f_train, seed=cfg.seed)
    times["pca"] = time.perf_counter() - t

    # 4: every point
    t = time.perf_counter()
    points = evaluate_points(cfg, classify, f_test, te.labels, te.num_classes, aes=aes, pca=pca,
                             progress=cfg.progress)
    times["evaluate"] = time.perf_counter() - t
    raw = next(p for p in points if p["method"] == "quant" and p["precision"] == "float32")
    point = seed_point(points)
    metrics = {
        "setting": describe(cfg), "seed": cfg.seed, "backbone": cfg.backbone,
        "weights": cfg.weights, "layer": layer, "feature_shape": list(shape),
        "image_size": cfg.image_size, "train_images": len(tr), "test_images": len(te),
        "class_names": list(te.class_names), "raw_accuracy": raw["accuracy"],
        "seed_point": point, "points": points,
        "backbone_metrics": {k: backbone_metrics[k] for k in
                             ("test_accuracy", "train_images", "epochs", "train_seconds")
                             if k in backbone_metrics},
        "ae_train_seconds": {str(w): s for w, s in ae_seconds.items()},
        "seconds": times, "scale": runs.SCALE, "platform": jax.devices()[0].platform}
    plot_rate_accuracy(aggregate([points]), out / "figures" / "rate_accuracy.png",
                       title=f"S5 {describe(cfg)}, seed {cfg.seed}")
    runs.write_json(out / "metrics.json", metrics)
    return metrics


def _classifier_key(cfg) -> str:
    """The classifier folder's name: a hash of what determines the trained VGG."""
    import hashlib
    return hashlib.sha1(json.dumps(to_dict(supervised_config(cfg)), sort_keys=True)
                        .encode()).hexdigest()[:10]


def _append_history(path: pathlib.Path, stage: str, records: list[dict]) -> None:
    with path.open("a") as f:
        for r in records:
            f.write(json.dumps({"stage": stage, **r}) + "\n")


def describe(cfg) -> str:
    w = "ImageNet weights, frozen" if cfg.weights == "imagenet" else (
        "trained from scratch here" if cfg.weights == "train" else "fine-tuned from a .pth")
    return (f"{cfg.backbone} ({w}) at {cfg.image_size or 'stored'} px, map '{cfg.resolved_layer()}'")


# ----------------------------------------------------------------------------- figures, tables

LABELS = {"ae": "feature AE (width)", "pca": "PCA over channels (k)", "quant": "raw map quantised",
          "pool": "average pool + resize (grid)"}
MARKERS = {"float32": "o", "float16": "s", "int8": "^", "int4": "v"}


def plot_rate_accuracy(table: list[dict], path, *, title: str):
    """Bits per image (log x) vs test accuracy of aggregated points (``aggregate``: mean, std as
    error bars): colour = method, marker = code precision; the AE and PCA points of one precision
    joined across widths; the dashed line is the raw float32 map's accuracy."""
    from matplotlib.lines import Line2D

    from aeclust_jax import viz
    fig, ax = viz.figure(figsize=(8, 5))
    colors = {"ae": "C0", "pca": "C1", "quant": "C2", "pool": "C3"}
    for method in METHODS:
        for prec in MARKERS:
            pts = sorted((p for p in table if p["method"] == method and p["precision"] == prec),
                         key=lambda p: p["bits"])
            if not pts:
                continue
            ax.errorbar([p["bits"] for p in pts], [p["accuracy"]["mean"] for p in pts],
                        yerr=[p["accuracy"]["std"] for p in pts], color=colors[method],
                        marker=MARKERS[prec], linestyle="-" if method in ("ae", "pca") else "none",
                        markersize=5, capsize=2, lw=1)
    raw = [p for p in table if p["method"] == "quant" and p["precision"] == "float32"]
    if raw:
        ax.axhline(raw[0]["accuracy"]["mean"], color="gray", lw=0.8, ls="--")
    handles = [Line2D([], [], color=colors[m], lw=2, label=LABELS[m]) for m in METHODS
               if any(p["method"] == m for p in table)]
    handles += [Line2D([], [], color="k", marker=mk, ls="none", label=pr)
                for pr, mk in MARKERS.items() if any(p["precision"] == pr for p in table)]
    ax.set(xscale="log", xlabel="bits per image (log)", ylabel="test accuracy (0-1)", title=title)
    ax.legend(handles=handles, fontsize=7, loc="lower right")
    return viz.save(fig, path)


def aggregate(per_seed: list[list[dict]]) -> list[dict]:
    """Points of several seeds (same order) -> one per point with accuracy mean/std and the mean
    per-class accuracy."""
    out = []
    for group in zip(*per_seed):
        p = dict(group[0])
        p["accuracy"] = runs.mean_std([g["accuracy"] for g in group])
        p["accuracy_per_seed"] = [g["accuracy"] for g in group]
        p["per_class_accuracy"] = np.mean([g["per_class_accuracy"] for g in group], 0).tolist()
        p["relative_mse"] = float(np.mean([g["relative_mse"] for g in group]))
        p.pop("seconds", None)
        out.append(p)
    return out


# ----------------------------------------------------------------------------- CLI

RESUME_MAY_DIFFER = ("progress", "eval_batch_size")
TUPLE_FIELDS = ("widths", "precisions", "pool_sizes")


def _add_tuple_options(p) -> None:
    p.add_argument("--widths", type=int, nargs="+", metavar="W", default=None,
                   help="AE bottleneck widths (default: 256 128 64 32 16)")
    p.add_argument("--precisions", nargs="+", choices=list(PRECISIONS), default=None,
                   help="code precisions (default: all four)")
    p.add_argument("--pool-sizes", type=int, nargs="+", metavar="S", default=None,
                   help="average-pooling baseline grids (default: the AE code's grid)")


def _tuple_overrides(args) -> dict:
    return {k: tuple(getattr(args, k)) for k in TUPLE_FIELDS if getattr(args, k, None) is not None}


def train_parser():
    """``train.py --model feature_ae``: one option per FeatureCompressionConfig field."""
    p = make_parser(prog=prog_name("train.py"),
                    description="S5: compress a CNN's feature map with autoencoders of several "
                                "widths and code precisions; accuracy of the classifier on the "
                                "reconstruction, and baselines at the same bits.\nAn option left "
                                "out takes its value from --config FILE.yaml, else the default.")
    p.add_argument("--model", choices=["feature_ae"], default="feature_ae", help="the study's model")
    add_config_options(p, FeatureCompressionConfig, skip=TUPLE_FIELDS)
    _add_tuple_options(p)
    add_run_options(p, FeatureCompressionConfig, "runs/s5-<backbone>-<seed>")
    return p


def train_main(argv: Sequence[str]) -> int:
    args = train_parser().parse_args(list(argv))
    over = {**config_overrides(args, FeatureCompressionConfig), **_tuple_overrides(args)}
    saved = pathlib.Path(args.out or "") / "config.yaml"
    if args.resume and args.out and saved.is_file():
        base = load_config(FeatureCompressionConfig, saved)
        base = dataclasses.replace(base, **{k: tuple(getattr(base, k)) for k in TUPLE_FIELDS})
        cfg = load_config(FeatureCompressionConfig, None, over, base=base)
    else:
        cfg = load_config(FeatureCompressionConfig, args.config, over)
        cfg = dataclasses.replace(cfg, **{k: tuple(getattr(cfg, k)) for k in TUPLE_FIELDS})
    cfg = cfg.validate()
    out = pathlib.Path(args.out or f"runs/s5-{cfg.backbone}-{cfg.seed}")
    m = run(cfg, out, resume=args.resume)
    sp = m["seed_point"]
    print(f"raw_accuracy={m['raw_accuracy']:.4f} ae_w{sp['param']}_accuracy={sp['accuracy']:.4f} "
          f"value_compression={sp['value_compression']:.4f}")
    print(f"wrote {out}")
    return 0
