"""MNIST: the four canonical IDX ``.gz`` files; splits ``train`` (60000) and ``test`` (10000)."""

from __future__ import annotations

import gzip
import pathlib
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from aeclust_jax.data._base import DatasetError, ImageBuilder, RawFile

_IDX_DTYPES = {0x08: np.uint8}


def read_idx(path: pathlib.Path) -> np.ndarray:
    """Reads a gzipped IDX file (magic 0x0000 08 ndim) into a uint8 array of its stated shape.

    Truncated or corrupt gzip, a wrong magic number or a size that does not match the header
    raise DatasetError naming the file.
    """
    try:
        with gzip.open(path, "rb") as f:
            data = f.read()
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DatasetError(f"{path}: not a readable gzip file ({type(e).__name__}: {e}); "
                           "it is truncated or corrupt, replace it") from e
    if len(data) < 4 or data[0] != 0 or data[1] != 0 or data[2] not in _IDX_DTYPES:
        raise DatasetError(f"{path}: not an IDX file of unsigned bytes (bad magic number)")
    ndim = data[3]
    header = 4 + 4 * ndim
    shape = tuple(int(d) for d in np.frombuffer(data[4:header], dtype=">u4"))
    if len(data) - header != int(np.prod(shape)):
        raise DatasetError(f"{path}: header says shape {shape} ({int(np.prod(shape))} bytes) but "
                           f"{len(data) - header} bytes follow; the file is truncated or corrupt")
    return np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)


def read_idx_split(images_path: pathlib.Path, labels_path: pathlib.Path, num_classes: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Images (N, 28, 28, 1) uint8 and labels (N,) int64 of one IDX pair, cross-checked."""
    images, labels = read_idx(images_path), read_idx(labels_path)
    if images.ndim != 3 or labels.ndim != 1:
        raise DatasetError(f"{images_path} / {labels_path}: expected images (N, H, W) and labels "
                           f"(N,), got {images.shape} and {labels.shape}")
    if len(images) != len(labels):
        raise DatasetError(f"{images_path} holds {len(images)} images but {labels_path} holds "
                           f"{len(labels)} labels")
    if labels.size and labels.max() >= num_classes:
        raise DatasetError(f"{labels_path}: label {int(labels.max())} outside 0..{num_classes - 1}")
    return images[..., None], labels.astype(np.int64)


def idx_files(base_url: str, md5: dict[str, str]) -> tuple[RawFile, ...]:
    """The four IDX files; ``md5`` maps file name -> md5 of the uncompressed content."""
    return tuple(RawFile(n, base_url + n, md5[n], md5_of="gunzip") for n in md5)


class IdxBuilder(ImageBuilder, skip_registration=True):
    """Shared by MNIST and Fashion-MNIST: ``{split}`` -> (images file, labels file)."""

    IMAGE_SHAPE = (28, 28, 1)
    SPLIT_FILES = {"train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz"),
                   "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz")}

    def _generate_examples(self, split: str, files: dict[str, pathlib.Path]) -> Iterator:
        images_name, labels_name = self.SPLIT_FILES[split]
        images, labels = read_idx_split(files[images_name], files[labels_name],
                                        len(self.CLASS_NAMES))
        for i in range(len(images)):
            yield i, {"image": images[i], "label": labels[i]}


class Mnist(IdxBuilder, skip_registration=True):
    """MNIST handwritten digits, 28x28x1, 10 classes."""

    name = "mnist"
    VERSION = tfds.core.Version("1.0.0")
    DESCRIPTION = "MNIST handwritten digits (LeCun et al.), 28x28 gray, 10 classes."
    HOMEPAGE = "http://yann.lecun.com/exdb/mnist/"
    CLASS_NAMES = tuple(str(d) for d in range(10))
    # Canonical mirror used by tfds; md5 of the uncompressed IDX content (LeCun's files).
    RAW_FILES = idx_files("https://storage.googleapis.com/cvdf-datasets/mnist/", {
        "train-images-idx3-ubyte.gz": "6bbc9ace898e44ae57da46a324031adb",
        "train-labels-idx1-ubyte.gz": "a25bea736e30d166cdddb491f175f624",
        "t10k-images-idx3-ubyte.gz": "2646ac647ad5339dbf082846283269ea",
        "t10k-labels-idx1-ubyte.gz": "27ae3e4e09519cfbb04c329615203637",
    })
