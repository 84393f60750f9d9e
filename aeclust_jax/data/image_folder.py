"""image_folder: any folder or .zip / .tar archive of labelled images, gray or RGB.

    load("image_folder", "train", path="cifar10-jpeg.zip", channels=3)        # (50000, 32, 32, 3)
    load("image_folder", "test", path="chinese_mnist.zip", size=32)          # seeded split

Layouts, inside ``path`` (a single top folder of an archive, e.g. ``cifar10/``, is skipped; or
name it with ``root=``):
* ``<split>/<class>/<image>``: ``train/`` plus ``test/`` (or ``val/``, ``validation/``) are the
  splits;
* ``<class>/<image>`` or ``<anything>_<label>.<ext>`` (the label is the stem's last
  ``_``-separated token, as S1's Hanja code names its files): one seeded split, stratified:
  ``round(test_fraction * n)`` of each class's n images go to ``test``.
Class names are the labels in natural order (``2`` before ``10``; ``class_order="sorted"`` gives
plain string order). Images (png, jpg, bmp, gif, tif, webp) become gray (``channels=1``, alpha
composited on white) or RGB (``channels=3``) and, with ``size=S``, are resized (Lanczos) to
S x S; without it every image must have the first one's size. Files that are not images (a csv
beside them) are ignored. The tfds config is named by a digest of the path, its listing (names,
sizes, mtimes) and the options, so an edited folder is prepared again and different options
never overwrite each other.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import pathlib
import re
import tarfile
import zipfile
from typing import Callable, Iterator

import numpy as np
import tensorflow_datasets as tfds

from aeclust_jax.data._base import DatasetError, ImageBuilder, MissingFilesError
from aeclust_jax.data._images import decode_image, resize_image

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")
SPLIT_FOLDERS = ("train", "test", "val", "validation")
ARCHIVE_SUFFIXES = (".zip", ".tar", ".tar.gz", ".tgz")


def natural_key(text: str) -> tuple:
    """Sort key with digit runs compared as numbers: 'img2' < 'img10'."""
    return tuple((0, int(t), "") if t.isdigit() else (1, 0, t)
                 for t in re.split(r"(\d+)", text) if t)


# ----------------------------------------------------------------------------- sources

@dataclasses.dataclass
class Source:
    """The image files of a folder or archive: relative posix paths (natural order), a digest of
    the listing, and ``open_reader()`` -> (read(rel) -> bytes, close())."""
    path: pathlib.Path
    files: list[str]
    digest: str
    open_reader: Callable[[], tuple[Callable[[str], bytes], Callable[[], None]]]


def _is_image(rel: str) -> bool:
    parts = rel.split("/")
    return (pathlib.PurePosixPath(rel).suffix.lower() in IMAGE_SUFFIXES
            and not any(p.startswith(".") or p == "__MACOSX" for p in parts))


def _digest(items) -> str:
    return hashlib.sha1(json.dumps(items).encode()).hexdigest()[:12]


def open_source(path: pathlib.Path, what: str) -> Source:
    """Lists the images of a folder, .zip or .tar[.gz]; MissingFilesError / DatasetError name it."""
    if not path.exists():
        raise MissingFilesError(f"{what}: {path} does not exist")
    if path.is_dir():
        entries = [(p.relative_to(path).as_posix(), p) for p in path.rglob("*") if p.is_file()]
        entries = [(rel, p) for rel, p in entries if _is_image(rel)]
        stats = sorted((rel, p.stat().st_size, p.stat().st_mtime_ns) for rel, p in entries)

        def reader():
            def read(rel):
                try:
                    return (path / rel).read_bytes()
                except OSError as e:
                    raise DatasetError(f"{what}: cannot read {path / rel} ({e})") from e
            return read, lambda: None
        return Source(path, sorted((rel for rel, _ in entries), key=natural_key),
                      _digest([str(path), stats]), reader)
    name = path.name.lower()
    st = path.stat()
    ident = [str(path), st.st_size, st.st_mtime_ns]
    try:
        if name.endswith(".zip"):
            with zipfile.ZipFile(path) as z:
                files = [i.filename for i in z.infolist() if not i.is_dir() and _is_image(i.filename)]

            def reader():
                z = zipfile.ZipFile(path)
                return z.read, z.close
        elif name.endswith((".tar", ".tar.gz", ".tgz")):
            with tarfile.open(path) as t:
                files = [m.name for m in t.getmembers() if m.isfile() and _is_image(m.name)]

            def reader():
                t = tarfile.open(path)

                def read(rel):
                    return t.extractfile(rel).read()
                return read, t.close
        else:
            raise DatasetError(f"{what}: {path} is neither a folder nor an archive "
                               f"({', '.join(ARCHIVE_SUFFIXES)})")
    except (zipfile.BadZipFile, tarfile.TarError, OSError, EOFError) as e:
        raise DatasetError(f"{what}: {path}: unreadable archive ({type(e).__name__}: {e}); "
                           "the file is truncated or corrupt, replace it") from e
    return Source(path, sorted(files, key=natural_key), _digest(ident), reader)


# ----------------------------------------------------------------------------- listing

def _strip_root(files: list[str], root: str | None, what: str) -> tuple[list[str], str]:
    """Paths relative to ``root`` (given, or the archive's single top folder when there is one
    and it is not a split or class folder with images directly in it)."""
    if root:
        prefix = root.strip("/") + "/"
        kept = [f[len(prefix):] for f in files if f.startswith(prefix)]
        if not kept:
            raise DatasetError(f"{what}: no images under root={root!r}")
        return kept, prefix
    prefix = ""
    while files and all("/" in f for f in files):
        top = {f.split("/", 1)[0] for f in files}
        inner = [f.split("/", 1)[1] for f in files]
        nested = any("/" in f for f in inner)
        named = all("_" in pathlib.PurePosixPath(f).stem for f in inner)
        # a split folder, or the only class folder, is kept
        if len(top) != 1 or next(iter(top)) in SPLIT_FOLDERS or not (nested or named):
            break
        prefix += next(iter(top)) + "/"
        files = inner
    return files, prefix


def label_of(rel: str, what: str) -> str:
    """'<class>/<...>/x.png' -> class; 'x_<label>.png' -> label; else DatasetError."""
    parts = rel.split("/")
    if len(parts) > 1:
        return parts[0]
    stem = pathlib.PurePosixPath(rel).stem
    if "_" not in stem:
        raise DatasetError(f"{what}: {rel}: no class label: put it in a class sub-folder or name "
                           "it <anything>_<label>.<ext> (e.g. 0001_u4e00.png)")
    return stem.rsplit("_", 1)[1]


def list_splits(source: Source, *, test_fraction: float, seed: int, root: str | None,
                what: str) -> dict[str, list[tuple[str, str]]]:
    """split -> [(archive/folder-relative path, label)] in natural path order."""
    files, prefix = _strip_root(source.files, root, what)
    if not files:
        raise DatasetError(f"{what}: {source.path} holds no images ({', '.join(IMAGE_SUFFIXES)}), "
                           "neither directly nor in class sub-folders")
    tops = {f.split("/", 1)[0] for f in files if "/" in f}
    split_dirs = [s for s in SPLIT_FOLDERS if s in tops]
    if "train" in split_dirs and len(split_dirs) > 1:
        out = {}
        for s in split_dirs:
            inside = [f[len(s) + 1:] for f in files if f.startswith(s + "/")]
            out[s] = [(prefix + s + "/" + f, label_of(f, what)) for f in inside]
        return out
    items = [(prefix + f, label_of(f, what)) for f in files]
    labels = np.array([lab for _, lab in items])
    # stratified: each class gives round(test_fraction * its count) images to test
    rng = np.random.default_rng(seed)
    is_test = np.zeros(len(items), bool)
    for lab in sorted(set(labels.tolist()), key=natural_key):
        idx = np.flatnonzero(labels == lab)
        is_test[rng.permutation(idx)[:int(round(test_fraction * len(idx)))]] = True
    if is_test.all() or not is_test.any():
        raise DatasetError(f"{what}: test_fraction={test_fraction} of {len(items)} images leaves "
                           "an empty split; use train/ and test/ sub-folders or another fraction")
    return {"train": [it for it, t in zip(items, is_test) if not t],
            "test": [it for it, t in zip(items, is_test) if t]}


# ----------------------------------------------------------------------------- builder

class ImageFolderConfig(tfds.core.BuilderConfig):
    """Named by a digest of the source's listing and the options."""

    def __init__(self, *, source: Source, listing: dict, channels: int, size: int | None,
                 image_shape: tuple[int, int, int], class_names: list[str], options: dict):
        digest = _digest([source.digest, options])
        stem = re.sub(r"[^A-Za-z0-9]+", "_", source.path.name.split(".")[0]) or "root"
        super().__init__(name=f"{stem}_{channels}c_{size or 'native'}_{digest}",
                         description=f"images of {source.path}")
        self.source, self.listing, self.channels, self.size = source, listing, channels, size
        self.image_shape, self.class_names = image_shape, class_names


class ImageFolder(ImageBuilder, skip_registration=True):
    """A folder or archive of labelled images (see the module docstring for layouts)."""

    name = "image_folder"
    VERSION = tfds.core.Version("1.0.0")
    DESCRIPTION = "Labelled images from a folder or a .zip/.tar archive."
    WHAT = "image_folder"          # error-message prefix
    PATH_OPTION = "path"

    def __init__(self, *, path=None, channels: int = 3, size: int | None = None,
                 test_fraction: float = 0.2, seed: int = 0, root: str | None = None,
                 class_order: str = "natural", **kwargs):
        what = self.WHAT
        if path is None:
            raise MissingFilesError(f"{what}: pass {self.PATH_OPTION}=<folder or .zip/.tar of "
                                    "images>: class sub-folders or files named <id>_<label>.png, "
                                    "optionally under train/ and test/ (see docs/data.md)")
        if channels not in (1, 3):
            raise DatasetError(f"{what}: channels must be 1 (gray) or 3 (RGB), got {channels}")
        if size is not None and int(size) < 8:
            raise DatasetError(f"{what}: size must be >= 8, got {size}")
        if class_order not in ("natural", "sorted"):
            raise DatasetError(f"{what}: class_order must be 'natural' or 'sorted', got {class_order!r}")
        source = open_source(pathlib.Path(path).expanduser().resolve(), what)
        listing = list_splits(source, test_fraction=float(test_fraction), seed=int(seed),
                              root=root, what=what)
        labels = {lab for items in listing.values() for _, lab in items}
        names = sorted(labels, key=natural_key if class_order == "natural" else None)
        shape = self._first_shape(source, listing, channels, size)
        options = dict(channels=channels, size=size, test_fraction=float(test_fraction),
                       seed=int(seed), root=root, class_order=class_order)
        super().__init__(config=ImageFolderConfig(
            source=source, listing=listing, channels=channels, size=int(size) if size else None,
            image_shape=shape, class_names=names, options=options), **kwargs)
        self.SPLITS = tuple(listing)

    def _first_shape(self, source, listing, channels, size) -> tuple[int, int, int]:
        if size:
            return (int(size), int(size), channels)
        first = next(iter(listing.values()))[0][0]
        read, close = source.open_reader()
        try:
            h, w = decode_image(read(first), f"{self.WHAT}: {first}", channels).shape[:2]
        finally:
            close()
        return (h, w, channels)

    def image_shape(self):
        return self.builder_config.image_shape

    def class_names(self):
        return self.builder_config.class_names

    def fetch_raw_files(self):
        return {}

    def _generate_examples(self, split: str, files) -> Iterator:
        cfg = self.builder_config
        index = {name: i for i, name in enumerate(cfg.class_names)}
        read, close = cfg.source.open_reader()
        try:
            for i, (rel, label) in enumerate(cfg.listing[split]):
                where = f"{self.WHAT}: {rel}"
                image = decode_image(read(rel), where, cfg.channels)
                if cfg.size:
                    image = resize_image(image, cfg.size)
                elif image.shape[:2] != cfg.image_shape[:2]:
                    raise DatasetError(f"{self.WHAT}: {cfg.source.path}: images of mixed sizes: "
                                       f"{rel} is {image.shape[:2]}, the first was "
                                       f"{cfg.image_shape[:2]}; pass size=<pixels> to resize")
                yield i, {"image": image.reshape(cfg.image_shape), "label": index[label]}
        finally:
            close()
