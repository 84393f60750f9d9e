"""Fashion-MNIST: four IDX ``.gz`` files in MNIST's format; ``train`` (60000), ``test`` (10000)."""

from __future__ import annotations

import tensorflow_datasets as tfds

from aeclust_jax.data.mnist import IdxBuilder, idx_files


class FashionMnist(IdxBuilder, skip_registration=True):
    """Zalando's Fashion-MNIST, 28x28x1, 10 classes."""

    name = "fashion_mnist"
    VERSION = tfds.core.Version("1.0.0")
    DESCRIPTION = "Fashion-MNIST (Xiao et al. 2017), 28x28 gray article images, 10 classes."
    HOMEPAGE = "https://github.com/zalandoresearch/fashion-mnist"
    CLASS_NAMES = ("t-shirt_top", "trouser", "pullover", "dress", "coat", "sandal", "shirt",
                   "sneaker", "bag", "ankle_boot")
    # Canonical bucket (as in tfds); md5 of the uncompressed IDX content.
    RAW_FILES = idx_files("http://fashion-mnist.s3-website.eu-central-1.amazonaws.com/", {
        "train-images-idx3-ubyte.gz": "f4a8712d7a061bf5bd6d2ca38dc4d50a",
        "train-labels-idx1-ubyte.gz": "9018921c3c673c538a1fc5bad174d6f9",
        "t10k-images-idx3-ubyte.gz": "8181f5470baa50b63fa0f6fddb340f0a",
        "t10k-labels-idx1-ubyte.gz": "15d484375f8d13e6eb1aabb0c3f46965",
    })
