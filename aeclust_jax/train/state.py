"""Train state: Flax's TrainState (step, params, opt_state, apply_fn, tx) built from a model."""

from __future__ import annotations

import functools
from typing import Any

import jax
import optax
from flax.training.train_state import TrainState


def create_train_state(model, key: jax.Array, sample_input, optimizer: optax.GradientTransformation,
                       *, init_kwargs: dict[str, Any] | None = None, params=None) -> TrainState:
    """Initialises ``model`` on ``sample_input`` (an array, or a tuple of positional args) with
    ``key`` and pairs its params with ``optimizer``. ``params`` skips init (e.g. pretrained;
    then ``model`` may be None for a loss that is not a Flax model).

    Only the ``params`` collection is kept: models with mutable state (batch norm) are not
    supported by this engine.
    """
    if params is None:
        args = sample_input if isinstance(sample_input, tuple) else (sample_input,)
        # jitted: an eager init dispatches (and compiles) every op separately, ~20x slower
        init = jax.jit(functools.partial(model.init, **(init_kwargs or {})))
        params = init(key, *args)["params"]
    apply_fn = model.apply if model is not None else None
    return TrainState.create(apply_fn=apply_fn, params=params, tx=optimizer)


def count_params(params, where=None) -> int:
    """Number of scalars in ``params`` (only leaves whose path passes ``where(path)`` if given)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return int(sum(v.size for p, v in leaves if where is None or where(p)))
