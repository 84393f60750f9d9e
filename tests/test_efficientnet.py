"""EfficientNet-Lite0 port: the torch-free .pth reader equals torch.load on the shipped weights;
the Flax network equals the reference PyTorch implementation the weights were published for
(the PyPI package efficientnet_lite_pytorch, which shares no code with ours), logits and the last
feature map, with the ImageNet weights and with random weights and batch statistics."""

import jax
import numpy as np
import pytest

from aeclust_jax.models import get_model
from aeclust_jax.models.efficientnet import (efficientnet_lite0_imagenet, read_torch_file,
                                             variables_from_torch, weights_file)

torch = pytest.importorskip("torch")
EfficientNet = pytest.importorskip("efficientnet_lite_pytorch").EfficientNet


@pytest.fixture(scope="module")
def reference():
    """The reference network with the shipped ImageNet weights, eval mode."""
    net = EfficientNet.from_pretrained("efficientnet-lite0", weights_path=str(weights_file()))
    return net.eval()


def _inputs(n=2, seed=0):
    return np.random.default_rng(seed).normal(size=(n, 224, 224, 3)).astype(np.float32)


def _torch_forward(net, x):
    with torch.no_grad():
        t = torch.from_numpy(x.transpose(0, 3, 1, 2))
        return net(t).numpy(), net.extract_features(t).numpy().transpose(0, 2, 3, 1)


def test_reader_equals_torch_load():
    ours = read_torch_file(weights_file())
    ref = torch.load(weights_file(), weights_only=True, map_location="cpu")
    assert sorted(ours) == sorted(ref) and len(ours) == 296
    for k, v in ref.items():
        np.testing.assert_array_equal(ours[k], v.numpy(), err_msg=k)


def test_imagenet_weights_match_reference(reference):
    model, variables = efficientnet_lite0_imagenet()
    assert sum(x.size for x in jax.tree.leaves(variables["params"])) == 4_652_008
    x = _inputs()
    logits, state = jax.jit(lambda v, x: model.apply(v, x, train=False, mutable="intermediates"))(
        variables, x)
    ref_logits, ref_map = _torch_forward(reference, x)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4 * np.abs(ref_logits).max())
    np.testing.assert_allclose(state["intermediates"]["features"][0], ref_map,
                               atol=1e-4 * np.abs(ref_map).max())


def test_random_weights_and_batch_stats_match_reference(reference):
    g = torch.Generator().manual_seed(0)
    sd = {k: (torch.rand(v.shape, generator=g) + 0.5 if k.endswith("running_var")
              else torch.randn(v.shape, generator=g) * (0.1 if v.ndim > 1 else 0.5))
          if v.is_floating_point() else v for k, v in reference.state_dict().items()}
    net = EfficientNet.from_name("efficientnet-lite0")
    net.load_state_dict(sd)
    net.eval()
    model = get_model("efficientnet_lite0", num_classes=1000)
    variables = variables_from_torch(sd)
    x = _inputs(seed=1)
    logits = jax.jit(lambda v, x: model.apply(v, x, train=False))(variables, x)
    ref_logits, _ = _torch_forward(net, x)
    np.testing.assert_allclose(logits, ref_logits, atol=1e-4 * np.abs(ref_logits).max())


def test_weight_errors_name_keys(reference):
    sd = dict(reference.state_dict())
    sd.pop("_blocks.3._bn1.running_var")
    with pytest.raises(KeyError, match="_blocks.3._bn1.running_var"):
        variables_from_torch(sd)
    sd = dict(reference.state_dict(), extra_head=torch.zeros(3))
    with pytest.raises(KeyError, match="unexpected key.*extra_head"):
        variables_from_torch(sd)


def test_imagenet_weights_recognise_photos():
    """The weights themselves, through our port only: two photos of scikit-image's data set are
    recognised (Chelsea the cat -> a cat class 281-285, a cup of coffee -> espresso/cup)."""
    from skimage import data, transform
    model, variables = efficientnet_lite0_imagenet()

    def prep(img):
        h, w = img.shape[:2]
        s = min(h, w)
        img = img[(h - s) // 2:(h - s) // 2 + s, (w - s) // 2:(w - s) // 2 + s]
        x = transform.resize(img, (224, 224), preserve_range=True).astype(np.float32) / 255
        return (x - np.asarray(model.input_mean)) / np.asarray(model.input_std)

    x = np.stack([prep(data.chelsea()), prep(data.coffee())]).astype(np.float32)
    probs = np.asarray(jax.nn.softmax(jax.jit(lambda v, x: model.apply(v, x))(variables, x)))
    top5 = np.argsort(-probs, axis=1)[:, :5]
    assert 281 <= top5[0, 0] <= 285 and set(top5[0, :3]) <= set(range(281, 288))
    assert top5[1, 0] == 967 and probs[1, 967] > 0.5          # espresso, confidently
    assert 968 in top5[1]                                      # cup among the top 5
