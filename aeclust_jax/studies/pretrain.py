"""S3: autoencoder pretraining for classification with 1% of the labels (seed 002, MNIST).

    from aeclust_jax.studies.pretrain import S3Config, run
    result = run(S3Config(model="mlp_ae", labels_fraction=0.01), train_ds, test_ds)
    result.metrics      # {"accuracy", "psnr", "nmi", "ae_mse", ...}

Recipe (the seed's own code, ch. 13 of its book, see docs/s3.md): an MLP autoencoder trained on
all training images without labels (MSE on raw 0..255 pixels), then its encoder + a classifier
head trained on a stratified ``labels_fraction`` of the labels (softmax cross-entropy), the encoder
fine-tuned or frozen. Adam (lr 1e-3, eps 1e-8), batch 10, 10 epochs each, weights N(0, 0.03^2).

CLI: ``scripts/train.py --model mlp_ae|mlp ...`` (``train_main``): one run -> run dir with
``metrics.json``; ``scripts/reproduce.py s3`` (``reproduce_main``): the seed's six experiments and
the labels-fraction sweep, mean +- std over seeds -> ``results/s3/``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import pathlib
import time
from typing import Any, Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax

from aeclust_jax import runs, train
from aeclust_jax.cli import make_parser, prog_name
from aeclust_jax.config import (ConfigError, add_config_options, config_dir, config_overrides,
                                field, load_config, to_dict)
from aeclust_jax.errors import UsageError
from aeclust_jax.progress import Stages
from aeclust_jax.models.mlp import ACTIVATIONS, MLPAutoencoder, mlp_autoencoder, mlp_classifier

MODELS = ("mlp", "mlp_ae")
LABEL_SAMPLING = ("stratified", "random")
DEFAULT_CONFIG = config_dir() / "s3_mnist.yaml"


@dataclasses.dataclass(frozen=True)
class S3Config:
    """Every choice of one S3 run (defaults: the seed's code, experiment 3).

    model: ``mlp`` (classifier only) or ``mlp_ae`` (autoencoder pretraining, then classifier).
    labels_fraction: stratified fraction of the train labels used for supervised training (equal
        count per class; 1.0 = every label). The autoencoder always sees every train image.
    label_sampling: ``stratified`` (equal count per class) or ``random`` (round(fraction * N)
        rows uniformly, as the seed's code took the first 1% of its shuffled split).
    hidden_widths: the classifier's hidden dense layers (the MLP's, and the head on the AE code).
    encoder_widths: the AE encoder's dense layers, the last being the code; the decoder mirrors it.
    freeze_encoder: the encoder's params get no update during supervised training.
    carry_adam_state: supervised training continues the encoder's Adam moments and step count
        from autoencoding (the seed's code keeps them per parameter); False = a fresh Adam.
    pixel_max: pixels enter the networks in [0, pixel_max]; 255 = the seed's raw bytes.
    init_std: dense weights ~ N(0, init_std^2), zero biases; None = Flax's LeCun normal.
    optimizer / lr / adam_eps: the engine's ``make_optimizer``; batch_size, epochs (supervised),
        ae_epochs (pretraining; 0 = a random, untrained encoder).
    train_limit / test_limit: use only the first N train / test images (quick runs, tests).
    """
    dataset: str = field("mnist", "dataset name (aeclust_jax.data)")
    model: str = field("mlp_ae", "mlp (classifier only) or mlp_ae (autoencoder pretraining, then "
                                 "the classifier)", choices=MODELS)
    labels_fraction: float = field(0.01, "fraction of the train labels used (0 < f <= 1)")
    label_sampling: str = field("stratified", "stratified (equal count per class) or random",
                                choices=LABEL_SAMPLING)
    hidden_widths: tuple[int, ...] = field((10,), "classifier hidden widths (none: a linear head)")
    encoder_widths: tuple[int, ...] = field((10,), "encoder dense widths, the last = the code, "
                                                   "e.g. 64 10")
    activation: str = field("relu", "hidden activation", choices=tuple(ACTIVATIONS))
    code_activation: str = field("relu", "activation of the code", choices=tuple(ACTIVATIONS))
    freeze_encoder: bool = field(False, "keep the pretrained encoder fixed during supervised "
                                        "training (mlp_ae)")
    carry_adam_state: bool = field(True, "supervised training continues the encoder's Adam "
                                         "moments (the seed's code); no: a fresh Adam")
    pixel_max: float = field(255.0, "input scale: 255 (raw bytes, the seed) or 1")
    init_std: float | None = field(0.03, "dense weights ~ N(0, std^2) (None: Flax's LeCun normal)")
    optimizer: str = field("adam", "optimizer", choices=train.OPTIMIZERS)
    lr: float = field(1e-3, "learning rate")
    adam_eps: float = field(1e-8, "Adam's epsilon")
    batch_size: int = field(10, "batch size (autoencoder and supervised)")
    ae_epochs: int = field(10, "autoencoder epochs (0: a random, untrained encoder)")
    epochs: int = field(10, "supervised epochs")
    seed: int = field(0, "seed of the init, the label subset and the shuffling")
    train_limit: int | None = field(None, "the first N training images (None: all)")
    test_limit: int | None = field(None, "the first N test images (None: all)")

    def __post_init__(self):
        for name in ("hidden_widths", "encoder_widths"):
            v = getattr(self, name)
            object.__setattr__(self, name, (int(v),) if isinstance(v, (int, np.integer))
                               else tuple(int(a) for a in v))
        checks = {
            "model": self.model in MODELS,
            "optimizer": self.optimizer in train.OPTIMIZERS,
            "activation": self.activation in ACTIVATIONS,
            "code_activation": self.code_activation in ACTIVATIONS,
            "labels_fraction": 0.0 < float(self.labels_fraction) <= 1.0,
            "label_sampling": self.label_sampling in LABEL_SAMPLING,
            "encoder_widths": len(self.encoder_widths) >= 1 and min(self.encoder_widths) >= 1,
            "hidden_widths": all(w >= 1 for w in self.hidden_widths),
            "pixel_max": float(self.pixel_max) > 0,
            "init_std": self.init_std is None or float(self.init_std) > 0,
            "lr": float(self.lr) > 0,
            "batch_size": int(self.batch_size) >= 1,
            "epochs": int(self.epochs) >= 1,
            "ae_epochs": int(self.ae_epochs) >= 0,
            "train_limit": self.train_limit is None or int(self.train_limit) >= 1,
            "test_limit": self.test_limit is None or int(self.test_limit) >= 1,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"invalid S3 config value(s) for {bad}: "
                + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
                + f" (model in {MODELS}; label_sampling in {LABEL_SAMPLING}; optimizer in {train.OPTIMIZERS};"
                  f" activations in {tuple(ACTIVATIONS)}; 0 < labels_fraction <= 1; widths >= 1; lr, pixel_max,"
                  " init_std > 0; batch_size, epochs >= 1; ae_epochs >= 0)")


# ----------------------------------------------------------------------------- the seed's experiments

@dataclasses.dataclass(frozen=True)
class Experiment:
    """One row of the seed's table: its number, our name, its words and its test accuracy."""
    number: int
    name: str
    description: str
    seed_accuracy: float
    overrides: dict

    def config(self, base: S3Config) -> S3Config:
        return dataclasses.replace(base, **self.overrides)


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(1, "mlp_all", "MLP, hidden width 10, all labels", 0.900,
               dict(model="mlp", labels_fraction=1.0)),
    Experiment(2, "mlp_1p", "same MLP, 1% of the labels", 0.684,
               dict(model="mlp", labels_fraction=0.01)),
    Experiment(3, "ae_finetune", "AE (code 10) pretrained on all images, classifier on 1%", 0.746,
               dict(model="mlp_ae", labels_fraction=0.01, encoder_widths=(10,))),
    Experiment(4, "ae_frozen", "as 3, encoder frozen during supervised training", 0.749,
               dict(model="mlp_ae", labels_fraction=0.01, encoder_widths=(10,), freeze_encoder=True)),
    Experiment(5, "ae_wide", "as 3 with an extra width-64 layer in encoder and decoder", 0.796,
               dict(model="mlp_ae", labels_fraction=0.01, encoder_widths=(64, 10))),
    Experiment(6, "ae_code1", "as 5 with code width 1", 0.187,
               dict(model="mlp_ae", labels_fraction=0.01, encoder_widths=(64, 1))),
)
SWEEP_FRACTIONS: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)
SWEEP_METHODS: dict[str, dict] = {
    "mlp": dict(model="mlp"),
    "ae_frozen": dict(model="mlp_ae", encoder_widths=(10,), freeze_encoder=True),
    "ae_finetune": dict(model="mlp_ae", encoder_widths=(10,), carry_adam_state=False),
    "ae_finetune_carried": dict(model="mlp_ae", encoder_widths=(10,), carry_adam_state=True),
}
# Beyond the seed: experiments 3 and 5 with a fresh Adam for supervised training (real fine-tuning;
# the seed's code carries the encoder's Adam state over from pretraining, see docs/s3.md).
VARIANTS: tuple[Experiment, ...] = (
    Experiment(3, "ae_finetune_fresh_adam", "as 3, fresh Adam state for supervised training", 0.746,
               dict(model="mlp_ae", labels_fraction=0.01, encoder_widths=(10,), carry_adam_state=False)),
    Experiment(5, "ae_wide_fresh_adam", "as 5, fresh Adam state for supervised training", 0.796,
               dict(model="mlp_ae", labels_fraction=0.01, encoder_widths=(64, 10),
                    carry_adam_state=False)),
)


# ----------------------------------------------------------------------------- core pieces

def stratified_subset(labels: np.ndarray, fraction: float, *, seed: int,
                      num_classes: int | None = None) -> np.ndarray:
    """Sorted row indices (M,) of a label budget of ``fraction`` of ``labels`` (N,), stratified.

    fraction < 1: the same number of rows from every class, round(fraction * N / num_classes)
    (at least 1), drawn without replacement with ``numpy.random.default_rng(seed)``; MNIST at 0.01
    gives 60 per class = 600. fraction == 1: every row. A class with too few rows raises ConfigError.
    """
    labels = np.asarray(labels)
    if labels.ndim != 1:
        raise ValueError(f"labels must be (N,), got shape {labels.shape}")
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"labels fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.arange(len(labels))
    k = num_classes if num_classes is not None else int(labels.max()) + 1
    per_class = max(1, int(round(fraction * len(labels) / k)))
    rng = np.random.default_rng(seed)
    picked = []
    for c in range(k):
        rows = np.flatnonzero(labels == c)
        if len(rows) < per_class:
            raise ConfigError(f"labels fraction {fraction} needs {per_class} rows of class {c}, "
                              f"which has only {len(rows)}")
        picked.append(rng.choice(rows, per_class, replace=False))
    return np.sort(np.concatenate(picked))


# Models, optimizers, losses and prediction functions are built once per distinct setting
# (functools.cache): jit then reuses its compiled epoch / predict functions across the runs of a
# reproduction instead of recompiling for every run.

def random_subset(n: int, fraction: float, *, seed: int) -> np.ndarray:
    """Sorted indices of round(fraction * n) rows (at least 1) drawn uniformly without replacement
    with ``numpy.random.default_rng(seed)``; fraction 1: every row."""
    if not 0.0 < fraction <= 1.0:
        raise ConfigError(f"labels fraction must be in (0, 1], got {fraction}")
    if fraction == 1.0:
        return np.arange(n)
    return np.sort(np.random.default_rng(seed).choice(n, max(1, int(round(fraction * n))), replace=False))


def label_rows(cfg: "S3Config", labels: np.ndarray, num_classes: int) -> np.ndarray:
    """The train rows whose labels supervised training may use (``cfg.label_sampling``)."""
    if cfg.label_sampling == "random":
        return random_subset(len(labels), cfg.labels_fraction, seed=cfg.seed)
    return stratified_subset(labels, cfg.labels_fraction, seed=cfg.seed, num_classes=num_classes)


def build_model(cfg: S3Config, image_shape: Sequence[int], num_classes: int):
    """The Flax module of ``cfg.model`` (MLPClassifier or MLPAutoencoder), one object per setting."""
    return _model(cfg.model, tuple(int(s) for s in image_shape), int(num_classes), cfg.hidden_widths,
                  cfg.encoder_widths, cfg.activation, cfg.code_activation, cfg.init_std)


@functools.cache
def _model(name, image_shape, num_classes, hidden, encoder, activation, code_activation, init_std):
    if name == "mlp":
        return mlp_classifier(hidden_widths=hidden, num_classes=num_classes, activation=activation,
                              init_std=init_std)
    return mlp_autoencoder(image_shape=image_shape, encoder_widths=encoder, head_widths=hidden,
                           num_classes=num_classes, activation=activation,
                           code_activation=code_activation, init_std=init_std)


def scaled(images: jax.Array, pixel_max: float) -> jax.Array:
    """uint8 (N, H, W, C) -> float32 in [0, pixel_max]."""
    return train.to_float(images) * pixel_max


def logits_fn(model) -> Callable:
    """``(params, x) -> logits (N, num_classes)`` for either model; x float images."""
    if isinstance(model, MLPAutoencoder):
        return lambda p, x: model.apply({"params": p}, x, method=MLPAutoencoder.classify)
    return lambda p, x: model.apply({"params": p}, x)


GROUPS = ("encoder", "decoder", "head")


def param_labels(params) -> Any:
    """The group of every leaf of MLPAutoencoder params: ``encoder`` (``encoder_hidden/...``,
    ``encoder_code/...``), ``decoder`` or ``head``."""
    def group(path, _):
        top = train.path_str(path).split("/")[0]
        for g in GROUPS:
            if top.startswith(g):
                return g
        raise ValueError(f"parameter {train.path_str(path)!r} is in no group {GROUPS}")
    return jax.tree_util.tree_map_with_path(group, params)


@functools.cache
def group_optimizer(optimizer: str, lr: float, adam_eps: float,
                    trained: tuple[str, ...] | None) -> optax.GradientTransformation:
    """The engine's optimizer (``train.make_optimizer``) for all params (``trained=None``), or one
    per AE parameter group in ``trained`` with zero updates and no state for the others.
    Per-group states let the encoder's Adam state outlive the pretraining phase."""
    if trained is None:
        return train.make_optimizer(optimizer, lr, adam_eps=adam_eps)
    inner = {g: (train.make_optimizer(optimizer, lr, adam_eps=adam_eps)
                 if g in trained else optax.set_to_zero()) for g in GROUPS}
    return optax.multi_transform(inner, param_labels)


@functools.cache
def reconstruction_loss(model: MLPAutoencoder, pixel_max: float) -> train.steps.LossFn:
    """Engine loss: mean squared error of the reconstruction in [0, pixel_max] units."""
    def loss_fn(p, batch, rng):
        x = scaled(batch["image"], pixel_max)
        recon = model.apply({"params": p}, x, method=lambda m, x: m.decode(m.encode(x)))
        return train.masked_mean((recon - x) ** 2, batch["mask"]), {}
    return loss_fn


@functools.cache
def classification_loss(model, pixel_max: float) -> train.steps.LossFn:
    """Engine loss: softmax cross-entropy of the logits; aux ``accuracy`` of the batch."""
    logits_of = logits_fn(model)

    def loss_fn(p, batch, rng):
        logits = logits_of(p, scaled(batch["image"], pixel_max))
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        hit = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        return train.masked_mean(ce, batch["mask"]), {"accuracy": train.masked_mean(hit, batch["mask"])}
    return loss_fn


def _fit_phase(phase: str, state, data: dict, loss_fn, cfg: S3Config, epochs: int, key: jax.Array,
               checkpoints: pathlib.Path | None, resume: bool, progress: bool):
    """``train.fit`` of one phase (``autoencode`` or ``supervised``); with ``checkpoints`` (a
    folder) its checkpoints go to ``checkpoints/<phase>/`` every epoch and its history to
    ``checkpoints/<phase>.history.jsonl``, and ``resume`` continues from the newest of them."""
    kw: dict[str, Any] = {}
    ckpt = None
    if checkpoints is not None:
        ckpt = train.Checkpointer(checkpoints / phase, every=1, keep=2)
        kw = dict(checkpointer=ckpt, resume=resume,
                  history_path=checkpoints / f"{phase}.history.jsonl")
    try:
        return train.fit(state, data, loss_fn, batch_size=cfg.batch_size, epochs=epochs, key=key,
                         scan_epoch=True, progress=progress, desc=phase, **kw)
    finally:
        if ckpt is not None:
            ckpt.close()


def pretrain_autoencoder(cfg: S3Config, model: MLPAutoencoder, params, images: np.ndarray,
                         key: jax.Array, *, progress: bool = False,
                         checkpoints: pathlib.Path | None = None,
                         resume: bool = False) -> tuple[Any, Any, list[dict]]:
    """Trains encoder + decoder of ``params`` on ``images`` uint8 (N, H, W, C), no labels: mean
    squared error in [0, pixel_max] units (the seed's "cost"); the head is untouched.
    Returns (params, the encoder's optimizer state, history)."""
    tx = group_optimizer(cfg.optimizer, cfg.lr, cfg.adam_eps, ("encoder", "decoder"))
    state = train.create_train_state(model, key, None, tx, params=params)
    res = _fit_phase("autoencode", state, {"image": images},
                     reconstruction_loss(model, cfg.pixel_max), cfg, cfg.ae_epochs, key,
                     checkpoints, resume, progress)
    return res.state.params, res.state.opt_state.inner_states["encoder"], res.history


def classifier_state(cfg: S3Config, model, params, key: jax.Array, encoder_opt_state=None):
    """The engine TrainState of supervised training: MLP: one optimizer; AE: per-group
    optimizers (head, and the encoder unless frozen), the encoder's Adam state taken from
    ``encoder_opt_state`` when given (the seed's code carries it over from pretraining)."""
    trained = None if cfg.model == "mlp" else (
        ("head",) if cfg.freeze_encoder else ("encoder", "head"))
    tx = group_optimizer(cfg.optimizer, cfg.lr, cfg.adam_eps, trained)
    state = train.create_train_state(model, key, None, tx, params=params)
    if trained is not None and encoder_opt_state is not None and "encoder" in trained:
        inner = dict(state.opt_state.inner_states, encoder=encoder_opt_state)
        state = state.replace(opt_state=state.opt_state._replace(inner_states=inner))
    return state


def train_classifier(cfg: S3Config, model, params, images: np.ndarray, labels: np.ndarray,
                     key: jax.Array, *, encoder_opt_state=None, progress: bool = False,
                     checkpoints: pathlib.Path | None = None,
                     resume: bool = False) -> tuple[Any, list[dict]]:
    """Supervised training of ``params`` on labelled images (N, H, W, C) uint8 / labels (N,):
    softmax cross-entropy. AE: the decoder never moves; with ``cfg.freeze_encoder`` neither does
    the encoder; else ``encoder_opt_state`` (from pretraining), when given, seeds its Adam state."""
    state = classifier_state(cfg, model, params, key, encoder_opt_state)
    res = _fit_phase("supervised", state, {"image": images, "label": labels},
                     classification_loss(model, cfg.pixel_max), cfg, cfg.epochs, key,
                     checkpoints, resume, progress)
    return res.state.params, res.history


@functools.cache
def _predict_fn(model, pixel_max: float, what: str) -> Callable:
    """Jittable ``(params, batch) -> outputs`` on uint8 ``batch["image"]``; what: logits | codes |
    recon_codes."""
    def fn(p, b):
        x = scaled(b["image"], pixel_max)
        if what == "logits":
            return logits_fn(model)(p, x)
        code = model.apply({"params": p}, x, method=MLPAutoencoder.encode)
        if what == "codes":
            return code
        return model.apply({"params": p}, code, method=MLPAutoencoder.decode), code
    return fn


def predict(model, params, images: np.ndarray, pixel_max: float, what: str) -> Any:
    """``_predict_fn`` outputs over all images (N, H, W, C) uint8, in batches of 2000."""
    return train.predict(_predict_fn(model, float(pixel_max), what), params, {"image": images},
                         batch_size=2000, mesh=train.make_mesh())


def encode(model: MLPAutoencoder, params, images: np.ndarray, pixel_max: float) -> np.ndarray:
    """Codes (N, encoder_widths[-1]) of uint8 images (N, H, W, C)."""
    return predict(model, params, images, pixel_max, "codes")


def autoencoder_metrics(cfg: S3Config, model: MLPAutoencoder, params, test_images: np.ndarray,
                        test_labels: np.ndarray, num_classes: int, key: jax.Array, *,
                        stage: Stages | None = None) -> dict[str, float]:
    """``psnr`` (dB; reconstructions clipped to the pixel range, on [0, 1] with max 1, mean over
    images), ``ae_mse`` (in [0, pixel_max] units, the seed's "cost") and ``nmi`` of K-means
    (k = num_classes, k-means++, 10 restarts) on the codes of the test images (N, H, W, C).
    ``stage`` (a progress.Stages) times each stage and, when enabled, prints a line per stage."""
    from aeclust_jax.cluster import kmeans
    from aeclust_jax.metrics import nmi, psnr

    stage = stage or Stages()
    with stage("encode", f"encode + reconstruct {len(test_images)} test images"):
        recon, codes = predict(model, params, test_images, cfg.pixel_max, "recon_codes")
    with stage("kmeans", f"K-means (k={num_classes}, 10 restarts) on the {codes.shape[1]}-d codes"):
        clusters = np.asarray(kmeans(jnp.asarray(codes, jnp.float32), num_classes, key=key,
                                     n_init=10).labels)
    with stage("metrics", "PSNR / NMI"):
        x01 = test_images.astype(np.float32) / 255.0
        r01 = np.clip(recon / cfg.pixel_max, 0.0, 1.0)
        return {"psnr": float(np.mean(np.asarray(psnr(r01, x01, max_val=1.0)))),
                "ae_mse": float(np.mean((recon - x01 * cfg.pixel_max) ** 2)),
                "nmi": float(nmi(test_labels, clusters))}


def evaluate(cfg: S3Config, model, params, test_images: np.ndarray, test_labels: np.ndarray,
             num_classes: int, key: jax.Array, *, stage: Stages | None = None) -> dict[str, float]:
    """Test ``accuracy`` of the classifier; for the AE also ``autoencoder_metrics``."""
    from aeclust_jax.metrics import accuracy

    stage = stage or Stages()
    with stage("encode", f"classify {len(test_images)} test images"):
        logits = predict(model, params, test_images, cfg.pixel_max, "logits")
    with stage("metrics", "test accuracy"):
        out = {"accuracy": float(accuracy(test_labels, np.argmax(logits, -1)))}
    if isinstance(model, MLPAutoencoder):
        out.update(autoencoder_metrics(cfg, model, params, test_images, test_labels, num_classes, key,
                                       stage=stage))
    return out


@dataclasses.dataclass
class RunResult:
    config: S3Config
    metrics: dict[str, float]
    params: Any                        # final params
    pretrained: Any                    # AE after pretraining: {"params", "encoder_opt_state"} (MLP: None)
    history: dict[str, list[dict]]     # {"autoencode": [...], "supervised": [...]}
    labelled_rows: np.ndarray          # indices of the train rows whose labels were used


def seed_keys(seed: int) -> dict[str, jax.Array]:
    """The keys of one run, each derived from ``seed`` alone (so exp. 3 and 4 share init + AE)."""
    base = jax.random.key(seed)
    return {name: jax.random.fold_in(base, i) for i, name in
            enumerate(("init", "autoencode", "supervised", "kmeans"))}


def limit(images: np.ndarray, labels: np.ndarray, n: int | None):
    return (images, labels) if n is None else (images[:n], labels[:n])


def run(cfg: S3Config, train_ds, test_ds, *, pretrained=None, progress: bool = False,
        checkpoints: pathlib.Path | None = None, resume: bool = False) -> RunResult:
    """One S3 run on Dataset splits (``images`` uint8 (N, H, W, C), ``labels`` (N,)).

    ``pretrained``: ``RunResult.pretrained`` of a run with the same encoder config and seed (skips
    pretraining; the reproduction shares it between experiments 3 and 4 and the sweep).
    ``checkpoints``: a folder for each phase's checkpoints; ``resume`` continues from them (the
    same numbers as an uninterrupted run: the keys depend on the seed and the epoch only).
    """
    x_tr, y_tr = limit(train_ds.images, train_ds.labels, cfg.train_limit)
    x_te, y_te = limit(test_ds.images, test_ds.labels, cfg.test_limit)
    k = int(train_ds.num_classes)
    model = build_model(cfg, x_tr.shape[1:], k)
    keys = seed_keys(cfg.seed)
    history: dict[str, list[dict]] = {}
    if pretrained is None:
        params = model.init(keys["init"], jnp.zeros((1,) + x_tr.shape[1:], jnp.float32))["params"]
        pretrained = {"params": params, "encoder_opt_state": None} if cfg.model == "mlp_ae" else None
        if cfg.model == "mlp_ae" and cfg.ae_epochs > 0:
            params, enc_state, history["autoencode"] = pretrain_autoencoder(
                cfg, model, params, x_tr, keys["autoencode"], progress=progress,
                checkpoints=checkpoints, resume=resume)
            pretrained = {"params": params, "encoder_opt_state": enc_state}
    params = pretrained["params"] if pretrained is not None else params
    ae_params = params if cfg.model == "mlp_ae" else None
    carried = pretrained["encoder_opt_state"] if (pretrained and cfg.carry_adam_state) else None
    rows = label_rows(cfg, y_tr, k)
    params, history["supervised"] = train_classifier(
        cfg, model, params, x_tr[rows], y_tr[rows], keys["supervised"], encoder_opt_state=carried,
        progress=progress, checkpoints=checkpoints, resume=resume)
    stage = Stages(progress)
    metrics = evaluate(cfg, model, params, x_te, y_te, k, keys["kmeans"], stage=stage)
    if ae_params is not None:   # the AE as pretrained (frozen: encoder and decoder unchanged)
        if not cfg.freeze_encoder:
            stage.prefix = "eval (pretrained AE)"
        pre = ({n: metrics[n] for n in ("psnr", "ae_mse", "nmi")} if cfg.freeze_encoder else
               autoencoder_metrics(cfg, model, ae_params, x_te, y_te, k, keys["kmeans"], stage=stage))
        metrics.update({f"pretrained_{name}": v for name, v in pre.items()})
    metrics["labels_used"] = int(len(rows))
    return RunResult(cfg, metrics, params, pretrained, history, rows)


def load_splits(cfg: S3Config, *, progress: bool = False):
    """(train, test) Dataset of ``cfg.dataset`` via ``aeclust_jax.data.load``."""
    from aeclust_jax.data import load
    return load(cfg.dataset, "train", progress=progress), load(cfg.dataset, "test", progress=progress)


def check_data(cfg: S3Config, train_ds, test_ds) -> None:
    """Raises ConfigError when ``cfg`` cannot run on these splits: a label budget a class cannot
    fill, fewer test images than classes for K-means, a batch size that is not a multiple of the
    devices."""
    y_tr = limit(train_ds.images, train_ds.labels, cfg.train_limit)[1]
    n_te = len(limit(test_ds.images, test_ds.labels, cfg.test_limit)[1])
    k = int(train_ds.num_classes)
    label_rows(cfg, y_tr, k)
    if cfg.model == "mlp_ae" and n_te < k:
        raise ConfigError(f"{n_te} test images: K-means on the codes needs at least {k} (classes)")
    if cfg.batch_size % jax.device_count():
        raise ConfigError(f"batch_size {cfg.batch_size} must be a multiple of the "
                          f"{jax.device_count()} devices")


# ----------------------------------------------------------------------------- CLI: train

_DEFAULTS = S3Config()


def _d(name: str) -> str:
    value = getattr(_DEFAULTS, name)
    return f"(default: {' '.join(map(str, value)) if isinstance(value, tuple) else value})"


def train_parser() -> argparse.ArgumentParser:
    """The options of ``train.py --model mlp|mlp_ae``."""
    p = make_parser(
        prog=prog_name("train.py"), description="S3: train one MLP classifier (mlp) or autoencoder-"
        "pretrained classifier (mlp_ae) with a fraction of the labels, then evaluate it.\n\n"
        f"An option left out takes its value from --config (default: {DEFAULT_CONFIG.name}),\n"
        "else the default shown (S3Config's).")
    add_config_options(p, S3Config)
    p.add_argument("--config", help=f"YAML config of S3Config fields (default: {DEFAULT_CONFIG.name})")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars or lines (data preparation, training, evaluation stages)")
    p.add_argument("--out", help="run folder (default runs/<dataset>-<model>-lf<fraction>-<seed>)")
    p.add_argument("--resume", action="store_true",
                   help="continue the run in --out from its checkpoints (only --epochs may differ: "
                        "a larger one trains the classifier on)")
    return p


def config_from_args(args) -> S3Config:
    """Defaults <- configs/s3_mnist.yaml (or --config) <- options typed."""
    over = config_overrides(args, S3Config)
    saved = pathlib.Path(args.out or "") / "config.yaml"
    if args.resume and args.out and saved.is_file():
        cfg = load_config(S3Config, None, over, base=load_config(S3Config, saved))
    else:
        path = args.config
        if path is None and DEFAULT_CONFIG.is_file():
            path = DEFAULT_CONFIG
        cfg = load_config(S3Config, path, over)
    if cfg.freeze_encoder and cfg.model != "mlp_ae":
        raise ConfigError("--freeze-encoder needs --model mlp_ae (the plain mlp has no encoder)")
    return cfg


def write_run(out: pathlib.Path, result: RunResult) -> None:
    """config.yaml, history.jsonl (autoencode then supervised epochs), labelled_rows.npy, then
    metrics.json last (its presence marks the run complete)."""
    import json

    runs.write_config(out / "config.yaml", to_dict(result.config))
    lines = [json.dumps({"phase": phase, **rec}) for phase, recs in result.history.items() for rec in recs]
    runs.atomic_write_text(out / "history.jsonl", "".join(l + "\n" for l in lines))
    np.save(out / "labelled_rows.npy", result.labelled_rows)
    runs.write_json(out / "metrics.json", {**result.metrics, "scale": runs.SCALE})


RESUME_MAY_DIFFER = ("epochs",)


def _check_resume(cfg: S3Config, out: pathlib.Path) -> bool:
    """--resume: refuses a config that differs from the saved one in anything but ``epochs``;
    True when the run is already complete with ``cfg.epochs`` (nothing to do). Reads only."""
    saved = out / "config.yaml"
    if not saved.is_file():
        raise ConfigError(f"--resume: {out} holds no config.yaml (not a run of train.py)")
    runs.check_resume_config(runs.read_config(saved), to_dict(cfg), saved,
                             may_differ=RESUME_MAY_DIFFER)
    done = runs.is_complete(out)
    if done and runs.read_json(out / "metrics.json").get("epochs", cfg.epochs) > cfg.epochs:
        raise ConfigError(f"--resume: {out} is already trained for more than {cfg.epochs} "
                          "epochs; --epochs can only grow")
    return done and runs.read_json(out / "metrics.json").get("epochs") == cfg.epochs


def train_main(argv: Sequence[str]) -> int:
    args = train_parser().parse_args(list(argv))
    if args.resume and not args.out:
        raise UsageError("--resume needs --out, the run folder to continue")
    cfg = config_from_args(args)
    out = pathlib.Path(args.out or f"runs/{cfg.dataset}-{cfg.model}-lf{cfg.labels_fraction:g}-{cfg.seed}")
    runs.check_run_dir(out, resume=args.resume)   # config, folder, data: all checked before writing
    if args.resume and _check_resume(cfg, out):
        print(f"{out} is already complete with {cfg.epochs} epochs; nothing to do")
        return 0
    train_ds, test_ds = load_splits(cfg, progress=not args.no_progress)
    check_data(cfg, train_ds, test_ds)
    out = runs.prepare_run_dir(out, resume=args.resume)
    if args.resume:
        previous = out / "metrics.json"
        if previous.is_file():
            previous.replace(out / f"metrics.epochs{runs.read_json(previous)['epochs']}.json")
        print(f"resuming {out} (its checkpoints: autoencoder and classifier) to {cfg.epochs} epochs")
    runs.write_config(out / "config.yaml", to_dict(cfg))
    t0 = time.perf_counter()
    result = run(cfg, train_ds, test_ds, progress=not args.no_progress,
                 checkpoints=out / "checkpoints", resume=args.resume)
    result.metrics["seconds"] = time.perf_counter() - t0
    result.metrics["epochs"] = cfg.epochs
    write_run(out, result)
    keys = ("accuracy", "psnr", "nmi", "pretrained_nmi", "labels_used")
    print(" ".join(f"{k}={result.metrics[k]:.4g}" for k in keys if k in result.metrics))
    print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------- reproduce

SWEEP_NAMES = {"mlp": "MLP (no pretraining)", "ae_frozen": "pretrained encoder, frozen",
               "ae_finetune": "pretrained encoder, fine-tuned (fresh Adam)",
               "ae_finetune_carried": "pretrained encoder, fine-tuned (Adam state carried, the seed's)"}
TSNE_PANELS = (  # figure panel: (title, experiment whose run provides the codes, which params)
    ("AE code 10, pretrained (exp. 3/4)", EXPERIMENTS[2], "pretrained"),
    ("AE code 10, fine-tuned on 1%, fresh Adam (exp. 3′)", VARIANTS[0], "final"),
    ("AE 64-10, pretrained (exp. 5)", EXPERIMENTS[4], "pretrained"),
)


def job_name(cfg: S3Config) -> str:
    """A file-name-safe id of a run config within a reproduction (model, widths, freeze, labels, seed)."""
    parts = [cfg.model]
    if cfg.model == "mlp_ae":
        parts.append("enc" + "x".join(map(str, cfg.encoder_widths)))
        parts.append("frozen" if cfg.freeze_encoder else
                     "finetune-" + ("carried" if cfg.carry_adam_state else "fresh"))
    parts += [f"lf{cfg.labels_fraction:g}", f"seed{cfg.seed}"]
    return "-".join(parts)


def planned_jobs(base: S3Config, seeds: Sequence[int], experiments: Sequence[Experiment],
                 fractions: Sequence[float]) -> dict[str, S3Config]:
    """job name -> config of every run the reproduction needs: ``experiments`` (and the
    VARIANTS of the listed ones), the sweep; deduplicated, e.g. the sweep's 1% points are
    experiments 2, 3, 4 and its MLP at 100% is experiment 1."""
    return _planned(base, seeds, list(experiments) + variants_of(experiments), fractions)


def variants_of(experiments: Sequence[Experiment]) -> list[Experiment]:
    numbers = {e.number for e in experiments}
    return [v for v in VARIANTS if v.number in numbers]


def _planned(base: S3Config, seeds: Sequence[int], experiments: Sequence[Experiment],
             fractions: Sequence[float]) -> dict[str, S3Config]:
    jobs: dict[str, S3Config] = {}
    for seed in seeds:
        cfgs = [e.config(base) for e in experiments]
        cfgs += [dataclasses.replace(base, labels_fraction=f, **m)
                 for m in SWEEP_METHODS.values() for f in fractions]
        for cfg in cfgs:
            cfg = dataclasses.replace(cfg, seed=seed)
            jobs.setdefault(job_name(cfg), cfg)
    return jobs


def _pretrain_id(cfg: S3Config):
    """Runs with the same id share one pretrained autoencoder."""
    return (cfg.encoder_widths, cfg.code_activation, cfg.seed, cfg.ae_epochs, cfg.train_limit)


def run_jobs(jobs: dict[str, S3Config], train_ds, test_ds, runs_dir: pathlib.Path, *,
             tsne_samples: int, code_jobs: Sequence[str], progress: bool) -> None:
    """Runs every job whose ``runs_dir/<name>.json`` is missing, sharing pretrained AEs per
    (encoder, seed); for the jobs in ``code_jobs`` also saves the codes of the first
    ``tsne_samples`` test images (``<name>.codes.npz``: pretrained, final) for the t-SNE figure."""
    todo = [n for n in jobs if not (runs_dir / f"{n}.json").is_file()]
    cache: dict[Any, Any] = {}
    names = todo
    if progress:
        from tqdm.auto import tqdm
        names = tqdm(todo, desc="s3 runs", unit="run", dynamic_ncols=True)
    for name in names:
        cfg = jobs[name]
        pid = _pretrain_id(cfg) if cfg.model == "mlp_ae" else None
        cache = {k: v for k, v in cache.items() if k[2] == cfg.seed}   # this seed's AEs only
        t0 = time.perf_counter()
        result = run(cfg, train_ds, test_ds, pretrained=cache.get(pid))
        if pid is not None:
            cache[pid] = result.pretrained
            if name in code_jobs:
                x = limit(test_ds.images, test_ds.labels, cfg.test_limit)[0][:tsne_samples]
                model = build_model(cfg, x.shape[1:], int(test_ds.num_classes))
                np.savez(runs_dir / f"{name}.codes.npz",
                         pretrained=encode(model, result.pretrained["params"], x, cfg.pixel_max),
                         final=encode(model, result.params, x, cfg.pixel_max))
        record = {"name": name, "scale": runs.SCALE, "config": to_dict(cfg), "metrics": result.metrics,
                  "seconds": time.perf_counter() - t0,
                  "history": result.history}
        runs.write_json(runs_dir / f"{name}.json", record)


def summarize(jobs: dict[str, S3Config], runs_dir: pathlib.Path, base: S3Config,
              seeds: Sequence[int], experiments: Sequence[Experiment],
              fractions: Sequence[float]) -> tuple[list[dict], list[dict], list[dict]]:
    """(results: one object per experiment, variants: one per VARIANTS row, sweep: one per
    (method, fraction)), each mean +- std over seeds."""
    def collect(cfgs: list[S3Config]) -> dict[str, Any]:
        recs = [runs.read_json(runs_dir / f"{job_name(c)}.json")["metrics"] for c in cfgs]
        out = {"scale": runs.SCALE, "seeds": [c.seed for c in cfgs], "labels_used": recs[0]["labels_used"]}
        for key in ("accuracy", "psnr", "nmi", "pretrained_psnr", "pretrained_nmi", "pretrained_ae_mse"):
            if key in recs[0]:
                vals = [r[key] for r in recs]
                ms = runs.mean_std(vals)
                values = "accuracies" if key == "accuracy" else f"{key}_values"
                out.update({f"{key}_mean": ms["mean"], f"{key}_std": ms["std"], values: vals})
        return out

    def rows(exps):
        out = []
        for e in exps:
            cfgs = [dataclasses.replace(e.config(base), seed=s) for s in seeds]
            row = {"experiment": e.number, "name": e.name, "description": e.description,
                   "seed_accuracy": e.seed_accuracy, **collect(cfgs)}
            row["difference"] = row["accuracy_mean"] - e.seed_accuracy
            out.append(row)
        return out

    results, variants = rows(experiments), rows(variants_of(experiments))
    sweep = []
    for method, over in SWEEP_METHODS.items():
        for f in fractions:
            cfgs = [dataclasses.replace(base, labels_fraction=f, seed=s, **over) for s in seeds]
            sweep.append({"method": method, "labels_fraction": f, **collect(cfgs)})
    return results, variants, sweep


def results_markdown(results: list[dict], variants: list[dict], sweep: list[dict], n_seeds: int,
                     n_test: int) -> str:
    """The experiments table next to the seed's numbers, the variants, the sweep (markdown)."""
    lines = [f"Test accuracy on MNIST ({n_test} test images), mean ± std over {n_seeds} seed(s); "
             "accuracy and NMI on the 0-1 scale.", "",
             "| # | experiment | labels | seed's accuracy (0-1) | ours (0-1) | ours − seed's | AE PSNR (dB) "
             "| NMI of code (0-1) |",
             "|---|---|---|---|---|---|---|---|"]
    for r, mark in [(r, "") for r in results] + [(v, "′") for v in variants]:
        psnr = f"{r['pretrained_psnr_mean']:.2f}" if "pretrained_psnr_mean" in r else "–"
        nmi = f"{r['pretrained_nmi_mean']:.3f}" if "pretrained_nmi_mean" in r else "–"
        lines.append(f"| {r['experiment']}{mark} | {r['description']} | {r['labels_used']} | "
                     f"{r['seed_accuracy']:.3f} | {r['accuracy_mean']:.3f} ± {r['accuracy_std']:.3f} | "
                     f"{r['difference']:+.3f} | {psnr} | {nmi} |")
    lines += ["", "AE PSNR and NMI: the pretrained autoencoder (before supervised training); NMI of "
              "K-means (k=10) on the codes of the test images. Rows marked ′ are not in the seed: "
              "the same experiment with a fresh Adam state for supervised training."]
    if not sweep:
        return "\n".join(lines) + "\n"
    lines += ["", "Labels-fraction sweep (test accuracy on the 0-1 scale, mean ± std):", "",
              "| labels | " + " | ".join(SWEEP_NAMES[m] for m in SWEEP_METHODS) + " |",
              "|---|" + "---|" * len(SWEEP_METHODS)]
    fractions = list(dict.fromkeys(s["labels_fraction"] for s in sweep))
    for f in fractions:
        cells = {s["method"]: s for s in sweep if s["labels_fraction"] == f}
        first = next(iter(cells.values()))
        lines.append(f"| {f:g} ({first['labels_used']}) | " + " | ".join(
            f"{cells[m]['accuracy_mean']:.3f} ± {cells[m]['accuracy_std']:.3f}" for m in SWEEP_METHODS) + " |")
    return "\n".join(lines) + "\n"


def plot_sweep(sweep: list[dict], path) -> pathlib.Path:
    """Test accuracy vs number of labels (log x), one line with std error bars per method."""
    from aeclust_jax import viz
    fig, ax = viz.figure(figsize=(5, 3.6))
    for m in SWEEP_METHODS:
        pts = sorted((s["labels_used"], s["accuracy_mean"], s["accuracy_std"])
                     for s in sweep if s["method"] == m)
        xs, ys, es = zip(*pts)
        ax.errorbar(xs, ys, yerr=es, marker="o", ms=4, capsize=3, label=SWEEP_NAMES[m])
    ax.set_xscale("log")
    ax.set_xlabel("labelled training images")
    ax.set_ylabel("test accuracy (0-1)")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
    ax.set_title("S3: accuracy vs labels (MNIST)", fontsize=10)
    return viz.save(fig, path)


def plot_codes(runs_dir: pathlib.Path, base: S3Config, code_seed: int, labels: np.ndarray,
               path, experiments: Sequence[Experiment],
               class_names: Sequence[str] | None = None) -> pathlib.Path | None:
    """t-SNE of the AE codes (first test images) coloured by label, one panel per TSNE_PANELS;
    each panel's title gives NMI / ACC of K-means (k = classes, 10 restarts) on its embedding."""
    from aeclust_jax import viz
    from aeclust_jax.cluster import kmeans, tsne
    from aeclust_jax.metrics import acc, nmi
    wanted = list(experiments) + variants_of(experiments)
    panels = []
    for title, exp, which in TSNE_PANELS:
        if exp not in wanted:
            continue
        f = runs_dir / f"{job_name(dataclasses.replace(exp.config(base), seed=code_seed))}.codes.npz"
        if f.is_file():
            with np.load(f) as z:
                panels.append((title, z[which]))
    if not panels:
        return None
    k = int(labels.max()) + 1
    shown = {}
    for title, codes in panels:
        emb = tsne(np.asarray(codes, np.float32), 2, perplexity=min(30.0, (len(codes) - 1) / 3),
                   seed=code_seed)
        y = labels[:len(codes)]
        pred = np.asarray(kmeans(jnp.asarray(emb, jnp.float32), k, key=jax.random.key(code_seed),
                                 n_init=10).labels)
        shown[title] = (emb, y, {"NMI": float(nmi(y, pred)), "ACC": float(acc(y, pred))})
    return viz.tsne_panels(shown, path, class_names=class_names,
                           title=f"t-SNE of autoencoder codes, {len(panels[0][1])} test images "
                                 "(NMI/ACC of K-means on each embedding)")


def reproduce_parser() -> argparse.ArgumentParser:
    """The options of ``reproduce.py s3``."""
    p = make_parser(
        prog=prog_name("reproduce.py") + " s3", description="S3: the seed's six experiments and the "
        "labels-fraction sweep, mean +- std over seeds.\nRuns already in OUT/runs are reused (resumable).")
    p.add_argument("--seeds", type=int, default=5, help="seeds 0..N-1")
    p.add_argument("--epochs", type=int, help=f"autoencoder and supervised epochs {_d('epochs')}")
    p.add_argument("--out", default="results/s3", help="folder of the tables, figures and runs/")
    p.add_argument("--config", help=f"base YAML config (default: {DEFAULT_CONFIG.name} when present)")
    p.add_argument("--experiments", type=int, nargs="+", choices=[e.number for e in EXPERIMENTS],
                   help="subset of the experiments 1..6 (default all)")
    p.add_argument("--fractions", type=float, nargs="*", default=list(SWEEP_FRACTIONS),
                   help="labels fractions of the sweep (default 0.001 0.01 0.1 1; none = no sweep)")
    p.add_argument("--tsne-samples", type=int, default=2000, help="test images in the t-SNE figure")
    p.add_argument("--train-limit", type=int, help="use the first N training images (quick runs; default: all)")
    p.add_argument("--test-limit", type=int, help="evaluate on the first N test images (default: all)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars")
    return p


def reproduce_main(argv: Sequence[str]) -> int:
    args = reproduce_parser().parse_args(list(argv))
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    if any(not 0 < f <= 1 for f in args.fractions):
        raise UsageError(f"--fractions must lie in (0, 1], got {args.fractions}")
    path = args.config or (DEFAULT_CONFIG if DEFAULT_CONFIG.is_file() else None)
    over = {"ae_epochs": args.epochs, "epochs": args.epochs, "train_limit": args.train_limit,
            "test_limit": args.test_limit}
    base = load_config(S3Config, path, over)
    seeds = list(range(args.seeds))
    experiments = [e for e in EXPERIMENTS if args.experiments is None or e.number in args.experiments]
    fractions = sorted(set(args.fractions))
    out = pathlib.Path(args.out)
    runs_dir = out / "runs"
    manifest = {"base_config": to_dict(base), "seeds": seeds,
                "experiments": [e.number for e in experiments], "fractions": fractions}
    old = out / "reproduce.json"
    if old.is_file() and runs.read_json(old)["base_config"] != manifest["base_config"]:
        raise runs.RunExistsError(f"{out} holds a reproduction with another base config "
                                  f"(see {old}); choose another --out")
    jobs = planned_jobs(base, seeds, experiments, fractions)
    train_ds, test_ds = load_splits(base, progress=not args.no_progress)
    for cfg in jobs.values():      # every job's config fits the data before anything is written
        check_data(cfg, train_ds, test_ds)
    runs.make_dir(runs_dir)
    runs.write_json(old, manifest)
    code_jobs = [job_name(dataclasses.replace(e.config(base), seed=seeds[0])) for _, e, _ in TSNE_PANELS]
    run_jobs(jobs, train_ds, test_ds, runs_dir, tsne_samples=args.tsne_samples, code_jobs=code_jobs,
             progress=not args.no_progress)
    results, variants, sweep = summarize(jobs, runs_dir, base, seeds, experiments, fractions)
    runs.write_json(out / "results.json", results)
    runs.write_json(out / "variants.json", variants)
    runs.write_json(out / "sweep.json", sweep)
    test_labels = limit(test_ds.images, test_ds.labels, base.test_limit)[1]
    table = results_markdown(results, variants, sweep, len(seeds), len(test_labels))
    runs.atomic_write_text(out / "results.md", table)

    from aeclust_jax import viz
    viz.grouped_bars({f"{r['experiment']}": {"seed's report": (r["seed_accuracy"], 0.0),
                                              "ours": (r["accuracy_mean"], r["accuracy_std"])}
                      for r in results}, out / "accuracy.png", ylabel="test accuracy",
                     title=f"S3 experiments 1-6 (MNIST), ours over {len(seeds)} seed(s)")
    if sweep:
        plot_sweep(sweep, out / "sweep.png")
    plot_codes(runs_dir, base, seeds[0], test_labels, out / "tsne_codes.png", experiments,
               class_names=test_ds.class_names)
    print(table)
    print(f"wrote {out}")
    return 0
