"""S1 convolutional autoencoders with optional additive encoder->decoder skips (Jo et al. 2020).

    model = cae_skip(image_shape=(28, 28, 1))
    params = model.init(key, x, with_latent_skip=True)["params"]     # x: (N, 28, 28, 1) in [0, 1]
    out = model.apply({"params": params}, x)                         # AEOutput
    out.recon (N, H, W, 1), out.latent (N, 30), out.skips = (z1, z2)

Two families, chosen by the image shape (STUDIES.md S1, the authors' Keras code):

* 28x28 (MNIST, Fashion-MNIST): Conv16-pool-Conv8-pool = z2 (7x7x8) -> Conv8-pool = z1 (4x4x8)
  -> Dense 128 (lecun_normal) -> Dense 64 -> Dense 30 = latent; decoder Dense 64 -> Dense 128 ->
  4x4x8 [+ Conv8(z1)] -> Conv8 -> Up 8 [+ MaxPool(ConvT8 'valid'(Up z2))] -> Conv8 -> Up 16 ->
  Conv16 'valid' (14) -> Up 28 -> Conv1 sigmoid.
* 100x100 (Hanja): Conv16-pool = z2 (50x50x16) -> Conv8-pool -> Conv8-pool = z1 (13x13x8) ->
  Dense 1352 (lecun_normal) -> Dense 676 -> Dense 30; decoder Dense 676 -> Dense 1352 -> 13x13x8
  [+ z1] -> Conv8 -> Up 26 -> Conv8 -> Up 52 -> Conv16 'valid' (50) [+ z2] -> Up 100 -> Conv1 sigmoid.

Convs are 3x3 ReLU 'same' unless said, pools 2x2 'same', dense layers SELU, upsampling nearest x2.
How they run (models/layers/): each "upsample x2 then conv" is one conv on the small map
(``upsample="subpixel"``, exact; ``repeat``/``broadcast``/``resize`` run it literally), and each
"conv, ReLU, pool" as conv, pool, bias, ReLU (same values).
``dae``/``dae_skip`` are the same networks; they only carry ``noise_std`` (the corruption is applied
by the training step, not the model). The latent+skip feature (``with_latent_skip=True``) adds
Dense(30, selu) projections of flatten(z2) and flatten(z1) to the latent, as the authors'
``sum_latent``; those two layers live under ``params['latent_skip_z1' | 'latent_skip_z2']`` and are
not on the reconstruction path (see ``RECON_PARAM_FILTER``).
"""

from __future__ import annotations

from typing import NamedTuple, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from aeclust_jax.models.layers import Conv3x3

LATENT_DIM = 30
LATENT_SKIP_PREFIX = "latent_skip_"


class AEOutput(NamedTuple):
    """recon (N, H, W, C) in [0, 1]; latent (N, 30); skips = (z1, z2) encoder maps;
    latent_skip (N, 30) or None when not asked for."""
    recon: jax.Array
    latent: jax.Array
    skips: tuple
    latent_skip: jax.Array | None


def upsample2x(x: jax.Array, method: str = "repeat") -> jax.Array:
    """Nearest-neighbour x2 upsampling of (N, H, W, C) -> (N, 2H, 2W, C).

    ``repeat``: two jnp.repeat; ``broadcast``: broadcast_to + reshape; ``resize``: jax.image.resize.
    All three give identical values (tested); speed differs (benchmarks/bench_train_step.py).
    """
    n, h, w, c = x.shape
    if method == "repeat":
        return jnp.repeat(jnp.repeat(x, 2, axis=1), 2, axis=2)
    if method == "broadcast":
        y = jnp.broadcast_to(x[:, :, None, :, None, :], (n, h, 2, w, 2, c))
        return y.reshape(n, 2 * h, 2 * w, c)
    if method == "resize":
        return jax.image.resize(x, (n, 2 * h, 2 * w, c), method="nearest")
    raise ValueError(f"unknown upsample method {method!r}; choices: repeat, broadcast, resize")


class SkipAE(nn.Module):
    """The S1 autoencoder for one image shape; see the module docstring for the layers."""
    image_shape: Sequence[int] = (28, 28, 1)
    skip: bool = False
    noise_std: float = 0.0          # > 0 marks a denoising model (dae, dae_skip)
    latent_dim: int = LATENT_DIM
    upsample: str = "subpixel"

    @property
    def family(self) -> str:
        return family_of(self.image_shape)

    def setup(self):
        h, w, c = self.image_shape
        conv = lambda f, name, pad="SAME": Conv3x3(f, pad, name=name)
        self.enc_conv1 = conv(16, "enc_conv1")
        self.enc_conv2 = conv(8, "enc_conv2")
        self.enc_conv3 = conv(8, "enc_conv3")
        z1_hw = _ceil_half(_ceil_half(_ceil_half(h)))
        self.z1_shape = (z1_hw, z1_hw, 8)
        feat = z1_hw * z1_hw * 8
        self.enc_dense1 = nn.Dense(feat, kernel_init=nn.initializers.lecun_normal(), name="enc_dense1")
        self.enc_dense2 = nn.Dense(feat // 2, name="enc_dense2")
        self.enc_dense3 = nn.Dense(self.latent_dim, name="enc_latent")
        self.dec_dense1 = nn.Dense(feat // 2, name="dec_dense1")
        self.dec_dense2 = nn.Dense(feat, name="dec_dense2")
        self.dec_conv1 = conv(8, "dec_conv1")
        self.dec_conv2 = conv(8, "dec_conv2")
        self.dec_conv3 = conv(16, "dec_conv3", pad="VALID")
        self.dec_out = conv(c, "dec_out")
        if self.skip and self.family == "28":
            self.skip_conv_z1 = conv(8, "skip_conv_z1")
            # = nn.ConvTranspose(8, (3, 3), padding="VALID"): same parameters, same function
            self.skip_convt_z2 = conv(8, "skip_convt_z2", pad="FULL")
        # Keras Dense default init (glorot_uniform, zero bias); never on the reconstruction path.
        self.latent_skip_z1 = nn.Dense(self.latent_dim, kernel_init=nn.initializers.glorot_uniform(),
                                       name=LATENT_SKIP_PREFIX + "z1")
        self.latent_skip_z2 = nn.Dense(self.latent_dim, kernel_init=nn.initializers.glorot_uniform(),
                                       name=LATENT_SKIP_PREFIX + "z2")

    def encode(self, x: jax.Array):
        """x (N, H, W, C) in [0, 1] -> latent (N, 30), skips (z1, z2)."""
        relu, selu = nn.relu, nn.selu
        if self.family == "28":
            y = relu(self.enc_conv1(x, pooled=True))                # conv, pool, bias, relu
            z2 = y = relu(self.enc_conv2(y, pooled=True))           # 7x7x8
        else:
            z2 = y = relu(self.enc_conv1(x, pooled=True))           # 50x50x16
            y = relu(self.enc_conv2(y, pooled=True))
        z1 = y = relu(self.enc_conv3(y, pooled=True))               # 4x4x8 | 13x13x8
        y = y.reshape(y.shape[0], -1)
        y = selu(self.enc_dense1(y))
        y = selu(self.enc_dense2(y))
        latent = selu(self.enc_dense3(y))
        return latent, (z1, z2)

    def latent_plus_skip(self, latent, skips):
        """latent (N, 30) + Dense(30, selu)(flatten z1) + Dense(30, selu)(flatten z2)."""
        z1, z2 = skips
        flat = lambda t: t.reshape(t.shape[0], -1)
        return (latent + nn.selu(self.latent_skip_z1(flat(z1)))
                + nn.selu(self.latent_skip_z2(flat(z2))))

    def decode(self, latent, skips=None):
        """latent (N, 30) [+ skip maps when the model has skips and ``skips`` is given] -> (N,H,W,C).

        Sows the decoder maps at each skip junction into 'intermediates' (``latent_path_*`` and
        ``skip_branch_*``) for the feature-map figure.
        """
        relu, selu = nn.relu, nn.selu
        subpixel = self.upsample == "subpixel"
        up = lambda t: upsample2x(t, "repeat" if subpixel else self.upsample)
        # conv(up(t)): with "subpixel" computed on t's grid by models.layers.upsample_conv
        up_conv = lambda conv, t, **kw: conv(t, upsampled=True, **kw) if subpixel else conv(up(t), **kw)
        y = selu(self.dec_dense1(latent))
        y = selu(self.dec_dense2(y))
        y = y.reshape((y.shape[0],) + tuple(self.z1_shape))
        use_skip = self.skip and skips is not None
        if use_skip:
            z1, z2 = skips
        if self.family == "28":
            if use_skip:
                s1 = relu(self.skip_conv_z1(z1))
                self.sow("intermediates", "latent_path_1", y)
                self.sow("intermediates", "skip_branch_1", s1)
                y = y + s1
            y = relu(self.dec_conv1(y))                      # 4x4x8
            if use_skip:
                y = up(y)                                    # 8x8x8
                s2 = relu(up_conv(self.skip_convt_z2, z2, pooled=True))  # 14 -> 16 -> 8
                self.sow("intermediates", "latent_path_2", y)
                self.sow("intermediates", "skip_branch_2", s2)
                y = relu(self.dec_conv2(y + s2))             # 8x8x8
            else:
                y = relu(up_conv(self.dec_conv2, y))         # 8x8x8
            y = relu(up_conv(self.dec_conv3, y))             # 16 'valid' -> 14x14x16
        else:
            if use_skip:
                self.sow("intermediates", "latent_path_1", y)
                self.sow("intermediates", "skip_branch_1", z1)
                y = y + z1
            y = relu(self.dec_conv1(y))                      # 13
            y = relu(up_conv(self.dec_conv2, y))             # 26
            y = relu(up_conv(self.dec_conv3, y))             # 52 'valid' -> 50x50x16
            if use_skip:
                self.sow("intermediates", "latent_path_2", y)
                self.sow("intermediates", "skip_branch_2", z2)
                y = y + z2
        return nn.sigmoid(up_conv(self.dec_out, y))          # 28 | 100

    def __call__(self, x: jax.Array, *, with_latent_skip: bool = False) -> AEOutput:
        """x (N, H, W, C) float in [0, 1] -> AEOutput. Initialise with ``with_latent_skip=True``
        so the latent+skip projections get parameters."""
        latent, skips = self.encode(x)
        recon = self.decode(latent, skips)
        ls = self.latent_plus_skip(latent, skips) if with_latent_skip else None
        return AEOutput(recon, latent, skips, ls)


def _ceil_half(n: int) -> int:
    return -(-n // 2)


def family_of(image_shape: Sequence[int]) -> str:
    """'28' for 28x28 images, '100' for 100x100; anything else is a ValueError."""
    h, w = int(image_shape[0]), int(image_shape[1])
    if (h, w) == (28, 28):
        return "28"
    if (h, w) == (100, 100):
        return "100"
    raise ValueError(f"S1 models take 28x28 (MNIST family) or 100x100 (Hanja family) images, "
                     f"got {h}x{w}")


def is_recon_param(path: tuple) -> bool:
    """True for parameters on the reconstruction path (everything but the latent_skip_* heads)."""
    return not any(str(getattr(p, "key", p)).startswith(LATENT_SKIP_PREFIX) for p in path)


def _build(skip: bool, noise_std: float, image_shape=(28, 28, 1), **kw) -> SkipAE:
    family_of(image_shape)
    return SkipAE(image_shape=tuple(int(s) for s in image_shape), skip=skip, noise_std=noise_std, **kw)


def cae(image_shape=(28, 28, 1), **kw) -> SkipAE:
    """Convolutional AE without skips."""
    return _build(False, 0.0, image_shape, **kw)


def cae_skip(image_shape=(28, 28, 1), **kw) -> SkipAE:
    """Convolutional AE with additive encoder->decoder skips."""
    return _build(True, 0.0, image_shape, **kw)


def dae(image_shape=(28, 28, 1), noise_std: float = 0.5, **kw) -> SkipAE:
    """Denoising convolutional AE (input x + noise_std * N(0,1), clipped), no skips."""
    return _build(False, noise_std, image_shape, **kw)


def dae_skip(image_shape=(28, 28, 1), noise_std: float = 0.5, **kw) -> SkipAE:
    """Denoising convolutional AE with additive skips."""
    return _build(True, noise_std, image_shape, **kw)
