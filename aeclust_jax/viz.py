"""matplotlib figures: reconstruction grids, t-SNE scatter, bar charts, curves, feature maps.

Every function writes one PNG to ``path`` (parent folders created) and closes its figure; inputs
are numpy arrays (images (N, H, W, C) in [0, 1]). The Agg backend is used, no display needed.
"""

from __future__ import annotations

import pathlib
from typing import Mapping, Sequence

import matplotlib

matplotlib.use("Agg")
import matplotlib.pyplot as plt  # noqa: E402
import numpy as np  # noqa: E402


def _save(fig, path) -> pathlib.Path:
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def _gray(img: np.ndarray) -> np.ndarray:
    img = np.asarray(img, np.float32)
    return img[..., 0] if img.ndim == 3 and img.shape[-1] == 1 else img


def reconstruction_grid(rows: Sequence[np.ndarray], path, *, row_names: Sequence[str] | None = None,
                        title: str | None = None, n: int = 10) -> pathlib.Path:
    """One row per image set (each (N, H, W, C) in [0, 1]), first ``n`` columns."""
    n = min(n, min(len(r) for r in rows))
    fig, axes = plt.subplots(len(rows), n, figsize=(1.1 * n, 1.15 * len(rows)), squeeze=False)
    for i, imgs in enumerate(rows):
        for j in range(n):
            ax = axes[i, j]
            ax.imshow(_gray(imgs[j]), cmap="gray", vmin=0, vmax=1)
            ax.set_xticks([]), ax.set_yticks([])
        if row_names:
            axes[i, 0].set_ylabel(row_names[i], fontsize=8)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def tsne_scatter(emb: np.ndarray, labels: np.ndarray, path, *, title: str | None = None,
                 class_names: Sequence[str] | None = None, ax=None) -> pathlib.Path | None:
    """2-D embedding (N, 2) coloured by integer labels (N,). With ``ax`` draws there, saves nothing."""
    own = ax is None
    if own:
        fig, ax = plt.subplots(figsize=(5, 4.5))
    labels = np.asarray(labels)
    k = int(labels.max()) + 1 if labels.size else 1
    cmap = plt.get_cmap("tab10" if k <= 10 else "tab20", k)
    sc = ax.scatter(emb[:, 0], emb[:, 1], c=labels, cmap=cmap, s=3, vmin=-0.5, vmax=k - 0.5)
    ax.set_xticks([]), ax.set_yticks([])
    if title:
        ax.set_title(title, fontsize=9)
    if not own:
        return None
    cb = fig.colorbar(sc, ax=ax, ticks=range(k))
    if class_names is not None and len(class_names) == k:
        cb.ax.set_yticklabels(list(class_names), fontsize=6)
    return _save(fig, path)


def grouped_bars(values: Mapping[str, Mapping[str, tuple[float, float]]], path, *, ylabel: str,
                 title: str | None = None) -> pathlib.Path:
    """values[group][series] = (mean, std): bars per group (e.g. dataset), one colour per series."""
    groups = list(values)
    series = list(dict.fromkeys(s for g in groups for s in values[g]))
    width = 0.8 / max(1, len(series))
    fig, ax = plt.subplots(figsize=(1.6 + 1.5 * len(groups), 3.4))
    x = np.arange(len(groups))
    for i, s in enumerate(series):
        means = [values[g].get(s, (np.nan, 0))[0] for g in groups]
        stds = [values[g].get(s, (np.nan, 0))[1] for g in groups]
        bars = ax.bar(x + (i - (len(series) - 1) / 2) * width, means, width, yerr=stds, label=s, capsize=2)
        for b, m in zip(bars, means):
            if np.isfinite(m):
                ax.annotate(f"{m:.3g}", (b.get_x() + b.get_width() / 2, b.get_height()),
                            ha="center", va="bottom", fontsize=6)
    ax.set_xticks(x, groups)
    ax.set_ylabel(ylabel)
    ax.legend(fontsize=7, ncol=min(4, len(series)))
    if title:
        ax.set_title(title, fontsize=10)
    return _save(fig, path)


def curves(xs: Sequence[float], ys: Mapping[str, Sequence[float]], path, *, xlabel: str = "epoch",
           title: str | None = None) -> pathlib.Path:
    """One panel per named curve in ``ys`` (each over ``xs``); e.g. PSNR and NMI per epoch."""
    fig, axes = plt.subplots(1, len(ys), figsize=(3.6 * len(ys), 3), squeeze=False)
    for ax, (name, y) in zip(axes[0], ys.items()):
        ax.plot(xs, y, marker="o", ms=3)
        ax.set_xlabel(xlabel)
        ax.set_ylabel(name)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def feature_maps(maps: Mapping[str, np.ndarray], path, *, title: str | None = None,
                 max_channels: int = 8) -> pathlib.Path:
    """One row per named map (H, W, C): its first ``max_channels`` channels, each normalised."""
    names = list(maps)
    c = min(max_channels, max(m.shape[-1] for m in maps.values()))
    fig, axes = plt.subplots(len(names), c, figsize=(1.05 * c, 1.15 * len(names)), squeeze=False)
    for i, name in enumerate(names):
        m = np.asarray(maps[name], np.float32)
        for j in range(c):
            ax = axes[i, j]
            ax.set_xticks([]), ax.set_yticks([])
            if j < m.shape[-1]:
                ch = m[..., j]
                span = ch.max() - ch.min()
                ax.imshow((ch - ch.min()) / span if span > 0 else ch * 0, cmap="viridis")
        axes[i, 0].set_ylabel(name, fontsize=7)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)


def tsne_panels(panels: Mapping[str, tuple[np.ndarray, np.ndarray]], path, *,
                title: str | None = None) -> pathlib.Path:
    """Side-by-side t-SNE scatters: panels[name] = (embedding (N, 2), labels (N,))."""
    names = list(panels)
    cols = min(4, len(names))
    rows = -(-len(names) // cols)
    fig, axes = plt.subplots(rows, cols, figsize=(3.2 * cols, 3.2 * rows), squeeze=False)
    for ax in axes.ravel()[len(names):]:
        ax.axis("off")
    for ax, name in zip(axes.ravel(), names):
        emb, labels = panels[name]
        tsne_scatter(np.asarray(emb), np.asarray(labels), None, title=name, ax=ax)
    if title:
        fig.suptitle(title, fontsize=10)
    return _save(fig, path)
