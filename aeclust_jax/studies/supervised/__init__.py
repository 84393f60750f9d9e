"""Supervised training of the ImageNet backbones (ResNet, VGG, EfficientNet-Lite0) on any image
dataset: the supervised rows of S2 and the classifier of S5 stand on it.

    python scripts/train.py --model resnet18 --dataset image_folder \\
        --path ../shared/data/cifar10_jpeg/cifar10-jpeg.zip --epochs 5 --out runs/r18-cifar

Writes the run folder every study writes: config.yaml, history.jsonl (loss, train accuracy,
learning rate and test accuracy per epoch), checkpoints/, figures/curves.png, metrics.json
(test accuracy, per-class accuracy, timings) last. ``--resume`` continues an interrupted run
(only ``epochs`` and the options that do not change the numbers may differ).
The command line is generated from ``SupervisedConfig`` (one option per field, its help in the
field's metadata), with ``--config FILE.yaml`` below the options typed.

The package: ``config`` (the config dataclass), ``recipe`` (one run and its command line); no
``report``: it has no reproduction of its own (S2 and S5 report on it). Everything is importable
from here.
"""

from aeclust_jax.studies.supervised.config import *  # noqa: F401,F403
from aeclust_jax.studies.supervised.recipe import *  # noqa: F401,F403
