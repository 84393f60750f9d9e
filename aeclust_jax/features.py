"""Feature extraction from any Flax model and layer: jitted, sharded, batched, cached on disk.

    from aeclust_jax.features import extract
    model, variables = efficientnet_lite0_imagenet(num_classes=0)
    f = extract(model, variables, ds.images, image_size=224, cache="~/aeclust_features")
    # f: float32 (N, 1280); layer="features" -> (N, 7, 7, 1280)

uint8 NHWC images go to the devices as they are (a quarter of float32's bytes); scaling to [0, 1],
gray -> RGB, the resize (bilinear, antialiased when shrinking) and the normalisation
((x - mean) / std: the model's own when it declares ``input_mean``/``input_std``, else
ImageNet's) run inside the jitted step, batch by batch (bounded
memory: one batch of inputs and outputs on the devices at a time), the batch sharded over all
devices. ``layer`` names a map the model sows into 'intermediates' (``self.sow``) or a submodule
whose output is captured (flax's ``capture_intermediates``). With ``cache`` (a folder) the result
is stored as ``<key>.npy`` beside ``<key>.json`` (what it was computed from), the key a hash of
everything that determines it: the model's class and fields, a hash of the variables, the layer,
size, normalisation, dtype, and a fingerprint of the images' bytes. A hit is read back instead of
recomputed; the files are written atomically (a killed run leaves no half-written cache entry).
"""

from __future__ import annotations

import dataclasses
import hashlib
import inspect
import json
import os
import pathlib
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)


def preprocess(images: jax.Array, image_size: int | None, mean: Sequence[float],
               std: Sequence[float]) -> jax.Array:
    """uint8 (B, H, W, C) -> float32 (B, S, S, len(mean)): [0, 1], gray repeated to RGB when the
    normalisation has 3 channels, bilinear resize to S = image_size (antialiased), normalised."""
    x = images.astype(jnp.float32) / 255.0
    if x.shape[-1] == 1 and len(mean) == 3:
        x = jnp.repeat(x, 3, axis=-1)
    if image_size and x.shape[1:3] != (image_size, image_size):
        x = jax.image.resize(x, (x.shape[0], image_size, image_size, x.shape[3]), "bilinear",
                             antialias=True)
    return (x - jnp.asarray(mean, jnp.float32)) / jnp.asarray(std, jnp.float32)


def _find_layer(tree: Any, layer: str):
    """The array named ``layer`` in an 'intermediates' collection: a sown value (a tuple, first
    element) or a captured module output ('__call__')."""
    if isinstance(tree, dict) or hasattr(tree, "items"):
        for k, v in tree.items():
            if k == layer:
                if isinstance(v, tuple):
                    return v[0]
                if hasattr(v, "items") and "__call__" in v:
                    return v["__call__"][0]
            found = _find_layer(v, layer)
            if found is not None:
                return found
    return None


def _apply_fn(model, layer: str | None, image_size, mean, std):
    """(variables, {'image': uint8 batch}) -> the model output or the named layer."""
    takes_train = "train" in inspect.signature(model.__call__).parameters
    kw = {"train": False} if takes_train else {}

    def fn(variables, batch):
        x = preprocess(batch["image"], image_size, mean, std)
        if layer is None:
            return model.apply(variables, x, **kw)
        capture = lambda mdl, method: mdl.name == layer and method == "__call__"
        _, state = model.apply(variables, x, mutable=["intermediates"],
                               capture_intermediates=capture, **kw)
        out = _find_layer(state["intermediates"], layer)
        if out is None:
            raise KeyError(f"layer {layer!r} is neither sown nor a submodule of "
                           f"{type(model).__name__}")
        return out
    return fn


def cache_key(model, variables, images: np.ndarray, **settings: Any) -> tuple[str, dict]:
    """(hex key, the JSON-able description it hashes) of one extraction."""
    fields = ({f.name: repr(getattr(model, f.name)) for f in dataclasses.fields(model)
               if f.name not in ("parent", "name")} if dataclasses.is_dataclass(model) else {})
    h = hashlib.sha1()
    for path, leaf in jax.tree_util.tree_flatten_with_path(variables)[0]:
        h.update(jax.tree_util.keystr(path).encode())
        h.update(np.ascontiguousarray(np.asarray(leaf)).tobytes())
    data = hashlib.sha1(np.ascontiguousarray(images).tobytes()).hexdigest()
    desc = {"model": type(model).__name__, "fields": fields, "weights_sha1": h.hexdigest(),
            "images_sha1": data, "images_shape": list(images.shape), **settings}
    return hashlib.sha1(json.dumps(desc, sort_keys=True).encode()).hexdigest()[:20], desc


def _atomic_save(path: pathlib.Path, array: np.ndarray, desc: dict) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.save(f, array)
        path.with_suffix(".json").write_text(json.dumps(desc, indent=1))
        os.replace(tmp, path)             # the .npy last: it is what marks the entry complete
    finally:
        tmp.unlink(missing_ok=True)


def extract(model, variables, images: np.ndarray, *, layer: str | None = None,
            image_size: int | None = None, batch_size: int = 256, cache=None,
            dtype: str = "float32", mean: Sequence[float] | None = None,
            std: Sequence[float] | None = None, progress: bool = False, mesh=None) -> np.ndarray:
    """Features of uint8 images (N, H, W, C) -> numpy (N, ...) in ``dtype`` (float32 | float16).

    ``layer``: None = the model's output, else a sown or submodule name (module docstring).
    ``image_size``: resize to S x S first (None: as given). ``mean``/``std``: per channel, on
    [0, 1] pixels; None: the model's ``input_mean``/``input_std`` when it has them, else
    ImageNet's. ``cache``: a folder for the on-disk cache (None: no cache). ``mesh``: the device
    mesh (default all devices).
    """
    from aeclust_jax.train.sharding import make_mesh
    from aeclust_jax.train.steps import predict
    images = np.asarray(images)
    if images.dtype != np.uint8 or images.ndim != 4:
        raise ValueError(f"extract takes uint8 images (N, H, W, C), got {images.dtype} "
                         f"{images.shape}")
    if dtype not in ("float32", "float16"):
        raise ValueError(f"dtype must be float32 or float16, got {dtype!r}")
    mean = tuple(mean if mean is not None else getattr(model, "input_mean", IMAGENET_MEAN))
    std = tuple(std if std is not None else getattr(model, "input_std", IMAGENET_STD))
    settings = dict(layer=layer, image_size=image_size, mean=list(mean), std=list(std), dtype=dtype)
    path = None
    if cache is not None:
        key, desc = cache_key(model, variables, images, **settings)
        path = pathlib.Path(cache).expanduser() / f"{key}.npy"
        if path.is_file():
            try:
                return np.load(path)
            except (OSError, ValueError):
                pass                          # a damaged entry is recomputed below
    fn = _apply_fn(model, layer, image_size, tuple(mean), tuple(std))
    out = predict(lambda v, b: fn(v, b).astype(dtype), variables, {"image": images},
                  batch_size=batch_size, mesh=mesh or make_mesh(), progress=progress)
    out = np.asarray(out)
    if path is not None:
        try:
            _atomic_save(path, out, desc)
        except OSError:
            pass                              # a read-only cache folder: still return the result
    return out


__all__ = ("extract", "preprocess", "cache_key", "IMAGENET_MEAN", "IMAGENET_STD")
