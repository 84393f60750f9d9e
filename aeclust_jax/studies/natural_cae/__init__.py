"""S2: naive convolutional autoencoders vs supervised features on natural images (Lee & Cho 2022).

    python scripts/train.py --model cae_v1 --dataset image_folder --path cifar10-jpeg.zip \\
        --unlabeled-limit 10000 --epochs 3 --out runs/s2-cae_v1
    python scripts/reproduce.py s2 --path cifar10-jpeg.zip --seeds 2       # Table 1, claims

One run = one feature extractor (one row of the seed's Table 1) and one seed:

* ``cae_v1 | cae_v2 | cae_v3 | unet`` (models/cae.py): trained with MSE on the unlabeled images
  (``train.fit``, Adam); the reconstruction of test images (figures/reconstructions.png, the
  seed's Fig. 1) and the test MSE / PSNR; feature = the model's 128-d ``encode``.
* ``resnet18 | resnet34 | resnet50``: supervised with cross-entropy on ``train_per_class``
  labeled images per class (S2: 500 = 5k labels), the recipe of studies/supervised/ (its
  ``SupervisedConfig`` carries the hyper-parameters), with a 128-d Dense embedding before the
  classifier; from torchvision weights when ``pretrained_dir`` holds ``<model>*.pth``, else from
  scratch. Feature = the embedding. With ``supervised_dataset`` the ResNet trains on that other
  dataset instead (the seed's Table 2: CIFAR-10 -> STL-10), its features of our images taken at
  the size it was trained at.
* ``efficientnet_lite0``: ImageNet weights shipped offline, not trained here (the pretrained,
  cross-domain row): pooled 1280-d features at ``effnet_size`` px reduced to 128-d by a PCA
  fitted on the labeled train features.

Evaluation (``evaluate_features``, the seed's protocol): K-means (k = 10) on the test features ->
pairwise F, BCubed F, NMI; KNN (k = 5): the labeled train features vote for each test image ->
accuracy; t-SNE of the test features (figures/tsne.png, the seed's appendix Fig. 2/3).
The run folder is the project's contract (config.yaml, history.jsonl, checkpoints/, figures/,
metrics.json last).

The package: ``config`` (the config dataclass), ``recipe`` (one run and its command line),
``report`` (the reproduction: tables, claims, figures). Everything is importable from here.
"""

from aeclust_jax.studies.natural_cae.config import *  # noqa: F401,F403
from aeclust_jax.studies.natural_cae.recipe import *  # noqa: F401,F403
from aeclust_jax.studies.natural_cae.report import *  # noqa: F401,F403
