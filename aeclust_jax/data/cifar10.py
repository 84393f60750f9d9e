"""CIFAR-10 from the canonical ``cifar-10-python.tar.gz``: ``train`` (50000), ``test`` (10000).

The archive holds ``cifar-10-batches-py/data_batch_{1..5}`` and ``test_batch``: pickled dicts
with ``data`` uint8 (N, 3072) (rows: 1024 red, 1024 green, 1024 blue, each row-major 32x32)
and ``labels`` (N,) in 0..9.
"""

from __future__ import annotations

import pathlib
import pickle
import tarfile
import zlib
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from aeclust_jax.data._base import DatasetError, ImageBuilder, RawFile

ARCHIVE = RawFile("cifar-10-python.tar.gz", "https://www.cs.toronto.edu/~kriz/cifar-10-python.tar.gz",
                  md5="c58f30108f718f92721af3b95e74349a")
SPLIT_MEMBERS = {"train": [f"data_batch_{i}" for i in range(1, 6)], "test": ["test_batch"]}


def read_cifar_batches(path: pathlib.Path, names: list[str]) -> tuple[np.ndarray, np.ndarray]:
    """Batches ``names`` of the archive -> (images uint8 (N, 32, 32, 3), labels int64 (N,))."""
    found: dict[str, dict] = {}
    try:
        with tarfile.open(path, "r:gz") as tar:
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if base in names and member.isfile():
                    found[base] = pickle.load(tar.extractfile(member), encoding="bytes")
    except (tarfile.TarError, EOFError, OSError, zlib.error, pickle.UnpicklingError) as e:
        raise DatasetError(f"{path}: not a readable CIFAR-10 tar.gz ({type(e).__name__}: {e}); "
                           "it is truncated or corrupt, replace it") from e
    missing = [n for n in names if n not in found]
    if missing:
        raise DatasetError(f"{path}: missing batch file(s) {', '.join(missing)} "
                           "(expected under cifar-10-batches-py/)")
    images, labels = [], []
    for n in names:
        batch = found[n]
        data = np.asarray(batch.get(b"data"), dtype=np.uint8)
        lab = np.asarray(batch.get(b"labels"), dtype=np.int64)
        if data.ndim != 2 or data.shape[1] != 3072 or len(data) != len(lab):
            raise DatasetError(f"{path}:{n}: expected data (N, 3072) and N labels, got "
                               f"{data.shape} and {lab.shape}")
        if lab.size and (lab.min() < 0 or lab.max() > 9):
            raise DatasetError(f"{path}:{n}: labels outside 0..9")
        images.append(data.reshape(-1, 3, 32, 32).transpose(0, 2, 3, 1))
        labels.append(lab)
    return np.concatenate(images), np.concatenate(labels)


class Cifar10(ImageBuilder, skip_registration=True):
    """CIFAR-10, 32x32x3, 10 classes."""

    name = "cifar10"
    VERSION = tfds.core.Version("1.0.0")
    DESCRIPTION = "CIFAR-10 (Krizhevsky 2009): 32x32 color images, 10 classes."
    HOMEPAGE = "https://www.cs.toronto.edu/~kriz/cifar.html"
    CLASS_NAMES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse",
                   "ship", "truck")
    IMAGE_SHAPE = (32, 32, 3)
    RAW_FILES = (ARCHIVE,)

    def _generate_examples(self, split: str, files) -> Iterator:
        images, labels = read_cifar_batches(files[ARCHIVE.name], SPLIT_MEMBERS[split])
        for i in range(len(images)):
            yield i, {"image": images[i], "label": labels[i]}
