"""S1 study: training of every model on real data, the CLI end to end, reproduce, bad input."""

import json
import os
import pathlib
import subprocess
import sys

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aeclust_jax import runs, train
from aeclust_jax.config import ConfigError
from aeclust_jax.models.skip_ae import AEOutput
from aeclust_jax.studies import skip_ae as s1

REPO = pathlib.Path(__file__).resolve().parents[1]
METRIC_KEYS = {"psnr", "nmi", "acc", "ari", "nmi_latent", "nmi_latent_skip", "epochs",
               "train_seconds", "images_per_second"}
TINY = ["--train-limit", "256", "--test-limit", "200", "--cluster-limit", "150", "--epochs", "2",
        "--batch-size", "32", "--no-progress"]


@pytest.fixture(scope="module")
def mnist(real_manual_dir):
    from aeclust_jax.data import load
    return load("mnist", "train").images[:256], load("mnist", "test")


def _initial_and_final_loss(model_name, images, *, batch_size=32, epochs=2, **loss_kw):
    cfg = s1.S1Config(model=model_name, latent_skip=loss_kw.get("latent_skip", "random"))
    model = s1.build_model(cfg, images.shape[1:])
    state = train.create_train_state(model, jax.random.key(0), jnp.zeros((1,) + images.shape[1:]),
                                     train.make_optimizer("adadelta", frozen=s1.frozen_params(cfg)),
                                     init_kwargs={"with_latent_skip": True})
    loss_fn = s1.make_loss(model, **loss_kw)
    batch = {"image": jnp.asarray(images), "mask": jnp.ones(len(images))}
    before = float(jax.jit(loss_fn)(state.params, batch, jax.random.key(9))[0])
    res = train.fit(state, {"image": images}, loss_fn, batch_size=batch_size, epochs=epochs,
                    key=jax.random.key(1), progress=False)
    after = float(jax.jit(loss_fn)(res.state.params, batch, jax.random.key(9))[0])
    return before, after, res


# cae and cae_skip train in test_reproduce_tiny, dae_skip in test_cli_end_to_end (loss falls there too)
@pytest.mark.parametrize("model_name", ["dae"])
def test_models_train_on_mnist(mnist, model_name):
    images, _ = mnist
    before, after, res = _initial_and_final_loss(model_name, images)
    assert np.isfinite(after) and after < before
    assert len(res.history) == 2


def test_hanja_family_trains_and_latent_skip_modes(isolated_data_dir):
    """100x100 model on generated hanja glyphs; 'random' latent-skip heads stay fixed,
    'trained' ones move (auxiliary loss)."""
    from aeclust_jax.data import load
    images = load("hanja_synth", "train", train_per_class=8, test_per_class=2).images
    assert images.shape[1:] == (100, 100, 1)
    before, after, res = _initial_and_final_loss("cae_skip", images, batch_size=32, epochs=2,
                                                 latent_skip="trained")
    assert after < before and "aux_mse" in res.history[0]
    cfg = s1.S1Config(model="cae_skip")
    model = s1.build_model(cfg, images.shape[1:])
    p0 = train.create_train_state(model, jax.random.key(0), jnp.zeros((1, 100, 100, 1)),
                                  train.make_optimizer("adadelta"), init_kwargs={"with_latent_skip": True}).params
    moved = res.state.params["latent_skip_z1"]["kernel"]
    assert not np.array_equal(np.asarray(moved), np.asarray(p0["latent_skip_z1"]["kernel"]))


class _Stub(nn.Module):
    """Identity 'autoencoder' with one scale parameter: cheap to compile, exposes the targets."""
    noise_std: float = 0.5

    @nn.compact
    def __call__(self, x, with_latent_skip=False):
        w = self.param("w", nn.initializers.ones, ())
        return AEOutput(x * w * 0 + 128 / 255, jnp.zeros((x.shape[0], 30)), (), None)


def test_corruption_and_targets():
    x = jnp.full((4, 28, 28, 1), 0.5)
    a = s1.corrupt(x, 0.5, jax.random.key(0))
    b = s1.corrupt(x, 0.5, jax.random.key(1))
    assert float(a.min()) == 0.0 and float(a.max()) == 1.0       # clipped
    assert not np.array_equal(np.asarray(a), np.asarray(b))      # a fresh draw per key
    assert abs(float(jnp.std(a)) - 0.5) < 0.15
    # the stub reconstructs 128/255 everywhere: clean target 128/255 -> loss 0; the noisy target
    # (authors' code) -> the loss is the mean squared clipped noise
    model, params = _Stub(), {"w": jnp.ones(())}
    batch = {"image": jnp.full((4, 28, 28, 1), 128, jnp.uint8), "mask": jnp.ones(4)}
    clean = float(s1.make_loss(model)(params, batch, jax.random.key(2))[0])
    noisy = float(s1.make_loss(model, noisy_target=True)(params, batch, jax.random.key(2))[0])
    c = jnp.full((4, 28, 28, 1), 128, jnp.float32) / 255.0
    expect = float(jnp.mean((s1.corrupt(c, 0.5, jax.random.key(2)) - c) ** 2))
    assert clean == 0.0 and noisy == pytest.approx(expect, rel=1e-6) and noisy > 0.05


def _script(*args, check=False):
    env = dict(os.environ, JAX_PLATFORMS="cpu")
    p = subprocess.run([sys.executable, str(REPO / "scripts" / "train.py"), *args],
                       capture_output=True, text=True, env=env, timeout=900)
    if check:
        assert p.returncode == 0, p.stderr[-3000:]
    return p


def test_cli_end_to_end(real_manual_dir, tmp_path):
    out = tmp_path / "run"
    _script("--model", "dae_skip", "--dataset", "mnist", "--out", str(out), *TINY, check=True)
    m = runs.read_json(out / "metrics.json")
    assert METRIC_KEYS <= set(m)
    assert 5 < m["psnr"] < 40
    # the scores are those of the saved clusterings (eval.npz) by sklearn / scipy (acc itself is
    # checked against a brute-force oracle in test_metrics.py)
    import yaml
    from scipy.optimize import linear_sum_assignment
    from sklearn import metrics as skm
    from aeclust_jax.cluster import kmeans
    ev = np.load(out / "eval.npz")
    labels, pred = ev["labels"], ev["pred"]
    assert m["nmi"] == pytest.approx(skm.normalized_mutual_info_score(labels, pred), abs=1e-5)
    assert m["ari"] == pytest.approx(skm.adjusted_rand_score(labels, pred), abs=1e-5)
    table = skm.cluster.contingency_matrix(labels, pred)
    rows, cols = linear_sum_assignment(table, maximize=True)
    assert m["acc"] == pytest.approx(table[rows, cols].sum() / len(labels), abs=1e-12)
    # nmi_latent / nmi_latent_skip: K-means with the run's seed and restarts on the saved features
    c = yaml.safe_load((out / "config.yaml").read_text())
    for name, feats in (("nmi_latent", ev["latent"]), ("nmi_latent_skip", ev["tsne_latent_skip"])):
        p = kmeans(np.asarray(feats, np.float32), 10, key=c["seed"], n_init=c["kmeans_n_init"]).labels
        assert m[name] == pytest.approx(skm.normalized_mutual_info_score(labels, np.asarray(p)), abs=1e-5)
    assert m["epochs"] == 2 and m["num_params"] == 42575
    for f in ("reconstructions.png", "tsne.png", "tsne_latent_skip.png", "feature_maps.png"):
        assert (out / "figures" / f).stat().st_size > 1000
    hist = [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2] and hist[1]["loss"] < hist[0]["loss"]
    cfg = (out / "config.yaml").read_text()
    assert "batch_size: 32" in cfg and "optimizer: adadelta" in cfg and "train_limit: 256" in cfg
    assert (out / "checkpoints" / "2").is_dir()
    # an existing run is refused, nothing is touched
    stamp = (out / "metrics.json").stat().st_mtime_ns
    p = _script("--model", "dae_skip", "--dataset", "mnist", "--out", str(out), *TINY)
    assert p.returncode == 2 and "already holds a run" in p.stderr and "--resume" in p.stderr
    assert (out / "metrics.json").stat().st_mtime_ns == stamp
    # --resume refuses a changed config (naming the field), before touching anything
    p = _script("--model", "dae_skip", "--dataset", "mnist", "--out", str(out), *TINY,
                "--lr", "0.5", "--resume")
    assert p.returncode == 2 and "lr (None -> 0.5)" in p.stderr, p.stderr
    assert (out / "metrics.json").stat().st_mtime_ns == stamp
    p = _script("--model", "dae_skip", "--dataset", "mnist", "--out", str(out), "--resume", check=True)
    assert "nothing to do" in p.stdout and (out / "metrics.json").stat().st_mtime_ns == stamp
    # a finished run continues to a larger --epochs from its last checkpoint
    p = _script("--out", str(out), "--resume", "--epochs", "3", "--no-progress", check=True)
    assert "resuming" in p.stdout and "from epoch 2 of 3" in p.stdout
    hist3 = [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist3] == [1, 2, 3] and hist3[:2] == hist
    assert runs.read_json(out / "metrics.json")["epochs"] == 3
    assert runs.read_json(out / "metrics.epochs2.json") == m


def test_bad_input_names_the_choices(tmp_path):
    p = _script("--model", "dae_skip", "--dataset", "cifar", "--out", str(tmp_path / "x"))
    assert p.returncode == 2 and "--dataset" in p.stderr and "'cifar'" in p.stderr
    assert all(name in p.stderr for name in ("mnist", "fashion_mnist", "hanja", "hanja_synth"))
    p = _script("--model", "dae_skip", "--optimizer", "rmsprop", "--out", str(tmp_path / "y"))
    assert p.returncode == 2 and "--optimizer" in p.stderr
    assert all(name in p.stderr for name in ("adadelta", "adam", "sgd"))
    assert not (tmp_path / "x").exists() and not (tmp_path / "y").exists()
    with pytest.raises(FileNotFoundError, match="does not exist"):
        s1.run(s1.S1Config(), tmp_path / "missing", resume=True)


def test_reproduce_tiny(real_manual_dir, tmp_path):
    args = ["--datasets", "mnist", "--models", "cae", "cae_skip", "--seeds", "1", "--epochs", "2",
            "--train-limit", "256", "--test-limit", "200", "--cluster-limit", "150", "--eval-every", "1",
            "--runs", str(tmp_path / "runs"), "--out", str(tmp_path / "res"), "--no-progress"]
    assert s1.reproduce_main(args) == 0
    res = runs.read_json(tmp_path / "res" / "results.json")
    rows = {(r["dataset"], r["model"]): r for r in res["results"]}
    assert set(rows) == {("mnist", "cae"), ("mnist", "cae_skip")}
    for r in rows.values():
        assert r["n_seeds"] == 1 and r["psnr"]["std"] == 0.0 and len(r["per_seed"]) == 1
    claim = res["claims"][0]
    assert claim["pair"] == "cae_skip vs cae"
    assert claim["psnr_gain_db"] == pytest.approx(rows["mnist", "cae_skip"]["psnr"]["mean"]
                                                  - rows["mnist", "cae"]["psnr"]["mean"])
    md = (tmp_path / "res" / "results.md").read_text()
    assert "| mnist | cae_skip |" in md and "PSNR" in md
    figs = {p.name for p in (tmp_path / "res" / "figures").iterdir()}
    assert {"fig6_psnr.png", "fig7_nmi.png", "fig11_latent_skip.png", "fig8_tsne_mnist.png",
            "fig9_feature_maps_mnist.png", "table3_recon_mnist.png", "fig4_cae_curves_mnist.png"} <= figs
    hist = [json.loads(l) for l in (tmp_path / "runs" / "mnist-cae-0" / "history.jsonl").read_text().splitlines()]
    assert all("nmi" in h and "psnr" in h for h in hist)          # per-epoch curve for Fig. 4
    for name in ("cae", "cae_skip"):                                # both train: the loss falls
        h = [json.loads(l) for l in (tmp_path / "runs" / f"mnist-{name}-0" / "history.jsonl").read_text().splitlines()]
        assert h[1]["loss"] < h[0]["loss"]
    # a second call skips the complete runs (metrics untouched)
    stamp = (tmp_path / "runs" / "mnist-cae-0" / "metrics.json").stat().st_mtime_ns
    assert s1.reproduce_main(args) == 0
    assert (tmp_path / "runs" / "mnist-cae-0" / "metrics.json").stat().st_mtime_ns == stamp
    # a finished run made with other settings never stands in for the asked one: refused, untouched
    with pytest.raises(ConfigError, match=r"mnist-cae-0 holds a finished run made with other settings: lr"):
        s1.reproduce_main(args + ["--lr", "0.5"])
    with pytest.raises(ConfigError, match="finished run of 2 epochs, more than the 1 asked"):
        s1.reproduce_main(args + ["--epochs", "1"])
    assert (tmp_path / "runs" / "mnist-cae-0" / "metrics.json").stat().st_mtime_ns == stamp


def test_check_claims_pairs_skip_models_with_their_plain_twin():
    stat = lambda m: {"mean": m, "std": 0.0}
    row = lambda ds, model, psnr, nmi, nmi_ls: {"dataset": ds, "model": model, "psnr": stat(psnr),
                                                "nmi": stat(nmi), "nmi_latent_skip": stat(nmi_ls)}
    rows = [row("mnist", "cae", 20.0, 0.80, 0.70), row("mnist", "cae_skip", 25.5, 0.30, 0.45),
            row("mnist", "dae", 19.0, 0.78, 0.70), row("mnist", "dae_skip", 22.0, 0.80, 0.75),
            row("mnist", "cae_skip" + s1.TRAINED_LS, 24.0, 0.45, 0.60)]
    claims = {c["pair"]: c for c in s1.check_claims(rows)}
    assert set(claims) == {"cae_skip vs cae", "dae_skip vs dae"}
    cae, dae = claims["cae_skip vs cae"], claims["dae_skip vs dae"]
    assert cae["psnr_gain_db"] == pytest.approx(5.5) and cae["psnr_claim"]
    assert cae["nmi_change"] == pytest.approx(-0.5) and cae["nmi_claim"]
    assert cae["latent_skip_recovery"] == pytest.approx(0.15) and cae["recovery_claim"]
    assert dae["psnr_gain_db"] == pytest.approx(3.0) and not dae["psnr_claim"]
    assert not dae["nmi_claim"] and not dae["recovery_claim"]   # NMI rose: nothing to recover
