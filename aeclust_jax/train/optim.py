"""Optimizers by name, with the authors' Keras-2020 Adadelta, and frozen-parameter masks.

    tx = make_optimizer("adadelta")                 # lr 1.0, rho 0.95, eps 1e-7 (Keras 2.x)
    tx = make_optimizer("adam", 1e-3, frozen=lambda path: "encoder" in path)
"""

from __future__ import annotations

from typing import Callable

import jax
import optax

OPTIMIZERS = ("adadelta", "adam", "sgd")
# Defaults of each optimizer: Adadelta as Keras 2.x shipped it (the authors' `optimizers.Adadelta()`).
DEFAULT_LR = {"adadelta": 1.0, "adam": 1e-3, "sgd": 1e-2}


def make_optimizer(name: str, lr: float | None = None, *, rho: float = 0.95, eps: float = 1e-7,
                   b1: float = 0.9, b2: float = 0.999, adam_eps: float = 1e-7, momentum: float = 0.0,
                   frozen: Callable[[str], bool] | None = None) -> optax.GradientTransformation:
    """An optax optimizer by name: ``adadelta`` (Keras defaults), ``adam`` (Keras eps 1e-7), ``sgd``.

    ``frozen(path_str) -> bool`` marks parameters that must not move (their updates are zeroed,
    and they carry no optimizer state); the path string is '/'-joined keys, e.g.
    ``"encoder/Dense_0/kernel"``.
    """
    if name not in OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choices: {', '.join(OPTIMIZERS)}")
    lr = DEFAULT_LR[name] if lr is None else float(lr)
    if not lr > 0:
        raise ValueError(f"learning rate must be > 0, got {lr}")
    if name == "adadelta":
        tx = optax.adadelta(lr, rho=rho, eps=eps)
    elif name == "adam":
        tx = optax.adam(lr, b1=b1, b2=b2, eps=adam_eps)
    else:
        tx = optax.sgd(lr, momentum=momentum or None)
    if frozen is not None:
        tx = freeze(tx, frozen)
    return tx


def path_str(path) -> str:
    """'/'-joined key names of a jax tree path."""
    return "/".join(str(getattr(p, "key", getattr(p, "name", getattr(p, "idx", p)))) for p in path)


def freeze(tx: optax.GradientTransformation, frozen: Callable[[str], bool]) -> optax.GradientTransformation:
    """Wraps ``tx`` so parameters with ``frozen(path_str)`` get zero updates and no state."""
    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda p, _: "frozen" if frozen(path_str(p)) else "trained", params)
    return optax.multi_transform({"trained": tx, "frozen": optax.set_to_zero()}, labels)
