"""models.layers.BatchNorm equals nn.BatchNorm (variables, values, running statistics), and the
hand-written gradient of batch_norm_train equals float64 autodiff of a plain two-pass batch norm,
on channels with ties, zeros, a constant (variance 0) and one lone value."""

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aeclust_jax.models.layers import BatchNorm, batch_norm_train
from aeclust_jax.models import get_model


def _channels(shape, seed=0, constant=0.5):
    """(..., 6) float32: normal, small integers (ties), zeros, a constant (variance 0), one
    nonzero value, normal around 5 (an offset mean). The constant is 0.5, whose E[x^2] - E[x]^2
    is exactly 0 in float32 too (0.3 gives ~1e-8, which moves rsqrt(var + 1e-5) by 0.1-1%: a
    difference of the forward statistics that nn.BatchNorm shares, tested against it below)."""
    rng = np.random.default_rng(seed)
    lone = np.zeros(shape)
    lone.flat[0] = 2.0
    cols = [rng.normal(size=shape), rng.integers(-2, 3, shape), np.zeros(shape),
            np.full(shape, constant), lone, 5.0 + rng.normal(size=shape)]
    return np.stack(cols, -1).astype(np.float32)


def _reference(x, scale, bias, epsilon):
    """Batch norm written plainly (two-pass variance): (y, mean, var)."""
    axes = tuple(range(x.ndim - 1))
    mean = jnp.mean(x, axes)
    var = jnp.mean((x - mean) ** 2, axes)
    return (x - mean) / jnp.sqrt(var + epsilon) * scale + bias, mean, var


@pytest.mark.parametrize("shape", [(4, 5, 5), (3, 1, 1), (7,)])
@pytest.mark.parametrize("cotangents", ["normal", "integers", "output_only"])
@pytest.mark.parametrize("epsilon", [1e-5, 1e-3])
def test_batch_norm_train_gradient_equals_float64_autodiff(shape, cotangents, epsilon):
    """Values and the gradients wrt x, scale and bias under cotangents on all three outputs (y,
    mean, var), or on y alone as in training; against jax.vjp of ``_reference`` in float64."""
    x = _channels(shape)
    rng = np.random.default_rng(len(shape))
    scale = rng.normal(size=6).astype(np.float32)
    bias = rng.normal(size=6).astype(np.float32)
    draw = (lambda s: rng.integers(-2, 3, s)) if cotangents == "integers" else \
        (lambda s: rng.normal(size=s))
    cts = [draw(x.shape), draw(6), draw(6)]
    if cotangents == "output_only":
        cts[1:] = [np.zeros(6), np.zeros(6)]
    cts = [np.asarray(c, np.float32) for c in cts]

    outs, vjp = jax.vjp(lambda *a: batch_norm_train(*a, epsilon), x, scale, bias)
    grads = jax.jit(vjp)(tuple(jnp.asarray(c) for c in cts))
    with jax.enable_x64(True):
        as64 = lambda a: jnp.asarray(a, jnp.float64)   # noqa: E731
        ref_outs, ref_vjp = jax.vjp(lambda *a: _reference(*a, epsilon), *map(as64, (x, scale, bias)))
        ref_grads = ref_vjp(tuple(map(as64, cts)))
        ref_outs, ref_grads = ([np.asarray(r) for r in rs] for rs in (ref_outs, ref_grads))
    for got, ref in zip(list(outs) + list(grads), ref_outs + ref_grads):
        assert got.shape == ref.shape and got.dtype == jnp.float32
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-5 * max(1.0, np.abs(ref).max()))


@pytest.mark.parametrize("momentum,epsilon", [(0.9, 1e-5), (0.99, 1e-3)])
def test_batch_norm_module_equals_flax_batch_norm(momentum, epsilon):
    """Same variables (names, shapes, initial values), the same training-mode values and
    updated running statistics (none while initialising), the same eval-mode values; gradients
    of a training step through it equal nn.BatchNorm's autodiff."""
    x = jnp.asarray(_channels((8, 4, 4), seed=1, constant=0.3))
    ours = BatchNorm(momentum=momentum, epsilon=epsilon)
    flax_bn = nn.BatchNorm(use_running_average=False, momentum=momentum, epsilon=epsilon)
    v_ours, v_flax = ours.init(jax.random.key(0), x), flax_bn.init(jax.random.key(0), x)
    assert jax.tree.structure(v_ours) == jax.tree.structure(v_flax)
    assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(v_ours), jax.tree.leaves(v_flax)))
    params = {"scale": jnp.linspace(0.5, 2.0, 6), "bias": jnp.linspace(-1.0, 1.0, 6)}
    stats = {"mean": jnp.linspace(-0.2, 0.2, 6), "var": jnp.linspace(0.5, 1.5, 6)}
    variables = {"params": params, "batch_stats": stats}
    ct = jax.random.normal(jax.random.key(2), x.shape)

    def step(module):
        def loss(p):
            y, new = module.apply({"params": p, "batch_stats": stats}, x, mutable=["batch_stats"])
            return jnp.sum(y * ct), (y, new["batch_stats"])
        return jax.grad(loss, has_aux=True)(params)

    # jitted, as a training step runs (both sides: the constant channel's variance, ~1e-8 from
    # rounding, and so its gradient depend on the order XLA sums in)
    (g, (y, new)), (g_ref, (y_ref, new_ref)) = jax.jit(step, static_argnums=0)(ours), \
        jax.jit(step, static_argnums=0)(flax_bn)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-5 * float(jnp.abs(y_ref).max()))
    for key in ("mean", "var"):
        np.testing.assert_allclose(new[key], new_ref[key], rtol=1e-6, atol=1e-7)
    for key in ("scale", "bias"):
        np.testing.assert_allclose(g[key], g_ref[key], rtol=0,
                                   atol=1e-5 * float(jnp.abs(g_ref[key]).max()))
    eval_ours = BatchNorm(use_running_average=True, momentum=momentum, epsilon=epsilon)
    eval_flax = nn.BatchNorm(use_running_average=True, momentum=momentum, epsilon=epsilon)
    np.testing.assert_array_equal(jax.jit(eval_ours.apply)(variables, x),
                                  jax.jit(eval_flax.apply)(variables, x))


def test_resnet_keeps_flax_batch_norm_variables():
    """ResNet's batch norms are layers.BatchNorm with nn.BatchNorm's variable tree, so weight
    imports and earlier checkpoints load unchanged."""
    model = get_model("resnet18", num_classes=10, small_stem=True)
    variables = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    assert variables["batch_stats"]["bn1"] == {"mean": jax.ShapeDtypeStruct((64,), jnp.float32),
                                               "var": jax.ShapeDtypeStruct((64,), jnp.float32)}
    assert set(variables["params"]["layer1_0"]["bn2"]) == {"scale", "bias"}
