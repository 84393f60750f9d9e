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

The package: ``config`` (the config dataclass), ``recipe`` (one run and its command line),
``report`` (the reproduction: tables, claims, figures). Everything is importable from here.
"""

from aeclust_jax.studies.dsc.config import *  # noqa: F401,F403
from aeclust_jax.studies.dsc.recipe import *  # noqa: F401,F403
from aeclust_jax.studies.dsc.report import *  # noqa: F401,F403
