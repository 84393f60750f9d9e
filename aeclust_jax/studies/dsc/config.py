"""S4's config: ``DSCConfig`` (every hyperparameter; each field's help and choices generate the
command line), the named presets and ``auto_config`` (settings from the data's shape).
"""

from __future__ import annotations

import dataclasses
from typing import Any, Sequence

import numpy as np

from aeclust_jax.config import ConfigError, field
from aeclust_jax.models.dsc import stage_sizes

# Images x N above this make C (N x N) and its Adam state too large to be sensible on a CPU.
MAX_SAMPLES = 10_000


@dataclasses.dataclass(frozen=True)
class DSCConfig:
    """Every hyperparameter of the S4 recipe (defaults: DSC-Net on COIL-20, latent 16x16x15).

    channels / kernel_sizes / strides: the encoder's conv layers (decoder mirrors them).
    attention: SE channel attention on the latent during fine-tuning (pretraining is the plain AE).
    lambda1, lambda2: weights of ||C||^2 and (1/2)||Z - C Z||^2; c_init: initial value of C.
    pretrain_epochs, pretrain_batch_size (0 = full batch), pretrain_lr: the plain AE (Adam).
    finetune_iters, finetune_lr: full-batch Adam iterations of the DSC fine-tune.
    ro, d, alpha: dsc_affinity's post-processing of C (kept L1 mass fraction, subspace dim, power).
    """
    channels: tuple[int, ...] = field((15,), "encoder conv channels, the last = the latent's c")
    kernel_sizes: tuple[int, ...] = field((3,), "encoder conv kernel sizes (one per layer)")
    strides: tuple[int, ...] = field((2,), "encoder conv strides (one per layer)")
    attention: bool = field(False, "SE channel attention on the latent during fine-tuning")
    lambda1: float = field(1.0, "weight of ||C||^2 (>= 0)")
    lambda2: float = field(150.0, "weight of (1/2)||Z - C Z||^2 (>= 0)")
    c_init: float = field(1e-8, "initial value of the self-expression coefficients C")
    pretrain_epochs: int = field(100, "epochs of the plain AE (0: none)")
    pretrain_batch_size: int = field(0, "batch size of pretraining (0: full batch)")
    pretrain_lr: float = field(1e-3, "Adam learning rate of pretraining")
    finetune_iters: int = field(40, "full-batch Adam iterations of the DSC fine-tune (>= 1)")
    finetune_lr: float = field(1e-3, "Adam learning rate of the fine-tune")
    ro: float = field(0.04, "dsc_affinity: kept fraction of each column's L1 mass (0 < ro <= 1)")
    d: int = field(12, "dsc_affinity: subspace dimension (>= 1)")
    alpha: float = field(8.0, "dsc_affinity: power of the affinity (> 0)")

    def __post_init__(self):
        for name in ("channels", "kernel_sizes", "strides"):
            v = getattr(self, name)
            v = (v,) if isinstance(v, int) else tuple(int(a) for a in v)
            object.__setattr__(self, name, v)
        if not (len(self.channels) == len(self.kernel_sizes) == len(self.strides) >= 1):
            raise ConfigError(f"channels {self.channels}, kernel_sizes {self.kernel_sizes} and "
                              f"strides {self.strides} must be non-empty and of equal length")
        checks = {"pretrain_epochs": (self.pretrain_epochs >= 0, ">= 0"),
                  "pretrain_batch_size": (self.pretrain_batch_size >= 0, ">= 0"),
                  "finetune_iters": (self.finetune_iters >= 1, ">= 1"), "d": (self.d >= 1, ">= 1"),
                  "pretrain_lr": (self.pretrain_lr > 0, "> 0"),
                  "finetune_lr": (self.finetune_lr > 0, "> 0"),
                  "lambda1": (self.lambda1 >= 0, ">= 0"), "lambda2": (self.lambda2 >= 0, ">= 0"),
                  "ro": (0 < self.ro <= 1, "in (0, 1]"), "alpha": (self.alpha > 0, "> 0"),
                  "channels": (min(self.channels) >= 1, ">= 1")}
        bad = [k for k, (ok, _) in checks.items() if not ok]
        if bad:
            raise ConfigError("invalid DSC config: " + ", ".join(
                f"{k}={getattr(self, k)!r} (must be {checks[k][1]})" for k in bad))


PRESETS: dict[str, DSCConfig] = {
    # DSC-Net's COIL-20 network, latent 16x16x15.
    "coil20": DSCConfig(),
    # The seed's compressed latents 16x16xc, c = 1, 2, 3 ("25/50/75 %"); attention is a flag.
    "coil20_c1": DSCConfig(channels=(1,)),
    "coil20_c2": DSCConfig(channels=(2,)),
    "coil20_c3": DSCConfig(channels=(3,)),
    # DSC-Net's ORL network and weights as in its PyTorch port (not reproduced here).
    "orl": DSCConfig(channels=(5, 3, 3), kernel_sizes=(5, 3, 3), strides=(2, 2, 2), lambda1=2.0,
                     lambda2=0.4, finetune_iters=700, ro=0.2, d=3, alpha=1.0),
}


def preset(name: str, **overrides: Any) -> DSCConfig:
    """The named preset (``PRESETS``) with field overrides; unknown names list the choices."""
    if name not in PRESETS:
        raise ConfigError(f"unknown DSC preset {name!r}; choices: {', '.join(PRESETS)}")
    return dataclasses.replace(PRESETS[name], **overrides)


# DSC-Net's published settings (TF code panji530/Deep-subspace-clustering-networks, files
# DSC-Net-L2-{COIL20,COIL100,ORL,EYaleB}.py; PyTorch port XifengGuo/DSC-Net), the anchors of
# auto_config. m = images per cluster; lambda1 = 1 and Adam lr 1e-3 in all; our loss scale.
#   data      image  N     K       m   kernels / channels  latent    lambda2      iters   ro    d  alpha
#   COIL-20   32x32  1440  20      72  3 / 15              16x16x15  150          30      .04   12 8
#   COIL-100  32x32  7200  100     72  5 / 50              16x16x50  30           120     .04   12 8
#   ORL       32x32  400   40      10  3,3,3 / 3,3,5       4x4x5     0.2          700     .2    3  1
#   Yale B    48x42  64K   10..38  64  5,3,3 / 10,20,30    6x6x30    10^(K/10-3)  50+25K  (*)   10 3.5
#   (*) max(0.4 - 0.1 (K - 1) / 10, 0.1)
AUTO_LATENT_SIDE = 16       # halve the image until its smaller side is at most this
AUTO_MAX_CHANNELS = 64
AUTO_LAMBDA2_MAX = 1e4


def auto_config(image_shape: Sequence[int], n_samples: int, n_clusters: int,
                **overrides: Any) -> DSCConfig:
    """A DSCConfig for N = ``n_samples`` images of ``image_shape`` (H, W[, C]) in ``n_clusters``
    clusters, by rules anchored on DSC-Net's published settings (the table above; measurements
    and reasons in docs/s4.md). ``overrides`` (DSCConfig fields) replace the chosen values.

    With m = N / K (images per cluster):

    * network: L = max(1, ceil(log2(min(H, W) / 16))) conv layers of stride 2 (SAME; the
      decoder crops, so any H, W works): the latent's smaller side is in (8, 16] (8 for a 16 px
      image), as COIL-20 / COIL-100's 16x16 from 32x32 (ORL's 4x4 and Yale B's 6x6 are smaller:
      on COIL-20 a 8x8x8 latent gave ACC 0.83, 16x16x4 0.90, one seed each); kernels 3
      (COIL-20, ORL; the 5 of COIL-100 / Yale B's first layer costs 2-3x on CPU and is not
      used); latent channels c = clip(ceil(2 d K / (h w)), 4, 64), so that the latent dimension
      h w c is at least twice the K d dimensions of the union of subspaces (COIL-20: 16x16x4 =
      1024 >= 2 x 240); the layers ramp up to it, c_i = max(ceil(c (i + 1) / L), min(c, 4))
      (Yale B: 10, 20, 30).
    * d = clip(round(m / 6), 3, 12), at most (N - 2) // K so that the rank d K + 1 < N
      (COIL: m = 72 -> 12; Yale B: 64 -> 10 (ours 11); ORL: 10 -> 3).
    * t = clip((m - 10) / 62, 0, 1): 0 at ORL's m = 10, 1 at COIL's m = 72.
    * alpha (affinity power) = 1 + 7 t: ORL's 1 to COIL's 8 (Yale B's 3.5 at m = 64 is not
      followed: on COIL-20's learned C, alpha 3.5 / d 10 gave ACC 0.83 against 0.93 with 8 / 12).
    * ro (kept L1 mass per column of C): 0.2 (m / 10)^(log(0.2) / log(7.2)) (ORL: m = 10 ->
      0.2; COIL: 72 -> 0.04), times max(1, 20 / K) (fewer clusters keep more, as Yale B's
      max(0.4 - 0.1 (K - 1) / 10, 0.1); measured: 3 COIL-20 objects, ro 0.04 -> ACC 0.62, no
      thresholding -> 1.0); at most 1 (= no thresholding).
    * lambda1 = 1 (every anchor); lambda2 = min(10^(K / 10 - 3) * 1500^t, 1e4): Yale B's rule
      ``reg2 = 10^(K / 10 - 3)`` (x10 per 10 more clusters, the only published rule that depends
      on the data), its level raised log-linearly in m up to COIL-20's (150 at K = 20, m = 72),
      capped at 1e4. Measured (docs/s4.md): with few images per cluster a small lambda2 is better
      (K = 10, m = 8: ACC 0.99 at 0.01, 0.87 at 150), with many a large one (K = 20, m = 72:
      1.0 at 150, 0.95 at 0.1; COIL-20 0.855 vs 0.831). COIL-100 (30 at K = 100) and ORL (0.2 at
      K = 40) follow no K rule (their latents differ in scale).
    * finetune_iters = max(40, round(3000 / m)): Adam moves each entry of C by about lr = 1e-3
      per step, and an image is expressed by about m in-cluster images, so entries need ~1 / m
      (COIL-20: 3000 / 72 -> 42, DSC-Net 30-40; ORL: 300, DSC-Net 700).
    * pretraining as the COIL-20 preset (100 full-batch Adam epochs, lr 1e-3); fine-tune lr 1e-3.

    Pure: depends only on the arguments. Raises ValueError for N < 2, K outside [2, N], or an
    empty image.
    """
    if len(image_shape) not in (2, 3):
        raise ValueError(f"image_shape must be (H, W) or (H, W, C), got {tuple(image_shape)}")
    h, w = int(image_shape[0]), int(image_shape[1])
    n, k = int(n_samples), int(n_clusters)
    if min(h, w) < 1 or n < 2 or not 2 <= k <= n:
        raise ValueError(f"auto_config needs H, W >= 1, N >= 2 and 2 <= n_clusters <= N; got "
                         f"image_shape {tuple(image_shape)}, N {n}, n_clusters {k}")
    m = n / k
    layers = max(1, int(np.ceil(np.log2(min(h, w) / AUTO_LATENT_SIDE))))
    d = int(np.clip(round(m / 6), 3, 12))
    d = max(1, min(d, (n - 2) // k))
    lh, lw = stage_sizes(h, w, (2,) * layers)[-1]
    c = int(np.clip(np.ceil(2 * d * k / (lh * lw)), 4, AUTO_MAX_CHANNELS))
    channels = tuple(max(int(np.ceil(c * (i + 1) / layers)), min(c, 4)) for i in range(layers))
    t = float(np.clip((m - 10) / 62, 0, 1))       # 0 at ORL's m = 10, 1 at COIL's m = 72
    alpha = 1 + 7 * t
    ro = 0.2 * (m / 10) ** (np.log(0.04 / 0.2) / np.log(7.2)) * max(1.0, 20 / k)
    lambda2 = float(min(10 ** (k / 10 - 3) * 1500 ** t, AUTO_LAMBDA2_MAX))
    cfg = dict(channels=channels, kernel_sizes=(3,) * layers, strides=(2,) * layers,
               lambda1=1.0, lambda2=lambda2, d=d, alpha=round(alpha, 4),
               ro=round(float(min(ro, 1.0)), 4), finetune_iters=max(40, round(3000 / m)),
               pretrain_epochs=100, pretrain_batch_size=0, pretrain_lr=1e-3, finetune_lr=1e-3)
    cfg.update(overrides)
    return DSCConfig(**cfg)


