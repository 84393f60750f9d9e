"""Typed configs: dataclasses filled from a YAML file, then from CLI overrides.

    cfg = load_config(TrainConfig, "configs/s1_mnist.yaml", {"epochs": 5})

Unknown keys are an error that names the key, the file and the valid choices.
"""

from __future__ import annotations

import dataclasses
import pathlib
from typing import Any, Mapping, TypeVar

import yaml

T = TypeVar("T")


class ConfigError(ValueError):
    """A config file or override that does not fit the config dataclass."""


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


def _checked(cls, values: Mapping[str, Any], source: str) -> dict[str, Any]:
    fields = {f.name for f in dataclasses.fields(cls)}
    unknown = sorted(set(values) - fields)
    if unknown:
        raise ConfigError(f"unknown key(s) {unknown} in {source}; valid keys: {sorted(fields)}")
    return dict(values)
