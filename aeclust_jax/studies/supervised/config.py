"""The supervised study's config: ``SupervisedConfig`` (one run; each field's help and choices
generate the command line) and its checks.
"""

from __future__ import annotations

import dataclasses
import pathlib

from aeclust_jax.config import ConfigError, field
from aeclust_jax.train import supervised as sup

MODELS = ("resnet18", "resnet34", "resnet50", "vgg16", "vgg16_bn", "efficientnet_lite0")
STEMS = ("auto", "small", "imagenet")


@dataclasses.dataclass(frozen=True)
class SupervisedConfig:
    """One supervised run. Defaults: the usual CIFAR recipe (SGD 0.1, momentum 0.9, weight decay
    5e-4, cosine, crop + flip)."""
    model: str = field("resnet18", "backbone", choices=MODELS)
    dataset: str = field("image_folder", "dataset name (aeclust_jax.data)")
    path: str = field("", "image_folder: the folder or .zip/.tar archive of the images")
    dataset_options: dict = field(dict, "more options of the dataset builder, e.g. channels=3")
    image_size: int = field(0, "resize the images to S x S on the device (0: as stored)")
    stem: str = field("auto", "ResNet stem: small (3x3, no max pool; for inputs <= 64 px), imagenet, "
                           "or auto (small below 64 px)", choices=STEMS)
    embed_dim: int = field(0, "ResNet/VGG: a Dense embedding of this width before the classifier "
                           "(S2's 128-d features; 0: none)")
    pretrained: str = field("", "start from weights: a torchvision .pth (resnet*, vgg*), or 'imagenet' "
                             "(efficientnet_lite0's shipped weights); the head is new")
    backbone_lr_scale: float = field(1.0, "learning rate of the pretrained layers relative to the head "
                                       "(0 freezes them)")
    epochs: int = field(10, "training epochs")
    batch_size: int = field(128, "global batch size (a multiple of the devices)")
    optimizer: str = field("sgd", "optimizer", choices=sup.CLASSIFIER_OPTIMIZERS)
    lr: float = field(0.1, "peak learning rate")
    momentum: float = field(0.9, "sgd momentum")
    weight_decay: float = field(5e-4, "weight decay on the kernels")
    schedule: str = field("cosine", "learning-rate schedule", choices=sup.SCHEDULES)
    warmup_epochs: int = field(0, "linear warmup epochs (cosine, step, constant)")
    label_smoothing: float = field(0.0, "label smoothing of the cross-entropy")
    augment: bool = field(True, "random crop (zero padding) + horizontal flip on the device")
    crop_pad: int = field(4, "padding of the random crop, pixels (at the stored size)")
    train_per_class: int = field(0, "a seeded class-balanced subset of the training split: this "
                                 "many per class (S2: 500 = 5k labels; 0: all)")
    train_limit: int = field(0, "the first N training images (0: all)")
    test_per_class: int = field(0, "a seeded class-balanced subset of the test split: this many "
                                   "per class (0: all)")
    test_limit: int = field(0, "the first N test images in stored order (0: all; an archive sorted "
                               "by class gives few classes: prefer test_per_class)")
    seed: int = field(0, "seed of the init, the subset, the shuffling and the augmentation")
    eval_every: int = field(1, "test accuracy every N epochs (and after the last)")
    eval_batch_size: int = field(500, "batch size of evaluation")
    checkpoint_every: int = field(1, "checkpoint every N epochs")
    keep_checkpoints: int = field(2, "checkpoints kept")
    progress: bool = field(True, "progress bars and stage lines")

    def validate(self) -> "SupervisedConfig":
        from aeclust_jax.data import DATASETS
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; choices: {', '.join(MODELS)}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choices: {', '.join(DATASETS)}")
        if self.dataset == "image_folder" and not self.path:
            raise ConfigError("dataset image_folder needs --path (a folder or .zip/.tar of images)")
        for name, choices in (("stem", STEMS), ("optimizer", sup.CLASSIFIER_OPTIMIZERS),
                              ("schedule", sup.SCHEDULES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; choices: "
                                  f"{', '.join(choices)}")
        for name in ("epochs", "batch_size", "eval_every", "eval_batch_size", "checkpoint_every",
                     "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("image_size", "embed_dim", "warmup_epochs", "crop_pad", "train_per_class",
                     "train_limit", "test_per_class", "test_limit", "weight_decay", "backbone_lr_scale", "momentum"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs:
            raise ConfigError(f"warmup_epochs ({self.warmup_epochs}) must be < epochs ({self.epochs})")
        if self.schedule == "onecycle" and self.warmup_epochs:
            raise ConfigError("warmup_epochs does not apply to schedule onecycle (it warms up itself)")
        if self.pretrained == "imagenet" and self.model != "efficientnet_lite0":
            raise ConfigError(f"pretrained 'imagenet' ships only for efficientnet_lite0; for "
                              f"{self.model} pass a torchvision .pth file")
        if self.pretrained and self.pretrained != "imagenet":
            if self.model == "efficientnet_lite0":
                raise ConfigError("efficientnet_lite0 takes --pretrained imagenet (its shipped weights)")
            if not pathlib.Path(self.pretrained).expanduser().is_file():
                raise ConfigError(f"--pretrained {self.pretrained}: no such file")
        if self.model == "efficientnet_lite0" and self.embed_dim:
            raise ConfigError("embed_dim applies to resnet* and vgg*, not efficientnet_lite0")
        return self
