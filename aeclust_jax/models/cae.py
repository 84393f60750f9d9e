"""S2's naive convolutional autoencoders for colour natural images (Lee & Cho 2022).

    model = get_model("cae_v1", image_size=32)              # or 96 (STL-10)
    out = model.apply({"params": p}, x)                     # x (N, S, S, 3) float in [0, 1]
    out.recon (N, S, S, 3) in [0, 1], out.feature (N, 128)
    f = model.apply({"params": p}, x, method=model.encode)  # (N, 128) only

The seed paper's appendix with the exact layers is not public; these are ours, designed from its
text (every conv 3x3 'same' + ReLU, nearest x2 upsampling then a conv in the decoder, a sigmoid
output, MSE loss; every extractor gives a 128-d feature). ``S`` must be a multiple of 16, at least 32.
Every "upsample, then conv" of the decoders is computed on the small map (``UpConv``: the same
function and parameters, 4/9 of the multiplies; CAEv1's train step 1.4x faster on the CPU).

* ``cae_v1`` (plain conv AE): encoder conv16 (S) -> conv32 stride 2 (S/2) -> conv64 s2 (S/4)
  -> conv128 s2 = the code map (S/8, S/8, 128); decoder up+conv64 -> up+conv32 -> up+conv16
  -> conv3 sigmoid. Feature: global average pool of the code map (128 channels), so 128-d at
  any input size.
* ``cae_v2`` (conv AE + fully connected bottleneck): cae_v1's encoder, flatten -> Dense 128 (the
  feature, linear) -> Dense (S/8)^2 * 128 + ReLU -> reshape -> cae_v1's decoder.
* ``cae_v3`` (the CAE of Blanco-Mallo et al. 2020 as the seed cites it): that paper describes a
  convolutional autoencoder of conv + max-pooling blocks in the encoder and upsampling + conv
  blocks in the decoder, pretrained with MSE and used as a feature extractor through its flattened
  code; its layer widths and input size are not given in what is public, so these are GUESSES:
  four blocks conv(32, 64, 64, 32) + 2x2 max pool -> code map (S/16, S/16, 32); decoder four
  blocks conv(32, 64, 64, 32) + up x2, then conv3 sigmoid. Feature: the code map average-pooled
  to 2 x 2 and flattened, 2 * 2 * 32 = 128 (at 32 px the pool is the identity: the flat code).
* ``unet`` (cae_v1 plus U-Net skips): cae_v1 whose decoder concatenates, at each scale, the
  encoder map of that scale (S/4: conv64's, S/2: conv32's, S: conv16's) before its conv.
  Feature: as cae_v1 (pooled code map). ``skip_scale`` (default 1) multiplies the skip maps;
  0 cuts them (tests check the skips carry information).
"""

from __future__ import annotations

from typing import NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp

from aeclust_jax.models.layers import Conv, conv, max_pool_2x2, upsample_conv

FEATURE_DIM = 128
CAE_MODELS = ("cae_v1", "cae_v2", "cae_v3", "unet")


class CAEOutput(NamedTuple):
    """recon (N, S, S, C) in [0, 1]; feature (N, 128)."""
    recon: jax.Array
    feature: jax.Array


def _conv(features: int, stride: int = 1, name: str | None = None) -> Conv:
    """3x3 conv, 'same' padding (stride 2: TF/XLA 'SAME' of an even size, pad (0, 1))."""
    pad = ((1, 1), (1, 1)) if stride == 1 else ((0, 1), (0, 1))
    return Conv(features, (3, 3), (stride, stride), pad, name=name)


class UpConv(nn.Module):
    """The decoder's "nearest x2 upsampling, then a 3x3 'same' conv" of a map y, with an optional
    skip map (U-Net) concatenated to the upsampled y before the conv: (N, H, W, Cy) [+ skip
    (N, 2H, 2W, Cs)] -> (N, 2H, 2W, features). nn.Conv's parameters (kernel (3, 3, Cy + Cs,
    features) lecun_normal, bias zeros), computed without the upsampled map: the conv is linear,
    so it is ``upsample_conv`` of y with the kernel's first Cy input channels plus a plain conv of
    the skip with the rest (``models.layers``; exact up to float summation order)."""
    features: int

    @nn.compact
    def __call__(self, y: jax.Array, skip: jax.Array | None = None) -> jax.Array:
        cy = y.shape[-1]
        cin = cy + (0 if skip is None else skip.shape[-1])
        kernel = self.param("kernel", nn.initializers.lecun_normal(), (3, 3, cin, self.features),
                            jnp.float32)
        bias = self.param("bias", nn.initializers.zeros_init(), (self.features,), jnp.float32)
        out = upsample_conv(y, kernel[:, :, :cy], bias, "SAME")
        if skip is not None:
            out = out + conv(skip, kernel[:, :, cy:], 1, ((1, 1), (1, 1)))
        return out


def _check_size(image_size: int, channels: int) -> None:
    if image_size < 32 or image_size % 16:
        raise ValueError(f"S2 autoencoders take square images whose side is a multiple of 16 "
                         f"and at least 32 (32: CIFAR-10, 96: STL-10), got {image_size}")
    if channels < 1:
        raise ValueError(f"channels must be >= 1, got {channels}")


class StridedCAE(nn.Module):
    """cae_v1 / cae_v2 / unet (module docstring): strided conv encoder, upsampling decoder."""
    image_size: int = 32
    channels: int = 3
    bottleneck: bool = False      # cae_v2: Dense 128 between encoder and decoder
    skips: bool = False           # unet: concatenated encoder maps in the decoder
    skip_scale: float = 1.0

    def setup(self):
        _check_size(self.image_size, self.channels)
        self.enc = [_conv(16, 1, "enc_conv1"), _conv(32, 2, "enc_conv2"),
                    _conv(64, 2, "enc_conv3"), _conv(128, 2, "enc_conv4")]
        self.dec = [UpConv(64, name="dec_conv1"), UpConv(32, name="dec_conv2"),
                    UpConv(16, name="dec_conv3")]
        self.out = _conv(self.channels, 1, "dec_out")
        if self.bottleneck:
            code = self.image_size // 8
            self.code_shape = (code, code, 128)
            self.fc_enc = nn.Dense(FEATURE_DIM, name="fc_enc")
            self.fc_dec = nn.Dense(code * code * 128, name="fc_dec")

    def _encode_maps(self, x):
        """x (N, S, S, C) -> [map S x 16, S/2 x 32, S/4 x 64, S/8 x 128]."""
        maps = []
        for layer in self.enc:
            x = nn.relu(layer(x))
            maps.append(x)
        return maps

    def _feature(self, code):
        if self.bottleneck:
            return self.fc_enc(code.reshape(code.shape[0], -1))
        return jnp.mean(code, axis=(1, 2))

    def encode(self, x: jax.Array) -> jax.Array:
        """x (N, S, S, C) in [0, 1] -> feature (N, 128)."""
        return self._feature(self._encode_maps(x)[-1])

    def __call__(self, x: jax.Array) -> CAEOutput:
        """x (N, S, S, C) in [0, 1] -> CAEOutput(recon (N, S, S, C), feature (N, 128))."""
        maps = self._encode_maps(x)
        feature = self._feature(maps[-1])
        y = maps[-1]
        if self.bottleneck:
            y = nn.relu(self.fc_dec(feature)).reshape((-1,) + self.code_shape)
        for up_conv, skip in zip(self.dec, maps[-2::-1]):
            y = nn.relu(up_conv(y, self.skip_scale * skip if self.skips else None))
        return CAEOutput(nn.sigmoid(self.out(y)), feature)


class PoolCAE(nn.Module):
    """cae_v3 (module docstring): conv + max-pool encoder, upsample + conv decoder."""
    image_size: int = 32
    channels: int = 3
    widths: tuple[int, ...] = (32, 64, 64, 32)

    def setup(self):
        _check_size(self.image_size, self.channels)
        self.enc = [_conv(w, 1, f"enc_conv{i + 1}") for i, w in enumerate(self.widths)]
        # every decoder conv but the first reads an upsampled map
        self.dec = [UpConv(w, name=f"dec_conv{i + 1}") if i else _conv(w, 1, f"dec_conv{i + 1}")
                    for i, w in enumerate(self.widths)]
        self.out = UpConv(self.channels, name="dec_out")

    def _code(self, x):
        for layer in self.enc:
            x = max_pool_2x2(nn.relu(layer(x)))
        return x                                        # (N, S/16, S/16, 32)

    def _feature(self, code):
        n, h, w, c = code.shape
        pooled = code.reshape(n, 2, h // 2, 2, w // 2, c).mean(axis=(2, 4))   # (N, 2, 2, 32)
        return pooled.reshape(n, -1)

    def encode(self, x: jax.Array) -> jax.Array:
        """x (N, S, S, C) in [0, 1] -> feature (N, 128)."""
        return self._feature(self._code(x))

    def __call__(self, x: jax.Array) -> CAEOutput:
        """x (N, S, S, C) in [0, 1] -> CAEOutput(recon (N, S, S, C), feature (N, 128))."""
        code = self._code(x)
        y = code
        for layer in self.dec:             # conv, relu, up x2 (the up inside the next UpConv)
            y = nn.relu(layer(y))
        return CAEOutput(nn.sigmoid(self.out(y)), self._feature(code))


def cae_v1(image_size: int = 32, channels: int = 3) -> StridedCAE:
    """Plain conv AE; 128-d feature = global average pool of the (S/8, S/8, 128) code."""
    return StridedCAE(int(image_size), int(channels))


def cae_v2(image_size: int = 32, channels: int = 3) -> StridedCAE:
    """Conv AE with a fully connected 128-d bottleneck (the feature)."""
    return StridedCAE(int(image_size), int(channels), bottleneck=True)


def cae_v3(image_size: int = 32, channels: int = 3) -> PoolCAE:
    """Blanco-Mallo et al. 2020's CAE as we read it (widths guessed); 128-d pooled flat code."""
    return PoolCAE(int(image_size), int(channels))


def unet(image_size: int = 32, channels: int = 3, skip_scale: float = 1.0) -> StridedCAE:
    """cae_v1 plus U-Net (concatenated) skips at every decoder scale."""
    return StridedCAE(int(image_size), int(channels), skips=True, skip_scale=float(skip_scale))


__all__ = ("CAEOutput", "StridedCAE", "PoolCAE", "UpConv", "cae_v1", "cae_v2", "cae_v3", "unet",
           "CAE_MODELS", "FEATURE_DIM")
