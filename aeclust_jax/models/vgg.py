"""VGG-16 and VGG-16-BN in Flax Linen with torchvision's exact topology (NHWC inside).

    model = get_model("vgg16_bn", num_classes=0)                       # fc7 features (N, 4096)
    _, state = model.apply(variables, x, train=False, mutable="intermediates")
    state["intermediates"]["features"][0]                               # (N, 7, 7, 512) at 224 px

torchvision's VGG (configuration D): 13 3x3 convs pad 1 with ReLU (``_bn``: conv, BN, ReLU) in
blocks of 64 x2, 128 x2, 256 x3, 512 x3, 512 x3, each block followed by a 2x2/2 max pool;
adaptive average pooling to 7x7 (torch's bins: start floor(i*n/7), end ceil((i+1)*n/7), so any
input size from 32 px up works); classifier Linear 25088 -> 4096, ReLU, Dropout 0.5, Linear
4096 -> 4096, ReLU, Dropout 0.5, Linear 4096 -> num_classes. Our flatten is HWC (torch: CHW);
``import_torch`` reorders the first classifier layer. Init as torchvision: convs He normal (fan
out), bias 0; Linear normal(0, 0.01), bias 0. ``train=True`` needs a 'dropout' rng.

Sown into 'intermediates': 'block1'..'block5' the last ReLU of each block, before its max pool
('block5' (N, H/16, W/16, 512)); 'features' (N, H/32, W/32, 512) after the final max pool
(torchvision's ``model.features(x)``, 7x7 at 224 px); 'avgpool' (N, 7, 7, 512); 'fc6', 'fc7'
(N, 4096) after their ReLU; 'embedding' (N, embed_dim) when there is one.
``model.apply(variables, m, start="block4")`` runs the rest of the network on a map ``m`` of the
shape sown as 'block4' (or any other sown map before 'fc6'): S5 cuts VGG there. Submodules are named like
torchvision's with '_' for '.' (``features_0`` is ``features.0``, ``classifier_6``).
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from aeclust_jax.models.layers import Conv, max_pool_2x2
from aeclust_jax.models.resnet import IMAGENET_MEAN, IMAGENET_STD, batch_norm, conv_init

VGG16_CFG: tuple[int | str, ...] = (64, 64, "M", 128, 128, "M", 256, 256, 256, "M",
                                    512, 512, 512, "M", 512, 512, 512, "M")
dense_init = nn.initializers.normal(0.01)


def _bins(n: int, out: int) -> np.ndarray:
    """(out, n) averaging matrix of torch's adaptive average pooling along one axis."""
    m = np.zeros((out, n), np.float32)
    for i in range(out):
        a, b = (i * n) // out, -(-((i + 1) * n) // out)
        m[i, a:b] = 1.0 / (b - a)
    return m


def adaptive_avg_pool(x, size: tuple[int, int]):
    """torch's AdaptiveAvgPool2d: (N, H, W, C) -> (N, size[0], size[1], C)."""
    if x.shape[1:3] == tuple(size):
        return x
    ph, pw = _bins(x.shape[1], size[0]), _bins(x.shape[2], size[1])
    return jnp.einsum("ih,nhwc,jw->nijc", ph, x, pw)


class VGG(nn.Module):
    """(N, H, W, 3) normalised float32, H, W >= 32 -> logits (N, num_classes); with
    ``num_classes=0`` the fc7 features (N, 4096), or the embedding (N, embed_dim) when
    ``embed_dim`` is set (a Dense of that width, no activation, between fc7 and classifier)."""
    cfg: Sequence[int | str] = VGG16_CFG
    batch_norm: bool = False
    num_classes: int = 1000
    embed_dim: int | None = None
    dropout: float = 0.5
    fc_features: int = 4096           # width of fc6 and fc7 (torchvision: 4096; tests: tiny)
    input_mean: ClassVar[tuple[float, ...]] = IMAGENET_MEAN
    input_std: ClassVar[tuple[float, ...]] = IMAGENET_STD

    @nn.compact
    def __call__(self, x, train: bool = False, start: str | None = None):
        """``start``: None (x is the image), or the name of a sown map ('block1'..'block5',
        'features', 'avgpool') that x is: the layers up to it are skipped and the network runs
        on from there (S5's classifier on a reconstructed intermediate map). The parameters are
        the same as the whole network's."""
        blocks = sum(v == "M" for v in self.cfg)
        starts = tuple(f"block{b}" for b in range(1, blocks + 1)) + ("features", "avgpool")
        if start is not None and start not in starts:
            raise ValueError(f"unknown start {start!r}; choices: {', '.join(starts)}")
        skip = starts.index(start) + 1 if start is not None else 0   # blocks (or more) to skip
        i, block = 0, 1
        y = x
        for v in self.cfg:
            if v == "M":
                if block > skip:
                    self.sow("intermediates", f"block{block}", y)
                if block >= skip:
                    y = _max_pool(y)
                i, block = i + 1, block + 1
                continue
            if block > skip:
                y = Conv(v, (3, 3), padding=((1, 1), (1, 1)), kernel_init=conv_init,
                         name=f"features_{i}")(y)
                if self.batch_norm:
                    y = batch_norm(train, f"features_{i + 1}")(y)
                y = nn.relu(y)
            i += 3 if self.batch_norm else 2
        if start != "avgpool":
            if start != "features":
                self.sow("intermediates", "features", y)
            y = adaptive_avg_pool(y, (7, 7))
            self.sow("intermediates", "avgpool", y)
        y = y.reshape(y.shape[0], -1)                        # HWC flatten (torch: CHW)
        for k, name in ((0, "fc6"), (3, "fc7")):
            y = nn.relu(nn.Dense(self.fc_features, kernel_init=dense_init,
                                 name=f"classifier_{k}")(y))
            self.sow("intermediates", name, y)
            y = nn.Dropout(self.dropout, deterministic=not train)(y)
        if self.embed_dim:
            y = nn.Dense(self.embed_dim, kernel_init=dense_init, name="embed")(y)
            self.sow("intermediates", "embedding", y)
        if not self.num_classes:
            return y
        return nn.Dense(self.num_classes, kernel_init=dense_init, name="classifier_6")(y)


def _max_pool(y):
    """torchvision's MaxPool2d(2, 2) (floor): on even sizes ``layers.max_pool_2x2`` (same values
    and gradient, without XLA:CPU's slow select_and_scatter), else flax's max_pool."""
    if y.shape[1] % 2 == 0 and y.shape[2] % 2 == 0:
        return max_pool_2x2(y)
    return nn.max_pool(y, (2, 2), (2, 2))


def vgg16(num_classes: int = 1000, **kwargs) -> VGG:
    """VGG-16 (configuration D); 138,357,544 parameters with 1000 classes."""
    return VGG(num_classes=num_classes, **kwargs)


def vgg16_bn(num_classes: int = 1000, **kwargs) -> VGG:
    """VGG-16 with batch norm after every conv; 138,365,992 parameters with 1000 classes."""
    return VGG(batch_norm=True, num_classes=num_classes, **kwargs)


__all__ = ("VGG", "vgg16", "vgg16_bn", "adaptive_avg_pool", "VGG16_CFG")
