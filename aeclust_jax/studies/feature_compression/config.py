"""S5's config: ``FeatureCompressionConfig`` (one run, one seed; each field's help and choices
generate the command line), its checks, and ``SETTINGS`` (the settings of ``reproduce.py s5``).
"""

from __future__ import annotations

import dataclasses
import pathlib

from aeclust_jax.config import ConfigError, field
from aeclust_jax.models.feature_ae import PRECISIONS

BACKBONES = ("efficientnet_lite0", "vgg16_bn", "vgg16")
DEFAULT_LAYER = {"efficientnet_lite0": "features", "vgg16_bn": "features", "vgg16": "features"}
VGG_LAYERS = ("block1", "block2", "block3", "block4", "block5", "features")
METHODS = ("ae", "pca", "quant", "pool")


@dataclasses.dataclass(frozen=True)
class FeatureCompressionConfig:
    """One S5 run (one seed). Defaults: setting (a), EfficientNet-Lite0 at 224 px, 7x7x1280."""
    backbone: str = field("efficientnet_lite0", "the classification CNN", choices=BACKBONES)
    weights: str = field("imagenet", "imagenet (efficientnet_lite0's shipped weights, frozen; a head "
                                  "is trained on the map), train (a VGG trained from scratch on the "
                                  "training subset), or a torchvision VGG .pth (fine-tuned on it)")
    layer: str = field("", "the map to compress ('' = the backbone's last map: 'features'; VGG also "
                        "block1..block5, the last ReLU of a block)")
    dataset: str = field("image_folder", "dataset name (aeclust_jax.data)")
    path: str = field("", "image_folder: the folder or .zip/.tar archive of the images")
    image_size: int = field(224, "resize the images to S x S on the device (0: as stored)")
    train_per_class: int = field(300, "seeded class-balanced training subset, images per class")
    test_per_class: int = field(100, "seeded class-balanced test subset, images per class")
    subset_seed: int = field(0, "seed of the two subsets (and of a VGG's training: trained once)")
    classifier_epochs: int = field(30, "epochs of the head (efficientnet) or of the VGG training")
    classifier_lr: float = field(1e-3, "peak learning rate of the head / the VGG")
    classifier_optimizer: str = field("adam", "optimizer of the head / the VGG",
                                   choices=("sgd", "adam", "adamw"))
    classifier_batch_size: int = field(128, "batch size of the head / the VGG")
    widths: tuple = field((256, 128, 64, 32, 16), "AE bottleneck widths (code channels)")
    hidden: int = field(256, "AE width of the two 1x1 layers' middle (the seed: C/2)")
    kernel: int = field(3, "AE k x k VALID conv (7x7 -> 5x5 for k = 3)")
    precisions: tuple = field(("float32", "float16", "int8", "int4"), "code precisions")
    ae_epochs: int = field(10, "AE epochs (the seed's 10)")
    ae_lr: float = field(1e-4, "AE Adam learning rate (the seed's 1e-4)")
    ae_batch_size: int = field(4, "AE batch size (the seed's 4)")
    pool_sizes: tuple = field((), "average-pooling baseline grid sizes (empty: the AE code's grid)")
    seed: int = field(0, "seed of the AE inits and of the efficientnet head")
    feature_cache: str = field("", "folder of the cached feature maps ('' = <out>/../features)")
    eval_batch_size: int = field(250, "batch size of extraction and evaluation")
    progress: bool = field(True, "progress bars and stage lines")

    def resolved_layer(self) -> str:
        return self.layer or DEFAULT_LAYER[self.backbone]

    def validate(self) -> "FeatureCompressionConfig":
        from aeclust_jax.data import DATASETS
        if self.backbone not in BACKBONES:
            raise ConfigError(f"unknown backbone {self.backbone!r}; choices: {', '.join(BACKBONES)}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choices: {', '.join(DATASETS)}")
        if self.dataset == "image_folder" and not self.path:
            raise ConfigError("dataset image_folder needs --path (a folder or .zip/.tar of images)")
        if self.backbone == "efficientnet_lite0":
            if self.weights != "imagenet":
                raise ConfigError("backbone efficientnet_lite0 takes --weights imagenet (its shipped "
                                  "weights, frozen)")
            if self.resolved_layer() != "features":
                raise ConfigError("efficientnet_lite0: --layer must be 'features' (the last map, "
                                  "before its own pooled head)")
        else:
            if self.weights == "imagenet":
                raise ConfigError(f"no ImageNet weights ship for {self.backbone}; --weights train, "
                                  "or a torchvision .pth file")
            if self.weights != "train" and not pathlib.Path(self.weights).expanduser().is_file():
                raise ConfigError(f"--weights {self.weights}: no such file")
            if self.resolved_layer() not in VGG_LAYERS:
                raise ConfigError(f"unknown layer {self.layer!r} of {self.backbone}; choices: "
                                  f"{', '.join(VGG_LAYERS)}")
        if not self.widths or any(not isinstance(w, int) or w < 1 for w in self.widths):
            raise ConfigError(f"widths must be positive integers, got {list(self.widths)}")
        bad = [p for p in self.precisions if p not in PRECISIONS]
        if bad or not self.precisions:
            raise ConfigError(f"unknown precision(s) {bad}; choices: {', '.join(PRECISIONS)}")
        if any(not isinstance(s, int) or s < 1 for s in self.pool_sizes):
            raise ConfigError(f"pool_sizes must be positive integers, got {list(self.pool_sizes)}")
        for name in ("train_per_class", "test_per_class", "classifier_epochs", "classifier_batch_size",
                     "hidden", "kernel", "ae_epochs", "ae_batch_size", "eval_batch_size"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        if self.image_size < 0:
            raise ConfigError(f"image_size must be >= 0, got {self.image_size}")
        for name in ("classifier_lr", "ae_lr"):
            if not getattr(self, name) > 0:
                raise ConfigError(f"{name} must be > 0, got {getattr(self, name)}")
        return self


# ----------------------------------------------------------------------------- presets

# The settings of `reproduce.py s5`: (a), (b) here; the seed's own (needs a torchvision .pth).
SETTINGS = {
    "a": dict(backbone="efficientnet_lite0", weights="imagenet", layer="features", image_size=224,
              train_per_class=300, test_per_class=100, classifier_epochs=30, classifier_lr=1e-3,
              classifier_optimizer="adam", classifier_batch_size=128, widths=(128, 64, 32, 16),
              hidden=256, pool_sizes=(5, 3, 1)),
    "b": dict(backbone="vgg16_bn", weights="train", layer="block4", image_size=0,
              train_per_class=100, test_per_class=50, classifier_epochs=2, classifier_lr=3e-4,
              classifier_optimizer="adam", classifier_batch_size=50, widths=(256, 64, 16),
              hidden=256, pool_sizes=(2, 1)),
    # the seed: VGG16 (ImageNet weights from torchvision, fine-tuned: Adam 1e-5, 100 epochs,
    # batch 4) on CIFAR-10 at 224 px, 12500 train / 2500 test images, the 512x7x7 map.
    "paper": dict(backbone="vgg16", weights="", layer="features", image_size=224,
                  train_per_class=1250, test_per_class=250, classifier_epochs=100,
                  classifier_lr=1e-5, classifier_optimizer="adam", classifier_batch_size=4,
                  widths=(128, 64, 32, 16), hidden=256, pool_sizes=(5, 3, 1)),
}
SETTING_TITLE = {
    "a": "(a) EfficientNet-Lite0, shipped ImageNet weights, frozen, 224 px, 7x7x1280 map",
    "b": "(b) VGG16-BN trained from scratch here, 32 px, block-4 map 4x4x512",
    "paper": "the seed's setting: VGG16 (torchvision ImageNet weights, fine-tuned), 224 px, 7x7x512"}
