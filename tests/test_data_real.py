"""Real-data checks on the canonical files in $AECLUST_MANUAL_DIR (CI points it at shared/data)."""

import numpy as np
import pytest

from aeclust_jax.data import load

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]


def test_mnist_real(real_manual_dir, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("real")
    train = load("mnist", "train", data_dir=data_dir, manual_dir=real_manual_dir / "mnist")
    assert train.images.shape == (60000, 28, 28, 1) and train.images.dtype == np.uint8
    assert train.labels.dtype == np.int32
    assert np.bincount(train.labels).tolist() == MNIST_TRAIN_COUNTS
    assert train.labels[:10].tolist() == [5, 0, 4, 1, 9, 2, 1, 3, 1, 4]  # canonical order kept
    assert train.num_classes == 10 and train.class_names[3] == "3"
    test = load("mnist", "test", data_dir=data_dir)  # prepared: no manual dir needed any more
    assert test.images.shape == (10000, 28, 28, 1)
    assert train.images.max() == 255 and train.images.min() == 0


def test_fashion_mnist_real(real_manual_dir, tmp_path_factory):
    data_dir = tmp_path_factory.mktemp("real")
    for split, n in (("train", 60000), ("test", 10000)):
        ds = load("fashion_mnist", split, data_dir=data_dir,
                  manual_dir=real_manual_dir / "fashion_mnist")
        assert ds.images.shape == (n, 28, 28, 1)
        assert np.bincount(ds.labels).tolist() == [n // 10] * 10
    assert ds.class_names[9] == "ankle_boot"
