"""Packaging: the wheel holds every subpackage and the configs, and works once installed."""

import json
import os
import pathlib
import shutil
import site
import subprocess
import sys
import sysconfig
import tomllib

import pytest

from tiny_data import write_tiny_mnist

REPO = pathlib.Path(__file__).resolve().parents[1]
SCRIPTS = ("aeclust-train", "aeclust-reproduce", "aeclust-data")


def test_pyproject_lists_every_subpackage_and_the_console_scripts():
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())
    listed = set(meta["tool"]["setuptools"]["packages"])
    on_disk = {".".join(p.parent.relative_to(REPO).parts) for p in (REPO / "aeclust_jax").rglob("__init__.py")}
    assert on_disk | {"aeclust_jax.configs"} == listed
    assert meta["tool"]["setuptools"]["package-dir"]["aeclust_jax.configs"] == "configs"
    assert set(meta["project"]["scripts"]) == set(SCRIPTS)


def test_source_checkout_finds_the_configs():
    from aeclust_jax.config import config_dir
    assert config_dir() == REPO / "configs" and (config_dir() / "s1_mnist.yaml").is_file()


def _run(cmd, env, cwd, timeout=300):
    p = subprocess.run([str(c) for c in cmd], capture_output=True, text=True, env=env, cwd=cwd,
                       timeout=timeout)
    assert p.returncode == 0, f"{cmd}\n{p.stdout[-2000:]}\n{p.stderr[-3000:]}"
    return p


@pytest.mark.slow
def test_wheel_installs_and_runs(tmp_path):
    """Build the wheel from the sources, install it (not editable) into a fresh venv that reuses
    the installed dependencies, run the console scripts from outside the checkout."""
    src = tmp_path / "src"
    src.mkdir()
    for name in ("pyproject.toml", "README.md"):
        shutil.copy(REPO / name, src / name)
    for name in ("aeclust_jax", "configs"):
        shutil.copytree(REPO / name, src / name, ignore=shutil.ignore_patterns("__pycache__"))
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "AECLUST_MANUAL_DIR")}
    env["JAX_PLATFORMS"] = "cpu"
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "--no-index",
          "-w", tmp_path / "dist", src], env, tmp_path)
    wheel, = (tmp_path / "dist").glob("aeclust_jax-*.whl")

    venv = tmp_path / "venv"
    _run([sys.executable, "-m", "venv", "--system-site-packages", "--without-pip", venv], env, tmp_path)
    py = venv / ("Scripts/python.exe" if os.name == "nt" else "bin/python")
    bin_dir = py.parent
    # The dependencies of this interpreter (a venv's own site-packages are not "system" ones);
    # a plain path in a .pth file runs none of the .pth files there (no editable finder).
    purelib = pathlib.Path(_run([py, "-c", "import sysconfig; print(sysconfig.get_path('purelib'))"],
                                env, tmp_path).stdout.strip())
    deps = list(dict.fromkeys(site.getsitepackages() + [sysconfig.get_path("purelib")]))
    (purelib / "_aeclust_test_deps.pth").write_text("\n".join(deps) + "\n")
    _run([sys.executable, "-m", "pip", "--python", py, "install", "--no-deps", "--no-index",
          "--force-reinstall", wheel], env, tmp_path)

    where = json.loads(_run([py, "-c", "import json, aeclust_jax, aeclust_jax.config as c; "
                                       "from aeclust_jax.models.layers import native; print(json.dumps("
                                       "[aeclust_jax.__file__, str(c.config_dir())] + "
                                       "[str(p) for p in native._SOURCES + native._HEADERS]))"],
                            env, tmp_path).stdout)
    assert all(pathlib.Path(w).resolve().is_relative_to(venv.resolve()) for w in where), where
    assert (pathlib.Path(where[1]) / "s1_mnist.yaml").is_file()
    assert len(where) == 5 and all(pathlib.Path(w).is_file() for w in where[2:])   # the C++ ships
    for script in SCRIPTS:
        assert (bin_dir / script).is_file(), script

    help_text = _run([bin_dir / "aeclust-train", "--help"], env, tmp_path).stdout
    assert "usage: aeclust-train" in help_text and "--model dsc" in help_text and "mlp_ae" in help_text

    # a 1-epoch tiny run on tiny MNIST files, with the config shipped in the wheel (s1_mnist.yaml)
    write_tiny_mnist(tmp_path / "raw" / "mnist")
    env.update(AECLUST_MANUAL_DIR=str(tmp_path / "raw"), AECLUST_DATA_DIR=str(tmp_path / "data"))
    out = tmp_path / "run"
    p = _run([bin_dir / "aeclust-train", "--model", "cae", "--dataset", "mnist", "--epochs", "1",
              "--train-limit", "64", "--cluster-limit", "40", "--tsne-backend", "jax",
              "--dataset-option", "download=false", "--dataset-option", "verify_checksums=false",
              "--no-progress", "--out", out], env, tmp_path, timeout=600)
    assert f"wrote {out}" in p.stdout
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["epochs"] == 1 and 0 <= metrics["nmi"] <= 1
    assert "optimizer: adadelta" in (out / "config.yaml").read_text()
