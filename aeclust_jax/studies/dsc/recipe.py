"""S4's recipe: pretraining the AE (cached, keyed by what determines it), the DSC fine-tune on
the engine, spectral clustering of the affinity, one run and ``train.py --model dsc``.
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aeclust_jax import runs
from aeclust_jax.cli import make_parser, prog_name
from aeclust_jax.config import (ConfigError, add_config_options, config_overrides, load_config, to_dict)
from aeclust_jax.errors import UsageError
from aeclust_jax.models.dsc import DSCNet, dsc_net
from aeclust_jax.progress import Stages
from aeclust_jax.studies.dsc.config import DSCConfig, MAX_SAMPLES, PRESETS, auto_config, preset

# ----------------------------------------------------------------------------- core pieces

def as_float_images(images) -> np.ndarray:
    """(N, H, W, C) uint8 or float in [0, 1] -> float32; other shapes raise ValueError."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {images.dtype}")
    return images.astype(np.float32)


def build_model(config: DSCConfig, image_channels: int, n_samples: int | None = None) -> DSCNet:
    """The DSC network of ``config``; ``n_samples=None`` is the plain AE of pretraining."""
    return dsc_net(channels=config.channels, kernel_sizes=config.kernel_sizes,
                   strides=config.strides, image_channels=image_channels,
                   attention=config.attention and n_samples is not None,
                   n_samples=n_samples, c_init=config.c_init)


def dsc_loss(x, x_hat, z, z_c, c, lambda1: float, lambda2: float):
    """(total, terms) of ``0.5||x - x_hat||^2 + lambda1||c||^2 + lambda2/2 ||z - z_c||^2``.

    x, x_hat: (N, H, W, C); z, z_c: (N, D); c: (N, N). Sums, not means (as DSC-Net).
    """
    recon = 0.5 * jnp.sum((x_hat - x) ** 2)
    reg = jnp.sum(c ** 2)
    self_expr = 0.5 * jnp.sum((z - z_c) ** 2)
    total = recon + lambda1 * reg + lambda2 * self_expr
    return total, {"recon": recon, "reg": reg, "self_expr": self_expr}


PRETRAIN_RECIPE = 1   # bump when pretrain() changes what it computes: old folders are refused

def pretrain_fields(x: np.ndarray, config: DSCConfig, key: jax.Array) -> dict:
    """Everything that determines ``pretrain``'s AE: the encoder, the pretraining
    hyperparameters, the images (N, H, W, C) by digest, the key and the recipe version."""
    return {"recipe": f"dsc-pretrain-{PRETRAIN_RECIPE}", "channels": config.channels,
            "kernel_sizes": config.kernel_sizes, "strides": config.strides,
            "pretrain_epochs": config.pretrain_epochs,
            "pretrain_batch_size": config.pretrain_batch_size, "pretrain_lr": config.pretrain_lr,
            "images": {"shape": list(x.shape), "sha1": runs.array_digest(x)},
            "key": np.asarray(jax.random.key_data(key)).tolist()}


def pretrain(x: np.ndarray, config: DSCConfig, key: jax.Array, *, checkpoint_dir=None,
             progress: bool = False) -> tuple[dict, float]:
    """Pretrains the plain AE on x (N, H, W, C) float; returns (params, seconds of training).

    With ``checkpoint_dir`` the trained AE is saved there (orbax, via ``train.fit``) and a later
    call with the same folder restores it instead of training again (seconds: as first measured).
    The folder is tied to what determines the AE (``pretrain_fields``: the encoder, the pretraining
    hyperparameters, the images' digest, the key, the recipe version): other inputs raise
    ConfigError naming the fields that differ, never a silent reuse.
    """
    from aeclust_jax import train

    model = build_model(config, x.shape[-1])
    init_key, fit_key = jax.random.split(key)
    state = train.create_train_state(model, init_key, jnp.asarray(x[:1]),
                                     train.make_optimizer("adam", config.pretrain_lr, adam_eps=1e-8),
                                     init_kwargs={"method": DSCNet.reconstruct})
    if config.pretrain_epochs == 0:
        return state.params, 0.0

    def loss_fn(params, batch, rng):
        xb = batch["image"]
        x_hat = model.apply({"params": params}, xb, method=DSCNet.reconstruct)
        per_row = 0.5 * jnp.sum((x_hat - xb) ** 2, axis=(1, 2, 3))
        loss = jnp.sum(per_row * batch["mask"])
        return loss, {}

    n = len(x)
    batch = config.pretrain_batch_size or n
    ckpt, history = None, None
    if checkpoint_dir is not None:
        checkpoint_dir = runs.claim_artifact_dir(checkpoint_dir, pretrain_fields(x, config, key),
                                                 "a pretrained DSC autoencoder")
        ckpt = train.Checkpointer(checkpoint_dir / "checkpoints",
                                  every=max(1, config.pretrain_epochs // 4), keep=1)
        history = checkpoint_dir / "history.jsonl"
    result = train.fit(state, {"image": x}, loss_fn, batch_size=min(batch, n),
                       epochs=config.pretrain_epochs, key=fit_key, checkpointer=ckpt,
                       resume=ckpt is not None and ckpt.latest_epoch() is not None,
                       history_path=history, progress=progress, desc="pretrain AE",
                       log_every=max(1, config.pretrain_epochs))
    seconds = float(sum(r.get("seconds", 0.0) for r in result.history))
    return jax.device_get(result.state.params), seconds


@functools.lru_cache(maxsize=16)
def _jitted_init(model: DSCNet):
    """``train.jitted_init(model)``, one per model, so repeated runs do not compile it again."""
    from aeclust_jax import train
    return train.jitted_init(model)


def init_finetune_params(x: np.ndarray, ae_params: dict, config: DSCConfig, key: jax.Array):
    """DSC params (encoder/decoder from ``ae_params``, fresh attention, C = c_init) for x (N, ...)."""
    model = build_model(config, x.shape[-1], len(x))
    params = dict(_jitted_init(model)(key, jnp.asarray(x))["params"])
    missing = sorted(set(params) - {"C", "attn"} - set(ae_params))
    if missing:
        raise ValueError(f"pretrained AE params lack {missing} (was it built with this config?)")
    params.update({k: ae_params[k] for k in params if k in ae_params})
    return model, params


@functools.lru_cache(maxsize=64)   # one loss_fn per (model, lambdas): train.fit reuses its jitted step
def make_finetune_loss(model: DSCNet, lambda1: float, lambda2: float):
    """``train.fit`` loss ``(params, batch, rng) -> (loss, terms)`` of ``dsc_loss``.

    ``batch["image"]`` must be the whole set (N, H, W, C) in its stored order (C is indexed by
    row): ``fit`` with ``batch_size = N`` and ``shuffle=False`` (no padded rows, rng unused).
    """
    def loss_fn(params, batch, rng):
        x = batch["image"]
        x_hat, z, z_c = model.apply({"params": params}, x)
        return dsc_loss(x, x_hat, z, z_c, params["C"], lambda1, lambda2)

    return loss_fn


@functools.lru_cache(maxsize=None)
def finetune_optimizer(lr: float):
    """Adam(lr, eps 1e-8) as TF/PyTorch default it; cached: the train state carries it as a static
    field, so a new object per run would recompile the step."""
    from aeclust_jax import train

    return train.make_optimizer("adam", lr, adam_eps=1e-8)


def finetune(x: np.ndarray, ae_params: dict, config: DSCConfig, key: jax.Array, *,
             progress: bool = False) -> tuple[dict, list[dict]]:
    """Full-batch DSC fine-tune on x (N, H, W, C) float from pretrained ``ae_params``.

    Runs through ``train.fit`` (one epoch = one full-batch Adam iteration, rows in stored order,
    one device): a non-finite loss raises ``train.TrainingDivergedError`` naming the iteration
    (its ``epoch``) where it first appeared, and the iterations after it are not run.
    Returns (params with "C" (N, N), history: one dict {iter, loss, recon, reg, self_expr} per
    iteration).
    """
    from aeclust_jax import train

    model, params = init_finetune_params(x, ae_params, config, key)
    state = train.create_train_state(model, None, None, finetune_optimizer(config.finetune_lr),
                                     params=params)
    loss_fn = make_finetune_loss(model, config.lambda1, config.lambda2)
    result = train.fit(state, {"image": x}, loss_fn, batch_size=len(x),
                       epochs=config.finetune_iters, key=key, shuffle=False,
                       mesh=train.make_mesh(jax.devices()[:1]), progress=progress,
                       desc="fine-tune DSC", log_every=1)
    history = [{"iter": r["epoch"], "loss": r["loss"],
                **{k: r[k] for k in ("recon", "reg", "self_expr")}} for r in result.history]
    return result.state.params, history


def cluster_coefficients(c, n_clusters: int, config: DSCConfig, key: jax.Array):
    """C (N, N) -> (labels (N,) int32, affinity (N, N)) by dsc_affinity + spectral clustering."""
    from aeclust_jax.cluster import dsc_affinity, spectral

    affinity = dsc_affinity(jnp.asarray(c), n_clusters, d=config.d, alpha=config.alpha,
                            ro=config.ro)
    labels = spectral(affinity, n_clusters, key=key)
    return np.asarray(labels, np.int32), affinity


@dataclasses.dataclass
class DSCResult:
    """Everything one DSC run produces. labels (N,), coefficients C (N, N), params, timings."""
    labels: np.ndarray
    coefficients: np.ndarray
    affinity: np.ndarray
    params: dict
    ae_params: dict
    pretrain_seconds: float
    finetune_seconds: float
    cluster_seconds: float
    history: list[dict]


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(pretrain, fine-tune, cluster) keys of ``run`` with this seed."""
    return tuple(jax.random.split(jax.random.key(seed), 3))


def run(images, n_clusters: int, config: DSCConfig | None = None, *, seed: int = 0,
        ae_params: dict | None = None, pretrain_dir=None, progress: bool = False,
        **overrides: Any) -> DSCResult:
    """Pretrain (or take ``ae_params``) -> fine-tune -> cluster, on images (N, H, W, C).

    ``config=None``: ``auto_config(images.shape[1:], N, n_clusters, **overrides)``; with a
    config, ``overrides`` (DSCConfig fields) replace its fields.
    """
    x = as_float_images(images)
    n = len(x)
    if not 2 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be in [2, {n}] for {n} images, got {n_clusters}")
    if n > MAX_SAMPLES:
        raise ValueError(f"{n} images: the self-expressive C is N x N; use at most {MAX_SAMPLES}")
    if config is None:
        config = auto_config(x.shape[1:], n, n_clusters, **overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    if config.d * n_clusters + 1 >= n:
        raise ValueError(f"d * n_clusters + 1 = {config.d * n_clusters + 1} must be below the "
                         f"{n} images (lower config.d)")
    k_pre, k_fine, k_cluster = run_keys(seed)
    pre_s = 0.0
    if ae_params is None:
        ae_params, pre_s = pretrain(x, config, k_pre, checkpoint_dir=pretrain_dir,
                                    progress=progress)
    t0 = time.perf_counter()
    params, history = finetune(x, ae_params, config, k_fine, progress=progress)
    c = jax.block_until_ready(params["C"])
    t1 = time.perf_counter()
    labels, affinity = cluster_coefficients(c, n_clusters, config, k_cluster)
    affinity = np.asarray(affinity)
    t2 = time.perf_counter()
    return DSCResult(labels, np.asarray(c), affinity, params, ae_params, pre_s, t1 - t0, t2 - t1,
                     history)


def fit_predict(images, n_clusters: int, config: DSCConfig | None = None, *, seed: int = 0,
                **overrides: Any) -> np.ndarray:
    """Cluster labels (N,) int32 of images (N, H, W, C) (uint8, or float in [0, 1]) by DSC.

    ``config=None`` (default): the network and hyperparameters come from ``auto_config`` (the
    image shape, N and n_clusters), with ``overrides`` (DSCConfig fields, e.g.
    ``pretrain_epochs=20``) applied; an explicit ``config`` (e.g. ``preset("coil20")``) is used
    as given, ``overrides`` replacing its fields.
    """
    return run(images, n_clusters, config, seed=seed, progress=False, **overrides).labels


# ----------------------------------------------------------------------------- one run (CLI)

def select_subset(images: np.ndarray, labels: np.ndarray, classes: int | None,
                  per_class: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``classes`` classes, ``per_class`` evenly spaced images of each (order kept)."""
    keep = np.ones(len(labels), bool)
    if classes is not None:
        present = np.unique(labels)
        if not 2 <= classes <= len(present):
            raise UsageError(f"--classes must be in [2, {len(present)}], got {classes}")
        keep &= np.isin(labels, present[:classes])
    if per_class is not None:
        if per_class < 2:
            raise UsageError(f"--per-class must be >= 2, got {per_class}")
        chosen = np.zeros(len(labels), bool)
        for k in np.unique(labels[keep]):
            idx = np.flatnonzero(keep & (labels == k))
            chosen[idx[np.linspace(0, len(idx) - 1, min(per_class, len(idx))).astype(int)]] = True
        keep &= chosen
    return images[keep], labels[keep]


def check_inputs(images: np.ndarray, n_clusters: int, config: DSCConfig) -> None:
    """Raises ConfigError when ``run`` would refuse these images (N, H, W, C) for this config:
    the CLIs call it before creating a run folder (``run`` checks the same)."""
    n = len(images)
    if not 2 <= n_clusters <= n:
        raise ConfigError(f"{n_clusters} clusters for {n} images: need 2 <= clusters <= images")
    if n > MAX_SAMPLES:
        raise ConfigError(f"{n} images: the self-expressive C is N x N; use at most {MAX_SAMPLES} "
                          "(--classes / --per-class)")
    if config.d * n_clusters + 1 >= n:
        raise ConfigError(f"d * clusters + 1 = {config.d * n_clusters + 1} must be below the {n} "
                          "images (lower --d)")


def plot_affinity(affinity: np.ndarray, labels: np.ndarray, path, *, title: str | None = None):
    """Heat map of the affinity (N, N) with rows/columns sorted by the true labels (N,)."""
    from aeclust_jax import viz

    order = np.argsort(labels, kind="stable")
    a = np.asarray(affinity)[np.ix_(order, order)]
    fig, ax = viz.figure(figsize=(5, 5))
    ax.imshow(a, cmap="viridis", vmax=np.quantile(a, 0.995) or None, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title or "affinity, sorted by label", fontsize=9)
    return viz.save(fig, path)


def evaluate(labels_true: np.ndarray, labels_pred: np.ndarray) -> dict[str, float]:
    """ACC (Hungarian), NMI and ARI of a clustering."""
    from aeclust_jax.metrics import acc, ari, nmi

    return {"acc": float(acc(labels_true, labels_pred)), "nmi": float(nmi(labels_true, labels_pred)),
            "ari": float(ari(labels_true, labels_pred))}


def train_and_evaluate(images: np.ndarray, labels: np.ndarray, config: DSCConfig, out, *,
                       seed: int = 0, pretrain_dir=None, extra: dict | None = None,
                       progress: bool = False, figures: bool = True) -> dict:
    """One DSC run on (images, labels) into the prepared folder ``out``; returns its metrics.

    Writes config.yaml, history.jsonl, labels.npy, figures (affinity.png, reconstructions.png)
    and, last, metrics.json (acc, nmi, ari on the 0-1 scale, pretrain/finetune/cluster seconds,
    ...). ``progress``: bars for the training phases and one line per evaluation stage.
    """
    out = pathlib.Path(out)
    n_clusters = len(np.unique(labels))
    runs.write_config(out / "config.yaml", {"seed": seed, **(extra or {}), **to_dict(config)})
    t0 = time.perf_counter()
    res = run(images, n_clusters, config, seed=seed, pretrain_dir=pretrain_dir, progress=progress)
    wall = time.perf_counter() - t0
    stage = Stages(progress)
    if progress:
        print(f"eval: cluster C (affinity + spectral, k={n_clusters}) ... {res.cluster_seconds:.1f} s")
    with stage("metrics", "ACC / NMI / ARI"):
        scores = evaluate(labels, res.labels)
    runs.atomic_write_text(out / "history.jsonl",
                           "".join(json.dumps(h) + "\n" for h in res.history))
    np.save(out / "labels.npy", res.labels)
    if figures:
        from aeclust_jax import viz

        name = f"c={config.channels[-1]}{' + attention' if config.attention else ''}"
        plot_affinity(res.affinity, labels, out / "affinity.png",
                      title=f"DSC affinity ({name}), ACC {scores['acc']:.3f}")
        x = as_float_images(images)
        model = build_model(config, x.shape[-1], len(x))
        x_hat = np.asarray(jax.jit(model.apply)({"params": res.params}, jnp.asarray(x))[0])
        ae = build_model(config, x.shape[-1])
        x_ae = np.asarray(jax.jit(lambda p, v: ae.apply({"params": p}, v,
                                                        method=DSCNet.reconstruct))(res.ae_params, x))
        pick = np.linspace(0, len(x) - 1, 10).astype(int)
        viz.reconstruction_grid([x[pick], x_ae[pick], x_hat[pick]], out / "reconstructions.png",
                                row_names=["input", "pretrained AE", "DSC (C Z)"],
                                title=f"reconstructions ({name})")
    metrics = {**scores, "pretrain_seconds": res.pretrain_seconds,
               "finetune_seconds": res.finetune_seconds, "cluster_seconds": res.cluster_seconds,
               "wall_seconds": wall, "n_images": len(labels), "n_clusters": n_clusters,
               "seed": seed, "final_loss": res.history[-1], **(extra or {}), "scale": runs.SCALE}
    runs.write_json(out / "metrics.json", metrics)
    return metrics


def train_parser() -> argparse.ArgumentParser:
    """The options of ``train.py --model dsc``."""
    p = make_parser(
        prog=prog_name("train.py") + " --model dsc",
        description="S4: DSC-Net (+ channel attention) on an image set: pretrain the AE, fine-tune "
                    "with the self-expressive\nlayer, spectral clustering; writes metrics.json.\n\n"
                    "Hyperparameters: --preset, then --config, then the options below (defaults: "
                    "the coil20 preset's).")
    p.add_argument("--model", default="dsc", choices=["dsc"])
    p.add_argument("--dataset", help="a dataset of aeclust_jax.data (default coil20)")
    p.add_argument("--preset", default="coil20", choices=sorted(PRESETS) + ["auto"],
                   help="named hyperparameters (coil20: DSC-Net, latent 16x16x15); auto: "
                        "auto_config from the images' shape, their number and the classes")
    p.add_argument("--config", help="YAML file of DSCConfig fields, applied over the preset")
    add_config_options(p, DSCConfig)
    p.add_argument("--latent-channels", type=int, help="c of the 16x16xc latent (replaces the last of "
                                                       "--channels)")
    p.add_argument("--classes", type=int, help="use only the first K classes (default: all)")
    p.add_argument("--per-class", type=int, help="use only M evenly spaced images per class (default: all)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--pretrained", help="folder to keep/reuse the pretrained AE (default: "
                                        "<out>/pretrained); it is tied to the encoder, pretraining "
                                        "options, images and seed that built it (other inputs are "
                                        "refused; attention on/off can share one)")
    p.add_argument("--out", help="run folder (default runs/dsc-<dataset>-c<c>[-att]-<seed>)")
    p.add_argument("--resume", action="store_true",
                   help="finish the run in --out with its config.yaml (pretraining continues from "
                        "its checkpoint); any option that differs from it is refused")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars or lines (data preparation, training, evaluation stages)")
    return p


RUN_FIELDS = ("seed", "dataset", "classes", "per_class")   # config.yaml's fields beside DSCConfig's


def config_from_args(args, images: np.ndarray | None = None,
                     labels: np.ndarray | None = None, saved: dict | None = None) -> DSCConfig:
    """Preset (``auto``: ``auto_config`` of the images (N, H, W, C) and their classes) <- YAML
    (--config) <- command-line overrides; with ``saved`` (a resumed run's config.yaml) the saved
    DSCConfig fields replace the preset."""
    overrides = config_overrides(args, DSCConfig)
    if saved is not None:
        fields = {f.name for f in dataclasses.fields(DSCConfig)}
        base = DSCConfig(**{k: v for k, v in saved.items() if k in fields})
    elif args.preset == "auto":
        if images is None or labels is None:
            raise ValueError("--preset auto needs the images and labels")
        base = auto_config(images.shape[1:], len(images), len(np.unique(labels)))
    else:
        base = preset(args.preset)
    cfg = load_config(DSCConfig, args.config, overrides, base=base)
    if args.latent_channels is not None:
        cfg = dataclasses.replace(cfg, channels=cfg.channels[:-1] + (args.latent_channels,))
    return cfg


def train_main(argv: Sequence[str]) -> int:
    from aeclust_jax.data import load

    args = train_parser().parse_args(list(argv))
    saved = None
    if args.resume:                    # the run's own config.yaml fills what the flags leave open
        if not args.out:
            raise UsageError("--resume needs --out, the run folder to finish")
        out = runs.check_run_dir(args.out, resume=True)
        saved = runs.read_config(out / "config.yaml")
        for k in RUN_FIELDS:
            if getattr(args, k) is None:
                setattr(args, k, saved.get(k))
    args.dataset = args.dataset or "coil20"
    args.seed = 0 if args.seed is None else args.seed
    if args.preset != "auto" or saved is not None:
        config_from_args(args, saved=saved)   # a bad config fails before the data are loaded
    if args.out and not args.resume:
        runs.check_run_dir(args.out, resumable=True)   # and so does an occupied --out
    ds = load(args.dataset, progress=not args.no_progress)
    images, labels = select_subset(ds.images, ds.labels, args.classes, args.per_class)
    cfg = config_from_args(args, images, labels, saved=saved)
    name = f"dsc-{args.dataset}-c{cfg.channels[-1]}{'-att' if cfg.attention else ''}-{args.seed}"
    out = runs.check_run_dir(args.out or f"runs/{name}", resume=args.resume)
    run_fields = {k: getattr(args, k) for k in RUN_FIELDS}
    if saved is not None:
        runs.check_resume_config(saved, {**run_fields, **to_dict(cfg)}, out / "config.yaml",
                                 may_differ=())
        if runs.is_complete(out):
            print(f"{out} is already complete (metrics.json exists); nothing to do")
            return 0
    check_inputs(images, len(np.unique(labels)), cfg)
    pretrained = args.pretrained or out / "pretrained"
    runs.claim_artifact_dir(pretrained, pretrain_fields(as_float_images(images), cfg,
                                                        run_keys(args.seed)[0]),
                            "a pretrained DSC autoencoder", create=False)
    out = runs.prepare_run_dir(out, resume=args.resume)
    if args.resume:
        print(f"resuming {out}: the pretrained AE continues from its checkpoint in {pretrained}")
    m = train_and_evaluate(images, labels, cfg, out, seed=args.seed, pretrain_dir=pretrained,
                           extra={k: v for k, v in run_fields.items() if k != "seed"},
                           progress=not args.no_progress)
    print(" ".join(f"{k}={m[k]:.4g}" for k in ("acc", "nmi", "ari", "pretrain_seconds",
                                                "finetune_seconds", "cluster_seconds")))
    print(f"wrote {out}")
    return 0


