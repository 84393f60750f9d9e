"""Typed configs: dataclasses filled from a YAML file, then from CLI overrides.

    cfg = load_config(TrainConfig, "configs/s1_mnist.yaml", {"epochs": 5})

Unknown keys are an error that names the key, the file and the valid choices. A file may list
the fields flat (``epochs: 5``) or grouped by the ``--help`` sections (``training: {epochs: 5}``;
``SECTIONS``), the shape of a nested config; the dataclasses themselves stay flat.
"""

from __future__ import annotations

import argparse
import dataclasses
import pathlib
from typing import Any, Mapping, TypeVar

import yaml

from aeclust_jax.errors import UserError

T = TypeVar("T")


class ConfigError(UserError, ValueError):
    """A config file or override that does not fit the config dataclass, or a bad config value."""


def config_dir() -> pathlib.Path:
    """The folder of the shipped YAML configs (``s1_mnist.yaml``, ...).

    In an installed wheel they are package data (``aeclust_jax/configs/``); in a source checkout
    they are the repository's top-level ``configs/``.
    """
    here = pathlib.Path(__file__).resolve().parent
    installed = here / "configs"
    return installed if installed.is_dir() else here.parent / "configs"


def read_yaml(path: str | pathlib.Path) -> dict[str, Any]:
    """Reads a YAML mapping; a missing or malformed file raises ConfigError naming it."""
    path = pathlib.Path(path)
    if not path.is_file():
        raise ConfigError(f"config file not found: {path}")
    try:
        data = yaml.safe_load(path.read_text()) or {}
    except yaml.YAMLError as e:
        raise ConfigError(f"config file {path} is not valid YAML: {e}") from None
    if not isinstance(data, dict):
        raise ConfigError(f"config file {path} must hold a mapping, got {type(data).__name__}")
    return data


def from_dict(cls: type[T], values: Mapping[str, Any], *, source: str = "config") -> T:
    """Builds dataclass ``cls`` from ``values``; unknown keys raise ConfigError."""
    return cls(**_checked(cls, values, source))


def load_config(cls: type[T], path: str | pathlib.Path | None = None,
                overrides: Mapping[str, Any] | None = None, *, base: T | None = None) -> T:
    """``base`` (or ``cls()``) <- YAML file at ``path`` <- ``overrides`` (None values ignored)."""
    cfg = base if base is not None else cls()
    if path is not None:
        cfg = dataclasses.replace(cfg, **_checked(cls, read_yaml(path), str(path)))
    if overrides:
        kept = {k: v for k, v in overrides.items() if v is not None}
        cfg = dataclasses.replace(cfg, **_checked(cls, kept, "command-line overrides"))
    return cfg


def to_dict(cfg: Any) -> dict[str, Any]:
    """A dataclass config as a plain dict (tuples become lists, for YAML/JSON)."""
    def plain(v):
        if isinstance(v, (tuple, list)):
            return [plain(x) for x in v]
        return v
    return {k: plain(v) for k, v in dataclasses.asdict(cfg).items()}


# Fields renamed to the shared vocabulary (docs/studies.md, "One vocabulary"): old name -> new.
# A YAML file or a run's saved config.yaml may use the old name; the command line refuses the
# old option with a line naming the new one.
RENAMED = {"n_cluster": "cluster_limit", "clusters": "n_clusters", "kmeans_init": "kmeans_n_init",
           "eval_batch": "eval_batch_size", "classifier_batch": "classifier_batch_size",
           "ae_batch": "ae_batch_size", "data_seed": "subset_seed"}


def _current_name(key: str, fields, values) -> str:
    """``key``, or its new name (RENAMED) when only the new one is a field and not also given."""
    new = RENAMED.get(key)
    return new if key not in fields and new in fields and new not in values else key


def _checked(cls, values: Mapping[str, Any], source: str) -> dict[str, Any]:
    fields = {f.name: f for f in dataclasses.fields(cls)}
    values = _ungrouped(values, fields, source)
    values = {_current_name(k, fields, values): v for k, v in values.items()}
    unknown = sorted(set(values) - set(fields))
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {source}; valid keys: {sorted(fields)}")
    return {name: _check_type(name, value, fields[name].type, source) for name, value in values.items()}


def _ungrouped(values: Mapping[str, Any], fields, source: str) -> dict[str, Any]:
    """A config mapping whose keys may be grouped under the ``--help`` sections (SECTIONS), as
    nested configs are written: ``training: {epochs: 5, lr: 0.1}`` is ``epochs: 5, lr: 0.1``.
    A key in the wrong section, or given twice, raises ConfigError naming it and ``source``.
    (A section name whose value is not a mapping, e.g. S1's ``model: dae_skip``, is a field.)"""
    flat: dict[str, Any] = {}
    for key, value in values.items():
        group = key in SECTIONS and isinstance(value, Mapping) and not (
            key in fields and _kind(fields[key].type)[0] == "dict")
        for name, v in (value.items() if group else [(key, value)]):
            if group and name in fields and section_of(name) != key:
                raise ConfigError(f"{name} in {source} belongs in section {section_of(name)!r}, "
                                  f"not {key!r}")
            if name in flat:
                raise ConfigError(f"{name} is given twice in {source}")
            flat[name] = v
    return flat


_SCALARS = {"int": (int,), "float": (int, float), "bool": (bool,), "str": (str,)}


def _check_type(name: str, value: Any, annotation: Any, source: str) -> Any:
    """``value``, checked against a scalar field's type (``int``, ``float | None``, ...): a wrong
    type raises ConfigError; a float written as ``1e-3`` (a string to YAML 1.1) becomes a float.
    Other annotations (tuples, dicts) are left to the config's own validation."""
    kind, optional = _kind(annotation)
    if kind not in _SCALARS or (value is None and optional):
        return value
    if kind == "float" and isinstance(value, str):
        try:
            value = float(value)
        except ValueError:
            pass
    ok = isinstance(value, _SCALARS[kind]) and not (kind != "bool" and isinstance(value, bool))
    if not ok:
        raise ConfigError(f"{name} in {source} must be {kind}{' or None' if optional else ''}, "
                          f"got {value!r}")
    return value


# ----------------------------------------------------------------------------- CLI from a config

def field(default: Any, help: str, **meta: Any):
    """A config dataclass field carrying its command-line help (and ``choices``) in the metadata:
    ``lr: float = field(0.1, "peak learning rate")``; a callable default is a default factory."""
    kw = {"default_factory": default} if callable(default) else {"default": default}
    return dataclasses.field(metadata={"help": help, **meta}, **kw)


def _kind(annotation: Any) -> tuple[str, bool]:
    """('int' | 'float' | 'bool' | 'str' | 'dict' | other, optional) of a field annotation."""
    text = (annotation if isinstance(annotation, str) else annotation.__name__
            if isinstance(annotation, type) else str(annotation))   # tuple[int, ...], float | None
    parts = [t.strip() for t in text.split("|")]
    kinds = [t for t in parts if t != "None"]
    return (kinds[0] if len(kinds) == 1 else text), "None" in parts


# ----------------------------------------------------------------------------- one vocabulary
# Every study names the same thing the same way (docs/studies.md, "One vocabulary"); the options of
# each command line are shown in these sections, in this order.
SECTIONS = ("model", "data", "training", "evaluation", "run")
# The parameters of a training stage; a study with several stages prefixes them with the stage
# (S2 resnet_*, S3 ae_*, S4 pretrain_* / finetune_*, S5 classifier_* / ae_*).
TRAINING_PARAMS = ("epochs", "iters", "lr", "batch_size", "optimizer", "momentum", "weight_decay",
                   "schedule", "warmup_epochs", "label_smoothing", "adam_eps", "augment", "crop_pad",
                   "last_batch", "noise_std", "noisy_target", "aux_weight", "lambda1", "lambda2",
                   "freeze_encoder", "carry_adam_state", "backbone_lr_scale", "pretrained",
                   "pretrained_dir", "scan_epoch")
STAGES = ("resnet", "ae", "pretrain", "finetune", "classifier")
_DATA = ("dataset", "path", "dataset_options", "subset_seed", "image_size", "unlabeled_split",
         "labels_fraction", "label_sampling", "pixel_max")
_EVALUATION = ("n_clusters", "cluster_limit", "ro", "d", "alpha", "precisions", "pool_sizes")
_RUN = ("seed", "checkpoint_every", "keep_checkpoints", "progress", "feature_cache")


def section_of(name: str) -> str:
    """The ``--help`` section (one of SECTIONS) of config field ``name``: data (the dataset, its
    subsets ``*_limit`` / ``*_per_class`` and their seed), training (TRAINING_PARAMS, bare or with
    a stage prefix), evaluation (``eval_*``, ``kmeans_*``, ``knn_*``, ``tsne*``, clustering),
    run (seed, checkpoints, progress, caches); model otherwise."""
    stage, _, param = name.partition("_")
    if name in _RUN:
        return "run"
    if name in _EVALUATION or stage in ("eval", "kmeans", "knn") or name.startswith("tsne"):
        return "evaluation"
    if name in _DATA or stage == "supervised" or name.endswith(("_per_class", "_limit")):
        return "data"
    if name in TRAINING_PARAMS or (stage in STAGES and param in TRAINING_PARAMS):
        return "training"
    return "model"


class _Renamed(argparse.Action):
    """An option renamed to the shared vocabulary (RENAMED): one error naming the new option."""

    def __init__(self, *args, new_flag: str, **kwargs):
        super().__init__(*args, nargs="?", help=argparse.SUPPRESS, **kwargs)
        self.new_flag = new_flag

    def __call__(self, parser, namespace, values, option_string=None):
        raise argparse.ArgumentError(self, f"was renamed {self.new_flag}")


def add_config_options(parser, cls, *, skip: tuple[str, ...] = ()) -> None:
    """One ``--field-name`` option per field of dataclass ``cls`` (fields in ``skip`` left out),
    in the ``--help`` sections of ``section_of``: the help is the field's ``metadata["help"]``
    plus its default; bools get ``--x/--no-x``; dict fields take repeatable ``KEY=VALUE`` (YAML
    scalars; ``dataset_options`` also answers to the singular ``--dataset-option``). Every option
    defaults to None, so ``config_overrides`` keeps only what the user typed and the
    YAML/defaults fill the rest. An option renamed in RENAMED is refused with its new name."""
    defaults = cls()
    groups = {name: parser.add_argument_group(f"{name} options") for name in SECTIONS}
    old_names = {new: old for old, new in RENAMED.items()}
    for f in dataclasses.fields(cls):
        if f.name in skip:
            continue
        flag = "--" + f.name.replace("_", "-")
        if f.name in old_names:
            parser.add_argument("--" + old_names[f.name].replace("_", "-"), action=_Renamed,
                                new_flag=flag, dest="renamed_" + f.name)
        group = groups[section_of(f.name)]
        kind, optional = _kind(f.type)
        text = f.metadata.get("help", "")
        default = f.metadata.get("cli_default", getattr(defaults, f.name))
        shown = "" if isinstance(default, dict) else f" (default: {default if default != '' else repr('')})"
        if isinstance(default, tuple):
            shown = f" (default: {' '.join(map(str, default)) or 'none'})"
        if kind == "bool":
            group.add_argument(flag, action=argparse.BooleanOptionalAction, default=None,
                               help=f"{text}{shown}")
        elif kind.startswith("tuple["):
            typ = {"tuple[int, ...]": int, "tuple[float, ...]": float}.get(kind, str)
            group.add_argument(flag, type=typ, nargs="*", default=None, metavar="V",
                               help=f"{text}{shown}")
        elif kind == "dict":
            flags = (flag, flag[:-1]) if flag.endswith("-options") else (flag,)
            group.add_argument(*flags, dest=f.name, action="append", default=None,
                               metavar="KEY=VALUE", help=f"{text} (repeatable)")
        else:
            typ = {"int": int, "float": float}.get(kind, str)
            if optional:
                typ = _or_none(typ)
            choices = f.metadata.get("choices")
            group.add_argument(flag, type=typ, default=None, choices=choices,
                               metavar=f.name.upper() if choices is None else None,
                               help=f"{text}{shown}")


def add_run_options(parser, cls, out_default: str, *, config_help: str | None = None,
                    resume_help: str = "continue the run in --out") -> None:
    """The options a study's ``train.py`` command has beside its config fields: ``--config``
    (a YAML file of ``cls``'s fields), ``--out`` (the run folder; ``out_default`` names its
    default pattern) and ``--resume``."""
    parser.add_argument("--config", help=config_help or f"YAML file of {cls.__name__} fields")
    parser.add_argument("--out", help=f"run folder (default {out_default})")
    parser.add_argument("--resume", action="store_true", help=resume_help)


class _NoneValue:
    """``--x none`` typed for an optional field (None itself means "not typed")."""

    def __repr__(self):
        return "None"


NONE = _NoneValue()


def _or_none(typ):
    def parse(text: str):
        return NONE if text.lower() == "none" else typ(text)
    parse.__name__ = typ.__name__           # argparse names the type in its error messages
    return parse


def config_overrides(args, cls) -> dict[str, Any]:
    """The fields of ``cls`` that the parsed ``args`` set (not None); dict fields parsed from
    their ``KEY=VALUE`` items; a field whose metadata has a ``cli_default`` (e.g. progress bars,
    off in library calls, on for a command) gets it when not typed."""
    out = {}
    for f in dataclasses.fields(cls):
        value = getattr(args, f.name, None)
        if value is None:
            if "cli_default" in f.metadata:
                out[f.name] = f.metadata["cli_default"]
            continue
        if _kind(f.type)[0] == "dict":
            value = parse_key_values(value, "--" + f.name.replace("_", "-"))
        elif value is NONE:
            value = None
        out[f.name] = value
    return out


def parse_key_values(items, option: str, error: type[Exception] = ConfigError) -> dict[str, Any]:
    """``["size=128", "source=proc"]`` -> ``{"size": 128, "source": "proc"}`` (values as YAML
    scalars); an item without ``=`` raises ``error`` naming ``option``."""
    out = {}
    for item in items:
        key, sep, raw = item.partition("=")
        if not sep or not key:
            raise error(f"{option} expects KEY=VALUE, got {item!r}")
        out[key] = yaml.safe_load(raw) if raw else ""
    return out


def config_from_args(cls: type[T], args) -> T:
    """The config of a generated command line: defaults <- ``--config`` FILE <- the options
    typed; with ``--resume`` the run's saved ``<--out>/config.yaml`` replaces the first two."""
    over = config_overrides(args, cls)
    saved = pathlib.Path(args.out or "") / "config.yaml"
    if args.resume and args.out and saved.is_file():
        return load_config(cls, None, over, base=load_config(cls, saved))
    return load_config(cls, args.config, over)
