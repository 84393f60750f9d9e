"""Flax modules with nn.Conv's / nn.ConvTranspose's parameters, computed by this package's convs."""

from __future__ import annotations

from typing import Callable

import flax.linen as nn
from flax.linen.dtypes import promote_dtype
import jax
import jax.numpy as jnp

from aeclust_jax.models.layers.base import cpu_kernels
from aeclust_jax.models.layers.convolution import conv, conv2d, conv_transpose
from aeclust_jax.models.layers.depthwise import depthwise_conv
from aeclust_jax.models.layers.pooling import max_pool_2x2
from aeclust_jax.models.layers.upsample import _PADS, conv3x3, upsample_conv


class DepthwiseConv(nn.Module):
    """``nn.Conv(C, (k, k), (s, s), padding, feature_group_count=C, use_bias=False)`` with the
    same parameter (``kernel`` (k, k, 1, C), lecun_normal) computed by ``depthwise_conv``:
    (N, H, W, C) -> (N, ceil(H/s), ceil(W/s), C) with 'SAME'."""
    kernel_size: int
    stride: int = 1
    padding: str = "SAME"

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        k = self.kernel_size
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (k, k, 1, x.shape[-1]),
                            jnp.float32)
        x, kernel = promote_dtype(x, kernel)
        return depthwise_conv(x, kernel, self.stride, self.padding)


class Conv(nn.Module):
    """``nn.Conv(features, kernel_size, strides, padding, use_bias, kernel_init)`` for NHWC
    inputs with explicit integer padding, computed by ``conv2d`` (GEMM gradients) on XLA:CPU and
    by XLA's conv elsewhere (``cpu_kernels()``); an unpadded 1x1 kernel is ``pointwise_conv``
    (a matmul) everywhere. Same
    parameters, names, shapes and init as nn.Conv (``kernel`` (kh, kw, Cin, features), ``bias``
    (features,) zeros when use_bias), so checkpoints and weight imports are shared."""
    features: int
    kernel_size: tuple[int, int]
    strides: tuple[int, int] = (1, 1)
    padding: tuple[tuple[int, int], tuple[int, int]] = ((0, 0), (0, 0))
    use_bias: bool = True
    kernel_init: Callable = nn.initializers.lecun_normal()
    bias_init: Callable = nn.initializers.zeros_init()

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        x, kernel, bias, stride = _conv_params(self, x)
        y = self._apply(x, kernel, stride)
        return y if bias is None else y + bias

    def _apply(self, x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
        return conv(x, kernel, stride, self.padding)


def _conv_params(module: nn.Module, x: jax.Array) -> tuple:
    """nn.Conv's parameters of a ``Conv``-like module for input x (N, H, W, Cin): (x, kernel
    (kh, kw, Cin, features), bias (features,) or None, stride), promoted to one dtype."""
    kh, kw = module.kernel_size
    sh, sw = module.strides
    if sh != sw:
        raise ValueError(f"{type(module).__name__}: equal strides only, got {module.strides}")
    kernel = module.param("kernel", module.kernel_init, (kh, kw, x.shape[-1], module.features),
                          jnp.float32)
    bias = (module.param("bias", module.bias_init, (module.features,), jnp.float32)
            if module.use_bias else None)
    x, kernel, bias = promote_dtype(x, kernel, bias)
    return x, kernel, bias, sh


class ConvTranspose(Conv):
    """``nn.ConvTranspose(features, kernel_size, (s, s), padding='SAME')`` with the same
    parameters (``kernel`` (kh, kw, Cin, features) lecun_normal, ``bias`` zeros), computed by
    ``conv_transpose``: (N, h, w, Cin) -> (N, s*h, s*w, features). ``padding`` is unused
    ('SAME')."""

    def _apply(self, x: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
        return conv_transpose(x, kernel, stride)


class Conv3x3(nn.Module):
    """A 3x3 conv with nn.Conv's parameters (kernel (3,3,Cin,Cout) lecun_normal, bias zeros) that
    can read its input as if nearest-upsampled x2: ``Conv3x3(8)(x, upsampled=True)`` ==
    ``nn.Conv(8, (3, 3))(upsample x2 of x)``, computed by ``upsample_conv``. padding 'FULL' ==
    ``nn.ConvTranspose(f, (3, 3), padding='VALID')`` (same parameters)."""
    features: int
    padding: str = "SAME"

    @nn.compact
    def __call__(self, x: jax.Array, upsampled: bool = False, pooled: bool = False) -> jax.Array:
        """x (N, H, W, Cin) -> (N, H', W', features); ``pooled`` returns max_pool_2x2 of the
        conv (the bias is added after the pool: same values, 1/4 of the adds)."""
        kernel = self.param("kernel", nn.initializers.lecun_normal(),
                            (3, 3, x.shape[-1], self.features), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        if upsampled:
            y = upsample_conv(x, kernel, None, self.padding)
        elif x.shape[-1] == 1 and cpu_kernels():   # image input: kernel gradient by conv2d
            y = conv2d(x, kernel, 1, _PADS[self.padding])
        else:
            y = conv3x3(x, kernel, self.padding)
        return (max_pool_2x2(y) if pooled else y) + bias
