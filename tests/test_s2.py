"""S2: the four autoencoders (shapes at 32 and 96 px, 128-d features, U-Net skips
carry information, equal to the literal networks in values and gradients), training lowers the MSE, the evaluation protocol against scikit-learn, PCA, the claims, and the
train / reproduce CLIs end to end on small learnable image archives (CIFAR-like 32 px and an
STL-10-like tar with an unlabeled split at 96 px)."""

import io
import json
import tarfile
import zipfile

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from PIL import Image

from aeclust_jax.cli import reproduce_main, run_main, train_main
from aeclust_jax.models import get_model
from aeclust_jax.models.cae import CAE_MODELS
from aeclust_jax.studies import natural_cae as s2

COLOURS = ("red", "green", "blue")


def _colour_images(n, size, seed):
    """uint8 (n, size, size, 3) noisy images whose dominant channel is the class, a bright
    square at a random place (something for an autoencoder to reconstruct), labels (n,)."""
    rng = np.random.default_rng(seed)
    y = np.arange(n) % 3
    x = rng.integers(0, 80, (n, size, size, 3))
    x[np.arange(n), :, :, y] += 150
    for i in range(n):
        r, c = rng.integers(0, size - size // 4, 2)
        x[i, r:r + size // 4, c:c + size // 4] = 250
    return x.clip(0, 255).astype(np.uint8), y


@pytest.fixture(scope="module")
def colour_zip(tmp_path_factory):
    path = tmp_path_factory.mktemp("s2") / "colours.zip"
    with zipfile.ZipFile(path, "w") as z:
        for split, n, seed in (("train", 36, 0), ("test", 18, 1)):
            x, y = _colour_images(n, 32, seed)
            for i, (img, label) in enumerate(zip(x, y)):
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                z.writestr(f"{split}/{COLOURS[label]}/{i}.png", buf.getvalue())
    return path


# ----------------------------------------------------------------------------- models

@pytest.mark.parametrize("name", CAE_MODELS)
@pytest.mark.parametrize("size", [32, 96])
def test_shapes_and_128d_feature(name, size):
    model = get_model(name, image_size=size)
    x = jax.ShapeDtypeStruct((2, size, size, 3), jnp.float32)
    variables = jax.eval_shape(model.init, jax.random.key(0), x)
    out = jax.eval_shape(model.apply, variables, x)
    feat = jax.eval_shape(lambda v, x: model.apply(v, x, method=model.encode), variables, x)
    assert out.recon.shape == (2, size, size, 3) and out.feature.shape == (2, 128)
    assert feat.shape == (2, 128)


def _literal_cae(name, params, x):
    """The four CAEs as their docstrings state them, written with plain lax convs on literally
    upsampled (jnp.repeat) maps and concatenated skips, no code shared with models/cae.py:
    x (N, S, S, 3) -> (recon, feature)."""
    def conv(name_, t, stride=1):
        p = params[name_]
        pad = ((1, 1), (1, 1)) if stride == 1 else ((0, 1), (0, 1))
        return jax.lax.conv_general_dilated(t, p["kernel"], (stride, stride), pad,
                                            dimension_numbers=("NHWC", "HWIO", "NHWC")) + p["bias"]

    def up(t):
        return jnp.repeat(jnp.repeat(t, 2, axis=1), 2, axis=2)

    relu = jax.nn.relu
    if name == "cae_v3":
        y = x
        for i in range(4):
            y = relu(conv(f"enc_conv{i + 1}", y))
            n, h, w, c = y.shape
            y = y.reshape(n, h // 2, 2, w // 2, 2, c).max(axis=(2, 4))
        code = y
        for i in range(4):
            y = up(relu(conv(f"dec_conv{i + 1}", y)))
        n, h, w, c = code.shape
        feature = code.reshape(n, 2, h // 2, 2, w // 2, c).mean(axis=(2, 4)).reshape(n, -1)
        return jax.nn.sigmoid(conv("dec_out", y)), feature
    maps, y = [], x
    for i, stride in enumerate((1, 2, 2, 2)):
        y = relu(conv(f"enc_conv{i + 1}", y, stride))
        maps.append(y)
    if name == "cae_v2":
        dense = lambda name_, t: t @ params[name_]["kernel"] + params[name_]["bias"]
        feature = dense("fc_enc", maps[-1].reshape(len(x), -1))
        y = relu(dense("fc_dec", feature)).reshape(maps[-1].shape)
    else:
        feature = maps[-1].mean(axis=(1, 2))
    for i, skip in enumerate(maps[-2::-1]):
        y = up(y)
        if name == "unet":
            y = jnp.concatenate([y, skip], axis=-1)
        y = relu(conv(f"dec_conv{i + 1}", y))
    return jax.nn.sigmoid(conv("dec_out", y)), feature


@pytest.mark.parametrize("name", CAE_MODELS)
def test_cae_equals_the_literal_network_values_and_gradients(name):
    """The decoders compute each upsample-then-conv on the small map (models.cae.UpConv): same
    function and parameters as the literal network, values and parameter gradients, at 32 px on
    real-looking images and on a constant image (ties everywhere in cae_v3's max pools)."""
    x, _ = _colour_images(3, 32, 7)
    x = jnp.asarray(np.concatenate([x / 255.0, np.full((1, 32, 32, 3), 0.5)]), jnp.float32)
    model = get_model(name)
    params = model.init(jax.random.key(3), x)["params"]
    # biases are initialised to 0: make them non-zero and different so that they are checked too
    params = jax.tree.map(lambda p: p + 0.05 * jnp.cos(jnp.arange(p.size)) if p.ndim == 1 else p,
                          params)

    def loss(fn, p):                       # MSE plus a feature term: gradients through both
        r, f = fn(p)
        return jnp.mean((r - x) ** 2) + 1e-2 * jnp.mean(f ** 2)

    @jax.jit                               # one compile per side
    def both(p):
        ours_fn = lambda q: tuple(model.apply({"params": q}, x))
        ref_fn = lambda q: _literal_cae(name, q, x)
        return (ours_fn(p), ref_fn(p), jax.grad(lambda q: loss(ours_fn, q))(p),
                jax.grad(lambda q: loss(ref_fn, q))(p))

    (recon_o, feature_o), (recon, feature), ours, ref = both(params)
    np.testing.assert_allclose(recon_o, recon, atol=2e-6)
    np.testing.assert_allclose(feature_o, feature, rtol=1e-5, atol=1e-6)
    for path, g in jax.tree_util.tree_leaves_with_path(ours):
        r = ref
        for k in path:
            r = r[k.key]
        scale = float(jnp.abs(r).max())
        assert scale > 0, path
        np.testing.assert_allclose(g, r, atol=1e-4 * scale, err_msg=str(path))


def test_encode_is_the_feature_of_the_forward_pass_and_recon_in_unit_range():
    x = jnp.asarray(_colour_images(3, 32, 0)[0] / 255.0, jnp.float32)
    model = get_model("cae_v2")

    @jax.jit                                    # one compile: init, forward, encode
    def both(key):
        v = model.init(key, x)
        return model.apply(v, x), model.apply(v, x, method=model.encode)

    out, feature = both(jax.random.key(1))
    np.testing.assert_allclose(feature, out.feature, atol=1e-6)
    assert 0 <= float(out.recon.min()) and float(out.recon.max()) <= 1
    assert float(jnp.std(out.feature, axis=0).mean()) > 0     # images differ in features


def test_bad_sizes_are_refused():
    for size in (16, 40):
        with pytest.raises(ValueError, match="multiple of 16"):
            get_model("cae_v1", image_size=size).init(jax.random.key(0), jnp.zeros((1, size, size, 3)))


def test_unet_skips_carry_information():
    x = jnp.asarray(_colour_images(2, 32, 3)[0] / 255.0, jnp.float32)
    model, cut = get_model("unet"), get_model("unet", skip_scale=0.0)

    @jax.jit
    def outputs(key):
        v = model.init(key, x)
        return v, model.apply(v, x), cut.apply(v, x)

    v, full, none = outputs(jax.random.key(0))
    assert float(jnp.abs(full.recon - none.recon).max()) > 1e-3       # skips change the output
    np.testing.assert_allclose(full.feature, none.feature)          # not the feature
    # the decoder's first conv takes the upsampled code and the S/4 encoder map concatenated
    assert v["params"]["dec_conv1"]["kernel"].shape == (3, 3, 128 + 64, 64)
    plain = jax.eval_shape(get_model("cae_v1").init, jax.random.key(0), x)
    assert plain["params"]["dec_conv1"]["kernel"].shape == (3, 3, 128, 64)


# ----------------------------------------------------------------------------- protocol

def test_evaluate_features_matches_scikit_learn():
    from sklearn.metrics import normalized_mutual_info_score
    from sklearn.neighbors import KNeighborsClassifier
    rng = np.random.default_rng(0)
    centres = rng.normal(0, 3, (10, 16))
    ytr, yte = np.arange(300) % 10, np.arange(200) % 10
    tr = (centres[ytr] + rng.normal(0, 2.5, (300, 16))).astype(np.float32)
    te = (centres[yte] + rng.normal(0, 2.5, (200, 16))).astype(np.float32)
    got = s2.evaluate_features(tr, ytr, te, yte, k=10, seed=0)
    pred = got["clusters"]
    assert pred.shape == (200,) and len(np.unique(pred)) == 10
    assert got["nmi"] == pytest.approx(normalized_mutual_info_score(yte, pred), abs=1e-5)
    knn = KNeighborsClassifier(5, algorithm="brute").fit(tr, ytr).predict(te)
    assert got["knn_accuracy"] == pytest.approx(np.mean(knn == yte))
    # pairwise F by brute force over the pairs
    same_t, same_p = yte[:, None] == yte[None], pred[:, None] == pred[None]
    iu = np.triu_indices(200, 1)
    tp = np.sum(same_t[iu] & same_p[iu])
    f = 2 * tp / (np.sum(same_t[iu]) + np.sum(same_p[iu]))
    assert got["pairwise_f"] == pytest.approx(f, abs=1e-5)
    assert 0.2 < got["nmi"] < 1 and 0 < got["bcubed_f"] < 1      # noisy: neither 0 nor perfect
    again = s2.evaluate_features(tr, ytr, te, yte, k=10, seed=0)
    assert again["nmi"] == got["nmi"]                            # seeded
    perfect = s2.evaluate_features(centres[ytr], ytr, centres[yte], yte, k=10, seed=0)
    assert perfect["nmi"] == pytest.approx(1) and perfect["knn_accuracy"] == 1


def test_pca_reduce_matches_scikit_learn_up_to_sign():
    from sklearn.decomposition import PCA
    rng = np.random.default_rng(1)
    tr = rng.normal(0, 1, (200, 40)) @ rng.normal(0, 1, (40, 40))
    te = rng.normal(0, 1, (50, 40)) @ rng.normal(0, 1, (40, 40))
    a, b = s2.pca_reduce(tr, te, 8)
    p = PCA(8).fit(tr)
    np.testing.assert_allclose(np.abs(a), np.abs(p.transform(tr)), rtol=1e-3, atol=1e-3)
    np.testing.assert_allclose(np.abs(b), np.abs(p.transform(te)), rtol=1e-3, atol=1e-3)


def _row(model, pf, bf, nmi, knn, mse=None, domain="in", train_acc=None):
    r = {"model": model, "domain": domain}
    for k, v in zip(s2.SCORES, (pf, bf, nmi, knn)):
        r[k] = {"mean": v, "std": 0.0}
    if mse is not None:
        r["recon_mse"] = {"mean": mse, "std": 0.0}
    if train_acc is not None:
        r["final_train_accuracy"] = {"mean": train_acc, "std": 0.0}
    return r


def test_claims():
    cae = [_row("cae_v1", .14, .15, .09, .30, mse=.010), _row("unet", .18, .20, .13, .29, mse=.001),
           _row("cae_v2", .17, .18, .15, .31, mse=.020)]
    rows = cae + [_row("resnet18", .80, .80, .78, .89), _row("resnet34", .81, .81, .80, .90),
                  _row("efficientnet_lite0", .45, .50, .52, .69)]
    v = {c["claim"][:3]: c["verdict"] for c in s2.check_claims(rows)}
    assert v == {"(1)": "holds", "(2)": "holds", "(3)": "holds", "(4)": "holds"}
    four = {c["claim"][:3]: c for c in s2.check_claims(rows)}["(4)"]["numbers"]
    assert ("ResNet34 - ResNet18: pairwise_f +0.010, bcubed_f +0.010, nmi +0.020, knn_accuracy "
            "+0.010 (one seed: no spread" in four)
    # two seeds each: a gap counts beside the larger seed std of its score
    for r, std in ((rows[3], .015), (rows[4], .005)):
        r["seeds"] = [0, 1]
        for k in s2.SCORES:
            r[k]["std"] = std
    four = {c["claim"][:3]: c for c in s2.check_claims(rows)}["(4)"]["numbers"]
    assert "(1 of 4 gaps exceed the larger seed std of their score)" in four     # NMI's 0.02
    # the best reconstructor also has the best features; a ResNet below the best CAE's NMI
    rows2 = [_row("cae_v1", .14, .15, .09, .30, mse=.010), _row("unet", .18, .20, .16, .32, mse=.001),
             _row("resnet18", .80, .80, .10, .89), _row("resnet34", .70, .81, .80, .90)]
    v = {c["claim"][:3]: c["verdict"] for c in s2.check_claims(rows2)}
    assert v == {"(1)": "does not hold", "(2)": "does not hold", "(3)": "not testable here",
                 "(4)": "does not hold"}
    # a ResNet that did not train (train accuracy near chance, as a diverged ResNet-50 here) is
    # left out of (2) and (4), and named; with one trained size left, (4) is not testable
    rows3 = cae + [_row("resnet18", .80, .80, .78, .89, train_acc=.60),
                   _row("resnet50", .18, .19, .02, .15, train_acc=.11)]
    c = {c["claim"][:3]: c for c in s2.check_claims(rows3, chance=0.1)}
    assert c["(2)"]["verdict"] == "holds" and c["(4)"]["verdict"] == "not testable here"
    assert "left out: ResNet50 did not train (train accuracy 0.11, chance 0.10)" in c["(4)"]["numbers"]
    assert "ResNet50" not in c["(2)"]["numbers"].split("; left out")[0]
    rows3[-1]["final_train_accuracy"]["mean"] = 0.25              # trained, if poorly: counted
    c = {c["claim"][:3]: c for c in s2.check_claims(rows3, chance=0.1)}
    assert c["(2)"]["verdict"] == "does not hold" and c["(4)"]["verdict"] == "does not hold"


# ----------------------------------------------------------------------------- CLIs

def test_train_cli_cae_end_to_end_and_resume_rules(colour_zip, tmp_path, capsys):
    out = tmp_path / "run"
    base = ["--model", "cae_v3", "--dataset", "image_folder", "--path", str(colour_zip),
            "--train-per-class", "6", "--batch-size", "12", "--epochs", "2", "--n-clusters", "3",
            "--no-progress", "--out", str(out)]
    assert train_main(base) == 0
    assert "knn_accuracy=" in capsys.readouterr().out
    m = json.loads((out / "metrics.json").read_text())
    assert m["unlabeled_images"] == 36 and m["train_images"] == 18 and m["test_images"] == 18
    assert m["feature_dim"] == 128 and 0 < m["recon_mse"] < 0.2
    assert m["knn_accuracy"] > 0.9        # the colour is in the features of even a tiny CAE
    hist = [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines()]
    # a few Adam steps (3 per epoch) reduce the reconstruction MSE
    assert [h["epoch"] for h in hist] == [1, 2] and hist[1]["loss"] < 0.9 * hist[0]["loss"]
    for f in ("config.yaml", "figures/reconstructions.png", "figures/tsne.png", "checkpoints"):
        assert (out / f).exists(), f
    before = (out / "metrics.json").read_text()
    assert run_main(train_main, ["--resume", "--out", str(out), "--lr", "0.5"]) == 2
    assert "lr (0.001 -> 0.5)" in capsys.readouterr().err
    assert train_main(["--resume", "--out", str(out), "--no-progress"]) == 0
    assert (out / "metrics.json").read_text() == before


def test_cli_errors_before_anything_is_written(colour_zip, tmp_path, capsys):
    out = tmp_path / "run"
    cases = [(["--model", "cae_v1", "--dataset", "image_folder"], "needs --path"),
             (["--model", "cae_v1", "--path", str(colour_zip), "--batch-size", "12", "--knn-k", "500"],
              "knn_k 500"),
             (["--model", "cae_v1", "--path", str(colour_zip)], "batch_size 128 exceeds the 36"),
             (["--model", "cae_v1", "--path", str(colour_zip), "--epochs", "0"], "epochs must be"),
             (["--model", "cae_v1", "--path", str(colour_zip), "--unlabeled-split", "x"],
              "invalid choice"),
             (["--model", "unet", "--path", str(colour_zip), "--pretrained-dir",
               str(tmp_path / "nowhere")], "no such folder")]
    for argv, msg in cases:
        assert run_main(train_main, argv + ["--out", str(out), "--no-progress"]) == 2
        assert msg in capsys.readouterr().err
        assert not out.exists()
    assert run_main(reproduce_main, ["s2", "--path", str(colour_zip), "--cross", "resnet18"]) == 2
    assert "--supervised-dataset" in capsys.readouterr().err


def test_pretrained_dir_and_cross_domain_jobs(tmp_path):
    (tmp_path / "resnet18-f37072fd.pth").write_bytes(b"")
    base = s2.S2Config(path="x.zip", pretrained_dir=str(tmp_path))
    jobs = s2.planned_jobs(base, ["cae_v1", "efficientnet_lite0", "resnet18"], [0, 1], ["resnet18"],
                           dict(supervised_dataset="cifar10", supervised_path="",
                                supervised_per_class=0))
    assert list(jobs) == ["cae_v1-s0", "efficientnet_lite0-s0", "resnet18-s0", "resnet18-cross-s0",
                          "cae_v1-s1", "resnet18-s1", "resnet18-cross-s1"]
    sup = s2.supervised_config(jobs["resnet18-cross-s1"].validate())
    assert (sup.dataset, sup.train_per_class, sup.embed_dim, sup.seed) == ("cifar10", 0, 128, 1)
    assert sup.pretrained.endswith("resnet18-f37072fd.pth") and sup.backbone_lr_scale == 0.1
    sup = s2.supervised_config(jobs["resnet18-s0"])
    assert (sup.dataset, sup.path, sup.train_per_class) == ("image_folder", "x.zip", 500)
    with pytest.raises(s2.ConfigError, match="resnet34"):
        s2.S2Config(model="resnet34", path="x.zip", pretrained_dir=str(tmp_path)).validate()


def _stl_like_tar(path):
    """stl10_binary.tar.gz of colour images (train/test labeled 1..3, unlabeled)."""
    def add(tar, name, data):
        info = tarfile.TarInfo(name)
        info.size = len(data)
        tar.addfile(info, io.BytesIO(data))
    path.parent.mkdir(parents=True, exist_ok=True)
    with tarfile.open(path, "w:gz") as tar:
        for split, n, seed in (("train", 12, 4), ("test", 12, 5), ("unlabeled", 24, 6)):
            x, y = _colour_images(n, 96, seed)
            add(tar, f"stl10_binary/{split}_X.bin", x.transpose(0, 3, 2, 1).tobytes())
            if split != "unlabeled":
                add(tar, f"stl10_binary/{split}_y.bin", (y + 1).astype(np.uint8).tobytes())
    return path


def test_reproduce_paper_layout_on_stl10_like_fixture(tmp_path, monkeypatch, capsys):
    """The paper's command shape: STL-10 at 96 px, CAEs on its unlabeled split, 2 seeds in two
    worker processes; results.json / results.md / figures with the claims. A run trained here
    (``--shard``) gives the worker's numbers."""
    raw = tmp_path / "raw"
    _stl_like_tar(raw / "stl10" / "stl10_binary.tar.gz")
    monkeypatch.setenv("AECLUST_MANUAL_DIR", str(raw))
    out, runs_dir = tmp_path / "res", tmp_path / "runs"
    argv = ["s2", "--dataset", "stl10", "--dataset-options", "verify_checksums=false",
            "--unlabeled-split", "unlabeled", "--models", "cae_v3", "--seeds", "2",
            "--epochs", "1", "--batch-size", "8", "--train-per-class", "4", "--n-clusters", "3",
            "--no-tsne", "--no-progress", "--out", str(out), "--runs", str(runs_dir)]
    assert reproduce_main(argv + ["--workers", "2"]) == 0
    assert "2 runs on 2 worker processes" in capsys.readouterr().out
    # the second of two shares, in this process: only cae_v3-s1, no table
    out2, runs2 = tmp_path / "res2", tmp_path / "runs2"
    share = argv[:-4] + ["--out", str(out2), "--runs", str(runs2), "--shard", "1/2"]
    assert reproduce_main(share) == 0
    assert "shard 1/2: done" in capsys.readouterr().out
    assert not (runs2 / "cae_v3-s0").exists() and not (out2 / "results.json").exists()
    here, there = (json.loads((d / "cae_v3-s1" / "metrics.json").read_text()) for d in (runs2, runs_dir))
    keys = ("pairwise_f", "bcubed_f", "nmi", "knn_accuracy", "recon_mse")
    seed0 = json.loads((runs_dir / "cae_v3-s0" / "metrics.json").read_text())
    assert seed0["recon_mse"] != there["recon_mse"]       # the comparison tells seeds apart
    if jax.device_count() == 1:      # a worker has one device; more here shard the batch
        assert {k: here[k] for k in keys} == {k: there[k] for k in keys}
    else:
        assert [here[k] for k in keys] == pytest.approx([there[k] for k in keys], rel=1e-3)
    res = json.loads((out / "results.json").read_text())
    rows = {r["model"]: r for r in res["rows"]}
    assert set(rows) == {"cae_v3"} and rows["cae_v3"]["seeds"] == [0, 1]
    assert res["setting"]["unlabeled images"] == 24 and res["setting"]["test"] == 12
    assert rows["cae_v3"]["seed_paper"]["nmi"] == 0.1220
    md = (out / "results.md").read_text()
    assert "Table 1" in md and "| CAEv3 | 2 |" in md and "(1) reconstruction quality" in md
    assert (out / "figures" / "reconstructions.png").is_file()
    m = json.loads((runs_dir / "cae_v3-s1" / "metrics.json").read_text())
    assert m["unlabeled_images"] == 24 and m["seed"] == 1
    # a second call reuses every finished run
    before = (runs_dir / "cae_v3-s1" / "metrics.json").stat().st_mtime_ns
    assert reproduce_main(argv) == 0
    assert (runs_dir / "cae_v3-s1" / "metrics.json").stat().st_mtime_ns == before
    # ... also under other ResNet settings, which a CAE row does not read; a setting it reads is
    # refused before anything runs, naming the run and the field
    assert reproduce_main(argv + ["--resnet-epochs", "7", "--resnet-lr", "0.5"]) == 0
    assert (runs_dir / "cae_v3-s1" / "metrics.json").stat().st_mtime_ns == before
    capsys.readouterr()
    assert run_main(reproduce_main, argv + ["--epochs", "2"]) == 2
    err = capsys.readouterr().err
    assert "cae_v3-s0 holds a finished run made with other settings: epochs (1 -> 2)" in err
    assert (runs_dir / "cae_v3-s1" / "metrics.json").stat().st_mtime_ns == before


def test_each_kind_of_row_may_differ_only_in_the_fields_it_does_not_read():
    cae, resnet, effnet = (set(s2.reuse_may_differ(m)) for m in ("unet", "resnet50", "efficientnet_lite0"))
    assert {"resnet_epochs", "resnet_lr", "pretrained_dir", "effnet_size"} <= cae
    assert not {"epochs", "lr", "unlabeled_limit", "batch_size", "seed", "train_per_class"} & cae
    assert {"epochs", "lr", "unlabeled_limit", "effnet_size"} <= resnet
    assert not {"resnet_epochs", "resnet_lr", "image_size", "supervised_dataset", "batch_size"} & resnet
    assert {"epochs", "resnet_epochs"} <= effnet and "effnet_size" not in effnet
