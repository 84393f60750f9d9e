"""Batch norm with ``nn.BatchNorm``'s variables and values, and a hand-written training gradient.

``nn.BatchNorm``'s gradient in training mode is autodiff through its statistics: on XLA:CPU
several passes over the map for the two means, the variance and the normalisation. The two
sums a batch-norm backward needs (of the cotangent, and of the cotangent times x) take one pass
and dx another: at ResNet-18's 32-px layer1 (128 x 32 x 32 x 64), train-mode batch norm + ReLU
forward and backward 8.2 ms with this, 15.4 with ``nn.BatchNorm`` (PyTorch channels-last 19.8);
128 x 8 x 8 x 256: 2.1 / 5.0 / 4.2. The ResNet-18 train step: +2% (docs/natural_images.md).
"""

from __future__ import annotations

from functools import partial

import jax
import jax.numpy as jnp
import flax.linen as nn
from jax import lax

from aeclust_jax.models.layers.base import one_program


def _channel_sums(*arrays: jax.Array) -> list[jax.Array]:
    """Per-channel sums over every axis but the last: each (..., C) -> (C,)."""
    return [jnp.sum(a, axis=tuple(range(a.ndim - 1))) for a in arrays]


def _statistics(x: jax.Array) -> tuple[jax.Array, jax.Array]:
    """The biased batch mean and variance per channel, as nn.BatchNorm computes them
    (``use_fast_variance``: E[x^2] - E[x]^2, clipped at 0): x (..., C) -> ((C,), (C,))."""
    m = x.size // x.shape[-1]
    s1, s2 = _channel_sums(x, x * x)
    mean = s1 / m
    return mean, jnp.maximum(0.0, s2 / m - mean * mean)


@partial(jax.custom_vjp, nondiff_argnums=(3,))
def batch_norm_train(x: jax.Array, scale: jax.Array, bias: jax.Array,
                     epsilon: float) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Training-mode batch norm: x (..., C), scale and bias (C,) -> (y (..., C), mean (C,),
    var (C,)) with y = (x - mean) * rsqrt(var + epsilon) * scale + bias over the batch
    statistics of x (every axis but the last). The gradient is written by hand (two passes over
    x) and covers all three outputs."""
    return _batch_norm_train_fwd(x, scale, bias, epsilon)[0]


def _normalize(x, mean, var, scale, bias, epsilon):
    """(x - mean) * rsqrt(var + epsilon) * scale + bias, as nn.BatchNorm rounds it, and
    rsqrt(var + epsilon): x (..., C), the rest (C,)."""
    inv = lax.rsqrt(var + epsilon)
    return (x - mean) * (inv * scale) + bias, inv


def _batch_norm_train_fwd(x, scale, bias, epsilon):
    mean, var = _statistics(x)
    y, inv = _normalize(x, mean, var, scale, bias, epsilon)
    return (y, mean, var), (x, scale, mean, inv)


def _batch_norm_train_bwd(epsilon, res, cts):
    """With xhat = (x - mean) * inv and m values per channel:
    dbias = sum dy, dscale = sum dy * xhat, and
    dx = scale * inv * (dy - dbias / m - xhat * dscale / m) + dmean / m + 2 dvar (x - mean) / m,
    as one elementwise pass dy * k + x * c1 + c0 with per-channel k, c1, c0. The sums read x,
    not x - mean: centred, XLA writes x - mean out as a whole map (10.9 vs 7.3 ms at 128 x 32 x
    32 x 64); the price is float32 cancellation in sum(dy x) - mean sum(dy), e.g. 5e-3 instead
    of 0 for dscale of a constant channel of 3.0 whose other channels' dscale are ~20-40.
    The variance's clip at 0 is not differentiated (where it binds, x - mean is ~0 anyway)."""
    x, scale, mean, inv = res
    dy, dmean, dvar = cts
    m = x.size // x.shape[-1]
    dbias, dy_x = _channel_sums(dy, dy * x)
    dscale = (dy_x - mean * dbias) * inv
    k = scale * inv
    c1 = 2.0 * dvar / m - k * inv * dscale / m
    c0 = dmean / m - k * dbias / m - mean * c1
    dx = dy * k + x * c1 + c0
    return dx, dscale, dbias


batch_norm_train.defvjp(_batch_norm_train_fwd, _batch_norm_train_bwd)


@one_program("epsilon")
def _train_program(x, scale, bias, epsilon):
    """``batch_norm_train`` as one program for the module (``one_program``: eager calls compile
    once). ``batch_norm_train`` itself stays op by op when called eagerly: fused, its float32
    statistics round differently (up to 6e-5 relative against the float64 reference)."""
    return batch_norm_train(x, scale, bias, epsilon)


@one_program("epsilon")
def _eval_program(x, mean, var, scale, bias, epsilon):
    """Evaluation-mode batch norm over the running statistics as one program."""
    return _normalize(x, mean, var, scale, bias, epsilon)[0]


class BatchNorm(nn.Module):
    """``nn.BatchNorm(use_running_average, momentum, epsilon)`` over the last axis, with its
    variables ('params': ``scale`` ones and ``bias`` zeros (C,); 'batch_stats': ``mean`` zeros
    and ``var`` ones (C,)), its values and its running-average update (the biased batch
    variance; none while initialising), so checkpoints and weight imports are shared. Training
    mode (``use_running_average=False``, needs ``mutable=["batch_stats"]``) runs
    ``batch_norm_train``. x (..., C) float32 -> (..., C)."""
    use_running_average: bool = False
    momentum: float = 0.99
    epsilon: float = 1e-5

    @nn.compact
    def __call__(self, x: jax.Array) -> jax.Array:
        c = x.shape[-1]
        ra_mean = self.variable("batch_stats", "mean", lambda: jnp.zeros((c,), jnp.float32))
        ra_var = self.variable("batch_stats", "var", lambda: jnp.ones((c,), jnp.float32))
        scale = self.param("scale", nn.initializers.ones_init(), (c,), jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (c,), jnp.float32)
        if self.use_running_average:
            return _eval_program(x, ra_mean.value, ra_var.value, scale, bias, self.epsilon)
        y, mean, var = _train_program(x, scale, bias, self.epsilon)
        if not self.is_initializing():
            ra_mean.value = self.momentum * ra_mean.value + (1 - self.momentum) * mean
            ra_var.value = self.momentum * ra_var.value + (1 - self.momentum) * var
        return y
