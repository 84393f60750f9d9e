"""Data parallelism over a 1-D mesh of all devices: batch axis sharded, parameters replicated.

    mesh = make_mesh()                          # ("batch",) over jax.devices(), 1 CPU .. n GPUs
    x = shard_rows(images_uint8, mesh)          # (N', ...) placed once, N' = N padded to n devices
    state = replicate(state, mesh)

Multi-host: call ``maybe_initialize_distributed()`` first; when the launch sets
``JAX_COORDINATOR_ADDRESS`` (or runs under SLURM / Open MPI / Cloud TPU, which JAX detects when
``AECLUST_DISTRIBUTED=1``), ``jax.distributed.initialize()`` runs and the mesh spans every process's
devices. Each process holds the (small) full dataset in host memory and feeds only the rows of its
own devices (``jax.make_array_from_callback``).
"""

from __future__ import annotations

import os

import jax
import numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P

BATCH_AXIS = "batch"
_initialized = False


def maybe_initialize_distributed() -> bool:
    """Runs ``jax.distributed.initialize()`` once when the launcher asked for multi-host."""
    global _initialized
    if _initialized:
        return True
    if os.environ.get("JAX_COORDINATOR_ADDRESS") or os.environ.get("AECLUST_DISTRIBUTED") == "1":
        jax.distributed.initialize()
        _initialized = True
    return _initialized


def make_mesh(devices=None) -> Mesh:
    """A 1-D mesh named ``batch`` over ``devices`` (default: all devices of all processes)."""
    devices = jax.devices() if devices is None else list(devices)
    return Mesh(np.asarray(devices), (BATCH_AXIS,))


def batch_sharding(mesh: Mesh, axis: int = 0) -> NamedSharding:
    """Sharding that splits dimension ``axis`` over the mesh, the rest replicated."""
    return NamedSharding(mesh, P(*([None] * axis), BATCH_AXIS))


def replicated(mesh: Mesh) -> NamedSharding:
    return NamedSharding(mesh, P())


def replicate(tree, mesh: Mesh):
    """A copy of every leaf of ``tree`` on all devices of ``mesh`` (never an alias: the fit loop
    donates its state, and the caller's arrays must stay valid)."""
    return jax.device_put(tree, replicated(mesh), may_alias=False)


def pad_rows(x: np.ndarray, multiple: int) -> np.ndarray:
    """Pads dimension 0 up to a multiple of ``multiple`` by repeating row 0 (rows never read)."""
    extra = (-len(x)) % multiple
    if extra == 0:
        return x
    return np.concatenate([x, np.repeat(x[:1], extra, axis=0)], axis=0)


def shard_rows(x: np.ndarray, mesh: Mesh) -> jax.Array:
    """Host array (N, ...) -> global device array (N', ...) sharded along dim 0 (N' = N padded to
    a multiple of the mesh size; the padded rows repeat row 0). Works on one or many processes."""
    x = pad_rows(np.asarray(x), mesh.size)
    return jax.make_array_from_callback(x.shape, batch_sharding(mesh), lambda idx: x[idx])


def to_host(x) -> np.ndarray:
    """A (possibly multi-process sharded) array -> numpy on this host."""
    if jax.process_count() > 1:
        from jax.experimental import multihost_utils
        return np.asarray(multihost_utils.process_allgather(x, tiled=True))
    return np.asarray(x)
