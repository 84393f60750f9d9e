"""S4: DSC network, loss, fine-tune through train.fit, auto_config, fit_predict with default
settings on synthetic union-of-subspace images, DSC-Net's post-processing vs its published code,
CLI on a COIL-20 subset."""

import dataclasses
import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aeclust_jax import runs
from aeclust_jax.config import ConfigError
from aeclust_jax.data import load
from aeclust_jax.errors import UsageError
from aeclust_jax.models import get_model
from aeclust_jax.models.dsc import DSCNet, dsc_net
from aeclust_jax.studies import dsc


def union_of_subspaces(k=3, dim=3, ambient=40, per=30, seed=0):
    """Points (k * per, ambient) on k random dim-dimensional subspaces, labels (k * per,)."""
    rng = np.random.default_rng(seed)
    bases = [np.linalg.qr(rng.normal(size=(ambient, dim)))[0] for _ in range(k)]
    z = np.concatenate([rng.normal(size=(per, dim)) @ b.T for b in bases])
    return z.astype(np.float32), np.repeat(np.arange(k), per)


def subspace_images(k=3, dim=3, per=30, size=8, seed=0):
    """Images (k * per, size, size, 1) in [0, 1]: each class the non-negative combinations of its
    own dim random non-negative patterns, so the classes lie on k low-dimensional subspaces."""
    rng = np.random.default_rng(seed)
    patterns = rng.uniform(size=(k, dim, size * size)) ** 3
    coef = rng.uniform(0.2, 1.0, size=(k, per, dim))
    x = np.einsum("kpd,kdm->kpm", coef, patterns).reshape(k * per, size, size, 1)
    return (x / x.max()).astype(np.float32), np.repeat(np.arange(k), per)


def union_of_subspace_images(n_clusters, per_cluster, size, channels=1, *, dim=3, noise=0.02,
                             seed=0):
    """uint8 images (K * m, H, W, C) on K random dim-dimensional linear subspaces of pixel space
    plus Gaussian noise (std ``noise``, then clipped to [0, 1] and rounded), labels (K * m,).

    Each subspace is spanned by dim smooth non-negative basis images (two Gaussian blobs each,
    random per-channel weights); an image is a random non-negative combination of its cluster's
    basis scaled to maximum 1 (a scaled point of a subspace stays in it). ``size``: int or (H, W).
    """
    h, w = (size, size) if np.isscalar(size) else size
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    basis = np.zeros((n_clusters, dim, h, w, channels))
    for i in range(n_clusters):
        for j in range(dim):
            for _ in range(2):
                cy, cx = rng.uniform(0, h), rng.uniform(0, w)
                sig = rng.uniform(0.08, 0.2) * min(h, w)
                blob = np.exp(-((yy - cy) ** 2 + (xx - cx) ** 2) / (2 * sig ** 2))
                basis[i, j] += blob[..., None] * rng.uniform(0.3, 1.0, channels)
    coef = rng.uniform(0, 1, size=(n_clusters, per_cluster, dim))
    x = np.einsum("kmd,kdhwc->kmhwc", coef, basis).reshape(-1, h, w, channels)
    x /= x.max(axis=(1, 2, 3), keepdims=True)
    x += noise * rng.normal(size=x.shape)
    return (np.round(np.clip(x, 0, 1) * 255).astype(np.uint8),
            np.repeat(np.arange(n_clusters), per_cluster))


# ----------------------------------------------------------------------------- model

@pytest.mark.parametrize("c, attention", [(1, True), (2, False), (3, True), (15, False)])
def test_shapes_for_each_latent_width(c, attention):
    n = 6
    model = get_model("dsc", channels=(c,), attention=attention, n_samples=n)
    x = jnp.asarray(np.random.default_rng(c).uniform(size=(n, 32, 32, 1)), jnp.float32)
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    x_hat, z, z_c = jax.jit(model.apply)({"params": params}, x)
    assert x_hat.shape == (n, 32, 32, 1)
    assert z.shape == z_c.shape == (n, 16 * 16 * c)
    assert params["C"].shape == (n, n) and np.all(np.asarray(params["C"]) == np.float32(1e-8))
    assert ("attn" in params) == attention
    if attention:
        assert params["attn"]["squeeze"]["kernel"].shape == (1, 1, c, max(1, c // 4))
        assert params["attn"]["excite"]["kernel"].shape == (1, 1, max(1, c // 4), c)
    assert np.all(np.asarray(x_hat) >= 0)     # ReLU output, as DSC-Net


def test_deeper_encoder_is_a_config():
    model = dsc_net(channels=(5, 3, 3), kernel_sizes=(5, 3, 3), strides=(2, 2, 2), n_samples=4)
    x = jnp.ones((4, 32, 32, 1))
    params = jax.jit(model.init)(jax.random.key(0), x)["params"]
    x_hat, z, _ = jax.jit(model.apply)({"params": params}, x)
    assert x_hat.shape == x.shape and z.shape == (4, 4 * 4 * 3)
    assert params["decoder"]["deconv0"]["kernel"].shape == (3, 3, 3, 3)
    assert params["decoder"]["deconv2"]["kernel"].shape == (5, 5, 5, 1)
    with pytest.raises(ValueError, match="same length"):
        dsc_net(channels=(5, 3), kernel_sizes=(5,), strides=(2,))


def test_attention_on_off_matches_numpy_squeeze_excitation():
    n, c = 5, 8
    x = jnp.asarray(np.random.default_rng(1).uniform(size=(n, 32, 32, 1)), jnp.float32)
    on = dsc_net(channels=(c,), attention=True, n_samples=n)
    params = on.init(jax.random.key(3), x)["params"]
    raw = np.asarray(on.apply({"params": params}, x, method=lambda m, v: m.encoder(v)))
    got = np.asarray(on.apply({"params": params}, x, method=DSCNet.encode))
    a = params["attn"]
    s = raw.mean(axis=(1, 2))                                             # (n, c)
    h = np.maximum(s @ np.asarray(a["squeeze"]["kernel"])[0, 0] + np.asarray(a["squeeze"]["bias"]), 0)
    g = 1 / (1 + np.exp(-(h @ np.asarray(a["excite"]["kernel"])[0, 0] + np.asarray(a["excite"]["bias"]))))
    np.testing.assert_allclose(got, raw * g[:, None, None, :], rtol=1e-5, atol=1e-6)
    assert not np.allclose(got, raw)
    off = dsc_net(channels=(c,), attention=False, n_samples=n)
    p_off = {k: v for k, v in params.items() if k != "attn"}
    np.testing.assert_array_equal(
        np.asarray(off.apply({"params": p_off}, x, method=DSCNet.encode)), raw)


def test_self_expressive_layer_needs_the_full_batch():
    model = dsc_net(n_samples=4)
    params = model.init(jax.random.key(0), jnp.ones((4, 32, 32, 1)))
    with pytest.raises(ValueError, match="full batch of 4"):
        model.apply(params, jnp.ones((3, 32, 32, 1)))


def test_loss_terms_match_numpy():
    rng = np.random.default_rng(0)
    n = 7
    x = rng.uniform(size=(n, 32, 32, 1)).astype(np.float32)
    cfg = dsc.DSCConfig(channels=(2,), attention=True, lambda1=0.7, lambda2=150.0)
    model = dsc.build_model(cfg, 1, n)
    params = model.init(jax.random.key(0), jnp.asarray(x))["params"]
    params = {**params, "C": jnp.asarray(rng.normal(scale=0.1, size=(n, n)), jnp.float32)}
    x_hat, z, z_c = (np.asarray(a, np.float64) for a in model.apply({"params": params}, x))
    c = np.asarray(params["C"], np.float64)
    np.testing.assert_allclose(z_c, c @ z, rtol=1e-4, atol=1e-5)
    want = {"recon": 0.5 * np.sum((x_hat - x) ** 2), "reg": np.sum(c ** 2),
            "self_expr": 0.5 * np.sum((z - c @ z) ** 2)}
    total, terms = dsc.dsc_loss(jnp.asarray(x), *map(jnp.asarray, (x_hat, z, z_c)),
                                params["C"], cfg.lambda1, cfg.lambda2)
    for k, v in want.items():
        np.testing.assert_allclose(float(terms[k]), v, rtol=1e-5)
    np.testing.assert_allclose(float(total), want["recon"] + 0.7 * want["reg"]
                               + 150.0 * want["self_expr"], rtol=1e-5)
    # the loss that the fine-tune hands to train.fit is exactly this loss
    loss_fn = dsc.make_finetune_loss(model, cfg.lambda1, cfg.lambda2)
    loss, aux = jax.jit(loss_fn)(params, {"image": jnp.asarray(x)}, None)
    np.testing.assert_allclose(float(loss), float(total), rtol=1e-5)
    for k, v in want.items():
        np.testing.assert_allclose(float(aux[k]), v, rtol=1e-5)


def test_decoder_crops_to_any_input_size():
    """ConvTranspose (SAME) doubles each size; the decoder crops to the encoder's sizes, so odd and
    non-divisible sizes reconstruct to the input shape, and divisible ones crop nothing."""
    from aeclust_jax.models.dsc import stage_sizes

    assert stage_sizes(48, 42, (2, 2, 2)) == [(48, 42), (24, 21), (12, 11), (6, 6)]
    model = dsc_net(channels=(2, 3), kernel_sizes=(3, 3), strides=(2, 2), image_channels=3,
                    n_samples=3)
    for hw, latent in (((48, 42), (12, 11)), ((17, 23), (5, 6))):
        x = jax.ShapeDtypeStruct((3, *hw, 3), jnp.float32)
        params = jax.eval_shape(model.init, jax.random.key(0), x)
        x_hat, z, _ = jax.eval_shape(model.apply, params, x)
        assert x_hat.shape == x.shape and z.shape == (3, latent[0] * latent[1] * 3)
    model = dsc_net(channels=(2, 3), kernel_sizes=(3, 3), strides=(2, 2))
    x = jnp.asarray(np.random.default_rng(0).uniform(size=(2, 16, 16, 1)), jnp.float32)
    params = model.init(jax.random.key(0), x, method=DSCNet.reconstruct)
    uncropped = model.apply(params, x, method=lambda m, v: m.decoder(m.encoder(v)))
    np.testing.assert_array_equal(model.apply(params, x, method=DSCNet.reconstruct), uncropped)


# ----------------------------------------------------------------------------- fine-tune (train.fit)

def _adam_reference_loop(x, ae, cfg, key, iters):
    """DSC-Net's fine-tune written out: Adam (eps 1e-8) on dsc_loss, full batch, in order.
    Returns (params, losses (one per iteration, up to and including the first non-finite one))."""
    model, p = dsc.init_finetune_params(x, ae, cfg, key)
    tx = optax.adam(cfg.finetune_lr, eps=1e-8)
    opt = tx.init(p)
    grad = jax.jit(jax.value_and_grad(
        lambda q: dsc.dsc_loss(x, *model.apply({"params": q}, x), q["C"], cfg.lambda1,
                               cfg.lambda2), has_aux=True))
    losses = []
    for _ in range(iters):
        (loss, _), g = grad(p)
        losses.append(float(loss))
        if not np.isfinite(losses[-1]):
            break
        u, opt = tx.update(g, opt, p)
        p = optax.apply_updates(p, u)
    return p, losses


def test_finetune_through_fit_is_the_plain_adam_loop():
    x, _ = subspace_images(k=2, dim=2, per=6)
    cfg = dsc.DSCConfig(channels=(3,), attention=True, pretrain_epochs=0, finetune_iters=6)
    ae, _ = dsc.pretrain(x, cfg, jax.random.key(0), progress=False)
    params, history = dsc.finetune(x, ae, cfg, jax.random.key(1), progress=False)
    want, losses = _adam_reference_loop(x, ae, cfg, jax.random.key(1), 6)
    assert [h["iter"] for h in history] == [1, 2, 3, 4, 5, 6]
    np.testing.assert_allclose([h["loss"] for h in history], losses, rtol=1e-5)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-7), params, want)
    assert np.abs(np.asarray(params["C"]) - 1e-8).max() > 1e-3      # C did move


def test_finetune_divergence_raises_at_its_iteration(monkeypatch):
    """A huge learning rate overflows the loss at iteration 2 (found by the reference loop): the
    engine raises there, naming it, and runs no further iteration."""
    from aeclust_jax import train

    x, _ = subspace_images(k=2, dim=2, per=6)
    cfg = dsc.DSCConfig(channels=(3,), pretrain_epochs=0, finetune_iters=30, finetune_lr=1e19)
    ae, _ = dsc.pretrain(x, cfg, jax.random.key(0), progress=False)
    _, losses = _adam_reference_loop(x, ae, cfg, jax.random.key(1), 30)
    first_bad = len(losses)
    assert 1 < first_bad < 30 and not np.isfinite(losses[-1])
    steps = []
    fit = train.fit
    monkeypatch.setattr(train, "fit", lambda *a, **kw: fit(
        *a, **kw, step_hook=lambda epoch, step: steps.append(epoch)))
    with pytest.raises(train.TrainingDivergedError) as err:
        dsc.finetune(x, ae, cfg, jax.random.key(1), progress=False)
    assert (err.value.epoch, err.value.step) == (first_bad, 0)
    assert steps == list(range(1, first_bad + 1))


# ----------------------------------------------------------------------------- self-expression

def test_self_expression_on_independent_subspaces_recovers_clusters_exactly():
    """Gradient descent on the C terms of dsc_loss alone (latents fixed) reaches the closed-form block-diagonal C, and
    dsc_affinity + spectral give the true clusters."""
    from aeclust_jax.cluster import dsc_affinity, spectral

    z, y = union_of_subspaces(k=3, dim=3, ambient=40, per=30)
    n = len(z)
    lam1, lam2 = 1.0, 150.0
    zj = jnp.asarray(z)

    def loss(c):
        return dsc.dsc_loss(jnp.zeros(()), jnp.zeros(()), zj, c @ zj, c, lam1, lam2)[0]

    g = z.astype(np.float64) @ z.T.astype(np.float64)
    lipschitz = 2 * lam1 + lam2 * np.linalg.eigvalsh(g)[-1]   # the loss is a convex quadratic in C
    tx = optax.sgd(1.0 / lipschitz)
    c = jnp.full((n, n), 1e-8)
    state = tx.init(c)

    @jax.jit
    def step(c, state):
        u, state = tx.update(jax.grad(loss)(c), state)
        return optax.apply_updates(c, u), state

    for _ in range(2000):
        c, state = step(c, state)
    c = np.asarray(c, np.float64)
    closed = g @ np.linalg.inv(g + (2 * lam1 / lam2) * np.eye(n))        # LSR solution
    np.testing.assert_allclose(c, closed, atol=1e-4)
    same = y[:, None] == y[None, :]
    assert np.abs(closed[~same]).max() < 1e-3 * np.abs(closed[same]).max()   # block diagonal
    # block-diagonal C: no column thresholding needed (ro = 1); d = the subspaces' dimension
    labels = np.asarray(spectral(dsc_affinity(jnp.asarray(c, jnp.float32), 3, d=3, alpha=8.0,
                                              ro=1.0), 3, key=jax.random.key(0)))
    assert dsc.evaluate(y, labels)["acc"] == 1.0


def test_fit_predict_on_subspace_images_is_exact_and_deterministic():
    x, y = subspace_images(k=3, dim=3, per=30)
    u8 = np.round(x * 255).astype(np.uint8)          # uint8 input, as load() gives
    np.testing.assert_allclose(dsc.as_float_images(u8), x, atol=0.5 / 255 + 1e-7)
    cfg = dsc.DSCConfig(channels=(3,), attention=True, pretrain_epochs=30, finetune_iters=30, d=3)
    labels = dsc.fit_predict(u8, 3, cfg, seed=1)
    assert labels.shape == (90,) and labels.dtype == np.int32
    assert dsc.evaluate(y, labels)["acc"] == 1.0
    np.testing.assert_array_equal(dsc.fit_predict(u8, 3, cfg, seed=1), labels)


# ----------------------------------------------------------------------------- auto_config

def test_auto_config_at_the_published_anchors():
    """The documented rules, evaluated at DSC-Net's datasets (known answers, worked by hand)."""
    coil20 = dsc.auto_config((32, 32, 1), 1440, 20)
    # 32 -> 16: one layer; c = max(4, ceil(2 * 12 * 20 / 256)) = 4
    assert (coil20.channels, coil20.kernel_sizes, coil20.strides) == ((4,), (3,), (2,))
    assert (coil20.d, coil20.alpha, coil20.ro, coil20.lambda1) == (12, 8.0, 0.04, 1.0)
    assert coil20.lambda2 == 150.0 and coil20.finetune_iters == 42
    orl = dsc.auto_config((32, 32, 1), 400, 40)            # ORL: m = 10
    assert (orl.d, orl.alpha, orl.ro, orl.finetune_iters) == (3, 1.0, 0.2, 300)
    assert orl.lambda2 == pytest.approx(10.0) and orl.channels == (4,)   # Yale B's level
    yale = dsc.auto_config((48, 42), 38 * 64, 38)            # Extended Yale B, 38 subjects
    assert yale.strides == (2, 2)                                    # -> 12x11
    assert yale.lambda2 == pytest.approx(10 ** 0.8 * 1500 ** (54 / 62))   # t = (64 - 10) / 62
    assert yale.channels == (4, 7) and yale.d == 11            # c = ceil(2*11*38/132) = 7
    coil100 = dsc.auto_config((32, 32, 1), 7200, 100)
    assert (coil100.d, coil100.ro, coil100.lambda2) == (12, 0.04, 1e4)
    assert dsc.auto_config((32, 32, 1), 720, 10).lambda2 == pytest.approx(15.0)   # x10 per 10
    assert dsc.auto_config((32, 32, 1), 80, 10).lambda2 == pytest.approx(0.01)    # m = 8
    small = dsc.auto_config((16, 16, 3), 16, 2)              # 2 clusters of 8: no thresholding
    assert (small.ro, small.d, small.finetune_iters) == (1.0, 3, 375)
    assert small.lambda2 == pytest.approx(10 ** -2.8)
    assert dsc.auto_config((32, 32, 1), 216, 3).ro == pytest.approx(0.2667, abs=1e-4)
    assert dsc.auto_config((32, 32, 1), 1440, 20, pretrain_epochs=5).pretrain_epochs == 5
    assert dsc.auto_config((32, 32, 1), 1440, 20) == coil20     # pure


@pytest.mark.parametrize("size", [16, 17, 28, 32, 48, 64, 100, 128, (48, 42), (16, 128)])
@pytest.mark.parametrize("n, k", [(16, 2), (80, 10), (400, 40), (1440, 20), (800, 100),
                                  (7200, 100)])
def test_auto_config_is_valid_over_the_supported_range(size, n, k):
    h, w = (size, size) if np.isscalar(size) else size
    cfg = dsc.auto_config((h, w, 3), n, k)
    from aeclust_jax.models.dsc import stage_sizes

    lh, lw = stage_sizes(h, w, cfg.strides)[-1]
    assert 1 <= min(lh, lw) <= 16 and (len(cfg.strides) == 1 or min(h, w) > 32)
    assert len(cfg.channels) == len(cfg.kernel_sizes) == len(cfg.strides)
    assert list(cfg.channels) == sorted(cfg.channels) and cfg.channels[-1] <= 64
    assert cfg.d * k + 1 < n and 1 <= cfg.alpha <= 8 and 0 < cfg.ro <= 1
    assert 10 ** -2.8 - 1e-9 <= cfg.lambda2 <= 1e4 and cfg.finetune_iters >= 40


# ----------------------------------------------------------------------------- default settings

# fit_predict(images, K) with no config on union-of-subspace images (pretraining shortened to 20
# epochs through its documented override, everything else as auto_config chooses). ACC measured
# for data/run seeds 0 / 1 / 2 (the tests run seed 0); floors a margin below the lowest.
COIL_LIKE_FLOOR = 0.95       # 1440 images, 20 clusters, 16x16 gray: 1.0 / 1.0 / 1.0
SYNTHETIC_CASES = {
    # name: (K, images per cluster, (H, W), channels, ACC floor)
    "400_in_40_20x20_gray": (40, 10, (20, 20), 1, 0.85),       # 0.9100 / 0.9425 / 0.9200
    "2x8_128x128_rgb": (2, 8, (128, 128), 3, 0.9),             # 1.0 / 1.0 / 1.0
}
AFFINITY_ATOL = 1e-4         # measured max |difference| 0.82e-5 - 0.95e-5 (seeds 0-2)
CLI_ACC_FLOOR = 0.95         # 3 COIL-20 objects, --preset auto: 1.0 / 1.0 / 1.0 (seeds 0-2)


@pytest.fixture(scope="module")
def coil_like_run():
    """1440 16x16 gray images in 20 clusters (COIL-20's N, K and 72 per cluster), default
    settings: (config, labels, result)."""
    x, y = union_of_subspace_images(20, 72, 16, seed=0)
    return (dsc.auto_config(x.shape[1:], len(x), 20, pretrain_epochs=20), y,
            dsc.run(x, 20, seed=0, progress=False, pretrain_epochs=20))


def test_default_settings_1440_images_in_20_clusters(coil_like_run):
    cfg, y, res = coil_like_run
    assert cfg.ro == 0.04 and cfg.d == 12 and cfg.alpha == 8.0     # COIL-20's post-processing
    assert res.coefficients.shape == (1440, 1440) and len(res.history) == cfg.finetune_iters
    assert dsc.evaluate(y, res.labels)["acc"] >= COIL_LIKE_FLOOR


@pytest.mark.parametrize("name", SYNTHETIC_CASES)
def test_default_settings_on_union_of_subspace_images(name):
    k, m, hw, ch, floor = SYNTHETIC_CASES[name]
    x, y = union_of_subspace_images(k, m, hw, ch, seed=0)
    labels = dsc.fit_predict(x, k, seed=0, pretrain_epochs=20)
    assert labels.shape == (k * m,) and labels.dtype == np.int32
    assert dsc.evaluate(y, labels)["acc"] >= floor


def test_dsc_affinity_matches_dsc_nets_code_at_s4s_settings(coil_like_run):
    """The production affinity (float32 ``dsc_affinity`` as ``run`` computed it) against DSC-Net's
    published thrC + post_proC (float64, scipy svds) on a C that S4 learned, at S4's COIL-20
    settings ro = 0.04, d = 12, alpha = 8, K = 20; and the spectral labels agree."""
    from aeclust_jax.cluster import spectral
    from aeclust_jax.cluster.reference import post_proC_affinity, thrC

    cfg, y, res = coil_like_run
    c = res.coefficients.astype(np.float64)
    kept = (thrC(c, 0.04) != 0).sum(axis=0)
    assert kept.min() >= 2            # a non-trivial threshold: several entries kept per column
    ref = post_proC_affinity(thrC(c, 0.04), 20, 12, 8.0)
    np.testing.assert_allclose(res.affinity, ref, atol=AFFINITY_ATOL)
    k_cluster = jax.random.split(jax.random.key(0), 3)[2]          # run()'s key for seed 0
    ref_labels = np.asarray(spectral(ref.astype(np.float32), 20, key=k_cluster))
    np.testing.assert_allclose(dsc.evaluate(y, ref_labels)["acc"],
                               dsc.evaluate(y, res.labels)["acc"], atol=0.01)


def test_pretrained_weights_carry_into_finetune_and_are_cached(tmp_path):
    x, _ = subspace_images(k=2, dim=2, per=10)
    cfg = dsc.DSCConfig(channels=(2,), pretrain_epochs=3, finetune_iters=1, attention=True)
    ae, secs = dsc.pretrain(x, cfg, jax.random.key(0), checkpoint_dir=tmp_path / "pre",
                            progress=False)
    assert secs > 0
    again, secs2 = dsc.pretrain(x, cfg, jax.random.key(0), checkpoint_dir=tmp_path / "pre",
                                progress=False)
    jax.tree.map(np.testing.assert_array_equal, ae, again)
    assert secs2 == pytest.approx(secs)         # restored, not retrained: first timing kept
    _, params = dsc.init_finetune_params(x, ae, cfg, jax.random.key(1))
    for part in ("encoder", "decoder"):
        jax.tree.map(np.testing.assert_array_equal, params[part], ae[part])
    assert "attn" in params and np.all(np.asarray(params["C"]) == np.float32(1e-8))
    # the folder is tied to what built the AE: other inputs are refused, naming the fields
    attn_off = dataclasses.replace(cfg, attention=False, finetune_iters=5)   # fine-tune only: shared
    dsc.pretrain(x, attn_off, jax.random.key(0), checkpoint_dir=tmp_path / "pre")
    for other, field in ((dataclasses.replace(cfg, pretrain_lr=1e-4), "pretrain_lr"),
                         (dataclasses.replace(cfg, pretrain_epochs=4), "pretrain_epochs")):
        with pytest.raises(ConfigError, match=field):
            dsc.pretrain(x, other, jax.random.key(0), checkpoint_dir=tmp_path / "pre")
    with pytest.raises(ConfigError, match="key"):
        dsc.pretrain(x, cfg, jax.random.key(1), checkpoint_dir=tmp_path / "pre")
    with pytest.raises(ConfigError, match="images"):
        dsc.pretrain(x[::-1].copy(), cfg, jax.random.key(0), checkpoint_dir=tmp_path / "pre")
    stray = tmp_path / "stray"
    (stray / "checkpoints").mkdir(parents=True)
    with pytest.raises(ConfigError, match="no artifact.json"):
        dsc.pretrain(x, cfg, jax.random.key(0), checkpoint_dir=stray)


def test_bad_input_and_config_errors(tmp_path):
    with pytest.raises(ConfigError, match="finetune_iters"):
        dsc.DSCConfig(finetune_iters=0)
    with pytest.raises(ConfigError, match="unknown DSC preset 'nope'.*coil20"):
        dsc.preset("nope")
    bad = tmp_path / "bad.yaml"
    bad.write_text("lambda3: 1\n")
    with pytest.raises(ConfigError, match="lambda3"):
        dsc.load_config(dsc.DSCConfig, bad)
    with pytest.raises(ValueError, match=r"\(N, H, W, C\)"):
        dsc.fit_predict(np.zeros((10, 8, 8)), 2)
    with pytest.raises(ValueError, match=r"d \* n_clusters \+ 1 = 25"):     # an explicit config
        dsc.fit_predict(np.zeros((10, 9, 9, 1), np.float32), 2, dsc.DSCConfig())
    with pytest.raises(ValueError, match="n_clusters"):
        dsc.auto_config((8, 8), 10, 11)
    with pytest.raises(ConfigError, match="ro"):                   # overrides are validated
        dsc.auto_config((8, 8), 10, 2, ro=0.0)
    with pytest.raises(ValueError, match="n_clusters"):
        dsc.fit_predict(np.zeros((10, 8, 8, 1), np.float32), 11)
    assert dsc.preset("coil20_c2").channels == (2,)
    assert dsc.preset("coil20", attention=True).attention


# ----------------------------------------------------------------------------- CLI, real data

def _script_main(name):
    """``main`` of scripts/<name>.py (the real entry point, in this process)."""
    import importlib.util

    path = pathlib.Path(__file__).resolve().parents[1] / "scripts" / f"{name}.py"
    spec = importlib.util.spec_from_file_location(f"_script_{name}", path)
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod.main


@pytest.mark.realdata
def test_train_cli_end_to_end_on_coil20_subset(real_manual_dir, tmp_path, capsys):
    from aeclust_jax.cli import run_main

    train_script = _script_main("train")

    out = tmp_path / "run"
    # 3 objects x 72 poses with the automatic settings: the production path end to end, column
    # thresholding included (auto_config: ro = 0.04 * 20 / 3 = 0.267, d = 12, alpha = 8)
    argv = ["--model", "dsc", "--dataset", "coil20", "--classes", "3", "--preset", "auto",
            "--out", str(out), "--no-progress"]
    assert run_main(train_script, argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    cfg = runs.read_config(out / "config.yaml")
    assert (cfg["ro"], cfg["d"], cfg["alpha"]) == (0.2667, 12, 8.0)
    assert (cfg["dataset"], cfg["classes"], cfg["seed"]) == ("coil20", 3, 0)
    assert (out / "pretrained" / "artifact.json").is_file()      # kept in the run for --resume
    assert m["n_images"] == 216 and m["n_clusters"] == 3
    assert m["acc"] >= CLI_ACC_FLOOR, m
    ds = load("coil20")
    _, y = dsc.select_subset(ds.images, ds.labels, 3, None)
    assert m["acc"] == dsc.evaluate(y, np.load(out / "labels.npy"))["acc"]
    assert (out / "affinity.png").stat().st_size > 0 and (out / "reconstructions.png").is_file()
    assert len(np.load(out / "labels.npy")) == 216
    before = (out / "metrics.json").read_text()
    assert run_main(train_script, argv) == 2      # never overwrites a run
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before
    assert run_main(train_script, argv[:-3] + ["--out", str(tmp_path / "x"), "--ro", "2"]) == 2
    assert not (tmp_path / "x").exists()
    assert "ro" in capsys.readouterr().err
    # --resume: a finished run has nothing to do; a changed option is refused, naming it
    assert run_main(train_script, ["--model", "dsc", "--out", str(out), "--resume"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert run_main(train_script, ["--model", "dsc", "--out", str(out), "--resume", "--d", "5"]) == 2
    assert "d (12 -> 5)" in capsys.readouterr().err
    # an unfinished run (metrics.json gone, as after a crash in the evaluation) is finished from
    # its saved config and pretrained AE, with the same result
    (out / "metrics.json").unlink()
    assert run_main(train_script, ["--model", "dsc", "--out", str(out), "--resume",
                                   "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    again = json.loads((out / "metrics.json").read_text())
    assert again["acc"] == m["acc"] and again["pretrain_seconds"] == m["pretrain_seconds"]


@pytest.mark.realdata
def test_reproduce_s4_tiny_in_workers_and_shards(real_manual_dir, tmp_path, capsys):
    out, work = tmp_path / "res", tmp_path / "runs"
    argv = ["--seeds", "2", "--rows", "noatt_c1", "att_c1", "--classes", "2", "--per-class", "16",
            "--pretrain-epochs", "5", "--finetune-iters", "5", "--runs", str(work),
            "--out", str(out), "--no-progress"]
    reproduce = _script_main("reproduce")
    assert reproduce(["s4"] + argv + ["--workers", "2"]) == 0     # one process per seed
    assert "2 runs on 2 worker processes" in capsys.readouterr().out
    table = json.loads((out / "results.json").read_text())
    assert [t["row"] for t in table] == ["noatt_c1", "att_c1"]
    ds = load("coil20")
    _, y = dsc.select_subset(ds.images, ds.labels, 2, 16)
    for t in table:                # the table aggregates the runs' metrics, which score labels.npy
        ms = [json.loads((work / t["row"] / f"seed{s}" / "metrics.json").read_text()) for s in (0, 1)]
        assert t["seeds"] == [0, 1] and t["acc_per_seed"] == [m["acc"] for m in ms]
        assert t["acc"]["mean"] == pytest.approx(np.mean(t["acc_per_seed"]))
        for s, m in enumerate(ms):
            labels = np.load(work / t["row"] / f"seed{s}" / "labels.npy")
            assert m["acc"] == dsc.evaluate(y, labels)["acc"]
    assert (out / "results.md").read_text().count("| 16x16x1 |") == 2
    # the two rows of a seed shared one pretrained AE
    assert sorted(p.name for p in (work / "pretrained").iterdir()) == ["c1-e5-seed0", "c1-e5-seed1"]
    # a shard of a complete grid trains nothing and writes no table (the shares themselves and
    # a worker's numbers against the run alone are tested in test_s3_pretrain / test_grid)
    (out / "results.json").unlink()
    mtime = (work / "att_c1" / "seed0" / "metrics.json").stat().st_mtime_ns
    assert dsc.reproduce_main(argv + ["--shard", "1/2"]) == 0
    assert "run the command without --shard" in capsys.readouterr().out
    assert not (out / "results.json").exists()
    # the command without --shard trains nothing more and gathers the same table
    assert dsc.reproduce_main(argv) == 0
    assert (work / "att_c1" / "seed0" / "metrics.json").stat().st_mtime_ns == mtime
    again = json.loads((out / "results.json").read_text())
    assert [(t["acc_per_seed"], t["nmi_per_seed"]) for t in again] == \
        [(t["acc_per_seed"], t["nmi_per_seed"]) for t in table]
    with pytest.raises(UsageError, match="--shard expects I/N"):
        dsc.reproduce_main(argv + ["--shard", "1"])
