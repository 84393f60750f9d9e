"""Run folders and result files: never overwrite a previous run, never leave a half-written file.

A run folder is complete when it holds ``metrics.json``; that file is written last, atomically.
"""

from __future__ import annotations

import json
import os
import pathlib
import tempfile
from typing import Any

import numpy as np


_UMASK = os.umask(0)
os.umask(_UMASK)


class RunExistsError(FileExistsError):
    """The output folder already holds a run and --resume was not given."""


def prepare_run_dir(out: str | os.PathLike, *, resume: bool = False) -> pathlib.Path:
    """Creates ``out`` for a new run, or checks it for ``--resume``.

    A non-empty ``out`` without ``resume`` raises RunExistsError (nothing is touched);
    ``resume`` on a folder that does not exist raises FileNotFoundError.
    """
    out = pathlib.Path(out)
    if resume:
        if not out.is_dir():
            raise FileNotFoundError(f"--resume given but {out} does not exist; drop --resume to start")
        return out
    if out.exists() and any(out.iterdir()):
        raise RunExistsError(
            f"{out} already holds a run; pass --resume to continue it or choose another --out")
    out.mkdir(parents=True, exist_ok=True)
    return out


def is_complete(out: str | os.PathLike) -> bool:
    """A run is complete once its ``metrics.json`` exists (written last, atomically)."""
    return (pathlib.Path(out) / "metrics.json").is_file()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` through a temp file + rename, so readers never see half of it."""
    path = pathlib.Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
        os.chmod(tmp, 0o666 & ~_UMASK)  # mkstemp makes 0600; give the usual mode
        os.replace(tmp, path)
    except BaseException:
        pathlib.Path(tmp).unlink(missing_ok=True)
        raise


def _jsonable(x: Any) -> Any:
    if isinstance(x, dict):
        return {str(k): _jsonable(v) for k, v in x.items()}
    if isinstance(x, (list, tuple)):
        return [_jsonable(v) for v in x]
    if isinstance(x, (np.generic, np.ndarray)) or hasattr(x, "__array__"):
        a = np.asarray(x)
        return a.item() if a.ndim == 0 else a.tolist()
    if isinstance(x, pathlib.Path):
        return str(x)
    return x


def write_json(path: str | os.PathLike, obj: Any) -> None:
    """Atomic JSON write; numpy/jax scalars and arrays become plain numbers and lists."""
    atomic_write_text(path, json.dumps(_jsonable(obj), indent=2, allow_nan=True) + "\n")


def read_json(path: str | os.PathLike) -> Any:
    return json.loads(pathlib.Path(path).read_text())


def mean_std(values) -> dict[str, float]:
    """``{"mean", "std"}`` of a list of numbers (population std, ddof=0; nan-free input expected)."""
    a = np.asarray(values, dtype=np.float64)
    return {"mean": float(a.mean()), "std": float(a.std())}
