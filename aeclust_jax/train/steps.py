"""Jitted pieces of the fit loop: epoch shuffling on device, the train step, batched prediction.

A loss function has the signature ``loss_fn(params, batch, rng) -> (loss, aux)``: ``batch`` is a
dict of the user's arrays for one batch (still uint8 if stored so: convert with ``to_float``
inside the loss, which runs inside the jitted step) plus ``batch["mask"]`` (B,) float32, 1 for
real rows and 0 for the padding of the last partial batch; ``loss`` a scalar (use
``masked_mean``), ``aux`` a dict of scalars averaged per epoch into the history.

A model with batch norm (``state.batch_stats`` not None) has a loss with one more argument and
output: ``loss_fn(params, batch, rng, batch_stats) -> (loss, (aux, new_batch_stats))``, e.g.
``model.apply({"params": p, "batch_stats": s}, x, train=True, mutable=["batch_stats"])``. The
batch is one global array sharded over the devices, so the statistics are those of the whole
batch (synchronised batch norm, with no extra code).
"""

from __future__ import annotations

from functools import lru_cache, partial
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from aeclust_jax.train.sharding import batch_sharding, replicated, shard_rows, to_host

LossFn = Callable[[Any, dict, jax.Array], tuple[jax.Array, dict]]
LAST_BATCH = ("pad", "drop")


def to_float(images: jax.Array) -> jax.Array:
    """uint8 images -> float32 in [0, 1]; float input is returned as float32 unchanged."""
    if jnp.issubdtype(images.dtype, jnp.integer):
        return images.astype(jnp.float32) / 255.0
    return images.astype(jnp.float32)


def masked_mean(per_example: jax.Array, mask: jax.Array) -> jax.Array:
    """Mean of per_example (B, ...) over rows with mask 1 (other axes averaged first)."""
    per_row = per_example.reshape(per_example.shape[0], -1).mean(axis=1)
    return (per_row * mask).sum() / jnp.maximum(mask.sum(), 1.0)


def steps_per_epoch(n: int, batch_size: int, last_batch: str) -> int:
    """``pad``: ceil(n / B) steps, the last batch padded and masked; ``drop``: floor(n / B)."""
    if last_batch not in LAST_BATCH:
        raise ValueError(f"unknown last_batch {last_batch!r}; choices: {', '.join(LAST_BATCH)}")
    steps = -(-n // batch_size) if last_batch == "pad" else n // batch_size
    if steps == 0:
        raise ValueError(f"batch size {batch_size} is larger than the {n} training rows "
                         f"with last_batch='drop'")
    return steps


@lru_cache(maxsize=64)  # same args -> reuse the compiled function
def make_epoch_fn(n: int, batch_size: int, steps: int, mesh, shuffle: bool = True):
    """Jitted ``(arrays, key) -> (batched arrays (steps, B, ...), mask (steps, B))``.

    One permutation of the n real rows per epoch (``jax.random.permutation(key, n)``; with
    ``shuffle=False`` the stored order, key unused); with padding the tail of the last batch
    repeats the first rows of the permutation with mask 0, so every real row is seen exactly once
    and the padded rows contribute nothing. The output is sharded along B, so each step's batch is
    already split over the devices.
    """
    total = steps * batch_size
    out_sh = batch_sharding(mesh, axis=1)

    def epoch(arrays, key):
        perm = jax.random.permutation(key, n) if shuffle else jnp.arange(n)
        idx = jnp.resize(perm, (total,)) if total > n else perm[:total]
        mask = (jnp.arange(total) < n).astype(jnp.float32)
        batched = {k: v[idx].reshape((steps, batch_size) + v.shape[1:]) for k, v in arrays.items()}
        return batched, mask.reshape(steps, batch_size)

    return jax.jit(epoch, out_shardings=(out_sh, out_sh))


STEP_STREAM = 0x7FFFFFFF


def step_rng(epoch_key, s):
    """The loss rng of step ``s``: ``fold_in(fold_in(epoch_key, STEP_STREAM), s)``.

    Not ``fold_in(epoch_key, s)``: the epoch's permutation draws from ``split(epoch_key)``, and
    with JAX's (partitionable) threefry ``split(k)[i] == fold_in(k, i)``, so steps 0 and 1 would
    reuse the shuffle's keys (step 1's noise correlated with the permutation). The permutation
    keeps the epoch key, so a run whose loss takes no randomness has the same numbers either way.
    """
    return jax.random.fold_in(jax.random.fold_in(epoch_key, STEP_STREAM), s)


def _step(loss_fn: LossFn, state, batched, mask, s, epoch_key):
    """One optimizer step on row ``s`` of the epoch arrays, rng ``step_rng(epoch_key, s)``."""
    batch = {k: v[s] for k, v in batched.items()}
    batch["mask"] = mask[s]
    rng = step_rng(epoch_key, s)
    if getattr(state, "batch_stats", None) is None:
        (loss, aux), grads = jax.value_and_grad(loss_fn, has_aux=True)(state.params, batch, rng)
        return state.apply_gradients(grads=grads), loss, aux
    (loss, (aux, stats)), grads = jax.value_and_grad(loss_fn, has_aux=True)(
        state.params, batch, rng, state.batch_stats)
    return state.apply_gradients(grads=grads, batch_stats=stats), loss, aux


def _memo_on(loss_fn: LossFn, key, build: Callable):
    """``build()`` memoised on the loss function object itself, so a compiled step lives exactly
    as long as its loss_fn: a per-run closure frees it with the run (an lru_cache kept up to 64
    dead runs' executables and never hit), a loss_fn kept across runs (DSC's) reuses it. Objects
    without a ``__dict__`` are not memoised."""
    store = getattr(loss_fn, "__dict__", None)
    if store is None:
        return build()
    memo = store.setdefault("_aeclust_compiled", {})
    if key not in memo:
        memo[key] = build()
    return memo[key]


def make_train_step(loss_fn: LossFn, mesh):
    """Jitted ``(state, batched, mask, step_index, epoch_key) -> (state, loss, aux)``.

    The batch is row ``step_index`` of the epoch arrays; the step's rng is
    ``step_rng(epoch_key, step_index)``. The incoming state is donated.
    """
    def build():
        rep = replicated(mesh)

        @partial(jax.jit, donate_argnums=(0,), out_shardings=(rep, rep, rep))
        def train_step(state, batched, mask, s, epoch_key):
            return _step(loss_fn, state, batched, mask, s, epoch_key)

        return train_step

    return _memo_on(loss_fn, ("step", mesh), build)


def make_epoch_scan(loss_fn: LossFn, mesh):
    """Jitted ``(state, batched, mask, epoch_key) -> (state, losses (steps,), aux of (steps,))``:
    all steps of an epoch in one ``lax.scan``, with the same batches and keys as
    ``make_train_step`` called for s = 0..steps-1. One dispatch per epoch: worth it when a step
    is so small that Python dispatch dominates (S3's MLPs at batch 10: 3.4x, docs/s3.md); for the
    conv AEs at batch 128 a scanned epoch measured slower (design notes: 0.30x)."""
    def build():
        rep = replicated(mesh)

        @partial(jax.jit, donate_argnums=(0,), out_shardings=(rep, rep, rep))
        def run_epoch(state, batched, mask, epoch_key):
            def body(state, s):
                state, loss, aux = _step(loss_fn, state, batched, mask, s, epoch_key)
                return state, (loss, aux)
            state, (losses, auxes) = jax.lax.scan(body, state,
                                                  jnp.arange(mask.shape[0], dtype=jnp.int32))
            return state, losses, auxes

        return run_epoch

    return _memo_on(loss_fn, ("scan", mesh), build)


def predict(fn: Callable, params, arrays: dict[str, np.ndarray], *, batch_size: int, mesh,
            progress: bool = False) -> Any:
    """Applies jitted ``fn(params, batch) -> pytree of (B, ...)`` over all rows of ``arrays``
    (host arrays, same N) in batches of ``batch_size`` sharded over ``mesh``; returns the pytree
    of numpy arrays with N rows (the padded tail of the last batch is cut off)."""
    n = len(next(iter(arrays.values())))
    batch_size = max(mesh.size, batch_size - batch_size % mesh.size)
    jfn = jax.jit(fn)
    outs = []
    starts = range(0, n, batch_size)
    if progress:
        from tqdm.auto import tqdm
        starts = tqdm(starts, desc="predict", leave=False)
    for i in starts:
        chunk = {k: v[i:i + batch_size] for k, v in arrays.items()}
        m = len(next(iter(chunk.values())))
        if m < batch_size:   # keep one compiled shape: pad the last chunk, trim after
            chunk = {k: np.concatenate([v, np.repeat(v[:1], batch_size - m, 0)]) for k, v in chunk.items()}
        out = jfn(params, {k: shard_rows(v, mesh) for k, v in chunk.items()})
        outs.append(jax.tree.map(lambda o, m=m: to_host(o)[:m], out))
    return jax.tree.map(lambda *xs: np.concatenate(xs, axis=0), *outs)
