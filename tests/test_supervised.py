"""Supervised training: augmentation against a brute-force oracle, schedules, the backbone
learning rate, batch norm in the engine (train step, checkpoint and resume), pretrained merge,
and train.py --model resnet18 end to end on a small learnable image archive."""

import dataclasses
import io
import zipfile

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from PIL import Image

from aeclust_jax import train
from aeclust_jax.cli import run_main, train_main
from aeclust_jax.train import supervised as sup


# ----------------------------------------------------------------------------- augmentation

def test_random_crop_flip_is_a_crop_of_the_padded_image_maybe_mirrored():
    rng = np.random.default_rng(0)
    x = rng.integers(1, 256, (64, 6, 5, 3), dtype=np.uint8)      # no zeros: padding is visible
    out = np.asarray(sup.random_crop_flip(jnp.asarray(x), jax.random.key(1), pad=2))
    assert out.shape == x.shape and out.dtype == np.uint8
    padded = np.pad(x, ((0, 0), (2, 2), (2, 2), (0, 0)))
    offsets, flips = set(), []
    for i in range(len(x)):
        found = [(dy, dx, f) for dy in range(5) for dx in range(5) for f in (0, 1)
                 if np.array_equal(out[i], (lambda c: c[:, ::-1] if f else c)(
                     padded[i, dy:dy + 6, dx:dx + 5]))]
        assert found, f"image {i} is no crop of its padded image"
        offsets.add(found[0][:2])
        flips.append(found[0][2])
    assert len(offsets) > 10                  # offsets vary over the 25 possible
    assert 0.2 < np.mean(flips) < 0.8         # mirrored about half the time
    again = np.asarray(sup.random_crop_flip(jnp.asarray(x), jax.random.key(1), pad=2))
    np.testing.assert_array_equal(out, again)   # the key fixes it


def test_random_crop_flip_off_is_identity_and_constant_images_stay_constant_inside():
    x = np.full((4, 8, 8, 1), 7, np.uint8)
    np.testing.assert_array_equal(
        sup.random_crop_flip(jnp.asarray(x), jax.random.key(0), pad=0, flip=False), x)
    out = np.asarray(sup.random_crop_flip(jnp.asarray(x), jax.random.key(0), pad=3))
    assert set(np.unique(out)) <= {0, 7} and (out == 7).sum(axis=(1, 2, 3)).min() >= 5 * 5


# ----------------------------------------------------------------------------- schedules, optimizer

def test_schedules():
    cos = sup.make_schedule("cosine", 0.1, total_steps=100, warmup_steps=10)
    assert float(cos(0)) == 0.0 and float(cos(10)) == pytest.approx(0.1)
    assert float(cos(55)) == pytest.approx(0.05, rel=1e-4) and float(cos(100)) == pytest.approx(0.0, abs=1e-7)
    step = sup.make_schedule("step", 0.1, total_steps=100)
    assert [float(step(s)) for s in (0, 49, 50, 74, 75, 99)] == pytest.approx(
        [0.1, 0.1, 0.01, 0.01, 0.001, 0.001])
    assert float(sup.make_schedule("constant", 0.3, total_steps=5)(4)) == pytest.approx(0.3)
    one = sup.make_schedule("onecycle", 0.2, total_steps=100)
    assert max(float(one(s)) for s in range(100)) == pytest.approx(0.2, rel=1e-3)
    with pytest.raises(ValueError, match="choices: constant, cosine"):
        sup.make_schedule("linear", 0.1, total_steps=10)


def test_backbone_lr_scale_and_weight_decay_on_kernels_only():
    params = {"conv": {"kernel": jnp.ones((3, 3)), "bias": jnp.ones(3)},
              "fc": {"kernel": jnp.ones((3, 2)), "bias": jnp.ones(2)}}
    grads = jax.tree.map(jnp.ones_like, params)

    def update(tx):
        return tx.update(grads, tx.init(params), params)[0]

    full = update(sup.make_classifier_optimizer("sgd", 0.1, momentum=0.0))
    tenth = update(sup.make_classifier_optimizer("sgd", 0.1, momentum=0.0, backbone_lr_scale=0.1))
    frozen = update(sup.make_classifier_optimizer("sgd", 0.1, momentum=0.0, backbone_lr_scale=0.0))
    np.testing.assert_allclose(tenth["conv"]["kernel"], 0.1 * full["conv"]["kernel"], rtol=1e-6)
    np.testing.assert_allclose(tenth["fc"]["kernel"], full["fc"]["kernel"])          # the head
    assert not np.any(frozen["conv"]["kernel"]) and not np.any(frozen["conv"]["bias"])
    np.testing.assert_allclose(frozen["fc"]["bias"], -0.1)
    wd = update(sup.make_classifier_optimizer("sgd", 0.1, momentum=0.0, weight_decay=0.5))
    np.testing.assert_allclose(wd["conv"]["kernel"], -0.1 * (1 + 0.5))    # decayed
    np.testing.assert_allclose(wd["conv"]["bias"], -0.1)                  # not decayed


def test_merge_pretrained_keeps_matching_leaves_and_reports_the_new_head():
    init = {"params": {"body": {"kernel": jnp.zeros((2, 2))}, "fc": {"kernel": jnp.zeros((4, 3))}}}
    pre = {"params": {"body": {"kernel": jnp.ones((2, 2))}, "fc": {"kernel": jnp.ones((4, 1000))}}}
    merged, fresh = sup.merge_pretrained(init, pre)
    np.testing.assert_array_equal(merged["params"]["body"]["kernel"], 1.0)
    np.testing.assert_array_equal(merged["params"]["fc"]["kernel"], 0.0)
    assert fresh == ["params/fc/kernel"]


# ----------------------------------------------------------------------------- batch norm in the engine

class TinyBN(nn.Module):
    """conv, batch norm, ReLU, mean pool, dense: (N, 8, 8, 3) -> (N, 3)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        y = nn.Conv(4, (3, 3))(x)
        y = nn.relu(nn.BatchNorm(use_running_average=not train, momentum=0.9)(y))
        return nn.Dense(3, name="fc")(y.mean(axis=(1, 2)))


def _colour_data(n, seed=0, size=8):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, 3, n)
    x = rng.integers(0, 90, (n, size, size, 3))
    x[np.arange(n), :, :, y] += 160
    return x.astype(np.uint8), y.astype(np.int32)


def _bn_state(model, x, lr=0.05):
    tx = sup.make_classifier_optimizer("sgd", lr)
    return train.create_train_state(model, jax.random.key(0), jnp.zeros((1,) + x.shape[1:]), tx,
                                    init_kwargs={"train": False})


def test_engine_step_updates_batch_stats_like_a_hand_written_step():
    model, (x, y) = TinyBN(), _colour_data(16)
    loss_fn = sup.classification_loss(model, augment=False, mean=(0.5,) * 3, std=(0.25,) * 3)
    state = _bn_state(model, x)
    assert state.batch_stats is not None
    key = jax.random.key(3)
    res = train.fit(state, {"image": x, "label": y}, loss_fn, batch_size=16, epochs=1, key=key,
                    shuffle=False)
    # the same step by hand: batch statistics of the 16 images, plain optax update
    ref = _bn_state(model, x)
    xf = (x.astype(np.float32) / 255 - 0.5) / 0.25
    def loss(p):
        logits, new = model.apply({"params": p, "batch_stats": ref.batch_stats}, xf, train=True,
                                  mutable=["batch_stats"])
        return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), new
    (_, new), g = jax.value_and_grad(loss, has_aux=True)(ref.params)
    upd, _ = ref.tx.update(g, ref.tx.init(ref.params), ref.params)
    want = optax.apply_updates(ref.params, upd)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 res.state.params, want)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6),
                 res.state.batch_stats, new["batch_stats"])
    mean = res.state.batch_stats["BatchNorm_0"]["mean"]
    assert np.abs(np.asarray(mean)).max() > 0          # moved from its init of 0


def test_batch_stats_checkpointed_and_resumed_bitwise(tmp_path):
    model, (x, y) = TinyBN(), _colour_data(48, seed=1)
    loss_fn = sup.classification_loss(model, mean=(0.5,) * 3, std=(0.25,) * 3, crop_pad=1)
    kw = dict(batch_size=16, key=jax.random.key(4), last_batch="drop")
    full = train.fit(_bn_state(model, x), {"image": x, "label": y}, loss_fn, epochs=3, **kw)
    ck = train.Checkpointer(tmp_path / "ck", every=1)
    train.fit(_bn_state(model, x), {"image": x, "label": y}, loss_fn, epochs=2, checkpointer=ck, **kw)
    resumed = train.fit(_bn_state(model, x), {"image": x, "label": y}, loss_fn, epochs=3,
                        checkpointer=ck, resume=True, **kw)
    ck.close()
    assert resumed.start_epoch == 2
    for a, b in ((full.state.params, resumed.state.params),
                 (full.state.batch_stats, resumed.state.batch_stats)):
        jax.tree.map(np.testing.assert_array_equal, a, b)
    # and the trained model classifies the colours
    variables = sup.variables_of(full.state)
    xt, yt = _colour_data(60, seed=2)
    acc = sup.accuracy(model, variables, xt, yt, batch_size=20, mesh=train.make_mesh(),
                       mean=(0.5,) * 3, std=(0.25,) * 3)
    assert acc > 0.8


def test_per_class_accuracy():
    got = sup.per_class_accuracy(np.array([0, 0, 1, 1, 1]), np.array([0, 1, 1, 1, 0]), 3)
    np.testing.assert_allclose(got[:2], [0.5, 2 / 3])
    assert np.isnan(got[2])


# ----------------------------------------------------------------------------- CLI end to end

def _colour_archive(path, n_train=30, n_test=10, size=16):
    with zipfile.ZipFile(path, "w") as z:
        for split, n, seed in (("train", n_train, 0), ("test", n_test, 1)):
            x, y = _colour_data(3 * n, seed=seed, size=size)
            for i, (img, label) in enumerate(zip(x, y)):
                buf = io.BytesIO()
                Image.fromarray(img).save(buf, format="PNG")
                z.writestr(f"{split}/{['red', 'green', 'blue'][label]}/{i}.png", buf.getvalue())
    return path


@pytest.mark.slow
def test_train_resnet18_cli_reports_test_accuracy_and_refuses_changed_resume(tmp_path, capsys):
    archive = _colour_archive(tmp_path / "colours.zip")
    out = tmp_path / "run"
    base = ["--model", "resnet18", "--dataset", "image_folder", "--path", str(archive),
            "--batch-size", "10", "--lr", "0.05", "--no-progress", "--out", str(out)]
    assert train_main(base + ["--epochs", "4"]) == 0
    printed = capsys.readouterr().out
    assert "test_accuracy=" in printed
    import json
    m = json.loads((out / "metrics.json").read_text())
    # it learns: chance is 1/3. Test accuracy reads the batch-norm running statistics, which
    # 18 steps (2 epochs) do not settle: that read 0.63 and 0.8 in earlier environments and 0.27
    # (train accuracy 0.97) with this session's package versions; 36 steps read 1.0 at epoch 3-4.
    assert m["test_accuracy"] > 0.5 and m["train_images"] == 90 and m["test_images"] == 30
    assert set(m["per_class_accuracy"]) == {"blue", "green", "red"}
    hist = [json.loads(l) for l in (out / "history.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4] and all("test_accuracy" in h for h in hist)
    assert (out / "figures" / "curves.png").is_file() and (out / "config.yaml").is_file()
    # a changed option is refused, naming it; nothing in the folder changes
    before = (out / "metrics.json").read_text()
    assert run_main(train_main, ["--resume", "--out", str(out), "--lr", "0.5"]) == 2
    assert "lr (0.05 -> 0.5)" in capsys.readouterr().err
    assert (out / "metrics.json").read_text() == before
    # resuming a complete run with the same epochs trains nothing (continuing to more epochs is
    # the engine's bitwise resume, tested above with a small batch-norm net: a ResNet compile
    # costs a minute here)
    assert train_main(["--resume", "--out", str(out), "--no-progress"]) == 0
    assert "nothing to do" in capsys.readouterr().out
    assert (out / "metrics.json").read_text() == before


def test_cli_errors_before_anything_is_written(tmp_path, capsys):
    out = tmp_path / "run"
    assert run_main(train_main, ["--model", "resnet18", "--dataset", "image_folder",
                                 "--out", str(out)]) == 2
    assert "needs --path" in capsys.readouterr().err and not out.exists()
    assert run_main(train_main, ["--model", "resnet18", "--dataset", "image_folder", "--path",
                                 str(tmp_path), "--pretrained", "imagenet", "--out", str(out)]) == 2
    assert "only for efficientnet_lite0" in capsys.readouterr().err and not out.exists()
    assert run_main(train_main, ["--model", "resnet18", "--schedule", "linear"]) == 2
    assert "invalid choice: 'linear'" in capsys.readouterr().err


def test_test_per_class_is_balanced_and_seeded_where_test_limit_takes_the_stored_order(tmp_path):
    """The colour archive stores its test split sorted by class (10 red, 10 green, 10 blue):
    the first 6 are one class; test_per_class=2 gives 2 of each, the same rows for one seed."""
    from aeclust_jax.studies.supervised import SupervisedConfig, load_data
    archive = _colour_archive(tmp_path / "colours.zip")
    cfg = SupervisedConfig(path=str(archive), progress=False)
    _, first = load_data(dataclasses.replace(cfg, test_limit=6))
    assert len(np.unique(first.labels)) == 1
    _, te = load_data(dataclasses.replace(cfg, test_per_class=2))
    assert np.bincount(te.labels).tolist() == [2, 2, 2]
    _, again = load_data(dataclasses.replace(cfg, test_per_class=2))
    np.testing.assert_array_equal(again.images, te.images)
    _, other = load_data(dataclasses.replace(cfg, test_per_class=2, seed=1))
    assert not np.array_equal(other.images, te.images)
