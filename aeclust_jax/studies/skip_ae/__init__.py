"""S1: skip connections in convolutional autoencoders (Jo et al. 2020), train + evaluate + reproduce.

    python scripts/train.py --model dae_skip --dataset mnist [--epochs 5] [--out runs/x] [--resume]
    python scripts/reproduce.py s1 [--datasets mnist fashion_mnist hanja_synth] [--epochs N] [--seeds 3]

One run: data (uint8, on device) -> fit (MSE, Keras Adadelta by default) -> evaluation (S1
protocol): PSNR of the test reconstructions; the 30-d latent of the first 3000 test images ->
t-SNE 2-D -> K-means (k = classes) -> NMI / ACC / ARI; K-means on the raw latent (``nmi_latent``);
the latent+skip feature through the same t-SNE protocol (``nmi_latent_skip``). The run folder
gets config.yaml, history.jsonl, checkpoints/, metrics.json (written last), figures/ and
``eval.npz`` (embeddings, reconstructions and decoder maps that reproduce's figures use).

The package: ``config`` (the config dataclass), ``recipe`` (one run and its command line),
``report`` (the reproduction: tables, claims, figures). Everything is importable from here.
"""

from aeclust_jax.studies.skip_ae.config import *  # noqa: F401,F403
from aeclust_jax.studies.skip_ae.recipe import *  # noqa: F401,F403
from aeclust_jax.studies.skip_ae.report import *  # noqa: F401,F403
from aeclust_jax.studies.skip_ae.recipe import _tsne  # noqa: F401  (benchmarks)
