"""S5: the feature AE over several map shapes, the code precisions against a numpy reference
(ties, zeros, constants), bits arithmetic, VGG run on from a cut, the baselines, and the study
end to end on a tiny image archive (a tiny VGG through the supervised study, random weights
for the paper's command)."""

import io
import json
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from aeclust_jax.cli import reproduce_main, run_main, train_main
from aeclust_jax.models import get_model
from aeclust_jax.models.feature_ae import (FeatureAE, bits_per_image, code_shape,
                                           dequantize_uniform, quantize, quantize_uniform)
from aeclust_jax.models.vgg import VGG
from aeclust_jax.studies import feature_compression as s5


def random_variables(model, *args, **kwargs):
    """Variables of ``model`` with random values, without compiling its init (XLA:CPU takes
    seconds per truncated-normal initialiser): shapes from ``jax.eval_shape``, kernels normal with
    std 1/sqrt(fan in) from numpy, biases and batch-norm means 0, scales and variances 1."""
    rng = np.random.default_rng(0)
    shapes = jax.eval_shape(lambda: model.init(jax.random.key(0), *args, **kwargs))

    def fill(path, leaf):
        name = jax.tree_util.keystr(path)
        if name.endswith(("['var']", "['scale']")):
            return jnp.ones(leaf.shape, leaf.dtype)
        if name.endswith(("['mean']", "['bias']")):
            return jnp.zeros(leaf.shape, leaf.dtype)
        fan_in = int(np.prod(leaf.shape[:-1])) or 1
        return jnp.asarray(rng.normal(0, fan_in ** -0.5, leaf.shape), leaf.dtype)
    return jax.tree_util.tree_map_with_path(fill, shapes)


# ----------------------------------------------------------------------------- the autoencoder

@pytest.mark.parametrize("shape,width,kernel", [((7, 7, 512), 128, 3), ((6, 9, 7), 3, 2)])
def test_feature_ae_shapes_for_several_maps(shape, width, kernel):
    ae = get_model("feature_ae", channels=shape[-1], width=width, hidden=16, kernel=kernel)
    x = jnp.asarray(np.random.default_rng(0).random((2,) + shape), jnp.float32)
    v = random_variables(ae, x)
    code, out, again = jax.jit(lambda v, x: (
        ae.apply(v, x, method=FeatureAE.encode), ae.apply(v, x),
        ae.apply(v, ae.apply(v, x, method=FeatureAE.encode), method=FeatureAE.decode)))(v, x)
    assert code.shape == (2,) + code_shape(shape, width, kernel)
    assert code.shape[1:3] == (shape[0] - kernel + 1, shape[1] - kernel + 1)
    assert out.shape == x.shape and float(out.min()) >= 0 and float(code.min()) >= 0
    assert float(out.max()) > 0 and float(code.max()) > 0           # not dead at init
    np.testing.assert_allclose(again, out, rtol=1e-6)


def test_feature_ae_seed_architecture_is_87_percent_smaller_and_refuses_bad_maps():
    assert 1 - np.prod(code_shape((7, 7, 512), 128)) / (7 * 7 * 512) == pytest.approx(0.8724, abs=1e-4)
    ae = FeatureAE(channels=8, width=4)
    with pytest.raises(ValueError, match="at least 3x3"):
        ae.init(jax.random.key(0), jnp.zeros((1, 2, 5, 8)))
    with pytest.raises(ValueError, match=r"channels=8\) got a map of 6 channels"):
        ae.init(jax.random.key(0), jnp.zeros((1, 5, 5, 6)))


# ----------------------------------------------------------------------------- precisions

def numpy_uniform(x, bits):
    """Reference: per-image min/step, round half to even, lo + q * step (float32 throughout)."""
    x = np.asarray(x, np.float32)
    flat = x.reshape(len(x), -1)
    lo, hi = flat.min(1), flat.max(1)
    step = ((hi - lo) / np.float32(2 ** bits - 1)).astype(np.float32)
    q = np.zeros_like(flat)
    ok = step > 0
    q[ok] = np.clip(np.round((flat[ok] - lo[ok, None]) / step[ok, None]), 0, 2 ** bits - 1)
    return (lo[:, None] + q * step[:, None]).reshape(x.shape).astype(np.float32), q


@pytest.mark.parametrize("bits", [8, 4])
def test_uniform_quantisation_matches_numpy_and_its_error_bound(bits):
    rng = np.random.default_rng(bits)
    x = rng.normal(size=(6, 3, 3, 5)).astype(np.float32) * rng.uniform(0.1, 10, (6, 1, 1, 1))
    x[1] = 0.0                                                    # zeros
    x[2] = 2.5                                                    # constant
    x[3] = np.abs(x[3])                                           # non-negative (AE codes)
    got = np.asarray(quantize(jnp.asarray(x), f"int{bits}"))
    want, want_q = numpy_uniform(x, bits)
    q, lo, st = quantize_uniform(jnp.asarray(x), bits)
    np.testing.assert_array_equal(np.asarray(q).reshape(6, -1), want_q)     # the same integers
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)     # lo + q * step (fma or not)
    step = (x.reshape(6, -1).max(1) - x.reshape(6, -1).min(1)) / (2 ** bits - 1)
    err = np.abs(got - x).reshape(6, -1).max(1)
    assert np.all(err <= step / 2 + 1e-5 * np.abs(x).reshape(6, -1).max(1))
    np.testing.assert_array_equal(got[1], 0.0)                    # zeros and constants exact
    np.testing.assert_array_equal(got[2], 2.5)
    assert q.dtype == jnp.uint8 and int(q.max()) <= 2 ** bits - 1
    assert int(q[0].min()) == 0 and int(q[0].max()) == 2 ** bits - 1   # the range is used
    np.testing.assert_allclose(dequantize_uniform(q, lo, st), got, rtol=1e-6, atol=1e-6)


def test_quantisation_ties_round_half_to_even():
    # int4 on [0, 15]: step exactly 1, so k + 0.5 are ties
    x = np.array([[0.0, 0.5, 1.5, 2.5, 3.5, 14.5, 15.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(quantize(jnp.asarray(x), "int4")),
                                  [[0, 0, 2, 2, 4, 14, 15]])
    x8 = np.array([[0.0, 0.5, 1.5, 254.5, 255.0]], np.float32)
    np.testing.assert_array_equal(np.asarray(quantize(jnp.asarray(x8), "int8")),
                                  [[0, 0, 2, 254, 255]])


def test_float_precisions_and_bits_arithmetic():
    x = np.array([[1.0 + 2 ** -12, 3.0, 65504.0]], np.float32)
    np.testing.assert_array_equal(quantize(jnp.asarray(x), "float32"), x)
    np.testing.assert_array_equal(quantize(jnp.asarray(x), "float16"), x.astype(np.float16))
    assert bits_per_image(3200, "float32") == 102400
    assert bits_per_image(3200, "float16") == 51200
    assert bits_per_image(3200, "int8") == 3200 * 8 + 64
    assert bits_per_image(3200, "int4") == 3200 * 4 + 64
    with pytest.raises(ValueError, match="choices: float32, float16, int8, int4"):
        bits_per_image(10, "int2")


# ----------------------------------------------------------------------------- VGG from a cut

TINY_VGG = (8, "M", 8, "M", 16, "M", 16, "M", 16, "M")


def test_vgg_runs_on_from_a_sown_map_exactly():
    model = VGG(cfg=TINY_VGG, batch_norm=True, num_classes=3, fc_features=32)
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 32, 32, 3)), jnp.float32)
    v = random_variables(model, x)
    logits, state = jax.jit(lambda v, x: model.apply(v, x, mutable="intermediates"))(v, x)
    for cut in ("block2", "features"):
        m = state["intermediates"][cut][0]
        rest = jax.jit(lambda v, m: model.apply(v, m, start=cut))(v, m)
        np.testing.assert_allclose(rest, logits, rtol=1e-5, atol=1e-6)
    with pytest.raises(ValueError, match="unknown start 'fc6'"):
        model.apply(v, m, start="fc6")


# ----------------------------------------------------------------------------- baselines

def test_pca_with_all_components_is_lossless_and_pooling_keeps_the_mean():
    rng = np.random.default_rng(0)
    f = np.abs(rng.normal(size=(20, 5, 5, 6))).astype(np.float32)
    mean, comps = s5.fit_pca(f)
    np.testing.assert_allclose(s5.pca_reconstruct(f, mean, comps, 6, "float32"), f, atol=1e-4)
    few = s5.pca_reconstruct(f, mean, comps, 2, "float32")
    ref = np.linalg.svd(f.reshape(-1, 6) - f.reshape(-1, 6).mean(0), full_matrices=False)
    best = ref[0][:, :2] * ref[1][:2] @ ref[2][:2] + f.reshape(-1, 6).mean(0)   # Eckart-Young
    np.testing.assert_allclose(few.reshape(-1, 6), best, atol=1e-3)
    one = s5.pool_reconstruct(f, 1, "float32")
    np.testing.assert_allclose(one, np.broadcast_to(f.mean((1, 2), keepdims=True), f.shape),
                               rtol=1e-5)
    assert s5.pca_components_for(5 * 5 * 3, (5, 5, 6)) == 3


# ----------------------------------------------------------------------------- end to end

COLOURS = ((220, 30, 30), (30, 200, 40), (40, 50, 230))


def _colour_archive(path, n_train=6, n_test=4, size=32):
    """A zip of red/green/blue noisy images: train/<class>/<i>.png, test/<class>/<i>.png."""
    rng = np.random.default_rng(0)
    with zipfile.ZipFile(path, "w") as z:
        for split, n in (("train", n_train), ("test", n_test)):
            for c, name in enumerate(("red", "green", "blue")):
                for i in range(n):
                    img = np.clip(np.array(COLOURS[c]) + rng.normal(0, 25, (size, size, 3)), 0, 255)
                    buf = io.BytesIO()
                    Image.fromarray(img.astype(np.uint8)).save(buf, format="PNG")
                    z.writestr(f"{split}/{name}/{i}.png", buf.getvalue())
    return path


def runs_json(run_dir):
    return json.loads((run_dir / "metrics.json").read_text())


def _tiny_vggs(monkeypatch):
    """vgg16 / vgg16_bn of the registry replaced by a 5-block VGG of 8-16 channels."""
    from aeclust_jax.models import vgg
    monkeypatch.setattr(vgg, "vgg16", lambda num_classes=1000, **kw: VGG(
        cfg=TINY_VGG, num_classes=num_classes, fc_features=32, **kw))
    monkeypatch.setattr(vgg, "vgg16_bn", lambda num_classes=1000, **kw: VGG(
        cfg=TINY_VGG, batch_norm=True, num_classes=num_classes, fc_features=32, **kw))


@pytest.mark.slow
def test_reproduce_setting_b_two_seeds_then_rerun_reuses_everything(tmp_path, monkeypatch, capsys):
    _tiny_vggs(monkeypatch)
    archive = _colour_archive(tmp_path / "colours.zip")
    out, work = tmp_path / "results", tmp_path / "runs"
    argv = ["s5", "--setting", "b", "--seeds", "2", "--path", str(archive), "--train-per-class", "6",
            "--test-per-class", "4", "--classifier-epochs", "3", "--classifier-batch-size", "6",
            "--ae-epochs", "2", "--widths", "8", "--precisions", "float32", "int4",
            "--out", str(out), "--runs", str(work), "--no-progress"]
    assert reproduce_main(argv) == 0
    res = json.loads((out / "results.json").read_text())["settings"]["b"]
    assert res["feature_shape"] == [4, 4, 16] and res["seeds"] == [0, 1]
    assert res["train_images"] == 18 and res["test_images"] == 12
    pts = res["points"]
    methods = {(p["method"], p["param"], p["precision"]) for p in pts}
    assert ("ae", 8, "int4") in methods and ("pca", 2, "float32") in methods   # 8*2*2/16 = 2
    assert ("pool", 2, "int4") in methods and ("quant", "raw", "float32") in methods
    assert len(pts) == 2 * (1 + 1 + 1 + 2)        # precisions x (raw, AE, PCA, grids 2 and 1)
    for p in pts:
        assert len(p["accuracy_per_seed"]) == 2 and 0 <= p["accuracy"]["mean"] <= 1
        assert p["bits"] == bits_per_image(p["values"], p["precision"])
    ae8 = next(p for p in pts if p["method"] == "ae" and p["param"] == 8 and p["precision"] == "float32")
    assert ae8["values"] == 2 * 2 * 8 and ae8["value_compression"] == pytest.approx(1 - 32 / 256)
    raw = [p for p in pts if p["method"] == "quant" and p["precision"] == "float32"][0]
    assert raw["accuracy"]["std"] == 0.0                  # one VGG for both seeds
    # the two AE seeds differ (their reconstruction errors), the VGG and PCA do not
    errs = [runs_json(work / "b" / f"seed{s}")["points"] for s in (0, 1)]
    ae_err = [[p["relative_mse"] for p in e if p["method"] == "ae"] for e in errs]
    pca_err = [[p["relative_mse"] for p in e if p["method"] == "pca"] for e in errs]
    assert ae_err[0] != ae_err[1] and pca_err[0] == pca_err[1]
    assert [r["class"] for r in res["per_class"]] == ["blue", "green", "red"]
    claim = res["claim"]
    assert claim["holds"] in (True, False, None) and "points drop" in claim["evidence"]
    raw_mean = raw["accuracy"]["mean"]
    assert (claim["holds"] is None) == (raw_mean < 1 / 3 + s5.CHANCE_MARGIN)    # chance: no test
    md = (out / "results.md").read_text()
    verdict = {True: "**holds**", False: "**does not hold**", None: "**not testable**"}
    assert "| **mean** |" in md and verdict[claim["holds"]] in md
    assert (out / "figures" / "rate_accuracy_b.png").stat().st_size > 10000
    assert len(list((work / "b").glob("classifier-*"))) == 1           # the VGG trained once
    assert len(list((work / "b" / "features").glob("*.npy"))) == 2     # train + test maps
    run0 = work / "b" / "seed0"
    assert {"config.yaml", "history.jsonl", "metrics.json", "checkpoints", "figures"} <= {
        p.name for p in run0.iterdir()}
    stages = {json.loads(l)["stage"] for l in (run0 / "history.jsonl").read_text().splitlines()}
    assert stages == {"ae_w8"}
    before = (out / "results.json").read_text()
    capsys.readouterr()
    assert reproduce_main(argv) == 0                     # complete runs are reused as they are
    assert "[s5] setting b seed 0:" in capsys.readouterr().out
    assert json.loads((out / "results.json").read_text()) == json.loads(before)


def test_reproduce_shards_and_workers_keep_a_settings_seeds_together(tmp_path, monkeypatch, capsys):
    """A setting (its seeds share one trained classifier) is one grid task: ``--shard 1/2`` of
    both settings runs setting b alone, all its seeds, and writes no table; bad grid options are
    refused before anything is written."""
    archive = _colour_archive(tmp_path / "colours.zip")
    calls = []
    monkeypatch.setattr(s5.report, "_run_setting",
                        lambda base, work, seeds: calls.append((work.name, base.backbone, seeds)) or [])
    out, work = tmp_path / "results", tmp_path / "runs"
    argv = ["s5", "--setting", "both", "--seeds", "3", "--path", str(archive), "--train-per-class",
            "6", "--test-per-class", "4", "--out", str(out),
            "--runs", str(work), "--no-progress"]
    assert reproduce_main(argv + ["--shard", "1/2"]) == 0
    assert calls == [("b", "vgg16_bn", 3)]
    assert "shard 1/2: done" in capsys.readouterr().out and not (out / "results.json").exists()
    assert reproduce_main(argv + ["--shard", "0/2"]) == 0 and calls[1][0] == "a"
    for bad, message in ((["--workers", "0"], "--workers must be >= 1"),
                         (["--shard", "2/2"], "--shard 2/2: I must be in 0..N-1")):
        assert run_main(reproduce_main, argv + bad) == 2
        assert message in capsys.readouterr().err
    assert len(calls) == 2 and not work.exists()


def _tiny_efficientnet(monkeypatch):
    """efficientnet_lite0_imagenet replaced by a two-stage EfficientNet-Lite, random weights."""
    import aeclust_jax.models as models
    from aeclust_jax.models.efficientnet import EfficientNetLite

    def build(num_classes=1000):
        model = EfficientNetLite(num_classes=num_classes, stages=((3, 1, 1, 8, 1), (3, 2, 2, 8, 1)),
                                 stem_features=8, head_features=16)
        return model, random_variables(model, jnp.zeros((1, 24, 24, 3)))
    monkeypatch.setattr(models, "efficientnet_lite0_imagenet", build)


@pytest.mark.slow
def test_train_feature_ae_on_a_frozen_efficientnet_with_its_pooled_head(tmp_path, monkeypatch,
                                                                         capsys):
    _tiny_efficientnet(monkeypatch)
    archive = _colour_archive(tmp_path / "colours.zip", size=24)
    out = tmp_path / "run"
    assert train_main(["--model", "feature_ae", "--path", str(archive), "--image-size", "24",
                       "--train-per-class", "6", "--test-per-class", "4", "--classifier-epochs",
                       "40", "--classifier-lr", "0.05", "--ae-epochs", "2", "--widths", "4",
                       "--precisions", "float32", "int4", "--pool-sizes", "1",
                       "--feature-cache", str(tmp_path / "cache"), "--no-progress",
                       "--out", str(out)]) == 0
    assert "raw_accuracy=" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["feature_shape"] == [6, 6, 16] and m["test_images"] == 12
    assert m["raw_accuracy"] > 0.6                     # the head learned the colours
    acc = {(p["method"], p["param"], p["precision"]): p["accuracy"] for p in m["points"]}
    # the head averages the map: pooling to 1x1 and back keeps that mean, so its accuracy
    assert acc[("pool", 1, "float32")] == acc[("quant", "raw", "float32")]
    sp = m["seed_point"]
    assert sp["param"] == 4 and sp["values"] == 4 * 4 * 4 and sp["bits"] == 64 * 32
    stages = [json.loads(l)["stage"] for l in (out / "history.jsonl").read_text().splitlines()]
    assert stages.count("head") == 40 and stages.count("ae_w4") == 2
    assert (out / "figures" / "rate_accuracy.png").is_file()


def _tiny_vgg16_pth(path):
    """A torchvision-layout state dict of the tiny VGG (no batch norm), random, saved by torch."""
    torch = pytest.importorskip("torch")
    g = torch.Generator().manual_seed(0)
    sd, cin, i = {}, 3, 0
    for v in TINY_VGG:
        if v == "M":
            i += 1
            continue
        sd[f"features.{i}.weight"] = torch.randn(v, cin, 3, 3, generator=g) * (2 / (9 * v)) ** .5
        sd[f"features.{i}.bias"] = torch.zeros(v)
        cin, i = v, i + 2
    for k, (o, n) in {0: (32, cin * 49), 3: (32, 32), 6: (1000, 32)}.items():
        sd[f"classifier.{k}.weight"] = torch.randn(o, n, generator=g) * 0.01
        sd[f"classifier.{k}.bias"] = torch.zeros(o)
    torch.save(sd, path)
    return path


@pytest.mark.slow
def test_paper_command_fine_tunes_a_pth_and_cuts_its_last_map(tmp_path, monkeypatch, capsys):
    _tiny_vggs(monkeypatch)
    archive = _colour_archive(tmp_path / "colours.zip", n_train=4, n_test=2)
    pth = _tiny_vgg16_pth(tmp_path / "vgg16-tiny.pth")
    out, work = tmp_path / "results", tmp_path / "runs"
    base = ["s5", "--setting", "paper", "--path", str(archive), "--out", str(out),
            "--runs", str(work), "--no-progress"]
    assert run_main(reproduce_main, base) == 2          # the seed's setting needs the weights
    assert "needs --weights" in capsys.readouterr().err and not out.exists() and not work.exists()
    # the documented command, at tiny sizes: 32 px puts 'features' at 1x1, so a 1x1 AE kernel
    assert reproduce_main(base + ["--weights", str(pth), "--seeds", "1", "--image-size", "32",
                                  "--kernel", "1", "--train-per-class", "4", "--test-per-class",
                                  "2", "--classifier-epochs", "1", "--ae-epochs", "1",
                                  "--widths", "4", "--precisions", "float32", "int8",
                                  "--pool-sizes", "1"]) == 0
    res = json.loads((out / "results.json").read_text())["settings"]["paper"]
    assert res["feature_shape"] == [1, 1, 16] and "seed's setting" in res["title"]
    assert res["seed_point"]["value_compression"] == pytest.approx(0.75)
    cls = next((work / "paper").glob("classifier-*"))
    import yaml
    scfg = yaml.safe_load((cls / "config.yaml").read_text())
    assert scfg["pretrained"] == str(pth) and scfg["model"] == "vgg16"
    assert scfg["optimizer"] == "adam" and scfg["lr"] == 1e-5 and scfg["batch_size"] == 4
    assert (out / "figures" / "rate_accuracy_paper.png").is_file()


def test_bad_options_fail_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    cases = [(["--backbone", "efficientnet_lite0", "--weights", "train"], "takes --weights imagenet"),
             (["--backbone", "vgg16_bn", "--weights", "imagenet"], "no ImageNet weights ship"),
             (["--backbone", "vgg16", "--weights", str(tmp_path / "no.pth")], "no.pth: no such file"),
             (["--backbone", "vgg16_bn", "--weights", "train", "--layer", "fc6"], "unknown layer 'fc6'"),
             (["--widths", "0"], "widths must be positive"),
             (["--ae-lr", "0"], "ae_lr must be > 0")]
    for extra, msg in cases:
        argv = ["--model", "feature_ae", "--path", str(tmp_path), "--out", str(out)] + extra
        assert run_main(train_main, argv) == 2, extra
        assert msg in capsys.readouterr().err, extra
        assert not out.exists()
    assert run_main(train_main, ["--model", "feature_ae", "--precisions", "int2"]) == 2
    assert "invalid choice: 'int2'" in capsys.readouterr().err
