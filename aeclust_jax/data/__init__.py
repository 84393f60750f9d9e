"""Datasets of the studies as uint8 arrays, prepared once by TF-free tfds builders.

    from aeclust_jax.data import load
    ds = load("mnist", "train")          # ds.images uint8 (60000, 28, 28, 1), ds.labels int32

The first call prepares the dataset (array_record shards) under ``data_dir`` (default
``$AECLUST_DATA_DIR`` or ``~/aeclust_data``) from the raw files (``manual_dir``,
``$AECLUST_MANUAL_DIR/<name>/`` or a download); later calls read what was prepared.
See docs/data.md for each dataset's files and options.
"""

from __future__ import annotations

import contextlib
import dataclasses
import importlib
import inspect
import json
import os
import pathlib
import zipfile
from typing import Any

import numpy as np

from aeclust_jax.data._base import (ChecksumError, DatasetError, MissingFilesError,
                                    default_data_dir)
from aeclust_jax.errors import UserError

# name -> "module:Class" under aeclust_jax.data (imported on first use).
_BUILDERS = {
    "mnist": "mnist:Mnist",
    "fashion_mnist": "fashion_mnist:FashionMnist",
    "cifar10": "cifar10:Cifar10",
    "stl10": "stl10:Stl10",
    "coil20": "coil20:Coil20",
    "hanja": "hanja:Hanja",
    "image_folder": "image_folder:ImageFolder",
    "hanja_synth": "hanja_synth:HanjaSynth",
}
DATASETS: tuple[str, ...] = tuple(_BUILDERS)

# Options every builder takes (see ImageBuilder.__init__), besides its own.
_COMMON_OPTIONS = ("verify_checksums", "download")

__all__ = ["DATASETS", "Dataset", "load", "balanced_subset", "builder", "prepare", "DatasetError",
           "MissingFilesError", "ChecksumError", "UnknownDatasetError"]


class UnknownDatasetError(UserError, ValueError):
    """A dataset name, split or builder option that does not exist."""


@dataclasses.dataclass(frozen=True, eq=False)
class Dataset:
    """One split of a dataset as host arrays.

    images: uint8 (N, H, W, C); labels: int32 (N,) in 0..num_classes-1 (-1: unlabeled).
    """
    name: str
    images: np.ndarray
    labels: np.ndarray
    num_classes: int
    class_names: tuple[str, ...]
    split: str = "train"

    def __len__(self) -> int:
        return len(self.labels)


def builder_class(name: str):
    """The tfds builder class of ``name``; unknown names list the choices."""
    if name not in _BUILDERS:
        raise UnknownDatasetError(f"unknown dataset {name!r}; choices: {', '.join(DATASETS)}")
    module, cls = _BUILDERS[name].split(":")
    return getattr(importlib.import_module(f"aeclust_jax.data.{module}"), cls)


def builder_options(name: str) -> tuple[str, ...]:
    """Names of the keyword options ``load(name, ...)`` accepts besides data_dir/manual_dir."""
    params = inspect.signature(builder_class(name).__init__).parameters
    own = [p for p, v in params.items()
           if v.kind == v.KEYWORD_ONLY and p not in ("data_dir", "manual_dir")]
    return tuple(dict.fromkeys(own + list(_COMMON_OPTIONS)))


def builder(name: str, *, data_dir=None, manual_dir=None, **options):
    """The configured (not yet prepared) tfds builder of ``name``."""
    cls = builder_class(name)
    allowed = builder_options(name)
    unknown = sorted(set(options) - set(allowed))
    if unknown:
        raise UnknownDatasetError(f"{name}: unknown option(s) {', '.join(unknown)}; "
                                  f"choices: {', '.join(allowed)}")
    with _quiet_custom_config():
        return cls(data_dir=data_dir or default_data_dir(), manual_dir=manual_dir, **options)


@contextlib.contextmanager
def _quiet_custom_config():
    """Drops tfds' absl warning "Using custom data configuration: ..." (printed for every
    ``image_folder`` load: its config is built from the options, as designed) inside the block."""
    import logging

    def keep(record) -> bool:
        return not str(record.msg).startswith("Using custom data configuration")

    log = logging.getLogger("absl")
    log.addFilter(keep)
    try:
        yield
    finally:
        log.removeFilter(keep)


def prepare(name: str, *, data_dir=None, manual_dir=None, progress: bool = False, **options):
    """Prepares ``name`` (no-op when already prepared) and returns its builder.

    ``progress``: show one line saying what is prepared where, and the progress bars of tfds and
    of downloads; off by default (tfds' own messages, such as its "Downloading and preparing
    dataset Unknown size" while reading local files, are never printed).
    """
    b = builder(name, data_dir=data_dir, manual_dir=manual_dir, **options)
    if _is_prepared(b):
        return b
    b.show_progress = progress
    try:
        with _tfds_progress_bars(progress):
            b.download_and_prepare()
    except OSError:
        # Another process may have prepared the same dataset meanwhile (tfds' final rename of
        # its incomplete.* folder then fails): use theirs.
        b = builder(name, data_dir=data_dir, manual_dir=manual_dir, **options)
        if not _is_prepared(b):
            raise
    return b


@contextlib.contextmanager
def _tfds_progress_bars(enabled: bool):
    """tfds' tqdm bars on or off inside the block (a global of tfds; restored after)."""
    import tensorflow_datasets as tfds
    from tensorflow_datasets.core.utils import tqdm_utils

    before = getattr(tqdm_utils, "_active", True)
    tfds.display_progress_bar(enabled)
    try:
        yield
    finally:
        tfds.display_progress_bar(before)


def _is_prepared(b) -> bool:
    return (pathlib.Path(b.data_path) / "dataset_info.json").is_file() and b.is_prepared()


def load(name: str, split: str = "train", *, data_dir=None, manual_dir=None,
         progress: bool = False, **builder_options) -> Dataset:
    """One split of dataset ``name`` as uint8 images (N, H, W, C) and int32 labels (N,).

    Prepares the dataset on first use (quietly unless ``progress``, see ``prepare``);
    ``builder_options`` are the dataset's own options (see docs/data.md), e.g.
    ``load("coil20", source="proc", size=128)``.
    """
    b = prepare(name, data_dir=data_dir, manual_dir=manual_dir, progress=progress, **builder_options)
    splits = list(b.info.splits)
    if split not in splits:
        raise UnknownDatasetError(f"{name}: unknown split {split!r}; choices: {', '.join(splits)}")
    images, labels = read_split(b, split)
    names = tuple(b.info.features["label"].names)
    return Dataset(name=name, images=images, labels=labels, num_classes=len(names),
                   class_names=names, split=split)


# ----------------------------------------------------------------------------- fast reads
# Decoding 60000 records one by one through ``as_data_source()`` takes ~3 s (measured, see
# docs/data.md), far over the 1 s target. The shards stay the canonical prepared form; beside
# them each split gets one uncompressed ``.npz`` of the decoded arrays, written atomically the
# first time the split is read and tied to the shards by a fingerprint (file names, sizes,
# mtimes, example count). A stale or damaged cache is rebuilt from the shards.

_CACHE_DIR = "aeclust_arrays"


def _shard_fingerprint(b, split: str) -> str:
    files = sorted(pathlib.Path(b.data_path).glob(f"{b.name}-{split}.array_record-*"))
    stats = [(f.name, f.stat().st_size, f.stat().st_mtime_ns) for f in files]
    return json.dumps({"examples": int(b.info.splits[split].num_examples), "shards": stats})


def _decode_from_shards(b, split: str) -> tuple[np.ndarray, np.ndarray]:
    source = b.as_data_source(split=split)
    n = len(source)
    shape = tuple(b.info.features["image"].shape)
    images = np.empty((n,) + shape, dtype=np.uint8)
    labels = np.empty((n,), dtype=np.int32)
    step = 4096
    for start in range(0, n, step):
        batch = source.__getitems__(list(range(start, min(n, start + step))))
        images[start:start + len(batch)] = [ex["image"] for ex in batch]
        labels[start:start + len(batch)] = [ex["label"] for ex in batch]
    return images, labels


def read_split(b, split: str) -> tuple[np.ndarray, np.ndarray]:
    """(images uint8 (N, H, W, C), labels int32 (N,)) of a prepared builder's split."""
    cache = pathlib.Path(b.data_path) / _CACHE_DIR / f"{split}.npz"
    fingerprint = _shard_fingerprint(b, split)
    if cache.is_file():
        try:
            with np.load(cache) as z:
                if str(z["fingerprint"]) == fingerprint:
                    return z["images"], z["labels"]
        except (OSError, ValueError, KeyError, zipfile.BadZipFile, EOFError):
            pass  # damaged cache: rebuild it below
    images, labels = _decode_from_shards(b, split)
    _write_cache(cache, images=images, labels=labels, fingerprint=np.array(fingerprint))
    return images, labels


def _write_cache(path: pathlib.Path, **arrays: Any) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        with open(tmp, "wb") as f:
            np.savez(f, **arrays)
        os.replace(tmp, path)
    except OSError:
        pass  # read-only data dir: the arrays are still returned, just not cached
    finally:
        tmp.unlink(missing_ok=True)


def balanced_subset(labels: np.ndarray, per_class: int, seed: int) -> np.ndarray:
    """Sorted int indices (M,) of ``per_class`` seeded random rows of each class of ``labels``
    (N,) (every row of a smaller class): a class-balanced labeled subset, e.g. S2's 5k."""
    if per_class < 1:
        raise ValueError(f"per_class must be >= 1, got {per_class}")
    rng = np.random.default_rng(seed)
    labels = np.asarray(labels)
    return np.sort(np.concatenate([rng.permutation(np.flatnonzero(labels == c))[:per_class]
                                   for c in np.unique(labels)]))
