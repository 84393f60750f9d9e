"""S5's feature autoencoder, and the code precisions it is sent at.

    ae = FeatureAE(channels=512, width=128, hidden=256, kernel=3)
    variables = ae.init(key, f[:1])                        # f (N, 7, 7, 512): a CNN's feature map
    code = ae.apply(variables, f, method=FeatureAE.encode)  # (N, 5, 5, 128)
    sent = quantize(code, "int8")                           # what the receiver decodes
    recon = ae.apply(variables, sent, method=FeatureAE.decode)   # (N, 7, 7, 512)
    bits_per_image(code[0].size, "int8")                    # 25 * 128 * 8 + 64

The seed's architecture (VGG16's 512x7x7 map -> 128x5x5): encoder 1x1 conv C -> hidden, 1x1 conv
hidden -> width, k x k VALID conv width -> width (H x W -> (H-k+1) x (W-k+1)); the decoder mirrors
it with transposed convs (k x k VALID width -> width, 1x1 width -> hidden, 1x1 hidden -> C). The
seed names no activation; we put a ReLU after every layer, the code and the output included: the
features compressed here (a VGG block's last ReLU, EfficientNet's ReLU6 head) are non-negative, and
a non-negative code needs no sign bit. The 1x1 convs are Dense layers on the channel axis (the same
map; a dot product is faster than a 1x1 convolution on XLA:CPU); the k x k convs are
``layers.Conv`` (GEMM kernel gradients: XLA:CPU's own made a width-320 AE 10x slower), and the
transposed one (stride 1, VALID) is its equal, a conv over the code zero-padded by k - 1 on each side
(torch's ConvTranspose2d weight is this kernel flipped in H and W, with in/out swapped). Generic over
the map: any (H, W) >= k and any C.

Precisions (``PRECISIONS``): ``float32`` (as is), ``float16`` (a cast), ``int8`` and ``int4``:
uniform quantisation of each image's code with its own minimum and step (``lo + q * step``,
q in 0..2^b - 1, round half to even), the two stored as float32: 64 bits of side information per
image, counted by ``bits_per_image``. A constant code (max == min) is sent exactly as its minimum.
"""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp

from aeclust_jax.models.layers import Conv

# precision -> bits per value
PRECISIONS: dict[str, int] = {"float32": 32, "float16": 16, "int8": 8, "int4": 4}
SCALE_BITS = 64          # per image: the float32 minimum and step of the integer precisions


class FeatureAE(nn.Module):
    """(N, H, W, channels) -> (N, H, W, channels) through a (N, H-k+1, W-k+1, width) code."""
    channels: int
    width: int = 128
    hidden: int = 256
    kernel: int = 3

    def setup(self):
        k, full = (self.kernel, self.kernel), ((self.kernel - 1,) * 2,) * 2
        self.enc1 = nn.Dense(self.hidden, name="enc1")                 # 1x1 conv C -> hidden
        self.enc2 = nn.Dense(self.width, name="enc2")                  # 1x1 conv hidden -> width
        self.enc3 = Conv(self.width, k, name="enc3")                   # k x k VALID
        self.dec3 = Conv(self.width, k, padding=full, name="dec3")     # k x k transposed, VALID
        self.dec2 = nn.Dense(self.hidden, name="dec2")
        self.dec1 = nn.Dense(self.channels, name="dec1")

    def encode(self, x):
        """(N, H, W, C) -> code (N, H-k+1, W-k+1, width), non-negative."""
        if x.shape[-1] != self.channels:
            raise ValueError(f"FeatureAE(channels={self.channels}) got a map of {x.shape[-1]} "
                             f"channels {tuple(x.shape)}")
        if min(x.shape[1:3]) < self.kernel:
            raise ValueError(f"a {self.kernel}x{self.kernel} VALID conv needs a map of at least "
                             f"{self.kernel}x{self.kernel}, got {tuple(x.shape[1:3])}")
        y = nn.relu(self.enc1(x))
        y = nn.relu(self.enc2(y))
        return nn.relu(self.enc3(y))

    def decode(self, code):
        """code (N, h, w, width) -> (N, h+k-1, w+k-1, C), non-negative."""
        y = nn.relu(self.dec3(code))
        y = nn.relu(self.dec2(y))
        return nn.relu(self.dec1(y))

    def __call__(self, x):
        return self.decode(self.encode(x))


def feature_ae(channels: int, width: int = 128, hidden: int = 256, kernel: int = 3) -> FeatureAE:
    """The registry's constructor (``get_model("feature_ae", channels=512)``)."""
    return FeatureAE(channels=channels, width=width, hidden=hidden, kernel=kernel)


def code_shape(map_shape, width: int, kernel: int = 3) -> tuple[int, int, int]:
    """(h, w, width) of the code of a (H, W, C) map."""
    h, w = int(map_shape[0]) - kernel + 1, int(map_shape[1]) - kernel + 1
    if h < 1 or w < 1:
        raise ValueError(f"a {kernel}x{kernel} VALID conv needs a map of at least {kernel}x{kernel}, "
                         f"got {tuple(map_shape[:2])}")
    return h, w, int(width)


# ----------------------------------------------------------------------------- precisions

def _check(precision: str) -> int:
    if precision not in PRECISIONS:
        raise ValueError(f"unknown precision {precision!r}; choices: {', '.join(PRECISIONS)}")
    return PRECISIONS[precision]


def bits_per_image(values_per_image: int, precision: str) -> int:
    """Bits to send one image's ``values_per_image`` numbers at ``precision`` (with the 64-bit
    minimum and step of the integer precisions)."""
    bits = _check(precision)
    return int(values_per_image) * bits + (SCALE_BITS if bits < 16 else 0)


def quantize_uniform(x: jax.Array, bits: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """Per-image uniform quantisation of x (N, ...) float to ``bits`` bits: (q uint8 (N, ...) in
    0..2^bits - 1, lo (N,) float32, step (N,) float32), x ~ lo + q * step. Step 0 for a constant
    image (then q is 0)."""
    x = jnp.asarray(x, jnp.float32)
    axes = tuple(range(1, x.ndim))
    top = 2 ** bits - 1
    lo, hi = x.min(axis=axes), x.max(axis=axes)
    step = (hi - lo) / top
    shape = (-1,) + (1,) * (x.ndim - 1)
    safe = jnp.where(step > 0, step, 1.0).reshape(shape)
    q = jnp.clip(jnp.round((x - lo.reshape(shape)) / safe), 0, top)
    q = jnp.where(step.reshape(shape) > 0, q, 0).astype(jnp.uint8)
    return q, lo, step


def dequantize_uniform(q: jax.Array, lo: jax.Array, step: jax.Array) -> jax.Array:
    """float32 (N, ...): lo + q * step, per image."""
    shape = (-1,) + (1,) * (q.ndim - 1)
    return lo.reshape(shape) + q.astype(jnp.float32) * step.reshape(shape)


def quantize(x: jax.Array, precision: str) -> jax.Array:
    """float32 (N, ...): what a receiver reconstructs of x (N, ...) sent at ``precision``."""
    bits = _check(precision)
    x = jnp.asarray(x, jnp.float32)
    if bits == 32:
        return x
    if bits == 16:
        return x.astype(jnp.float16).astype(jnp.float32)
    return dequantize_uniform(*quantize_uniform(x, bits))


__all__ = ("FeatureAE", "feature_ae", "code_shape", "PRECISIONS", "SCALE_BITS", "bits_per_image",
           "quantize", "quantize_uniform", "dequantize_uniform")
