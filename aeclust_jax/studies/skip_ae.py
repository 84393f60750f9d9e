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
from aeclust_jax.config import load_config, to_dict
from aeclust_jax.models import get_model

MODELS = ("cae", "cae_skip", "dae", "dae_skip")
DATASETS = ("mnist", "fashion_mnist", "hanja", "hanja_synth")
LATENT_SKIP_MODES = ("random", "trained")
UPSAMPLE_METHODS = ("subpixel", "repeat", "broadcast", "resize")
TSNE_BACKENDS = ("auto", "opentsne", "tsnecuda", "jax")
CONFIG_DIR = pathlib.Path(__file__).resolve().parents[2] / "configs"


@dataclasses.dataclass(frozen=True)
class S1Config:
    """One S1 run. Defaults are the authors' MNIST code; configs/s1_<dataset>.yaml override them."""
    model: str = "dae_skip"
    dataset: str = "mnist"
    epochs: int = 25
    batch_size: int = 32
    optimizer: str = "adadelta"          # adadelta (Keras 2020 defaults) | adam | sgd
    lr: float | None = None              # None: the optimizer's default (adadelta 1.0)
    noise_std: float = 0.5               # dae*: x + noise_std * N(0, 1), clipped to [0, 1]
    noisy_target: bool = False           # True: the authors' code (target = the noisy input)
    latent_skip: str = "random"          # random: fixed seeded projections (faithful) | trained
    aux_weight: float = 1.0              # latent_skip=trained: weight of the auxiliary loss
    seed: int = 0
    last_batch: str = "pad"              # pad (Keras: every row once, last batch masked) | drop
    upsample: str = "subpixel"           # up x2 + conv as one conv (exact) | repeat | broadcast | resize
    train_limit: int = 0                 # use the first N training images (0: all)
    test_limit: int = 0                  # evaluate PSNR on the first N test images (0: all)
    n_cluster: int = 3000                # first N test images for t-SNE / K-means
    kmeans_n_init: int = 10
    tsne_backend: str = "auto"
    tsne_iter: int = 750                 # after 250 early-exaggeration iterations: sklearn's 1000
    eval_every: int = 0                  # > 0: PSNR + NMI in history every N epochs (Fig. 4)
    eval_batch: int = 1000
    checkpoint_every: int = 5
    keep_checkpoints: int = 3
    dataset_options: dict = dataclasses.field(default_factory=dict)   # load(name, **options)
    progress: bool = True
    scan_epoch: bool = False             # an epoch as one lax.scan (same numbers; fast on a GPU)

    def validate(self) -> "S1Config":
        for name, value, choices in (("model", self.model, MODELS), ("dataset", self.dataset, DATASETS),
                                     ("optimizer", self.optimizer, train.OPTIMIZERS),
                                     ("latent_skip", self.latent_skip, LATENT_SKIP_MODES),
                                     ("last_batch", self.last_batch, ("pad", "drop")),
                                     ("upsample", self.upsample, UPSAMPLE_METHODS),
                                     ("tsne_backend", self.tsne_backend, TSNE_BACKENDS)):
            if value not in choices:
                raise ValueError(f"unknown {name} {value!r}; choices: {', '.join(choices)}")
        for name in ("epochs", "batch_size", "n_cluster", "kmeans_n_init", "eval_batch",
                     "checkpoint_every", "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ValueError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.noise_std < 0:
            raise ValueError(f"noise_std must be >= 0, got {self.noise_std}")
        return self


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


def cluster_scores(features: np.ndarray, labels: np.ndarray, k: int, *, seed: int,
                   n_init: int) -> dict[str, Any]:
    """K-means (k-means++, ``n_init`` restarts, key ``seed``) on features (N, D) -> nmi/acc/ari."""
    from aeclust_jax.cluster import kmeans
    from aeclust_jax.metrics import acc, ari, nmi
    pred = np.asarray(kmeans(jnp.asarray(features, jnp.float32), k, key=jax.random.key(seed),
                             n_init=n_init).labels)
    return {"nmi": float(nmi(labels, pred)), "acc": float(acc(labels, pred)),
            "ari": float(ari(labels, pred)), "pred": pred}


def evaluate(model, params, test, cfg: S1Config, mesh, *, full: bool = True,
             timings: dict | None = None) -> tuple[dict, dict]:
    """S1 protocol on the test split -> (metrics, arrays for figures).

    ``full=False`` (per-epoch curves) computes only psnr and the t-SNE NMI.
    """
    timings = {} if timings is None else timings
    images = test.images[:cfg.test_limit] if cfg.test_limit else test.images
    t = time.perf_counter()
    enc = encode(model, params, images, batch_size=cfg.eval_batch, mesh=mesh)
    timings["encode"] = time.perf_counter() - t
    n = min(cfg.n_cluster, len(images))
    labels = np.asarray(test.labels[:n])
    k = int(test.num_classes)
    t = time.perf_counter()
    emb = _tsne(enc["latent"][:n], cfg)
    timings["tsne"] = time.perf_counter() - t
    t = time.perf_counter()
    s = cluster_scores(emb, labels, k, seed=cfg.seed, n_init=cfg.kmeans_n_init)
    timings["kmeans"] = time.perf_counter() - t
    metrics = {"psnr": float(np.mean(enc["psnr"])), "nmi": s["nmi"], "acc": s["acc"], "ari": s["ari"]}
    arrays = {"tsne": emb, "labels": labels, "pred": s["pred"]}
    if not full:
        return metrics, arrays
    raw = cluster_scores(enc["latent"][:n], labels, k, seed=cfg.seed, n_init=cfg.kmeans_n_init)
    metrics.update(nmi_latent=raw["nmi"], acc_latent=raw["acc"], ari_latent=raw["ari"])
    emb_ls = _tsne(enc["latent_skip"][:n], cfg)
    ls = cluster_scores(emb_ls, labels, k, seed=cfg.seed, n_init=cfg.kmeans_n_init)
    ls_raw = cluster_scores(enc["latent_skip"][:n], labels, k, seed=cfg.seed, n_init=cfg.kmeans_n_init)
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
    return load(cfg.dataset, split, **dict(cfg.dataset_options))


def run(cfg: S1Config, out: str | pathlib.Path, *, resume: bool = False) -> dict:
    """Trains and evaluates one S1 model into run folder ``out``; returns metrics.json's dict."""
    cfg = cfg.validate()
    out = runs.prepare_run_dir(out, resume=resume)
    if runs.is_complete(out):
        print(f"{out} is already complete (metrics.json exists); nothing to do")
        return runs.read_json(out / "metrics.json")
    _write_config(out / "config.yaml", cfg)
    train.maybe_initialize_distributed()
    mesh = train.make_mesh()
    t_load = time.perf_counter()
    tr, te = load_split(cfg, "train"), load_split(cfg, "test")
    images = tr.images[:cfg.train_limit] if cfg.train_limit else tr.images
    load_seconds = time.perf_counter() - t_load
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
    metrics, arrays = evaluate(model, params, te, cfg, mesh, timings=timings)
    extra = samples_and_maps(model, params, te.images, model.noise_std, cfg.seed)
    np.savez_compressed(out / "eval.npz", **arrays, **extra)
    _run_figures(out, cfg, arrays, extra, te)
    train_seconds = sum(r["seconds"] for r in result.history)
    # images/s over the epochs after the first (which includes compilation) when there are any
    warm = result.history[1:] or result.history
    ips = len(images) * len(warm) / sum(r["seconds"] for r in warm)
    metrics.update(
        epochs=cfg.epochs, train_seconds=train_seconds, images_per_second=ips,
        final_loss=result.history[-1]["loss"], model=cfg.model, dataset=cfg.dataset, seed=cfg.seed,
        num_params=train.count_params(params, _recon_param),
        eval_seconds=timings, devices=mesh.size, platform=jax.devices()[0].platform)
    runs.write_json(out / "metrics.json", metrics)
    return metrics


def _ordered_maps(extra: dict) -> dict:
    """map_latent_path_i / map_skip_branch_i -> ordered by junction: latent_path_1, skip_branch_1, ..."""
    maps = {k[4:]: v for k, v in extra.items() if k.startswith("map_")}
    return dict(sorted(maps.items(), key=lambda kv: (kv[0][-1], kv[0])))


def _recon_param(path) -> bool:
    from aeclust_jax.models.skip_ae import is_recon_param
    return is_recon_param(path)


def _write_config(path: pathlib.Path, cfg: S1Config) -> None:
    import yaml
    runs.atomic_write_text(path, yaml.safe_dump(to_dict(cfg), sort_keys=False))


def _run_figures(out: pathlib.Path, cfg: S1Config, arrays: dict, extra: dict, test) -> None:
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
    viz.tsne_scatter(arrays["tsne"], arrays["labels"], fig / "tsne.png", title=f"{title}: latent",
                     class_names=names)
    viz.tsne_scatter(arrays["tsne_latent_skip"], arrays["labels"], fig / "tsne_latent_skip.png",
                     title=f"{title}: latent + skip", class_names=names)
    maps = _ordered_maps(extra)
    if maps:
        viz.feature_maps(maps, fig / "feature_maps.png", title=title)


# ----------------------------------------------------------------------------- CLI: train

def _train_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="train.py", description="Train and evaluate one S1 autoencoder (cae, cae_skip, dae, dae_skip).")
    p.add_argument("--model", required=True, choices=MODELS)
    p.add_argument("--dataset", default="mnist", help=f"one of {', '.join(DATASETS)}")
    p.add_argument("--config", help="YAML config (default: configs/s1_<dataset>.yaml when present)")
    p.add_argument("--epochs", type=int)
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", help=f"one of {', '.join(train.OPTIMIZERS)}")
    p.add_argument("--lr", type=float)
    p.add_argument("--noise-std", type=float)
    p.add_argument("--noisy-target", action="store_true", default=None,
                   help="denoising target = the noisy input (the authors' code), not the clean image")
    p.add_argument("--latent-skip", help="random (faithful, fixed projections) | trained (auxiliary loss)")
    p.add_argument("--seed", type=int)
    p.add_argument("--train-limit", type=int, help="use the first N training images")
    p.add_argument("--test-limit", type=int, help="evaluate PSNR on the first N test images")
    p.add_argument("--n-cluster", type=int, help="first N test images for t-SNE/K-means (3000)")
    p.add_argument("--eval-every", type=int, help="PSNR + NMI every N epochs into history.jsonl")
    p.add_argument("--checkpoint-every", type=int)
    p.add_argument("--upsample", help="subpixel (default) | repeat | broadcast | resize")
    p.add_argument("--last-batch", help="pad | drop")
    p.add_argument("--dataset-option", action="append", default=[], metavar="KEY=VALUE",
                   help="option of the dataset builder, e.g. train_per_class=100 (repeatable)")
    p.add_argument("--scan-epoch", action="store_true", default=None,
                   help="run each epoch as one lax.scan (same numbers; much faster on a GPU)")
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--out", help="run folder (default runs/<dataset>-<model>-<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    return p


def _parse_kv(items: Sequence[str]) -> dict:
    import yaml
    opts = {}
    for item in items:
        if "=" not in item:
            raise ValueError(f"--dataset-option expects KEY=VALUE, got {item!r}")
        k, v = item.split("=", 1)
        opts[k] = yaml.safe_load(v)
    return opts


def config_from_args(args) -> S1Config:
    """Defaults <- configs/s1_<dataset>.yaml (or --config) <- flags; --resume starts from the
    run's saved config.yaml instead."""
    if args.dataset not in DATASETS:
        raise ValueError(f"unknown dataset {args.dataset!r}; choices: {', '.join(DATASETS)}")
    over = {"model": args.model, "dataset": args.dataset, "epochs": args.epochs,
            "batch_size": args.batch_size, "optimizer": args.optimizer, "lr": args.lr,
            "noise_std": args.noise_std, "noisy_target": args.noisy_target,
            "latent_skip": args.latent_skip, "seed": args.seed, "train_limit": args.train_limit,
            "test_limit": args.test_limit, "n_cluster": args.n_cluster, "eval_every": args.eval_every,
            "checkpoint_every": args.checkpoint_every, "upsample": args.upsample,
            "last_batch": args.last_batch, "scan_epoch": args.scan_epoch,
            "dataset_options": _parse_kv(args.dataset_option) or None,
            "progress": False if args.no_progress else None}
    saved = pathlib.Path(args.out or "") / "config.yaml"
    if args.resume and args.out and saved.is_file():
        base = load_config(S1Config, saved)
        return load_config(S1Config, None, over, base=base)
    path = args.config
    if path is None and (CONFIG_DIR / f"s1_{args.dataset}.yaml").is_file():
        path = CONFIG_DIR / f"s1_{args.dataset}.yaml"
    return load_config(S1Config, path, over)


def train_main(argv: Sequence[str]) -> int:
    args = _train_parser().parse_args(list(argv))
    if args.out is None:   # the default folder, also where --resume looks for config.yaml
        args.out = f"runs/{args.dataset}-{args.model}-{0 if args.seed is None else args.seed}"
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


def _reproduce_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="reproduce.py s1",
                                description="S1: 4 models x datasets x seeds -> results table + figures.")
    p.add_argument("--datasets", nargs="+", default=["mnist", "fashion_mnist", "hanja_synth"])
    p.add_argument("--models", nargs="+", default=list(MODELS))
    p.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1)")
    p.add_argument("--epochs", type=int, help="override the configs' epochs")
    p.add_argument("--batch-size", type=int)
    p.add_argument("--optimizer", help=f"override the configs' optimizer: {', '.join(train.OPTIMIZERS)}")
    p.add_argument("--lr", type=float)
    p.add_argument("--train-limit", type=int, help="first N training images per dataset")
    p.add_argument("--test-limit", type=int)
    p.add_argument("--n-cluster", type=int)
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
    p.add_argument("--no-progress", action="store_true")
    p.add_argument("--summary-only", action="store_true",
                   help="train nothing: table + figures from the runs already complete")
    return p


def _dataset_options(items: Sequence[str]) -> dict[str, dict]:
    opts: dict[str, dict] = {}
    for item in items:
        if ":" not in item:
            raise ValueError(f"--dataset-option expects DATASET:KEY=VALUE, got {item!r}")
        ds, kv = item.split(":", 1)
        opts.setdefault(ds, {}).update(_parse_kv([kv]))
    return opts


def reproduce_main(argv: Sequence[str]) -> int:
    a = _reproduce_parser().parse_args(list(argv))
    for d in a.datasets:
        if d not in DATASETS:
            raise ValueError(f"unknown dataset {d!r}; choices: {', '.join(DATASETS)}")
    for m in a.models:
        if m not in MODELS:
            raise ValueError(f"unknown model {m!r}; choices: {', '.join(MODELS)}")
    if a.seeds < 1:
        raise ValueError(f"--seeds must be >= 1, got {a.seeds}")
    if a.workers < 1:
        raise ValueError(f"--workers must be >= 1, got {a.workers}")
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
                            "progress": False if a.no_progress or a.workers > 1 else None}
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
    result = {"settings": settings, "results": rows, "claims": claims}
    out.mkdir(parents=True, exist_ok=True)
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
             "NMI/ACC/ARI on the 0-100 scale; mean ± std over seeds.", "",
             "| dataset | model | seeds | PSNR (dB) | NMI t-SNE | NMI latent | NMI latent+skip t-SNE | ACC t-SNE | ARI t-SNE |",
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
    """Per dataset and (plain, skip) pair: PSNR gain, NMI change, NMI recovered by latent+skip."""
    by = {(r["dataset"], r["model"]): r for r in rows}
    out = []
    for (ds, model), r in by.items():
        if not model.endswith("_skip") and TRAINED_LS not in model:
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
    viz.grouped_bars(bars("nmi", 100), fig / "fig7_nmi.png", ylabel="NMI (t-SNE + K-means)",
                     title="Fig. 7: NMI")
    fig11 = {}
    for r in rows:
        fig11[f"{r['dataset']}\n{r['model']}"] = {"latent": tuple(100 * v for v in pick(r, "nmi")),
                                                  "latent+skip": tuple(100 * v for v in pick(r, "nmi_latent_skip"))}
    viz.grouped_bars(fig11, fig / "fig11_latent_skip.png", ylabel="NMI", title="Fig. 11: latent vs latent+skip")
    for ds in datasets:
        first = {name: items[0][1] for (d, name), items in groups.items()
                 if d == ds and runs.is_complete(items[0][1])}
        evals = {name: np.load(d / "eval.npz") for name, d in first.items() if (d / "eval.npz").is_file()}
        if not evals:
            continue
        viz.tsne_panels({name: (e["tsne"], e["labels"]) for name, e in evals.items()},
                        fig / f"fig8_tsne_{ds}.png", title=f"Fig. 8: t-SNE of the latent, {ds}")
        skip_names = [n for n in evals if n.endswith("_skip")]
        if skip_names:
            e = evals[skip_names[0]]
            maps = _ordered_maps({k: e[k] for k in e.files})
            if maps:
                viz.feature_maps(maps, fig / f"fig9_feature_maps_{ds}.png",
                                 title=f"Fig. 9: decoder maps, latent path vs skip branch ({skip_names[0]}, {ds})")
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
