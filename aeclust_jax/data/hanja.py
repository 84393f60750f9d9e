"""hanja: a user's folder of glyph images (S1's Hanja scans are private), gray, resized to square.

A preset of ``image_folder`` (see aeclust_jax/data/image_folder.py): ``load("hanja", folder=...)``
= ``load("image_folder", path=folder, channels=1, size=100, test_fraction=1/9,
class_order="sorted")``. Labels come from the class sub-folder name (``<folder>/u4e00/0001.png``),
or else from the last ``_``-separated token of the file stem (``<folder>/0001_u4e00.png`` ->
``u4e00``), as in the authors' code. Splits: ``<folder>/train/`` and ``<folder>/test/`` when both
exist, otherwise a seeded random split (``test_fraction``, default 1/9: the paper's 24000 / 3000).
Class names are the sorted labels (the authors' order). Images of any size are converted to gray
and resized (Lanczos) to ``size`` x ``size`` (default 100).
"""

from __future__ import annotations

import tensorflow_datasets as tfds

from aeclust_jax.data.image_folder import ImageFolder


class Hanja(ImageFolder, skip_registration=True):
    """A user's Hanja glyph folder (see module docstring for the layouts)."""

    name = "hanja"
    VERSION = tfds.core.Version("1.0.0")
    DESCRIPTION = "Hanja glyph images from a user's folder (S1; the authors' scans are private)."
    WHAT = "hanja"
    PATH_OPTION = "folder"

    def __init__(self, *, folder=None, size: int = 100, test_fraction: float = 1 / 9,
                 seed: int = 0, **kwargs):
        super().__init__(path=folder, channels=1, size=size, test_fraction=test_fraction,
                         seed=seed, class_order="sorted", **kwargs)
