"""S5: compressing a classification CNN's feature map with an autoencoder, and the rate-accuracy
curve the seed did not draw (seed 004, Go, Kwon, Kim).

    python scripts/train.py --model feature_ae --backbone efficientnet_lite0 --weights imagenet \\
        --path ../shared/data/cifar10_jpeg/cifar10-jpeg.zip --image-size 224 --out runs/s5-a
    python scripts/reproduce.py s5 --setting a|b|both|paper [--seeds 3]

The recipe (one run, one seed):
1. the classifier: EfficientNet-Lite0 with its shipped ImageNet weights, frozen, and its own head
   (global average pool + Dense) trained on the cached maps of the training subset; or a VGG16(-BN)
   trained with the supervised study (from scratch, or fine-tuned from a torchvision .pth: the
   seed's setting), whose layers after the cut are the classifier (``VGG(start=layer)``);
2. the feature map at ``layer`` of the training and test subsets, extracted ONCE with
   ``features.extract`` into a cache folder (stored float16: the maps are ReLU outputs of
   moderate range, and float16 halves the cache; every computation upcasts to float32);
3. one ``FeatureAE`` per bottleneck width, trained with ``train.fit`` on the cached training maps
   (backbone frozen; MSE, Adam 1e-4, 10 epochs, batch 4: the seed's);
4. the classifier's accuracy (and per class) on the test maps: raw, and reconstructed from each
   width x code precision; and the baselines at comparable sizes: PCA over channels (k components
   per position, k matched to each width's number of values), plain quantisation of the raw map,
   and average pooling to a smaller grid (the AE's code grid by default) resized back (bilinear).
Every point is (values per image, bits per image, accuracy); the figure is bits (log) vs accuracy.

Run folder: config.yaml, classifier/ (the supervised run, VGG) or history of the head,
history.jsonl (the head's and each AE's epochs), checkpoints/w<width>/, figures/, metrics.json
last. ``--resume`` reuses what is finished (the classifier, AEs with a final checkpoint).

The package: ``config`` (the config dataclass and the settings of the reproduction),
``recipe`` (one run and its command line), ``report`` (the reproduction: tables, claims,
figures). Everything is importable from here.
"""

from aeclust_jax.studies.feature_compression.config import *  # noqa: F401,F403
from aeclust_jax.studies.feature_compression.recipe import *  # noqa: F401,F403
from aeclust_jax.studies.feature_compression.report import *  # noqa: F401,F403
