"""Depthwise convs (EfficientNet's MBConv) as shifted slices times per-channel weights.

XLA:CPU runs a grouped convolution with one channel per group 4-17x slower than k*k shifted
slices times per-channel weights, summed (pure elementwise ops that XLA fuses into one loop;
stride 2 = strided slices)."""

from __future__ import annotations

import jax
import jax.numpy as jnp

from aeclust_jax.models.layers.base import _tap, one_program, same_padding


@one_program("stride", "padding")
def depthwise_conv(x: jax.Array, kernel: jax.Array, stride: int = 1,
                   padding: str = "SAME") -> jax.Array:
    """Depthwise kxk correlation, no bias: x (N, H, W, C), kernel (k, k, 1, C) (flax's layout of
    ``nn.Conv(C, (k, k), feature_group_count=C)``) -> (N, ceil(H/s), ceil(W/s), C) for 'SAME'
    (TF rule), (N, (H-k)//s+1, (W-k)//s+1, C) for 'VALID'.

    Equals ``lax.conv_general_dilated(x, kernel, (s, s), padding, feature_group_count=C)`` up to
    float summation order, computed as the sum over the k*k taps of a shifted (strided) slice of
    the zero-padded input times that tap's per-channel weights. Gradients are plain autodiff
    (pad/slice transposes and elementwise products)."""
    kh, kw, one, c = kernel.shape
    if one != 1 or x.shape[-1] != c:
        raise ValueError(f"depthwise_conv: kernel (k, k, 1, C) with C = the input's channels, "
                         f"got kernel {kernel.shape} for input {x.shape}")
    _, h, w, _ = x.shape
    padding = padding.upper()
    if padding == "SAME":
        ph, pw = same_padding(h, kh, stride), same_padding(w, kw, stride)
    elif padding == "VALID":
        ph = pw = (0, 0)
    else:
        raise ValueError(f"depthwise_conv: padding 'SAME' or 'VALID', got {padding!r}")
    if any(ph) or any(pw):
        x = jnp.pad(x, ((0, 0), ph, pw, (0, 0)))
    ho = (x.shape[1] - kh) // stride + 1
    wo = (x.shape[2] - kw) // stride + 1
    y = None
    for i in range(kh):
        for j in range(kw):
            t = _tap(x, i, j, stride, ho, wo) * kernel[i, j, 0]
            y = t if y is None else y + t
    return y
