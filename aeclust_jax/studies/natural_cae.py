"""S2: naive convolutional autoencoders vs supervised features on natural images (Lee & Cho 2022).

    python scripts/train.py --model cae_v1 --dataset image_folder --path cifar10-jpeg.zip \\
        --unlabeled-limit 10000 --epochs 3 --out runs/s2-cae_v1
    python scripts/reproduce.py s2 --path cifar10-jpeg.zip --seeds 2       # Table 1, claims

One run = one feature extractor (one row of the seed's Table 1) and one seed:

* ``cae_v1 | cae_v2 | cae_v3 | unet`` (models/cae.py): trained with MSE on the unlabeled images
  (``train.fit``, Adam); the reconstruction of test images (figures/reconstructions.png, the
  seed's Fig. 1) and the test MSE / PSNR; feature = the model's 128-d ``encode``.
* ``resnet18 | resnet34 | resnet50``: supervised with cross-entropy on ``train_per_class``
  labeled images per class (S2: 500 = 5k labels), the recipe of studies/supervised.py (its
  ``SupervisedConfig`` carries the hyper-parameters), with a 128-d Dense embedding before the
  classifier; from torchvision weights when ``pretrained_dir`` holds ``<model>*.pth``, else from
  scratch. Feature = the embedding. With ``supervised_dataset`` the ResNet trains on that other
  dataset instead (the seed's Table 2: CIFAR-10 -> STL-10), its features of our images taken at
  the size it was trained at.
* ``efficientnet_lite0``: ImageNet weights shipped offline, not trained here (the pretrained,
  cross-domain row): pooled 1280-d features at ``effnet_size`` px reduced to 128-d by a PCA
  fitted on the labeled train features.

Evaluation (``evaluate_features``, the seed's protocol): K-means (k = 10) on the test features ->
pairwise F, BCubed F, NMI; KNN (k = 5): the labeled train features vote for each test image ->
accuracy; t-SNE of the test features (figures/tsne.png, the seed's appendix Fig. 2/3).
The run folder is the project's contract (config.yaml, history.jsonl, checkpoints/, figures/,
metrics.json last).
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

from aeclust_jax import config, runs, train
from aeclust_jax.cli import make_parser, prog_name
from aeclust_jax.config import (ConfigError, add_config_options, config_overrides, field, load_config,
                                to_dict)
from aeclust_jax.errors import UsageError
from aeclust_jax.models.cae import CAE_MODELS, FEATURE_DIM

RESNETS = ("resnet18", "resnet34", "resnet50")
MODELS = CAE_MODELS + RESNETS + ("efficientnet_lite0",)
UNLABELED_SPLITS = ("train", "unlabeled")


@dataclasses.dataclass(frozen=True)
class S2Config:
    """One S2 run: one extractor, one seed. Defaults: the reduced setting of the CIFAR-10 copy."""
    model: str = field("cae_v1", "feature extractor (a row of Table 1)", choices=MODELS)
    dataset: str = field("image_folder", "dataset name (aeclust_jax.data): image_folder, stl10, ...")
    path: str = field("", "image_folder: the folder or .zip/.tar archive of the images")
    dataset_options: dict = field(dict, "more options of the dataset builder")
    unlabeled_split: str = field("train", "split whose images (labels dropped) train the autoencoders "
                                       "(stl10: unlabeled)", choices=UNLABELED_SPLITS)
    unlabeled_limit: int = field(0, "a seeded random N of the unlabeled images (0: all)")
    train_per_class: int = field(500, "labeled train images per class (S2: 500 = 5k labels): the "
                                   "ResNets' training set and the KNN's neighbours")
    test_per_class: int = field(0, "test images per class (0: the whole test split)")
    subset_seed: int = field(0, "seed of the labeled and test subsets (the same for every run)")
    epochs: int = field(3, "autoencoders: training epochs")
    resnet_epochs: int = field(3, "ResNets: training epochs")
    batch_size: int = field(128, "batch size of training")
    lr: float = field(1e-3, "autoencoders: Adam learning rate")
    resnet_lr: float = field(0.1, "ResNets: peak SGD learning rate (cosine)")
    resnet_warmup_epochs: int = field(0, "ResNets: linear warmup epochs")
    image_size: int = field(0, "ResNets: train and extract at S x S (0: as stored)")
    pretrained_dir: str = field("", "ResNets: a folder of torchvision ImageNet weights "
                                 "(resnet18-*.pth, ...); fine-tune from them (empty: from scratch)")
    supervised_dataset: str = field("", "ResNets: train on this other dataset (cross-domain, Table 2; "
                                     "empty: in-domain)")
    supervised_path: str = field("", "path of supervised_dataset (image_folder)")
    supervised_per_class: int = field(0, "labeled images per class of supervised_dataset (0: all)")
    effnet_size: int = field(128, "efficientnet_lite0: input size (224 = ImageNet's; smaller is "
                               "faster on a CPU and weaker)")
    clusters: int = field(10, "K of K-means")
    knn_k: int = field(5, "K of the KNN classifier")
    kmeans_init: int = field(10, "K-means restarts (best inertia)")
    tsne: bool = field(True, "t-SNE figure of the test features")
    feature_cache: str = field("", "folder caching extracted backbone features (empty: none)")
    seed: int = field(0, "seed of the init, the unlabeled subset, shuffling, K-means and t-SNE")
    eval_batch: int = field(500, "batch size of feature extraction")
    checkpoint_every: int = field(1, "checkpoint every N epochs")
    progress: bool = field(True, "progress bars and stage lines")

    def validate(self) -> "S2Config":
        from aeclust_jax.data import DATASETS
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; choices: {', '.join(MODELS)}")
        for name in ("dataset", "supervised_dataset"):
            v = getattr(self, name)
            if (v or name == "dataset") and v not in DATASETS:
                raise ConfigError(f"unknown {name} {v!r}; choices: {', '.join(DATASETS)}")
        if self.dataset == "image_folder" and not self.path:
            raise ConfigError("dataset image_folder needs --path (a folder or .zip/.tar of images)")
        if self.supervised_dataset == "image_folder" and not self.supervised_path:
            raise ConfigError("supervised_dataset image_folder needs --supervised-path")
        if self.unlabeled_split not in UNLABELED_SPLITS:
            raise ConfigError(f"unknown unlabeled_split {self.unlabeled_split!r}; choices: "
                              f"{', '.join(UNLABELED_SPLITS)}")
        for name in ("epochs", "batch_size", "train_per_class", "eval_batch", "clusters", "knn_k",
                     "kmeans_init", "checkpoint_every", "effnet_size", "resnet_epochs"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("unlabeled_limit", "test_per_class", "image_size", "resnet_warmup_epochs",
                     "supervised_per_class"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        for name in ("lr", "resnet_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        if self.resnet_warmup_epochs and self.resnet_warmup_epochs >= self.resnet_epochs:
            raise ConfigError(f"resnet_warmup_epochs ({self.resnet_warmup_epochs}) must be < "
                              f"resnet_epochs ({self.resnet_epochs})")
        if self.pretrained_dir and not pathlib.Path(self.pretrained_dir).expanduser().is_dir():
            raise ConfigError(f"--pretrained-dir {self.pretrained_dir}: no such folder")
        if self.model in RESNETS and self.pretrained_dir:
            pretrained_file(self)                      # raises when the folder lacks the file
        return self


def pretrained_file(cfg: S2Config) -> str:
    """The torchvision weights ``<pretrained_dir>/<model>*.pth`` of a ResNet row ('' without)."""
    if not cfg.pretrained_dir:
        return ""
    found = sorted(pathlib.Path(cfg.pretrained_dir).expanduser().glob(f"{cfg.model}*.pth"))
    if not found:
        raise ConfigError(f"--pretrained-dir {cfg.pretrained_dir} holds no {cfg.model}*.pth "
                          "(torchvision's file name, e.g. resnet18-f37072fd.pth)")
    return str(found[0])


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
    if cfg.clusters > len(data.test_labels):
        raise ConfigError(f"clusters {cfg.clusters} exceeds the {len(data.test_labels)} test images")


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
    params = jax.jit(model.init)(k_init, jnp.zeros((1,) + images.shape[1:]))["params"]
    state = train.create_train_state(model, None, None, optax.adam(cfg.lr), params=params)
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
    """The hyper-parameters of a ResNet row as studies/supervised.py's SupervisedConfig."""
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
        seed=cfg.seed, eval_batch=cfg.eval_batch, progress=cfg.progress)


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
    kw = dict(batch_size=cfg.eval_batch, mesh=mesh)
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
                                 cache=cache, batch_size=min(cfg.eval_batch, len(im)), mesh=mesh)
        return get(data.train_images), get(data.test_images), extra, None
    from aeclust_jax.models import efficientnet_lite0_imagenet
    model, variables = efficientnet_lite0_imagenet(num_classes=0)
    get = lambda im: extract(model, variables, im, image_size=cfg.effnet_size, cache=cache,
                             batch_size=min(cfg.eval_batch, len(im)), mesh=mesh)
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
        runs.check_resume(out, to_dict(cfg), may_differ=RESUME_MAY_DIFFER)
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
    scores = evaluate_features(tr, data.train_labels, te, data.test_labels, k=cfg.clusters,
                               seed=cfg.seed, knn_k=cfg.knn_k, n_init=cfg.kmeans_init)
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
               "kmeans_cluster_sizes": np.bincount(clusters, minlength=cfg.clusters).tolist(),
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

RESUME_MAY_DIFFER = ("progress", "tsne", "checkpoint_every", "eval_batch", "feature_cache")


def train_parser():
    """``train.py --model cae_v1|...|unet``: one option per S2Config field."""
    p = make_parser(prog=prog_name("train.py"),
                    description="S2: train one feature extractor (a CAE on unlabeled images, or a "
                                "ResNet on 5k labels, or EfficientNet-Lite0's ImageNet weights) and "
                                "score its 128-d features: K-means pairwise F / BCubed F / NMI, "
                                "KNN accuracy.\nAn option left out takes its value from --config "
                                "FILE.yaml, else the default shown.")
    add_config_options(p, S2Config)
    p.add_argument("--config", help="YAML file of S2Config fields")
    p.add_argument("--out", help="run folder (default runs/s2-<model>-<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    return p


def config_from_args(args) -> S2Config:
    """Defaults <- --config <- options typed; --resume starts from the run's config.yaml."""
    return config.config_from_args(S2Config, args)


def train_main(argv: Sequence[str]) -> int:
    args = train_parser().parse_args(list(argv))
    cfg = config_from_args(args).validate()
    out = pathlib.Path(args.out or f"runs/s2-{cfg.model}-{cfg.seed}")
    m = run(cfg, out, resume=args.resume)
    print(" ".join(f"{k}={m[k]:.4f}" for k in ("pairwise_f", "bcubed_f", "nmi", "knn_accuracy")))
    print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------- reproduce

# The seed's Table 1 (STL-10 test, 8k): pairwise F, BCubed F, NMI, KNN accuracy.
SEED_TABLE1 = {
    "cae_v1": (0.1395, 0.1481, 0.0864, 0.297), "cae_v2": (0.1715, 0.1834, 0.1538, 0.313),
    "cae_v3": (0.1525, 0.1598, 0.1220, 0.291), "unet": (0.1827, 0.1988, 0.1341, 0.296),
    "resnet18": (0.7986, 0.7997, 0.7847, 0.892), "resnet34": (0.8131, 0.8131, 0.7953, 0.900),
    "resnet50": (0.8329, 0.8332, 0.8163, 0.911)}
# Table 2 (ResNet trained on CIFAR-10, tested on STL-10).
SEED_TABLE2 = {"resnet18": (0.4536, 0.4999, 0.5239, 0.694),
               "resnet34": (0.4408, 0.4896, 0.5138, 0.700),
               "resnet50": (0.4463, 0.4869, 0.5146, 0.686)}
SCORES = ("pairwise_f", "bcubed_f", "nmi", "knn_accuracy")
LABELS = {"cae_v1": "CAEv1", "cae_v2": "CAEv2", "cae_v3": "CAEv3", "unet": "UNet",
          "resnet18": "ResNet18", "resnet34": "ResNet34", "resnet50": "ResNet50",
          "efficientnet_lite0": "EfficientNet-Lite0 (ImageNet)"}
DEFAULT_MODELS = ("cae_v1", "cae_v2", "cae_v3", "unet", "efficientnet_lite0", "resnet18")


def reproduce_parser():
    p = make_parser(prog=f"{prog_name('reproduce.py')} s2",
                    description="S2: Table 1 (and the cross-domain rows) over seeds, figures, and "
                                "which of the seed's claims hold. Each (model, seed) is one run "
                                "folder under --runs; finished runs are reused.")
    p.add_argument("--models", nargs="+", default=list(DEFAULT_MODELS), choices=MODELS,
                   help="rows of the table")
    p.add_argument("--seeds", type=int, default=2, help="seeds 0..N-1 per row")
    p.add_argument("--cross", nargs="*", default=[], choices=RESNETS,
                   help="ResNets also trained on --supervised-dataset (Table 2)")
    p.add_argument("--out", default="results/s2", help="results.json, results.md, figures/")
    p.add_argument("--runs", default="runs/s2", help="folder of the run folders")
    add_config_options(p, S2Config, skip=("model", "seed", "supervised_dataset", "supervised_path",
                                          "supervised_per_class"))
    p.add_argument("--supervised-dataset", default="", help="--cross: dataset the ResNets train on")
    p.add_argument("--supervised-path", default="", help="--cross: its path (image_folder)")
    p.add_argument("--supervised-per-class", type=int, default=0,
                   help="--cross: labeled images per class (0: all)")
    p.add_argument("--config", help="YAML file of S2Config fields (the base of every run)")
    p.add_argument("--report-only", action="store_true",
                   help="run nothing: write the results of the runs already finished")
    return p


def planned_jobs(base: S2Config, models: Sequence[str], seeds: Sequence[int],
                 cross: Sequence[str], cross_opts: dict) -> dict[str, S2Config]:
    """{run name: config}, seed-major (every row of seed 0 first, so a cut-short reproduction
    still has one full table). EfficientNet-Lite0 (no training) runs once, seed 0."""
    jobs = {}
    for s in seeds:
        for m in models:
            if m == "efficientnet_lite0" and s != seeds[0]:
                continue
            jobs[f"{m}-s{s}"] = dataclasses.replace(base, model=m, seed=s, tsne=base.tsne and s == seeds[0])
        for m in cross:
            jobs[f"{m}-cross-s{s}"] = dataclasses.replace(base, model=m, seed=s, tsne=False,
                                                          **cross_opts)
    return jobs


def summarize(jobs: dict[str, S2Config], runs_dir: pathlib.Path) -> list[dict]:
    """One row per (model, domain): mean/std over the finished seeds of each score."""
    groups: dict[tuple, list[dict]] = {}
    for name, cfg in jobs.items():
        path = runs_dir / name / "metrics.json"
        if path.is_file():
            key = (cfg.model, "cross" if cfg.supervised_dataset else "in")
            groups.setdefault(key, []).append(runs.read_json(path))
    rows = []
    for (model, domain), ms in groups.items():
        row = {"model": model, "domain": domain, "seeds": [m["seed"] for m in ms]}
        for k in SCORES + ("recon_mse", "recon_psnr", "train_seconds"):
            vals = [m[k] for m in ms if k in m]
            if vals:
                row[k] = runs.mean_std(vals)
        seed = (SEED_TABLE2 if domain == "cross" else SEED_TABLE1).get(model)
        row["seed_paper"] = dict(zip(SCORES, seed)) if seed else None
        rows.append(row)
    return rows


def check_claims(rows: list[dict]) -> list[dict]:
    """The seed's four claims, each 'holds' / 'does not hold' / 'not testable here' with numbers."""
    mean = lambda r, k: r[k]["mean"]
    cae = [r for r in rows if r["model"] in CAE_MODELS]
    sup_in = [r for r in rows if r["model"] in RESNETS and r["domain"] == "in"]
    other = [r for r in rows if r["model"] == "efficientnet_lite0" or r["domain"] == "cross"]
    name = lambda r: LABELS[r["model"]] + (" (cross)" if r["domain"] == "cross" else "")
    claims = []

    def beats(a, b):       # every score of row a above every CAE's
        return all(mean(a, k) > max(mean(c, k) for c in b) for k in SCORES)

    def best_cae():
        return {k: max(mean(c, k) for c in cae) for k in SCORES}

    # (1) reconstruction quality does not predict feature quality
    text = "(1) reconstruction quality does not predict feature quality (among the CAEs)"
    if len(cae) >= 2:
        mses = np.array([mean(r, "recon_mse") for r in cae])
        knn = np.array([mean(r, "knn_accuracy") for r in cae])
        nmi_ = np.array([mean(r, "nmi") for r in cae])
        rho = _spearman(-mses, knn)
        best_rec, best_knn, best_nmi = (cae[int(np.argmin(mses))], cae[int(np.argmax(knn))],
                                        cae[int(np.argmax(nmi_))])
        # holds when another CAE has strictly better features than the best reconstructor
        holds = (knn.max() > mean(best_rec, "knn_accuracy") and nmi_.max() > mean(best_rec, "nmi"))
        claims.append({"claim": text, "verdict": "holds" if holds else "does not hold",
                       "numbers": f"best reconstruction {name(best_rec)} (test MSE "
                                  f"{mean(best_rec, 'recon_mse'):.4f}); best KNN {name(best_knn)} "
                                  f"({mean(best_knn, 'knn_accuracy'):.3f}); best NMI {name(best_nmi)} "
                                  f"({mean(best_nmi, 'nmi'):.3f}); Spearman(-MSE, KNN) = {rho:.2f} "
                                  f"over {len(cae)} CAEs"})
    else:
        claims.append({"claim": text, "verdict": "not testable here", "numbers": "fewer than 2 CAEs"})
    # (2) supervised on 5k labels beats the CAEs
    text = "(2) a ResNet supervised on 5k labels beats the CAEs at clustering and KNN"
    if sup_in and cae:
        held = [r for r in sup_in if beats(r, cae)]
        b = best_cae()
        claims.append({"claim": text, "verdict": "holds" if len(held) == len(sup_in) else "does not hold",
                       "numbers": "; ".join(f"{name(r)} " + ", ".join(
                           f"{k} {mean(r, k):.3f}" for k in SCORES) for r in sup_in)
                       + "; best CAE " + ", ".join(f"{k} {v:.3f}" for k, v in b.items())})
    else:
        claims.append({"claim": text, "verdict": "not testable here", "numbers": "no ResNet or CAE row"})
    # (3) a model trained on another domain still beats the CAEs
    text = "(3) a model trained on another domain still beats the CAEs"
    if other and cae:
        held = [r for r in other if beats(r, cae)]
        b = best_cae()
        claims.append({"claim": text, "verdict": "holds" if len(held) == len(other) else "does not hold",
                       "numbers": "; ".join(f"{name(r)} " + ", ".join(
                           f"{k} {mean(r, k):.3f}" for k in SCORES) for r in other)
                       + "; best CAE " + ", ".join(f"{k} {v:.3f}" for k, v in b.items())})
    else:
        claims.append({"claim": text, "verdict": "not testable here",
                       "numbers": "no cross-domain row or no CAE row"})
    # (4) bigger ResNets do better in-domain
    text = "(4) bigger ResNets do better in-domain (18 < 34 < 50)"
    order = [r for m in RESNETS for r in sup_in if r["model"] == m]
    if len(order) >= 2:
        ok = all(all(mean(b, k) > mean(a, k) for k in SCORES) for a, b in zip(order, order[1:]))
        claims.append({"claim": text, "verdict": "holds" if ok else "does not hold",
                       "numbers": "; ".join(f"{name(r)} NMI {mean(r, 'nmi'):.3f} KNN "
                                            f"{mean(r, 'knn_accuracy'):.3f}" for r in order)})
    else:
        claims.append({"claim": text, "verdict": "not testable here",
                       "numbers": f"{len(order)} ResNet size(s) run"})
    return claims


def _spearman(a: np.ndarray, b: np.ndarray) -> float:
    ra, rb = np.argsort(np.argsort(a)), np.argsort(np.argsort(b))
    if ra.std() == 0 or rb.std() == 0:
        return float("nan")
    return float(np.corrcoef(ra, rb)[0, 1])


def _cell(row: dict, k: str) -> str:
    v = row.get(k)
    return "n/a" if v is None else f"{v['mean']:.4f} ± {v['std']:.4f}"


def results_markdown(rows: list[dict], claims: list[dict], setting: dict) -> str:
    """Table 1 (in-domain) and Table 2 (other domain) with the seed's numbers beside ours."""
    lines = ["# S2: naive convolutional autoencoders vs supervised features", "",
             "Setting: " + ", ".join(f"{k} {v}" for k, v in setting.items()), "",
             "Scores on the test images: K-means (k = classes) pairwise F / BCubed F / NMI; KNN (k = 5, "
             "labeled train features -> test) accuracy; mean ± std over the seeds run (std 0 "
             "with one seed). Seed's numbers: STL-10 test, 8k images.", ""]
    head = ("| model | seeds | pairwise F | BCubed F | NMI | KNN acc | test MSE | seed paper "
            "(pF / bF / NMI / KNN) |")
    sep = "|---|---|---|---|---|---|---|---|"
    for title, pick in (("Table 1: in-domain (features of the dataset the model was trained on)",
                         lambda r: r["domain"] == "in" and r["model"] != "efficientnet_lite0"),
                        ("Table 2: another domain (EfficientNet-Lite0: ImageNet; ResNets with "
                         "--cross: trained on --supervised-dataset)",
                         lambda r: r["domain"] == "cross" or r["model"] == "efficientnet_lite0")):
        sel = sorted((r for r in rows if pick(r)), key=lambda r: MODELS.index(r["model"]))
        if not sel:
            continue
        lines += [f"## {title}", "", head, sep]
        for r in sel:
            paper = (" / ".join(f"{v:.4f}" for v in r["seed_paper"].values())
                     if r["seed_paper"] else "not in the paper")
            lines.append(f"| {LABELS[r['model']]} | {len(r['seeds'])} | "
                         + " | ".join(_cell(r, k) for k in SCORES)
                         + f" | {_cell(r, 'recon_mse') if 'recon_mse' in r else '-'} | {paper} |")
        lines.append("")
    lines += ["## The seed's claims here", ""]
    lines += [f"- **{c['verdict']}**: {c['claim']}. {c['numbers']}." for c in claims]
    return "\n".join(lines) + "\n"


def reproduce_figures(jobs: dict[str, S2Config], runs_dir: pathlib.Path, rows: list[dict],
                      fig: pathlib.Path, test_labels: np.ndarray, class_names) -> None:
    """Reconstructions (seed's Fig. 1), t-SNE panels (appendix Fig. 2/3), score bars."""
    from aeclust_jax import viz
    first = {}
    for name, cfg in jobs.items():
        if (runs_dir / name / "metrics.json").is_file() and not cfg.supervised_dataset:
            first.setdefault(cfg.model, runs_dir / name)
    recs = {m: np.load(p / "recon_samples.npz") for m, p in first.items()
            if (p / "recon_samples.npz").is_file()}
    if recs:
        originals = next(iter(recs.values()))["originals"] / 255.0
        viz.reconstruction_grid([originals] + [r["recon"] for r in recs.values()],
                                fig / "reconstructions.png",
                                row_names=["input"] + [LABELS[m] for m in recs],
                                title="Test images and their reconstructions (seed 0)")
    panels = {}
    by_model = {r["model"]: r for r in rows if r["domain"] == "in"}
    for m, p in first.items():
        if (p / "tsne.npy").is_file():
            r = runs.read_json(p / "metrics.json")
            panels[LABELS[m]] = (np.load(p / "tsne.npy"), test_labels, _short(r))
    if panels:
        viz.tsne_panels(panels, fig / "tsne.png", class_names=class_names,
                        title="t-SNE of the 128-d test features (seed 0)")
    if by_model:
        viz.grouped_bars({LABELS[m]: {k: (r[k]["mean"], r[k]["std"]) for k in SCORES}
                          for m, r in by_model.items()}, fig / "scores.png", ylabel="score (0-1)",
                         title="S2 scores per extractor (mean ± std over seeds)")


def reproduce_main(argv: Sequence[str]) -> int:
    args = reproduce_parser().parse_args(list(argv))
    if args.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {args.seeds}")
    if args.cross and not args.supervised_dataset:
        raise UsageError("--cross needs --supervised-dataset (the domain the ResNets train on)")
    base = load_config(S2Config, args.config, config_overrides(args, S2Config))
    base = dataclasses.replace(base, model=args.models[0]).validate()
    cross_opts = dict(supervised_dataset=args.supervised_dataset,
                      supervised_path=args.supervised_path,
                      supervised_per_class=args.supervised_per_class)
    jobs = planned_jobs(base, args.models, list(range(args.seeds)), args.cross, cross_opts)
    for cfg in jobs.values():
        cfg.validate()
    data = load_data(base)
    for cfg in jobs.values():
        check_data(cfg, data)
    out, runs_dir = pathlib.Path(args.out), pathlib.Path(args.runs)
    if base.feature_cache == "":
        base_cache = str(runs_dir / "feature_cache")
        jobs = {k: dataclasses.replace(c, feature_cache=base_cache) for k, c in jobs.items()}
    for name, cfg in jobs.items():
        d = runs_dir / name
        resume = d.is_dir() and any(d.iterdir())
        if args.report_only or (resume and runs.is_complete(d)):
            continue
        if base.progress:
            print(f"[s2] {name}", flush=True)
        run(cfg, d, resume=resume, data=data)
    rows = summarize(jobs, runs_dir)
    claims = check_claims(rows)
    setting = {"dataset": base.dataset + (f" ({pathlib.Path(base.path).name})" if base.path else ""),
               "unlabeled images": len(data.unlabeled), "labeled train": len(data.train_labels),
               "test": len(data.test_labels), "CAE epochs": base.epochs,
               "ResNet epochs": base.resnet_epochs, "seeds": args.seeds,
               "EfficientNet input": f"{base.effnet_size} px"}
    runs.make_dir(out / "figures")
    reproduce_figures(jobs, runs_dir, rows, out / "figures", data.test_labels, data.class_names)
    runs.write_json(out / "results.json", {"setting": setting, "rows": rows, "claims": claims,
                                           "base_config": to_dict(base),
                                           "runs": sorted(jobs), "scale": runs.SCALE})
    table = results_markdown(rows, claims, setting)
    runs.atomic_write_text(out / "results.md", table)
    print(table)
    print(f"wrote {out}")
    return 0


__all__ = ("S2Config", "S2Data", "MODELS", "load_data", "evaluate_features", "pca_reduce",
           "run", "train_main", "train_parser", "reproduce_main", "check_claims", "summarize")
