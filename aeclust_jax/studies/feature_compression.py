"""S5: compressing a classification CNN's feature map with an autoencoder, and the rate-accuracy
curve the seed did not draw (seed 004, Go, Kwon, Kim).

    python scripts/train.py --model feature_ae --backbone efficientnet_lite0 --weights imagenet \\
        --path ../shared/data/cifar10_jpeg/cifar10-jpeg.zip --image-size 224 --out runs/s5-a
    python scripts/reproduce.py s5 --setting a|b|both|paper [--seeds 3]

The recipe (one run, one seed):
1. the classifier: EfficientNet-Lite0 with its shipped ImageNet weights, frozen, and its own head
   (global average pool + Dense) trained on the cached maps of the training subset; or a VGG16(-BN)
   trained with the supervised study (from scratch, or fine-tuned from a torchvision .pth: the
   seed's setting), whose layers after the cut are the classifier (``VGG(start=layer)``);
2. the feature map at ``layer`` of the training and test subsets, extracted ONCE with
   ``features.extract`` into a cache folder (stored float16: the maps are ReLU outputs of
   moderate range, and float16 halves the cache; every computation upcasts to float32);
3. one ``FeatureAE`` per bottleneck width, trained with ``train.fit`` on the cached training maps
   (backbone frozen; MSE, Adam 1e-4, 10 epochs, batch 4: the seed's);
4. the classifier's accuracy (and per class) on the test maps: raw, and reconstructed from each
   width x code precision; and the baselines at comparable sizes: PCA over channels (k components
   per position, k matched to each width's number of values), plain quantisation of the raw map,
   and average pooling to a smaller grid (the AE's code grid by default) resized back (bilinear).
Every point is (values per image, bits per image, accuracy); the figure is bits (log) vs accuracy.

Run folder: config.yaml, classifier/ (the supervised run, VGG) or history of the head,
history.jsonl (the head's and each AE's epochs), checkpoints/w<width>/, figures/, metrics.json
last. ``--resume`` reuses what is finished (the classifier, AEs with a final checkpoint).
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
from aeclust_jax.config import (ConfigError, add_config_options, config_overrides, field, load_config,
                                to_dict)
from aeclust_jax.errors import UsageError
from aeclust_jax.models.feature_ae import (PRECISIONS, FeatureAE, bits_per_image, code_shape,
                                           quantize)

BACKBONES = ("efficientnet_lite0", "vgg16_bn", "vgg16")
DEFAULT_LAYER = {"efficientnet_lite0": "features", "vgg16_bn": "features", "vgg16": "features"}
VGG_LAYERS = ("block1", "block2", "block3", "block4", "block5", "features")
METHODS = ("ae", "pca", "quant", "pool")
# The seed's Table 1 (VGG16 on CIFAR-10 at 224 px): per-class accuracy (%) without / with the AE.
SEED_TABLE1 = {
    "airplane": (87, 87), "automobile": (95, 96), "bird": (75, 69), "cat": (60, 55),
    "deer": (78, 75), "dog": (75, 79), "frog": (91, 91), "horse": (87, 82), "ship": (89, 82),
    "truck": (87, 82)}
SEED_MEAN = (82.4, 79.8)
SEED_COMPRESSION = 1 - (128 * 5 * 5) / (512 * 7 * 7)          # 0.872


@dataclasses.dataclass(frozen=True)
class FeatureCompressionConfig:
    """One S5 run (one seed). Defaults: setting (a), EfficientNet-Lite0 at 224 px, 7x7x1280."""
    backbone: str = field("efficientnet_lite0", "the classification CNN", choices=BACKBONES)
    weights: str = field("imagenet", "imagenet (efficientnet_lite0's shipped weights, frozen; a head "
                                  "is trained on the map), train (a VGG trained from scratch on the "
                                  "training subset), or a torchvision VGG .pth (fine-tuned on it)")
    layer: str = field("", "the map to compress ('' = the backbone's last map: 'features'; VGG also "
                        "block1..block5, the last ReLU of a block)")
    dataset: str = field("image_folder", "dataset name (aeclust_jax.data)")
    path: str = field("", "image_folder: the folder or .zip/.tar archive of the images")
    image_size: int = field(224, "resize the images to S x S on the device (0: as stored)")
    train_per_class: int = field(300, "seeded class-balanced training subset, images per class")
    test_per_class: int = field(100, "seeded class-balanced test subset, images per class")
    data_seed: int = field(0, "seed of the two subsets (and of a VGG's training: trained once)")
    classifier_epochs: int = field(30, "epochs of the head (efficientnet) or of the VGG training")
    classifier_lr: float = field(1e-3, "peak learning rate of the head / the VGG")
    classifier_optimizer: str = field("adam", "optimizer of the head / the VGG",
                                   choices=("sgd", "adam", "adamw"))
    classifier_batch: int = field(128, "batch size of the head / the VGG")
    widths: tuple = field((256, 128, 64, 32, 16), "AE bottleneck widths (code channels)")
    hidden: int = field(256, "AE width of the two 1x1 layers' middle (the seed: C/2)")
    kernel: int = field(3, "AE k x k VALID conv (7x7 -> 5x5 for k = 3)")
    precisions: tuple = field(("float32", "float16", "int8", "int4"), "code precisions")
    ae_epochs: int = field(10, "AE epochs (the seed's 10)")
    ae_lr: float = field(1e-4, "AE Adam learning rate (the seed's 1e-4)")
    ae_batch: int = field(4, "AE batch size (the seed's 4)")
    pool_sizes: tuple = field((), "average-pooling baseline grid sizes (empty: the AE code's grid)")
    seed: int = field(0, "seed of the AE inits and of the efficientnet head")
    feature_cache: str = field("", "folder of the cached feature maps ('' = <out>/../features)")
    eval_batch: int = field(250, "batch size of extraction and evaluation")
    progress: bool = field(True, "progress bars and stage lines")

    def resolved_layer(self) -> str:
        return self.layer or DEFAULT_LAYER[self.backbone]

    def validate(self) -> "FeatureCompressionConfig":
        from aeclust_jax.data import DATASETS
        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}; choices: {', '.join(BACKBONES)}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choices: {', '.join(DATASETS)}")
        if self.dataset == "image_folder" and not self.path:
            raise ConfigError("dataset image_folder needs --path (a folder or .zip/.tar of images)")
        if self.backbone == "efficientnet_lite0":
            if self.weights != "imagenet":
                raise ConfigError("backbone efficientnet_lite0 takes --weights imagenet (its shipped "
                                  "weights, frozen)")
            if self.resolved_layer() != "features":
                raise ConfigError("efficientnet_lite0: --layer must be 'features' (the last map, "
                                  "before its own pooled head)")
        else:
            if self.weights == "imagenet":
                raise ConfigError(f"no ImageNet weights ship for {self.backbone}; --weights train, "
                                  "or a torchvision .pth file")
            if self.weights != "train" and not pathlib.Path(self.weights).expanduser().is_file():
                raise ConfigError(f"--weights {self.weights}: no such file")
            if self.resolved_layer() not in VGG_LAYERS:
                raise ConfigError(f"unknown layer {self.layer!r} of {self.backbone}; choices: "
                                  f"{', '.join(VGG_LAYERS)}")
        if not self.widths or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ConfigError(f"widths must be positive integers, got {list(self.widths)}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise ConfigError(f"unknown precision(s) {bad}; choices: {', '.join(PRECISIONS)}")
        if any(not isinstance(s, int) or s < 1 for s in self.pool_sizes):
            raise ConfigError(f"pool_sizes must be positive integers, got {list(self.pool_sizes)}")
        for name in ("train_per_class", "test_per_class", "classifier_epochs", "classifier_batch",
                     "hidden", "kernel", "ae_epochs", "ae_batch", "eval_batch"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < 0:
            raise ConfigError(f"image_size must be >= 0, got {self.image_size}")
        for name in ("classifier_lr", "ae_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        return self


# ----------------------------------------------------------------------------- data

def load_subsets(cfg: FeatureCompressionConfig):
    """(train Dataset, test Dataset): seeded class-balanced subsets (``data_seed``)."""
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
        rows = balanced_subset(ds.labels, n, cfg.data_seed)
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
    batch = min(cfg.classifier_batch, len(f_train))
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
        batch_size=min(cfg.classifier_batch, cfg.train_per_class * 10),
        optimizer=cfg.classifier_optimizer, lr=cfg.classifier_lr,
        weight_decay=5e-4 if cfg.classifier_optimizer == "sgd" else 0.0,
        train_per_class=cfg.train_per_class, test_limit=cfg.test_per_class * 10,
        seed=cfg.data_seed, eval_every=cfg.classifier_epochs, eval_batch=cfg.eval_batch,
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
                                        batch_size=cfg.eval_batch, mesh=mesh))
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
    (Adam ``ae_lr``, ``ae_epochs`` epochs of batch ``ae_batch``, the last batch padded)."""
    ae = FeatureAE(channels=f_train.shape[-1], width=width, hidden=cfg.hidden, kernel=cfg.kernel)
    k_init, k_fit = jax.random.split(key)
    tx = train.make_optimizer("adam", cfg.ae_lr)
    state = train.create_train_state(ae, k_init, jnp.zeros((1,) + f_train.shape[1:]), tx)
    ckpt = (train.Checkpointer(checkpoint_dir, every=cfg.ae_epochs, keep=1)
            if checkpoint_dir is not None else None)
    try:
        result = train.fit(state, {"feature": f_train}, _mse_loss(ae), batch_size=cfg.ae_batch,
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
    batch = cfg.eval_batch
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
    opts = dict(layer=layer, image_size=size, batch_size=min(cfg.eval_batch, 64), cache=cache,
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
        say(f"training the AE of width {w} ({cfg.ae_epochs} epochs, batch {cfg.ae_batch})")
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

RESUME_MAY_DIFFER = ("progress", "eval_batch")
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
    p.add_argument("--config", help="YAML file of FeatureCompressionConfig fields")
    p.add_argument("--out", help="run folder (default runs/s5-<backbone>-<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
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


# ----------------------------------------------------------------------------- reproduce

# The settings of `reproduce.py s5`: (a), (b) here; the seed's own (needs a torchvision .pth).
SETTINGS = {
    "a": dict(backbone="efficientnet_lite0", weights="imagenet", layer="features", image_size=224,
              train_per_class=300, test_per_class=100, classifier_epochs=30, classifier_lr=1e-3,
              classifier_optimizer="adam", classifier_batch=128, widths=(128, 64, 32, 16),
              hidden=256, pool_sizes=(5, 3, 1)),
    "b": dict(backbone="vgg16_bn", weights="train", layer="block4", image_size=0,
              train_per_class=100, test_per_class=50, classifier_epochs=2, classifier_lr=3e-4,
              classifier_optimizer="adam", classifier_batch=50, widths=(256, 64, 16),
              hidden=256, pool_sizes=(2, 1)),
    # the seed: VGG16 (ImageNet weights from torchvision, fine-tuned: Adam 1e-5, 100 epochs,
    # batch 4) on CIFAR-10 at 224 px, 12500 train / 2500 test images, the 512x7x7 map.
    "paper": dict(backbone="vgg16", weights="", layer="features", image_size=224,
                  train_per_class=1250, test_per_class=250, classifier_epochs=100,
                  classifier_lr=1e-5, classifier_optimizer="adam", classifier_batch=4,
                  widths=(128, 64, 32, 16), hidden=256, pool_sizes=(5, 3, 1)),
}
SETTING_TITLE = {
    "a": "(a) EfficientNet-Lite0, shipped ImageNet weights, frozen, 224 px, 7x7x1280 map",
    "b": "(b) VGG16-BN trained from scratch here, 32 px, block-4 map 4x4x512",
    "paper": "the seed's setting: VGG16 (torchvision ImageNet weights, fine-tuned), 224 px, 7x7x512"}
CLAIM_TOLERANCE = 1.0    # points above the seed's 3.16 still read as "~3 points"
CHANCE_MARGIN = 0.05     # a classifier within 5 points of chance cannot test the claim


def reproduce_parser():
    p = make_parser(prog=f"{prog_name('reproduce.py')} s5",
                    description="S5: the seed's per-class table, the compression ratio and the "
                                "rate-accuracy curve with baselines, mean ± std over seeds, for "
                                "setting (a), (b), both, or the seed's own (paper: needs "
                                "--weights VGG16.pth).")
    p.add_argument("--setting", choices=["a", "b", "both", "paper"], default="both")
    p.add_argument("--seeds", type=int, default=3, help="seeds of the AE inits (and of the head)")
    p.add_argument("--path", default="", help="the image archive (default: $AECLUST_MANUAL_DIR/"
                                              "cifar10_jpeg/cifar10-jpeg.zip)")
    p.add_argument("--weights", default=None, help="paper: the torchvision VGG16 .pth "
                                                   "(vgg16-397923af.pth)")
    for name, typ in (("train-per-class", int), ("test-per-class", int),
                      ("classifier-epochs", int), ("ae-epochs", int), ("image-size", int),
                      ("layer", str), ("kernel", int), ("hidden", int), ("ae-batch", int),
                      ("classifier-batch", int)):
        p.add_argument(f"--{name}", type=typ, default=None, help="override the setting's value")
    _add_tuple_options(p)
    p.add_argument("--out", default="results/s5", help="where results.json/.md and figures go")
    p.add_argument("--runs", default="runs/s5", help="the per-seed run folders and caches")
    p.add_argument("--no-progress", action="store_true")
    return p


def setting_configs(a) -> dict[str, FeatureCompressionConfig]:
    """The validated base config (seed 0) of every setting asked."""
    import os
    names = ["a", "b"] if a.setting == "both" else [a.setting]
    path = a.path or str(pathlib.Path(os.environ.get("AECLUST_MANUAL_DIR", "")) / "cifar10_jpeg"
                         / "cifar10-jpeg.zip")
    over = {k.replace("-", "_"): getattr(a, k.replace("-", "_")) for k in (
        "train-per-class", "test-per-class", "classifier-epochs", "ae-epochs", "image-size",
        "layer", "kernel", "hidden", "ae-batch", "classifier-batch")}
    over = {k: v for k, v in over.items() if v is not None}
    over.update(_tuple_overrides(a))
    out = {}
    for name in names:
        preset = dict(SETTINGS[name], path=path, progress=not a.no_progress)
        if name == "paper":
            if not a.weights:
                raise UsageError("--setting paper needs --weights: the torchvision VGG16 .pth "
                                 "(vgg16-397923af.pth), which cannot be fetched here")
            preset["weights"] = a.weights
        elif a.weights:
            raise UsageError("--weights applies to --setting paper only")
        out[name] = FeatureCompressionConfig(**{**preset, **over}).validate()
    return out


def summarize(name: str, ms: list[dict]) -> dict:
    """One setting's results over its seeds: every point (mean ± std), the seed point's per-class
    table beside the seed's Table 1, and the claim."""
    table = aggregate([m["points"] for m in ms])
    raw = next(p for p in table if p["method"] == "quant" and p["precision"] == "float32")
    sp = seed_point(table)
    drop = 100 * (raw["accuracy"]["mean"] - sp["accuracy"]["mean"])
    holds = sp["value_compression"] >= SEED_COMPRESSION - 1e-9 and drop <= 3.16 + CLAIM_TOLERANCE
    names = ms[0]["class_names"]
    chance = 1 / len(names)
    if raw["accuracy"]["mean"] < chance + CHANCE_MARGIN:      # nothing to lose: no test
        holds = None
    per_class = [{"class": c, "raw": raw["per_class_accuracy"][i], "ae": sp["per_class_accuracy"][i],
                  "seed_raw": SEED_TABLE1.get(c, (None, None))[0],
                  "seed_ae": SEED_TABLE1.get(c, (None, None))[1]} for i, c in enumerate(names)]
    return {
        "setting": name, "title": SETTING_TITLE[name], "description": ms[0]["setting"],
        "seeds": [m["seed"] for m in ms], "feature_shape": ms[0]["feature_shape"],
        "train_images": ms[0]["train_images"], "test_images": ms[0]["test_images"],
        "backbone_metrics": ms[0]["backbone_metrics"],
        "raw_accuracy": raw["accuracy"], "seed_point": {
            "width": sp["param"], "values": sp["values"], "value_compression": sp["value_compression"],
            "accuracy": sp["accuracy"], "drop_points": drop},
        "claim": {"text": "87% smaller feature for ~3 points of accuracy (seed: 87.2%, 82.4% -> "
                          "79.8%)", "holds": None if holds is None else bool(holds),
                  "evidence": ("" if holds is not None else
                               f"not testable: the classifier is at chance level "
                               f"({100 * raw['accuracy']['mean']:.1f}%, chance "
                               f"{100 * chance:.1f}%); ") + f"AE width {sp['param']}: {100 * sp['value_compression']:.1f}% fewer "
                              f"values, accuracy {100 * raw['accuracy']['mean']:.1f}% -> "
                              f"{100 * sp['accuracy']['mean']:.1f}% ({drop:+.1f} points drop; "
                              f"holds when >= 87.2% smaller and drop <= "
                              f"{3.16 + CLAIM_TOLERANCE:.2f} points)"},
        "per_class": per_class, "points": table,
        "ae_train_seconds": ms[0]["ae_train_seconds"], "seconds": ms[0]["seconds"]}


def verdict(holds) -> str:
    return "not testable" if holds is None else ("holds" if holds else "does not hold")


def best_at_budget(table: list[dict]) -> list[dict]:
    """For each AE point: the best baseline with no more bits, to say where the AE wins."""
    rows = []
    for p in sorted((p for p in table if p["method"] == "ae"), key=lambda p: p["bits"]):
        rivals = [q for q in table if q["method"] != "ae" and q["bits"] <= p["bits"]]
        best = max(rivals, key=lambda q: q["accuracy"]["mean"]) if rivals else None
        rows.append({"ae": p, "best_baseline": best})
    return rows


def markdown(res: dict) -> str:
    pc = lambda x: f"{100 * x:.1f}"
    ms = lambda d: f"{100 * d['mean']:.1f} ± {100 * d['std']:.1f}"
    sp = res["seed_point"]
    lines = [f"## Setting {res['title']}", "",
             f"{res['description']}; {res['train_images']} train / {res['test_images']} test images "
             f"(seeded class-balanced subsets of the CIFAR-10 JPEG copy), seeds {res['seeds']}. "
             f"Feature map {'x'.join(map(str, res['feature_shape']))}. Not the seed's setting.", ""]
    if res["backbone_metrics"]:
        b = res["backbone_metrics"]
        lines += [f"Backbone trained here: {b.get('epochs')} epochs on {b.get('train_images')} "
                  f"images, {b.get('train_seconds', 0):.0f} s; its own test accuracy "
                  f"{pc(b.get('test_accuracy', float('nan')))}% (on the first images of the test "
                  "split).", ""]
    lines += [f"**Claim** \"{res['claim']['text']}\": **{verdict(res['claim']['holds'])}**"
              f" here. {res['claim']['evidence']}.", "",
              f"Per-class accuracy (%, mean over seeds), AE of width {sp['width']} (float32 code, "
              f"{pc(sp['value_compression'])}% fewer values), beside the seed's Table 1 (VGG16, 224 px):", "",
              "| class | raw map | AE | diff | seed VGG16 | seed + AE | seed diff |",
              "|---|---|---|---|---|---|---|"]
    for r in res["per_class"]:
        sr, sa = r["seed_raw"], r["seed_ae"]
        seed = f"{sr} | {sa} | {sa - sr:+d}" if sr is not None else "- | - | -"
        lines.append(f"| {r['class']} | {pc(r['raw'])} | {pc(r['ae'])} | "
                     f"{100 * (r['ae'] - r['raw']):+.1f} | {seed} |")
    lines.append(f"| **mean** | {ms(res['raw_accuracy'])} | {ms(sp['accuracy'])} | "
                 f"{-sp['drop_points']:+.1f} | {SEED_MEAN[0]} | {SEED_MEAN[1]} | -2.6 (seed: -3.16) |")
    lines += ["", "Rate-accuracy points (accuracy %, mean ± std over seeds; bits per image "
              "include the 64-bit scale of int8/int4; compression vs the float32 map):", "",
              "| method | size | precision | values | bits/image | bit compression | accuracy | rel. MSE |",
              "|---|---|---|---|---|---|---|---|"]
    for p in sorted(res["points"], key=lambda p: (METHODS.index(p["method"]), -p["bits"])):
        lines.append(f"| {p['method']} | {p['param']} | {p['precision']} | {p['values']} | "
                     f"{p['bits']} | {pc(p['bit_compression'])}% | {ms(p['accuracy'])} | "
                     f"{p['relative_mse']:.3f} |")
    lines += ["", "Where the AE wins: each AE point against the best baseline with no more bits:",
              "", "| AE (width, precision) | bits | AE accuracy | best baseline at <= bits | its bits | its accuracy | AE wins |",
              "|---|---|---|---|---|---|---|"]
    for r in best_at_budget(res["points"]):
        a, b = r["ae"], r["best_baseline"]
        if b is None:
            lines.append(f"| {a['param']}, {a['precision']} | {a['bits']} | {ms(a['accuracy'])} | "
                         "none this small | - | - | yes (no rival) |")
            continue
        win = a["accuracy"]["mean"] > b["accuracy"]["mean"]
        lines.append(f"| {a['param']}, {a['precision']} | {a['bits']} | {ms(a['accuracy'])} | "
                     f"{b['method']} {b['param']}, {b['precision']} | {b['bits']} | "
                     f"{ms(b['accuracy'])} | {'yes' if win else 'no'} |")
    return "\n".join(lines) + "\n"


def write_results(out: pathlib.Path, results: dict[str, dict]) -> None:
    """results.json, results.md and the figures; settings of an earlier invocation that this one
    did not run are kept (``--setting a`` then ``--setting b`` fill one results folder)."""
    previous = out / "results.json"
    if previous.is_file():
        results = {**runs.read_json(previous).get("settings", {}), **results}
        results = {k: results[k] for k in sorted(results)}
    runs.write_json(out / "results.json", {"scale": runs.SCALE, "settings": results})
    parts = ["# S5: feature compression with an autoencoder (this reproduction)", "",
             "Neither setting below is the seed's (VGG16 fine-tuned from torchvision's ImageNet "
             "weights at 224 px on CIFAR-10, which cannot be run here); see docs/s5.md.", ""]
    for name, res in results.items():
        parts.append(markdown(res))
        plot_rate_accuracy(res["points"], out / "figures" / f"rate_accuracy_{name}.png",
                           title=f"S5 {res['title']}")
    runs.atomic_write_text(out / "results.md", "\n".join(parts))


def reproduce_main(argv: Sequence[str]) -> int:
    a = reproduce_parser().parse_args(list(argv))
    if a.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {a.seeds}")
    configs = setting_configs(a)
    work, out = pathlib.Path(a.runs), pathlib.Path(a.out)
    for name, base in configs.items():               # every setting's data before any writing
        load_subsets(dataclasses.replace(base, progress=False))
    runs.make_dir(out)
    results = {}
    for name, base in configs.items():
        ms = []
        for seed in range(a.seeds):
            cfg = dataclasses.replace(base, seed=seed,
                                      feature_cache=str(work / name / "features"))
            run_dir = work / name / f"seed{seed}"
            if runs.is_complete(run_dir):
                m = runs.read_json(run_dir / "metrics.json")
                saved = runs.read_config(run_dir / "config.yaml")
                runs.check_resume_config(saved, to_dict(cfg), run_dir / "config.yaml",
                                         may_differ=RESUME_MAY_DIFFER)
            else:
                resume = run_dir.is_dir() and (run_dir / "config.yaml").is_file()
                if run_dir.is_dir() and not resume:
                    import shutil
                    shutil.rmtree(run_dir)
                print(f"[s5] setting {name} seed {seed}", flush=True)
                m = run(cfg, run_dir, resume=resume)
            sp = m["seed_point"]
            print(f"[s5] setting {name} seed {seed}: raw {m['raw_accuracy']:.4f}, AE w{sp['param']} "
                  f"{sp['accuracy']:.4f}", flush=True)
            ms.append(m)
            results[name] = summarize(name, ms)
            write_results(out, results)
    for res in results.values():
        print(f"[s5] {res['title']}: claim {verdict(res['claim']['holds'])}"
              f": {res['claim']['evidence']}")
    print(f"wrote {out}")
    return 0


__all__ = ("FeatureCompressionConfig", "run", "train_main", "train_parser", "reproduce_main",
           "evaluate_points", "train_ae", "train_head", "fit_pca", "pca_reconstruct",
           "pool_reconstruct", "PooledHead", "SETTINGS", "summarize")
