"""S4: DSC network, loss, self-expression on synthetic subspaces, CLI on a COIL-20 subset."""

import json
import pathlib

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aeclust_jax.config import ConfigError
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
    # the jitted fine-tune step optimises exactly this loss: its first loss is the same number
    step = dsc.make_finetune_step(model, cfg)
    _, _, loss, _ = step(params, dsc.finetune_optimizer(cfg.finetune_lr).init(params), jnp.asarray(x))
    np.testing.assert_allclose(float(loss), float(total), rtol=1e-5)


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
    with pytest.raises(ValueError, match="divisible"):
        dsc.fit_predict(np.zeros((10, 9, 9, 1), np.float32), 2)
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
    # 3 objects x 72 poses; 100 iterations since C needs larger entries for small N, and no column
    # thresholding (ro = 1): DSC-Net's ro = 0.04 suits N = 1440, it fragments the graph here
    argv = ["--model", "dsc", "--dataset", "coil20", "--classes", "3", "--pretrain-epochs", "100",
            "--finetune-iters", "100", "--ro", "1", "--out", str(out), "--no-progress"]
    assert run_main(train_script, argv) == 0
    m = json.loads((out / "metrics.json").read_text())
    for k in ("acc", "nmi", "ari", "pretrain_seconds", "finetune_seconds", "cluster_seconds"):
        assert np.isfinite(m[k]), k
    assert m["n_images"] == 216 and m["n_clusters"] == 3
    assert m["acc"] >= 0.9, m                     # 3 COIL-20 objects are easy to separate
    assert (out / "affinity.png").stat().st_size > 0 and (out / "reconstructions.png").is_file()
    assert len(np.load(out / "labels.npy")) == 216
    before = (out / "metrics.json").read_text()
    assert run_main(train_script, argv) == 2      # never overwrites a run
    assert "already holds a run" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before
    assert run_main(train_script, argv[:-3] + ["--out", str(tmp_path / "x"), "--ro", "2"]) == 2
    assert not (tmp_path / "x").exists()
    assert "ro" in capsys.readouterr().err


@pytest.mark.realdata
def test_reproduce_s4_tiny(real_manual_dir, tmp_path):
    out, work = tmp_path / "res", tmp_path / "runs"
    argv = ["--seeds", "1", "--rows", "noatt_c1", "att_c1", "--classes", "2", "--per-class", "16",
            "--pretrain-epochs", "5", "--finetune-iters", "5", "--runs", str(work),
            "--out", str(out), "--no-progress"]
    reproduce = _script_main("reproduce")
    assert reproduce(["s4"] + argv) == 0
    table = json.loads((out / "results.json").read_text())
    assert [t["row"] for t in table] == ["noatt_c1", "att_c1"]
    assert all(0 <= t["acc"]["mean"] <= 1 and t["seeds"] == [0] for t in table)
    assert (out / "results.md").read_text().count("| 16x16x1 |") == 2
    # the two rows shared one pretrained AE; a second call reuses the finished runs
    assert len(list((work / "pretrained").iterdir())) == 1
    mtime = (work / "att_c1" / "seed0" / "metrics.json").stat().st_mtime_ns
    assert dsc.reproduce_main(argv) == 0
    assert (work / "att_c1" / "seed0" / "metrics.json").stat().st_mtime_ns == mtime
