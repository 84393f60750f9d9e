"""S2's config: ``S2Config`` (one extractor, one seed; each field's help and choices generate
the command line), its checks, and ``pretrained_file`` (the torchvision weights of a ResNet row).
"""

from __future__ import annotations

import dataclasses
import pathlib

from aeclust_jax.config import ConfigError, field
from aeclust_jax.models.cae import CAE_MODELS

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
    n_clusters: int = field(10, "K of K-means")
    knn_k: int = field(5, "K of the KNN classifier")
    kmeans_n_init: int = field(10, "K-means restarts (best inertia)")
    tsne: bool = field(True, "t-SNE figure of the test features")
    feature_cache: str = field("", "folder caching extracted backbone features (empty: none)")
    seed: int = field(0, "seed of the init, the unlabeled subset, shuffling, K-means and t-SNE")
    eval_batch_size: int = field(500, "batch size of feature extraction")
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
        for name in ("epochs", "batch_size", "train_per_class", "eval_batch_size", "n_clusters", "knn_k",
                     "kmeans_n_init", "checkpoint_every", "effnet_size", "resnet_epochs"):
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
