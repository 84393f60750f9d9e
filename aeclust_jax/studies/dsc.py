"""S4: deep subspace clustering (DSC-Net) with channel attention and compressed latents.

    from aeclust_jax.studies.dsc import fit_predict, preset
    labels = fit_predict(images, 20, preset("coil20"), seed=0)      # images (N, H, W, C)
    labels = fit_predict(images, k)          # any image set: settings from auto_config

Recipe (Ji et al. 2017; Baek & Yoon): pretrain the plain conv AE on reconstruction
(``0.5 ||X - X_hat||^2``, Adam), then add the self-expressive layer C (N x N, init 1e-8) and, if
asked, SE channel attention on the latent, and fine-tune everything on the full batch with
``0.5 ||X - X_hat||^2 + lambda1 ||C||^2 + lambda2 / 2 ||Z - C Z||^2`` (X_hat decoded from C Z).
Then DSC-Net's post-processing of C (``cluster.dsc_affinity``) and spectral clustering.

CLI: ``scripts/train.py --model dsc ...`` (``train_main``), ``scripts/reproduce.py s4`` (``reproduce_main``).
"""

from __future__ import annotations

import argparse
import dataclasses
import functools
import json
import pathlib
import time
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aeclust_jax import runs
from aeclust_jax.cli import make_parser, prog_name
from aeclust_jax.config import (ConfigError, add_config_options, config_overrides, field,
                                load_config, to_dict)
from aeclust_jax.errors import UsageError
from aeclust_jax.models.dsc import DSCNet, dsc_net, stage_sizes
from aeclust_jax.progress import Stages

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


# ----------------------------------------------------------------------------- core pieces

def as_float_images(images) -> np.ndarray:
    """(N, H, W, C) uint8 or float in [0, 1] -> float32; other shapes raise ValueError."""
    images = np.asarray(images)
    if images.ndim != 4:
        raise ValueError(f"images must be (N, H, W, C), got shape {images.shape}")
    if images.dtype == np.uint8:
        return images.astype(np.float32) / 255.0
    if not np.issubdtype(images.dtype, np.floating):
        raise ValueError(f"images must be uint8 or float in [0, 1], got dtype {images.dtype}")
    return images.astype(np.float32)


def build_model(config: DSCConfig, image_channels: int, n_samples: int | None = None) -> DSCNet:
    """The DSC network of ``config``; ``n_samples=None`` is the plain AE of pretraining."""
    return dsc_net(channels=config.channels, kernel_sizes=config.kernel_sizes,
                   strides=config.strides, image_channels=image_channels,
                   attention=config.attention and n_samples is not None,
                   n_samples=n_samples, c_init=config.c_init)


def dsc_loss(x, x_hat, z, z_c, c, lambda1: float, lambda2: float):
    """(total, terms) of ``0.5||x - x_hat||^2 + lambda1||c||^2 + lambda2/2 ||z - z_c||^2``.

    x, x_hat: (N, H, W, C); z, z_c: (N, D); c: (N, N). Sums, not means (as DSC-Net).
    """
    recon = 0.5 * jnp.sum((x_hat - x) ** 2)
    reg = jnp.sum(c ** 2)
    self_expr = 0.5 * jnp.sum((z - z_c) ** 2)
    total = recon + lambda1 * reg + lambda2 * self_expr
    return total, {"recon": recon, "reg": reg, "self_expr": self_expr}


PRETRAIN_RECIPE = 1   # bump when pretrain() changes what it computes: old folders are refused

def pretrain_fields(x: np.ndarray, config: DSCConfig, key: jax.Array) -> dict:
    """Everything that determines ``pretrain``'s AE: the encoder, the pretraining
    hyperparameters, the images (N, H, W, C) by digest, the key and the recipe version."""
    return {"recipe": f"dsc-pretrain-{PRETRAIN_RECIPE}", "channels": config.channels,
            "kernel_sizes": config.kernel_sizes, "strides": config.strides,
            "pretrain_epochs": config.pretrain_epochs,
            "pretrain_batch_size": config.pretrain_batch_size, "pretrain_lr": config.pretrain_lr,
            "images": {"shape": list(x.shape), "sha1": runs.array_digest(x)},
            "key": np.asarray(jax.random.key_data(key)).tolist()}


def pretrain(x: np.ndarray, config: DSCConfig, key: jax.Array, *, checkpoint_dir=None,
             progress: bool = False) -> tuple[dict, float]:
    """Pretrains the plain AE on x (N, H, W, C) float; returns (params, seconds of training).

    With ``checkpoint_dir`` the trained AE is saved there (orbax, via ``train.fit``) and a later
    call with the same folder restores it instead of training again (seconds: as first measured).
    The folder is tied to what determines the AE (``pretrain_fields``: the encoder, the pretraining
    hyperparameters, the images' digest, the key, the recipe version): other inputs raise
    ConfigError naming the fields that differ, never a silent reuse.
    """
    from aeclust_jax import train

    model = build_model(config, x.shape[-1])
    init_key, fit_key = jax.random.split(key)
    state = train.create_train_state(model, init_key, jnp.asarray(x[:1]),
                                     train.make_optimizer("adam", config.pretrain_lr, adam_eps=1e-8),
                                     init_kwargs={"method": DSCNet.reconstruct})
    if config.pretrain_epochs == 0:
        return state.params, 0.0

    def loss_fn(params, batch, rng):
        xb = batch["image"]
        x_hat = model.apply({"params": params}, xb, method=DSCNet.reconstruct)
        per_row = 0.5 * jnp.sum((x_hat - xb) ** 2, axis=(1, 2, 3))
        loss = jnp.sum(per_row * batch["mask"])
        return loss, {}

    n = len(x)
    batch = config.pretrain_batch_size or n
    ckpt, history = None, None
    if checkpoint_dir is not None:
        checkpoint_dir = runs.claim_artifact_dir(checkpoint_dir, pretrain_fields(x, config, key),
                                                 "a pretrained DSC autoencoder")
        ckpt = train.Checkpointer(checkpoint_dir / "checkpoints",
                                  every=max(1, config.pretrain_epochs // 4), keep=1)
        history = checkpoint_dir / "history.jsonl"
    result = train.fit(state, {"image": x}, loss_fn, batch_size=min(batch, n),
                       epochs=config.pretrain_epochs, key=fit_key, checkpointer=ckpt,
                       resume=ckpt is not None and ckpt.latest_epoch() is not None,
                       history_path=history, progress=progress, desc="pretrain AE",
                       log_every=max(1, config.pretrain_epochs))
    seconds = float(sum(r.get("seconds", 0.0) for r in result.history))
    return jax.device_get(result.state.params), seconds


@functools.lru_cache(maxsize=16)
def _jitted_init(model: DSCNet):
    """``jax.jit(model.init)``, one per model, so repeated runs do not compile it again."""
    return jax.jit(model.init)


def init_finetune_params(x: np.ndarray, ae_params: dict, config: DSCConfig, key: jax.Array):
    """DSC params (encoder/decoder from ``ae_params``, fresh attention, C = c_init) for x (N, ...)."""
    model = build_model(config, x.shape[-1], len(x))
    params = dict(_jitted_init(model)(key, jnp.asarray(x))["params"])
    missing = sorted(set(params) - {"C", "attn"} - set(ae_params))
    if missing:
        raise ValueError(f"pretrained AE params lack {missing} (was it built with this config?)")
    params.update({k: ae_params[k] for k in params if k in ae_params})
    return model, params


@functools.lru_cache(maxsize=64)   # one loss_fn per (model, lambdas): train.fit reuses its jitted step
def make_finetune_loss(model: DSCNet, lambda1: float, lambda2: float):
    """``train.fit`` loss ``(params, batch, rng) -> (loss, terms)`` of ``dsc_loss``.

    ``batch["image"]`` must be the whole set (N, H, W, C) in its stored order (C is indexed by
    row): ``fit`` with ``batch_size = N`` and ``shuffle=False`` (no padded rows, rng unused).
    """
    def loss_fn(params, batch, rng):
        x = batch["image"]
        x_hat, z, z_c = model.apply({"params": params}, x)
        return dsc_loss(x, x_hat, z, z_c, params["C"], lambda1, lambda2)

    return loss_fn


@functools.lru_cache(maxsize=None)
def finetune_optimizer(lr: float):
    """Adam(lr, eps 1e-8) as TF/PyTorch default it; cached: the train state carries it as a static
    field, so a new object per run would recompile the step."""
    from aeclust_jax import train

    return train.make_optimizer("adam", lr, adam_eps=1e-8)


def finetune(x: np.ndarray, ae_params: dict, config: DSCConfig, key: jax.Array, *,
             progress: bool = False) -> tuple[dict, list[dict]]:
    """Full-batch DSC fine-tune on x (N, H, W, C) float from pretrained ``ae_params``.

    Runs through ``train.fit`` (one epoch = one full-batch Adam iteration, rows in stored order,
    one device): a non-finite loss raises ``train.TrainingDivergedError`` naming the iteration
    (its ``epoch``) where it first appeared, and the iterations after it are not run.
    Returns (params with "C" (N, N), history: one dict {iter, loss, recon, reg, self_expr} per
    iteration).
    """
    from aeclust_jax import train

    model, params = init_finetune_params(x, ae_params, config, key)
    state = train.create_train_state(model, None, None, finetune_optimizer(config.finetune_lr),
                                     params=params)
    loss_fn = make_finetune_loss(model, config.lambda1, config.lambda2)
    result = train.fit(state, {"image": x}, loss_fn, batch_size=len(x),
                       epochs=config.finetune_iters, key=key, shuffle=False,
                       mesh=train.make_mesh(jax.devices()[:1]), progress=progress,
                       desc="fine-tune DSC", log_every=1)
    history = [{"iter": r["epoch"], "loss": r["loss"],
                **{k: r[k] for k in ("recon", "reg", "self_expr")}} for r in result.history]
    return result.state.params, history


def cluster_coefficients(c, n_clusters: int, config: DSCConfig, key: jax.Array):
    """C (N, N) -> (labels (N,) int32, affinity (N, N)) by dsc_affinity + spectral clustering."""
    from aeclust_jax.cluster import dsc_affinity, spectral

    affinity = dsc_affinity(jnp.asarray(c), n_clusters, d=config.d, alpha=config.alpha,
                            ro=config.ro)
    labels = spectral(affinity, n_clusters, key=key)
    return np.asarray(labels, np.int32), affinity


@dataclasses.dataclass
class DSCResult:
    """Everything one DSC run produces. labels (N,), coefficients C (N, N), params, timings."""
    labels: np.ndarray
    coefficients: np.ndarray
    affinity: np.ndarray
    params: dict
    ae_params: dict
    pretrain_seconds: float
    finetune_seconds: float
    cluster_seconds: float
    history: list[dict]


def run_keys(seed: int) -> tuple[jax.Array, jax.Array, jax.Array]:
    """(pretrain, fine-tune, cluster) keys of ``run`` with this seed."""
    return tuple(jax.random.split(jax.random.key(seed), 3))


def run(images, n_clusters: int, config: DSCConfig | None = None, *, seed: int = 0,
        ae_params: dict | None = None, pretrain_dir=None, progress: bool = False,
        **overrides: Any) -> DSCResult:
    """Pretrain (or take ``ae_params``) -> fine-tune -> cluster, on images (N, H, W, C).

    ``config=None``: ``auto_config(images.shape[1:], N, n_clusters, **overrides)``; with a
    config, ``overrides`` (DSCConfig fields) replace its fields.
    """
    x = as_float_images(images)
    n = len(x)
    if not 2 <= n_clusters <= n:
        raise ValueError(f"n_clusters must be in [2, {n}] for {n} images, got {n_clusters}")
    if n > MAX_SAMPLES:
        raise ValueError(f"{n} images: the self-expressive C is N x N; use at most {MAX_SAMPLES}")
    if config is None:
        config = auto_config(x.shape[1:], n, n_clusters, **overrides)
    elif overrides:
        config = dataclasses.replace(config, **overrides)
    if config.d * n_clusters + 1 >= n:
        raise ValueError(f"d * n_clusters + 1 = {config.d * n_clusters + 1} must be below the "
                         f"{n} images (lower config.d)")
    k_pre, k_fine, k_cluster = run_keys(seed)
    pre_s = 0.0
    if ae_params is None:
        ae_params, pre_s = pretrain(x, config, k_pre, checkpoint_dir=pretrain_dir,
                                    progress=progress)
    t0 = time.perf_counter()
    params, history = finetune(x, ae_params, config, k_fine, progress=progress)
    c = jax.block_until_ready(params["C"])
    t1 = time.perf_counter()
    labels, affinity = cluster_coefficients(c, n_clusters, config, k_cluster)
    affinity = np.asarray(affinity)
    t2 = time.perf_counter()
    return DSCResult(labels, np.asarray(c), affinity, params, ae_params, pre_s, t1 - t0, t2 - t1,
                     history)


def fit_predict(images, n_clusters: int, config: DSCConfig | None = None, *, seed: int = 0,
                **overrides: Any) -> np.ndarray:
    """Cluster labels (N,) int32 of images (N, H, W, C) (uint8, or float in [0, 1]) by DSC.

    ``config=None`` (default): the network and hyperparameters come from ``auto_config`` (the
    image shape, N and n_clusters), with ``overrides`` (DSCConfig fields, e.g.
    ``pretrain_epochs=20``) applied; an explicit ``config`` (e.g. ``preset("coil20")``) is used
    as given, ``overrides`` replacing its fields.
    """
    return run(images, n_clusters, config, seed=seed, progress=False, **overrides).labels


# ----------------------------------------------------------------------------- one run (CLI)

def select_subset(images: np.ndarray, labels: np.ndarray, classes: int | None,
                  per_class: int | None) -> tuple[np.ndarray, np.ndarray]:
    """The first ``classes`` classes, ``per_class`` evenly spaced images of each (order kept)."""
    keep = np.ones(len(labels), bool)
    if classes is not None:
        present = np.unique(labels)
        if not 2 <= classes <= len(present):
            raise UsageError(f"--classes must be in [2, {len(present)}], got {classes}")
        keep &= np.isin(labels, present[:classes])
    if per_class is not None:
        if per_class < 2:
            raise UsageError(f"--per-class must be >= 2, got {per_class}")
        chosen = np.zeros(len(labels), bool)
        for k in np.unique(labels[keep]):
            idx = np.flatnonzero(keep & (labels == k))
            chosen[idx[np.linspace(0, len(idx) - 1, min(per_class, len(idx))).astype(int)]] = True
        keep &= chosen
    return images[keep], labels[keep]


def check_inputs(images: np.ndarray, n_clusters: int, config: DSCConfig) -> None:
    """Raises ConfigError when ``run`` would refuse these images (N, H, W, C) for this config:
    the CLIs call it before creating a run folder (``run`` checks the same)."""
    n = len(images)
    if not 2 <= n_clusters <= n:
        raise ConfigError(f"{n_clusters} clusters for {n} images: need 2 <= clusters <= images")
    if n > MAX_SAMPLES:
        raise ConfigError(f"{n} images: the self-expressive C is N x N; use at most {MAX_SAMPLES} "
                          "(--classes / --per-class)")
    if config.d * n_clusters + 1 >= n:
        raise ConfigError(f"d * clusters + 1 = {config.d * n_clusters + 1} must be below the {n} "
                          "images (lower --d)")


def plot_affinity(affinity: np.ndarray, labels: np.ndarray, path, *, title: str | None = None):
    """Heat map of the affinity (N, N) with rows/columns sorted by the true labels (N,)."""
    from aeclust_jax import viz

    order = np.argsort(labels, kind="stable")
    a = np.asarray(affinity)[np.ix_(order, order)]
    fig, ax = viz.figure(figsize=(5, 5))
    ax.imshow(a, cmap="viridis", vmax=np.quantile(a, 0.995) or None, interpolation="nearest")
    ax.set_xticks([]), ax.set_yticks([])
    ax.set_title(title or "affinity, sorted by label", fontsize=9)
    return viz.save(fig, path)


def evaluate(labels_true: np.ndarray, labels_pred: np.ndarray) -> dict[str, float]:
    """ACC (Hungarian), NMI and ARI of a clustering."""
    from aeclust_jax.metrics import acc, ari, nmi

    return {"acc": float(acc(labels_true, labels_pred)), "nmi": float(nmi(labels_true, labels_pred)),
            "ari": float(ari(labels_true, labels_pred))}


def train_and_evaluate(images: np.ndarray, labels: np.ndarray, config: DSCConfig, out, *,
                       seed: int = 0, pretrain_dir=None, extra: dict | None = None,
                       progress: bool = False, figures: bool = True) -> dict:
    """One DSC run on (images, labels) into the prepared folder ``out``; returns its metrics.

    Writes config.yaml, history.jsonl, labels.npy, figures (affinity.png, reconstructions.png)
    and, last, metrics.json (acc, nmi, ari on the 0-1 scale, pretrain/finetune/cluster seconds,
    ...). ``progress``: bars for the training phases and one line per evaluation stage.
    """
    out = pathlib.Path(out)
    n_clusters = len(np.unique(labels))
    runs.write_config(out / "config.yaml", {"seed": seed, **(extra or {}), **to_dict(config)})
    t0 = time.perf_counter()
    res = run(images, n_clusters, config, seed=seed, pretrain_dir=pretrain_dir, progress=progress)
    wall = time.perf_counter() - t0
    stage = Stages(progress)
    if progress:
        print(f"eval: cluster C (affinity + spectral, k={n_clusters}) ... {res.cluster_seconds:.1f} s")
    with stage("metrics", "ACC / NMI / ARI"):
        scores = evaluate(labels, res.labels)
    runs.atomic_write_text(out / "history.jsonl",
                           "".join(json.dumps(h) + "\n" for h in res.history))
    np.save(out / "labels.npy", res.labels)
    if figures:
        from aeclust_jax import viz

        name = f"c={config.channels[-1]}{' + attention' if config.attention else ''}"
        plot_affinity(res.affinity, labels, out / "affinity.png",
                      title=f"DSC affinity ({name}), ACC {scores['acc']:.3f}")
        x = as_float_images(images)
        model = build_model(config, x.shape[-1], len(x))
        x_hat = np.asarray(jax.jit(model.apply)({"params": res.params}, jnp.asarray(x))[0])
        ae = build_model(config, x.shape[-1])
        x_ae = np.asarray(jax.jit(lambda p, v: ae.apply({"params": p}, v,
                                                        method=DSCNet.reconstruct))(res.ae_params, x))
        pick = np.linspace(0, len(x) - 1, 10).astype(int)
        viz.reconstruction_grid([x[pick], x_ae[pick], x_hat[pick]], out / "reconstructions.png",
                                row_names=["input", "pretrained AE", "DSC (C Z)"],
                                title=f"reconstructions ({name})")
    metrics = {**scores, "pretrain_seconds": res.pretrain_seconds,
               "finetune_seconds": res.finetune_seconds, "cluster_seconds": res.cluster_seconds,
               "wall_seconds": wall, "n_images": len(labels), "n_clusters": n_clusters,
               "seed": seed, "final_loss": res.history[-1], **(extra or {}), "scale": runs.SCALE}
    runs.write_json(out / "metrics.json", metrics)
    return metrics


def train_parser() -> argparse.ArgumentParser:
    """The options of ``train.py --model dsc``."""
    p = make_parser(
        prog=prog_name("train.py") + " --model dsc",
        description="S4: DSC-Net (+ channel attention) on an image set: pretrain the AE, fine-tune "
                    "with the self-expressive\nlayer, spectral clustering; writes metrics.json.\n\n"
                    "Hyperparameters: --preset, then --config, then the options below (defaults: "
                    "the coil20 preset's).")
    p.add_argument("--model", default="dsc", choices=["dsc"])
    p.add_argument("--dataset", help="a dataset of aeclust_jax.data (default coil20)")
    p.add_argument("--preset", default="coil20", choices=sorted(PRESETS) + ["auto"],
                   help="named hyperparameters (coil20: DSC-Net, latent 16x16x15); auto: "
                        "auto_config from the images' shape, their number and the classes")
    p.add_argument("--config", help="YAML file of DSCConfig fields, applied over the preset")
    add_config_options(p, DSCConfig)
    p.add_argument("--latent-channels", type=int, help="c of the 16x16xc latent (replaces the last of "
                                                       "--channels)")
    p.add_argument("--classes", type=int, help="use only the first K classes (default: all)")
    p.add_argument("--per-class", type=int, help="use only M evenly spaced images per class (default: all)")
    p.add_argument("--seed", type=int, help="default 0")
    p.add_argument("--pretrained", help="folder to keep/reuse the pretrained AE (default: "
                                        "<out>/pretrained); it is tied to the encoder, pretraining "
                                        "options, images and seed that built it (other inputs are "
                                        "refused; attention on/off can share one)")
    p.add_argument("--out", help="run folder (default runs/dsc-<dataset>-c<c>[-att]-<seed>)")
    p.add_argument("--resume", action="store_true",
                   help="finish the run in --out with its config.yaml (pretraining continues from "
                        "its checkpoint); any option that differs from it is refused")
    p.add_argument("--no-progress", action="store_true",
                   help="no progress bars or lines (data preparation, training, evaluation stages)")
    return p


RUN_FIELDS = ("seed", "dataset", "classes", "per_class")   # config.yaml's fields beside DSCConfig's


def config_from_args(args, images: np.ndarray | None = None,
                     labels: np.ndarray | None = None, saved: dict | None = None) -> DSCConfig:
    """Preset (``auto``: ``auto_config`` of the images (N, H, W, C) and their classes) <- YAML
    (--config) <- command-line overrides; with ``saved`` (a resumed run's config.yaml) the saved
    DSCConfig fields replace the preset."""
    overrides = config_overrides(args, DSCConfig)
    if saved is not None:
        fields = {f.name for f in dataclasses.fields(DSCConfig)}
        base = DSCConfig(**{k: v for k, v in saved.items() if k in fields})
    elif args.preset == "auto":
        if images is None or labels is None:
            raise ValueError("--preset auto needs the images and labels")
        base = auto_config(images.shape[1:], len(images), len(np.unique(labels)))
    else:
        base = preset(args.preset)
    cfg = load_config(DSCConfig, args.config, overrides, base=base)
    if args.latent_channels is not None:
        cfg = dataclasses.replace(cfg, channels=cfg.channels[:-1] + (args.latent_channels,))
    return cfg


def train_main(argv: Sequence[str]) -> int:
    from aeclust_jax.data import load

    args = train_parser().parse_args(list(argv))
    saved = None
    if args.resume:                    # the run's own config.yaml fills what the flags leave open
        if not args.out:
            raise UsageError("--resume needs --out, the run folder to finish")
        out = runs.check_run_dir(args.out, resume=True)
        saved = runs.read_config(out / "config.yaml")
        for k in RUN_FIELDS:
            if getattr(args, k) is None:
                setattr(args, k, saved.get(k))
    args.dataset = args.dataset or "coil20"
    args.seed = 0 if args.seed is None else args.seed
    if args.preset != "auto" or saved is not None:
        config_from_args(args, saved=saved)   # a bad config fails before the data are loaded
    if args.out and not args.resume:
        runs.check_run_dir(args.out, resumable=True)   # and so does an occupied --out
    ds = load(args.dataset, progress=not args.no_progress)
    images, labels = select_subset(ds.images, ds.labels, args.classes, args.per_class)
    cfg = config_from_args(args, images, labels, saved=saved)
    name = f"dsc-{args.dataset}-c{cfg.channels[-1]}{'-att' if cfg.attention else ''}-{args.seed}"
    out = runs.check_run_dir(args.out or f"runs/{name}", resume=args.resume)
    run_fields = {k: getattr(args, k) for k in RUN_FIELDS}
    if saved is not None:
        runs.check_resume_config(saved, {**run_fields, **to_dict(cfg)}, out / "config.yaml",
                                 may_differ=())
        if runs.is_complete(out):
            print(f"{out} is already complete (metrics.json exists); nothing to do")
            return 0
    check_inputs(images, len(np.unique(labels)), cfg)
    pretrained = args.pretrained or out / "pretrained"
    runs.claim_artifact_dir(pretrained, pretrain_fields(as_float_images(images), cfg,
                                                        run_keys(args.seed)[0]),
                            "a pretrained DSC autoencoder", create=False)
    out = runs.prepare_run_dir(out, resume=args.resume)
    if args.resume:
        print(f"resuming {out}: the pretrained AE continues from its checkpoint in {pretrained}")
    m = train_and_evaluate(images, labels, cfg, out, seed=args.seed, pretrain_dir=pretrained,
                           extra={k: v for k, v in run_fields.items() if k != "seed"},
                           progress=not args.no_progress)
    print(" ".join(f"{k}={m[k]:.4g}" for k in ("acc", "nmi", "ari", "pretrain_seconds",
                                                "finetune_seconds", "cluster_seconds")))
    print(f"wrote {out}")
    return 0


# ----------------------------------------------------------------------------- reproduce s4

@dataclasses.dataclass(frozen=True)
class Row:
    """One row of the seed's Table 2: latent 16x16x``channels``, attention on/off, paper's ACC."""
    name: str
    label: str
    channels: int
    attention: bool
    paper_acc: float


ROWS = (
    Row("dsc_c15", "DSC, 16x16x15 (no compression)", 15, False, 0.9368),
    Row("noatt_c1", "no attention, 16x16x1 (25%)", 1, False, 0.8944),
    Row("att_c1", "channel attention, 16x16x1 (25%)", 1, True, 0.9146),
    Row("noatt_c2", "no attention, 16x16x2 (50%)", 2, False, 0.8722),
    Row("att_c2", "channel attention, 16x16x2 (50%)", 2, True, 0.9410),
    Row("noatt_c3", "no attention, 16x16x3 (75%)", 3, False, 0.9201),
    Row("att_c3", "channel attention, 16x16x3 (75%)", 3, True, 0.9239),
)
ROW_BY_NAME = {r.name: r for r in ROWS}


def reproduce_parser() -> argparse.ArgumentParser:
    """The options of ``reproduce.py s4``."""
    p = make_parser(prog=prog_name("reproduce.py") + " s4",
                    description="S4 Table 2 on COIL-20: DSC (c=15) and no-attention / "
                                "attention at c = 1, 2, 3, mean +- std over seeds.")
    p.add_argument("--seeds", type=int, default=5, help="number of seeds (0..N-1)")
    p.add_argument("--rows", nargs="+", default=[r.name for r in ROWS], choices=list(ROW_BY_NAME),
                   help="rows of Table 2 to run")
    p.add_argument("--config", help="YAML of DSCConfig fields applied to every row")
    p.add_argument("--pretrain-epochs", type=int,
                   help=f"override DSCConfig.pretrain_epochs (default: {PRESETS['coil20'].pretrain_epochs})")
    p.add_argument("--finetune-iters", type=int,
                   help=f"override DSCConfig.finetune_iters (default: {PRESETS['coil20'].finetune_iters})")
    p.add_argument("--classes", type=int, help="first K classes only (quick checks; default: all)")
    p.add_argument("--per-class", type=int, help="M images per class only (quick checks; default: all)")
    p.add_argument("--runs", default="runs/s4", help="folder of the individual runs")
    p.add_argument("--out", default="results/s4", help="folder of the table and figures")
    p.add_argument("--no-progress", action="store_true", help="no progress bars or lines")
    return p


def summarize(rows: Sequence[Row], per_run: dict[str, list[dict]]) -> list[dict]:
    """One object per row: ACC/NMI/ARI mean +- std over its seeds and mean seconds per stage."""
    table = []
    for r in rows:
        ms = per_run.get(r.name, [])
        if not ms:
            continue
        rec = {"row": r.name, "scale": runs.SCALE, "label": r.label, "latent": f"16x16x{r.channels}",
               "attention": r.attention, "paper_acc": r.paper_acc,
               "seeds": [m["seed"] for m in ms]}
        for k in ("acc", "nmi", "ari"):
            rec[k] = runs.mean_std([m[k] for m in ms])
            rec[f"{k}_per_seed"] = [m[k] for m in ms]
        for k in ("pretrain_seconds", "finetune_seconds", "cluster_seconds"):
            rec[k] = float(np.mean([m[k] for m in ms]))
        table.append(rec)
    return table


def markdown_table(table: Sequence[dict]) -> str:
    lines = ["| row | latent | attention | ACC (0-1, mean ± std) | NMI (0-1, mean ± std) | ARI (0-1) "
             "| paper ACC (0-1) | seeds | pretrain s | fine-tune s | cluster s |",
             "|---|---|---|---|---|---|---|---|---|---|---|"]
    for t in table:
        lines.append(
            f"| {t['label']} | {t['latent']} | {'yes' if t['attention'] else 'no'} "
            f"| {t['acc']['mean']:.4f} ± {t['acc']['std']:.4f} "
            f"| {t['nmi']['mean']:.4f} ± {t['nmi']['std']:.4f} | {t['ari']['mean']:.4f} "
            f"| {t['paper_acc']:.4f} | {len(t['seeds'])} | {t['pretrain_seconds']:.0f} "
            f"| {t['finetune_seconds']:.0f} | {t['cluster_seconds']:.1f} |")
    return "\n".join(lines) + "\n"


def _write_results(out: pathlib.Path, table: list[dict], settings: dict) -> None:
    from aeclust_jax import viz

    runs.write_json(out / "results.json", table)
    runs.atomic_write_text(out / "results.md", "# S4 Table 2 on COIL-20 (this reproduction)\n\n"
                           + markdown_table(table) + "\nSettings: " + json.dumps(settings) + "\n")
    bars: dict[str, dict[str, tuple[float, float]]] = {}
    for t in table:
        group = t["latent"]
        series = "DSC" if t["row"].startswith("dsc") else (
            "attention" if t["attention"] else "no attention")
        bars.setdefault(group, {})[series] = (t["acc"]["mean"], t["acc"]["std"])
    viz.grouped_bars(bars, out / "acc.png", ylabel="ACC (0-1)",
                     title="S4 on COIL-20: ACC by latent width and attention")


def reproduce_main(argv: Sequence[str]) -> int:
    from aeclust_jax.data import load

    a = reproduce_parser().parse_args(list(argv))
    if a.seeds < 1:
        raise UsageError(f"--seeds must be >= 1, got {a.seeds}")
    rows = [ROW_BY_NAME[n] for n in dict.fromkeys(a.rows)]
    base = load_config(DSCConfig, a.config, {"pretrain_epochs": a.pretrain_epochs,
                                             "finetune_iters": a.finetune_iters},
                       base=preset("coil20"))
    ds = load("coil20", progress=not a.no_progress)
    images, labels = select_subset(ds.images, ds.labels, a.classes, a.per_class)
    for r in rows:                  # every row fits the data before anything is written
        check_inputs(images, len(np.unique(labels)),
                     dataclasses.replace(base, channels=base.channels[:-1] + (r.channels,)))
    out, work = pathlib.Path(a.out), pathlib.Path(a.runs)
    runs.make_dir(out)
    settings = {"seeds": a.seeds, "n_images": len(labels), **to_dict(base)}
    settings.pop("channels"), settings.pop("attention")
    per_run: dict[str, list[dict]] = {}
    for seed in range(a.seeds):            # seed-major: partial results cover every row
        for r in rows:
            cfg = dataclasses.replace(base, channels=base.channels[:-1] + (r.channels,),
                                      attention=r.attention)
            run_dir = work / r.name / f"seed{seed}"
            if runs.is_complete(run_dir):
                m = runs.read_json(run_dir / "metrics.json")
                if m.get("n_images") != len(labels) or m.get("config") != to_dict(cfg):
                    raise runs.RunExistsError(f"{run_dir} holds a run with other settings; "
                                              f"choose another --runs folder")
            else:
                if run_dir.exists():   # an interrupted run: start it again from scratch
                    import shutil
                    shutil.rmtree(run_dir)
                print(f"[s4] {r.name} seed {seed}", flush=True)
                m = train_and_evaluate(
                    images, labels, cfg, runs.prepare_run_dir(run_dir), seed=seed,
                    pretrain_dir=work / "pretrained" / f"c{r.channels}-e{cfg.pretrain_epochs}-seed{seed}",
                    extra={"row": r.name, "config": to_dict(cfg)},
                    progress=not a.no_progress, figures=(seed == 0))
                print(f"[s4] {r.name} seed {seed}: acc={m['acc']:.4f} nmi={m['nmi']:.4f}", flush=True)
            per_run.setdefault(r.name, []).append(m)
        _write_results(out, summarize(rows, per_run), settings)
    print(markdown_table(summarize(rows, per_run)))
    print(f"wrote {out}")
    return 0
