"""API helpers shared by the clustering functions: PRNG keys and renamed keyword arguments."""

from __future__ import annotations

import functools
import warnings

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["as_key", "renamed_kwarg"]


def as_key(key) -> jax.Array:
    """A typed PRNG key (``jax.random.key``) from ``key``: a typed key, or an int seed.

    A legacy raw uint32 key (2,) from ``jax.random.PRNGKey`` is wrapped (same random stream) so
    that old callers keep working; new code passes ``jax.random.key(seed)`` or the int. Traceable.
    """
    if isinstance(key, bool):
        raise TypeError(f"key must be a jax.random.key or an int seed, got {key!r}")
    if isinstance(key, (int, np.integer)):
        return jax.random.key(int(key))
    dtype = getattr(key, "dtype", None)
    if dtype is not None:
        if jnp.issubdtype(dtype, jax.dtypes.prng_key):
            return key
        if jnp.shape(key) == () and jnp.issubdtype(dtype, jnp.integer):
            return jax.random.key(key)
        if jnp.shape(key) == (2,) and dtype == jnp.uint32:
            return jax.random.wrap_key_data(key)
    raise TypeError(f"key must be a jax.random.key or an int seed, got {type(key).__name__} "
                    f"{getattr(key, 'dtype', '')} {jnp.shape(key) if dtype is not None else ''}")


def renamed_kwarg(old: str, new: str):
    """Decorator: keyword ``old`` still works for ``new`` but warns ``DeprecationWarning``."""
    def deco(fn):
        @functools.wraps(fn)
        def wrapper(*args, **kwargs):
            if old in kwargs:
                if new in kwargs:
                    raise TypeError(f"{fn.__name__}() got both {new}= and its deprecated alias {old}=")
                warnings.warn(f"{fn.__name__}({old}=...) is deprecated; use {new}=",
                              DeprecationWarning, stacklevel=2)
                kwargs[new] = kwargs.pop(old)
            return fn(*args, **kwargs)
        return wrapper
    return deco
