"""S2's recipe: the three image sets, the feature evaluation (K-means pairwise F / BCubed F /
NMI, KNN accuracy), the autoencoders and the supervised rows, one run (``run``) and
``train.py --model cae_v1|cae_v2|cae_v3|unet|...``.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aeclust_jax import runs, train
# aeclust_jax.config as _config: a public name ``config`` would be star-imported by the package
# and replace its submodule ``natural_cae.config``.
from aeclust_jax import config as _config
from aeclust_jax.cli import make_parser, prog_name
from aeclust_jax.config import ConfigError, add_config_options, add_run_options, to_dict
from aeclust_jax.models.cae import CAE_MODELS, FEATURE_DIM
from aeclust_jax.studies.natural_cae.config import RESNETS, S2Config, pretrained_file

# ----------------------------------------------------------------------------- data

@dataclasses.dataclass(frozen=True)
class S2Data:
    """uint8 images (N, S, S, 3) and int labels: unlabeled (AE training), labeled train
    (the ResNets' training set, the KNN's neighbours), test (K-means, KNN queries)."""
    unlabeled: np.ndarray
    train_images: np.ndarray
    train_labels: np.ndarray
    test_images: np.ndarray
    test_labels: np.ndarray
    class_names: tuple


def _rgb(images: np.ndarray) -> np.ndarray:
    return np.repeat(images, 3, axis=-1) if images.shape[-1] == 1 else images


def load_data(cfg: S2Config) -> S2Data:
    """The three image sets of ``cfg`` (subsets seeded as documented on S2Config)."""
    from aeclust_jax.data import balanced_subset, load
    opts = dict(cfg.dataset_options)
    if cfg.dataset == "image_folder":
        opts["path"] = cfg.path
    tr, te = (load(cfg.dataset, split, progress=cfg.progress, **opts) for split in ("train", "test"))
    if (tr.labels < 0).any() or (te.labels < 0).any():
        raise ConfigError(f"dataset {cfg.dataset}: its train and test splits need labels")
    unl = tr.images if cfg.unlabeled_split == "train" else load(
        cfg.dataset, cfg.unlabeled_split, progress=cfg.progress, **opts).images
    if cfg.unlabeled_limit and cfg.unlabeled_limit < len(unl):
        rows = np.sort(np.random.default_rng(cfg.seed).permutation(len(unl))[:cfg.unlabeled_limit])
        unl = unl[rows]
    lab = balanced_subset(tr.labels, cfg.train_per_class, cfg.subset_seed)
    test = (balanced_subset(te.labels, cfg.test_per_class, cfg.subset_seed)
            if cfg.test_per_class else np.arange(len(te)))
    data = S2Data(_rgb(unl), _rgb(tr.images[lab]), tr.labels[lab].astype(np.int32),
                  _rgb(te.images[test]), te.labels[test].astype(np.int32), tuple(te.class_names))
    check_data(cfg, data)
    return data


def check_data(cfg: S2Config, data: S2Data) -> None:
    """ConfigError when the images do not fit ``cfg`` (checked before anything is written)."""
    size = data.test_images.shape[1]
    if cfg.model in CAE_MODELS and (size % 16 or size < 32 or data.test_images.shape[2] != size):
        raise ConfigError(f"{cfg.model} takes square images whose side is a multiple of 16, at "
                          f"least 32; "
                          f"{cfg.dataset} has {data.test_images.shape[1:3]}")
    if cfg.model in CAE_MODELS and cfg.batch_size > len(data.unlabeled):
        raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {len(data.unlabeled)} "
                          "unlabeled images")
    if cfg.knn_k > len(data.train_labels):
        raise ConfigError(f"knn_k {cfg.knn_k} exceeds the {len(data.train_labels)} labeled images")
    if cfg.n_clusters > len(data.test_labels):
        raise ConfigError(f"n_clusters {cfg.n_clusters} exceeds the {len(data.test_labels)} test images")


# ----------------------------------------------------------------------------- evaluation

def evaluate_features(train_feats, train_labels, test_feats, test_labels, *, k: int = 10,
                      seed: int = 0, knn_k: int = 5, n_init: int = 10) -> dict:
    """The seed's protocol on features: K-means (``k`` clusters, best of ``n_init``) of the test
    features (M, D) -> pairwise F, BCubed F, NMI against test_labels (M,); KNN (``knn_k``
    neighbours among train_feats (N, D) with train_labels (N,)) -> test accuracy.
    Returns {"pairwise_f", "bcubed_f", "nmi", "knn_accuracy"} as floats and "clusters" (M,)."""
    from aeclust_jax import metrics
    from aeclust_jax.cluster import kmeans, knn_classify
    train_feats = np.asarray(train_feats, np.float32)
    test_feats = np.asarray(test_feats, np.float32)
    test_labels = np.asarray(test_labels)
    pred = np.asarray(kmeans(test_feats, k, key=seed, n_init=n_init).labels)
    knn = np.asarray(knn_classify(train_feats, np.asarray(train_labels), test_feats, k=knn_k))
    return {"pairwise_f": float(metrics.pairwise_f(test_labels, pred)),
            "bcubed_f": float(metrics.bcubed_f(test_labels, pred)),
            "nmi": float(metrics.nmi(test_labels, pred)),
            "knn_accuracy": float(np.mean(knn == test_labels)),
            "clusters": pred}


def pca_reduce(train_feats: np.ndarray, test_feats: np.ndarray, dim: int = FEATURE_DIM):
    """PCA fitted on train_feats (N, D): both sets projected on its top ``dim`` components
    (signs fixed: the largest loading of each component positive). -> (N, dim), (M, dim)."""
    x = jnp.asarray(train_feats, jnp.float32)
    mean = x.mean(axis=0)
    _, _, vt = jnp.linalg.svd(x - mean, full_matrices=False)
    comps = vt[:dim]
    sign = jnp.sign(comps[jnp.arange(comps.shape[0]), jnp.argmax(jnp.abs(comps), axis=1)])
    comps = comps * sign[:, None]
    proj = lambda f: np.asarray((jnp.asarray(f, jnp.float32) - mean) @ comps.T)
    return proj(train_feats), proj(test_feats)


# ----------------------------------------------------------------------------- autoencoders

@functools.lru_cache(maxsize=16)      # one function per model: its jitted step is reused
def mse_loss(model):
    """loss_fn(params, batch, rng) -> (masked mean squared error of the reconstruction, {})."""
    def loss_fn(params, batch, rng):
        x = train.steps.to_float(batch["image"])
        recon = model.apply({"params": params}, x).recon
        return train.steps.masked_mean((recon - x) ** 2, batch["mask"]), {}
    return loss_fn


def train_cae(cfg: S2Config, images: np.ndarray, out: pathlib.Path, *, resume: bool, mesh):
    """Trains ``cfg.model`` on uint8 ``images`` (N, S, S, 3). -> (model, params, FitResult)."""
    import optax
    from aeclust_jax.models import get_model
    model = get_model(cfg.model, image_size=images.shape[1], channels=images.shape[3])
    k_init, k_fit = jax.random.split(jax.random.key(cfg.seed))
    state = train.create_train_state(model, k_init, jnp.zeros((1,) + images.shape[1:]),
                                     optax.adam(cfg.lr))
    ckpt = train.Checkpointer(out / "checkpoints", every=cfg.checkpoint_every, keep=2)
    try:
        result = train.fit(state, {"image": images}, mse_loss(model), batch_size=cfg.batch_size,
                           epochs=cfg.epochs, key=k_fit, mesh=mesh, checkpointer=ckpt,
                           resume=resume, history_path=out / "history.jsonl",
                           progress=cfg.progress, desc=f"{cfg.model}/s{cfg.seed}")
    finally:
        ckpt.close()
    return model, result.state.params, result


@functools.lru_cache(maxsize=16)
def _apply_fn(model, what: str):
    from aeclust_jax.train.steps import to_float
    if what == "recon":
        return lambda p, b: model.apply({"params": p}, to_float(b["image"])).recon
    return lambda p, b: model.apply({"params": p}, to_float(b["image"]), method=model.encode)


def reconstruct(model, params, images: np.ndarray, *, batch_size: int, mesh) -> np.ndarray:
    """uint8 images (N, S, S, C) -> reconstructions (N, S, S, C) float32 in [0, 1]."""
    from aeclust_jax.train.steps import predict
    return np.asarray(predict(_apply_fn(model, "recon"), params, {"image": images},
                              batch_size=min(batch_size, len(images)), mesh=mesh))


def cae_features(model, params, images: np.ndarray, *, batch_size: int, mesh) -> np.ndarray:
    """uint8 images (N, S, S, C) -> the autoencoder's features (N, 128) float32."""
    from aeclust_jax.train.steps import predict
    return np.asarray(predict(_apply_fn(model, "encode"), params, {"image": images},
                              batch_size=min(batch_size, len(images)), mesh=mesh))


# ----------------------------------------------------------------------------- supervised rows

def supervised_config(cfg: S2Config):
    """The hyper-parameters of a ResNet row as studies/supervised/'s SupervisedConfig."""
    from aeclust_jax.studies.supervised import SupervisedConfig
    cross = bool(cfg.supervised_dataset)
    return SupervisedConfig(
        model=cfg.model, dataset=cfg.supervised_dataset or cfg.dataset,
        path=cfg.supervised_path if cross else cfg.path,
        dataset_options={} if cross else dict(cfg.dataset_options), image_size=cfg.image_size,
        embed_dim=FEATURE_DIM, pretrained=pretrained_file(cfg),
        backbone_lr_scale=0.1 if cfg.pretrained_dir else 1.0, epochs=cfg.resnet_epochs,
        batch_size=cfg.batch_size, lr=cfg.resnet_lr, warmup_epochs=cfg.resnet_warmup_epochs,
        train_per_class=cfg.supervised_per_class if cross else cfg.train_per_class,
        seed=cfg.seed, eval_batch_size=cfg.eval_batch_size, progress=cfg.progress)


def train_resnet(cfg: S2Config, data: S2Data, out: pathlib.Path, *, resume: bool, mesh):
    """Trains a ResNet row with a 128-d embedding (in-domain: on data's labeled train images;
    cross-domain: on supervised_dataset). -> (model, variables, FitResult, input size)."""
    from aeclust_jax.studies import supervised
    from aeclust_jax.train import supervised as sup
    scfg = supervised_config(cfg).validate()
    if cfg.supervised_dataset:
        tr, _ = supervised.load_data(scfg)
        images, labels = _rgb(tr.images), tr.labels.astype(np.int32)
    else:
        images, labels = data.train_images, data.train_labels
    if scfg.batch_size > len(images):
        raise ConfigError(f"batch_size {scfg.batch_size} exceeds the {len(images)} labeled images")
    size = scfg.image_size or images.shape[1]
    model = supervised.build_model(scfg, int(labels.max()) + 1, size)
    steps = len(images) // scfg.batch_size
    k_init, k_fit = jax.random.split(jax.random.key(cfg.seed))
    state, _ = supervised.init_state(scfg, model, k_init, jnp.zeros((1, size, size, 3)), steps)
    loss_fn = sup.classification_loss(model, image_size=scfg.image_size or None,
                                      augment=scfg.augment, crop_pad=scfg.crop_pad)
    ckpt = train.Checkpointer(out / "checkpoints", every=cfg.checkpoint_every, keep=2)
    try:
        result = train.fit(state, {"image": images, "label": labels}, loss_fn,
                           batch_size=scfg.batch_size, epochs=scfg.epochs, key=k_fit, mesh=mesh,
                           last_batch="drop", checkpointer=ckpt, resume=resume,
                           history_path=out / "history.jsonl", progress=cfg.progress,
                           desc=f"{cfg.model}/s{cfg.seed}")
    finally:
        ckpt.close()
    return model, sup.variables_of(result.state), result, size


# ----------------------------------------------------------------------------- one run

def _features(cfg: S2Config, data: S2Data, out: pathlib.Path, resume: bool, mesh):
    """(train features (N, 128), test features (M, 128), extra metrics, recon samples or None)."""
    from aeclust_jax.features import extract
    extra: dict = {}
    cache = cfg.feature_cache or None
    kw = dict(batch_size=cfg.eval_batch_size, mesh=mesh)
    if cfg.model in CAE_MODELS:
        model, params, result = train_cae(cfg, data.unlabeled, out, resume=resume, mesh=mesh)
        recon = reconstruct(model, params, data.test_images, **kw)
        x = data.test_images.astype(np.float32) / 255.0
        mse = float(np.mean((recon - x) ** 2))
        extra.update(recon_mse=mse, recon_psnr=float(10 * np.log10(1.0 / mse)),
                     final_train_loss=result.history[-1]["loss"],
                     unlabeled_images=len(data.unlabeled),
                     num_params=train.count_params(params),
                     train_seconds=sum(r["seconds"] for r in result.history))
        tr = cae_features(model, params, data.train_images, **kw)
        te = cae_features(model, params, data.test_images, **kw)
        return tr, te, extra, recon
    if cfg.model in RESNETS:
        model, variables, result, size = train_resnet(cfg, data, out, resume=resume, mesh=mesh)
        extra.update(final_train_loss=result.history[-1]["loss"],
                     final_train_accuracy=result.history[-1]["train_acc"],
                     trained_on=cfg.supervised_dataset or cfg.dataset, image_size=size,
                     pretrained=pretrained_file(cfg) or None,
                     num_params=train.count_params(variables["params"]),
                     train_seconds=sum(r["seconds"] for r in result.history))
        get = lambda im: extract(model, variables, im, layer="embedding", image_size=size,
                                 cache=cache, batch_size=min(cfg.eval_batch_size, len(im)), mesh=mesh)
        return get(data.train_images), get(data.test_images), extra, None
    from aeclust_jax.models import efficientnet_lite0_imagenet
    model, variables = efficientnet_lite0_imagenet(num_classes=0)
    get = lambda im: extract(model, variables, im, image_size=cfg.effnet_size, cache=cache,
                             batch_size=min(cfg.eval_batch_size, len(im)), mesh=mesh)
    t0 = time.perf_counter()
    tr, te = get(data.train_images), get(data.test_images)
    extra.update(raw_dim=int(tr.shape[1]), reduction="pca", image_size=cfg.effnet_size,
                 extract_seconds=time.perf_counter() - t0)
    tr, te = pca_reduce(tr, te, FEATURE_DIM)
    return tr, te, extra, None


def run(cfg: S2Config, out: str | pathlib.Path, *, resume: bool = False,
        data: S2Data | None = None) -> dict:
    """One extractor and seed: train (or load) it, extract 128-d features, evaluate, into
    ``out``. The config, ``out`` and the data are checked before anything is written; ``data``
    (from ``load_data(cfg)``) saves reloading in a reproduction."""
    cfg = cfg.validate()
    out = runs.check_run_dir(out, resume=resume)
    if resume:
        runs.check_resume(out, to_dict(cfg), may_differ=reuse_may_differ(cfg.model))
        if runs.is_complete(out):
            return runs.read_json(out / "metrics.json")
    t0 = time.perf_counter()
    data = load_data(cfg) if data is None else data
    check_data(cfg, data)
    mesh = train.make_mesh()
    if cfg.batch_size % mesh.size:
        raise ConfigError(f"batch_size {cfg.batch_size} must be a multiple of the {mesh.size} devices")
    out = runs.prepare_run_dir(out, resume=resume)
    runs.write_config(out / "config.yaml", to_dict(cfg))
    tr, te, extra, recon = _features(cfg, data, out, resume, mesh)
    if not (np.isfinite(tr).all() and np.isfinite(te).all()):
        raise train.TrainingDivergedError(cfg.epochs, 0, float("nan"), None)
    scores = evaluate_features(tr, data.train_labels, te, data.test_labels, k=cfg.n_clusters,
                               seed=cfg.seed, knn_k=cfg.knn_k, n_init=cfg.kmeans_n_init)
    clusters = scores.pop("clusters")
    fig = out / "figures"
    if recon is not None:
        from aeclust_jax import viz
        n = min(10, len(recon))
        np.savez_compressed(out / "recon_samples.npz", originals=data.test_images[:n],
                            recon=recon[:n])
        viz.reconstruction_grid([data.test_images[:n] / 255.0, recon[:n]],
                                fig / "reconstructions.png", row_names=["input", cfg.model],
                                title=f"{cfg.model}: test MSE {extra['recon_mse']:.4f}")
    if cfg.tsne:
        emb = tsne_embedding(te, cfg.seed)
        np.save(out / "tsne.npy", emb)
        from aeclust_jax import viz
        viz.tsne_scatter(emb, data.test_labels, fig / "tsne.png", title=cfg.model,
                         class_names=data.class_names, scores=_short(scores))
    metrics = {**scores, **extra, "model": cfg.model, "dataset": cfg.dataset, "seed": cfg.seed,
               "feature_dim": int(te.shape[1]), "train_images": len(data.train_labels),
               "test_images": len(data.test_labels),
               "kmeans_cluster_sizes": np.bincount(clusters, minlength=cfg.n_clusters).tolist(),
               "seconds": time.perf_counter() - t0, "scale": runs.SCALE}
    runs.write_json(out / "metrics.json", metrics)
    return metrics


def tsne_embedding(features: np.ndarray, seed: int) -> np.ndarray:
    """features (M, D) -> t-SNE (M, 2) (cluster.tsne, perplexity 30, seeded). One openTSNE
    thread below 5000 points: on a shared 2-core CPU its threads contend (120 points: 4.4 s with
    one thread, 22.9 s with all, measured under load)."""
    from aeclust_jax.cluster import tsne
    return tsne(np.asarray(features, np.float32), seed=seed,
                perplexity=min(30.0, (len(features) - 1) / 3),
                n_jobs=1 if len(features) < 5000 else -1)


def _short(scores: dict) -> dict:
    return {"pF": scores["pairwise_f"], "bF": scores["bcubed_f"], "NMI": scores["nmi"],
            "KNN": scores["knn_accuracy"]}


# ----------------------------------------------------------------------------- train CLI

RESUME_MAY_DIFFER = ("progress", "tsne", "checkpoint_every", "eval_batch_size", "feature_cache")
# The fields only one kind of row reads. A saved run may differ from the asked config in the
# other kinds' fields and still be resumed or reused: the CAE rows of a --runs folder serve a
# reproduction with other ResNet settings, and the other way round.
_KIND_FIELDS = {"cae": ("unlabeled_split", "unlabeled_limit", "epochs", "lr"),
                "resnet": ("resnet_epochs", "resnet_lr", "resnet_warmup_epochs", "image_size",
                           "pretrained_dir", "supervised_dataset", "supervised_path",
                           "supervised_per_class"),
                "effnet": ("effnet_size",)}


def reuse_may_differ(model: str) -> tuple[str, ...]:
    """The fields in which a saved run of ``model`` may differ from the asked config and still be
    resumed or reused: RESUME_MAY_DIFFER and the fields only the other kinds of row read."""
    kind = "cae" if model in CAE_MODELS else "resnet" if model in RESNETS else "effnet"
    return RESUME_MAY_DIFFER + tuple(f for k, fs in _KIND_FIELDS.items() if k != kind for f in fs)


def train_parser():
    """``train.py --model cae_v1|...|unet``: one option per S2Config field."""
    p = make_parser(prog=prog_name("train.py"),
                    description="S2: train one feature extractor (a CAE on unlabeled images, or a "
                                "ResNet on 5k labels, or EfficientNet-Lite0's ImageNet weights) and "
                                "score its 128-d features: K-means pairwise F / BCubed F / NMI, "
                                "KNN accuracy.\nAn option left out takes its value from --config "
                                "FILE.yaml, else the default shown.")
    add_config_options(p, S2Config)
    add_run_options(p, S2Config, "runs/s2-<model>-<seed>")
    return p


def config_from_args(args) -> S2Config:
    """Defaults <- --config <- options typed; --resume starts from the run's config.yaml."""
    return _config.config_from_args(S2Config, args)


def train_main(argv: Sequence[str]) -> int:
    args = train_parser().parse_args(list(argv))
    cfg = config_from_args(args).validate()
    out = pathlib.Path(args.out or f"runs/s2-{cfg.model}-{cfg.seed}")
    m = run(cfg, out, resume=args.resume)
    print(" ".join(f"{k}={m[k]:.4f}" for k in ("pairwise_f", "bcubed_f", "nmi", "knn_accuracy")))
    print(f"wrote {out}")
    return 0
