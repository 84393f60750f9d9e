"""The S1 autoencoders written literally with flax's own layers, as the authors' Keras code reads:
Conv(relu) -> MaxPool, nearest up x2 by jnp.repeat -> Conv, Conv2DTranspose 'valid' on the skip.

A test reference only: it shares no code with aeclust_jax.models (neither models/layers/ nor
skip_ae.py), and its parameter tree has the production model's names and shapes, so the two can
be run on the same parameters and compared value for value and gradient for gradient.
"""

from __future__ import annotations

import flax.linen as nn
import jax.numpy as jnp


def _pool(x):
    return nn.max_pool(x, (2, 2), strides=(2, 2), padding="SAME")


def _up(x):
    return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)


class LiteralSkipAE(nn.Module):
    """x (N, 28, 28, 1) or (N, 100, 100, 1) in [0, 1] -> (recon, latent, latent_skip)."""
    size: int = 28
    skip: bool = False

    @nn.compact
    def __call__(self, x):
        relu, selu = nn.relu, nn.selu
        conv = lambda f, name, pad="SAME": nn.Conv(f, (3, 3), padding=pad, name=name)
        if self.size == 28:
            y = _pool(relu(conv(16, "enc_conv1")(x)))                       # 14x14x16
            z2 = y = _pool(relu(conv(8, "enc_conv2")(y)))                   # 7x7x8
        else:
            z2 = y = _pool(relu(conv(16, "enc_conv1")(x)))                  # 50x50x16
            y = _pool(relu(conv(8, "enc_conv2")(y)))                        # 25x25x8
        z1 = y = _pool(relu(conv(8, "enc_conv3")(y)))                       # 4x4x8 | 13x13x8
        hw = z1.shape[1]
        feat = hw * hw * 8
        y = y.reshape(y.shape[0], -1)
        y = selu(nn.Dense(feat, name="enc_dense1")(y))
        y = selu(nn.Dense(feat // 2, name="enc_dense2")(y))
        latent = selu(nn.Dense(30, name="enc_latent")(y))
        y = selu(nn.Dense(feat // 2, name="dec_dense1")(latent))
        y = selu(nn.Dense(feat, name="dec_dense2")(y))
        y = y.reshape(y.shape[0], hw, hw, 8)
        if self.size == 28:
            if self.skip:
                y = y + relu(conv(8, "skip_conv_z1")(z1))
            y = relu(conv(8, "dec_conv1")(y))                               # 4x4x8
            if self.skip:
                s2 = nn.ConvTranspose(8, (3, 3), padding="VALID", name="skip_convt_z2")(_up(z2))
                y = relu(conv(8, "dec_conv2")(_up(y) + _pool(relu(s2))))    # 8x8x8
            else:
                y = relu(conv(8, "dec_conv2")(_up(y)))
            y = relu(conv(16, "dec_conv3", "VALID")(_up(y)))                # 14x14x16
        else:
            if self.skip:
                y = y + z1
            y = relu(conv(8, "dec_conv1")(y))                               # 13
            y = relu(conv(8, "dec_conv2")(_up(y)))                          # 26
            y = relu(conv(16, "dec_conv3", "VALID")(_up(y)))                # 50
            if self.skip:
                y = y + z2
        recon = nn.sigmoid(conv(1, "dec_out")(_up(y)))
        flat = lambda t: t.reshape(t.shape[0], -1)
        latent_skip = (latent + selu(nn.Dense(30, name="latent_skip_z1")(flat(z1)))
                       + selu(nn.Dense(30, name="latent_skip_z2")(flat(z2))))
        return recon, latent, latent_skip

