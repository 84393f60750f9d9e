"""2x2 max pooling whose gradient goes to each window's first maximum, as XLA's does, computed
by fused elementwise ops with a hand-written gradient on XLA:CPU."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from aeclust_jax.models.layers.base import cpu_kernels, one_program


def _pool_blocks(x: jax.Array) -> jax.Array:
    """(N, H, W, C) -> (N, ceil(H/2), 2, ceil(W/2), 2, C), odd sizes padded with -inf."""
    n, h, w, c = x.shape
    if h % 2 or w % 2:
        x = jnp.pad(x, ((0, 0), (0, h % 2), (0, w % 2), (0, 0)), constant_values=-jnp.inf)
    return x.reshape(n, x.shape[1] // 2, 2, x.shape[2] // 2, 2, c)


@one_program()
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
