"""COIL-20: 1440 gray images of 20 objects x 72 poses, from ``COIL20.mat`` or ``coil-20-proc.zip``.

Builder configs (``load("coil20", source=..., size=...)``):
  ``mat32`` (default): ``COIL20.mat`` as DSC-Net's code reads it (32x32, ``fea`` rows stored
  column-major: each row is reshaped to (32, 32) and transposed, so objects stand upright);
  ``proc32`` / ``proc128``: Columbia's ``coil-20-proc.zip`` (128x128 PNGs ``obj{1..20}__{0..71}.png``),
  resized with Lanczos to 32x32 or kept at 128x128. One split, ``train``, ordered by (object, pose).
"""

from __future__ import annotations

import pathlib
import re
import zipfile
from typing import Iterator

import numpy as np
import scipy.io
import tensorflow_datasets as tfds

from aeclust_jax.data._base import DatasetError, ImageBuilder, RawFile
from aeclust_jax.data._images import decode_gray, resize_gray

NUM_OBJECTS = 20
_PROC_NAME = re.compile(r"(?:^|/)obj(\d+)__(\d+)\.png$", re.IGNORECASE)

MAT_FILE = RawFile("COIL20.mat", "https://github.com/XifengGuo/DSC-Net/raw/master/datasets/COIL20.mat",
                   md5="cdc44986c045668b1b30f82a66b0866d")
# Columbia publishes no checksum for this zip; its content is validated instead (names, sizes).
PROC_FILE = RawFile("coil-20-proc.zip", "https://www.cs.columbia.edu/CAVE/databases/"
                    "SLAM_coil-20_coil-100/coil-20/coil-20-proc.zip")


def read_coil20_mat(path: pathlib.Path) -> tuple[np.ndarray, np.ndarray]:
    """``COIL20.mat`` -> (images uint8 (N, 32, 32, 1) upright, labels int64 (N,) in 0..19)."""
    try:
        mat = scipy.io.loadmat(path)
    except Exception as e:  # scipy raises ValueError, OSError, TypeError, MatReadError...
        raise DatasetError(f"{path}: not a readable MATLAB file ({type(e).__name__}: {e}); "
                           "it is truncated or corrupt, replace it") from e
    if "fea" not in mat or "gnd" not in mat:
        raise DatasetError(f"{path}: expected variables 'fea' and 'gnd', found "
                           f"{sorted(k for k in mat if not k.startswith('__'))}")
    fea, gnd = np.asarray(mat["fea"]), np.asarray(mat["gnd"]).reshape(-1)
    if fea.ndim != 2 or fea.shape[1] != 32 * 32 or len(fea) != len(gnd):
        raise DatasetError(f"{path}: expected fea (N, 1024) and gnd (N, 1), got {fea.shape} "
                           f"and {mat['gnd'].shape}")
    if gnd.size and (gnd.min() < 1 or gnd.max() > NUM_OBJECTS):
        raise DatasetError(f"{path}: labels gnd must lie in 1..{NUM_OBJECTS}, got "
                           f"{gnd.min()}..{gnd.max()}")
    if fea.dtype.kind == "f":
        if fea.size and (fea.min() < 0 or fea.max() > 1):
            raise DatasetError(f"{path}: float fea must lie in [0, 1], got "
                               f"[{fea.min()}, {fea.max()}]")
        fea = np.round(fea * 255.0)
    images = fea.astype(np.uint8).reshape(-1, 32, 32).transpose(0, 2, 1)  # column-major rows
    return images[..., None], gnd.astype(np.int64) - 1


def read_coil20_proc(path: pathlib.Path, size: int) -> tuple[np.ndarray, np.ndarray]:
    """``coil-20-proc.zip`` -> (images uint8 (N, size, size, 1), labels int64 (N,) in 0..19).

    Members ``obj{k}__{pose}.png`` (k = 1..20) in any folder, sorted by (k, pose). All images
    must share one size; unreadable or odd-sized images raise DatasetError naming the member.
    """
    try:
        with zipfile.ZipFile(path) as z:
            entries = []
            for info in z.infolist():
                m = _PROC_NAME.search(info.filename)
                if m and not info.is_dir():
                    entries.append((int(m.group(1)), int(m.group(2)), info.filename))
            if not entries:
                raise DatasetError(f"{path}: holds no obj<k>__<pose>.png images")
            entries.sort()
            images, labels, first = [], [], None
            for obj, _, member in entries:
                if not 1 <= obj <= NUM_OBJECTS:
                    raise DatasetError(f"{path}:{member}: object number {obj} outside "
                                       f"1..{NUM_OBJECTS}")
                img = decode_gray(z.read(member), f"{path}:{member}")
                if first is None:
                    first = (member, img.shape)
                elif img.shape != first[1]:
                    raise DatasetError(f"{path}: images of mixed sizes: {member} is "
                                       f"{img.shape}, {first[0]} is {first[1]}")
                images.append(resize_gray(img, size))
                labels.append(obj - 1)
    except (zipfile.BadZipFile, EOFError, zipfile.LargeZipFile) as e:
        raise DatasetError(f"{path}: not a readable zip archive ({e}); it is truncated or "
                           "corrupt, replace it") from e
    except OSError as e:  # zlib errors inside members surface as OSError / zlib.error
        raise DatasetError(f"{path}: cannot read ({e}); it is truncated or corrupt") from e
    return np.stack(images)[..., None], np.asarray(labels, dtype=np.int64)


class Coil20Config(tfds.core.BuilderConfig):
    """``source``: "mat" or "proc"; ``size``: 32 or 128 (128 only from "proc")."""

    def __init__(self, *, source: str, size: int, **kwargs):
        super().__init__(name=f"{source}{size}", **kwargs)
        self.source, self.size = source, size


class Coil20(ImageBuilder, skip_registration=True):
    """Columbia Object Image Library, 20 objects x 72 poses, gray."""

    name = "coil20"
    VERSION = tfds.core.Version("1.0.0")
    DESCRIPTION = "COIL-20 (Nene et al. 1996): 20 objects on a turntable, 72 poses each, gray."
    HOMEPAGE = "https://www.cs.columbia.edu/CAVE/software/softlib/coil-20.php"
    CLASS_NAMES = tuple(f"obj{k}" for k in range(1, NUM_OBJECTS + 1))
    SPLITS = ("train",)
    BUILDER_CONFIGS = [Coil20Config(source="mat", size=32, description="COIL20.mat, 32x32"),
                       Coil20Config(source="proc", size=32, description="proc zip, resized to 32"),
                       Coil20Config(source="proc", size=128, description="proc zip, 128x128")]
    DEFAULT_CONFIG_NAME = "mat32"

    def __init__(self, *, source: str = "mat", size: int = 32, **kwargs):
        choices = [c.name for c in self.BUILDER_CONFIGS]
        if f"{source}{size}" not in choices:
            raise DatasetError(f"coil20: no config for source={source!r}, size={size!r}; choices: "
                               "source='mat' size=32, source='proc' size=32 or 128")
        super().__init__(config=f"{source}{size}", **kwargs)

    def image_shape(self):
        return (self.builder_config.size, self.builder_config.size, 1)

    def raw_files(self):
        return (MAT_FILE,) if self.builder_config.source == "mat" else (PROC_FILE,)

    def _generate_examples(self, split: str, files: dict[str, pathlib.Path]) -> Iterator:
        cfg = self.builder_config
        if cfg.source == "mat":
            images, labels = read_coil20_mat(files[MAT_FILE.name])
        else:
            images, labels = read_coil20_proc(files[PROC_FILE.name], cfg.size)
        for i in range(len(images)):
            yield i, {"image": images[i], "label": labels[i]}
