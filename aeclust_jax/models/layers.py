"""Fast exact building blocks for the small conv nets of the studies (pure functions + one module).

    y = upsample_conv(x, kernel, bias, "SAME")   # == conv3x3(nearest_up2(x)), x (N, H, W, Cin)
    y = max_pool_2x2(x)                          # == nn.max_pool(x, (2, 2), (2, 2), "SAME")
    y = depthwise_conv(x, kernel, stride)        # == lax grouped conv, feature_group_count=C
    y = conv2d(x, kernel, stride, pads)          # == lax conv; kernel gradient as chunked GEMMs
    y = conv(x, kernel, stride, pads)            # the fastest of these convs for the backend
    y = pointwise_conv(x, kernel, stride)        # == lax 1x1 conv, as one matmul
    y = winograd_conv3x3(x, kernel, pads, m)     # == lax 3x3 stride-1 conv, Winograd F(m, 3)
    y = conv_transpose(z, kernel, stride)        # == lax.conv_transpose 'SAME' (nn.ConvTranspose)

Why (benchmarks/bench_train_step.py, 2-core CPU): in the S1 decoders most time went to 3x3 convs
on nearest-upsampled maps (28x28x16 -> 1 alone was a quarter of the step: Eigen's conv is poor with
one output channel, and the upsampled map and its gradient are 4x the data). A 3x3 conv of a x2
nearest-upsampled map is exactly four 3x3 convs of the small map ("phases", one per output pixel
parity) whose kernels are sums of the original taps, each reading only a 2x2 window of the small
map; ``upsample_conv`` runs them as one conv with 2x2 kernels and 4*Cout channels and a
depth-to-space shuffle. Same function, same parameters, 1/4 of the pixels and 4/9 of the
multiplies. S2's conv autoencoders use it for every decoder conv (``models/cae.py``).

Depthwise convs (EfficientNet's MBConv): XLA:CPU runs a grouped convolution with one channel per
group 4-17x slower than k*k shifted slices times per-channel weights, summed (pure elementwise
ops that XLA fuses into one loop; stride 2 = strided slices); see ``depthwise_conv``.

1x1 convs (EfficientNet's expand / project / head, ResNet's shortcuts and bottlenecks): XLA:CPU
runs a 1x1 conv 1.4-2.7x slower than the same matmul (which it hands to YNNPACK); ``Conv`` with
a 1x1 kernel and no padding is ``pointwise_conv``, a matmul on every backend.

Conv kernel gradients (ResNet's ``Conv``): XLA:CPU's autodiff of a conv computes dL/dkernel 1-13x
slower than the forward conv; ``conv2d`` computes it as GEMMs of stacked shifted slices of the
input, a few images at a time; see ``conv2d``. Its forward conv and both gradients are Winograd
F(4x4 or 2x2, 3x3) for 3x3 stride-1 convs of 64+ channels on maps up to 128 px (VGG-16
extraction and ResNet-18's train step ~1.5x; ``winograd_conv3x3``, ``_winograd_tile``).

Narrow convs (S2's and S1's autoencoders: 1-4 input or few output channels), where XLA:CPU's
conv and its gradients run at 15-40 GFLOP/s: stride-1 convs with 4 or fewer input channels are
one GEMM of the stacked input taps, and those whose outputs are at most half their inputs (up to
64) a GEMM to every tap's output followed by a sum of shifted slices (``_narrow_form``); every
stride-1 input gradient is the forward conv of the cotangent with the flipped kernel (so it takes
these forms too), and a stride-2 conv of up to 16 input channels gets its input gradient in the
sub-pixel form (``_stride2_input_grad``). CAEv1's train step 887 -> 1283 img/s.

These kernels are for XLA:CPU. On a GPU (or TPU) ``Conv``, ``upsample_conv`` and ``max_pool_2x2``
use XLA's own conv and reduce-window gradients (cuDNN's), the same values: ``cpu_kernels()``
decides at trace time, and ``AECLUST_KERNELS=cpu|xla`` forces one side (e.g. to time both on one
device).
"""

from __future__ import annotations

import functools
import os
from typing import Callable

import flax.linen as nn
from flax.linen.dtypes import promote_dtype
import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

_DN = ("NHWC", "HWIO", "NHWC")


def cpu_kernels() -> bool:
    """Whether ``Conv`` and ``max_pool_2x2`` use this module's XLA:CPU kernels (GEMM kernel
    gradients, fused pool gradient): on the CPU backend, unless ``AECLUST_KERNELS`` says
    ``cpu`` (always) or ``xla`` (never; XLA's own ops everywhere)."""
    choice = os.environ.get("AECLUST_KERNELS", "auto")
    if choice not in ("auto", "cpu", "xla"):
        raise ValueError(f"AECLUST_KERNELS must be auto, cpu or xla, got {choice!r}")
    return choice == "cpu" or (choice == "auto" and jax.default_backend() == "cpu")


# first row of the (virtually) upsampled map read by output row 0, per padding
_FIRST_ROW = {"SAME": -1, "VALID": 0, "FULL": -2}
_PADS = {"SAME": ((1, 1), (1, 1)), "VALID": ((0, 0), (0, 0)), "FULL": ((2, 2), (2, 2))}


def _conv(x: jax.Array, kernel: jax.Array, pads: tuple, stride: int = 1) -> jax.Array:
    """Correlation, NHWC x HWIO, explicit ((top, bottom), (left, right)) zero padding."""
    return lax.conv_general_dilated(x, kernel, (stride, stride), pads, dimension_numbers=_DN)


def pointwise_conv(x: jax.Array, kernel: jax.Array, stride: int = 1) -> jax.Array:
    """1x1 correlation without padding as one matmul: x (N, H, W, Cin), kernel (1, 1, Cin, Cout)
    -> (N, ceil(H/s), ceil(W/s), Cout), == ``lax.conv_general_dilated(x, kernel, (s, s),
    'VALID')`` up to float summation order. Gradients are plain autodiff (matmuls)."""
    if kernel.shape[:2] != (1, 1) or kernel.shape[2] != x.shape[-1]:
        raise ValueError(f"pointwise_conv: kernel (1, 1, Cin, Cout) with Cin = the input's "
                         f"channels, got kernel {kernel.shape} for input {x.shape}")
    if stride > 1:
        x = x[:, ::stride, ::stride, :]
    n, h, w, c = x.shape       # as a 2-D matmul: its kernel gradient is then one 2-D GEMM too
    return (x.reshape(n * h * w, c) @ kernel[0, 0]).reshape(n, h, w, kernel.shape[-1])


def _tap(xp: jax.Array, i: int, j: int, stride: int, ho: int, wo: int) -> jax.Array:
    """(N, Ho, Wo, C): the (strided) slice of the padded input xp that kernel tap (i, j) reads
    for each output pixel."""
    n, _, _, c = xp.shape
    return lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c),
                     (1, stride, stride, 1))


def conv3x3(x: jax.Array, kernel: jax.Array, padding: str) -> jax.Array:
    """Plain 3x3 correlation, NHWC x HWIO. 'FULL' (pad 2) is flax's stride-1 'VALID'
    ConvTranspose with the same kernel: (N, H, W, Cin) -> (N, H+2, W+2, Cout)."""
    return _conv(x, kernel, _PADS[padding])


def _phase_taps(padding: str, shared: bool) -> tuple[np.ndarray, tuple, tuple[int, int], int]:
    """How a 3-tap filter over an x2 nearest-upsampled axis (small axis of length H) reads the
    small axis, per output parity p (output row 2a + p, whose taps read two consecutive small rows
    from a + start_p): M (2, K, 3) 0/1, M[p, d, t] = 1 when tap t reads window row d for parity p;
    offsets (2,): where parity p's rows sit in the output of one K-tap conv over the small axis
    zero-padded by pads (low, high); extra: outputs per parity are H + extra (SAME 0, VALID -1,
    FULL +1).

    ``shared``: both parities read one window from a + min(start) (K = 3 for SAME, whose two
    parities start one row apart; 2 otherwise) and the conv's output rows are theirs (offsets 0);
    else each parity reads its own 2-row window (K = 2) and SAME's parity 1 sits one row later."""
    lo = _FIRST_ROW[padding]
    starts = [(p + lo) // 2 for p in range(2)]
    first = min(starts)
    k = 2 + max(starts) - first if shared else 2
    origin = [first, first] if shared else starts
    m = np.zeros((2, k, 3), np.float32)
    for p in range(2):
        for t in range(3):
            m[p, (p + lo + t) // 2 - origin[p], t] = 1.0   # upsampled row 2a+p+lo+t = small row
    offsets = (origin[0] - first, origin[1] - first)
    extra = {"SAME": 0, "VALID": -1, "FULL": 1}[padding]
    return m, offsets, (-first, extra + max(offsets) + k - 1 + first), extra


# Bytes of stacked taps (images x Ho x Wo x k*k*Cin floats) one step of the kernel gradient's
# batch loop holds; see conv2d.
_WGRAD_CHUNK_BYTES = 4 << 20


def _taps(xp: jax.Array, kh: int, kw: int, stride: int, ho: int, wo: int) -> jax.Array:
    """(N, Ho, Wo, kh*kw, C): every ``_tap`` of a kh x kw kernel, stacked."""
    return jnp.stack([_tap(xp, i, j, stride, ho, wo) for i in range(kh) for j in range(kw)], 3)


# Up to this many bytes of stacked taps for the whole batch, the kernel gradient is one GEMM (S2's
# phase convs: the CAEv1 step 1700 vs 1545 img/s with 4 MB chunks); ResNet-18's layers past its
# stem (38-300 MB of taps at batch 128) are chunked.
_WGRAD_WHOLE_BATCH_BYTES = 32 << 20


def _batch_chunk(n: int, per_image_bytes: int) -> int:
    """n when the whole batch's stacked taps fit in _WGRAD_WHOLE_BATCH_BYTES, else the largest
    divisor of n whose images' taps fit in _WGRAD_CHUNK_BYTES (>= 1)."""
    if n * per_image_bytes <= _WGRAD_WHOLE_BATCH_BYTES:
        return n
    limit = max(1, _WGRAD_CHUNK_BYTES // max(per_image_bytes, 1))
    return max(d for d in range(1, min(n, limit) + 1) if n % d == 0)


def _conv_kernel_grad(x, ct, kernel_shape, stride, pads):
    """dL/dkernel (kh, kw, Cin, Cout) = sum over images and output pixels of tap(x) (x) ct: per
    chunk of images one GEMM (stacked taps (rows, kh*kw*Cin))^T @ ct (rows, Cout), accumulated
    over the chunks by a scan."""
    kh, kw, cin, cout = kernel_shape
    n, ho, wo, _ = ct.shape
    xp = jnp.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))

    def grad(xc, cc):
        if cin == 1:   # taps first: (T, B, Ho, Wo) . (B, Ho, Wo, Cout), both contractions contiguous
            taps = jnp.stack([_tap(xc, i, j, stride, ho, wo)[..., 0]
                              for i in range(kh) for j in range(kw)])
            return jnp.einsum("tbhw,bhwo->to", taps, cc)[:, None, :]
        # as a 2-D GEMM taps^T @ ct: the 5-D einsum made XLA transpose the taps first, a copy
        # slower than the GEMM (CAEv1's decoder convs: 9-16 vs 5-11 ms)
        taps = _taps(xc, kh, kw, stride, ho, wo).reshape(-1, kh * kw * cin)
        return (taps.T @ cc.reshape(-1, cout)).reshape(kh * kw, cin, cout)

    c = _batch_chunk(n, ho * wo * kh * kw * cin * x.dtype.itemsize)
    if c == n:
        g = grad(xp, ct)
    else:
        xs = xp.reshape((n // c, c) + xp.shape[1:])
        cs = ct.reshape((n // c, c) + ct.shape[1:])
        g = lax.scan(lambda acc, a: (acc + grad(*a), None),
                     jnp.zeros((kh * kw, cin, cout), ct.dtype), (xs, cs))[0]
    return g.reshape(kernel_shape)


# Winograd F(m x m, 3 x 3) (Lavin & Gray 2016): for each m x m output tile,
# Y = AT [(G g G^T) * (BT d B)] A over the (m + 2)^2 input tile d, as (m + 2)^2 GEMMs over tiles.
_WINOGRAD = {
    2: (np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]]),
        np.array([[1, 0, 0], [1 / 2, 1 / 2, 1 / 2], [1 / 2, -1 / 2, 1 / 2], [0, 0, 1]]),
        np.array([[1, 1, 1, 0], [0, 1, -1, -1]])),
    4: (np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                  [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]]),
        np.array([[1 / 4, 0, 0], [-1 / 6, -1 / 6, -1 / 6], [-1 / 6, 1 / 6, -1 / 6],
                  [1 / 24, 1 / 12, 1 / 6], [1 / 24, -1 / 12, 1 / 6], [0, 0, 1]]),
        np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                  [0, 1, -1, 8, -8, 1]])),
}


def _combine(coefs: np.ndarray, terms: list) -> jax.Array:
    """sum_i coefs[i] * terms[i], skipping zero coefficients (the transforms are sparse)."""
    out = None
    for c, t in zip(coefs, terms):
        if c != 0:
            v = t if c == 1 else -t if c == -1 else t * np.asarray(c, t.dtype)
            out = v if out is None else out + v
    return out


def _winograd_tile(ho: int, wo: int, cin: int, cout: int) -> int:
    """The output tile m of ``winograd_conv3x3`` for this 3x3 stride-1 conv (output Ho x Wo),
    0 = XLA's conv. Measured on XLA:CPU (2 cores, host memory kept, ms, XLA conv / F(2x2) /
    F(4x4); batch x map x Cin -> Cout): 8x224x64->64 114 / 170 / 147; 8x112x128->128 108 / 113 /
    76; 8x56x256->256 108 / 78 / 53; 8x28x512->512 108 / 64 / 46; 8x14x512->512 28 / 18 / 21;
    32x12x128->128 5.0 / 7.0 / 4.1; 32x6x256->256 5.7 / 3.8-6.5 / 5.0; 32x3x512->512 6.4 / 7.6 /
    9.7; 128x32x64->64 69 / 53 / 38; 128x4x512->512 34 / 21 / 19. So: 64+ channels (32 gained
    at 32 px, not at 16), maps up to 128 px (on 224-px maps the transforms' memory traffic costs
    more than the multiplies saved), F(4x4) on multiples of 4, F(2x2) on other even sizes."""
    if min(cin, cout) < 64 or max(ho, wo) > 128:
        return 0
    if ho % 4 == 0 and wo % 4 == 0:
        return 4
    if ho % 2 == 0 and wo % 2 == 0:
        return 2
    return 0


def _winograd_input(x: jax.Array, pads: tuple, m: int) -> tuple[jax.Array, tuple]:
    """BT d B of every (m + 2)^2 input tile d, tiles every m pixels of the zero-padded input:
    x (N, H, W, Cin) -> (v ((m + 2)^2, N * th * tw, Cin), (N, th, tw, Ho, Wo)), th = ceil(Ho / m).
    Two passes of sparse combinations, rows then columns, each materialised by a stack (one
    stack of the 36 combinations re-read the input for each: 23 vs 5 ms at 8x28x28x512)."""
    bt = np.asarray(_WINOGRAD[m][0], np.float64)
    a = m + 2
    n, h, w, cin = x.shape
    (pt, pb), (pl, pr) = pads
    ho, wo = h + pt + pb - 2, w + pl + pr - 2
    th, tw = -(-ho // m), -(-wo // m)
    xp = jnp.pad(x, ((0, 0), (pt, th * m + 2 - h - pt), (pl, tw * m + 2 - w - pl), (0, 0)))

    def every_m(y, start, count, axis):
        return lax.slice_in_dim(y, start, start + (count - 1) * m + 1, m, axis=axis)

    rows = [every_m(xp, i, th, 1) for i in range(a)]
    r = jnp.stack([_combine(bt[u], rows) for u in range(a)])             # (a, N, th, Wp, Cin)
    cols = [every_m(r, j, tw, 3) for j in range(a)]
    v = jnp.stack([_combine(bt[u], cols) for u in range(a)], 1)          # (a, a, N, th, tw, Cin)
    return v.reshape(a * a, n * th * tw, cin), (n, th, tw, ho, wo)


def _two_sided(mat: np.ndarray, t: jax.Array) -> jax.Array:
    """mat t mat^T over the two leading axes: t (k, k, ...) -> (r, r, ...) for mat (r, k), as two
    passes of sparse combinations."""
    k = mat.shape[1]
    half = jnp.stack([_combine(mat[u], [t[i] for i in range(k)]) for u in range(len(mat))])
    return jnp.stack([_combine(mat[u], [half[:, j] for j in range(k)]) for u in range(len(mat))], 1)


def winograd_conv3x3(x: jax.Array, kernel: jax.Array, pads: tuple, m: int) -> jax.Array:
    """3x3 stride-1 correlation by Winograd F(m x m, 3 x 3), m = 2 or 4: x (N, H, W, Cin),
    kernel (3, 3, Cin, Cout), pads ((top, bottom), (left, right)) -> (N, Ho, Wo, Cout) with
    Ho = H + top + bottom - 2: the values of ``lax.conv_general_dilated`` to float rounding
    (relative error ~1e-6 for m = 2, ~2e-5 for m = 4, vs ~1e-6 for XLA's conv). The input is cut
    into (m + 2)^2 tiles every m pixels (the last ones zero-padded), transformed as BT d B, one
    GEMM per tile position against G g G^T, (m + 2)^2 of them, and AT M A gives the m x m outputs:
    9 m^2 / (m + 2)^2 = 2.25x fewer multiplies for m = 4 (1.78x for m = 2), and (m + 2)^2 / m^2
    times the map's data through memory on each side of the GEMMs. Plain jnp: autodiff works
    (``conv2d``'s gradients are faster)."""
    g, at = (np.asarray(t, np.float64) for t in _WINOGRAD[m][1:])
    a = m + 2
    cin, cout = kernel.shape[2:]
    v, (n, th, tw, ho, wo) = _winograd_input(x, pads, m)
    u = _two_sided(g, kernel).reshape(a * a, cin, cout)                  # G g G^T
    mm = lax.dot_general(v, u, (((2,), (1,)), ((0,), (0,))))               # (a*a, tiles, Cout)
    y = _two_sided(at, mm.reshape(a, a, n, th, tw, cout))                # (m, m, N, th, tw, C)
    y = y.transpose(2, 3, 0, 4, 1, 5).reshape(n, th * m, tw * m, cout)
    return y[:, :ho, :wo]


def _winograd_kernel_grad(x: jax.Array, ct: jax.Array, pads: tuple, m: int) -> jax.Array:
    """dL/dkernel (3, 3, Cin, Cout) of ``winograd_conv3x3(x, kernel, pads, m)`` for the
    cotangent ct (N, Ho, Wo, Cout), by the same algorithm transposed: A^T ct A per output tile,
    (m + 2)^2 GEMMs v^T @ that over the tiles, and G^T dU G. Same multiplies as the forward."""
    g, at = (np.asarray(t, np.float64) for t in _WINOGRAD[m][1:])
    a = m + 2
    cin, cout = x.shape[-1], ct.shape[-1]
    v, (n, th, tw, ho, wo) = _winograd_input(x, pads, m)
    ctp = jnp.pad(ct, ((0, 0), (0, th * m - ho), (0, tw * m - wo), (0, 0)))
    ctp = ctp.reshape(n, th, m, tw, m, cout).transpose(2, 4, 0, 1, 3, 5)  # (m, m, N, th, tw, C)
    dm = _two_sided(at.T, ctp).reshape(a * a, n * th * tw, cout)
    du = lax.dot_general(v, dm, (((1,), (1,)), ((0,), (0,))))             # (a*a, Cin, Cout)
    return _two_sided(g.T, du.reshape(a, a, cin, cout))


# Narrow stride-1 convs (S1 and S2's autoencoders: 1-32 channels on one side), where XLA:CPU's
# conv runs at 15-40 GFLOP/s. Two GEMM forms, chosen by ``_narrow_form``:
#   "taps":  the kh*kw shifted slices of the padded input stacked, (N*Ho*Wo, kh*kw*Cin), @ the
#            kernel (kh*kw*Cin, Cout): for few input channels (an RGB image);
#   "shift": x (N*H*W, Cin) @ the kernel as (Cin, kh*kw*Cout), then the sum of the kh*kw shifted
#            slices of that per-tap output: for few output channels (the decoders' last convs and
#            the input gradients of the upsampling convs).
# Either materialises kh*kw times the narrow side's data; above _NARROW_BYTES XLA's conv is kept.
_NARROW_BYTES = 64 << 20


def _narrow_form(x_shape: tuple, kernel_shape: tuple, stride: int) -> str | None:
    """"taps", "shift" or None (XLA's conv / Winograd) for a conv of x_shape (N, H, W, Cin) with
    kernel_shape (kh, kw, Cin, Cout). Measured at batch 128, ms (XLA conv / taps / shift): 32 px
    3 -> 16 k3 3.6 / 2.7 / 14.7; 32 px 16 -> 3 k3 6.5 / 19.4 / 3.7; 17 px 64 -> 32 k2 9.1 / 4.6 /
    2.5; 9 px 128 -> 64 k2 4.7 / 3.4 / 2.7; 5 px 256 -> 128 k2 2.4 / 2.8 / 3.3; 16 px 32 -> 64 k2
    2.7 / 3.9 / 6.9 (the last two, and every wider conv, stay XLA's)."""
    kh, kw, cin, cout = kernel_shape
    if stride != 1 or (kh, kw) == (1, 1):
        return None
    n, h, w, _ = x_shape
    if cin <= 4 and n * h * w * kh * kw * cin * 4 <= _NARROW_BYTES:
        return "taps"
    if 2 * cout <= cin and cout <= 64 and n * h * w * kh * kw * cout * 4 <= _NARROW_BYTES:
        return "shift"
    return None


def _out_size(x_shape: tuple, kernel_shape: tuple, pads: tuple) -> tuple[int, int]:
    """(Ho, Wo) of a stride-1 correlation."""
    return (x_shape[1] + sum(pads[0]) - kernel_shape[0] + 1,
            x_shape[2] + sum(pads[1]) - kernel_shape[1] + 1)


def _stacked_taps(x: jax.Array, kernel_shape: tuple, pads: tuple) -> jax.Array:
    """The stride-1 taps of x (N, H, W, C) zero-padded by pads, as a matrix (N*Ho*Wo, kh*kw*C):
    row p, column block t = (i, j) holds x_padded[p + (i, j)]."""
    kh, kw = kernel_shape[:2]
    ho, wo = _out_size(x.shape, kernel_shape, pads)
    (pt, pb), (pl, pr) = pads                            # negative pads crop (lax.pad)
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
    return _taps(xp, kh, kw, 1, ho, wo).reshape(-1, kh * kw * x.shape[-1])


def _taps_conv(x: jax.Array, kernel: jax.Array, pads: tuple,
               taps: jax.Array | None = None) -> jax.Array:
    """Stride-1 correlation as one GEMM of the stacked taps (``_stacked_taps``, or ``taps`` when
    given) @ kernel (kh*kw*Cin, Cout): x (N, H, W, Cin), kernel (kh, kw, Cin, Cout) ->
    (N, Ho, Wo, Cout)."""
    cout = kernel.shape[-1]
    ho, wo = _out_size(x.shape, kernel.shape, pads)
    taps = _stacked_taps(x, kernel.shape, pads) if taps is None else taps
    return (taps @ kernel.reshape(-1, cout)).reshape(x.shape[0], ho, wo, cout)


def _shift_conv(x: jax.Array, kernel: jax.Array, pads: tuple) -> jax.Array:
    """Stride-1 correlation as x @ every tap's kernel at once, then a sum of shifted slices:
    y[p] = sum_t z_t[p + t - pad] with z = x (N*H*W, Cin) @ kernel (Cin, kh*kw*Cout).
    x (N, H, W, Cin), kernel (kh, kw, Cin, Cout) -> (N, Ho, Wo, Cout)."""
    n, h, w, cin = x.shape
    kh, kw, _, cout = kernel.shape
    ho, wo = _out_size(x.shape, kernel.shape, pads)
    z = x.reshape(-1, cin) @ kernel.transpose(2, 0, 1, 3).reshape(cin, kh * kw * cout)
    zp = jnp.pad(z.reshape(n, h, w, kh * kw, cout), ((0, 0),) + tuple(pads) + ((0, 0), (0, 0)))
    terms = [zp[:, i:i + ho, j:j + wo, i * kw + j] for i in range(kh) for j in range(kw)]
    return functools.reduce(jnp.add, terms)


def _flipped_pads(kernel_shape: tuple, pads: tuple) -> tuple:
    """The pads of a stride-1 correlation's input gradient as a correlation of the cotangent
    with the flipped kernel: (k - 1 - low, k - 1 - high) per axis (negative: a crop)."""
    return tuple((k - 1 - lo, k - 1 - hi) for k, (lo, hi) in zip(kernel_shape[:2], pads))


def _shifted_cotangent_kernel_grad(x: jax.Array, ct: jax.Array, kernel_shape: tuple,
                                   pads: tuple, ct_taps: jax.Array | None = None) -> jax.Array:
    """dL/dkernel (kh, kw, Cin, Cout) of a stride-1 correlation with few output channels from
    the cotangent's taps (kh*kw*Cout narrow columns, not kh*kw*Cin): ct_taps = the stride-1
    taps of ct for the flipped kernel (``_stacked_taps(ct, kernel_shape, _flipped_pads(...))``,
    shared with the input gradient when given), whose column block (kh-1-i, kw-1-j) holds
    ct[r + pad - (i, j)]; one GEMM x^T (Cin, N*H*W) @ ct_taps gives dK[i, j]."""
    kh, kw, cin, cout = kernel_shape
    if ct_taps is None:
        ct_taps = _stacked_taps(ct, kernel_shape, _flipped_pads(kernel_shape, pads))
    g = (x.reshape(-1, cin).T @ ct_taps).reshape(cin, kh, kw, cout)
    return g[:, ::-1, ::-1].transpose(1, 2, 0, 3)


def _conv_tile(x_shape: tuple, kernel_shape: tuple, stride: int, pads: tuple) -> int:
    """``_winograd_tile`` of a conv2d (0 unless 3x3, stride 1)."""
    kh, kw, cin, cout = kernel_shape
    if (kh, kw) != (3, 3) or stride != 1:
        return 0
    return _winograd_tile(x_shape[1] + sum(pads[0]) - 2, x_shape[2] + sum(pads[1]) - 2, cin, cout)


def _conv_forward(x: jax.Array, kernel: jax.Array, stride: int, pads: tuple) -> jax.Array:
    """conv2d's values: Winograd where ``_winograd_tile`` picks it (3x3, stride 1), else XLA's."""
    m = _conv_tile(x.shape, kernel.shape, stride, pads)
    if m:
        return winograd_conv3x3(x, kernel, pads, m)
    form = _narrow_form(x.shape, kernel.shape, stride)
    if form == "taps":
        return _taps_conv(x, kernel, pads)
    if form == "shift":
        return _shift_conv(x, kernel, pads)
    return _conv(x, kernel, pads, stride)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3))
def conv2d(x: jax.Array, kernel: jax.Array, stride: int, pads: tuple) -> jax.Array:
    """Correlation NHWC x HWIO, stride (s, s), explicit pads ((top, bottom), (left, right)), no
    dilation or groups: values are ``lax.conv_general_dilated``'s (to float rounding); its
    kernel gradient is a GEMM (or Winograd's, below).

    Why: XLA:CPU computes the kernel gradient of a conv (autodiff: a conv of x with the
    cotangent as the window) 1-13x slower than the forward conv. Here it is the batch-chunked
    GEMM of ``_conv_kernel_grad`` (stacked shifted/strided slices of the padded input against the
    cotangent; the stack of all taps of the whole batch at once, k*k times the input, was 2-3x
    slower than chunks of a few MB at ResNet's sizes; up to 32 MB of taps, as in S1 and S2's small
    convs, the whole batch is one GEMM). Input gradient: XLA's transposed conv (``linear_transpose``
    of the forward, nothing recomputed); it costs about the forward's time for stride 1 and
    0.9-3x for stride 2 (a conv over the zero-dilated cotangent: 141 vs 110 ms at 32x32x64 k3 s2,
    38 vs 13 ms at k1 s2); one GEMM cotangent @ kernel^T followed by k*k interior-padded adds
    measured the same (156 and 36 ms), so XLA's is kept.

    Measured at batch 128 on the shared 2-core x86_64 CPU (load 2-4, medians of 3 interleaved
    calls, noise ~+-30 %), ResNet-18 small-stem layer shapes, kernel gradient, ms:

        layer (input, k, stride -> output)   forward   XLA dK   dK here (4 MB chunks)
        32x32x3   k3 s1 -> 64                     37      55-79     ~30
        32x32x64  k3 s1 -> 64                    183   1715-2738   240-300
        32x32x64  k3 s2 -> 128                    96     263-441    ~90
        32x32x64  k1 s2 -> 128                    11     107-233    ~15
        16x16x128 k3 s1 -> 128                   134     362-714   180-240
        16x16x128 k3 s2 -> 256                    84     208-211    ~90
        16x16x128 k1 s2 -> 256                    12      47-85     ~13
        8x8x256   k3 s1 -> 256                   163     335-407   150-200
        8x8x256   k3 s2 -> 512                    87     127-129    75-90
        8x8x256   k1 s2 -> 512                     9      40-54     ~12
        4x4x512   k3 s1 -> 512                   178     200-215   160-200

    A loop of k*k per-tap GEMMs and channel-major taps were within noise of the stacked GEMM
    once chunked; the chunk size (1-8 MB) mattered little. The kernel gradient here is never
    slower than XLA's at these shapes, so it is used for every shape Winograd (below) is not.

    3x3 stride-1 convs: the input gradient is the 3x3 conv of the cotangent with the flipped,
    transposed kernel; it and the forward conv are ``winograd_conv3x3`` where ``_winograd_tile``
    picks it (64+ channels, maps up to 128 px), and then the kernel gradient is
    ``_winograd_kernel_grad`` (1.9-2.8x faster than the GEMM above at ResNet-18's shapes).

    Narrow stride-1 convs (``_narrow_form``) are GEMMs of stacked taps ("taps": few input
    channels; the taps are kept for the kernel gradient) or of every tap's output ("shift": few
    output channels; the kernel gradient from the shifted cotangent, whose taps the input gradient
    shares when it is itself "taps"). Stride-2 convs of up to 16 input channels: the input
    gradient in sub-pixel form (``_stride2_input_grad``)."""
    return _conv_forward(x, kernel, stride, pads)


# A stride-2 conv's input gradient with at most this many input channels is the sub-pixel form
# (``_stride2_input_grad``); measured at batch 128, ms (XLA's transposed conv / sub-pixel): 64 px
# 8 -> 16 11.4 / 3.8; 32 px 16 -> 32 4.3 / 2.8; 16 px 32 -> 64 2.3 / 2.5; 8 px 64 -> 128 1.7 /
# 3.0; 32 px 64 -> 128 31 / 34.
_SUBPIXEL_MAX_CHANNELS = 16


def _stride2_input_grad(ct: jax.Array, kernel: jax.Array, x_shape: tuple, pads: tuple) -> jax.Array:
    """dL/dx (N, H, W, C) of a stride-2 correlation of x with kernel (kh, kw, C, O) and pads, for
    the cotangent ct (N, Ho, Wo, O), without XLA's conv over the zero-dilated cotangent: the
    conv is a stride-1 valid correlation of the space-to-depth padded input (each 2x2 block of
    pixels one pixel of 4C channels) with the kernel zero-padded to even sides and regrouped the
    same way (ceil(kh/2), ceil(kw/2), 4C, O), so dx is that conv's input gradient (a stride-1
    conv of ct with the flipped regrouped kernel) put back by depth-to-space and cropped."""
    n, h, w, c = x_shape
    kh, kw, _, o = kernel.shape
    _, ho, wo, _ = ct.shape
    (pt, _), (pl, _) = pads
    dh, dw = (kh + 1) // 2, (kw + 1) // 2
    kp = jnp.pad(kernel, ((0, 2 * dh - kh), (0, 2 * dw - kw), (0, 0), (0, 0)))
    ks = kp.reshape(dh, 2, dw, 2, c, o).transpose(0, 2, 1, 3, 4, 5).reshape(dh, dw, 4 * c, o)
    flipped = ks[::-1, ::-1].transpose(0, 1, 3, 2)
    dxs = _conv_forward(ct, flipped, 1, ((dh - 1, dh - 1), (dw - 1, dw - 1)))
    hs, ws = ho + dh - 1, wo + dw - 1                    # the space-to-depth map's size
    dxp = dxs.reshape(n, hs, ws, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * hs, 2 * ws, c)
    # the padded input's rows past 2 * hs are read by no output: their gradient is zero
    dxp = jnp.pad(dxp, ((0, 0), (0, max(0, pt + h - 2 * hs)), (0, max(0, pl + w - 2 * ws)), (0, 0)))
    return dxp[:, pt:pt + h, pl:pl + w]


def _conv2d_fwd(x, kernel, stride, pads):
    if _narrow_form(x.shape, kernel.shape, stride) == "taps":
        taps = _stacked_taps(x, kernel.shape, pads)     # kept: the kernel gradient is taps^T @ ct
        return _taps_conv(x, kernel, pads, taps), (x, kernel, taps)
    return conv2d(x, kernel, stride, pads), (x, kernel, None)


def _conv2d_bwd(stride, pads, res, ct):
    x, kernel, taps = res
    cin, cout = kernel.shape[2:]
    flipped_pads = _flipped_pads(kernel.shape, pads)
    if stride == 1 and min(min(p) for p in flipped_pads) >= 0:
        # dx[r] = sum_t ct[r + pad - t] k[t]: a correlation of ct with the flipped kernel
        flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)
        if taps is None and _narrow_form(x.shape, kernel.shape, 1) == "shift" and \
                _narrow_form(ct.shape, flipped.shape, 1) == "taps":
            # few output channels: the cotangent's taps (N*H*W, kh*kw*Cout) serve both gradients
            ct_taps = _stacked_taps(ct, flipped.shape, flipped_pads)
            return (_taps_conv(ct, flipped, flipped_pads, ct_taps),
                    _shifted_cotangent_kernel_grad(x, ct, kernel.shape, pads, ct_taps))
        dx = _conv_forward(ct, flipped, 1, flipped_pads)
    elif stride == 2 and cin <= _SUBPIXEL_MAX_CHANNELS and min(min(p) for p in pads) >= 0:
        dx = _stride2_input_grad(ct, kernel, x.shape, pads)
    else:   # the conv is linear in x: transpose it (no recomputation of the forward pass)
        dx = jax.linear_transpose(lambda t: _conv(t, kernel, pads, stride), x)(ct)[0]
    if taps is not None:      # "taps" form: its stacked input taps give the kernel gradient
        return dx, (taps.T @ ct.reshape(-1, cout)).reshape(kernel.shape)
    m = _conv_tile(x.shape, kernel.shape, stride, pads)
    if m:
        return dx, _winograd_kernel_grad(x, ct, pads, m)
    if _narrow_form(x.shape, kernel.shape, stride) == "shift":
        return dx, _shifted_cotangent_kernel_grad(x, ct, kernel.shape, pads)
    return dx, _conv_kernel_grad(x, ct, kernel.shape, stride, pads)


conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


# XLA:CPU (jax 0.10.2, its convs run by YNNPACK) is 3-12x slower on a conv of 3 input channels
# (an RGB image) with 24 or 32 outputs than on the same conv with a fourth, zero input channel:
# EfficientNet's stem (3x3 / 2, 224 px -> 32, batch 32) 23 vs 8 ms; 3x3 convs with 24 outputs
# 64 vs 5-7 ms. With 16, 48 or 64 outputs (the CAEs', ResNet's and VGG's first convs) 3 channels
# are as fast or faster, so only these widths get the zero channel.
_CPU_RGB_PADDED_OUTPUTS = (24, 32)


def conv(x: jax.Array, kernel: jax.Array, stride: int = 1,
         pads: tuple = ((0, 0), (0, 0))) -> jax.Array:
    """Correlation NHWC x HWIO, stride (s, s), explicit pads ((top, bottom), (left, right)):
    x (N, H, W, Cin), kernel (kh, kw, Cin, Cout) -> (N, Ho, Wo, Cout), the values of
    ``lax.conv_general_dilated``, through the fastest path: an unpadded 1x1 kernel is
    ``pointwise_conv`` (a matmul) everywhere, other kernels ``conv2d`` (GEMM gradients) on XLA:CPU
    (``cpu_kernels()``; an RGB input with 24 or 32 outputs gets a zero fourth channel, see
    ``_CPU_RGB_PADDED_OUTPUTS``) and XLA's conv elsewhere."""
    pads = tuple(tuple(int(v) for v in p) for p in pads)
    if kernel.shape[:2] == (1, 1) and not any(any(p) for p in pads):
        return pointwise_conv(x, kernel, stride)
    if cpu_kernels():
        if x.shape[-1] == 3 and kernel.shape[-1] in _CPU_RGB_PADDED_OUTPUTS:
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, 1)))
            kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, 1), (0, 0)))
        return conv2d(x, kernel, stride, pads)
    return _conv(x, kernel, pads, stride)


def conv_transpose(z: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """``lax.conv_transpose(z, kernel, (s, s), "SAME")`` (flax's ``nn.ConvTranspose`` with
    padding 'SAME', no kernel flip): z (N, h, w, Cin), kernel (kh, kw, Cin, Cout) ->
    (N, s*h, s*w, Cout). On XLA:CPU a stride-2 one with kernels of 2+ taps is the input gradient
    of the stride-2 conv it transposes, in sub-pixel form (``_stride2_input_grad``: a stride-1
    conv of z and depth-to-space, not a conv over the zero-dilated z; its gradients by
    autodiff of those ops); elsewhere lax's. DSC's decoder: its fine-tune step 1.2x with ``Conv`` in the
    encoder (COIL-20)."""
    kh, kw = kernel.shape[:2]
    if not (cpu_kernels() and stride == 2 and min(kh, kw) >= 2):
        return lax.conv_transpose(z, kernel, (stride, stride), "SAME", dimension_numbers=_DN)
    n, h, w, _ = z.shape
    # the stride-2 conv of a (2h, 2w) map with TF 'SAME' pads whose transpose this is
    pads = tuple(((k - 2) // 2, k - 2 - (k - 2) // 2) for k in (kh, kw))
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)
    return _stride2_input_grad(z, flipped, (n, 2 * h, 2 * w, kernel.shape[-1]), pads)


def upsample_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, padding: str) -> jax.Array:
    """conv3x3(nearest_upsample_x2(x)) without materialising the upsampled map.

    x (N, H, W, Cin); kernel (3, 3, Cin, Cout); bias (Cout,) or None; padding 'SAME' -> output
    (N, 2H, 2W, Cout), 'VALID' -> (N, 2H-2, 2W-2, Cout), 'FULL' -> (N, 2H+2, 2W+2, Cout).
    Exact up to float summation order.

    Each output parity (p, q) reads a 2x2 window of the small map, so the four are one conv of x
    with 2x2 "phase" kernels (4 * Cout channels; 4/9 of the 3x3 conv's multiplies per output),
    interleaved. SAME's two parities read windows one row (column) apart: the conv gives one extra
    row and column and each parity takes its own slice; with Cout < 4 one 3x3 window holding both
    parities is used instead (4 * Cout channels of output are too narrow for the slices to pay:
    S1's one-channel output layer was 3% of its step slower with them). On XLA:CPU the 2x2 convs'
    kernel gradients are ``conv2d``'s GEMM (XLA's own was a large-window conv, 6x slower for the
    whole CAEv1 step); CAEv1's train step went 1213 -> 1700 img/s (the literal up-then-conv) and
    S1's kept its speed.
    """
    padding = padding.upper()
    if padding not in _FIRST_ROW or kernel.shape[:2] != (3, 3):
        raise ValueError(f"upsample_conv takes a 3x3 kernel and padding SAME, VALID or FULL, got "
                         f"{kernel.shape[:2]} and {padding!r}")
    cin, cout = kernel.shape[2:]
    m, offsets, pads, extra = _phase_taps(padding, shared=cout < 4)
    m = jnp.asarray(m, kernel.dtype)
    kk = m.shape[1]
    # phase kernels: k[d_r, d_c, ci, p, q, co] =
    #   sum_{t_r, t_c} M[p, d_r, t_r] M[q, d_c, t_c] w[t_r, t_c, ci, co]
    k = jnp.einsum("prt,qsu,tuio->rsipqo", m, m, kernel).reshape(kk, kk, cin, 4 * cout)
    if kk == 2 and cpu_kernels():
        y = conv2d(x, k, 1, (pads, pads))
    else:
        y = _conv(x, k, (pads, pads))
    n, hc, wc, _ = y.shape
    y = y.reshape(n, hc, wc, 2, 2, cout)
    h, w = x.shape[1] + extra, x.shape[2] + extra
    if any(offsets):   # SAME: parity 1's rows (columns) start one later in the conv's output
        y = jnp.stack([jnp.stack([y[:, a:a + h, b:b + w, p, q] for q, b in enumerate(offsets)], 3)
                       for p, a in enumerate(offsets)], 2)
    else:
        y = y.transpose(0, 1, 3, 2, 4, 5)
    y = y.reshape(n, 2 * h, 2 * w, cout)                 # (N, H', 2, W', 2, C) -> (N, 2H', 2W', C)
    return y if bias is None else y + bias


def _pool_blocks(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, ceil(H/2), 2, ceil(W/2), 2, C), odd sizes padded with -inf."""
    n, h, w, c = x.shape
    if h % 2 or w % 2:
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
    return x.reshape(n, x.shape[1] // 2, 2, x.shape[2] // 2, 2, c)


def max_pool_2x2(x: jax.Array) -> jax.Array:
    """2x2 max pool, stride 2, 'SAME' (odd sizes padded with -inf at the end): (N,H,W,C) ->
    (N, ceil(H/2), ceil(W/2), C). Values and gradient = nn.max_pool's, ties included: a window's
    gradient goes to its first maximum in row-major order, the element XLA's select_and_scatter
    (the transpose of reduce_window max) picks. On XLA:CPU (``cpu_kernels()``) it is a few fused
    elementwise ops (``fused_max_pool_2x2``), elsewhere nn.max_pool itself."""
    if cpu_kernels():
        return fused_max_pool_2x2(x)
    return nn.max_pool(x, (2, 2), (2, 2), "SAME")


@jax.custom_vjp
def fused_max_pool_2x2(x: jax.Array) -> jax.Array:
    """``max_pool_2x2`` as elementwise ops with a hand-written gradient (see there).

    With 64+ channels it is the maximum of the four strided slices: XLA:CPU may put the reduce
    over 2x2 blocks into one YNNPACK fusion with the dots after it, 25x slower (VGG-16's last
    pool and classifier, Winograd convs before them: 1.25 s vs 53 ms at batch 8). Narrow maps
    keep the reduce (S1's 1-16 channels: dae_skip's train step 6771 vs 6017 img/s)."""
    b = _pool_blocks(x)
    if x.shape[-1] < 64:
        return b.max(axis=(2, 4))
    return jnp.maximum(jnp.maximum(b[:, :, 0, :, 0], b[:, :, 0, :, 1]),
                       jnp.maximum(b[:, :, 1, :, 0], b[:, :, 1, :, 1]))


def _max_pool_fwd(x):
    y = fused_max_pool_2x2(x)
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


fused_max_pool_2x2.defvjp(_max_pool_fwd, _max_pool_bwd)


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


__all__ = ("Conv", "Conv3x3", "ConvTranspose", "DepthwiseConv", "conv2d", "conv3x3",
           "conv_transpose", "depthwise_conv", "max_pool_2x2", "same_padding", "upsample_conv",
           "winograd_conv3x3")
