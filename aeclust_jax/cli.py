"""Shared command-line plumbing for scripts/: dispatch to a study, one clear error, non-zero exit."""

from __future__ import annotations

import importlib
import sys
from typing import Callable, Sequence

# model name -> study module (aeclust_jax.studies.<module>) that trains it.
MODEL_STUDY = {
    "cae": "skip_ae", "cae_skip": "skip_ae", "dae": "skip_ae", "dae_skip": "skip_ae",
    "mlp": "pretrain", "mlp_ae": "pretrain",
    "dsc": "dsc",
}
# study id -> study module, for scripts/reproduce.py.
STUDY_MODULE = {"s1": "skip_ae", "s3": "pretrain", "s4": "dsc"}


class UsageError(ValueError):
    """Bad command-line input (unknown name, wrong combination of options)."""


def study_module(name: str, table: dict[str, str], what: str):
    """Imports the study module registered for ``name`` in ``table``; unknown names list the choices."""
    if name not in table:
        raise UsageError(f"unknown {what} {name!r}; choices: {', '.join(sorted(table))}")
    return importlib.import_module(f"aeclust_jax.studies.{table[name]}")


def run_main(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Runs ``main(argv)``; a user-facing error prints one line ``error: ...`` and returns 2."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        return int(main(argv) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except (ValueError, FileNotFoundError, FileExistsError, NotADirectoryError, PermissionError,
            KeyError, RuntimeError) as e:
        # Library code raises these with messages that name the file/option and the choices.
        msg = e.args[0] if isinstance(e, KeyError) and e.args else e
        print(f"error: {msg}", file=sys.stderr)
        return 2


def peek_option(argv: Sequence[str], option: str) -> str | None:
    """The value of ``--option V`` or ``--option=V`` in argv, without parsing the rest."""
    for i, a in enumerate(argv):
        if a == option and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(option + "="):
            return a.split("=", 1)[1]
    return None
