"""features.extract on a small EfficientNet-Lite: output, sown and captured layers, resize and
normalisation, float16, the on-disk cache (hits, misses, atomic entries), bad input."""

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aeclust_jax.features import cache_key, extract, preprocess
from aeclust_jax.models.efficientnet import EfficientNetLite

SMALL = dict(stages=((3, 1, 1, 8, 1), (3, 2, 2, 16, 2)), stem_features=8, head_features=24)


@pytest.fixture(scope="module")
def small():
    model = EfficientNetLite(num_classes=5, **SMALL)
    variables = model.init(jax.random.key(0), jnp.zeros((1, 32, 32, 3)))
    # non-trivial batch statistics, so eval-mode normalisation matters
    variables = jax.tree_util.tree_map_with_path(
        lambda p, v: v + 0.3 if "batch_stats" in jax.tree_util.keystr(p) else v, variables)
    images = np.random.default_rng(0).integers(0, 256, (37, 20, 20, 3), dtype=np.uint8)
    return model, variables, images


def test_output_equals_direct_apply_on_resized_normalised_images(small):
    model, variables, images = small
    ours = extract(model, variables, images, image_size=32, batch_size=16)   # 3 batches, padded
    x = jax.image.resize(images.astype(np.float32) / 255, (37, 32, 32, 3), "bilinear", antialias=True)
    x = (x - 127 / 255) / (128 / 255)                     # the model's own normalisation
    ref = model.apply(variables, x.astype(np.float32), train=False)
    assert ours.shape == (37, 5) and ours.dtype == np.float32
    np.testing.assert_allclose(ours, ref, rtol=1e-4, atol=1e-4)


def test_sown_and_captured_layers_and_float16(small):
    model, variables, images = small
    feats = extract(model, variables, images, layer="features", image_size=32)
    assert feats.shape == (37, 8, 8, 24)          # stem and stage 2 halve it
    pooled = extract(model, variables, images, layer="pooled", image_size=32)
    np.testing.assert_allclose(pooled, feats.mean(axis=(1, 2)), rtol=1e-5, atol=1e-5)
    block = extract(model, variables, images, layer="block1", image_size=32)   # a submodule
    assert block.shape == (37, 8, 8, 16)
    half = extract(model, variables, images, layer="pooled", image_size=32, dtype="float16")
    assert half.dtype == np.float16
    np.testing.assert_allclose(half, pooled, rtol=1e-2, atol=1e-2)
    with pytest.raises(KeyError, match="layer 'nope'"):
        extract(model, variables, images, layer="nope")


def test_gray_images_are_repeated_to_rgb():
    gray = np.random.default_rng(1).integers(0, 256, (2, 8, 8, 1), dtype=np.uint8)
    x = preprocess(jnp.asarray(gray), None, (0.5, 0.5, 0.5), (0.25, 0.25, 0.25))
    assert x.shape == (2, 8, 8, 3)
    np.testing.assert_allclose(x[..., 0], x[..., 2])
    np.testing.assert_allclose(x[..., 1], (gray[..., 0] / 255 - 0.5) / 0.25, rtol=1e-6, atol=1e-6)


def test_cache_hits_and_keys(small, tmp_path):
    model, variables, images = small
    kw = dict(layer="pooled", image_size=32, cache=tmp_path)
    first = extract(model, variables, images, **kw)
    entries = sorted(tmp_path.glob("*.npy"))
    assert len(entries) == 1 and not list(tmp_path.glob(".*tmp"))
    desc = json.loads(entries[0].with_suffix(".json").read_text())
    assert desc["layer"] == "pooled" and desc["images_shape"] == [37, 20, 20, 3]
    # a hit is read back: overwrite the entry and see the overwritten values come back
    np.save(entries[0], first + 1)
    np.testing.assert_array_equal(extract(model, variables, images, **kw), first + 1)
    # everything that determines the features changes the key
    base = cache_key(model, variables, images, layer="pooled")[0]
    other_images = images.copy()
    other_images[0, 0, 0, 0] ^= 1
    other_vars = jax.tree.map(lambda v: v * 1.01, variables)
    assert len({base, cache_key(model, variables, other_images, layer="pooled")[0],
                cache_key(model, other_vars, images, layer="pooled")[0],
                cache_key(model, variables, images, layer="features")[0],
                cache_key(EfficientNetLite(num_classes=6, **SMALL), variables, images,
                          layer="pooled")[0]}) == 5


def test_bad_input(small):
    model, variables, images = small
    with pytest.raises(ValueError, match="uint8 images"):
        extract(model, variables, images.astype(np.float32))
    with pytest.raises(ValueError, match="uint8 images"):
        extract(model, variables, images[0])
    with pytest.raises(ValueError, match="float32 or float16"):
        extract(model, variables, images, dtype="int8")
