"""ResNet-18/34/50 in Flax Linen with torchvision's exact topology (NHWC inside).

    model = get_model("resnet18", num_classes=10, small_stem=True)   # 32-px inputs
    logits = model.apply(variables, x, train=False)                  # x (N, H, W, 3), normalised
    _, state = model.apply(variables, x, train=False, mutable="intermediates")
    state["intermediates"]["layer4"][0]                               # (N, H/32, W/32, 512)

torchvision's ResNet (v1.5: the stride of a bottleneck sits on its 3x3 conv): conv1 7x7/2 pad 3,
bn1, ReLU, max pool 3x3/2 pad 1, layer1..layer4 (strides 1, 2, 2, 2), global average pool, fc.
``small_stem=True``: conv1 is 3x3/1 pad 1 and there is no max pool (the CIFAR variant), so a 32-px
input gives 4x4 maps at layer4. Batch norm: eps 1e-5, torch momentum 0.1 (flax 0.9); its running
statistics live in the 'batch_stats' collection (``train=True`` uses batch statistics and needs
``mutable=["batch_stats"]``). Init as torchvision's: convs He normal (fan out), Linear weights
uniform +-1/sqrt(fan_in) (biases 0 here).

Sown into 'intermediates' (free unless 'intermediates' is mutable), M = 64 for basic blocks and
256 for bottlenecks: 'stem' (N, H/4, W/4, 64) after the max pool (H, W with ``small_stem``),
'layer1' (.., M), 'layer2' (H/8, 2M), 'layer3' (H/16, 4M), 'layer4' (H/32, 8M), 'pooled' (N, 8M),
'embedding' (N, embed_dim) when there is one. Submodules are named like torchvision's modules with '_'
for '.' (``layer1_0/conv1`` is ``layer1.0.conv1``), which ``import_torch`` relies on.
"""

from __future__ import annotations

from typing import ClassVar, Sequence

import flax.linen as nn
import jax.numpy as jnp

from .layers import BatchNorm, Conv

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

# torchvision: kaiming_normal_(mode="fan_out", nonlinearity="relu")
conv_init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
# torch's Linear weight: uniform(-1/sqrt(fan_in), 1/sqrt(fan_in)) (its bias too; ours is 0)
dense_init = nn.initializers.variance_scaling(1.0 / 3, "fan_in", "uniform")


def conv(features: int, kernel: int, stride: int = 1, name: str | None = None) -> Conv:
    """torchvision's conv: k x k, padding k // 2, no bias. ``layers.Conv``: nn.Conv's parameter
    (``kernel`` HWIO, same init) and values; its kernel gradient is a batch-chunked GEMM, 1-13x
    faster than XLA:CPU's conv-based one at these shapes (see ``layers.conv2d``)."""
    p = kernel // 2
    return Conv(features, (kernel, kernel), (stride, stride), padding=((p, p), (p, p)),
                use_bias=False, kernel_init=conv_init, name=name)


def batch_norm(train: bool, name: str) -> BatchNorm:
    """torch BatchNorm2d defaults: eps 1e-5, momentum 0.1 (flax: 0.9). ``layers.BatchNorm``:
    nn.BatchNorm's variables and values, its training gradient in two passes (2x faster)."""
    return BatchNorm(use_running_average=not train, momentum=0.9, epsilon=1e-5, name=name)


class BasicBlock(nn.Module):
    """3x3 conv (stride), BN, ReLU, 3x3 conv, BN, + shortcut, ReLU.
    (N, H, W, Cin) -> (N, H/s, W/s, planes)."""
    planes: int
    stride: int = 1
    expansion: ClassVar[int] = 1

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.relu(batch_norm(train, "bn1")(conv(self.planes, 3, self.stride, "conv1")(x)))
        y = batch_norm(train, "bn2")(conv(self.planes, 3, 1, "conv2")(y))
        if self.stride != 1 or x.shape[-1] != self.planes:
            x = batch_norm(train, "downsample_1")(conv(self.planes, 1, self.stride,
                                                       "downsample_0")(x))
        return nn.relu(y + x)


class Bottleneck(nn.Module):
    """1x1 conv, BN, ReLU, 3x3 conv (stride), BN, ReLU, 1x1 conv to 4 * planes, BN, + shortcut,
    ReLU. (N, H, W, Cin) -> (N, H/s, W/s, 4 * planes)."""
    planes: int
    stride: int = 1
    expansion: ClassVar[int] = 4

    @nn.compact
    def __call__(self, x, train: bool = False):
        out = self.planes * self.expansion
        y = nn.relu(batch_norm(train, "bn1")(conv(self.planes, 1, 1, "conv1")(x)))
        y = nn.relu(batch_norm(train, "bn2")(conv(self.planes, 3, self.stride, "conv2")(y)))
        y = batch_norm(train, "bn3")(conv(out, 1, 1, "conv3")(y))
        if self.stride != 1 or x.shape[-1] != out:
            x = batch_norm(train, "downsample_1")(conv(out, 1, self.stride, "downsample_0")(x))
        return nn.relu(y + x)


class ResNet(nn.Module):
    """(N, H, W, 3) normalised float32 -> logits (N, num_classes); with ``num_classes=0`` the
    pooled features (N, 8M), or the embedding (N, embed_dim) when ``embed_dim`` is set.
    ``embed_dim``: a Dense embedding of that width (no activation) between pool and classifier."""
    block: type[nn.Module]
    stage_sizes: Sequence[int]
    num_classes: int = 1000
    embed_dim: int | None = None
    small_stem: bool = False
    input_mean: ClassVar[tuple[float, ...]] = IMAGENET_MEAN
    input_std: ClassVar[tuple[float, ...]] = IMAGENET_STD

    @nn.compact
    def __call__(self, x, train: bool = False):
        if self.small_stem:
            y = nn.relu(batch_norm(train, "bn1")(conv(64, 3, 1, "conv1")(x)))
        else:
            y = nn.relu(batch_norm(train, "bn1")(conv(64, 7, 2, "conv1")(x)))
            y = nn.max_pool(y, (3, 3), (2, 2), padding=((1, 1), (1, 1)))
        self.sow("intermediates", "stem", y)
        for i, blocks in enumerate(self.stage_sizes):
            for j in range(blocks):
                stride = 2 if i > 0 and j == 0 else 1
                y = self.block(64 * 2 ** i, stride, name=f"layer{i + 1}_{j}")(y, train)
            self.sow("intermediates", f"layer{i + 1}", y)
        y = jnp.mean(y, axis=(1, 2))
        self.sow("intermediates", "pooled", y)
        if self.embed_dim:
            y = nn.Dense(self.embed_dim, kernel_init=dense_init, name="embed")(y)
            self.sow("intermediates", "embedding", y)
        if not self.num_classes:
            return y
        return nn.Dense(self.num_classes, kernel_init=dense_init, name="fc")(y)


def resnet18(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-18: basic blocks (2, 2, 2, 2); 11,689,512 parameters with 1000 classes."""
    return ResNet(BasicBlock, (2, 2, 2, 2), num_classes=num_classes, **kwargs)


def resnet34(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-34: basic blocks (3, 4, 6, 3); 21,797,672 parameters with 1000 classes."""
    return ResNet(BasicBlock, (3, 4, 6, 3), num_classes=num_classes, **kwargs)


def resnet50(num_classes: int = 1000, **kwargs) -> ResNet:
    """ResNet-50: bottlenecks (3, 4, 6, 3); 25,557,032 parameters with 1000 classes."""
    return ResNet(Bottleneck, (3, 4, 6, 3), num_classes=num_classes, **kwargs)


__all__ = ("ResNet", "BasicBlock", "Bottleneck", "resnet18", "resnet34", "resnet50")
