"""conv2d: a correlation with hand-written gradients for XLA:CPU, and the convs built on it.

    y = conv(x, kernel, stride, pads)            # the fastest of these convs for the backend
    y = conv2d(x, kernel, stride, pads)          # == lax conv; GEMM / Winograd / narrow gradients
    y = pointwise_conv(x, kernel, stride)        # == lax 1x1 conv, as one matmul
    y = conv_transpose(z, kernel, stride)        # == lax.conv_transpose 'SAME' (nn.ConvTranspose)

1x1 convs (EfficientNet's expand / project / head, ResNet's shortcuts and bottlenecks): XLA:CPU
runs a 1x1 conv 1.4-2.7x slower than the same matmul (which it hands to YNNPACK); ``conv`` with
a 1x1 kernel and no padding is ``pointwise_conv``, a matmul on every backend.

Conv kernel gradients (ResNet's ``Conv``): XLA:CPU's autodiff of a conv computes dL/dkernel 1-13x
slower than the forward conv; ``conv2d`` computes it as GEMMs of stacked shifted slices of the
input, a few images at a time; see ``conv2d``. Its forward conv and both gradients are Winograd
F(4x4 or 2x2, 3x3) for 3x3 stride-1 convs of 64+ channels on maps up to 128 px (``winograd``).

Narrow convs (S2's and S1's autoencoders: 1-4 input or few output channels), where XLA:CPU's
conv and its gradients run at 15-40 GFLOP/s: stride-1 convs with 4 or fewer input channels are
one GEMM of the stacked input taps, and those whose outputs are at most half their inputs (up to
64) a GEMM to every tap's output followed by a sum of shifted slices (``_narrow_form``); every
stride-1 input gradient is the forward conv of the cotangent with the flipped kernel (so it takes
these forms too), and a stride-2 conv of up to 16 input channels gets its input gradient in the
sub-pixel form (``_stride2_input_grad``). CAEv1's train step 887 -> 1283 img/s.

Small maps (ResNet's last stage): wide convs into maps of at most 8x8 that Winograd does not take
(odd sizes, stride 2) are one GEMM per tap over the output pixels whose input is inside the map,
no multiply by the padding (``_valid_taps_conv``; its gradients the same GEMMs transposed):
ResNet-18's last stage at 96 px 1.3-1.6x faster (batch 32: 37.8 -> 28.1 ms, 128: 130 -> 83)."""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
from jax import lax

from aeclust_jax.models.layers import native
from aeclust_jax.models.layers.base import (_DN, _conv, _out_size, _stacked_taps, _tap, _taps,
                                            cpu_kernels, one_program)
from aeclust_jax.models.layers.winograd import (_winograd_kernel_grad, _winograd_tile,
                                                winograd_conv3x3)


@one_program("stride")
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


# Bytes of stacked taps (images x Ho x Wo x k*k*Cin floats) one step of the kernel gradient's
# batch loop holds; see conv2d.
_WGRAD_CHUNK_BYTES = 4 << 20


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


# Small maps (ResNet's last stage: 3x3 maps at 96 px, 7x7 at 224 px; stride-2 convs into maps of
# at most 8x8), where a third or more of a conv's multiplies are by the zero padding (a 3x3 map
# and a 3x3 kernel: 49 of the 81 tap-pixel pairs are inside the map) and XLA:CPU's conv does
# useful multiplies at under half the matmul rate: one GEMM per tap over the output pixels whose
# input pixel for that tap is inside the map, (N * rows * cols, Cin) @ kernel[i, j], each added
# into its rows and columns.
# Measured forward, ms (XLA conv / valid taps), 2026-12-01 Intel host. Batch 32: 3x3x512 -> 512
# 9.8 / 5.2; 7x7x512 -> 512 44.5 / 31.6; s2 6x6x256 -> 512 4.5 / 3.7; s2 12x12x128 -> 256 4.1-4.2 /
# 4.6-4.8 (slower, but taken: 36 outputs); s2 24x24x64 -> 128 6.2-6.7 / 4.8-6.3 (not taken: 144).
# Batch 128: 3x3x512 34-36 / 16-17; s2 6x6x256 -> 512 16.6 / 12-15; s2 16x16x128 -> 256 39 / 34;
# s2 8x8x256 -> 512 29 / 31 (its input gradient 31.8 / 22.7, kernel gradient 36.3 / 27.8). Both
# gradients are the same GEMMs; the kernel gradient per tap, 3x3x512 at batch 32 7.2 / 5.9 ms.
_VALID_TAPS_MAX_PIXELS = 64
_VALID_TAPS_MIN_CHANNELS = 64


def _valid_tap_regions(x_shape: tuple, kernel_shape: tuple, stride: int, pads: tuple) -> list:
    """Per tap (i, j) that reads any pixel inside the map: (i, j, (r0, r1), (c0, c1)), the output
    rows r0:r1 and columns c0:c1 whose input pixel (s * r + i - top, s * c + j - left) is inside
    x_shape (N, H, W, Cin)."""
    ho, wo = _out_size(x_shape, kernel_shape, pads, stride)

    def span(k, pad, size, out):      # outputs o with 0 <= s * o + k - pad < size
        return -(-max(0, pad - k) // stride), min(out, (size - 1 + pad - k) // stride + 1)

    regions = []
    for i in range(kernel_shape[0]):
        for j in range(kernel_shape[1]):
            rows, cols = span(i, pads[0][0], x_shape[1], ho), span(j, pads[1][0], x_shape[2], wo)
            if rows[1] > rows[0] and cols[1] > cols[0]:
                regions.append((i, j, rows, cols))
    return regions


def _valid_tap_input(x: jax.Array, i: int, j: int, rows: tuple, cols: tuple, stride: int,
                     pads: tuple) -> jax.Array:
    """x's pixels that tap (i, j) reads for the output rows and columns of its region:
    (N, r1 - r0, c1 - c0, Cin)."""
    top, left = rows[0] * stride + i - pads[0][0], cols[0] * stride + j - pads[1][0]
    return x[:, top:top + (rows[1] - rows[0] - 1) * stride + 1:stride,
             left:left + (cols[1] - cols[0] - 1) * stride + 1:stride]


def _valid_taps_conv(x: jax.Array, kernel: jax.Array, stride: int, pads: tuple) -> jax.Array:
    """Correlation as one GEMM per tap over its valid region (``_valid_tap_regions``), each
    zero-padded into place and summed: x (N, H, W, Cin), kernel (kh, kw, Cin, Cout) ->
    (N, Ho, Wo, Cout); no multiply by the padding."""
    ho, wo = _out_size(x.shape, kernel.shape, pads, stride)
    y = jnp.zeros((x.shape[0], ho, wo, kernel.shape[-1]), x.dtype)
    for i, j, rows, cols in _valid_tap_regions(x.shape, kernel.shape, stride, pads):
        part = jnp.einsum("nhwc,co->nhwo", _valid_tap_input(x, i, j, rows, cols, stride, pads),
                          kernel[i, j])
        y = y + jnp.pad(part, ((0, 0), (rows[0], ho - rows[1]), (cols[0], wo - cols[1]), (0, 0)))
    return y


def _valid_taps_kernel_grad(x: jax.Array, ct: jax.Array, kernel_shape: tuple, stride: int,
                            pads: tuple) -> jax.Array:
    """dL/dkernel (kh, kw, Cin, Cout) of ``_valid_taps_conv``: per tap, its input pixels^T (Cin,
    rows) @ the cotangent's pixels of its region (rows, Cout); taps that read only padding: 0."""
    kh, kw, cin, cout = kernel_shape
    grad = jnp.zeros(kernel_shape, ct.dtype)
    for i, j, rows, cols in _valid_tap_regions(x.shape, kernel_shape, stride, pads):
        xs = _valid_tap_input(x, i, j, rows, cols, stride, pads).reshape(-1, cin)
        cs = ct[:, rows[0]:rows[1], cols[0]:cols[1]].reshape(-1, cout)
        grad = grad.at[i, j].set(xs.T @ cs)
    return grad


def _use_valid_taps(x_shape: tuple, kernel_shape: tuple, stride: int, pads: tuple) -> bool:
    """Wide convs (64+ channels in and out, not 1x1) into maps of at most 64 pixels."""
    kh, kw, cin, cout = kernel_shape
    ho, wo = _out_size(x_shape, kernel_shape, pads, stride)
    return ((kh, kw) != (1, 1) and min(cin, cout) >= _VALID_TAPS_MIN_CHANNELS
            and ho * wo <= _VALID_TAPS_MAX_PIXELS)


def _conv_tile(x_shape: tuple, kernel_shape: tuple, stride: int, pads: tuple) -> int:
    """``_winograd_tile`` of a conv2d (0 unless 3x3, stride 1)."""
    kh, kw, cin, cout = kernel_shape
    if (kh, kw) != (3, 3) or stride != 1:
        return 0
    return _winograd_tile(x_shape[1] + sum(pads[0]) - 2, x_shape[2] + sum(pads[1]) - 2, cin, cout)


# The compiled direct conv (``native.direct_conv``) takes the convs that neither Winograd nor the
# small-map per-tap GEMMs do, up to this kernel window (kh * kw * Cin floats for each output: the
# kernel block of 32 outputs, 147 KB, stays in a core's L2). Measured on a 2-core AVX2 host, ms
# (XLA's conv or the GEMM form before / direct / PyTorch channels-last, forward):
#   ResNet-18 stem 7x7 / 2, 96 px 3 -> 64, batch 32      16.4 / 8.0 / 8.9
#   EfficientNet stem 3x3 / 2, 224 px 3 -> 32, batch 32  13.0 / 6.6 / 4.8
#   VGG's first conv, 224 px 3 -> 64, batch 8 ("taps")   20.0 / 9.7 / 11.2
#   3x3 / 2, 48 px 64 -> 128, batch 32                   26.6 / 17.0 / 16.3
#   3x3 / 2, 32 px 64 -> 128, batch 128                  70.6 / 31.7 / 28.4
#   3x3 / 2, 24 px 128 -> 256, batch 32                  19.1 / 18.2 / 15.5
#   3x3, 32 px 16 -> 32, batch 128                       17.6 / 7.7 / 6.8
#   3x3, 32 px 32 -> 16, batch 128 ("shift")             15.6 / 10.2 / 7.0
# and it lost where it is not used: Winograd's 64 -> 64 at 24 px 6.1 / 8.2, small-map per-tap
# GEMMs 512 -> 512 at 3 px 6.6 / 16.4, 256 -> 512 / 2 at 12 px 16.2 / 19.6.
_DIRECT_MAX_WINDOW = 1152


def _use_direct(x_shape: tuple, kernel_shape: tuple, stride: int, pads: tuple) -> bool:
    """Whether the compiled direct conv takes this conv (after Winograd and the per-tap GEMMs):
    not 1x1, outputs a multiple of 8, zero pads, a window of at most ``_DIRECT_MAX_WINDOW``."""
    kh, kw, cin, cout = kernel_shape
    return ((kh, kw) != (1, 1) and kh * kw * cin <= _DIRECT_MAX_WINDOW
            and native.direct_block(cout) > 0 and min(min(p) for p in pads) >= 0
            and not _use_valid_taps(x_shape, kernel_shape, stride, pads) and native.available())


def _form(x_shape: tuple, kernel_shape: tuple, stride: int, pads: tuple) -> str:
    """How conv2d computes a conv, in this order of preference: "winograd" (``_winograd_tile``:
    3x3 stride 1, 64+ channels), "direct" (``_use_direct``: the compiled kernel, on the CPU),
    "taps" or "shift" (``_narrow_form``), "valid_taps" (``_use_valid_taps``: small maps), else
    "xla"."""
    if _conv_tile(x_shape, kernel_shape, stride, pads):
        return "winograd"
    if _use_direct(x_shape, kernel_shape, stride, pads):
        return "direct"
    narrow = _narrow_form(x_shape, kernel_shape, stride)
    if narrow:
        return narrow
    return "valid_taps" if _use_valid_taps(x_shape, kernel_shape, stride, pads) else "xla"


def _conv_forward(x: jax.Array, kernel: jax.Array, stride: int, pads: tuple) -> jax.Array:
    """conv2d's values, in the form ``_form`` picks."""
    form = _form(x.shape, kernel.shape, stride, pads)
    if form == "winograd":
        return winograd_conv3x3(x, kernel, pads, _conv_tile(x.shape, kernel.shape, stride, pads))
    if form == "direct":
        return native.direct_conv(x, kernel, stride, pads)
    if form == "taps":
        return _taps_conv(x, kernel, pads)
    if form == "shift":
        return _shift_conv(x, kernel, pads)
    if form == "valid_taps":
        return _valid_taps_conv(x, kernel, stride, pads)
    return _conv(x, kernel, pads, stride)


@one_program("stride", "pads")
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
    gradient in sub-pixel form (``_stride2_input_grad``). Wide convs into maps of at most 64
    pixels that Winograd does not take: per-tap GEMMs over the valid pixels ("valid_taps"), both
    gradients included. ``_form`` makes the choice."""
    return _conv2d(x, kernel, stride, pads, native.enabled())


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv2d(x: jax.Array, kernel: jax.Array, stride: int, pads: tuple, native_on: bool) -> jax.Array:
    """``conv2d`` with its kernel setting as a static argument: JAX traces a custom VJP's rules
    once per shape and static arguments, whatever the environment says then."""
    with native.forced(native_on):
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
    # conv2d's custom-VJP conv: ``conv_transpose`` differentiates through this function, and the
    # compiled kernels ``_conv_forward`` may pick have no autodiff rule of their own
    dxs = _conv2d(ct, flipped, 1, ((dh - 1, dh - 1), (dw - 1, dw - 1)), native.enabled())
    hs, ws = ho + dh - 1, wo + dw - 1                    # the space-to-depth map's size
    dxp = dxs.reshape(n, hs, ws, 2, 2, c).transpose(0, 1, 3, 2, 4, 5).reshape(n, 2 * hs, 2 * ws, c)
    # the padded input's rows past 2 * hs are read by no output: their gradient is zero
    dxp = jnp.pad(dxp, ((0, 0), (0, max(0, pt + h - 2 * hs)), (0, max(0, pl + w - 2 * ws)), (0, 0)))
    return dxp[:, pt:pt + h, pl:pl + w]


def _conv2d_fwd(x, kernel, stride, pads, native_on):
    if _narrow_form(x.shape, kernel.shape, stride) == "taps":
        taps = _stacked_taps(x, kernel.shape, pads)     # kept: the kernel gradient is taps^T @ ct
        return _taps_conv(x, kernel, pads, taps), (x, kernel, taps)
    with native.forced(native_on):
        return _conv_forward(x, kernel, stride, pads), (x, kernel, None)


def _conv2d_bwd(stride, pads, native_on, res, ct):
    with native.forced(native_on):
        return _conv2d_grads(stride, pads, res, ct)


def _conv2d_grads(stride, pads, res, ct):
    """(dL/dx, dL/dkernel) of ``conv2d`` for the cotangent ct (N, Ho, Wo, Cout)."""
    x, kernel, taps = res
    cin, cout = kernel.shape[2:]
    if _form(x.shape, kernel.shape, stride, pads) == "valid_taps":   # its GEMMs transposed
        dx = jax.linear_transpose(lambda t: _valid_taps_conv(t, kernel, stride, pads), x)(ct)[0]
        return dx, _valid_taps_kernel_grad(x, ct, kernel.shape, stride, pads)
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
        m = _conv_tile(ct.shape, flipped.shape, 1, flipped_pads)
        dx = (winograd_conv3x3(ct, kernel[::-1, ::-1], flipped_pads, m, swap_io=True) if m
              else _conv_forward(ct, flipped, 1, flipped_pads))
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


_conv2d.defvjp(_conv2d_fwd, _conv2d_bwd)


# XLA:CPU (jax 0.10.2, its convs run by YNNPACK) is 3-12x slower on a conv of 3 input channels
# (an RGB image) with 24 or 32 outputs than on the same conv with a fourth, zero input channel:
# EfficientNet's stem (3x3 / 2, 224 px -> 32, batch 32) 23 vs 8 ms; 3x3 convs with 24 outputs
# 64 vs 5-7 ms. With 16, 48 or 64 outputs (the CAEs', ResNet's and VGG's first convs) 3 channels
# are as fast or faster, so only these widths get the zero channel. The compiled direct conv
# (``_use_direct``), where it runs, needs no such channel: EfficientNet's stem 6.6 ms with 3, 8.8
# with 4.
_CPU_RGB_PADDED_OUTPUTS = (24, 32)


def conv(x: jax.Array, kernel: jax.Array, stride: int = 1,
         pads: tuple = ((0, 0), (0, 0))) -> jax.Array:
    """Correlation NHWC x HWIO, stride (s, s), explicit pads ((top, bottom), (left, right)):
    x (N, H, W, Cin), kernel (kh, kw, Cin, Cout) -> (N, Ho, Wo, Cout), the values of
    ``lax.conv_general_dilated``, through the fastest path: an unpadded 1x1 kernel is
    ``pointwise_conv`` (a matmul) everywhere, other kernels ``conv2d`` (GEMM gradients) on XLA:CPU
    (``cpu_kernels()``; an RGB input with 24 or 32 outputs that the direct conv does not take
    gets a zero fourth channel, see ``_CPU_RGB_PADDED_OUTPUTS``) and XLA's conv elsewhere."""
    pads = tuple(tuple(int(v) for v in p) for p in pads)
    return _conv_program(x, kernel, int(stride), pads)


@one_program("stride", "pads")
def _conv_program(x: jax.Array, kernel: jax.Array, stride: int, pads: tuple) -> jax.Array:
    """``conv`` with pads as nested tuples of ints (hashable: a static argument)."""
    if kernel.shape[:2] == (1, 1) and not any(any(p) for p in pads):
        return pointwise_conv(x, kernel, stride)
    if cpu_kernels():
        if x.shape[-1] == 3 and kernel.shape[-1] in _CPU_RGB_PADDED_OUTPUTS and \
                not _use_direct(x.shape, kernel.shape, stride, pads):    # direct: 3 is faster
            x = jnp.pad(x, ((0, 0), (0, 0), (0, 0), (0, 1)))
            kernel = jnp.pad(kernel, ((0, 0), (0, 0), (0, 1), (0, 0)))
        return conv2d(x, kernel, stride, pads)
    return _conv(x, kernel, pads, stride)


@one_program("stride")
def conv_transpose(z: jax.Array, kernel: jax.Array, stride: int) -> jax.Array:
    """``lax.conv_transpose(z, kernel, (s, s), "SAME")`` (flax's ``nn.ConvTranspose`` with
    padding 'SAME', no kernel flip): z (N, h, w, Cin), kernel (kh, kw, Cin, Cout) ->
    (N, s*h, s*w, Cout). On XLA:CPU a stride-2 one with kernels of 2+ taps is the input gradient
    of the stride-2 conv it transposes, in sub-pixel form (``_stride2_input_grad``: a stride-1
    conv of z and depth-to-space, not a conv over the zero-dilated z; its gradients: conv2d's
    for that conv, autodiff for the rest); elsewhere lax's. DSC's decoder: its fine-tune step 1.2x with ``Conv`` in the
    encoder (COIL-20)."""
    kh, kw = kernel.shape[:2]
    if not (cpu_kernels() and stride == 2 and min(kh, kw) >= 2):
        return lax.conv_transpose(z, kernel, (stride, stride), "SAME", dimension_numbers=_DN)
    n, h, w, _ = z.shape
    # the stride-2 conv of a (2h, 2w) map with TF 'SAME' pads whose transpose this is
    pads = tuple(((k - 2) // 2, k - 2 - (k - 2) // 2) for k in (kh, kw))
    flipped = kernel[::-1, ::-1].transpose(0, 1, 3, 2)
    return _stride2_input_grad(z, flipped, (n, 2 * h, 2 * w, kernel.shape[-1]), pads)
