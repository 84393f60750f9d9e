"""Training engine: a generic, jitted, data-parallel minibatch loop for any Flax Linen model.

    from aeclust_jax import train

    tx = train.make_optimizer("adadelta")                    # Keras-2020 Adadelta: lr 1, rho .95, eps 1e-7
    state = train.create_train_state(model, key, x[:1].astype("float32") / 255, tx)

    def loss_fn(params, batch, rng):                          # runs inside the jitted step
        x = train.to_float(batch["image"])                    # uint8 on device -> float in [0, 1]
        recon = model.apply({"params": params}, x)
        loss = train.masked_mean((recon - x) ** 2, batch["mask"])
        return loss, {"mse": loss}                            # aux: scalars, averaged per epoch

    result = train.fit(state, {"image": x, "label": y}, loss_fn, batch_size=32, epochs=25,
                       key=jax.random.key(0),
                       eval_fn=lambda state, epoch: {"psnr": ...},     # optional, every eval_every
                       checkpointer=train.Checkpointer(out / "checkpoints", every=5, keep=3),
                       resume=False, history_path=out / "history.jsonl")
    result.state, result.history, result.images_per_second

    outs = train.predict(lambda p, b: model.apply({"params": p}, train.to_float(b["image"])),
                         result.state.params, {"image": x_test}, batch_size=1000, mesh=train.make_mesh())

Data (a dict of host arrays, same first dimension; keep images uint8) is placed once on a 1-D
``batch`` mesh of all devices; each epoch is shuffled on device into (steps, B, ...) sharded along
B; params are replicated (jit + NamedSharding, the same code on 1 CPU, n forced CPU devices or
GPUs). Freeze parameters with ``make_optimizer(..., frozen=lambda path: ...)``; full-batch training
is ``batch_size = N``.
"""

from aeclust_jax.train.checkpoint import Checkpointer
from aeclust_jax.train.loop import FitResult, History, TrainingDivergedError, fit
from aeclust_jax.train.optim import OPTIMIZERS, freeze, make_optimizer, path_str
from aeclust_jax.train.sharding import (is_main_process, make_mesh, maybe_initialize_distributed,
                                        replicate, shard_rows, sync, to_host)
from aeclust_jax.train.state import count_params, create_train_state, jitted_init
from aeclust_jax.train.steps import masked_mean, predict, steps_per_epoch, to_float

__all__ = [
    "Checkpointer", "FitResult", "History", "OPTIMIZERS", "TrainingDivergedError", "count_params",
    "create_train_state", "fit", "freeze", "jitted_init", "make_mesh", "make_optimizer", "masked_mean",
    "maybe_initialize_distributed", "is_main_process", "sync", "path_str", "predict", "replicate", "shard_rows",
    "steps_per_epoch", "to_float", "to_host",
]
