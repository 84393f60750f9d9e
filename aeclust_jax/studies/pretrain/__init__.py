"""S3: autoencoder pretraining for classification with 1% of the labels (seed 002, MNIST).

    from aeclust_jax.studies.pretrain import S3Config, run
    result = run(S3Config(model="mlp_ae", labels_fraction=0.01), train_ds, test_ds)
    result.metrics      # {"accuracy", "psnr", "nmi", "ae_mse", ...}

Recipe (the seed's own code, ch. 13 of its book, see docs/s3.md): an MLP autoencoder trained on
all training images without labels (MSE on raw 0..255 pixels), then its encoder + a classifier
head trained on a stratified ``labels_fraction`` of the labels (softmax cross-entropy), the encoder
fine-tuned or frozen. Adam (lr 1e-3, eps 1e-8), batch 10, 10 epochs each, weights N(0, 0.03^2).

CLI: ``scripts/train.py --model mlp_ae|mlp ...`` (``train_main``): one run -> run dir with
``metrics.json``; ``scripts/reproduce.py s3`` (``reproduce_main``): the seed's six experiments and
the labels-fraction sweep, mean +- std over seeds -> ``results/s3/``.

The package: ``config`` (the config dataclass), ``recipe`` (one run and its command line),
``report`` (the reproduction: tables, claims, figures). Everything is importable from here.
"""

from aeclust_jax.studies.pretrain.config import *  # noqa: F401,F403
from aeclust_jax.studies.pretrain.recipe import *  # noqa: F401,F403
from aeclust_jax.studies.pretrain.report import *  # noqa: F401,F403
