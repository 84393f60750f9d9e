"""hanja: a user's folder of glyph images (S1's Hanja scans are private), gray, resized to square.

Labels come from the class sub-folder name (``<folder>/u4e00/0001.png``), or else from the last
``_``-separated token of the file stem (``<folder>/0001_u4e00.png`` -> ``u4e00``), as in the
authors' code. Splits: ``<folder>/train/`` and ``<folder>/test/`` when both exist, otherwise a
seeded random split (``test_fraction``, default 1/9: the paper's 24000 / 3000). Class names are
the sorted labels. Images of any size are converted to gray and resized (Lanczos) to
``size`` x ``size`` (default 100).
"""

from __future__ import annotations

import hashlib
import json
import pathlib
from typing import Iterator

import numpy as np
import tensorflow_datasets as tfds

from aeclust_jax.data._base import DatasetError, ImageBuilder, MissingFilesError
from aeclust_jax.data._images import decode_gray, resize_gray

IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp")


def _label_of(path: pathlib.Path, root: pathlib.Path) -> str:
    rel = path.relative_to(root)
    if len(rel.parts) > 1:
        return rel.parts[0]
    if "_" not in path.stem:
        raise DatasetError(f"{path}: no class label: put it in a class sub-folder or name it "
                           "<anything>_<label>.<ext> (e.g. 0001_u4e00.png)")
    return path.stem.rsplit("_", 1)[1]


def _images_under(root: pathlib.Path) -> list[pathlib.Path]:
    return sorted(p for p in root.rglob("*")
                  if p.suffix.lower() in IMAGE_SUFFIXES and p.is_file()
                  and not any(part.startswith(".") for part in p.relative_to(root).parts))


def list_hanja_folder(folder: pathlib.Path, test_fraction: float, seed: int
                      ) -> dict[str, list[tuple[pathlib.Path, str]]]:
    """split -> [(image path, label)], from train/ + test/ sub-folders or a seeded split."""
    if not folder.is_dir():
        raise MissingFilesError(f"hanja: folder {folder} does not exist; pass folder=<your glyph "
                                "images folder> (see docs/data.md)")
    if (folder / "train").is_dir() and (folder / "test").is_dir():
        splits = {s: [(p, _label_of(p, folder / s)) for p in _images_under(folder / s)]
                  for s in ("train", "test")}
        for s, items in splits.items():
            if not items:
                raise DatasetError(f"hanja: {folder / s} holds no images ({', '.join(IMAGE_SUFFIXES)})")
        return splits
    items = [(p, _label_of(p, folder)) for p in _images_under(folder)]
    if not items:
        raise DatasetError(f"hanja: {folder} holds no images ({', '.join(IMAGE_SUFFIXES)}), "
                           "neither directly nor in class sub-folders")
    n_test = int(round(test_fraction * len(items)))
    if not 0 < n_test < len(items):
        raise DatasetError(f"hanja: test_fraction={test_fraction} of {len(items)} images leaves "
                           "an empty split; use train/ and test/ sub-folders or another fraction")
    is_test = np.zeros(len(items), bool)
    is_test[np.random.default_rng(seed).permutation(len(items))[:n_test]] = True
    return {"train": [it for it, t in zip(items, is_test) if not t],
            "test": [it for it, t in zip(items, is_test) if t]}


class HanjaConfig(tfds.core.BuilderConfig):
    """Named by a digest of the folder's path and listing, so a changed folder is re-prepared."""

    def __init__(self, *, folder: pathlib.Path, size: int, test_fraction: float, seed: int,
                 listing: dict):
        ident = json.dumps([str(folder), size, test_fraction, seed,
                            {s: [(str(p.relative_to(folder)), p.stat().st_size,
                                  p.stat().st_mtime_ns, lab) for p, lab in items]
                             for s, items in listing.items()}])
        digest = hashlib.sha1(ident.encode()).hexdigest()[:12]
        super().__init__(name=f"{folder.name or 'root'}_{size}_{digest}",
                         description=f"images of {folder}")
        self.folder, self.size, self.listing = folder, size, listing
        self.class_names = sorted({lab for items in listing.values() for _, lab in items})


class Hanja(ImageBuilder, skip_registration=True):
    """A user's Hanja glyph folder (see module docstring for the layouts)."""

    name = "hanja"
    VERSION = tfds.core.Version("1.0.0")
    DESCRIPTION = "Hanja glyph images from a user's folder (S1; the authors' scans are private)."

    def __init__(self, *, folder=None, size: int = 100, test_fraction: float = 1 / 9,
                 seed: int = 0, **kwargs):
        if folder is None:
            raise MissingFilesError("hanja: pass folder=<your glyph images folder>: class "
                                    "sub-folders or files named <id>_<label>.png, optionally "
                                    "under train/ and test/ (see docs/data.md)")
        if size < 8:
            raise DatasetError(f"hanja: size must be >= 8, got {size}")
        folder = pathlib.Path(folder).expanduser().resolve()
        listing = list_hanja_folder(folder, float(test_fraction), int(seed))
        super().__init__(config=HanjaConfig(folder=folder, size=int(size),
                                            test_fraction=float(test_fraction), seed=int(seed),
                                            listing=listing), **kwargs)

    def image_shape(self):
        return (self.builder_config.size, self.builder_config.size, 1)

    def class_names(self):
        return self.builder_config.class_names

    def fetch_raw_files(self):
        return {}

    def _generate_examples(self, split: str, files) -> Iterator:
        cfg = self.builder_config
        index = {name: i for i, name in enumerate(cfg.class_names)}
        for i, (path, label) in enumerate(cfg.listing[split]):
            try:
                data = path.read_bytes()
            except OSError as e:
                raise DatasetError(f"hanja: cannot read {path} ({e})") from e
            image = resize_gray(decode_gray(data, str(path)), cfg.size)
            yield i, {"image": image[:, :, None], "label": index[label]}
