"""matplotlib figures: reconstruction grids, t-SNE scatter, bar charts, curves, feature maps.

Every plotting function writes one PNG to ``path`` (parent folders created); inputs are numpy
arrays (images (N, H, W, C) in [0, 1]). Figures are drawn on matplotlib's Agg canvas directly
(``matplotlib.figure.Figure``, no pyplot): importing or using this module never sets or changes
matplotlib's global backend, and needs no display.

For figures of their own, studies use ``figure`` (a new Agg figure and its axes) and ``save``.
"""

from __future__ import annotations

import pathlib
import textwrap
from typing import Mapping, Sequence

import numpy as np
from matplotlib.backends.backend_agg import FigureCanvasAgg
from matplotlib.figure import Figure
from matplotlib.lines import Line2D

__all__ = ["figure", "save", "class_colors", "reconstruction_grid", "tsne_scatter", "tsne_panels",
           "grouped_bars", "curves", "feature_maps", "score_text"]


def figure(nrows: int = 1, ncols: int = 1, *, figsize: tuple[float, float] = (5, 4),
           squeeze: bool = True, **subplots_kw):
    """A new figure on the Agg canvas and its axes (as ``pyplot.subplots``, without pyplot)."""
    fig = Figure(figsize=figsize)
    FigureCanvasAgg(fig)
    return fig, fig.subplots(nrows, ncols, squeeze=squeeze, **subplots_kw)


def save(fig, path, *, dpi: int = 110) -> pathlib.Path:
    """Writes ``fig`` to ``path`` (PNG; parent folders created) and returns the path (only
    process 0 writes in a multi-process run)."""
    from aeclust_jax.train.sharding import is_main_process
    path = pathlib.Path(path)
    if not is_main_process():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=dpi, bbox_inches="tight")
    return path


def class_colors(k: int) -> np.ndarray:
    """k distinct RGBA colours (k, 4): tab10 up to 10 classes, tab20 up to 20, else a hue wheel."""
    import matplotlib

    if k <= 10:
        return matplotlib.colormaps["tab10"](np.arange(k))
    if k <= 20:
        return matplotlib.colormaps["tab20"](np.arange(k))
    return matplotlib.colormaps["hsv"](np.linspace(0, 1, k, endpoint=False))


def score_text(scores: Mapping[str, float] | None) -> str:
    """``{"NMI": 0.79, "ACC": 0.88}`` -> ``"NMI 0.790, ACC 0.880"`` (values on the 0-1 scale)."""
    if not scores:
        return ""
    return ", ".join(f"{k} {v:.3f}" for k, v in scores.items() if v is not None and np.isfinite(v))


def _gray(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, np.float32)
    return img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img


def _no_ticks(ax) -> None:
    ax.set_xticks([])
    ax.set_yticks([])


def reconstruction_grid(rows: Sequence[np.ndarray], path, *, row_names: Sequence[str] | None = None,
                        title: str | None = None, n: int = 10) -> pathlib.Path:
    """One row per image set (each (N, H, W, C) in [0, 1]), first ``n`` columns."""
    n = min(n, min(len(r) for r in rows))
    fig, axes = figure(len(rows), n, figsize=(1.1 * n, 1.15 * len(rows)), squeeze=False)
    for i, imgs in enumerate(rows):
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(_gray(imgs[j]), cmap="gray", vmin=0, vmax=1)
            _no_ticks(ax)
        if row_names:
            axes[i, 0].set_ylabel(row_names[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path)


def _class_handles(k: int, class_names: Sequence[str] | None) -> list[Line2D]:
    names = list(class_names) if class_names is not None and len(class_names) == k else [str(i) for i in range(k)]
    colors = class_colors(k)
    return [Line2D([], [], ls="", marker="o", ms=4, color=colors[i], label=names[i]) for i in range(k)]


def _scatter_classes(ax, emb: np.ndarray, labels: np.ndarray, k: int) -> None:
    colors = class_colors(k)
    size = float(np.clip(6000 / max(len(labels), 1), 3, 12))   # 3 at 2000+ points, larger below
    for c in range(k):
        m = labels == c
        if m.any():
            ax.scatter(emb[m, 0], emb[m, 1], s=size, color=colors[c], linewidths=0, rasterized=True)


def _title(title: str | None, scores: Mapping[str, float] | None) -> str:
    text = score_text(scores)
    return "\n".join(t for t in (title, text) if t)


def tsne_scatter(emb: np.ndarray, labels: np.ndarray, path, *, title: str | None = None,
                 class_names: Sequence[str] | None = None, scores: Mapping[str, float] | None = None,
                 ax=None, legend: bool = True) -> pathlib.Path | None:
    """2-D embedding (N, 2) coloured by integer labels (N,), a legend of the class names.

    ``scores`` (e.g. ``{"NMI": 0.79, "ACC": 0.88}`` of a clustering of this embedding, 0-1 scale)
    join the title. With ``ax`` draws there and saves nothing.
    """
    emb, labels = np.asarray(emb), np.asarray(labels)
    k = int(labels.max()) + 1 if labels.size else 1
    own = ax is None
    if own:
        fig, ax = figure(figsize=(5.6 if k <= 10 else 6.4, 4.6))
    _scatter_classes(ax, emb, labels, k)
    _no_ticks(ax)
    ax.set_title(_title(title, scores), fontsize=9)
    if legend:
        ax.legend(handles=_class_handles(k, class_names), loc="center left", bbox_to_anchor=(1.01, 0.5),
                  fontsize=7, frameon=False, title="class", title_fontsize=7, ncol=1 if k <= 20 else 2,
                  handletextpad=0.2)
    return save(fig, path) if own else None


def tsne_panels(panels: Mapping[str, tuple], path, *, title: str | None = None,
                class_names: Sequence[str] | None = None) -> pathlib.Path:
    """Side-by-side t-SNE scatters, one legend of the classes: panels[name] = (embedding (N, 2),
    labels (N,)) or (embedding, labels, scores) with scores as in ``tsne_scatter``."""
    names = list(panels)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = figure(rows, cols, figsize=(3.2 * cols + 1.0, 3.4 * rows), squeeze=False)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    k = 1
    for ax, name in zip(axes.ravel(), names):
        emb, labels, *rest = panels[name]
        labels = np.asarray(labels)
        k = max(k, int(labels.max()) + 1 if labels.size else 1)
        tsne_scatter(np.asarray(emb), labels, None, title=name, scores=rest[0] if rest else None,
                     ax=ax, legend=False)
    fig.legend(handles=_class_handles(k, class_names), loc="center left", bbox_to_anchor=(1.0, 0.5),
               fontsize=7, frameon=False, title="class", title_fontsize=7, ncol=1 if k <= 20 else 2)
    if title:   # 0.6 inch above the top axes (0.88 of the height): over their two-line titles
        fig.suptitle(title, fontsize=10, y=0.88 + 0.6 / fig.get_figheight())
    return save(fig, path)


def grouped_bars(values: Mapping[str, Mapping[str, tuple[float, float]]], path, *, ylabel: str,
                 title: str | None = None) -> pathlib.Path:
    """values[group][series] = (mean, std): bars per group (e.g. dataset), one colour per series."""
    groups = list(values)
    series = list(dict.fromkeys(s for g in groups for s in values[g]))
    width = 0.8 / max(1, len(series))
    fig, ax = figure(figsize=(1.6 + 1.5 * len(groups), 3.4))
    x = np.arange(len(groups))
    for i, s in enumerate(series):
        means = [values[g].get(s, (np.nan, 0))[0] for g in groups]
        stds = [values[g].get(s, (np.nan, 0))[1] for g in groups]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=stds, label=s, capsize=2)
        for b, m, sd in zip(bars, means, stds):
            if np.isfinite(m):       # above the error bar's cap
                ax.annotate(f"{m:.3g}", (b.get_x() + b.get_width() / 2, m + sd),
                            ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, [textwrap.fill(g, 16) for g in groups])    # long names on two lines
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=min(4, len(series)))
    if title:
        ax.set_title(title, fontsize=10)
    return save(fig, path)


def curves(xs: Sequence[float], ys: Mapping[str, Sequence[float]], path, *, xlabel: str = "epoch",
           title: str | None = None) -> pathlib.Path:
    """One panel per named curve in ``ys`` (each over ``xs``); e.g. PSNR and NMI per epoch."""
    fig, axes = figure(1, len(ys), figsize=(3.6 * len(ys), 3), squeeze=False)
    for ax, (name, y) in zip(axes[0], ys.items()):
        ax.plot(xs, y, marker="o", ms=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name)
    if title:
        fig.suptitle(title, fontsize=10)
    return save(fig, path)


def feature_maps(maps: Mapping[str, np.ndarray], path, *, image: np.ndarray | None = None,
                 image_label: str = "input", row_labels: Mapping[str, str] | None = None,
                 scale_groups: Sequence[Sequence[str]] | None = None, title: str | None = None,
                 caption: str | None = None, colorbar_label: str = "activation",
                 max_channels: int = 8) -> pathlib.Path:
    """Feature maps of one image: one row per named map (H, W, C), one column per channel.

    Rows are labelled ``row_labels[name]`` (default: the name and the map's shape) and columns
    ``ch 1..``; the first ``max_channels`` channels are shown. ``scale_groups``: lists of map names
    (consecutive rows) that share one colour scale and one colorbar (default: each row its own),
    so that maps of one group compare by colour. ``image`` (H, W[, C] in [0, 1]): the input the
    maps come from, drawn left of the grid under ``image_label``. ``caption``: a line under the
    title saying what rows and columns are.
    """
    names = list(maps)
    c = min(max_channels, max(np.shape(m)[-1] for m in maps.values()))
    groups = [list(g) for g in scale_groups] if scale_groups else [[n] for n in names]
    row_labels = row_labels or {}
    lead = 1.4 if image is not None else 0.0
    fig = Figure(figsize=(lead + 0.95 * c + 1.9, 1.0 * len(names) + 1.0))
    FigureCanvasAgg(fig)
    outer = fig.add_gridspec(1, 2 if image is not None else 1, wspace=0.55,
                             width_ratios=[lead, 0.95 * c + 0.4] if image is not None else None)
    if image is not None:
        left = outer[0, 0].subgridspec(3, 1, height_ratios=[1, 2, 1])
        ax = fig.add_subplot(left[1, 0])
        ax.imshow(_gray(image), cmap="gray", vmin=0, vmax=1)
        _no_ticks(ax)
        ax.set_title(image_label, fontsize=7)
    grid = outer[0, -1].subgridspec(len(names), c + 1, width_ratios=[1] * c + [0.15],
                                    wspace=0.08, hspace=0.15)
    for group in groups:
        rows = [names.index(n) for n in group]
        vals = [np.asarray(maps[n], np.float32) for n in group]
        vmin = min(0.0, min(float(v.min()) for v in vals))
        vmax = max(float(v.max()) for v in vals)
        vmax = vmax if vmax > vmin else vmin + 1.0
        im = None
        for i, m in zip(rows, vals):
            for j in range(c):
                ax = fig.add_subplot(grid[i, j])
                _no_ticks(ax)
                if j < m.shape[-1]:
                    im = ax.imshow(m[..., j], cmap="viridis", vmin=vmin, vmax=vmax,
                                   interpolation="nearest")
                else:
                    ax.axis("off")
                if i == 0:
                    ax.set_title(f"ch {j + 1}", fontsize=7)
                if j == 0:
                    label = row_labels.get(names[i], f"{names[i]}\n{'x'.join(map(str, m.shape))}")
                    ax.set_ylabel(label, fontsize=7, rotation=0, ha="right", va="center", labelpad=4)
        cax = fig.add_subplot(grid[min(rows):max(rows) + 1, c])
        cb = fig.colorbar(im, cax=cax)
        cb.ax.tick_params(labelsize=6)
        cb.set_label(colorbar_label, fontsize=6)
    head = "\n".join(t for t in (title, caption) if t)
    if head:
        fig.suptitle(head, fontsize=9)
    return save(fig, path)
