"""Shared machinery of the TF-free tfds builders: raw-file lookup, downloads, checksums, errors.

Every builder is a ``tfds.core.GeneratorBasedBuilder`` whose examples are
``{"image": uint8 (H, W, C), "label": int}`` written as array_record shards (no TensorFlow).
Raw files come, in this order, from ``manual_dir`` (argument), ``$AECLUST_MANUAL_DIR/<name>/``,
``<data_dir>/downloads/<name>/`` (earlier downloads), and finally the dataset's public URL.
"""

from __future__ import annotations

import dataclasses
import gzip
import hashlib
import os
import pathlib
import urllib.error
import urllib.request
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from tqdm import tqdm

from aeclust_jax.errors import UserError

MANUAL_DIR_ENV = "AECLUST_MANUAL_DIR"
DATA_DIR_ENV = "AECLUST_DATA_DIR"
DOWNLOAD_TIMEOUT_S = 30.0


class DatasetError(UserError, ValueError):
    """A dataset's raw files are unusable (corrupt, wrong format, bad options)."""


class MissingFilesError(UserError, FileNotFoundError):
    """A dataset's raw files are neither in a manual dir nor downloadable."""


class ChecksumError(DatasetError):
    """A raw file's checksum differs from the canonical one."""


@dataclasses.dataclass(frozen=True)
class RawFile:
    """One raw file of a dataset.

    ``md5``: md5 hex digest of the file (of its *uncompressed* content when ``md5_of="gunzip"``,
    so that re-compressed copies of the canonical IDX files still verify); None: not verified.
    """
    name: str
    url: str | None = None
    md5: str | None = None
    md5_of: str = "file"  # "file" | "gunzip"


def default_data_dir() -> pathlib.Path:
    """``$AECLUST_DATA_DIR`` or ``~/aeclust_data``: where prepared datasets live."""
    return pathlib.Path(os.environ.get(DATA_DIR_ENV) or "~/aeclust_data").expanduser()


def env_manual_dir(name: str) -> pathlib.Path | None:
    """``$AECLUST_MANUAL_DIR/<name>/`` when the variable is set."""
    root = os.environ.get(MANUAL_DIR_ENV)
    return pathlib.Path(root).expanduser() / name if root else None


def md5sum(path: pathlib.Path, *, gunzip: bool = False) -> str:
    """md5 hex digest of a file, or of its gunzipped content; corrupt gzip -> DatasetError."""
    h = hashlib.md5()
    opener = gzip.open if gunzip else open
    try:
        with opener(path, "rb") as f:
            while chunk := f.read(1 << 22):
                h.update(chunk)
    except (OSError, EOFError, gzip.BadGzipFile) as e:
        raise DatasetError(f"{path}: cannot read ({type(e).__name__}: {e}); "
                           "the file is truncated or corrupt, replace it") from e
    return h.hexdigest()


def verify_md5(path: pathlib.Path, spec: RawFile) -> None:
    """Raises ChecksumError naming the file when its md5 differs from ``spec.md5``."""
    if spec.md5 is None:
        return
    got = md5sum(path, gunzip=spec.md5_of == "gunzip")
    if got != spec.md5:
        what = "uncompressed content" if spec.md5_of == "gunzip" else "file"
        raise ChecksumError(
            f"{path}: md5 of the {what} is {got}, expected {spec.md5} (the canonical file); "
            "replace the file, or pass verify_checksums=False to accept a non-canonical copy")


def _download(url: str, dest: pathlib.Path, *, progress: bool = False) -> None:
    """Fetches ``url`` to ``dest`` through a temp file (no half-written ``dest``)."""
    dest.parent.mkdir(parents=True, exist_ok=True)
    tmp = dest.with_name(dest.name + ".part")
    try:
        with urllib.request.urlopen(url, timeout=DOWNLOAD_TIMEOUT_S) as r, open(tmp, "wb") as f, \
                tqdm(total=int(r.headers.get("Content-Length") or 0) or None, unit="B",
                     unit_scale=True, desc=f"downloading {dest.name}", disable=not progress) as bar:
            while chunk := r.read(1 << 22):
                f.write(chunk)
                bar.update(len(chunk))
        os.replace(tmp, dest)
    finally:
        tmp.unlink(missing_ok=True)


class ImageBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
    """Base of every aeclust builder: uint8 image + ClassLabel, array_record, raw-file lookup.

    Subclasses set ``name``, ``VERSION``, ``RAW_FILES`` (names the manual dir must hold; a
    subclass may override ``raw_files()``), ``CLASS_NAMES``, ``image_shape()`` and implement
    ``_generate_examples(split, files)`` yielding ``(key, {"image": uint8 HWC, "label": int})``.
    ``SPLITS`` lists the split names.
    """

    VERSION = tfds.core.Version("1.0.0")
    RAW_FILES: Sequence[RawFile] = ()
    CLASS_NAMES: Sequence[str] = ()
    SPLITS: Sequence[str] = ("train", "test")
    IMAGE_SHAPE: tuple[int, int, int] = (0, 0, 0)
    DESCRIPTION = ""
    HOMEPAGE = ""
    # Downloads and checksums are done by fetch_raw_files, not by tfds' checksums.tsv machinery
    # (whose lookup of the builder's code path also needs importlib_resources, undeclared by tfds).
    _checksums_path = None
    # Set by aeclust_jax.data.prepare: print what is prepared, show download bars.
    show_progress = False

    def __init__(self, *, data_dir=None, manual_dir=None, verify_checksums: bool = True,
                 download: bool = True, **kwargs):
        kwargs.setdefault("file_format", "array_record")
        self._manual_dir = pathlib.Path(manual_dir).expanduser() if manual_dir else None
        self._verify_checksums = verify_checksums
        self._allow_download = download
        super().__init__(data_dir=os.fspath(data_dir or default_data_dir()), **kwargs)

    # ----------------------------------------------------------------- tfds hooks
    def image_shape(self) -> tuple[int, int, int]:
        return tuple(self.IMAGE_SHAPE)

    def class_names(self) -> list[str]:
        return list(self.CLASS_NAMES)

    def raw_files(self) -> Sequence[RawFile]:
        return self.RAW_FILES

    def _info(self) -> tfds.core.DatasetInfo:
        return self.dataset_info_from_configs(
            description=self.DESCRIPTION,
            homepage=self.HOMEPAGE or None,
            features=tfds.features.FeaturesDict({
                "image": tfds.features.Tensor(shape=self.image_shape(), dtype=np.uint8,
                                               encoding=tfds.features.Encoding.BYTES),
                "label": tfds.features.ClassLabel(names=self.class_names()),
            }),
            supervised_keys=("image", "label"),
            # Keep the raw files' order (tfds would shuffle by key hash): studies seed their own
            # shuffles (e.g. S1's numpy seed 547) on the canonical order.
            disable_shuffling=True,
        )

    def _split_generators(self, dl_manager):
        files = self.fetch_raw_files()
        return {split: self._generate_examples(split, files) for split in self.SPLITS}

    def _generate_examples(self, split: str, files: dict[str, pathlib.Path]) -> Iterator:
        raise NotImplementedError

    # tfds prints these two unconditionally ("Downloading and preparing dataset Unknown size ..."
    # even when every file is local); ours say what happens, and only when progress is asked.
    def _log_download_bytes(self) -> None:
        if self.show_progress:
            print(f"{self.name}: preparing it once from its raw files into {self.data_dir}", flush=True)

    def _log_download_done(self) -> None:
        if self.show_progress:
            print(f"{self.name}: prepared", flush=True)

    # ------------------------------------------------------------ raw-file lookup
    def manual_dirs(self) -> list[pathlib.Path]:
        """Folders searched for the raw files, in order."""
        dirs = []
        if self._manual_dir is not None:  # the dataset's folder, or a root of such folders
            dirs += [self._manual_dir, self._manual_dir / self.name]
        env = env_manual_dir(self.name)
        return dirs + ([env] if env is not None else [])

    def download_dir(self) -> pathlib.Path:
        return pathlib.Path(self._data_dir_root) / "downloads" / self.name

    def missing_files_message(self, missing: Sequence[RawFile], tried: str) -> str:
        where = [str(d) for d in self.manual_dirs()] or [
            f"nothing: no manual_dir given and ${MANUAL_DIR_ENV} unset"]
        names = ", ".join(f.name for f in missing)
        return (f"{self.name}: raw file(s) not found: {names}. Put them in a folder and pass "
                f"manual_dir=<folder>, or put them in ${MANUAL_DIR_ENV}/{self.name}/ "
                f"(searched: {', '.join(where)}){tried}. See docs/data.md.")

    def fetch_raw_files(self) -> dict[str, pathlib.Path]:
        """name -> path of every raw file, found locally or downloaded, checksum-verified."""
        found: dict[str, pathlib.Path] = {}
        missing: list[RawFile] = []
        search = self.manual_dirs() + [self.download_dir()]
        for spec in self.raw_files():
            path = next((d / spec.name for d in search if (d / spec.name).is_file()), None)
            if path is None:
                missing.append(spec)
            else:
                found[spec.name] = path
        errors = []
        if missing and self._allow_download and all(f.url for f in missing):
            for spec in missing:
                dest = self.download_dir() / spec.name
                try:
                    _download(spec.url, dest, progress=self.show_progress)
                except (urllib.error.URLError, OSError, ValueError) as e:
                    errors.append(f"{spec.url}: {getattr(e, 'reason', e)}")
                    break
                found[spec.name] = dest
            else:
                missing = []
        if missing:
            tried = f"; download failed ({errors[0]})" if errors else (
                "; no public URL to download from" if not all(f.url for f in missing) else "")
            raise MissingFilesError(self.missing_files_message(missing, tried))
        if self._verify_checksums:
            for spec in self.raw_files():
                verify_md5(found[spec.name], spec)
        return found
