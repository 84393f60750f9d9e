"""S4: deep subspace clustering network (DSC-Net) with optional channel attention on the latent.

    model = dsc_net(channels=(15,), kernel_sizes=(3,), strides=(2,), attention=True)
    params = model.init(key, x)                                # x: (N, H, W, C) float in [0, 1]
    x_hat, z, z_c = model.apply(params, x)                     # fine-tune forward (self-expression)
    x_hat = model.apply(ae_params, x, method=DSCNet.reconstruct)   # plain AE (pretraining)

Encoder: Conv k x k, stride s, SAME + ReLU per layer; decoder: the mirror image with
ConvTranspose (SAME, stride s, cropped to the encoder's sizes so any H, W works) + ReLU, ending at
the input channels (as DSC-Net, ReLU on the output too). Channel attention (SE, on the latent): global average pool -> 1x1 conv to
max(1, c // 4) + ReLU -> 1x1 conv to c + sigmoid -> scale. Self-expressive layer: a learned
C (N x N), initialised to ``c_init``; z_c = C z on the flattened latents, and the decoder decodes z_c.
The convs are ``layers.Conv`` / ``layers.ConvTranspose``: nn.Conv's / nn.ConvTranspose's parameters
and values, with XLA:CPU's faster gradients (the COIL-20 fine-tune step 249 -> 208 ms).
"""

from __future__ import annotations

from typing import Sequence

import flax.linen as nn
import jax.numpy as jnp

from aeclust_jax.models.layers import Conv, ConvTranspose, same_padding


class ConvEncoder(nn.Module):
    """(N, H, W, C_in) -> (N, H / prod(strides), W / prod(strides), channels[-1])."""
    channels: Sequence[int]
    kernel_sizes: Sequence[int]
    strides: Sequence[int]

    @nn.compact
    def __call__(self, x):
        for i, (c, k, s) in enumerate(zip(self.channels, self.kernel_sizes, self.strides)):
            pads = tuple(same_padding(size, k, s) for size in x.shape[1:3])
            x = nn.relu(Conv(c, (k, k), (s, s), pads, name=f"conv{i}")(x))
        return x


def stage_sizes(height: int, width: int, strides: Sequence[int]) -> list[tuple[int, int]]:
    """Spatial sizes [(H, W), after layer 1, ..., latent] of ConvEncoder (SAME: ceil(size / s))."""
    sizes = [(height, width)]
    for s in strides:
        h, w = sizes[-1]
        sizes.append((-(-h // s), -(-w // s)))
    return sizes


class ConvDecoder(nn.Module):
    """Mirror of ConvEncoder: latent (N, h, w, c) -> (N, H, W, out_channels), ReLU after each layer.

    ``sizes``: the encoder's ``stage_sizes``; each ConvTranspose (SAME) outputs size x stride and
    is cropped at the bottom/right to the matching encoder size (TF's ``conv2d_transpose`` with an
    ``output_shape``), so any input size works; sizes divisible by the strides crop nothing.
    """
    channels: Sequence[int]          # the encoder's channels, in encoder order
    kernel_sizes: Sequence[int]
    strides: Sequence[int]
    out_channels: int

    @nn.compact
    def __call__(self, z, sizes: Sequence[tuple[int, int]] | None = None):
        outs = list(self.channels[:-1])[::-1] + [self.out_channels]
        layers = zip(outs, self.kernel_sizes[::-1], self.strides[::-1])
        targets = list(sizes[:-1])[::-1] if sizes is not None else [None] * len(outs)
        for i, ((c, k, s), hw) in enumerate(zip(layers, targets)):
            z = ConvTranspose(c, (k, k), (s, s), name=f"deconv{i}")(z)
            if hw is not None:
                z = z[:, :hw[0], :hw[1]]
            z = nn.relu(z)
        return z


class ChannelAttention(nn.Module):
    """Squeeze-and-excitation on (N, h, w, c): GAP -> 1x1 conv c//4 (>= 1) + ReLU -> 1x1 conv c + sigmoid -> scale."""
    reduction: int = 4

    @nn.compact
    def __call__(self, z):
        c = z.shape[-1]
        s = jnp.mean(z, axis=(1, 2), keepdims=True)                    # (N, 1, 1, c)
        s = nn.relu(nn.Conv(max(1, c // self.reduction), (1, 1), name="squeeze")(s))
        s = nn.sigmoid(nn.Conv(c, (1, 1), name="excite")(s))
        return z * s


class DSCNet(nn.Module):
    """Conv AE + optional channel attention + self-expressive layer C (n_samples x n_samples).

    ``__call__(x)`` on the full batch x (N = n_samples, H, W, C) -> (x_hat (N, H, W, C), z (N, D),
    z_c = C z (N, D)), D = h * w * c the flattened (attended) latent. With ``n_samples=None`` the
    module has no C and is the plain AE (``reconstruct``), as used for pretraining.
    """
    channels: Sequence[int] = (15,)
    kernel_sizes: Sequence[int] = (3,)
    strides: Sequence[int] = (2,)
    image_channels: int = 1
    attention: bool = False
    n_samples: int | None = None
    c_init: float = 1e-8

    def setup(self):
        self.encoder = ConvEncoder(self.channels, self.kernel_sizes, self.strides)
        self.decoder = ConvDecoder(self.channels, self.kernel_sizes, self.strides,
                                   self.image_channels)
        self.attn = ChannelAttention() if self.attention else None
        if self.n_samples is not None:
            n = self.n_samples
            self.C = self.param("C", lambda key: jnp.full((n, n), self.c_init, jnp.float32))

    def encode(self, x):
        """(N, H, W, C) -> latent (N, h, w, c), attended when ``attention``."""
        z = self.encoder(x)
        return self.attn(z) if self.attn is not None else z

    def reconstruct(self, x):
        """The plain autoencoder (no attention, no self-expression): (N, H, W, C) -> (N, H, W, C)."""
        return self.decoder(self.encoder(x), stage_sizes(x.shape[1], x.shape[2], self.strides))

    def __call__(self, x):
        if self.n_samples is None:
            raise ValueError("DSCNet without n_samples has no self-expressive layer; "
                             "call it with method=DSCNet.reconstruct")
        if x.shape[0] != self.n_samples:
            raise ValueError(f"the self-expressive layer needs the full batch of "
                             f"{self.n_samples} images, got {x.shape[0]}")
        z4 = self.encode(x)
        z = z4.reshape(x.shape[0], -1)
        z_c = self.C @ z
        x_hat = self.decoder(z_c.reshape(z4.shape), stage_sizes(x.shape[1], x.shape[2], self.strides))
        return x_hat, z, z_c


def dsc_net(*, channels: Sequence[int] = (15,), kernel_sizes: Sequence[int] = (3,),
            strides: Sequence[int] = (2,), image_channels: int = 1, attention: bool = False,
            n_samples: int | None = None, c_init: float = 1e-8) -> DSCNet:
    """Registry constructor ("dsc"); defaults are DSC-Net's COIL-20 network (latent 16x16x15).

    ``n_samples=None`` builds the plain AE for pretraining; ``n_samples=N`` adds C (N x N).
    """
    channels, kernel_sizes, strides = tuple(channels), tuple(kernel_sizes), tuple(strides)
    if not (len(channels) == len(kernel_sizes) == len(strides) >= 1):
        raise ValueError(f"channels {channels}, kernel_sizes {kernel_sizes} and strides {strides} "
                         "must be non-empty lists of the same length")
    if min(channels + kernel_sizes + strides) < 1:
        raise ValueError(f"channels, kernel_sizes and strides must be >= 1, got "
                         f"{channels}, {kernel_sizes}, {strides}")
    return DSCNet(channels, kernel_sizes, strides, image_channels, attention, n_samples, c_init)
