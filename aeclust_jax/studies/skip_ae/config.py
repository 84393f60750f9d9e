"""S1's config: ``S1Config`` (every choice of one run, defaults = the authors' MNIST code; each
field's help and choices generate the command line) and its checks against the loaded data.
"""

from __future__ import annotations

import dataclasses

import numpy as np

from aeclust_jax import train
from aeclust_jax.config import ConfigError, config_dir, field

MODELS = ("cae", "cae_skip", "dae", "dae_skip")
DATASETS = ("mnist", "fashion_mnist", "hanja", "hanja_synth")
LATENT_SKIP_MODES = ("random", "trained")
UPSAMPLE_METHODS = ("subpixel", "repeat", "broadcast", "resize")
TSNE_BACKENDS = ("auto", "opentsne", "tsnecuda", "jax")
CONFIG_DIR = config_dir()


@dataclasses.dataclass(frozen=True)
class S1Config:
    """One S1 run. Defaults are the authors' MNIST code; configs/s1_<dataset>.yaml override them."""
    model: str = field("dae_skip", "autoencoder", choices=MODELS)
    dataset: str = field("mnist", "dataset (28x28: mnist, fashion_mnist; 100x100: hanja, "
                                  "hanja_synth)", choices=DATASETS)
    epochs: int = field(25, "training epochs")
    batch_size: int = field(32, "global batch size (a multiple of the devices)")
    optimizer: str = field("adadelta", "optimizer (adadelta: Keras 2020 defaults)",
                           choices=train.OPTIMIZERS)
    lr: float | None = field(None, "learning rate (None: the optimizer's own; adadelta 1.0)")
    noise_std: float = field(0.5, "dae*: input noise std (x + std * N(0, 1), clipped to [0, 1])")
    noisy_target: bool = field(False, "dae*: the target is the noisy input (the authors' code), "
                                      "not the clean image")
    latent_skip: str = field("random", "latent+skip feature: random (fixed seeded projections, "
                                       "faithful) or trained (auxiliary loss)",
                             choices=LATENT_SKIP_MODES)
    aux_weight: float = field(1.0, "latent_skip=trained: weight of the auxiliary loss")
    seed: int = field(0, "seed of the init, the noise, the shuffling and the evaluation")
    last_batch: str = field("pad", "pad (Keras: every row once, the last batch masked) or drop",
                            choices=("pad", "drop"))
    upsample: str = field("subpixel", "decoder upsampling: subpixel (up x2 + conv as one conv, "
                                      "exact), repeat, broadcast or resize",
                          choices=UPSAMPLE_METHODS)
    train_limit: int = field(0, "the first N training images (0: all)")
    test_limit: int = field(0, "PSNR on the first N test images (0: all)")
    cluster_limit: int = field(3000, "the first N test images for t-SNE / K-means (0: all)")
    kmeans_n_init: int = field(10, "K-means restarts")
    tsne_backend: str = field("auto", "t-SNE backend", choices=TSNE_BACKENDS)
    tsne_iter: int = field(750, "t-SNE iterations after the 250 of early exaggeration "
                                "(scikit-learn's 1000 in all)")
    eval_every: int = field(0, "PSNR + NMI into history.jsonl every N epochs (0: off; Fig. 4)")
    eval_batch_size: int = field(1000, "batch size of evaluation")
    checkpoint_every: int = field(5, "checkpoint every N epochs")
    keep_checkpoints: int = field(3, "checkpoints kept")
    dataset_options: dict = field(dict, "options of the dataset builder, e.g. train_per_class=100")
    progress: bool = field(False, "progress bars and stage lines (off in library calls)",
                           cli_default=True)
    scan_epoch: bool = field(False, "each epoch as one lax.scan (same numbers; much faster on a GPU)")

    def validate(self) -> "S1Config":
        for name, value, choices in (("model", self.model, MODELS), ("dataset", self.dataset, DATASETS),
                                     ("optimizer", self.optimizer, train.OPTIMIZERS),
                                     ("latent_skip", self.latent_skip, LATENT_SKIP_MODES),
                                     ("last_batch", self.last_batch, ("pad", "drop")),
                                     ("upsample", self.upsample, UPSAMPLE_METHODS),
                                     ("tsne_backend", self.tsne_backend, TSNE_BACKENDS)):
            if value not in choices:
                raise ConfigError(f"unknown {name} {value!r}; choices: {', '.join(choices)}")
        for name in ("epochs", "batch_size", "kmeans_n_init", "eval_batch_size",
                     "checkpoint_every", "keep_checkpoints", "tsne_iter"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("train_limit", "test_limit", "cluster_limit", "eval_every"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0 (0: off), got {getattr(self, name)}")
        if self.noise_std < 0:
            raise ConfigError(f"noise_std must be >= 0, got {self.noise_std}")
        if self.lr is not None and self.lr <= 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        return self

    def check_data(self, train_images: np.ndarray, test, *, devices: int = 1) -> None:
        """Raises ConfigError when this config cannot run on the loaded data: the image size
        (28x28 or 100x100), the batch size (a multiple of ``devices``; with last_batch=drop at
        most the training rows), the clustered test images (more than t-SNE's perplexity 30 and
        at least one per class) and the t-SNE backend (installed here)."""
        from aeclust_jax.cluster import tsne_backends
        from aeclust_jax.models.skip_ae import family_of

        try:
            family_of(tuple(train_images.shape[1:]))
        except ValueError as e:
            raise ConfigError(f"dataset {self.dataset}: {e}") from None
        if self.batch_size % devices:
            raise ConfigError(f"batch_size {self.batch_size} must be a multiple of the {devices} devices")
        if self.last_batch == "drop" and self.batch_size > len(train_images):
            raise ConfigError(f"batch_size {self.batch_size} exceeds the {len(train_images)} training "
                              "images with last_batch=drop")
        n_test = min(len(test.images), self.test_limit or len(test.images))
        n = min(self.cluster_limit or n_test, n_test)
        if n <= 30 or n < test.num_classes:
            raise ConfigError(f"{n} test images to cluster (cluster_limit {self.cluster_limit}, test images "
                              f"{n_test}): t-SNE (perplexity 30) and K-means (k = {test.num_classes}) "
                              f"need more than {max(30, test.num_classes - 1)}")
        if self.tsne_backend != "auto" and self.tsne_backend not in tsne_backends():
            raise ConfigError(f"tsne_backend {self.tsne_backend!r} is not available here; "
                              f"available: {', '.join(tsne_backends())}, auto")


