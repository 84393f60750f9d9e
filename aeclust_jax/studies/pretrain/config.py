"""S3's config: ``S3Config`` (defaults = the seed's code; each field's help and choices generate
the command line) and the seed's experiments as configs (``EXPERIMENTS``, ``VARIANTS``).
"""

from __future__ import annotations

import dataclasses

import numpy as np

from aeclust_jax import train
from aeclust_jax.config import ConfigError, config_dir, field
from aeclust_jax.models.mlp import ACTIVATIONS

MODELS = ("mlp", "mlp_ae")
LABEL_SAMPLING = ("stratified", "random")
DEFAULT_CONFIG = config_dir() / "s3_mnist.yaml"


@dataclasses.dataclass(frozen=True)
class S3Config:
    """Every choice of one S3 run (defaults: the seed's code, experiment 3).

    model: ``mlp`` (classifier only) or ``mlp_ae`` (autoencoder pretraining, then classifier).
    labels_fraction: stratified fraction of the train labels used for supervised training (equal
        count per class; 1.0 = every label). The autoencoder always sees every train image.
    label_sampling: ``stratified`` (equal count per class) or ``random`` (round(fraction * N)
        rows uniformly, as the seed's code took the first 1% of its shuffled split).
    hidden_widths: the classifier's hidden dense layers (the MLP's, and the head on the AE code).
    encoder_widths: the AE encoder's dense layers, the last being the code; the decoder mirrors it.
    freeze_encoder: the encoder's params get no update during supervised training.
    carry_adam_state: supervised training continues the encoder's Adam moments and step count
        from autoencoding (the seed's code keeps them per parameter); False = a fresh Adam.
    pixel_max: pixels enter the networks in [0, pixel_max]; 255 = the seed's raw bytes.
    init_std: dense weights ~ N(0, init_std^2), zero biases; None = Flax's LeCun normal.
    optimizer / lr / adam_eps: the engine's ``make_optimizer``; batch_size, epochs (supervised),
        ae_epochs (pretraining; 0 = a random, untrained encoder).
    train_limit / test_limit: use only the first N train / test images (0: all; quick runs, tests).
    """
    dataset: str = field("mnist", "dataset name (aeclust_jax.data)")
    model: str = field("mlp_ae", "mlp (classifier only) or mlp_ae (autoencoder pretraining, then "
                                 "the classifier)", choices=MODELS)
    labels_fraction: float = field(0.01, "fraction of the train labels used (0 < f <= 1)")
    label_sampling: str = field("stratified", "stratified (equal count per class) or random",
                                choices=LABEL_SAMPLING)
    hidden_widths: tuple[int, ...] = field((10,), "classifier hidden widths (none: a linear head)")
    encoder_widths: tuple[int, ...] = field((10,), "encoder dense widths, the last = the code, "
                                                   "e.g. 64 10")
    activation: str = field("relu", "hidden activation", choices=tuple(ACTIVATIONS))
    code_activation: str = field("relu", "activation of the code", choices=tuple(ACTIVATIONS))
    freeze_encoder: bool = field(False, "keep the pretrained encoder fixed during supervised "
                                        "training (mlp_ae)")
    carry_adam_state: bool = field(True, "supervised training continues the encoder's Adam "
                                         "moments (the seed's code); no: a fresh Adam")
    pixel_max: float = field(255.0, "input scale: 255 (raw bytes, the seed) or 1")
    init_std: float | None = field(0.03, "dense weights ~ N(0, std^2) (None: Flax's LeCun normal)")
    optimizer: str = field("adam", "optimizer", choices=train.OPTIMIZERS)
    lr: float = field(1e-3, "learning rate")
    adam_eps: float = field(1e-8, "Adam's epsilon")
    batch_size: int = field(10, "batch size (autoencoder and supervised)")
    ae_epochs: int = field(10, "autoencoder epochs (0: a random, untrained encoder)")
    epochs: int = field(10, "supervised epochs")
    seed: int = field(0, "seed of the init, the label subset and the shuffling")
    train_limit: int | None = field(0, "the first N training images (0: all; none, as saved by "
                                       "older runs, too)")
    test_limit: int | None = field(0, "the first N test images (0: all; none too)")

    def __post_init__(self):
        for name in ("train_limit", "test_limit"):        # 0 = all, as in every study
            if getattr(self, name) is None:
                object.__setattr__(self, name, 0)
        for name in ("hidden_widths", "encoder_widths"):
            v = getattr(self, name)
            object.__setattr__(self, name, (int(v),) if isinstance(v, (int, np.integer))
                               else tuple(int(a) for a in v))
        checks = {
            "model": self.model in MODELS,
            "optimizer": self.optimizer in train.OPTIMIZERS,
            "activation": self.activation in ACTIVATIONS,
            "code_activation": self.code_activation in ACTIVATIONS,
            "labels_fraction": 0.0 < float(self.labels_fraction) <= 1.0,
            "label_sampling": self.label_sampling in LABEL_SAMPLING,
            "encoder_widths": len(self.encoder_widths) >= 1 and min(self.encoder_widths) >= 1,
            "hidden_widths": all(w >= 1 for w in self.hidden_widths),
            "pixel_max": float(self.pixel_max) > 0,
            "init_std": self.init_std is None or float(self.init_std) > 0,
            "lr": float(self.lr) > 0,
            "batch_size": int(self.batch_size) >= 1,
            "epochs": int(self.epochs) >= 1,
            "ae_epochs": int(self.ae_epochs) >= 0,
            "train_limit": int(self.train_limit) >= 0,
            "test_limit": int(self.test_limit) >= 0,
        }
        bad = [k for k, ok in checks.items() if not ok]
        if bad:
            raise ConfigError(
                f"invalid S3 config value(s) for {bad}: "
                + ", ".join(f"{k}={getattr(self, k)!r}" for k in bad)
                + f" (model in {MODELS}; label_sampling in {LABEL_SAMPLING}; optimizer in {train.OPTIMIZERS};"
                  f" activations in {tuple(ACTIVATIONS)}; 0 < labels_fraction <= 1; widths >= 1; lr, pixel_max,"
                  " init_std > 0; batch_size, epochs >= 1; ae_epochs, train_limit, test_limit >= 0)")


# ----------------------------------------------------------------------------- the seed's experiments

@dataclasses.dataclass(frozen=True)
class Experiment:
    """One row of the seed's table: its number, our name, its words and its test accuracy."""
    number: int
    name: str
    description: str
    seed_accuracy: float
    overrides: dict

    def config(self, base: S3Config) -> S3Config:
        return dataclasses.replace(base, **self.overrides)


EXPERIMENTS: tuple[Experiment, ...] = (
    Experiment(1, "mlp_all", "MLP, hidden width 10, all labels", 0.900,
               dict(model="mlp", labels_fraction=1.0)),
    Experiment(2, "mlp_1p", "same MLP, 1% of the labels", 0.684,
               dict(model="mlp", labels_fraction=0.01)),
    Experiment(3, "ae_finetune", "AE (code 10) pretrained on all images, classifier on 1%", 0.746,
               dict(model="mlp_ae", labels_fraction=0.01, encoder_widths=(10,))),
    Experiment(4, "ae_frozen", "as 3, encoder frozen during supervised training", 0.749,
               dict(model="mlp_ae", labels_fraction=0.01, encoder_widths=(10,), freeze_encoder=True)),
    Experiment(5, "ae_wide", "as 3 with an extra width-64 layer in encoder and decoder", 0.796,
               dict(model="mlp_ae", labels_fraction=0.01, encoder_widths=(64, 10))),
    Experiment(6, "ae_code1", "as 5 with code width 1", 0.187,
               dict(model="mlp_ae", labels_fraction=0.01, encoder_widths=(64, 1))),
)
SWEEP_FRACTIONS: tuple[float, ...] = (0.001, 0.01, 0.1, 1.0)
SWEEP_METHODS: dict[str, dict] = {
    "mlp": dict(model="mlp"),
    "ae_frozen": dict(model="mlp_ae", encoder_widths=(10,), freeze_encoder=True),
    "ae_finetune": dict(model="mlp_ae", encoder_widths=(10,), carry_adam_state=False),
    "ae_finetune_carried": dict(model="mlp_ae", encoder_widths=(10,), carry_adam_state=True),
}
# Beyond the seed: experiments 3 and 5 with a fresh Adam for supervised training (real fine-tuning;
# the seed's code carries the encoder's Adam state over from pretraining, see docs/s3.md).
VARIANTS: tuple[Experiment, ...] = (
    Experiment(3, "ae_finetune_fresh_adam", "as 3, fresh Adam state for supervised training", 0.746,
               dict(model="mlp_ae", labels_fraction=0.01, encoder_widths=(10,), carry_adam_state=False)),
    Experiment(5, "ae_wide_fresh_adam", "as 5, fresh Adam state for supervised training", 0.796,
               dict(model="mlp_ae", labels_fraction=0.01, encoder_widths=(64, 10),
                    carry_adam_state=False)),
)


