"""Figures: drawn without pyplot or a global backend, labelled, with a public API for the studies."""

import os
import pathlib
import re
import subprocess
import sys
import textwrap

import numpy as np
import pytest

from aeclust_jax import viz

REPO = pathlib.Path(__file__).resolve().parents[1]


def test_importing_and_plotting_sets_no_matplotlib_backend(tmp_path):
    code = textwrap.dedent(f"""
        import importlib, pkgutil, sys
        import numpy as np
        import aeclust_jax
        for m in pkgutil.walk_packages(aeclust_jax.__path__, "aeclust_jax."):
            importlib.import_module(m.name)
        from aeclust_jax import viz
        rng = np.random.default_rng(0)
        viz.tsne_scatter(rng.normal(size=(30, 2)), np.arange(30) % 3, r"{tmp_path}/t.png")
        viz.feature_maps({{"a": rng.random((4, 4, 3))}}, r"{tmp_path}/f.png")
        import matplotlib
        from matplotlib import rcsetup
        assert "matplotlib.pyplot" not in sys.modules, "pyplot imported"
        assert dict.__getitem__(matplotlib.rcParams, "backend") is rcsetup._auto_backend_sentinel
        print("ok")
    """)
    env = {k: v for k, v in os.environ.items() if k != "MPLBACKEND"}
    env.update(JAX_PLATFORMS="cpu", PYTHONPATH=str(REPO))
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                       timeout=300)
    assert p.returncode == 0 and p.stdout.strip() == "ok", p.stderr[-3000:]


def test_no_private_helpers_across_modules_no_backend_calls_no_legacy_keys():
    legacy, use = "PRNG" + "Key(", "matplotlib" + ".use("
    for folder in ("aeclust_jax", "benchmarks", "scripts", "tests"):
        for path in (REPO / folder).rglob("*.py"):
            text = path.read_text()
            assert legacy not in text, f"{path}: use jax.random.key (typed keys)"
            assert not re.search(r"\bviz\._\w", text), f"{path}: use viz's public API"
            assert use not in text, f"{path}: no global backend"


def test_tsne_scatter_legend_names_the_classes_and_title_has_scores(tmp_path):
    rng = np.random.default_rng(0)
    emb, labels = rng.normal(size=(60, 2)), np.arange(60) % 3
    fig, ax = viz.figure()
    viz.tsne_scatter(emb, labels, None, title="latent", class_names=["cat", "dog", "eel"],
                     scores={"NMI": 0.5, "ACC": 0.25}, ax=ax)
    assert [t.get_text() for t in ax.get_legend().get_texts()] == ["cat", "dog", "eel"]
    assert ax.get_title() == "latent\nNMI 0.500, ACC 0.250"
    assert not fig.axes[1:], "no colorbar axes"
    path = viz.tsne_panels({"a": (emb, labels, {"NMI": 0.1}), "b": (emb, labels)}, tmp_path / "p.png",
                           class_names=["cat", "dog", "eel"], title="panels")
    assert path.stat().st_size > 1000


def test_feature_maps_are_labelled_with_a_colorbar_per_scale_group(tmp_path, monkeypatch):
    rng = np.random.default_rng(0)
    maps = {"latent_path_1": rng.random((4, 4, 8)), "skip_branch_1": 3 * rng.random((4, 4, 8)),
            "latent_path_2": rng.random((8, 8, 8)), "skip_branch_2": rng.random((8, 8, 8))}
    saved = []
    monkeypatch.setattr(viz, "save", lambda fig, path, **kw: saved.append(fig) or path)
    viz.feature_maps(maps, tmp_path / "f.png", image=rng.random((28, 28, 1)), image_label="test image 0",
                     row_labels={k: k.replace("_", " ") for k in maps}, title="t", caption="rows: ...",
                     scale_groups=[["latent_path_1", "skip_branch_1"], ["latent_path_2", "skip_branch_2"]])
    fig, = saved
    texts = {t.get_text() for ax in fig.axes for t in (ax.title, ax.yaxis.label)}
    assert {"test image 0", "ch 1", "ch 8", "latent path 1", "skip branch 2"} <= texts
    colorbars = [ax for ax in fig.axes if ax.yaxis.label.get_text() == "activation"]   # their label
    assert len(colorbars) == 2 and fig._suptitle.get_text() == "t\nrows: ..."
    # one colour scale per group: the skip branch's larger values set junction 1's maximum
    images = [ax.images[0] for ax in fig.axes if ax.images and ax.get_title() == "ch 1"]
    assert images[0].get_clim()[1] == pytest.approx(maps["skip_branch_1"].max(), rel=1e-6)


def test_grouped_bars_wrap_long_group_names_and_label_above_the_error_bars(tmp_path, monkeypatch):
    saved = []
    monkeypatch.setattr(viz, "save", lambda fig, path, **kw: saved.append(fig) or path)
    values = {"CAEv1": {"nmi": (0.10, 0.02), "knn": (0.30, 0.0)},
              "EfficientNet-Lite0 (ImageNet)": {"nmi": (0.39, 0.05)}}
    viz.grouped_bars(values, tmp_path / "b.png", ylabel="score")
    ax, = saved[0].axes
    assert [t.get_text() for t in ax.get_xticklabels()] == ["CAEv1", "EfficientNet-\nLite0 (ImageNet)"]
    labels = {a.get_text(): a.xy[1] for a in ax.texts}
    assert labels == pytest.approx({"0.1": 0.12, "0.3": 0.30, "0.39": 0.44})   # mean + std
