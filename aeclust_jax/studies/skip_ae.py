"""S1: skip connections in convolutional autoencoders (Jo et al. 2020), train + evaluate + reproduce.

    python scripts/train.py --model dae_skip --dataset mnist [--epochs 5] [--out runs/x] [--resume]
    python scripts/reproduce.py s1 [--datasets mnist fashion_mnist hanja_synth] [--epochs N] [--seeds 3]

One run: data (uint8, on device) -> fit (MSE, Keras Adadelta by default) -> evaluation (S1
protocol): PSNR of the test reconstructions; the 30-d latent of the first 3000 test images ->
t-SNE 2-D -> K-means (k = classes) -> NMI / ACC / ARI; K-means on the raw latent (``nmi_latent``);
the latent+skip feature through the same t-SNE protocol (``nmi_latent_skip``). The run folder
gets config.yaml, history.jsonl, checkpoints/, metrics.json (written last), figures/ and
``eval.npz`` (embeddings, reconstructions and decoder maps that reproduce's figures use).
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aeclust_jax import runs, train
from aeclust_jax.cli import make_parser, prog_name
from aeclust_jax.config import (ConfigError, add_config_options, config_dir, config_overrides,
                                field, load_config, parse_key_values, to_dict)
from aeclust_jax.errors import UsageError
from aeclust_jax.models import get_model
from aeclust_jax.progress import Stages

MODELS = ("cae", "cae_skip", "dae", "dae_skip")
DATASETS = ("mnist", "fashion_mnist", "hanja", "hanja_synth")
LATENT_SKIP_MODES = ("random", "trained")
UPSAMPLE_METHODS = ("subpixel", "repeat", "broadcast", "resize")
TSNE_BACKENDS = ("auto", "opentsne", "tsnecuda", "jax")
CONFIG_DIR = config_dir()


@dataclasses.dataclass(frozen=True)
class S1Config:
    """One S1 run. Defaults are the authors' MNIST code; configs/s1_<dataset>.yaml override them."""
    model: str = field("dae_skip", "autoencoder", choices=MODELS)
    dataset: str = field("mnist", "dataset (28x28: mnist, fashion_mnist; 100x100: hanja, "
                                  "hanja_synth)", choices=DATASETS)
    epochs: int = field(25, "training epochs")
    batch_size: int = field(32, "global batch size (a multiple of the devices)")
    optimizer: str = field("adadelta", "optimizer (adadelta: Keras 2020 defaults)",
                           choices=train.OPTIMIZERS)
    lr: float | None = field(None, "learning rate (None: the optimizer's own; adadelta 1.0)")
    noise_std: float = field(0.5, "dae*: input noise std (x + std * N(0, 1), clipped to [0, 1])")
    noisy_target: bool = field(False, "dae*: the target is the noisy input (the authors' code), "
                                      "not the clean image")
    latent_skip: str = field("random", "latent+skip feature: random (fixed seeded projections, "
                                       "faithful) or trained (auxiliary loss)",
                             choices=LATENT_SKIP_MODES)
    aux_weight: float = field(1.0, "latent_skip=trained: weight of the auxiliary loss")
    seed: int = field(0, "seed of the init, the noise, the shuffling and the evaluation")
    last_batch: str = field("pad", "pad (Keras: every row once, the last batch masked) or drop",
                            choices=("pad", "drop"))
    upsample: str = field("subpixel", "decoder upsampling: subpixel (up x2 + conv as one conv, "
                                      "exact), repeat, broadcast or resize",
                          choices=UPSAMPLE_METHODS)
    train_limit: int = field(0, "the first N training images (0: all)")
    test_limit: int = field(0, "PSNR on the first N test images (0: all)")
    n_cluster: int = field(3000, "the first N test images for t-SNE / K-means")
    kmeans_n_init: int = field(10, "K-means restarts")
    tsne_backend: str = field("auto", "t-SNE backend", choices=TSNE_BACKENDS)
    tsne_iter: int = field(750, "t-SNE iterations after the 250 of early exaggeration "
                                "(scikit-learn's 1000 in all)")
    eval_every: int = field(0, "PSNR + NMI into history.jsonl every N epochs (0: off; Fig. 4)")
    eval_batch: int = field(1000, "batch size of evaluation")
    checkpoint_every: int = field(5, "checkpoint every N epochs")
    keep_checkpoints: int = field(3, "checkpoints kept")
    dataset_options: dict = field(dict, "options of the dataset builder, e.g. train_per_class=100")
    progress: bool = field(False, "progress bars and stage lines (off in library calls)",
                           cli_default=True)
    scan_epoch: bool = field(False, "each epoch as one lax.scan (same numbers; much faster on a GPU)")

    def validate(self) -> "S1Config":
        for name, value, choices in (("model", self.model, MODELS), ("dataset", self.dataset, DATASETS),
                                     ("optimizer", self.optimizer, train.OPTIMIZERS),
                                     ("latent_skip", self.latent_skip, LATENT_SKIP_MODES),
                                     ("last_batch", self.last_batch, ("pad", "drop")),
                                     ("upsample", self.upsample, UPSAMPLE_METHODS),
                                     ("tsne_backend", self.tsne_backend, TSNE_BACKENDS)):
            if value not in choices:
                raise ConfigError(f"unknown {name} {value!r}; choices: {', '.join(choices)}")
        for name in ("epochs", "batch_size", "n_cluster", "kmeans_n_init", "eval_batch",
                     "checkpoint_every", "keep_checkpoints", "tsne_iter"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_limit", "test_limit", "eval_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0: off), got {getattr(self, name)}")
        if self.noise_std < 0:
            raise ConfigError(f"noise_std must be >= 0, got {self.noise_std}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        return self

    def check_data(self, train_images: np.ndarray, test, *, devices: int = 1) -> None:
        """Raises ConfigError when this config cannot run on the loaded data: the image size
        (28x28 or 100x100), the batch size (a multiple of ``devices``; with last_batch=drop at
        most the training rows), the clustered test images (more than t-SNE's perplexity 30 and
        at least one per class) and the t-SNE backend (installed here)."""
        from aeclust_jax.cluster import tsne_backends
        from aeclust_jax.models.skip_ae import family_of

        try:
            family_of(tuple(train_images.shape[1:]))
        except ValueError as e:
            raise ConfigError(f"dataset {self.dataset}: {e}") from None
        if self.batch_size % devices:
            raise ConfigError(f"batch_size {self.batch_size} must be a multiple of the {devices} devices")
        if self.last_batch == "drop" and self.batch_size > len(train_images):
            raise ConfigError(f"batch_size {self.batch_size} exceeds the {len(train_images)} training "
                              "images with last_batch=drop")
        n_test = min(len(test.images), self.test_limit or len(test.images))
        n = min(self.n_cluster, n_test)
        if n <= 30 or n < test.num_classes:
            raise ConfigError(f"{n} test images to cluster (n_cluster {self.n_cluster}, test images "
                              f"{n_test}): t-SNE (perplexity 30) and K-means (k = {test.num_classes}) "
                              f"need more than {max(30, test.num_classes - 1)}")
        if self.tsne_backend != "auto" and self.tsne_backend not in tsne_backends():
            raise ConfigError(f"tsne_backend {self.tsne_backend!r} is not available here; "
                              f"available: {', '.join(tsne_backends())}, auto")


# ----------------------------------------------------------------------------- model + loss

def build_model(cfg: S1Config, image_shape):
    kw = {"image_shape": tuple(image_shape), "upsample": cfg.upsample}
    if cfg.model.startswith("dae"):
        kw["noise_std"] = cfg.noise_std
    return get_model(cfg.model, **kw)


def corrupt(x: jax.Array, noise_std: float, rng: jax.Array) -> jax.Array:
    """x (N, H, W, C) in [0, 1] -> clip(x + noise_std * N(0, 1), 0, 1)."""
    return jnp.clip(x + noise_std * jax.random.normal(rng, x.shape, x.dtype), 0.0, 1.0)


def make_loss(model, *, noisy_target: bool = False, latent_skip: str = "random",
              aux_weight: float = 1.0):
    """loss_fn(params, batch, rng) -> (loss, {"mse", ["aux_mse"]}) for train.fit.

    Denoising models corrupt the input with a fresh draw per step (key from the step rng); the
    target is the clean image unless ``noisy_target`` (the authors' code). ``latent_skip='trained'``
    adds ``aux_weight`` * MSE of the decoder's reconstruction from the latent+skip feature (skip
    maps not added), which trains the two projections; with ``random`` they get no gradient.
    """
    trained = latent_skip == "trained"

    def loss_fn(params, batch, rng):
        x = train.to_float(batch["image"])
        xin = corrupt(x, model.noise_std, rng) if model.noise_std > 0 else x
        target = xin if noisy_target else x
        out = model.apply({"params": params}, xin, with_latent_skip=trained)
        mse = train.masked_mean((out.recon - target) ** 2, batch["mask"])
        aux = {"mse": mse}
        if not trained:
            return mse, aux
        rec2 = model.apply({"params": params}, out.latent_skip, method=lambda m, z: m.decode(z))
        aux["aux_mse"] = train.masked_mean((rec2 - target) ** 2, batch["mask"])
        return mse + aux_weight * aux["aux_mse"], aux

    return loss_fn


def frozen_params(cfg: S1Config):
    """The latent_skip projections stay at their seeded initial values unless trained."""
    if cfg.latent_skip == "trained":
        return None
    return lambda path: path.startswith("latent_skip_")


# ----------------------------------------------------------------------------- evaluation

def encode(model, params, images: np.ndarray, *, batch_size: int, mesh) -> dict[str, np.ndarray]:
    """Test images uint8 (N, H, W, C) -> {"psnr" (N,), "latent" (N, 30), "latent_skip" (N, 30)}."""
    from aeclust_jax.metrics import psnr

    def fn(p, b):
        x = train.to_float(b["image"])
        out = model.apply({"params": p}, x, with_latent_skip=True)
        return {"psnr": psnr(out.recon, x), "latent": out.latent, "latent_skip": out.latent_skip}

    return train.predict(fn, params, {"image": images}, batch_size=batch_size, mesh=mesh)


_TSNE_JOBS = -1     # host threads of openTSNE; a reproduce worker gets its share of the cores


def _tsne(x: np.ndarray, cfg: S1Config) -> np.ndarray:
    from aeclust_jax.cluster import tsne
    return np.asarray(tsne(np.asarray(x, np.float32), n_components=2, perplexity=30.0, seed=cfg.seed,
                           backend=cfg.tsne_backend, n_iter=cfg.tsne_iter, n_jobs=_TSNE_JOBS))


def kmeans_labels(features: np.ndarray, k: int, *, seed: int, n_init: int) -> np.ndarray:
    """K-means (k-means++, ``n_init`` restarts, key ``seed``) of features (N, D) -> labels (N,)."""
    from aeclust_jax.cluster import kmeans
    return np.asarray(kmeans(jnp.asarray(features, jnp.float32), k, key=jax.random.key(seed),
                             n_init=n_init).labels)


def scores(labels: np.ndarray, pred: np.ndarray) -> dict[str, float]:
    """``{"nmi", "acc", "ari"}`` of predicted labels (N,) against the true ones, on the 0-1 scale."""
    from aeclust_jax.metrics import acc, ari, nmi
    return {"nmi": float(nmi(labels, pred)), "acc": float(acc(labels, pred)),
            "ari": float(ari(labels, pred))}


def cluster_scores(features: np.ndarray, labels: np.ndarray, k: int, *, seed: int,
                   n_init: int) -> dict[str, Any]:
    """K-means (k-means++, ``n_init`` restarts, key ``seed``) on features (N, D) -> nmi/acc/ari."""
    pred = kmeans_labels(features, k, seed=seed, n_init=n_init)
    return {**scores(labels, pred), "pred": pred}


def evaluate(model, params, test, cfg: S1Config, mesh, *, full: bool = True,
             timings: dict | None = None, progress: bool = False) -> tuple[dict, dict]:
    """S1 protocol on the test split -> (metrics, arrays for figures).

    ``full=False`` (per-epoch curves) computes only psnr and the t-SNE NMI. ``timings`` gets the
    seconds of each stage kind (encode, tsne, kmeans, metrics; summed over the feature kinds);
    ``progress`` prints one line per stage.
    """
    stage = Stages(progress, timings=timings)
    images = test.images[:cfg.test_limit] if cfg.test_limit else test.images
    with stage("encode", f"encode {len(images)} test images"):
        enc = encode(model, params, images, batch_size=cfg.eval_batch, mesh=mesh)
    n = min(cfg.n_cluster, len(images))
    labels = np.asarray(test.labels[:n])
    k = int(test.num_classes)

    def clustered(features, what):
        with stage("kmeans", f"K-means (k={k}, {cfg.kmeans_n_init} restarts) on {what}"):
            pred = kmeans_labels(features, k, seed=cfg.seed, n_init=cfg.kmeans_n_init)
        with stage("metrics", f"NMI / ACC / ARI of {what}"):
            return {**scores(labels, pred), "pred": pred}

    def embedded(features, what):
        with stage("tsne", f"t-SNE of {n} {what} ({features.shape[1]}-d)"):
            return _tsne(features, cfg)

    emb = embedded(enc["latent"][:n], "latents")
    s = clustered(emb, "the latent t-SNE")
    metrics = {"psnr": float(np.mean(enc["psnr"])), "nmi": s["nmi"], "acc": s["acc"], "ari": s["ari"]}
    arrays = {"tsne": emb, "labels": labels, "pred": s["pred"]}
    if not full:
        return metrics, arrays
    raw = clustered(enc["latent"][:n], "the raw latent")
    metrics.update(nmi_latent=raw["nmi"], acc_latent=raw["acc"], ari_latent=raw["ari"])
    emb_ls = embedded(enc["latent_skip"][:n], "latent+skip features")
    ls = clustered(emb_ls, "the latent+skip t-SNE")
    ls_raw = clustered(enc["latent_skip"][:n], "the raw latent+skip")
    metrics.update(nmi_latent_skip=ls["nmi"], acc_latent_skip=ls["acc"], ari_latent_skip=ls["ari"],
                   nmi_latent_skip_raw=ls_raw["nmi"])
    arrays.update(tsne_latent_skip=emb_ls, latent=enc["latent"][:n])
    return metrics, arrays


def samples_and_maps(model, params, images: np.ndarray, noise_std: float, seed: int) -> dict:
    """First 10 test images: inputs (noisy for dae*), reconstructions and, for skip models, the
    decoder maps at each skip junction (``latent_path_i`` / ``skip_branch_i``) of image 0."""
    x = train.to_float(jnp.asarray(images[:10]))
    xin = corrupt(x, noise_std, jax.random.key(seed)) if noise_std > 0 else x
    out, state = jax.jit(lambda p, v: model.apply({"params": p}, v, mutable=["intermediates"]))(params, xin)
    res = {"inputs": np.asarray(xin), "clean": np.asarray(x), "recon": np.asarray(out.recon)}
    for name, val in state.get("intermediates", {}).items():
        res["map_" + name] = np.asarray(val[0][0])
    return res


# ----------------------------------------------------------------------------- one run

def load_split(cfg: S1Config, split: str):
    from aeclust_jax.data import load
    return load(cfg.dataset, split, progress=cfg.progress, **dict(cfg.dataset_options))


def run(cfg: S1Config, out: str | pathlib.Path, *, resume: bool = False) -> dict:
    """Trains and evaluates one S1 model into run folder ``out``; returns metrics.json's dict.

    The config, ``out`` and the data are checked before anything is written: a run that fails
    on a bad option or on missing/bad data leaves no folder behind.
    """
    cfg = cfg.validate()
    out = runs.check_run_dir(out, resume=resume)
    if resume:
        start = _check_resume(cfg, out)
        if start is None:
            print(f"{out} is already complete with {cfg.epochs} epochs; nothing to do "
                  "(pass a larger --epochs to train on)")
            return runs.read_json(out / "metrics.json")
    train.maybe_initialize_distributed()
    t_load = time.perf_counter()
    tr, te = load_split(cfg, "train"), load_split(cfg, "test")
    images = tr.images[:cfg.train_limit] if cfg.train_limit else tr.images
    load_seconds = time.perf_counter() - t_load
    mesh = train.make_mesh()
    cfg.check_data(images, te, devices=mesh.size)
    out = runs.prepare_run_dir(out, resume=resume)
    if resume:
        print(f"resuming {out} from epoch {start} of {cfg.epochs}", flush=True)
        previous = out / "metrics.json"
        if previous.is_file():    # continuing a finished run: it is unfinished until the new end
            os.replace(previous, out / f"metrics.epochs{runs.read_json(previous)['epochs']}.json")
    runs.write_config(out / "config.yaml", to_dict(cfg))
    model = build_model(cfg, images.shape[1:])
    key = jax.random.key(cfg.seed)
    k_init, k_fit = jax.random.split(key)
    tx = train.make_optimizer(cfg.optimizer, cfg.lr, frozen=frozen_params(cfg))
    state = train.create_train_state(model, k_init, jnp.zeros((1,) + images.shape[1:], jnp.float32),
                                     tx, init_kwargs={"with_latent_skip": True})
    loss_fn = make_loss(model, noisy_target=cfg.noisy_target, latent_skip=cfg.latent_skip,
                        aux_weight=cfg.aux_weight)
    eval_fn = None
    if cfg.eval_every:
        eval_fn = lambda st, epoch: evaluate(model, st.params, te, cfg, mesh, full=False)[0]
    ckpt = train.Checkpointer(out / "checkpoints", every=cfg.checkpoint_every, keep=cfg.keep_checkpoints)
    try:
        result = train.fit(state, {"image": images}, loss_fn, batch_size=cfg.batch_size,
                           epochs=cfg.epochs, key=k_fit, mesh=mesh, last_batch=cfg.last_batch,
                           eval_fn=eval_fn, eval_every=cfg.eval_every or cfg.epochs,
                           checkpointer=ckpt, resume=resume, history_path=out / "history.jsonl",
                           progress=cfg.progress, desc=f"{cfg.dataset}/{cfg.model}/s{cfg.seed}",
                           scan_epoch=cfg.scan_epoch)
    finally:
        ckpt.close()
    params = result.state.params
    timings = {"load": load_seconds}
    metrics, arrays = evaluate(model, params, te, cfg, mesh, timings=timings, progress=cfg.progress)
    extra = samples_and_maps(model, params, te.images, model.noise_std, cfg.seed)
    if train.is_main_process():
        np.savez_compressed(out / "eval.npz", **arrays, **extra, class_names=np.asarray(te.class_names))
    with Stages(cfg.progress, timings=timings)("figures", f"figures into {out / 'figures'}"):
        _run_figures(out, cfg, arrays, extra, te, metrics)
    train_seconds = sum(r["seconds"] for r in result.history)
    # images/s over the epochs after the first (which includes compilation) when there are any
    warm = result.history[1:] or result.history
    ips = len(images) * len(warm) / sum(r["seconds"] for r in warm)
    metrics.update(
        epochs=cfg.epochs, train_seconds=train_seconds, images_per_second=ips,
        final_loss=result.history[-1]["loss"], model=cfg.model, dataset=cfg.dataset, seed=cfg.seed,
        num_params=train.count_params(params, _recon_param),
        eval_seconds=timings, devices=mesh.size, platform=jax.devices()[0].platform,
        scale=runs.SCALE)
    runs.write_json(out / "metrics.json", metrics)
    return metrics


def _ordered_maps(extra: dict) -> dict:
    """map_latent_path_i / map_skip_branch_i -> ordered by junction: latent_path_1, skip_branch_1, ..."""
    maps = {k[4:]: v for k, v in extra.items() if k.startswith("map_")}
    return dict(sorted(maps.items(), key=lambda kv: (kv[0][-1], kv[0])))


def _recon_param(path) -> bool:
    from aeclust_jax.models.skip_ae import is_recon_param
    return is_recon_param(path)


# Fields that may change on --resume: the epoch count, and those that do not change the numbers.
RESUME_MAY_DIFFER = ("epochs", "progress", "scan_epoch", "checkpoint_every", "keep_checkpoints")


def _check_resume(cfg: S1Config, out: pathlib.Path) -> int | None:
    """--resume: refuses a config that differs from the saved one in anything but
    RESUME_MAY_DIFFER; returns the epoch training restarts from (None: complete, nothing to do).
    Reads only, so a refused resume leaves the folder as it was."""
    saved_path = out / "config.yaml"
    runs.check_resume_config(runs.read_config(saved_path), to_dict(cfg), saved_path,
                             may_differ=RESUME_MAY_DIFFER)
    if runs.is_complete(out):
        done = int(runs.read_json(out / "metrics.json")["epochs"])
        if cfg.epochs <= done:
            return None
    last = None
    if (out / "checkpoints").is_dir():
        ckpt = train.Checkpointer(out / "checkpoints")
        last = ckpt.latest_epoch()
        ckpt.close()
    last = last or 0       # no checkpoint yet (stopped in the first epochs): train from the start
    if last > cfg.epochs:
        raise ConfigError(f"--resume: {out} is already trained to epoch {last}; --epochs "
                          f"{cfg.epochs} cannot undo that (pass --epochs >= {last})")
    return last


def _run_figures(out: pathlib.Path, cfg: S1Config, arrays: dict, extra: dict, test,
                 metrics: dict) -> None:
    from aeclust_jax import viz
    fig = out / "figures"
    fig.mkdir(exist_ok=True)
    title = f"{cfg.model} on {cfg.dataset}"
    viz.reconstruction_grid([extra["clean"], extra["inputs"], extra["recon"]] if cfg.model.startswith("dae")
                            else [extra["clean"], extra["recon"]],
                            fig / "reconstructions.png",
                            row_names=(["clean", "noisy input", "recon"] if cfg.model.startswith("dae")
                                       else ["input", "recon"]), title=title)
    names = list(test.class_names)
    n = len(arrays["labels"])
    viz.tsne_scatter(arrays["tsne"], arrays["labels"], fig / "tsne.png", class_names=names,
                     title=f"{title}: t-SNE of the latent, {n} test images",
                     scores={"NMI": metrics["nmi"], "ACC": metrics["acc"]})
    viz.tsne_scatter(arrays["tsne_latent_skip"], arrays["labels"], fig / "tsne_latent_skip.png",
                     title=f"{title}: t-SNE of latent + skip, {n} test images", class_names=names,
                     scores={"NMI": metrics["nmi_latent_skip"], "ACC": metrics["acc_latent_skip"]})
    plot_feature_maps(extra, cfg.model, fig / "feature_maps.png", title=title)


def plot_feature_maps(extra, model: str, path, *, title: str) -> pathlib.Path | None:
    """Fig. 9: the decoder maps at each skip junction of test image 0 (``samples_and_maps``'
    ``map_*`` arrays, or an eval.npz holding them); None for models without skips."""
    from aeclust_jax import viz
    maps = _ordered_maps({k: extra[k] for k in extra.keys()})
    if not maps:
        return None
    junctions = sorted({name.rsplit("_", 1)[1] for name in maps})
    labels = {}
    for name, m in maps.items():
        what, j = name.rsplit("_", 1)
        size = "x".join(map(str, np.shape(m)))
        labels[name] = (f"junction {j} ({size})\n"
                        + ("decoder path" if what == "latent_path" else "skip branch (encoder)"))
    noisy = model.startswith("dae")
    return viz.feature_maps(
        maps, path, image=np.asarray(extra["inputs"][0]),
        image_label="test image 0\n(noisy input)" if noisy else "test image 0\n(input)",
        row_labels=labels, scale_groups=[[f"latent_path_{j}", f"skip_branch_{j}"] for j in junctions],
        title=f"{title}: decoder maps at the skip junctions",
        caption="rows: the decoder's own map and the skip branch added to it, per junction; "
                "columns: channels; one colour scale per junction",
        colorbar_label="activation")


# ----------------------------------------------------------------------------- CLI: train

def train_parser() -> argparse.ArgumentParser:
    """The options of ``train.py --model cae|cae_skip|dae|dae_skip``: one per S1Config field."""
    p = make_parser(
        prog=prog_name("train.py"),
        description="Train and evaluate one S1 autoencoder (cae, cae_skip, dae, dae_skip).\n\n"
                    "An option left out takes its value from --config (default:\n"
                    "configs/s1_<dataset>.yaml when present), else the default shown.")
    add_config_options(p, S1Config)
    p.add_argument("--config", help="YAML config of S1Config fields (default: configs/s1_<dataset>.yaml "
                                    "when present)")
    p.add_argument("--out", help="run folder (default runs/<dataset>-<model>-<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    return p


def config_from_args(args) -> S1Config:
    """Defaults <- configs/s1_<dataset>.yaml (or --config) <- options typed; --resume starts from
    the run's saved config.yaml instead."""
    over = config_overrides(args, S1Config)
    saved = pathlib.Path(args.out or "") / "config.yaml"
    if args.resume and args.out and saved.is_file():
        return load_config(S1Config, None, over, base=load_config(S1Config, saved))
    dataset = args.dataset or S1Config.dataset
    path = args.config
    if path is None and (CONFIG_DIR / f"s1_{dataset}.yaml").is_file():
        path = CONFIG_DIR / f"s1_{dataset}.yaml"
    return load_config(S1Config, path, over)


def train_main(argv: Sequence[str]) -> int:
    args = train_parser().parse_args(list(argv))
    if args.out is None:   # the default folder, also where --resume looks for config.yaml
        args.out = (f"runs/{args.dataset or S1Config.dataset}-{args.model or S1Config.model}-"
                    f"{args.seed or 0}")
    cfg = config_from_args(args).validate()
    out = pathlib.Path(args.out)
    metrics = run(cfg, out, resume=args.resume)
    keys = ("psnr", "nmi", "acc", "ari", "nmi_latent", "nmi_latent_skip", "images_per_second")
    print(" ".join(f"{k}={metrics[k]:.4g}" for k in keys if metrics.get(k) is not None))
    print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------- reproduce

TABLE_METRICS = ("psnr", "nmi", "nmi_latent", "nmi_latent_skip", "acc", "ari", "images_per_second")
TRAINED_LS = "+ls_trained"   # suffix of the runs whose latent+skip projections are trained


def reproduce_parser() -> argparse.ArgumentParser:
    """The options of ``reproduce.py s1``."""
    p = make_parser(prog=prog_name("reproduce.py") + " s1",
                    description="S1: 4 models x datasets x seeds -> results table + figures. Options "
                                "left out take the value of configs/s1_<dataset>.yaml, else S1Config's.")
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist", "hanja_synth"])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    p.add_argument("--epochs", type=int, help="override the configs' epochs")
    p.add_argument("--batch-size", type=int, help="override the configs' batch size")
    p.add_argument("--optimizer", help=f"override the configs' optimizer: {', '.join(train.OPTIMIZERS)}")
    p.add_argument("--lr", type=float, help="override the configs' learning rate")
    p.add_argument("--train-limit", type=int, help="first N training images per dataset (default: all)")
    p.add_argument("--test-limit", type=int, help="first N test images per dataset (default: all)")
    p.add_argument("--n-cluster", type=int, help=f"test images clustered (default: {S1Config.n_cluster})")
    p.add_argument("--eval-every", type=int, default=None,
                   help="PSNR/NMI every N epochs for cae (Fig. 4); default epochs // 5, 0 = off")
    p.add_argument("--trained-latent-skip", action="store_true",
                   help="also train the skip models with latent_skip=trained (extension)")
    p.add_argument("--dataset-option", action="append", default=[], metavar="DATASET:KEY=VALUE",
                   help="a dataset builder option, e.g. hanja_synth:train_per_class=500")
    p.add_argument("--runs", help="folder of the individual runs (default runs/s1)")
    p.add_argument("--out", default="results/s1")
    p.add_argument("--scan-epoch", action="store_true",
                   help="run each epoch as one lax.scan (same numbers; much faster on a GPU)")
    p.add_argument("--tsne-backend", help="auto (default) | opentsne | tsnecuda | jax")
    p.add_argument("--workers", type=int, default=1,
                   help="runs trained at once, each in its own process (e.g. several per GPU)")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or lines")
    p.add_argument("--summary-only", action="store_true",
                   help="train nothing: table + figures from the runs already complete")
    return p


def _dataset_options(items: Sequence[str]) -> dict[str, dict]:
    opts: dict[str, dict] = {}
    for item in items:
        if ":" not in item:
            raise UsageError(f"--dataset-option expects DATASET:KEY=VALUE, got {item!r}")
        ds, kv = item.split(":", 1)
        opts.setdefault(ds, {}).update(parse_key_values([kv], "--dataset-option", UsageError))
    return opts


def reproduce_main(argv: Sequence[str]) -> int:
    a = reproduce_parser().parse_args(list(argv))
    for d in a.datasets:
        if d not in DATASETS:
            raise UsageError(f"unknown dataset {d!r}; choices: {', '.join(DATASETS)}")
    for m in a.models:
        if m not in MODELS:
            raise UsageError(f"unknown model {m!r}; choices: {', '.join(MODELS)}")
    if a.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {a.seeds}")
    if a.workers < 1:
        raise UsageError(f"--workers must be >= 1, got {a.workers}")
    ds_opts = _dataset_options(a.dataset_option)
    runs_dir = pathlib.Path(a.runs or "runs/s1")
    out = pathlib.Path(a.out)
    jobs = []
    for ds in a.datasets:
        path = CONFIG_DIR / f"s1_{ds}.yaml"
        for model in a.models:
            variants = [("", "random")]
            if a.trained_latent_skip and model.endswith("_skip"):
                variants.append((TRAINED_LS, "trained"))
            for suffix, ls in variants:
                for seed in range(a.seeds):
                    over = {"model": model, "dataset": ds, "seed": seed, "epochs": a.epochs,
                            "batch_size": a.batch_size, "train_limit": a.train_limit,
                            "optimizer": a.optimizer, "lr": a.lr,
                            "test_limit": a.test_limit, "n_cluster": a.n_cluster, "latent_skip": ls,
                            "dataset_options": ds_opts.get(ds) or None,
                            "scan_epoch": True if a.scan_epoch else None,
                            "tsne_backend": a.tsne_backend,
                            "progress": not (a.no_progress or a.workers > 1)}
                    cfg = load_config(S1Config, path if path.is_file() else None, over)
                    every = a.eval_every if a.eval_every is not None else max(1, cfg.epochs // 5)
                    if model == "cae" and seed == 0 and every:
                        cfg = dataclasses.replace(cfg, eval_every=every)
                    jobs.append((cfg.validate(), runs_dir / f"{ds}-{model}{suffix}-{seed}", model + suffix))
    print(f"S1: {len(jobs)} runs into {runs_dir}")
    todo = []
    for i, (cfg, run_dir, _) in enumerate(jobs):
        if a.summary_only:
            break
        if runs.is_complete(run_dir):
            print(f"[{i + 1}/{len(jobs)}] {run_dir}: complete, skipped")
            continue
        todo.append((i, cfg, run_dir))
    if a.workers == 1:
        for i, cfg, run_dir in todo:
            print(f"[{i + 1}/{len(jobs)}] {run_dir}")
            _run_job(cfg, run_dir)
    elif todo:
        _run_parallel(todo, len(jobs), a.workers)
    summary = summarize(jobs, out)
    print((out / "results.md").read_text())
    return 0 if summary else 1


def _run_job(cfg: S1Config, run_dir: pathlib.Path) -> str:
    """One reproduction run (resumed when its folder holds an unfinished one)."""
    run(cfg, run_dir, resume=run_dir.is_dir() and any(run_dir.iterdir()))
    return str(run_dir)


def _set_tsne_jobs(n: int) -> None:
    global _TSNE_JOBS
    _TSNE_JOBS = n


def _run_parallel(todo, total: int, workers: int) -> None:
    """Runs ``todo`` [(index, cfg, run_dir)] in ``workers`` spawned processes. On a GPU each
    process allocates memory as it goes (XLA_PYTHON_CLIENT_PREALLOCATE=false) so they share it;
    each worker's t-SNE gets cores // workers threads (12 workers x all 16 cores made every
    t-SNE 60x slower on the H100 machine: 300 s instead of 5 s)."""
    import concurrent.futures
    import multiprocessing
    os.environ.setdefault("XLA_PYTHON_CLIENT_PREALLOCATE", "false")
    ctx = multiprocessing.get_context("spawn")
    jobs = max(1, (os.cpu_count() or 1) // workers)
    with concurrent.futures.ProcessPoolExecutor(workers, mp_context=ctx, initializer=_set_tsne_jobs,
                                                initargs=(jobs,)) as pool:
        futures = {pool.submit(_run_job, cfg, run_dir): (i, run_dir) for i, cfg, run_dir in todo}
        for f in concurrent.futures.as_completed(futures):
            i, run_dir = futures[f]
            f.result()       # a failed run re-raises here, with its traceback
            print(f"[{i + 1}/{total}] {run_dir}: done", flush=True)


def summarize(jobs, out: pathlib.Path) -> dict:
    """results.json + results.md + figures from the complete runs of ``jobs``."""
    groups: dict[tuple[str, str], list] = {}
    for cfg, run_dir, name in jobs:
        groups.setdefault((cfg.dataset, name), []).append((cfg, run_dir))
    rows = []
    for (ds, name), items in groups.items():
        per_seed = [dict(runs.read_json(d / "metrics.json"), run=str(d)) for _, d in items
                    if runs.is_complete(d)]
        if not per_seed:
            continue
        row = {"dataset": ds, "model": name, "n_seeds": len(per_seed),
               "epochs": per_seed[0]["epochs"], "per_seed": per_seed}
        for k in TABLE_METRICS:
            vals = [m[k] for m in per_seed if m.get(k) is not None]
            if vals:
                row[k] = runs.mean_std(vals)
        rows.append(row)
    first = jobs[0][0]
    settings = {"datasets": sorted({c.dataset for c, _, _ in jobs}), "seeds": len({c.seed for c, _, _ in jobs}),
                "epochs": sorted({c.epochs for c, _, _ in jobs}), "batch_size": sorted({c.batch_size for c, _, _ in jobs}),
                "train_limit": first.train_limit, "test_limit": first.test_limit, "n_cluster": first.n_cluster,
                "optimizer": first.optimizer, "lr": first.lr, "devices": jax.device_count(), "platform": jax.devices()[0].platform,
                "machine": _machine()}
    claims = check_claims(rows)
    result = {"scale": runs.SCALE, "settings": settings, "results": rows, "claims": claims}
    runs.make_dir(out)
    runs.write_json(out / "results.json", result)
    runs.atomic_write_text(out / "results.md", markdown_table(rows, settings, claims))
    reproduce_figures(groups, rows, out / "figures")
    return result


def _machine() -> str:
    """'x86_64, 2 cores', with the accelerator's name first when JAX runs on one."""
    import platform
    host = f"{platform.processor() or platform.machine()}, {os.cpu_count()} cores"
    dev = jax.devices()[0]
    return host if dev.platform == "cpu" else f"{dev.device_kind} ({dev.platform}), host {host}"


def _ms(row, k, scale=1.0, fmt="{:.2f}"):
    if k not in row:
        return "-"
    return f"{fmt.format(row[k]['mean'] * scale)} ± {fmt.format(row[k]['std'] * scale)}"


def markdown_table(rows, settings, claims) -> str:
    lines = [f"S1 results: {settings['seeds']} seed(s), epochs {settings['epochs']}, batch "
             f"{settings['batch_size']}, {settings['optimizer']} (lr {settings['lr'] or 'default'}), train_limit {settings['train_limit'] or 'all'}, "
             f"{settings['n_cluster']} test images clustered, {settings['platform']} ({settings['machine']}).",
             "NMI/ACC/ARI on the 0-100 scale (results.json: 0-1); mean ± std over seeds.", "",
             "| dataset | model | seeds | PSNR (dB) | NMI t-SNE (0-100) | NMI latent (0-100) | "
             "NMI latent+skip t-SNE (0-100) | ACC t-SNE (0-100) | ARI t-SNE (0-100) |",
             "|---|---|---|---|---|---|---|---|---|"]
    for r in rows:
        lines.append(f"| {r['dataset']} | {r['model']} | {r['n_seeds']} | {_ms(r, 'psnr')} | {_ms(r, 'nmi', 100, '{:.1f}')} | "
                     f"{_ms(r, 'nmi_latent', 100, '{:.1f}')} | {_ms(r, 'nmi_latent_skip', 100, '{:.1f}')} | "
                     f"{_ms(r, 'acc', 100, '{:.1f}')} | {_ms(r, 'ari', 100, '{:.1f}')} |")
    lines += ["", "Paper's claims, checked on these runs (skip model minus its plain twin, mean over seeds):", ""]
    for c in claims:
        lines.append(f"- {c['dataset']} {c['pair']}: PSNR {c['psnr_gain_db']:+.2f} dB, NMI "
                     f"{100 * c['nmi_change']:+.1f}, latent+skip recovers {100 * c['latent_skip_recovery']:+.1f} "
                     f"NMI points -> PSNR +5 dB: {'yes' if c['psnr_claim'] else 'no'}; NMI lower: "
                     f"{'yes' if c['nmi_claim'] else 'no'}; latent+skip recovers part: "
                     f"{'yes' if c['recovery_claim'] else 'no'}")
    return "\n".join(lines) + "\n"


def check_claims(rows) -> list[dict]:
    """Per dataset and (plain, skip) pair: PSNR gain, NMI change, NMI recovered by latent+skip.

    Only the paper's pairs (``cae_skip`` vs ``cae``, ``dae_skip`` vs ``dae``); the extension's
    ``*+ls_trained`` rows have no plain twin and are reported in the table only."""
    by = {(r["dataset"], r["model"]): r for r in rows}
    out = []
    for (ds, model), r in by.items():
        if not model.endswith("_skip"):
            continue
        plain = by.get((ds, model.replace("_skip", "")))
        if plain is None or "psnr" not in r or "nmi" not in r:
            continue
        gain = r["psnr"]["mean"] - plain["psnr"]["mean"]
        change = r["nmi"]["mean"] - plain["nmi"]["mean"]
        rec = r["nmi_latent_skip"]["mean"] - r["nmi"]["mean"]
        out.append({"dataset": ds, "pair": f"{model} vs {plain['model']}", "psnr_gain_db": gain,
                    "nmi_change": change, "latent_skip_recovery": rec,
                    "psnr_claim": bool(gain >= 5.0), "nmi_claim": bool(change < 0),
                    "recovery_claim": bool(change < 0 and rec > 0)})
    return out


def reproduce_figures(groups, rows, fig: pathlib.Path) -> None:
    """Fig. 4, 6, 7, 8, 9, 11 and Table 3 of the paper from the runs' files."""
    from aeclust_jax import viz
    fig.mkdir(parents=True, exist_ok=True)
    datasets = list(dict.fromkeys(r["dataset"] for r in rows))
    pick = lambda r, k: (r[k]["mean"], r[k]["std"]) if k in r else (np.nan, 0.0)
    bars = lambda k, s=1.0: {ds: {r["model"]: tuple(v * s for v in pick(r, k)) for r in rows
                                  if r["dataset"] == ds} for ds in datasets}
    viz.grouped_bars(bars("psnr"), fig / "fig6_psnr.png", ylabel="PSNR (dB)", title="Fig. 6: PSNR")
    viz.grouped_bars(bars("nmi", 100), fig / "fig7_nmi.png", ylabel="NMI, 0-100 (t-SNE + K-means)",
                     title="Fig. 7: NMI")
    fig11 = {}
    for r in rows:
        fig11[f"{r['dataset']}\n{r['model']}"] = {"latent": tuple(100 * v for v in pick(r, "nmi")),
                                                  "latent+skip": tuple(100 * v for v in pick(r, "nmi_latent_skip"))}
    viz.grouped_bars(fig11, fig / "fig11_latent_skip.png", ylabel="NMI, 0-100",
                     title="Fig. 11: latent vs latent+skip")
    for ds in datasets:
        first = {name: items[0][1] for (d, name), items in groups.items()
                 if d == ds and runs.is_complete(items[0][1])}
        evals = {name: np.load(d / "eval.npz") for name, d in first.items() if (d / "eval.npz").is_file()}
        if not evals:
            continue
        panels = {}
        for name, e in evals.items():
            m = runs.read_json(first[name] / "metrics.json")
            panels[name] = (e["tsne"], e["labels"], {"NMI": m.get("nmi"), "ACC": m.get("acc")})
        e0 = next(iter(evals.values()))
        names = [str(c) for c in e0["class_names"]] if "class_names" in e0.files else None
        viz.tsne_panels(panels, fig / f"fig8_tsne_{ds}.png", class_names=names,
                        title=f"Fig. 8: t-SNE of the latent, {ds}, seed 0 "
                              f"({len(e0['labels'])} test images; NMI/ACC of K-means on it)")
        skip_names = [n for n in evals if n.endswith("_skip")]
        if skip_names:
            plot_feature_maps(evals[skip_names[0]], skip_names[0], fig / f"fig9_feature_maps_{ds}.png",
                              title=f"Fig. 9: {skip_names[0]} on {ds}")
        rows_img = [next(iter(evals.values()))["clean"]] + [e["recon"] for e in evals.values()]
        viz.reconstruction_grid(rows_img, fig / f"table3_recon_{ds}.png",
                                row_names=["input"] + list(evals), title=f"Table 3: reconstructions, {ds}")
        cae = first.get("cae")
        hist = [] if cae is None else [r for r in map(__import__("json").loads,
                                                      (cae / "history.jsonl").read_text().splitlines())
                                       if "nmi" in r]
        if hist:
            viz.curves([r["epoch"] for r in hist], {"PSNR (dB)": [r["psnr"] for r in hist],
                                                    "NMI": [r["nmi"] for r in hist]},
                       fig / f"fig4_cae_curves_{ds}.png", title=f"Fig. 4: cae on {ds}, PSNR and NMI per epoch")
