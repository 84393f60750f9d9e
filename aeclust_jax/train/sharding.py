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
    """Runs ``jax.distributed.initialize`` once when the launch asked for several processes.

    ``JAX_COORDINATOR_ADDRESS`` (host:port of process 0) with ``AECLUST_NUM_PROCESSES`` and
    ``AECLUST_PROCESS_ID`` (what ``python -m aeclust_jax.launch`` sets), or ``AECLUST_DISTRIBUTED=1``
    alone under a cluster JAX detects by itself (Slurm, Open MPI, Cloud TPU). On CPU the
    collectives go through gloo. ``AECLUST_HEARTBEAT_TIMEOUT`` (seconds, default 100): how long
    the others wait for a process that stopped answering before they fail.
    Returns whether this process is part of a multi-process run.
    """
    global _initialized
    if _initialized:
        return True
    env = os.environ
    if not (env.get("JAX_COORDINATOR_ADDRESS") or env.get("AECLUST_DISTRIBUTED") == "1"):
        return False
    kw = {}
    if env.get("AECLUST_NUM_PROCESSES"):
        kw["num_processes"] = int(env["AECLUST_NUM_PROCESSES"])
        kw["process_id"] = int(env["AECLUST_PROCESS_ID"])
    if env.get("AECLUST_HEARTBEAT_TIMEOUT"):
        kw["heartbeat_timeout_seconds"] = int(env["AECLUST_HEARTBEAT_TIMEOUT"])
    if env.get("JAX_PLATFORMS", "").split(",")[0] == "cpu" or not _has_accelerator():
        jax.config.update("jax_cpu_collectives_implementation", "gloo")
    jax.distributed.initialize(**kw)
    _initialized = True
    return True


def _has_accelerator() -> bool:
    """Whether a GPU/TPU plugin is installed (checked without initialising a backend)."""
    import importlib.util
    return any(importlib.util.find_spec(m) is not None
               for m in ("jax_cuda12_plugin", "jax_cuda13_plugin", "libtpu"))


def is_main_process() -> bool:
    """True on process 0 (or in a single-process run): the one that writes files and prints.
    Asks JAX only once ``maybe_initialize_distributed`` has run (so it never starts a backend)."""
    return not _initialized or jax.process_index() == 0


def sync(name: str) -> None:
    """A barrier over all processes (nothing in a single-process run)."""
    if _initialized and jax.process_count() > 1:
        from jax.experimental import multihost_utils
        multihost_utils.sync_global_devices(name)


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
