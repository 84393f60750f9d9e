"""Whole-model gradients of the fast S1 networks (models/layers/: sub-pixel up+conv, reshape max
pool with its own VJP, einsum kernel gradients) against a literal flax-only network
(tests/literal_skip_ae.py: nn.Conv, nn.max_pool, jnp.repeat, nn.ConvTranspose), on real MNIST
images, whose flat backgrounds make whole pooling windows tie, with nonzero biases."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aeclust_jax.data import load
from aeclust_jax.models import get_model
from literal_skip_ae import LiteralSkipAE

CASES = [("cae", 28), ("cae_skip", 28), ("dae_skip", 28), ("cae", 100), ("dae_skip", 100)]


@pytest.fixture(scope="module")
def mnist_test_images(real_manual_dir):
    """16 real MNIST test digits as float32 (16, 28, 28, 1) in [0, 1]."""
    ds = load("mnist", "test", manual_dir=real_manual_dir / "mnist")
    return ds.images[:16].astype(np.float32) / 255.0


def _images(digits, size, noisy):
    """(16, size, size, 1): the digits, at 100 px as 3x nearest-upscaled and zero-padded glyphs;
    dae inputs get the training step's corruption (x + 0.5 N(0, 1), clipped: ties at 0 and 1)."""
    x = digits
    if size == 100:
        x = np.pad(x.repeat(3, 1).repeat(3, 2), ((0, 0), (8, 8), (8, 8), (0, 0)))
    if noisy:
        rng = np.random.default_rng(0)
        x = np.clip(x + 0.5 * rng.normal(size=x.shape), 0, 1).astype(np.float32)
    return jnp.asarray(x)


def _nonzero_biases(params, key):
    """Every bias set to U(-0.1, 0.1): positive and negative, so ReLUs both pass and cut."""
    leaves, tree = jax.tree_util.tree_flatten_with_path(params)
    keys = jax.random.split(key, len(leaves))
    out = [jax.random.uniform(k, v.shape, v.dtype, -0.1, 0.1)
           if jax.tree_util.keystr(p).endswith("['bias']") else v
           for (p, v), k in zip(leaves, keys)]
    return jax.tree_util.tree_unflatten(tree, out)


def _loss(apply, x, ct):
    """Reconstruction MSE plus a random linear readout of latent+skip (so every parameter,
    the latent_skip heads included, gets a gradient)."""
    def f(params):
        recon, latent_skip = apply(params, x)
        return jnp.mean((recon - x) ** 2) + jnp.mean(latent_skip * ct)
    return jax.jit(jax.value_and_grad(f))


@pytest.mark.realdata
@pytest.mark.parametrize("name,size", CASES)
def test_model_gradients_equal_literal_flax_network(mnist_test_images, name, size):
    x = _images(mnist_test_images, size, noisy=name.startswith("dae"))
    ours = get_model(name, image_shape=(size, size, 1))
    ref = LiteralSkipAE(size=size, skip=name.endswith("_skip"))
    params = ours.init(jax.random.key(0), x[:1], with_latent_skip=True)["params"]
    params = _nonzero_biases(params, jax.random.key(1))
    # the same parameter tree: names and shapes
    ref_shapes = jax.eval_shape(ref.init, jax.random.key(0), x[:1])["params"]
    assert jax.tree.map(jnp.shape, params) == jax.tree.map(jnp.shape, ref_shapes)
    ct = jax.random.normal(jax.random.key(2), (len(x), 30))

    def ours_apply(p, v):
        out = ours.apply({"params": p}, v, with_latent_skip=True)
        return out.recon, out.latent_skip

    def ref_apply(p, v):
        recon, _, latent_skip = ref.apply({"params": p}, v)
        return recon, latent_skip

    (l_ours, g_ours), (l_ref, g_ref) = _loss(ours_apply, x, ct)(params), _loss(ref_apply, x, ct)(params)
    np.testing.assert_allclose(l_ours, l_ref, rtol=1e-5)
    flat_ours = jax.tree_util.tree_flatten_with_path(g_ours)[0]
    flat_ref = jax.tree.leaves(g_ref)
    for (path, go), gr in zip(flat_ours, flat_ref):
        scale = float(jnp.abs(gr).max())
        assert scale > 0, jax.tree_util.keystr(path)       # every parameter is exercised
        err = float(jnp.abs(go - gr).max()) / scale
        assert err < 1e-4, f"{name} {size}px {jax.tree_util.keystr(path)}: relative error {err:.2e}"
