"""S3 (autoencoder pretraining with 1% of the labels): label subset, models, frozen encoder,
the scanned fit loop against the engine's, and the CLIs end to end on a slice of real MNIST."""

import dataclasses
import json

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from aeclust_jax import train
from aeclust_jax.cli import run_main
from aeclust_jax.config import ConfigError
from aeclust_jax.data import Dataset
from aeclust_jax.models import get_model
from aeclust_jax.studies import pretrain as s3


def _toy(n=120, k=4, seed=0):
    """Class-dependent uint8 images (n, 28, 28, 1): class c lights up its own band of rows."""
    rng = np.random.default_rng(seed)
    labels = np.arange(n) % k
    img = rng.integers(0, 40, (n, 28, 28, 1)).astype(np.uint8)
    for i, c in enumerate(labels):
        img[i, 7 * c:7 * c + 7] = rng.integers(150, 256, (7, 28, 1))
    return Dataset("toy", img, labels.astype(np.int32), k, tuple(map(str, range(k))))


# ----------------------------------------------------------------------------- label subset

def test_stratified_subset_equal_counts_and_seeded():
    rng = np.random.default_rng(0)
    # MNIST-like imbalance: 10 classes of 5421..6742 rows, 60000 in all.
    counts = np.array([5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949])
    labels = rng.permutation(np.repeat(np.arange(10), counts))
    a = s3.stratified_subset(labels, 0.01, seed=3, num_classes=10)
    assert len(a) == 600 and len(np.unique(a)) == 600
    np.testing.assert_array_equal(np.bincount(labels[a], minlength=10), np.full(10, 60))
    np.testing.assert_array_equal(a, s3.stratified_subset(labels, 0.01, seed=3, num_classes=10))
    assert not np.array_equal(a, s3.stratified_subset(labels, 0.01, seed=4, num_classes=10))
    np.testing.assert_array_equal(np.bincount(labels[s3.stratified_subset(labels, 0.001, seed=0)]),
                                  np.full(10, 6))
    np.testing.assert_array_equal(s3.stratified_subset(labels, 1.0, seed=0), np.arange(60000))
    # the seed's own sampling: a uniformly random 1% (counts per class then vary)
    r = s3.random_subset(60000, 0.008, seed=3)
    assert len(r) == 480 and len(np.unique(r)) == 480
    np.testing.assert_array_equal(r, s3.random_subset(60000, 0.008, seed=3))
    cfg = s3.S3Config(label_sampling="random", labels_fraction=0.008, seed=3)
    np.testing.assert_array_equal(s3.label_rows(cfg, labels, 10), r)


def test_stratified_subset_errors():
    labels = np.array([0] * 50 + [1] * 3)
    with pytest.raises(ValueError, match="class 1"):
        s3.stratified_subset(labels, 0.5, seed=0)
    with pytest.raises(ValueError, match="fraction"):
        s3.stratified_subset(labels, 0.0, seed=0)


# ----------------------------------------------------------------------------- models

def test_models_shapes_and_widths_as_config():
    x = jnp.zeros((3, 28, 28, 1))
    ae = get_model("mlp_ae", encoder_widths=(64, 1), head_widths=(10,))
    p = ae.init(jax.random.key(0), x)["params"]
    recon, logits = ae.apply({"params": p}, x)
    assert recon.shape == (3, 28, 28, 1) and logits.shape == (3, 10)
    code = ae.apply({"params": p}, x, method=type(ae).encode)
    assert code.shape == (3, 1)
    assert p["encoder_hidden"]["dense0"]["kernel"].shape == (784, 64)
    assert p["decoder_hidden"]["dense0"]["kernel"].shape == (1, 64)
    assert p["decoder_out"]["dense0"]["kernel"].shape == (64, 784)
    mlp = get_model("mlp", hidden_widths=(10,))
    q = mlp.init(jax.random.key(0), x)["params"]
    assert [v["kernel"].shape for v in q["head"].values()] == [(784, 10), (10, 10)]
    # the seed's init: N(0, 0.03^2) weights, zero biases
    k = np.asarray(p["encoder_hidden"]["dense0"]["kernel"])
    assert abs(k.std() - 0.03) < 0.002 and not np.asarray(p["encoder_hidden"]["dense0"]["bias"]).any()
    with pytest.raises(ValueError, match="activation"):
        get_model("mlp_ae", code_activation="gelu")
    with pytest.raises(ValueError, match="encoder_widths"):
        get_model("mlp_ae", encoder_widths=())


def test_config_validation_names_the_field():
    with pytest.raises(ConfigError, match="labels_fraction"):
        s3.S3Config(labels_fraction=1.5)
    assert s3.S3Config(encoder_widths=[64, 10]).encoder_widths == (64, 10)


# ----------------------------------------------------------------------------- training pieces

def test_frozen_encoder_does_not_move_and_finetuned_does():
    ds = _toy()
    cfg = s3.S3Config(labels_fraction=0.25, encoder_widths=(16, 4), ae_epochs=1, epochs=2,
                      freeze_encoder=True)
    model = s3.build_model(cfg, ds.images.shape[1:], ds.num_classes)
    p0 = model.init(jax.random.key(0), jnp.zeros((1, 28, 28, 1)))["params"]
    pre, enc_state, _ = s3.pretrain_autoencoder(cfg, model, p0, ds.images, jax.random.key(1))
    assert int(enc_state.inner_state[0].count) == 12           # 120 images / batch 10, 1 epoch
    flat = lambda t: {train.path_str(k): np.asarray(v) for k, v in jax.tree_util.tree_leaves_with_path(t)}
    # pretraining moved encoder + decoder, not the head
    a, b = flat(p0), flat(pre)
    assert all(np.array_equal(a[k], b[k]) == k.startswith("head") for k in a)
    # the seed's code carries the encoder's Adam state into supervised training; the head's is new
    st = s3.classifier_state(dataclasses.replace(cfg, freeze_encoder=False), model, pre,
                             jax.random.key(2), enc_state)
    counts = {g: st.opt_state.inner_states[g].inner_state for g in s3.GROUPS}
    assert int(counts["encoder"][0].count) == 12 and int(counts["head"][0].count) == 0
    assert counts["decoder"] == optax.EmptyState()
    for freeze in (True, False):
        c = dataclasses.replace(cfg, freeze_encoder=freeze)
        out, hist = s3.train_classifier(c, model, pre, ds.images, ds.labels, jax.random.key(2),
                                        encoder_opt_state=enc_state)
        assert hist[-1]["loss"] < hist[0]["loss"]
        o = flat(out)
        for k in b:
            moved = not np.array_equal(b[k], o[k])
            if k.startswith("decoder"):
                assert not moved, k
            elif k.startswith("encoder"):
                assert moved != freeze, k
            else:
                assert moved, k


def test_scanned_epochs_match_per_step_fit():
    ds = _toy(n=45)
    model = get_model("mlp", hidden_widths=(8,))
    tx = train.make_optimizer("adam", 1e-3)
    state = train.create_train_state(model, jax.random.key(0), jnp.zeros((1, 28, 28, 1)), tx)

    def loss_fn(p, batch, rng):
        logits = model.apply({"params": p}, s3.scaled(batch["image"], 255.0))
        noise = jax.random.normal(rng, ())            # the per-step rng must match too
        ce = optax.softmax_cross_entropy_with_integer_labels(logits, batch["label"])
        return train.masked_mean(ce, batch["mask"]) + 1e-3 * noise, {"n": noise}

    data = {"image": ds.images, "label": ds.labels}
    scanned = train.fit(state, data, loss_fn, batch_size=10, epochs=2, key=jax.random.key(5),
                        scan_epoch=True, progress=False)
    ref = train.fit(state, data, loss_fn, batch_size=10, epochs=2, key=jax.random.key(5), progress=False)
    hist = scanned.history
    for x, y in zip(jax.tree.leaves(scanned.state.params), jax.tree.leaves(ref.state.params)):
        np.testing.assert_allclose(np.asarray(x), np.asarray(y), rtol=2e-4, atol=2e-6)
    for h, r in zip(hist, ref.history):
        assert h["loss"] == pytest.approx(r["loss"], rel=1e-4)
        assert h["n"] == pytest.approx(r["n"], rel=1e-4, abs=1e-6)


def test_run_learns_toy_classes_and_is_deterministic():
    ds = _toy()
    cfg = s3.S3Config(labels_fraction=0.5, encoder_widths=(16, 8), ae_epochs=2, epochs=8,
                      pixel_max=1.0, init_std=None, lr=3e-3)
    r1 = s3.run(cfg, ds, ds)
    r2 = s3.run(cfg, ds, ds)
    assert r1.metrics == r2.metrics
    assert r1.metrics["accuracy"] > 0.9 and r1.metrics["labels_used"] == 60
    assert set(r1.metrics) >= {"psnr", "nmi", "ae_mse", "pretrained_psnr", "pretrained_nmi"}


# ----------------------------------------------------------------------------- CLIs on real MNIST

def test_train_cli_end_to_end(real_manual_dir, tmp_path, capsys):
    from aeclust_jax.cli import MODEL_STUDY, study_module
    assert study_module("mlp_ae", MODEL_STUDY, "model") is s3
    out = tmp_path / "run"
    argv = ["--model", "mlp_ae", "--dataset", "mnist", "--labels-fraction", "0.01",
            "--train-limit", "1000", "--test-limit", "200", "--epochs", "2", "--ae-epochs", "1",
            "--no-progress", "--out", str(out)]
    assert run_main(s3.train_main, argv) == 0
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["labels_used"] == 10
    # reference: the library's run on the saved config.yaml gives the same metrics
    from aeclust_jax.config import load_config
    cfg = load_config(s3.S3Config, out / "config.yaml")
    ref = s3.run(cfg, *s3.load_splits(cfg))
    assert {k: v for k, v in metrics.items() if k not in ("seconds", "scale", "epochs")} == ref.metrics
    assert 5.0 < metrics["psnr"] < 40.0 and 0.0 < metrics["nmi"] < 1.0
    rows = np.load(out / "labelled_rows.npy")
    assert len(rows) == 10 and rows.max() < 1000
    phases = [json.loads(l)["phase"] for l in (out / "history.jsonl").read_text().splitlines()]
    assert phases == ["autoencode", "supervised", "supervised"]
    # never overwrite a run; bad options fail with one clear line and exit 2
    before = (out / "metrics.json").read_bytes()
    assert run_main(s3.train_main, argv) == 2
    assert (out / "metrics.json").read_bytes() == before
    assert run_main(s3.train_main, ["--model", "mlp", "--freeze-encoder", "--out", str(tmp_path / "x")]) == 2
    assert run_main(s3.train_main, ["--model", "mlp", "--labels-fraction", "0", "--out",
                                    str(tmp_path / "y")]) == 2
    err = capsys.readouterr().err
    assert "already holds a run" in err and "--freeze-encoder needs --model mlp_ae" in err
    assert "labels_fraction" in err
    # --resume: a changed field other than epochs is refused (nothing rewritten); the same epochs
    # is a no-op; more epochs continue from the checkpoints to the numbers of a run trained
    # that long at once
    assert run_main(s3.train_main, ["--resume", "--out", str(out), "--lr", "0.01"]) == 2
    assert "lr" in capsys.readouterr().err and (out / "metrics.json").read_bytes() == before
    assert run_main(s3.train_main, ["--resume", "--out", str(out), "--model", "mlp_ae"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert run_main(s3.train_main, ["--model", "mlp_ae", "--resume", "--out", str(out),
                                    "--epochs", "3", "--no-progress"]) == 0
    assert "resuming" in capsys.readouterr().out
    resumed = json.loads((out / "metrics.json").read_text())
    ref3 = s3.run(dataclasses.replace(cfg, epochs=3), *s3.load_splits(cfg))
    assert {k: v for k, v in resumed.items() if k not in ("seconds", "scale", "epochs")} == ref3.metrics
    assert json.loads((out / "metrics.epochs2.json").read_text()) == metrics
    phases = [json.loads(l)["phase"] for l in (out / "history.jsonl").read_text().splitlines()]
    assert phases == ["autoencode"] + ["supervised"] * 3


def test_reproduce_end_to_end_and_resume(real_manual_dir, tmp_path):
    out = tmp_path / "s3"
    argv = ["--seeds", "2", "--epochs", "1", "--experiments", "1", "3", "4", "--fractions", "0.1",
            "--train-limit", "500", "--test-limit", "200", "--tsne-samples", "60", "--no-progress",
            "--out", str(out)]
    assert run_main(s3.reproduce_main, argv) == 0
    results = json.loads((out / "results.json").read_text())
    assert [r["experiment"] for r in results] == [1, 3, 4]
    for r in results:
        # reference: each seed's accuracy is its run record's, a count of the 200 test images
        base = s3.S3Config(**json.loads((out / "reproduce.json").read_text())["base_config"])
        exp = next(e for e in s3.EXPERIMENTS if e.number == r["experiment"])
        recs = [json.loads((out / "runs" / f"{s3.job_name(dataclasses.replace(exp.config(base), seed=s))}.json")
                           .read_text())["metrics"]["accuracy"] for s in (0, 1)]
        assert r["accuracies"] == recs
        assert all(abs(a * 200 - round(a * 200)) < 1e-4 for a in r["accuracies"])   # float32
        assert r["accuracy_mean"] == pytest.approx(np.mean(r["accuracies"]))
        assert r["accuracy_std"] == pytest.approx(np.std(r["accuracies"]))
        assert r["seed_accuracy"] == {1: 0.900, 3: 0.746, 4: 0.749}[r["experiment"]]
    # experiments 3 and 4 share one pretrained autoencoder per seed
    assert results[1]["pretrained_psnr_values"] == results[2]["pretrained_psnr_values"]
    sweep = json.loads((out / "sweep.json").read_text())
    assert {(s["method"], s["labels_fraction"]) for s in sweep} == {
        (m, 0.1) for m in ("mlp", "ae_frozen", "ae_finetune", "ae_finetune_carried")}
    # experiment 3 with the Adam state carried over (the seed's code) and with a fresh one
    variants = json.loads((out / "variants.json").read_text())
    assert [v["name"] for v in variants] == ["ae_finetune_fresh_adam"]
    assert variants[0]["pretrained_psnr_values"] == results[1]["pretrained_psnr_values"]
    for f in ("results.md", "accuracy.png", "sweep.png", "tsne_codes.png"):
        assert (out / f).stat().st_size > 0, f
    assert "0.746" in (out / "results.md").read_text()
    # a second call reuses every finished run (no retraining) and gives the same table
    stamps = {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert run_main(s3.reproduce_main, argv) == 0
    assert stamps == {p.name: p.stat().st_mtime_ns for p in (out / "runs").glob("*.json")}
    assert json.loads((out / "results.json").read_text()) == results


def test_run_jobs_keeps_runs_sharing_an_autoencoder_together_and_shards_them(tmp_path, monkeypatch):
    from aeclust_jax.studies.pretrain import report
    base = s3.S3Config()
    exps = [e for e in s3.EXPERIMENTS if e.number in (1, 3, 4)]
    jobs = s3.planned_jobs(base, [0, 1], exps, [0.1])
    calls = []
    monkeypatch.setattr(report, "_run_group", lambda group, data, *rest: calls.append(list(group)))

    def groups(shard=None):
        calls.clear()
        report.run_jobs(jobs, None, None, tmp_path, tsne_samples=1, code_jobs=(), progress=False,
                        shard=shard)
        return [list(g) for g in calls]

    every = groups()
    assert sorted(n for g in every for n in g) == sorted(jobs)             # each run once
    for g in every:        # a group: runs of one seed that share one autoencoder, or one plain MLP
        cfgs = [jobs[n] for n in g]
        assert len({(c.seed, c.encoder_widths, c.model) for c in cfgs}) == 1
        assert len(g) == 1 or cfgs[0].model == "mlp_ae"
    ae = [g for g in every if jobs[g[0]].model == "mlp_ae"]
    assert len(ae) == 2 and all(len(g) > 2 for g in ae)                   # one AE per seed
    assert groups("0/2") + groups("1/2") != every and \
        sorted(groups("0/2") + groups("1/2")) == sorted(every)             # two shares, all runs
    done = ae[0][0]                                                        # a finished run is skipped,
    (tmp_path / f"{done}.json").write_text("{}")                          # its group's others are not
    assert done not in [n for g in groups() for n in g] and len(groups()) == len(every)
