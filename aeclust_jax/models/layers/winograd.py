"""Winograd F(m x m, 3 x 3) 3x3 stride-1 convolutions (m = 2 or 4) and their kernel gradient.

Used by ``convolution.conv2d`` for the forward conv and both gradients of 3x3 stride-1 convs
of 64+ channels on maps up to 128 px (``_winograd_tile``): 2.25x fewer multiplies for F(4x4);
VGG-16 extraction and ResNet-18's train step ~1.5x on XLA:CPU (docs/natural_images.md,
"Winograd 3x3 convs")."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax import lax

from aeclust_jax.models.layers import native
from aeclust_jax.models.layers.base import one_program


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


# Transforms whose tiles ((m + 2)^2 x tiles x C) take at least this many bytes run the compiled
# kernels (``native``): input transform at 128 x 32 x 32 x 64 (75 MB of tiles) 21 vs 36-40 ms,
# at 32 x 24 x 24 x 64 (11 MB) 2.5 vs 2.1 (AMD EPYC host, 2 cores, ms, compiled vs jnp;
# docs/natural_images.md "Compiled Winograd transforms"). Whole 3x3 convs below it lose too
# (the custom call also keeps XLA from fusing the transform into its producer), with streaming
# or cached stores alike: fwd 32x24x24x64 6.0-7.2 vs 5.8 ms, 32x12x12x128 5.8-6.2 vs 5.5-5.8;
# above it they win: 128x32x32x64 32-37 vs 42 ms, 128x16x16x128 27 vs 29-31 (2026-12-03).
_NATIVE_MIN_BYTES = 16 << 20


def _use_native(x: jax.Array, tile_elements: int) -> bool:
    """Whether a transform of x (channels last) with this many tile elements takes the compiled
    kernel: float32, channels a multiple of 8, at least _NATIVE_MIN_BYTES of tiles, and the
    kernels available here."""
    return (x.dtype == jnp.float32 and x.shape[-1] % 8 == 0
            and tile_elements * 4 >= _NATIVE_MIN_BYTES and native.available())


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
    if _use_native(x, a * a * n * th * tw * cin):
        return native.winograd_input(x, pads, m, th, tw), (n, th, tw, ho, wo)
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


@one_program("pads", "m", "swap_io")
def winograd_conv3x3(x: jax.Array, kernel: jax.Array, pads: tuple, m: int,
                     swap_io: bool = False) -> jax.Array:
    """3x3 stride-1 correlation by Winograd F(m x m, 3 x 3), m = 2 or 4: x (N, H, W, Cin),
    kernel (3, 3, Cin, Cout), pads ((top, bottom), (left, right)) -> (N, Ho, Wo, Cout) with
    Ho = H + top + bottom - 2: the values of ``lax.conv_general_dilated`` to float rounding
    (relative error ~1e-6 for m = 2, ~2e-5 for m = 4, vs ~1e-6 for XLA's conv). The input is cut
    into (m + 2)^2 tiles every m pixels (the last ones zero-padded), transformed as BT d B, one
    GEMM per tile position against G g G^T, (m + 2)^2 of them, and AT M A gives the m x m outputs:
    9 m^2 / (m + 2)^2 = 2.25x fewer multiplies for m = 4 (1.78x for m = 2), and (m + 2)^2 / m^2
    times the map's data through memory on each side of the GEMMs. Plain jnp: autodiff works
    (``conv2d``'s gradients are faster).

    swap_io: the kernel is (3, 3, Cout, Cin), used as its transpose over the last two axes
    (an input gradient's kernel): the GEMMs contract its last axis, so no transposed copy is
    fused into the kernel transform (that copy cost 37 ms of 75 at 4 x 4 x 512 -> 512, batch
    128)."""
    g, at = (np.asarray(t, np.float64) for t in _WINOGRAD[m][1:])
    a = m + 2
    cout = kernel.shape[2 if swap_io else 3]
    v, (n, th, tw, ho, wo) = _winograd_input(x, pads, m)
    u = _two_sided(g, kernel).reshape((a * a,) + kernel.shape[2:])       # G g G^T
    mm = lax.dot_general(v, u, (((2,), (2 if swap_io else 1,)), ((0,), (0,))))  # (a*a, tiles, Cout)
    if _use_native(mm, mm.size):
        return native.winograd_output(mm, n, ho, wo, m, th, tw)
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
