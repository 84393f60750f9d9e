"""Train state: Flax's TrainState (step, params, opt_state, apply_fn, tx) plus the model's
batch-norm statistics (``batch_stats``; None for models without batch norm)."""

from __future__ import annotations

import functools
from typing import Any

import jax
import optax
from flax.training import train_state


# XLA:CPU spends ~0.3 s optimising each parameter's threefry hash in an init program (5-7 s for
# a 16-parameter autoencoder, compiled once per run) for a program that runs once; at level 0 it
# compiles ~5x faster. The integers are the same; the float tail of an initializer (erf_inv of a
# truncated normal) may round differently in a few ulps (< 1e-7), the same way on every run.
_INIT_COMPILER_OPTIONS = {"xla_backend_optimization_level": 0}


def jitted_init(model, **init_kwargs):
    """``jax.jit(model.init)`` (with ``init_kwargs`` bound), compiled for speed of compilation on
    CPU (see _INIT_COMPILER_OPTIONS); call it as ``model.init``: ``(key, *inputs) -> variables``."""
    fn = functools.partial(model.init, **init_kwargs) if init_kwargs else model.init
    options = _INIT_COMPILER_OPTIONS if jax.default_backend() == "cpu" else None
    return jax.jit(fn, compiler_options=options)


class TrainState(train_state.TrainState):
    """Flax's TrainState with ``batch_stats``: the running statistics of a batch-norm model
    (updated by the train step, checkpointed with the params), None for every other model."""
    batch_stats: Any = None


def create_train_state(model, key: jax.Array, sample_input, optimizer: optax.GradientTransformation,
                       *, init_kwargs: dict[str, Any] | None = None, params=None,
                       batch_stats=None) -> TrainState:
    """Initialises ``model`` on ``sample_input`` (an array, or a tuple of positional args) with
    ``key`` and pairs its params with ``optimizer``. ``params`` skips init (e.g. pretrained;
    then ``model`` may be None for a loss that is not a Flax model); ``batch_stats`` goes with it.

    A model with batch norm keeps its 'batch_stats' collection in ``state.batch_stats``; its loss
    function then takes them and returns the updated ones (see ``aeclust_jax.train.steps``).
    Other collections ('intermediates') are dropped.
    """
    if params is None:
        args = sample_input if isinstance(sample_input, tuple) else (sample_input,)
        # jitted: an eager init dispatches (and compiles) every op separately, ~20x slower
        variables = jitted_init(model, **(init_kwargs or {}))(key, *args)
        params, batch_stats = variables["params"], variables.get("batch_stats", batch_stats)
    apply_fn = model.apply if model is not None else None
    return TrainState.create(apply_fn=apply_fn, params=params, tx=optimizer,
                             batch_stats=batch_stats)


def count_params(params, where=None) -> int:
    """Number of scalars in ``params`` (only leaves whose path passes ``where(path)`` if given)."""
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return int(sum(v.size for p, v in leaves if where is None or where(p)))
