"""hanja_synth: generated stand-in for the private Hanja scans of S1 (old-book glyphs, 100x100).

Each class is one CJK character rendered from CJK fonts; each sample gets a random stroke
weight, scale, rotation, shear, shift, elastic distortion, worn (broken) strokes, ink blots,
bleed-through from the other side of the page, stained paper and scanner noise. Images are dark
ink on light paper, uint8 (N, size, size, 1). Deterministic for a seed.

Everything after rendering the clean glyphs once is vectorised over a chunk of samples: the
glyphs are stored as signed distance fields, so warping is one ``map_coordinates`` call and the
stroke weight is a per-sample threshold on the warped distance.

Options (``load("hanja_synth", ...)``): ``characters`` (string, default 12 common Hanja),
``fonts`` (font file paths; default: the font of the ``cvttf-notosanscjk-regular`` package plus
Debian's AR PL UKai / UMing and WenQuanYi Micro Hei when installed), ``train_per_class`` (2000),
``test_per_class`` (250), ``seed`` (0), ``size`` (100).
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
from typing import Iterator, Sequence

import numpy as np
import tensorflow_datasets as tfds
from PIL import Image, ImageDraw, ImageFont
from scipy import ndimage

from aeclust_jax.data._base import DatasetError, ImageBuilder

# 12 frequent characters of classical texts, in code-point order.
DEFAULT_CHARACTERS = "".join(sorted("之不而其以於者曰也人子大"))
SYSTEM_FONTS = (  # Debian: fonts-arphic-ukai, fonts-arphic-uming, fonts-wqy-microhei
    "/usr/share/fonts/truetype/arphic/ukai.ttc",
    "/usr/share/fonts/truetype/arphic/uming.ttc",
    "/usr/share/fonts/truetype/wqy/wqy-microhei.ttc",
)
_CANVAS = 160          # side of the rendered template (pixels)
_GLYPH_FRACTION = 0.8  # nominal glyph height / image side
_CHUNK = 256           # samples warped per vectorised call


class NoCJKFontError(DatasetError):
    """No usable CJK font: install one or pass ``fonts=[...]``."""


def class_name(char: str) -> str:
    """``"之"`` -> ``"u4e4b"``, the label token of the authors' file names."""
    return f"u{ord(char):04x}"


def default_fonts() -> list[str]:
    """The pip-installed Noto Sans CJK font first, then the Debian CJK fonts that exist."""
    fonts = []
    try:
        import cvttf_NotoSansCJK_Regular
        fonts.append(cvttf_NotoSansCJK_Regular.get_TTF_path())
    except ImportError:
        pass
    fonts += [f for f in SYSTEM_FONTS if os.path.isfile(f)]
    return fonts


def _render(font: ImageFont.FreeTypeFont, char: str) -> np.ndarray:
    """Char centred on a _CANVAS square, bool (H, W) ink mask."""
    im = Image.new("L", (_CANVAS, _CANVAS), 0)
    draw = ImageDraw.Draw(im)
    left, top, right, bottom = draw.textbbox((0, 0), char, font=font)
    draw.text(((_CANVAS - (right - left)) / 2 - left, (_CANVAS - (bottom - top)) / 2 - top),
              char, font=font, fill=255)
    return np.asarray(im) >= 128


def render_templates(characters: str, fonts: Sequence[str]) -> np.ndarray:
    """Signed distance fields (num_fonts * num_chars, _CANVAS, _CANVAS) float32, in template
    pixels, negative inside strokes; index ``font * len(characters) + char``.

    A font that lacks one of the characters (it renders like an unassigned code point) or
    cannot be opened raises DatasetError naming the font.
    """
    sdfs = []
    for path in fonts:
        try:
            font = ImageFont.truetype(str(path), int(_CANVAS * _GLYPH_FRACTION))
        except OSError as e:
            raise DatasetError(f"hanja_synth: cannot open font {path} ({e})") from e
        missing = _render(font, "\U0010fffd")
        for ch in characters:
            mask = _render(font, ch)
            if not mask.any() or np.array_equal(mask, missing):
                raise DatasetError(f"hanja_synth: font {path} has no glyph for {ch!r} "
                                   f"({class_name(ch)}); drop it from fonts=")
            inside = ndimage.distance_transform_edt(mask)
            outside = ndimage.distance_transform_edt(~mask)
            sdfs.append((outside - inside).astype(np.float32))
    return np.stack(sdfs)


def _smooth_field(rng: np.random.Generator, n: int, channels: int, size: int, cells: int
                  ) -> np.ndarray:
    """Smooth random fields (n, channels, size, size) of roughly unit amplitude: a cells x cells
    grid of normal values, upsampled separably with a Gaussian kernel (two small matmuls)."""
    coarse = rng.standard_normal((n, channels, cells, cells)).astype(np.float32)
    pos = np.linspace(0.0, cells - 1.0, size, dtype=np.float32)[:, None]
    up = np.exp(-0.5 * ((pos - np.arange(cells, dtype=np.float32)) / 0.6) ** 2)
    up /= np.sqrt((up ** 2).sum(1, keepdims=True))  # keeps the variance ~1 at every pixel
    return np.einsum("ia,ncab,jb->ncij", up, coarse, up, optimize=True)


def synthesize(sdfs: np.ndarray, template: np.ndarray, rng: np.random.Generator, size: int = 100
               ) -> np.ndarray:
    """Scanned-old-book renderings of ``sdfs[template]``: uint8 (len(template), size, size).

    sdfs: (T, C, C) float32 signed distance fields; template: (N,) int indices into sdfs.
    """
    n, canvas = len(template), sdfs.shape[-1]
    f32 = np.float32

    def per_sample(values) -> np.ndarray:  # (n,) draws -> (n, 1, 1) float32
        return np.asarray(values, f32)[:, None, None]

    px = f32(canvas / size)  # template px per output px
    # Geometry: scale (y, x), rotation, shear, shift and elastic displacement (output px).
    scale = rng.uniform(0.78, 1.05, n) * rng.uniform(0.93, 1.07, (2, n))
    angle = np.deg2rad(rng.normal(0.0, 4.0, n))
    shear = per_sample(rng.normal(0.0, 0.06, n))
    shift = rng.uniform(-0.07, 0.07, (2, n)) * size
    elastic = _smooth_field(rng, n, 2, size, 5) * np.asarray(rng.uniform(0.8, 2.5, n), f32)[:, None, None, None]
    axis = np.arange(size, dtype=f32) - f32((size - 1) / 2)
    y = axis[None, :, None] - per_sample(shift[0]) + elastic[:, 0]
    x = axis[None, None, :] - per_sample(shift[1]) + elastic[:, 1]
    cos, sin = per_sample(np.cos(angle)), per_sample(np.sin(angle))
    ys = (cos * y - sin * x) * per_sample(px / scale[0])
    xs = (sin * y + cos * x) * per_sample(px / scale[1]) + shear * ys
    # The templates are stacked into one tall 2-D image, each framed by a 1-px border at
    # distance ``canvas`` (outside every stroke), so one bilinear 2-D lookup serves them all.
    framed = np.pad(sdfs, ((0, 0), (1, 1), (1, 1)), constant_values=canvas)
    band = canvas + 2
    coords = np.empty((2, n, size, size), f32)
    coords[0] = np.clip(ys + f32((canvas + 1) / 2), 0, band - 1) + per_sample(template * band)
    coords[1] = np.clip(xs + f32((canvas + 1) / 2), 0, band - 1)
    dist = ndimage.map_coordinates(framed.reshape(-1, band), coords, order=1, output=f32,
                                   prefilter=False)
    dist *= per_sample(scale.mean(0) / px)  # -> output px
    # Stroke weight: threshold the distance (output px); a smooth field makes it uneven.
    weight = per_sample(rng.uniform(-0.5, 1.8, n) + 0.5) + 0.5 * _smooth_field(rng, n, 1, size, 4)[:, 0]
    ink = np.clip(weight - dist, 0.0, 1.0)
    # Worn type / dry brush: smooth holes that break the strokes in places.
    wear = _smooth_field(rng, n, 1, size, 12)[:, 0] - per_sample(rng.uniform(1.4, 2.6, n))
    ink *= 1.0 - np.clip(wear * 2.0, 0.0, 1.0)
    # Ink blots: up to 3 round spots per image (each present with probability 0.35).
    for _ in range(3):
        cy, cx = rng.uniform(0, size, (2, n)) - (size - 1) / 2
        radius = rng.uniform(0.8, 3.5, n)
        hit = np.nonzero(rng.random(n) < 0.35)[0]
        d = np.sqrt((axis[None, :, None] - per_sample(cy[hit])) ** 2
                    + (axis[None, None, :] - per_sample(cx[hit])) ** 2)
        ink[hit] = np.maximum(ink[hit], np.clip(per_sample(radius[hit] + 0.5) - d, 0.0, 1.0))
    # Bleed-through: a faint mirrored glyph from the other side of the page.
    ink += np.flip(np.roll(ink, 1, axis=0), axis=2) * per_sample(rng.uniform(0.0, 0.18, n))
    # Paper: tone, stains (low-frequency), grain; ink tone; scanner blur.
    paper = (per_sample(rng.uniform(190, 240, n))
             + per_sample(rng.uniform(4, 16, n)) * _smooth_field(rng, n, 1, size, 3)[:, 0])
    ink_tone = per_sample(rng.uniform(15, 70, n))
    img = paper - (paper - ink_tone) * np.clip(ink, 0.0, 1.0)
    img = ndimage.gaussian_filter(img, (0, 0.6, 0.6))
    img += rng.standard_normal(img.shape, dtype=f32) * per_sample(rng.uniform(3, 10, n))
    return np.clip(np.round(img), 0, 255).astype(np.uint8)


def generate_chunks(sdfs: np.ndarray, num_chars: int, per_class: int, rng: np.random.Generator,
                    size: int = 100) -> Iterator[tuple[np.ndarray, np.ndarray]]:
    """Chunks (images uint8 (n, size, size), labels int64 (n,)) of num_chars * per_class
    samples in shuffled class order; ``sdfs`` from render_templates (fonts x characters)."""
    num_fonts = len(sdfs) // num_chars
    labels = rng.permutation(np.repeat(np.arange(num_chars), per_class))
    template = rng.integers(0, num_fonts, len(labels)) * num_chars + labels
    for start in range(0, len(labels), _CHUNK):
        stop = min(len(labels), start + _CHUNK)
        yield synthesize(sdfs, template[start:stop], rng, size), labels[start:stop]


def generate(sdfs: np.ndarray, num_chars: int, per_class: int, rng: np.random.Generator,
             size: int = 100) -> tuple[np.ndarray, np.ndarray]:
    """All of generate_chunks at once: (images uint8 (N, size, size), labels int64 (N,))."""
    chunks = list(generate_chunks(sdfs, num_chars, per_class, rng, size))
    return np.concatenate([c[0] for c in chunks]), np.concatenate([c[1] for c in chunks])


class HanjaSynthConfig(tfds.core.BuilderConfig):
    """Generation options; the config name is a digest of them (and of the font files)."""

    def __init__(self, *, characters: str, fonts: Sequence[str], train_per_class: int,
                 test_per_class: int, seed: int, size: int):
        ident = json.dumps([characters, [(pathlib.Path(f).name, os.path.getsize(f)) for f in fonts],
                            train_per_class, test_per_class, seed, size])
        digest = hashlib.sha1(ident.encode()).hexdigest()[:10]
        super().__init__(name=f"{len(characters)}c_{train_per_class}_{test_per_class}_s{seed}_{size}"
                              f"_{digest}", description=f"characters {characters}")
        self.characters, self.fonts = characters, tuple(fonts)
        self.train_per_class, self.test_per_class = train_per_class, test_per_class
        self.seed, self.size = seed, size


class HanjaSynth(ImageBuilder, skip_registration=True):
    """Synthetic old-book Hanja glyphs; no raw files needed (fonts come with pip install)."""

    name = "hanja_synth"
    VERSION = tfds.core.Version("1.0.0")
    DESCRIPTION = "Synthetic scanned old-book Hanja glyphs, a stand-in for S1's private scans."

    def __init__(self, *, characters: str = DEFAULT_CHARACTERS, fonts: Sequence[str] | None = None,
                 train_per_class: int = 2000, test_per_class: int = 250, seed: int = 0,
                 size: int = 100, **kwargs):
        characters = "".join(characters)
        if not characters or len(set(characters)) != len(characters):
            raise DatasetError(f"hanja_synth: characters must be distinct and non-empty, got "
                               f"{characters!r}")
        if min(train_per_class, test_per_class) < 1 or size < 16:
            raise DatasetError("hanja_synth: train_per_class and test_per_class must be >= 1 and "
                               f"size >= 16, got {train_per_class}, {test_per_class}, {size}")
        fonts = list(fonts) if fonts is not None else default_fonts()
        if not fonts:
            raise NoCJKFontError(
                "hanja_synth: no CJK font found. `pip install cvttf-notosanscjk-regular` (a "
                "dependency of aeclust_jax) provides one; Debian packages fonts-arphic-ukai, "
                "fonts-arphic-uming and fonts-wqy-microhei add more; or pass fonts=[path, ...]")
        for f in fonts:
            if not os.path.isfile(f):
                raise NoCJKFontError(f"hanja_synth: font file {f} does not exist")
        config = HanjaSynthConfig(characters=characters, fonts=fonts,
                                  train_per_class=int(train_per_class),
                                  test_per_class=int(test_per_class), seed=int(seed), size=int(size))
        super().__init__(config=config, **kwargs)

    def image_shape(self):
        return (self.builder_config.size, self.builder_config.size, 1)

    def class_names(self):
        return [class_name(c) for c in self.builder_config.characters]

    def fetch_raw_files(self):
        return {}

    def _generate_examples(self, split: str, files) -> Iterator:
        cfg = self.builder_config
        sdfs = render_templates(cfg.characters, cfg.fonts)
        per_class = cfg.train_per_class if split == "train" else cfg.test_per_class
        rng = np.random.default_rng([cfg.seed, self.SPLITS.index(split)])
        i = 0
        for images, labels in generate_chunks(sdfs, len(cfg.characters), per_class, rng, cfg.size):
            for image, label in zip(images, labels):
                yield i, {"image": image[:, :, None], "label": label}
                i += 1
