"""STL-10 from the canonical ``stl10_binary.tar.gz``: ``train`` (5000), ``test`` (8000),
``unlabeled`` (100000, label -1).

Members ``stl10_binary/{train,test,unlabeled}_X.bin``: uint8, each image 3 x 96 x 96 stored
channel by channel, each channel column-major; ``{train,test}_y.bin``: uint8 labels 1..10.
"""

from __future__ import annotations

import pathlib
import tarfile
import zlib
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from aeclust_jax.data._base import DatasetError, ImageBuilder, RawFile

ARCHIVE = RawFile("stl10_binary.tar.gz", "http://ai.stanford.edu/~acoates/stl10/stl10_binary.tar.gz",
                  md5="91f7769df0f17e558f3565bffb0c7dfb")
IMAGE_BYTES = 3 * 96 * 96
_CHUNK_IMAGES = 2000


def stl_images(raw: bytes | np.ndarray) -> np.ndarray:
    """Raw STL-10 bytes (N * 27648) -> uint8 (N, 96, 96, 3) upright."""
    return np.frombuffer(raw, np.uint8).reshape(-1, 3, 96, 96).transpose(0, 3, 2, 1)


def iter_stl_split(path: pathlib.Path, split: str) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Chunks (images uint8 (n, 96, 96, 3), labels int64 (n,)) of one split, streamed from the
    archive (the 2.6 GB unlabeled set is never held whole); unlabeled labels are -1."""
    x_name, y_name = f"{split}_X.bin", f"{split}_y.bin"
    try:
        with tarfile.open(path, "r|gz") as tar:  # stream: members in archive order
            labels = None
            pending = None
            for member in tar:
                base = member.name.rsplit("/", 1)[-1]
                if base == y_name:
                    labels = np.frombuffer(tar.extractfile(member).read(), np.uint8).astype(np.int64) - 1
                    if pending is not None:
                        break
                elif base == x_name:
                    f = tar.extractfile(member)
                    if member.size % IMAGE_BYTES:
                        raise DatasetError(f"{path}:{member.name}: size {member.size} is not a "
                                           f"multiple of {IMAGE_BYTES} bytes (3x96x96)")
                    if split == "unlabeled":
                        while chunk := f.read(IMAGE_BYTES * _CHUNK_IMAGES):
                            if len(chunk) % IMAGE_BYTES:
                                raise DatasetError(f"{path}:{member.name}: truncated")
                            images = stl_images(chunk)
                            yield images, np.full(len(images), -1, np.int64)
                        return
                    pending = f.read()
                    if labels is not None:
                        break
    except (tarfile.TarError, EOFError, OSError, zlib.error) as e:
        raise DatasetError(f"{path}: not a readable STL-10 tar.gz ({type(e).__name__}: {e}); "
                           "it is truncated or corrupt, replace it") from e
    if pending is None or labels is None:
        raise DatasetError(f"{path}: missing {x_name if pending is None else y_name} "
                           "(expected under stl10_binary/)")
    images = stl_images(pending)
    if len(images) != len(labels):
        raise DatasetError(f"{path}: {x_name} holds {len(images)} images but {y_name} "
                           f"{len(labels)} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise DatasetError(f"{path}:{y_name}: labels outside 1..10")
    yield images, labels


class Stl10(ImageBuilder, skip_registration=True):
    """STL-10, 96x96x3, 10 classes, plus 100000 unlabeled images (label -1)."""

    name = "stl10"
    VERSION = tfds.core.Version("1.0.0")
    DESCRIPTION = "STL-10 (Coates et al. 2011): 96x96 color images, 10 classes + unlabeled."
    HOMEPAGE = "https://cs.stanford.edu/~acoates/stl10/"
    CLASS_NAMES = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship",
                   "truck")
    IMAGE_SHAPE = (96, 96, 3)
    SPLITS = ("train", "test", "unlabeled")
    RAW_FILES = (ARCHIVE,)

    def _generate_examples(self, split: str, files) -> Iterator:
        i = 0
        for images, labels in iter_stl_split(files[ARCHIVE.name], split):
            for image, label in zip(images, labels):
                yield i, {"image": image, "label": label}
                i += 1
