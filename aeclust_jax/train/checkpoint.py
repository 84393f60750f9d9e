"""orbax checkpoints of a TrainState, one per saved epoch, the last ``keep`` kept.

    ckpt = Checkpointer(out / "checkpoints", every=5, keep=3)
    ckpt.save(epoch, state)              # saves when epoch % every == 0 (or force=True)
    state, epoch = ckpt.restore_latest(state)

A checkpoint is written into a temporary folder and renamed when complete (orbax), so a killed
process never leaves one that looks complete.
"""

from __future__ import annotations

import os
import pathlib

import jax
import orbax.checkpoint as ocp


def _payload(state) -> dict:
    """What is saved: step, params, opt_state, and batch_stats when the model has them."""
    out = {"step": state.step, "params": state.params, "opt_state": state.opt_state}
    if getattr(state, "batch_stats", None) is not None:
        out["batch_stats"] = state.batch_stats
    return out


class Checkpointer:
    """Saves/restores ``{"step", "params", "opt_state"[, "batch_stats"]}`` of a TrainState, keyed
    by epoch."""

    def __init__(self, directory: str | os.PathLike, *, every: int = 1, keep: int = 3):
        if every < 1 or keep < 1:
            raise ValueError(f"checkpoint every/keep must be >= 1, got every={every} keep={keep}")
        self.directory = pathlib.Path(directory).absolute()
        self.every = int(every)
        self.manager = ocp.CheckpointManager(
            self.directory,
            options=ocp.CheckpointManagerOptions(max_to_keep=keep, create=True,
                                                 enable_async_checkpointing=False))

    def latest_epoch(self) -> int | None:
        return self.manager.latest_step()

    def all_epochs(self) -> list[int]:
        return list(self.manager.all_steps())

    def save(self, epoch: int, state, *, force: bool = False) -> bool:
        """Saves ``state`` as epoch ``epoch`` when due (``epoch % every == 0``) or forced."""
        if not force and epoch % self.every != 0:
            return False
        if epoch in self.manager.all_steps():
            return False
        self.manager.save(epoch, args=ocp.args.StandardSave(_payload(state)), force=True)
        self.manager.wait_until_finished()
        return True

    def restore(self, state, epoch: int):
        """``state`` with step, params, opt_state (and batch_stats) of the saved ``epoch`` (same
        shardings)."""
        target = jax.tree.map(ocp.utils.to_shape_dtype_struct, _payload(state))
        got = self.manager.restore(epoch, args=ocp.args.StandardRestore(target))
        return state.replace(**got)

    def read(self, epoch: int | None = None) -> dict:
        """The payload saved at ``epoch`` (default the newest) as nested dicts of arrays, without a
        target state (e.g. the params and batch_stats of a finished run, no model init needed)."""
        epoch = self.latest_epoch() if epoch is None else epoch
        if epoch is None:
            raise FileNotFoundError(f"no checkpoint in {self.directory}")
        return self.manager.restore(epoch, args=ocp.args.StandardRestore())

    def restore_latest(self, state):
        """(state, epoch) from the newest checkpoint, or (state, 0) when there is none."""
        epoch = self.latest_epoch()
        if epoch is None:
            return state, 0
        return self.restore(state, epoch), int(epoch)

    def close(self):
        self.manager.close()
