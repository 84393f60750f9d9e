"""Run folders and result files: never overwrite a previous run, never leave a half-written file.

A run folder is complete when it holds ``metrics.json``; that file is written last, atomically.
"""

from __future__ import annotations

import hashlib
import json
import os
import pathlib
import tempfile
from typing import Any, Iterable, Mapping

import numpy as np

from aeclust_jax.config import RENAMED, ConfigError
from aeclust_jax.errors import UserError


_UMASK = os.umask(0)
os.umask(_UMASK)


class RunExistsError(UserError, FileExistsError):
    """The output folder already holds a run and --resume was not given."""


class RunDirError(UserError, FileNotFoundError):
    """The output folder cannot be used: missing for --resume, a file, or not creatable."""


# The "scale" field of every JSON file with NMI, ACC, ARI or accuracy values: they are stored on
# the 0-1 scale (markdown tables may show 0-100, and then say so in their header row).
SCALE = "0-1: nmi, acc, ari, accuracy and their variants are fractions (ari in [-1, 1]), not percent"


def check_run_dir(out: str | os.PathLike, *, resume: bool = False,
                  resumable: bool = True) -> pathlib.Path:
    """Checks that ``out`` can take a new run (or be resumed) without touching anything.

    A non-empty ``out`` without ``resume`` raises RunExistsError; ``resume`` on a folder that does
    not exist, or an ``out`` that is a file, raises RunDirError (``resumable``: whether the CLI has
    a --resume to suggest). Call it before loading data, and
    ``prepare_run_dir`` only once the config and the data are validated.
    """
    out = pathlib.Path(out)
    if out.exists() and not out.is_dir():
        raise RunDirError(f"--out {out} is a file, not a folder")
    if resume:
        if not out.is_dir():
            raise RunDirError(f"--resume given but {out} does not exist; drop --resume to start")
        return out
    if out.exists() and any(out.iterdir()):
        hint = "pass --resume to continue it or choose another --out" if resumable else "choose another --out"
        raise RunExistsError(f"{out} already holds a run; {hint}")
    return out


def prepare_run_dir(out: str | os.PathLike, *, resume: bool = False,
                    resumable: bool = True) -> pathlib.Path:
    """``check_run_dir``, then creates ``out`` (and its parents) for a new run. In a
    multi-process run every process checks first (a barrier), then process 0 creates it."""
    from aeclust_jax.train.sharding import is_main_process, sync
    out = check_run_dir(out, resume=resume, resumable=resumable)
    sync(f"run folder {out} checked")
    if not resume and is_main_process():
        make_dir(out)
    return out


def make_dir(path: str | os.PathLike) -> pathlib.Path:
    """``mkdir -p path``; an OS refusal (permissions, a file in the way) raises RunDirError."""
    path = pathlib.Path(path)
    try:
        path.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise RunDirError(f"cannot create folder {path}: {e.strerror or e}") from e
    return path


def is_complete(out: str | os.PathLike) -> bool:
    """A run is complete once its ``metrics.json`` exists (written last, atomically)."""
    return (pathlib.Path(out) / "metrics.json").is_file()


def atomic_write_text(path: str | os.PathLike, text: str) -> None:
    """Writes ``text`` to ``path`` through a temp file + rename, so readers never see half of it.
    In a multi-process run only process 0 writes (the others return at once)."""
    from aeclust_jax.train.sharding import is_main_process
    if not is_main_process():
        return
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


def write_config(path: str | os.PathLike, config: Mapping[str, Any]) -> None:
    """A run's ``config.yaml`` (atomic; tuples become lists, keys in the given order)."""
    import yaml
    atomic_write_text(path, yaml.safe_dump(_jsonable(dict(config)), sort_keys=False))


def read_config(path: str | os.PathLike) -> dict[str, Any]:
    """The mapping in a run's ``config.yaml``; a missing file raises RunDirError."""
    import yaml
    path = pathlib.Path(path)
    if not path.is_file():
        raise RunDirError(f"{path} does not exist: not a run folder of this project")
    return yaml.safe_load(path.read_text()) or {}


def config_diff(saved: Mapping[str, Any], new: Mapping[str, Any], *,
                may_differ: Iterable[str] = ()) -> list[str]:
    """``"field (saved -> new)"`` for every field outside ``may_differ`` whose value differs. A
    saved config written before a rename (config.RENAMED) is read with the new names."""
    skip = set(may_differ)
    saved = {(RENAMED[k] if k in RENAMED and k not in new and RENAMED[k] in new else k): v
             for k, v in saved.items()}
    return [f"{k} ({saved.get(k)!r} -> {new.get(k)!r})" for k in sorted(set(saved) | set(new))
            if k not in skip and _jsonable(saved.get(k)) != _jsonable(new.get(k))]


def check_resume_config(saved: Mapping[str, Any], new: Mapping[str, Any], where, *,
                        may_differ: Iterable[str] = ("epochs",)) -> None:
    """--resume: raises ConfigError naming every field (outside ``may_differ``) in which the new
    config differs from the one saved in ``where``."""
    diff = config_diff(saved, new, may_differ=may_differ)
    if diff:
        raise ConfigError(f"--resume: the config differs from {where} in {', '.join(diff)}; only "
                          f"{', '.join(sorted(may_differ))} may change on resume (start a new --out)")


def finished_run(run_dir: str | os.PathLike, config: Mapping[str, Any], *,
                 may_differ: Iterable[str] = ()) -> dict | None:
    """A reproduction's reuse of one run folder: the run's metrics when it is complete and was
    made with ``config`` (apart from ``may_differ``); None when it is not complete. A complete run
    made with other settings raises ConfigError naming the fields: its numbers must not stand in
    a table of another setting."""
    run_dir = pathlib.Path(run_dir)
    if not is_complete(run_dir):
        return None
    diff = config_diff(read_config(run_dir / "config.yaml"), config, may_differ=may_differ)
    if diff:
        raise ConfigError(f"{run_dir} holds a finished run made with other settings: "
                          f"{', '.join(diff)}; choose another --runs folder (or the same settings)")
    return read_json(run_dir / "metrics.json")


def array_digest(array) -> str:
    """sha1 of an array's shape, dtype and bytes: the fingerprint of a data subset."""
    a = np.ascontiguousarray(np.asarray(array))
    h = hashlib.sha1(f"{a.shape}{a.dtype}".encode())
    h.update(a.tobytes())
    return h.hexdigest()


def claim_artifact_dir(folder: str | os.PathLike, fields: Mapping[str, Any], what: str, *,
                       create: bool = True) -> pathlib.Path:
    """Ties a cache folder of an intermediate artifact to everything that determines it.

    The first call writes ``folder/artifact.json`` (``fields``: config values, data digest, recipe
    version); later calls with equal fields return the folder (reuse it), different fields raise
    ConfigError naming them, and a non-empty folder without artifact.json is refused (its
    provenance is unknown). Never silently reuses something built from other inputs.
    ``create=False`` only checks (a CLI calls it before it writes anything).
    """
    folder = pathlib.Path(folder)
    record = folder / "artifact.json"
    fields = _jsonable(dict(fields))
    if record.is_file():
        diff = config_diff(read_json(record), fields)
        if diff:
            raise ConfigError(f"{what} in {folder} was built with other inputs: {', '.join(diff)}; "
                              "use another folder or delete this one")
        return folder
    if folder.exists() and any(folder.iterdir()):
        raise ConfigError(f"{folder} is not empty and has no artifact.json: not a {what} folder "
                          "made by this version; use another folder")
    if not create:
        return folder
    make_dir(folder)
    write_json(record, fields)
    return folder


def check_resume(out: str | os.PathLike, config: Mapping[str, Any], *,
                 may_differ: Iterable[str] = ("epochs",)) -> None:
    """``--resume`` of the run in ``out``: ``check_resume_config`` against its config.yaml."""
    saved = pathlib.Path(out) / "config.yaml"
    check_resume_config(read_config(saved), config, saved, may_differ=may_differ)
