"""S3's recipe: label subsets, models, the two training phases (autoencoder, classifier) on the
engine, evaluation, one run (``run``) and ``train.py --model mlp|mlp_ae`` (with ``--resume``).
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
from aeclust_jax.config import (ConfigError, add_config_options, add_run_options, config_overrides,
                                load_config, to_dict)
from aeclust_jax.errors import UsageError
from aeclust_jax.progress import Stages
from aeclust_jax.models.mlp import MLPAutoencoder, mlp_autoencoder, mlp_classifier
from aeclust_jax.studies.pretrain.config import DEFAULT_CONFIG, S3Config

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
    """The first ``n`` rows of both (0 or None: all)."""
    return (images[:n], labels[:n]) if n else (images, labels)


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
        sample = jnp.zeros((1,) + x_tr.shape[1:], jnp.float32)
        params = train.jitted_init(model)(keys["init"], sample)["params"]
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
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars or lines (data preparation, training, evaluation stages)")
    add_run_options(p, S3Config, "runs/<dataset>-<model>-lf<fraction>-<seed>",
                    config_help=f"YAML config of S3Config fields (default: {DEFAULT_CONFIG.name})",
                    resume_help="continue the run in --out from its checkpoints (only --epochs may "
                                "differ: a larger one trains the classifier on)")
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


