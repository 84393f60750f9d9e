"""The command-line tools: ``aeclust-train``, ``aeclust-reproduce``, ``aeclust-data``.

The same entry points serve ``scripts/train.py``, ``scripts/reproduce.py`` and
``scripts/build_data.py`` (thin wrappers) and the console scripts of an installed package.
Every parser comes from ``make_parser``: no abbreviated options (``--epoch`` is an error, not
``--epochs``), defaults in ``--help``, and parse errors raised as UsageError. ``run_main`` turns
any UserError into one line ``error: ...`` and exit status 2; other exceptions are bugs and keep
their traceback (exit 1).
"""

from __future__ import annotations

import argparse
import importlib
import os
import pathlib
import sys
from typing import Callable, Sequence

from aeclust_jax.errors import UsageError, UserError
from aeclust_jax.host_memory import keep_freed_memory

__all__ = ["MODEL_STUDY", "STUDY_MODULE", "UsageError", "make_parser", "prog_name", "run_main",
           "enable_compile_cache",
           "study_module", "train_main", "reproduce_main", "data_main", "peek_option"]

# The registry of studies and their models: aeclust_jax/studies/__init__.py.
from aeclust_jax.studies import MODEL_STUDY, STUDY_MODULE, STUDY_TITLE  # noqa: E402


# ----------------------------------------------------------------------------- parsers

class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter, argparse.RawDescriptionHelpFormatter):
    """Descriptions kept as written; ``(default: X)`` appended to every option with a real default.

    Options whose default is None or False (flags; values that come from a config file) and
    options whose help already names its default get nothing appended.
    """

    def _get_help_string(self, action):
        text = action.help or ""
        d = action.default
        if (d is None or d is False or d is argparse.SUPPRESS or (isinstance(d, (list, tuple)) and not d)
                or "default" in text.lower() or not (action.option_strings or action.nargs in ("?", "*"))):
            return action.help
        if isinstance(d, (list, tuple)):
            return f"{text} (default: {' '.join(map(str, d))})".replace("%", "%%").lstrip()
        return super()._get_help_string(action)


class ArgumentParser(argparse.ArgumentParser):
    """argparse with ``allow_abbrev=False``, HelpFormatter, and errors raised as UsageError
    (one line, exit 2 through run_main) instead of argparse's usage dump."""

    def __init__(self, *args, **kwargs):
        kwargs.setdefault("allow_abbrev", False)
        kwargs.setdefault("formatter_class", HelpFormatter)
        super().__init__(*args, **kwargs)

    def error(self, message):
        raise UsageError(f"{message} (see {self.prog} --help)")


def make_parser(prog: str | None = None, description: str | None = None, **kwargs) -> ArgumentParser:
    """The parser every CLI of the project uses (see ArgumentParser)."""
    return ArgumentParser(prog=prog, description=description, **kwargs)


def prog_name(script: str) -> str:
    """The name the user typed: ``aeclust-train`` for the console script, else ``script``."""
    argv0 = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else ""
    return argv0 if argv0.startswith("aeclust-") else script


def study_module(name: str, table: dict[str, str], what: str):
    """Imports the study module registered for ``name`` in ``table``; unknown names list the choices."""
    if name not in table:
        raise UsageError(f"unknown {what} {name!r}; choices: {', '.join(sorted(table))}")
    return importlib.import_module(f"aeclust_jax.studies.{table[name]}")


# ----------------------------------------------------------------------------- running a main

XLA_CACHE_ENV = "AECLUST_XLA_CACHE"
XLA_CACHE_OFF = ("0", "off", "false", "no", "none")


def enable_compile_cache() -> str | None:
    """Keeps the tools' XLA compilations on disk, so a rerun, a ``--resume`` or the next model of
    a reproduction with the same shapes loads its train step instead of compiling it again
    (seconds each on a CPU). The folder: ``$JAX_COMPILATION_CACHE_DIR`` when set, else
    ``$AECLUST_XLA_CACHE``, else ``~/.cache/aeclust_jax/xla``; ``AECLUST_XLA_CACHE=off`` turns
    it off. A cached executable is the compiled program itself: the same numbers. The library
    never calls this (importing ``aeclust_jax`` changes no JAX setting); the command-line tools
    do, and their worker processes inherit the folder. Returns the folder, or None when off."""
    value = os.environ.get(XLA_CACHE_ENV, "")
    if value.strip().lower() in XLA_CACHE_OFF:
        return None
    default = pathlib.Path.home() / ".cache" / "aeclust_jax" / "xla"
    path = os.environ.setdefault("JAX_COMPILATION_CACHE_DIR", value or str(default))
    import jax
    jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.5)
    return path


def run_main(main: Callable[[Sequence[str]], int | None], argv: Sequence[str] | None = None) -> int:
    """Runs ``main(argv)`` with the XLA compile cache on (``enable_compile_cache``) and freed host
    memory kept for reuse (``host_memory.keep_freed_memory``). A UserError
    prints one line ``error: ...`` on stderr and returns 2; Ctrl-C returns 130; any other
    exception propagates with its traceback (a bug: exit 1)."""
    argv = list(sys.argv[1:] if argv is None else argv)
    try:
        keep_freed_memory()
        enable_compile_cache()
        return int(main(argv) or 0)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
    except UserError as e:
        msg = " ".join(line.strip() for line in str(e).splitlines() if line.strip())
        print(f"error: {msg or type(e).__name__}", file=sys.stderr)
        return 2


def peek_option(argv: Sequence[str], option: str) -> str | None:
    """The value of ``--option V`` or ``--option=V`` in argv, without parsing the rest."""
    for i, a in enumerate(argv):
        if a == option and i + 1 < len(argv):
            return argv[i + 1]
        if a.startswith(option + "="):
            return a.split("=", 1)[1]
    return None


def _wants_help(argv: Sequence[str]) -> bool:
    return "-h" in argv or "--help" in argv


# ----------------------------------------------------------------------------- aeclust-train

TRAIN_DOC = """\
Train one model on one dataset and evaluate it.

    {prog} --model dae_skip --dataset mnist [--epochs 5] [--out runs/x]

The model name picks the study recipe; each study has its own options, listed below in short.
Their descriptions and defaults: {prog} --model NAME --help
"""


def train_help() -> str:
    """``train --help`` without ``--model``: every model, grouped by study, with its study's options."""
    prog = prog_name("train.py")
    parts = [TRAIN_DOC.format(prog=prog)]
    by_study: dict[str, list[str]] = {}
    for model, module in MODEL_STUDY.items():
        by_study.setdefault(module, []).append(model)
    for module, models in by_study.items():
        mod = importlib.import_module(f"aeclust_jax.studies.{module}")
        usage = mod.train_parser().format_usage()
        parts.append(f"{STUDY_TITLE[module]}: --model {' | '.join(models)}\n{usage}")
    parts.append(f"Full help of one study: {prog} --model NAME --help")
    return "\n".join(parts)


def train_main(argv: Sequence[str]) -> int:
    """``aeclust-train`` / ``scripts/train.py``: dispatches to the study of ``--model``."""
    argv = list(argv)
    model = peek_option(argv, "--model")
    if model is None and "--resume" in argv:
        argv = _with_saved_model(argv)
        model = peek_option(argv, "--model")
    if model is None:
        if _wants_help(argv):
            print(train_help())
            return 0
        raise UsageError(f"--model is required; choices: {', '.join(sorted(MODEL_STUDY))} "
                         f"(see {prog_name('train.py')} --help)")
    return study_module(model, MODEL_STUDY, "model").train_main(argv)


def _with_saved_model(argv: list[str]) -> list[str]:
    """``--resume --out RUN`` without ``--model``: the model (and dataset) of RUN/config.yaml."""
    out = peek_option(argv, "--out")
    saved = pathlib.Path(out or "") / "config.yaml"
    if out is None or not saved.is_file():
        return argv
    import yaml
    cfg = yaml.safe_load(saved.read_text()) or {}
    extra = ["--model", str(cfg["model"])] if "model" in cfg else []
    if extra and "dataset" in cfg and peek_option(argv, "--dataset") is None:
        extra += ["--dataset", str(cfg["dataset"])]
    return extra + argv


# ----------------------------------------------------------------------------- aeclust-reproduce

REPRODUCE_DOC = """\
Reproduce one study's tables and figures, mean +- std over seeds.

    {prog} s1 [--datasets mnist fashion_mnist] [--epochs N] [--seeds 3]
    {prog} s2 --path cifar10-jpeg.zip [--seeds 2] [--unlabeled-limit 10000]
    {prog} s3 [--seeds 5]
    {prog} s4 [--seeds 5]
    {prog} s5 [--setting a|b|both|paper] [--seeds 3]

Runs already complete are skipped, so an interrupted reproduction continues.
Options of one study: {prog} STUDY --help
"""


def reproduce_main(argv: Sequence[str]) -> int:
    """``aeclust-reproduce`` / ``scripts/reproduce.py``: ``STUDY [options]``."""
    argv = list(argv)
    prog = prog_name("reproduce.py")
    if not argv or argv[0].startswith("-"):
        if _wants_help(argv):
            print(REPRODUCE_DOC.format(prog=prog))
            return 0
        raise UsageError(f"name a study first; choices: {', '.join(sorted(STUDY_MODULE))} "
                         f"(see {prog} --help)")
    return study_module(argv[0], STUDY_MODULE, "study").reproduce_main(argv[1:])


# ----------------------------------------------------------------------------- aeclust-data

DATA_EPILOG = """\
examples:
  {prog} mnist fashion_mnist coil20      # raw files from $AECLUST_MANUAL_DIR or the web
  {prog} coil20 --option source=proc --option size=128 --manual-dir ~/raw
  {prog} hanja --option folder=~/hanja_scans
"""


def parse_options(pairs: Sequence[str]) -> dict:
    """``["size=128", "source=proc"]`` -> ``{"size": 128, "source": "proc"}`` (YAML scalars)."""
    from aeclust_jax.config import parse_key_values
    return parse_key_values(pairs, "--option", UsageError)


def data_main(argv: Sequence[str]) -> int:
    """``aeclust-data`` / ``scripts/build_data.py``: prepares datasets ahead of time."""
    import pathlib

    from aeclust_jax import data

    prog = prog_name("build_data.py")
    parser = make_parser(prog, "Prepares datasets ahead of time (raw files -> array_record shards).",
                         epilog=DATA_EPILOG.format(prog=prog))
    parser.add_argument("names", nargs="+", metavar="NAME", help=f"one of: {', '.join(data.DATASETS)}")
    parser.add_argument("--data-dir", help="where prepared datasets go (default $AECLUST_DATA_DIR "
                                           "or ~/aeclust_data)")
    parser.add_argument("--manual-dir", type=pathlib.Path,
                        help="folder with the raw files, or a root with one sub-folder per dataset")
    parser.add_argument("--option", action="append", default=[], metavar="KEY=VALUE",
                        help="builder option (repeatable), e.g. size=128; see docs/data.md")
    parser.add_argument("--offline", action="store_true", help="never try to download")
    parser.add_argument("--no-verify-checksums", action="store_true",
                        help="accept raw files whose md5 differs from the canonical one")
    parser.add_argument("--no-progress", action="store_true",
                        help="no progress bars or preparation messages")
    args = parser.parse_args(list(argv))

    for name in args.names:  # validate everything before preparing anything
        data.builder_class(name)
    options = parse_options(args.option)
    if args.offline:
        options["download"] = False
    if args.no_verify_checksums:
        options["verify_checksums"] = False
    for name in args.names:
        manual = args.manual_dir
        if manual is not None and (manual / name).is_dir():
            manual = manual / name
        b = data.prepare(name, data_dir=args.data_dir, manual_dir=manual,
                         progress=not args.no_progress, **options)
        sizes = ", ".join(f"{split} {info.num_examples}" for split, info in b.info.splits.items())
        print(f"{name}: {sizes} -> {b.data_path}")
    return 0


# ----------------------------------------------------------------------------- console scripts

def train() -> None:
    """Console script ``aeclust-train``."""
    sys.exit(run_main(train_main))


def reproduce() -> None:
    """Console script ``aeclust-reproduce``."""
    sys.exit(run_main(reproduce_main))


def data() -> None:
    """Console script ``aeclust-data``."""
    sys.exit(run_main(data_main))
