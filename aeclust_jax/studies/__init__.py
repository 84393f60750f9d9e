"""The studies and the models each one trains: the one registry that ``train.py`` and
``reproduce.py`` dispatch through.

Every study module (``aeclust_jax.studies.<module>``) exposes ``train_parser()`` and
``train_main(argv)`` (one run of one model: the run folder of docs/studies.md); a study with an id
(``s1``...) also exposes ``reproduce_main(argv)`` (its tables and figures over seeds). A new study
adds one ``Study`` to ``STUDIES``.
"""

from __future__ import annotations

import dataclasses
import importlib
from types import ModuleType


@dataclasses.dataclass(frozen=True)
class Study:
    """One study: its module, the ``--model`` names it trains, and its reproduce id (or None)."""
    module: str
    title: str
    models: tuple[str, ...]
    id: str | None = None

    def load(self) -> ModuleType:
        return importlib.import_module(f"{__name__}.{self.module}")


STUDIES: tuple[Study, ...] = (
    Study("skip_ae", "S1, skip connections in conv autoencoders",
          ("cae", "cae_skip", "dae", "dae_skip"), "s1"),
    Study("natural_cae", "S2, naive conv autoencoders vs supervised features on natural images",
          ("cae_v1", "cae_v2", "cae_v3", "unet"), "s2"),
    Study("pretrain", "S3, autoencoder pretraining with few labels", ("mlp", "mlp_ae"), "s3"),
    Study("dsc", "S4, deep subspace clustering", ("dsc",), "s4"),
    Study("feature_compression", "S5, compressing a CNN's feature map with an autoencoder",
          ("feature_ae",), "s5"),
    Study("supervised", "Supervised backbones (S2's supervised rows, S5's classifier)",
          ("resnet18", "resnet34", "resnet50", "vgg16", "vgg16_bn", "efficientnet_lite0")),
)

# model name -> study module; study id -> study module (the tables cli.py dispatches with).
MODEL_STUDY = {m: s.module for s in STUDIES for m in s.models}
STUDY_MODULE = {s.id: s.module for s in STUDIES if s.id}
STUDY_TITLE = {s.module: s.title for s in STUDIES}

__all__ = ["Study", "STUDIES", "MODEL_STUDY", "STUDY_MODULE", "STUDY_TITLE"]
