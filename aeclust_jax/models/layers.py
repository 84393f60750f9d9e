"""Fast exact building blocks for the small conv nets of the studies (pure functions + one module).

    y = upsample_conv(x, kernel, bias, "SAME")   # == conv3x3(nearest_up2(x)), x (N, H, W, Cin)
    y = max_pool_2x2(x)                          # == nn.max_pool(x, (2, 2), (2, 2), "SAME")
    y = depthwise_conv(x, kernel, stride)        # == lax grouped conv, feature_group_count=C

Why (benchmarks/bench_train_step.py, 2-core CPU): in the S1 decoders most time went to 3x3 convs
on nearest-upsampled maps (28x28x16 -> 1 alone was a quarter of the step: Eigen's conv is poor with
one output channel, and the upsampled map and its gradient are 4x the data). A 3x3 conv of a x2
nearest-upsampled map is exactly four 3x3 convs of the small map ("phases", one per output pixel
parity) whose kernels are sums of the original taps; ``upsample_conv`` runs them as one conv with
4*Cout channels and a depth-to-space shuffle. Same function, same parameters, 1/4 of the pixels.

Depthwise convs (EfficientNet's MBConv): XLA:CPU runs a grouped convolution with one channel per
group 4-17x slower than k*k shifted slices times per-channel weights, summed (pure elementwise
ops that XLA fuses into one loop; stride 2 = strided slices); see ``depthwise_conv``.
"""

from __future__ import annotations

import functools

import flax.linen as nn
from flax.linen.dtypes import promote_dtype
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


# first row of the (virtually) upsampled map read by output row 0, per padding
_FIRST_ROW = {"SAME": -1, "VALID": 0, "FULL": -2}
_PADS = {"SAME": ((1, 1), (1, 1)), "VALID": ((0, 0), (0, 0)), "FULL": ((2, 2), (2, 2))}


def _conv(x: jax.Array, kernel: jax.Array, pads: tuple) -> jax.Array:
    """Stride-1 correlation, NHWC x HWIO, explicit ((top, bottom), (left, right)) zero padding."""
    return lax.conv_general_dilated(x, kernel, (1, 1), pads, dimension_numbers=_DN)


def conv3x3(x: jax.Array, kernel: jax.Array, padding: str) -> jax.Array:
    """Plain 3x3 correlation, NHWC x HWIO. 'FULL' (pad 2) is flax's stride-1 'VALID'
    ConvTranspose with the same kernel: (N, H, W, Cin) -> (N, H+2, W+2, Cout)."""
    return _conv(x, kernel, _PADS[padding])


def _phase_taps(padding: str) -> tuple[np.ndarray, tuple[int, int]]:
    """M (2, K', 3) 0/1 with M[p, d, t] = 1 when tap t of a 3-tap filter over an x2-upsampled axis
    reads, for output parity p, the small-map row a + d_min + d; and the small map's (low, high)
    zero padding that gives the right number of outputs (SAME H, VALID H-1, FULL H+1 per parity)."""
    lo = _FIRST_ROW[padding]
    d_min, d_max = lo // 2, (1 + lo + 2) // 2
    m = np.zeros((2, d_max - d_min + 1, 3), np.float32)
    for p in range(2):
        for t in range(3):
            m[p, (p + lo + t) // 2 - d_min, t] = 1.0     # upsampled row 2a+p+lo+t = small row a+d
    extra = {"SAME": 0, "VALID": -1, "FULL": 1}[padding]  # outputs per parity: H + extra
    return m, (-d_min, d_max + extra)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _conv_dot_wgrad(x: jax.Array, kernel: jax.Array, pads: tuple) -> jax.Array:
    """lax conv (NHWC x HWIO, explicit pads) whose kernel gradient is one einsum over stacked
    shifted slices of x. XLA CPU computes the kernel gradient of these 2-tap phase convs (output
    larger than the kernel's support, Cout = 4 * features) as a 7x7-window convolution, 4-5x
    slower (measured: 3.4 vs 0.7 ms for the S1 skip branch at batch 128)."""
    return _conv(x, kernel, pads)


def _conv_dot_wgrad_fwd(x, kernel, pads):
    return _conv_dot_wgrad(x, kernel, pads), (x, kernel)


def _conv_dot_wgrad_bwd(pads, res, ct):
    x, kernel = res
    # the conv is linear in x: transpose it (no recomputation of the forward pass)
    x_transpose = jax.linear_transpose(lambda t: _conv(t, kernel, pads), x)
    kh, kw, cin, _ = kernel.shape
    ho, wo = ct.shape[1:3]
    xp = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
    if cin == 1:   # taps first: (T, N, H, W) . (N, H, W, Cout), both contractions contiguous
        taps = jnp.stack([xp[:, i:i + ho, j:j + wo, 0] for i in range(kh) for j in range(kw)])
        g_kernel = jnp.einsum("tbhw,bhwo->to", taps, ct).reshape(kernel.shape)
    else:
        taps = jnp.stack([xp[:, i:i + ho, j:j + wo, :] for i in range(kh) for j in range(kw)], 3)
        g_kernel = jnp.einsum("bhwtc,bhwo->tco", taps, ct).reshape(kernel.shape)
    return x_transpose(ct)[0], g_kernel


_conv_dot_wgrad.defvjp(_conv_dot_wgrad_fwd, _conv_dot_wgrad_bwd)


def upsample_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, padding: str) -> jax.Array:
    """conv3x3(nearest_upsample_x2(x)) without materialising the upsampled map.

    x (N, H, W, Cin); kernel (3, 3, Cin, Cout); bias (Cout,) or None; padding 'SAME' -> output
    (N, 2H, 2W, Cout), 'VALID' -> (N, 2H-2, 2W-2, Cout), 'FULL' -> (N, 2H+2, 2W+2, Cout).
    Exact up to float summation order.
    """
    padding = padding.upper()
    if padding not in _FIRST_ROW or kernel.shape[:2] != (3, 3):
        raise ValueError(f"upsample_conv takes a 3x3 kernel and padding SAME, VALID or FULL, got "
                         f"{kernel.shape[:2]} and {padding!r}")
    m, pads = _phase_taps(padding)
    m = jnp.asarray(m, kernel.dtype)
    cin, cout = kernel.shape[2:]
    # phase kernels: k[d_r, d_c, ci, p, q, co] = sum_{t_r, t_c} M[p,d_r,t_r] M[q,d_c,t_c] w[t_r,t_c,ci,co]
    k = jnp.einsum("prt,qsu,tuio->rsipqo", m, m, kernel)
    k = k.reshape(k.shape[0], k.shape[1], cin, 4 * cout)
    if padding == "SAME":
        y = _conv(x, k, (pads, pads))
    else:   # 2x2 phase kernels
        y = _conv_dot_wgrad(x, k, (pads, pads))
    n, h, w, _ = y.shape
    y = y.reshape(n, h, w, 2, 2, cout).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * h, 2 * w, cout)
    return y if bias is None else y + bias


def _pool_blocks(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, ceil(H/2), 2, ceil(W/2), 2, C), odd sizes padded with -inf."""
    n, h, w, c = x.shape
    if h % 2 or w % 2:
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
    return x.reshape(n, x.shape[1] // 2, 2, x.shape[2] // 2, 2, c)


@jax.custom_vjp
def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pool, stride 2, 'SAME' (odd sizes padded with -inf at the end): (N,H,W,C) ->
    (N, ceil(H/2), ceil(W/2), C). Values and gradient = nn.max_pool's, ties included: a window's
    gradient goes to its first maximum in row-major order, the element XLA's select_and_scatter
    (the transpose of reduce_window max) picks. Here it is a few fused elementwise ops."""
    return _pool_blocks(x).max(axis=(2, 4))


def _max_pool_fwd(x):
    y = max_pool_2x2(x)
    return y, (x, y)


def _first_max_mask(blocks: jax.Array, y: jax.Array) -> jax.Array:
    """blocks (N, Ho, 2, Wo, 2, C), y (N, Ho, Wo, C) their maxima -> bool mask of the same shape
    as blocks, True at exactly one element per window: the first (row-major) equal to y."""
    hit = blocks == y[:, :, None, :, None, :]
    h00, h01 = hit[:, :, 0, :, 0], hit[:, :, 0, :, 1]
    h10, h11 = hit[:, :, 1, :, 0], hit[:, :, 1, :, 1]
    f01 = h01 & ~h00
    seen = h00 | h01
    f10 = h10 & ~seen
    f11 = h11 & ~(seen | h10)
    return jnp.stack([jnp.stack([h00, f01], 3), jnp.stack([f10, f11], 3)], 2)


def _max_pool_bwd(res, ct):
    x, y = res
    blocks = _pool_blocks(x)
    first = _first_max_mask(blocks, y)
    g = jnp.where(first, ct[:, :, None, :, None, :], 0).reshape(
        x.shape[0], blocks.shape[1] * 2, blocks.shape[3] * 2, x.shape[3])
    return (g[:, :x.shape[1], :x.shape[2]],)


max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow/XLA 'SAME' padding of one axis: (low, high) for ceil(size / stride) outputs,
    the extra pixel of an odd total after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2


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
    n, h, w, _ = x.shape
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
            tap = lax.slice(x, (0, i, j, 0),
                            (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c),
                            (1, stride, stride, 1))
            t = tap * kernel[i, j, 0]
            y = t if y is None else y + t
    return y


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
        elif x.shape[-1] == 1:     # image input: kernel gradient as one einsum (see _conv_dot_wgrad)
            y = _conv_dot_wgrad(x, kernel, _PADS[self.padding])
        else:
            y = conv3x3(x, kernel, self.padding)
        return (max_pool_2x2(y) if pooled else y) + bias


__all__ = ("Conv3x3", "DepthwiseConv", "conv3x3", "depthwise_conv", "max_pool_2x2",
           "same_padding", "upsample_conv")
