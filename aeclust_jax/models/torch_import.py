"""torchvision-style state dicts -> Flax variables for the ResNet and VGG backbones.

    model, variables = import_torch("resnet50", "resnet50-0676ba61.pth", num_classes=0)
    model, variables = import_torch("vgg16_bn", net.state_dict())      # torch tensors or numpy

Rules: a flax module path maps to torchvision's key prefix by '_<i>' -> '.<i>' and '/' -> '.'
(``layer1_0/downsample_0`` -> ``layer1.0.downsample.0``). Conv weight OIHW -> kernel HWIO; batch
norm weight/bias -> params scale/bias and running_mean/running_var -> batch_stats mean/var
(num_batches_tracked is ignored); Linear weight (out, in) -> kernel (in, out); VGG's first
classifier layer is also reordered from torch's CHW flatten to our HWC flatten. The head (``fc``,
``classifier.6``, and our ``embed``) is imported when the state dict holds it with the shapes the
model asks for and no fresh embedding precedes it; otherwise it is initialised afresh as the
model's own init does (torchvision's: kernel uniform +-1/sqrt(fan_in) for ResNet, normal(0, 0.01)
for VGG; bias 0), from numpy's generator seeded with ``seed``, and the state dict's head keys are
dropped: that is how ``num_classes=10`` or
``embed_dim=128`` replace an ImageNet head, and ``num_classes=0`` drops it. Every other key must be
there with its shape, and no other key may be: else one KeyError lists a few of each.
"""

from __future__ import annotations

import pathlib
import re
from typing import Any, Mapping

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np

HEADS = {"resnet": ("embed", "fc"), "vgg": ("embed", "classifier_6")}


def load_state_dict(path: str | pathlib.Path) -> dict[str, Any]:
    """torch.load(path, weights_only=True) on CPU; needs torch (the ``torch`` extra)."""
    try:
        import torch
    except ModuleNotFoundError as e:
        raise ModuleNotFoundError(
            f"reading {path} needs PyTorch: pip install 'aeclust_jax[torch]' (the CPU build "
            f"torch==2.13.0), or pass the state dict as numpy arrays") from e
    sd = torch.load(path, weights_only=True, map_location="cpu")
    if isinstance(sd, Mapping) and isinstance(sd.get("state_dict"), Mapping):
        sd = sd["state_dict"]
    return dict(sd)


def _numpy(v) -> np.ndarray:
    if hasattr(v, "detach"):
        v = v.detach().cpu().float().numpy()
    return np.asarray(v, np.float32)


def torch_prefix(path: tuple[str, ...]) -> str:
    """('layer1_0', 'downsample_0') -> 'layer1.0.downsample.0'."""
    return ".".join(re.sub(r"_(\d+)$", r".\1", p) for p in path)


def _key(p) -> str:
    return p.key if hasattr(p, "key") else str(p)


def import_torch(name: str, state_dict: Mapping[str, Any] | str | pathlib.Path, *,
                 seed: int = 0, **model_kwargs) -> tuple[nn.Module, dict]:
    """(model, {'params', 'batch_stats'}) of the registered backbone ``name`` ('resnet18',
    'resnet34', 'resnet50', 'vgg16', 'vgg16_bn') built with ``model_kwargs`` (num_classes,
    embed_dim, small_stem), its weights from a torchvision-style state dict or a .pth path."""
    from aeclust_jax.models import get_model
    family = "vgg" if name.startswith("vgg") else "resnet"
    if not name.startswith(("vgg", "resnet")):
        raise KeyError(f"import_torch knows the resnet* and vgg* backbones, not {name!r}")
    model = get_model(name, **model_kwargs)
    if isinstance(state_dict, (str, pathlib.Path)):
        state_dict = load_state_dict(state_dict)
    sd = {k: _numpy(v) for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}

    shapes = jax.eval_shape(model.init, jax.random.key(0), jnp.zeros((1, 64, 64, 3)))
    heads = HEADS[family]
    targets: dict[tuple[str, ...], dict[str, tuple]] = {}   # module path -> {leaf: shape}
    for coll in ("params", "batch_stats"):
        for path, leaf in jax.tree_util.tree_flatten_with_path(shapes.get(coll, {}))[0]:
            keys = tuple(_key(p) for p in path)
            targets.setdefault(keys[:-1], {})[f"{coll}:{keys[-1]}"] = leaf.shape

    def torch_leaves(mod, leaves):
        """{'params:kernel': (torch key, array converted to our layout or None), ...}."""
        pre = torch_prefix(mod) + "."
        out = {}
        for leaf, shape in leaves.items():
            coll, lname = leaf.split(":")
            tkey = pre + {"kernel": "weight", "scale": "weight", "bias": "bias",
                          "mean": "running_mean", "var": "running_var"}[lname]
            v = sd.get(tkey)
            if v is not None and lname == "kernel":
                if v.ndim == 4:
                    v = v.transpose(2, 3, 1, 0)
                elif v.ndim == 2 and family == "vgg" and mod == ("classifier_0",):
                    c = v.shape[1] // 49                         # CHW flatten -> HWC flatten
                    v = v.reshape(v.shape[0], c, 7, 7).transpose(2, 3, 1, 0).reshape(49 * c, -1)
                else:
                    v = v.T
            out[leaf] = (tkey, v if v is not None and v.shape == shape else None,
                         None if v is None else v.shape)
        return out

    params: dict = {}
    stats: dict = {}
    used: set[str] = set()
    missing, wrong = [], []
    fresh, fresh_before = set(), False
    for h in heads:                    # in model order: a fresh embedding makes the fc fresh too
        if (h,) in targets:
            if fresh_before or not all(v is not None for _, v, _ in
                                       torch_leaves((h,), targets[(h,)]).values()):
                fresh.add(h)
                fresh_before = True
    rng = np.random.default_rng(seed)
    for mod, leaves in targets.items():
        got = torch_leaves(mod, leaves)
        if mod[0] in fresh:
            fan_in, fan_out = leaves["params:kernel"]
            kernel = (rng.normal(0.0, 0.01, (fan_in, fan_out)) if family == "vgg" else
                      rng.uniform(-1, 1, (fan_in, fan_out)) / np.sqrt(fan_in))
            params[mod[0]] = {"kernel": jnp.asarray(kernel, jnp.float32),
                              "bias": jnp.zeros((fan_out,), jnp.float32)}
            used.update(t for t, _, _ in got.values())
            continue
        for leaf, (tkey, v, tshape) in got.items():
            coll, lname = leaf.split(":")
            if tshape is None:
                missing.append(tkey)
                continue
            used.add(tkey)
            if v is None:
                wrong.append(f"{tkey} {tshape} (wants {leaves[leaf]} after transposition)")
                continue
            node = params if coll == "params" else stats
            for p in mod:
                node = node.setdefault(p, {})
            node[lname] = jnp.asarray(v)
    # head keys of a dropped head (num_classes=0, or no embed in the model)
    present = {torch_prefix(m) for m in targets}
    for h in heads:
        tp = torch_prefix((h,))
        if tp not in present:
            used.update(k for k in sd if k.startswith(tp + "."))
    unexpected = sorted(set(sd) - used)
    if missing or unexpected or wrong:
        parts = [f"{len(x)} {what}, e.g. {', '.join(x[:4])}" for x, what in
                 ((missing, "missing key(s)"), (unexpected, "unexpected key(s)"),
                  (wrong, "key(s) of the wrong shape")) if x]
        raise KeyError(f"{name} state dict does not fit: " + "; ".join(parts))
    variables = {"params": params}
    if stats:
        variables["batch_stats"] = stats
    return model, variables


__all__ = ("import_torch", "load_state_dict", "torch_prefix")
