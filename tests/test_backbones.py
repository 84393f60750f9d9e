"""ResNet/VGG backbones: parameter counts equal torchvision's published ones (jax.eval_shape, no
compile, no torch); with random weights and random batch-norm statistics, imported through
import_torch, logits and intermediate maps equal the plain torch.nn references of
tests/torch_backbones.py (torchvision's module names, so torchvision's state_dict keys), in eval
mode. The torch tests skip only where torch is missing (it is in the `test` extra)."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aeclust_jax.models import get_model, import_torch

PUBLISHED = {"resnet18": 11_689_512, "resnet34": 21_797_672, "resnet50": 25_557_032,
             "vgg16": 138_357_544, "vgg16_bn": 138_365_992}
TOL = 1e-4          # max abs difference, relative to max(1, max |reference|)


def _shapes(name, size=224, **kw):
    model = get_model(name, **kw)
    return model, jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, size, size, 3)))


def _count(tree):
    return sum(int(np.prod(x.shape)) for x in jax.tree.leaves(tree))


@pytest.mark.parametrize("name", sorted(PUBLISHED))
def test_parameter_counts_are_torchvisions(name):
    _, v = _shapes(name, size=32)
    assert _count(v["params"]) == PUBLISHED[name]


def test_shapes_heads_and_maps():
    model, v = _shapes("vgg16", 224)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, mutable="intermediates"), v,
                         jnp.zeros((2, 224, 224, 3)))
    logits, inter = out[0], out[1]["intermediates"]
    assert logits.shape == (2, 1000)
    assert inter["block5"][0].shape == (2, 14, 14, 512)
    assert inter["features"][0].shape == (2, 7, 7, 512)
    assert inter["fc7"][0].shape == (2, 4096)
    model, v = _shapes("resnet50", 32, num_classes=0, embed_dim=64, small_stem=True)
    out = jax.eval_shape(lambda v, x: model.apply(v, x, mutable="intermediates"), v,
                         jnp.zeros((2, 32, 32, 3)))
    assert out[0].shape == (2, 64)
    assert out[1]["intermediates"]["layer4"][0].shape == (2, 4, 4, 2048)
    assert out[1]["intermediates"]["pooled"][0].shape == (2, 2048)
    model, v = _shapes("resnet18", 32, num_classes=10, embed_dim=128)
    assert v["params"]["embed"]["kernel"].shape == (512, 128)
    assert v["params"]["fc"]["kernel"].shape == (128, 10)
    assert "fc" not in _shapes("resnet34", 32, num_classes=0)[1]["params"]
    for name in ("resnet18", "vgg16_bn"):                 # train mode: batch stats, dropout
        model, v = _shapes(name, 32, num_classes=5)
        out, state = jax.eval_shape(
            lambda v, x: model.apply(v, x, train=True, mutable=["batch_stats"],
                                     rngs={"dropout": jax.random.key(1)}),
            v, jnp.zeros((2, 32, 32, 3)))
        assert out.shape == (2, 5)
        assert jax.tree.structure(state["batch_stats"]) == jax.tree.structure(v["batch_stats"])


# ----------------------------------------------------------------------------- against torch

@pytest.fixture(scope="module")
def ref():
    """tests/torch_backbones.py (the torch.nn references); skips only where torch is missing."""
    pytest.importorskip("torch")
    import torch_backbones
    return torch_backbones


def _compare(ref, name, net, x, maps, **kw):
    """Imports net's state dict, runs both; asserts every max abs difference (logits, maps) is
    <= TOL * max(1, max |reference|) and returns them."""
    model, variables = import_torch(name, net.state_dict(), **kw)
    with ref.torch.no_grad():
        logits_ref, maps_ref = net(ref.torch.from_numpy(x.transpose(0, 3, 1, 2)))
    out, state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable="intermediates"))(
        variables, x)
    pairs = [("logits", np.asarray(out), logits_ref.numpy())] + [
        (m, np.asarray(state["intermediates"][m][0]), maps_ref[m].numpy().transpose(0, 2, 3, 1))
        for m in maps]
    diffs = {}
    for m, ours, theirs in pairs:
        assert ours.shape == theirs.shape, m
        diffs[m] = float(np.abs(ours - theirs).max())
        scale = max(1.0, float(np.abs(theirs).max()))
        assert diffs[m] <= TOL * scale, (name, m, diffs[m], scale)
        diffs[m + " scale"] = scale
    print(name, kw, {k: f"{v:.3g}" for k, v in diffs.items()})
    return diffs


def _x(size, n=2, seed=1):
    return np.random.default_rng(seed).normal(size=(n, size, size, 3)).astype(np.float32)


@pytest.mark.parametrize("small_stem,size", [(False, 64), (True, 32)])
def test_resnet18_matches_torch(ref, small_stem, size):
    net = ref.randomise(ref.build(ref.TResNet, ref.TBasic, (2, 2, 2, 2), small_stem=small_stem))
    _compare(ref, "resnet18", net, _x(size), ("layer1", "layer4"), small_stem=small_stem)


def test_resnet50_matches_torch(ref):
    net = ref.randomise(ref.build(ref.TResNet, ref.TBottleneck, (3, 4, 6, 3)), seed=2)
    _compare(ref, "resnet50", net, _x(64), ("layer3", "layer4"))


def test_vgg16_bn_matches_torch(ref):
    net = ref.randomise(ref.build(ref.TVGG, batch_norm=True), seed=3)
    # 64 px: 2x2 maps that adaptive pooling spreads unevenly over 7x7 (checks the CHW -> HWC
    # reorder of classifier.0), and 'block5' the 4x4 map before the last max pool
    _compare(ref, "vgg16_bn", net, _x(64), ("block5", "features"))


def test_import_replaces_and_drops_heads(ref):
    sd = ref.randomise(ref.build(ref.TResNet, ref.TBasic, (2, 2, 2, 2))).state_dict()
    _, v = import_torch("resnet18", sd, num_classes=0)
    assert "fc" not in v["params"]
    _, v = import_torch("resnet18", sd, num_classes=10, embed_dim=32)
    assert v["params"]["embed"]["kernel"].shape == (512, 32)
    assert v["params"]["fc"]["kernel"].shape == (32, 10)
    np.testing.assert_array_equal(v["params"]["conv1"]["kernel"],
                                  sd["conv1.weight"].numpy().transpose(2, 3, 1, 0))
    np.testing.assert_array_equal(v["batch_stats"]["layer2_0"]["downsample_1"]["var"],
                                  sd["layer2.0.downsample.1.running_var"].numpy())
    _, v = import_torch("resnet18", {k: t.numpy() for k, t in sd.items()})   # numpy values
    np.testing.assert_array_equal(v["params"]["fc"]["kernel"], sd["fc.weight"].numpy().T)


def test_import_errors_name_keys(ref, tmp_path):
    sd = dict(ref.build(ref.TResNet, ref.TBasic, (2, 2, 2, 2)).state_dict())
    sd.pop("layer3.1.bn2.running_var")
    sd["extra.weight"] = ref.torch.zeros(3)
    with pytest.raises(KeyError, match=r"missing key.*layer3\.1\.bn2\.running_var.*"
                                       r"unexpected key.*extra\.weight"):
        import_torch("resnet18", sd)
    with pytest.raises(KeyError, match=r"wrong shape.*conv1\.weight"):
        import_torch("resnet18", ref.build(ref.TResNet, ref.TBasic, (2, 2, 2, 2)).state_dict(),
                     small_stem=True)
    path = tmp_path / "r18.pth"
    ref.torch.save(ref.build(ref.TResNet, ref.TBasic, (2, 2, 2, 2), small_stem=True).state_dict(), path)
    model, v = import_torch("resnet18", str(path), small_stem=True)
    assert model.small_stem and v["params"]["conv1"]["kernel"].shape == (3, 3, 3, 64)


def test_resnet18_train_gradients_equal_plain_flax_layers(monkeypatch):
    """ResNet's convs are layers.Conv (GEMM gradients) and its batch norms layers.BatchNorm
    (hand-written training gradient): the whole ResNet-18 (small stem) loss, parameter
    gradients and batch-norm updates in train mode equal the same network built with flax's own
    nn.Conv and nn.BatchNorm (swapped in: the reference shares no conv or batch-norm code), on a
    batch with an all-zero and a constant image (ties, dead ReLUs) besides random ones."""
    import flax.linen as nn
    import optax

    from aeclust_jax.models import resnet

    x = np.array(jax.random.normal(jax.random.key(0), (4, 16, 16, 3)))
    x[1] = 0.0
    x[2] = 0.7
    y = jnp.array([0, 3, 3, 9])

    model = get_model("resnet18", num_classes=10, small_stem=True)
    shapes = jax.eval_shape(model.init, jax.random.key(1), x[:1])   # no init compile (slow)
    rng = np.random.default_rng(0)
    params = jax.tree.map(lambda s: jnp.asarray(rng.normal(0, 0.1, s.shape), jnp.float32),
                          shapes["params"])
    stats = jax.tree.map(lambda s: jnp.ones(s.shape), shapes["batch_stats"])

    def grads():
        model = get_model("resnet18", num_classes=10, small_stem=True)
        assert jax.tree.structure(jax.eval_shape(model.init, jax.random.key(1), x[:1])) == \
            jax.tree.structure(shapes)

        def loss(p):
            logits, upd = model.apply({"params": p, "batch_stats": stats}, x, train=True,
                                      mutable=["batch_stats"])
            return optax.softmax_cross_entropy_with_integer_labels(logits, y).mean(), upd
        return jax.jit(jax.value_and_grad(loss, has_aux=True))(params)

    (l_ours, s_ours), g_ours = grads()
    monkeypatch.setattr(resnet, "Conv", nn.Conv)
    monkeypatch.setattr(resnet, "BatchNorm", nn.BatchNorm)
    (l_ref, s_ref), g_ref = grads()
    np.testing.assert_allclose(l_ours, l_ref, rtol=1e-5)
    close = lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4,
                                                    atol=1e-5 * max(1.0, np.abs(b).max()))
    jax.tree.map(close, g_ours, g_ref)
    jax.tree.map(close, s_ours, s_ref)
