"""The fit loop: shuffled minibatch epochs, per-step keys, eval hooks, history, checkpoints.

See ``aeclust_jax.train`` for a usage example.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import pathlib
import time
from typing import Any, Callable

import jax
import jax.numpy as jnp
import numpy as np

from aeclust_jax.errors import UserError
from aeclust_jax.train.checkpoint import Checkpointer
from aeclust_jax.train.sharding import is_main_process, make_mesh, replicate, shard_rows, sync
from aeclust_jax.train.steps import (LossFn, make_epoch_fn, make_epoch_scan, make_train_step,
                                     steps_per_epoch)

# dispatched steps that may wait behind the running one (_run_epoch)
STEPS_IN_FLIGHT = 2


class TrainingDivergedError(UserError, RuntimeError):
    """A non-finite loss; names the epoch (1-based) and step (0-based) where it first appeared."""

    def __init__(self, epoch: int, step: int, value: float, last_checkpoint: int | None):
        kept = (f"the last good checkpoint (epoch {last_checkpoint}) is kept"
                if last_checkpoint is not None else "no checkpoint was saved before it")
        super().__init__(f"loss became {value} at epoch {epoch}, step {step}; training stopped, {kept}; "
                         "lower the learning rate or change the optimizer")
        self.epoch, self.step, self.value = epoch, step, value


@dataclasses.dataclass
class FitResult:
    state: Any
    history: list[dict]          # one record per epoch (all epochs, including resumed ones)
    start_epoch: int             # epochs already done when this call started (resume)
    train_seconds: float         # wall time of the epochs run by this call (incl. compile)
    images_per_second: float     # real training rows / second over this call's epochs


class History:
    """history.jsonl: one JSON object per epoch. On resume, records after the restored epoch
    (written by a run killed before its next checkpoint) are dropped."""

    def __init__(self, path: str | os.PathLike | None):
        self.path = pathlib.Path(path) if path is not None else None
        self.records: list[dict] = []

    def load(self, upto_epoch: int) -> None:
        if self.path is None or not self.path.exists():
            return
        recs = [json.loads(l) for l in self.path.read_text().splitlines() if l.strip()]
        self.records = [r for r in recs if r.get("epoch", 0) <= upto_epoch]
        sync("history loaded")             # every process has read it before process 0 rewrites
        if is_main_process():
            self.path.write_text("".join(json.dumps(r) + "\n" for r in self.records))

    def append(self, rec: dict) -> None:
        self.records.append(rec)
        if self.path is not None and is_main_process():     # one writer in a multi-process run
            with self.path.open("a") as f:
                f.write(json.dumps(rec) + "\n")


def _raise_if_diverged(loss_vals: np.ndarray, first_step: int, epoch: int, checkpointer) -> None:
    """Raises TrainingDivergedError at the first non-finite value of ``loss_vals``."""
    bad = np.flatnonzero(~np.isfinite(loss_vals))
    if bad.size:
        raise TrainingDivergedError(epoch, first_step + int(bad[0]), float(loss_vals[bad[0]]),
                                    checkpointer and checkpointer.latest_epoch())


def _run_steps(state, train_step, batched, mask, ekey, epoch, steps, n, batch_size, t0,
               checkpointer, bar, log_every, step_hook):
    """One epoch, one jitted call per step; losses checked every ``log_every`` steps.
    Returns (state, losses (steps,) float64, {aux name: (steps,) float64}).

    At most ``STEPS_IN_FLIGHT`` steps are dispatched ahead of the one that has finished: enough to
    keep the device busy, and Ctrl-C is seen within about that many steps. (Unbounded, a whole
    epoch was queued at once: a ResNet-18 run here printed ``interrupted`` 68 s after Ctrl-C.)"""
    losses, auxes = [], []
    checked = 0
    for s in range(steps):
        state, loss, aux = train_step(state, batched, mask, np.int32(s), ekey)
        losses.append(loss)
        auxes.append(aux)
        if s >= STEPS_IN_FLIGHT:
            losses[s - STEPS_IN_FLIGHT].block_until_ready()
        if step_hook is not None:
            step_hook(epoch, s)
        if (s + 1) % log_every == 0 or s + 1 == steps:
            _raise_if_diverged(np.asarray(jnp.stack(losses[checked:]), np.float64), checked,
                               epoch, checkpointer)
            if bar is not None:
                el = time.perf_counter() - t0
                bar.set_postfix(epoch=epoch, loss=f"{float(loss):.5f}",
                                img_s=f"{min(n, (s + 1) * batch_size) / el:.0f}")
                bar.update(s + 1 - checked)
            checked = s + 1
    loss_vals = np.asarray(jnp.stack(losses), np.float64)
    aux_vals = {k: np.asarray(jnp.stack([a[k] for a in auxes]), np.float64)
                for k in (auxes[0] if auxes else {})}
    return state, loss_vals, aux_vals


def fit(state, data: dict[str, np.ndarray], loss_fn: LossFn, *, batch_size: int, epochs: int,
        key: jax.Array, mesh=None, last_batch: str = "pad",
        eval_fn: Callable[[Any, int], dict] | None = None, eval_every: int = 1,
        checkpointer: Checkpointer | None = None, resume: bool = False,
        history_path: str | os.PathLike | None = None, progress: bool = False,
        desc: str = "train", log_every: int = 50, scan_epoch: bool = False,
        shuffle: bool = True,
        step_hook: Callable[[int, int], None] | None = None) -> FitResult:
    """Trains ``state`` on ``data`` (dict of host arrays with the same N) for ``epochs`` epochs.

    Epoch ``e`` (1-based) shuffles with ``permutation(fold_in(key, e))``; step ``s`` of it gets the
    loss rng ``steps.step_rng(fold_in(key, e), s)`` (a stream of its own, apart from the shuffle's).
    So a run resumed from a checkpoint repeats exactly the keys of an uninterrupted one
    (bitwise-equal params on CPU).
    ``last_batch``: ``pad`` (default, like Keras: every row once per epoch, the last partial batch
    padded with masked rows, its loss the mean over its real rows) or ``drop``.
    ``eval_fn(state, epoch) -> dict`` runs every ``eval_every`` epochs and after the last one; its
    numbers join that epoch's history record. ``checkpointer`` saves on its schedule and after
    the last epoch; ``resume`` restores its newest checkpoint first. A non-finite loss raises
    TrainingDivergedError (checked every ``log_every`` steps and at each epoch end) before any
    later checkpoint is written. ``step_hook(epoch, step)`` runs on the host after each step is
    dispatched (tests use it to kill the process mid-epoch). ``scan_epoch`` runs each epoch as
    one ``lax.scan`` (same batches, keys and result; for tiny steps where dispatch dominates;
    no ``step_hook``, the non-finite check at the epoch's end). ``shuffle=False`` keeps the rows
    in their stored order (for models whose parameters are indexed by row: DSC's self-expressive
    C, trained full batch with ``batch_size = N``).
    """
    if epochs < 1:
        raise ValueError(f"epochs must be >= 1, got {epochs}")
    lengths = {k: len(v) for k, v in data.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"data arrays differ in length: {lengths}")
    n = next(iter(lengths.values()))
    mesh = make_mesh() if mesh is None else mesh
    if batch_size < 1 or batch_size % mesh.size:
        raise ValueError(f"batch size {batch_size} must be a positive multiple of the "
                         f"{mesh.size} devices")
    steps = steps_per_epoch(n, batch_size, last_batch)
    history = History(history_path)
    start = 0
    if resume and checkpointer is not None:
        state, start = checkpointer.restore_latest(state)
        history.load(start)
    elif history.path is not None and history.path.exists() and is_main_process():
        history.path.unlink()
    state = replicate(state, mesh)
    arrays = {k: shard_rows(v, mesh) for k, v in data.items()}
    epoch_fn = make_epoch_fn(n, batch_size, steps, mesh, shuffle)
    train_step = make_train_step(loss_fn, mesh)
    epoch_scan = make_epoch_scan(loss_fn, mesh) if scan_epoch else None
    real = np.full(steps, batch_size, np.float64)
    if last_batch == "pad":
        real[-1] = n - (steps - 1) * batch_size
    seconds, seen = 0.0, 0
    bar = None
    if progress:
        from tqdm.auto import tqdm
        bar = tqdm(total=(epochs - start) * steps, desc=desc, unit="step", dynamic_ncols=True)
    try:
        for epoch in range(start + 1, epochs + 1):
            t0 = time.perf_counter()
            ekey = jax.random.fold_in(key, epoch)
            batched, mask = epoch_fn(arrays, ekey)
            if epoch_scan is not None:
                state, losses, auxes = epoch_scan(state, batched, mask, ekey)
                loss_vals = np.asarray(losses, np.float64)
                aux_vals = {k: np.asarray(v, np.float64) for k, v in auxes.items()}
                _raise_if_diverged(loss_vals, 0, epoch, checkpointer)
                if bar is not None:
                    bar.set_postfix(epoch=epoch, loss=f"{loss_vals[-1]:.5f}")
                    bar.update(steps)
            else:
                state, loss_vals, aux_vals = _run_steps(
                    state, train_step, batched, mask, ekey, epoch, steps, n, batch_size, t0,
                    checkpointer, bar, log_every, step_hook)
            w = real / real.sum()
            rec = {"epoch": epoch, "loss": float((loss_vals * w).sum())}
            rec.update({k: float((v * w).sum()) for k, v in aux_vals.items()})
            dt = time.perf_counter() - t0
            seconds += dt
            seen += n if last_batch == "pad" else steps * batch_size
            rec["seconds"] = dt
            rec["images_per_second"] = (n if last_batch == "pad" else steps * batch_size) / dt
            if eval_fn is not None and (epoch % eval_every == 0 or epoch == epochs):
                rec.update(eval_fn(state, epoch))
            history.append(rec)
            if checkpointer is not None:
                checkpointer.save(epoch, state, force=(epoch == epochs))
    finally:
        if bar is not None:
            bar.close()
    ips = seen / seconds if seconds > 0 else math.nan
    return FitResult(state, history.records, start, seconds, ips)
