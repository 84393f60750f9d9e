"""S1's recipe: model + loss, the evaluation protocol (PSNR; t-SNE -> K-means -> NMI/ACC/ARI),
one run into its run folder (``run``), and ``train.py --model cae|cae_skip|dae|dae_skip``.
"""

from __future__ import annotations

import argparse
import os
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aeclust_jax import runs, train
from aeclust_jax.cli import make_parser, prog_name
from aeclust_jax.config import (ConfigError, add_config_options, add_run_options, config_overrides,
                                load_config, to_dict)
from aeclust_jax.models import get_model
from aeclust_jax.progress import Stages
from aeclust_jax.studies.skip_ae.config import CONFIG_DIR, S1Config

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


def _tsne(x: np.ndarray, cfg: S1Config) -> np.ndarray:
    from aeclust_jax.cluster import tsne
    return np.asarray(tsne(np.asarray(x, np.float32), n_components=2, perplexity=30.0, seed=cfg.seed,
                           backend=cfg.tsne_backend, n_iter=cfg.tsne_iter, n_jobs=-1))


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
        enc = encode(model, params, images, batch_size=cfg.eval_batch_size, mesh=mesh)
    n = min(cfg.cluster_limit or len(images), len(images))
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
    add_run_options(p, S1Config, "runs/<dataset>-<model>-<seed>",
                    config_help="YAML config of S1Config fields (default: "
                                "configs/s1_<dataset>.yaml when present)")
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


