"""A few train.fit epochs of S1's cae_skip on 64 smooth-blob images, for the multi-process
tests (tests/test_distributed.py): run alone, or as each process of ``aeclust_jax.launch``.

    python tests/distributed_worker.py OUT.npz [--epochs 2] [--batch 16] [--images 64] [--die-at-step N]

Process 0 writes OUT.npz: the per-epoch losses and every parameter, flattened; with a checkpoint
folder (``--ckpt``) the run checkpoints each epoch and ``--resume`` continues from it.
``--die-at-step N``: process 1 exits abruptly (status 3) at global step N (the kill test).
"""

import argparse
import os
import sys

import numpy as np


def main():
    p = argparse.ArgumentParser()
    p.add_argument("out")
    p.add_argument("--epochs", type=int, default=2)
    p.add_argument("--batch", type=int, default=16)
    p.add_argument("--images", type=int, default=64)
    p.add_argument("--die-at-step", type=int, default=-1)
    p.add_argument("--ckpt")
    p.add_argument("--resume", action="store_true")
    p.add_argument("--then-fresh", help="afterwards, the same run from scratch without checkpoints "
                                        "(same compiled steps) into this .npz")
    a = p.parse_args()

    from aeclust_jax import train
    train.maybe_initialize_distributed()
    import jax

    from aeclust_jax.studies.skip_ae import S1Config, build_model, make_loss

    rng = np.random.default_rng(0)         # smooth random blobs: every process builds the same
    yy, xx = np.mgrid[0:28, 0:28]
    centres = rng.uniform(6, 22, (a.images, 2))
    images = np.exp(-((yy - centres[:, :1, None]) ** 2 + (xx - centres[:, 1:, None]) ** 2) / 18.0)
    images = (255 * images[..., None]).astype(np.uint8)

    cfg = S1Config(model="cae_skip")
    model = build_model(cfg, images.shape[1:])
    key = jax.random.key(0)
    state = train.create_train_state(model, key, images[:1].astype(np.float32) / 255,
                                     train.make_optimizer("adam", 1e-3))
    step = {"n": 0}

    def hook(epoch, s):
        step["n"] += 1
        if jax.process_index() == 1 and step["n"] == a.die_at_step:
            os._exit(3)

    loss_fn = make_loss(model)

    def run(out, ckpt_dir, resume):
        ckpt = train.Checkpointer(ckpt_dir, every=1, keep=3) if ckpt_dir else None
        res = train.fit(state, {"image": images}, loss_fn, batch_size=a.batch, epochs=a.epochs,
                        key=key, step_hook=hook, checkpointer=ckpt, resume=resume)
        if ckpt is not None:
            ckpt.close()
        leaves = [np.asarray(train.to_host(x)).ravel()
                  for x in jax.tree_util.tree_leaves(res.state.params)]
        if jax.process_index() == 0:
            np.savez(out, losses=np.array([r["loss"] for r in res.history]),
                     params=np.concatenate(leaves), processes=jax.process_count(),
                     devices=jax.device_count())

    run(a.out, a.ckpt, a.resume)
    if a.then_fresh:
        run(a.then_fresh, None, False)
    return 0


if __name__ == "__main__":
    sys.exit(main())
