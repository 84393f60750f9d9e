"""S1 models: parameter counts pinned to the authors' Keras models, shapes, skips, upsampling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aeclust_jax.models import get_model
from aeclust_jax.models.skip_ae import is_recon_param, upsample2x
from aeclust_jax.train import count_params


def conv(k_in, k_out):      # 3x3 kernel + bias
    return 9 * k_in * k_out + k_out


def dense(n_in, n_out):
    return n_in * n_out + n_out


# 28x28 family (Keras autoencoder.count_params() of the MNIST code):
#   encoder convs 1->16, 16->8, 8->8            = 160 + 1160 + 584           = 1904
#   dense 128->128, 128->64, 64->30             = 16512 + 8256 + 1950        = 26718
#   decoder dense 30->64, 64->128               = 1984 + 8320                = 10304
#   decoder convs 8->8, 8->8, 8->16 valid, 16->1 = 584 + 584 + 1168 + 145    = 2481
#   total 41407; skips add Conv8(z1) 584 + ConvTranspose8(z2) 584 = 1168 -> 42575
MNIST_PLAIN = (conv(1, 16) + conv(16, 8) + conv(8, 8) + dense(128, 128) + dense(128, 64)
               + dense(64, 30) + dense(30, 64) + dense(64, 128) + conv(8, 8) + conv(8, 8)
               + conv(8, 16) + conv(16, 1))
MNIST_SKIP = MNIST_PLAIN + conv(8, 8) + conv(8, 8)
# 100x100 family (Hanja, AE_skip.py): z1 13x13x8 -> 1352 features
#   convs 1904 + dense 1352->1352 (1829256), 1352->676 (914628), 676->30 (20310)
#   + decoder dense 30->676 (20956), 676->1352 (915304) + decoder convs 2481 = 3704839;
#   its skips are identity adds (no parameters).
HANJA_PLAIN = (conv(1, 16) + conv(16, 8) + conv(8, 8) + dense(1352, 1352) + dense(1352, 676)
               + dense(676, 30) + dense(30, 676) + dense(676, 1352) + conv(8, 8) + conv(8, 8)
               + conv(8, 16) + conv(16, 1))


def test_hand_arithmetic():
    assert (MNIST_PLAIN, MNIST_SKIP, HANJA_PLAIN) == (41407, 42575, 3704839)


def _init(name, shape):
    model = get_model(name, image_shape=shape)
    x = jnp.linspace(0, 1, 2 * int(np.prod(shape))).reshape((2,) + shape)
    params = jax.jit(lambda k, v: model.init(k, v, with_latent_skip=True))(jax.random.key(0), x)["params"]
    return model, params, x


@pytest.mark.parametrize("name,shape,expected", [
    ("cae", (28, 28, 1), MNIST_PLAIN), ("dae", (28, 28, 1), MNIST_PLAIN),
    ("cae_skip", (28, 28, 1), MNIST_SKIP), ("dae_skip", (28, 28, 1), MNIST_SKIP),
    ("cae", (100, 100, 1), HANJA_PLAIN), ("dae_skip", (100, 100, 1), HANJA_PLAIN),
])
def test_param_counts_and_shapes(name, shape, expected):
    # shapes only (jax.eval_shape): no compilation, the counts are exact
    model = get_model(name, image_shape=shape)
    x = jax.ShapeDtypeStruct((2,) + shape, jnp.float32)
    params = jax.eval_shape(lambda k, v: model.init(k, v, with_latent_skip=True),
                            jax.random.key(0), x)["params"]
    assert count_params(params, is_recon_param) == expected
    # latent+skip projections Dense(30) on flatten(z1) and flatten(z2), outside the AE
    z1, z2 = (4 * 4 * 8, 7 * 7 * 8) if shape[0] == 28 else (13 * 13 * 8, 50 * 50 * 16)
    assert count_params(params) - expected == dense(z1, 30) + dense(z2, 30)
    out = jax.eval_shape(lambda p, v: model.apply({"params": p}, v, with_latent_skip=True), params, x)
    assert out.recon.shape == x.shape
    assert out.latent.shape == (2, 30) and out.latent_skip.shape == (2, 30)
    assert out.skips[0].shape == (2,) + ((4, 4, 8) if shape[0] == 28 else (13, 13, 8))
    assert out.skips[1].shape == (2,) + ((7, 7, 8) if shape[0] == 28 else (50, 50, 16))
    assert model.noise_std == (0.5 if name.startswith("dae") else 0.0)


def test_skips_reach_the_output_and_latent_skip_is_off_path():
    model, params, x = _init("cae_skip", (28, 28, 1))
    full = jax.jit(lambda p: model.apply({"params": p}, x, with_latent_skip=True))
    apply = lambda p: full(p).recon
    base = np.asarray(apply(params))
    assert base.min() >= 0 and base.max() <= 1               # sigmoid output
    # the skip conv on z1 changes the reconstruction ...
    p2 = jax.tree_util.tree_map_with_path(
        lambda path, v: v + 0.5 if "skip_conv_z1" in jax.tree_util.keystr(path) else v, params)
    assert np.abs(np.asarray(apply(p2)) - base).max() > 1e-4
    # ... the latent_skip projections do not (they exist only for the clustering feature)
    p3 = jax.tree_util.tree_map_with_path(
        lambda path, v: v + 0.5 if "latent_skip" in jax.tree_util.keystr(path) else v, params)
    np.testing.assert_array_equal(np.asarray(apply(p3)), base)
    # latent_skip = latent + selu(Dense(z1)) + selu(Dense(z2))
    out = full(params)
    z1, z2 = out.skips
    sel = jax.nn.selu
    lz = lambda name, z: sel(z.reshape(2, -1) @ params[name]["kernel"] + params[name]["bias"])
    expect = out.latent + lz("latent_skip_z1", z1) + lz("latent_skip_z2", z2)
    np.testing.assert_allclose(out.latent_skip, expect, rtol=1e-5, atol=1e-5)


def test_upsample_methods_agree():
    x = jax.random.normal(jax.random.key(1), (3, 5, 7, 4))
    ref = np.asarray(x).repeat(2, axis=1).repeat(2, axis=2)
    for method in ("repeat", "broadcast", "resize"):
        np.testing.assert_array_equal(np.asarray(upsample2x(x, method)), ref)
    with pytest.raises(ValueError, match="choices"):
        upsample2x(x, "bilinear")


def test_unsupported_image_shape():
    with pytest.raises(ValueError, match="28x28.*100x100"):
        get_model("cae", image_shape=(32, 32, 1))
    with pytest.raises(KeyError, match="choices"):
        get_model("cae_skipp")


@pytest.mark.parametrize("name,shape", [("cae", (28, 28, 1)), ("cae_skip", (28, 28, 1)),
                                        ("dae_skip", (100, 100, 1))])
def test_subpixel_decoder_equals_literal_upsampling(name, shape):
    """The default decoder (upsample='subpixel') computes the authors' up-then-conv network:
    same reconstruction and same gradients as the literal repeat upsampling."""
    fast, params, x = _init(name, shape)
    literal = get_model(name, image_shape=shape, upsample="repeat")
    loss = lambda m: jax.jit(jax.value_and_grad(
        lambda p: jnp.mean((m.apply({"params": p}, x).recon - x) ** 2)))
    (l_fast, g_fast), (l_lit, g_lit) = loss(fast)(params), loss(literal)(params)
    np.testing.assert_allclose(l_fast, l_lit, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-3, atol=1e-6), g_fast, g_lit)
