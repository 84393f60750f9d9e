"""The supervised study's recipe: the data (subsets, limits), the backbone and its pretrained
weights, the train state, one run (``run``), its curves, and ``train.py --model resnet18|...``.
"""

from __future__ import annotations

import dataclasses
import pathlib
import time
from typing import Sequence

import jax
import jax.numpy as jnp
import numpy as np

from aeclust_jax import runs, train
# aeclust_jax.config as _config: a public name ``config`` would be star-imported by the package
# and replace its submodule ``supervised.config``.
from aeclust_jax import config as _config
from aeclust_jax.cli import make_parser, prog_name
from aeclust_jax.config import ConfigError, add_config_options, add_run_options, to_dict
from aeclust_jax.studies.supervised.config import SupervisedConfig
from aeclust_jax.train import supervised as sup

# ----------------------------------------------------------------------------- recipe

def load_data(cfg: SupervisedConfig):
    """(train Dataset, test Dataset) with the subset and limits of ``cfg`` applied."""
    from aeclust_jax.data import balanced_subset, load
    opts = dict(cfg.dataset_options)
    if cfg.dataset == "image_folder":
        opts["path"] = cfg.path
    tr, te = (load(cfg.dataset, split, progress=cfg.progress, **opts) for split in ("train", "test"))
    rows = np.arange(len(tr))
    if cfg.train_per_class:
        rows = balanced_subset(tr.labels, cfg.train_per_class, cfg.seed)
    if cfg.train_limit:
        rows = rows[:cfg.train_limit]
    tr = dataclasses.replace(tr, images=tr.images[rows], labels=tr.labels[rows])
    test_rows = np.arange(len(te))
    if cfg.test_per_class:
        test_rows = balanced_subset(te.labels, cfg.test_per_class, cfg.seed)
    if cfg.test_limit:
        test_rows = test_rows[:cfg.test_limit]
    if len(test_rows) < len(te):
        te = dataclasses.replace(te, images=te.images[test_rows], labels=te.labels[test_rows])
    if (tr.labels < 0).any() or (te.labels < 0).any():
        raise ConfigError(f"dataset {cfg.dataset} has unlabeled rows; supervised training needs labels")
    return tr, te


def build_model(cfg: SupervisedConfig, num_classes: int, input_size: int):
    """The backbone with a ``num_classes`` head (and the embedding when asked)."""
    from aeclust_jax.models import get_model
    kw = {"num_classes": num_classes}
    if cfg.model.startswith(("resnet", "vgg")) and cfg.embed_dim:
        kw["embed_dim"] = cfg.embed_dim
    if cfg.model.startswith("resnet"):
        kw["small_stem"] = cfg.stem == "small" or (cfg.stem == "auto" and input_size < 64)
    return get_model(cfg.model, **kw)


def pretrained_variables(cfg: SupervisedConfig, model) -> dict:
    """The variables of ``--pretrained`` for ``model`` (its head may be missing: merged later)."""
    if cfg.pretrained == "imagenet":
        from aeclust_jax.models import efficientnet_lite0_imagenet
        return efficientnet_lite0_imagenet(num_classes=0)[1]
    from aeclust_jax.models import import_torch
    kw = {f: getattr(model, f) for f in ("num_classes", "embed_dim", "small_stem")
          if hasattr(model, f)}
    return import_torch(cfg.model, str(pathlib.Path(cfg.pretrained).expanduser()),
                        seed=cfg.seed, **kw)[1]


def init_state(cfg: SupervisedConfig, model, key, sample, steps_per_epoch: int):
    """The train state: init (or pretrained + new head) and the optimizer with its schedule."""
    total = cfg.epochs * steps_per_epoch
    schedule = sup.make_schedule(cfg.schedule, cfg.lr, total_steps=total,
                                 warmup_steps=cfg.warmup_epochs * steps_per_epoch)
    init = train.jitted_init(model, train=False)(key, sample)
    variables = {k: v for k, v in init.items() if k in ("params", "batch_stats")}
    scale = 1.0
    if cfg.pretrained:
        variables, _ = sup.merge_pretrained(variables, pretrained_variables(cfg, model))
        scale = cfg.backbone_lr_scale
    tx = sup.make_classifier_optimizer(cfg.optimizer, schedule, momentum=cfg.momentum,
                                       weight_decay=cfg.weight_decay, backbone_lr_scale=scale)
    state = train.create_train_state(model, None, None, tx, params=variables["params"],
                                     batch_stats=variables.get("batch_stats"))
    return state, schedule


def run(cfg: SupervisedConfig, out: str | pathlib.Path, *, resume: bool = False) -> dict:
    """Trains ``cfg.model`` on the train split, evaluates on the test split, into ``out``.
    The config, ``out`` and the data are checked before anything is written."""
    cfg = cfg.validate()
    out = runs.check_run_dir(out, resume=resume)
    if resume:
        runs.check_resume(out, to_dict(cfg), may_differ=RESUME_MAY_DIFFER)
        if runs.is_complete(out) and runs.read_json(out / "metrics.json")["epochs"] >= cfg.epochs:
            print(f"{out} is already complete with {cfg.epochs} epochs; nothing to do")
            return runs.read_json(out / "metrics.json")
    train.maybe_initialize_distributed()
    t0 = time.perf_counter()
    tr, te = load_data(cfg)
    load_seconds = time.perf_counter() - t0
    mesh = train.make_mesh()
    if cfg.batch_size % mesh.size:
        raise ConfigError(f"batch_size {cfg.batch_size} must be a multiple of the {mesh.size} devices")
    if cfg.batch_size > len(tr):
        raise ConfigError(f"batch_size {cfg.batch_size} exceeds the {len(tr)} training images")
    size = cfg.image_size or tr.images.shape[1]
    model = build_model(cfg, tr.num_classes, size)
    out = runs.prepare_run_dir(out, resume=resume)
    if resume:
        previous = out / "metrics.json"
        if previous.is_file():
            previous.replace(out / f"metrics.epochs{runs.read_json(previous)['epochs']}.json")
    runs.write_config(out / "config.yaml", to_dict(cfg))
    steps = len(tr) // cfg.batch_size                        # last_batch=drop: full batches only
    k_init, k_fit = jax.random.split(jax.random.key(cfg.seed))
    sample = jnp.zeros((1, size, size, 3))          # gray images are repeated to RGB
    state, schedule = init_state(cfg, model, k_init, sample, steps)
    loss_fn = sup.classification_loss(model, image_size=cfg.image_size or None,
                                      augment=cfg.augment, crop_pad=cfg.crop_pad,
                                      label_smoothing=cfg.label_smoothing)
    predict_kw = dict(batch_size=cfg.eval_batch_size, mesh=mesh, image_size=cfg.image_size or None)

    last = {}                                  # the newest evaluation's predictions

    def eval_fn(st, epoch):
        t = time.perf_counter()
        last["epoch"], last["pred"] = epoch, sup.predict_labels(
            model, sup.variables_of(st), te.images, **predict_kw)
        last["seconds"] = time.perf_counter() - t
        return {"test_accuracy": float(np.mean(last["pred"] == te.labels)),
                "lr": float(schedule(epoch * steps - 1))}

    ckpt = train.Checkpointer(out / "checkpoints", every=cfg.checkpoint_every,
                              keep=cfg.keep_checkpoints)
    if resume:
        print(f"resuming {out} from epoch {ckpt.latest_epoch() or 0} of {cfg.epochs}", flush=True)
    try:
        result = train.fit(state, {"image": tr.images, "label": tr.labels.astype(np.int32)},
                           loss_fn, batch_size=cfg.batch_size, epochs=cfg.epochs, key=k_fit,
                           mesh=mesh, last_batch="drop", eval_fn=eval_fn,
                           eval_every=cfg.eval_every, checkpointer=ckpt, resume=resume,
                           history_path=out / "history.jsonl", progress=cfg.progress,
                           desc=f"{cfg.model}/{cfg.dataset}/s{cfg.seed}")
    finally:
        ckpt.close()
    if last.get("epoch") == cfg.epochs:        # fit evaluates after the last epoch
        pred, eval_seconds = last["pred"], last["seconds"]
    else:                  # a resume with every epoch done (killed in its final evaluation)
        t1 = time.perf_counter()
        pred = sup.predict_labels(model, sup.variables_of(result.state), te.images, **predict_kw)
        eval_seconds = time.perf_counter() - t1
    per_class = sup.per_class_accuracy(te.labels, pred, te.num_classes)
    warm = result.history[1:] or result.history
    metrics = {
        "test_accuracy": float(np.mean(pred == te.labels)),
        "per_class_accuracy": dict(zip(te.class_names, per_class.tolist())),
        "final_train_loss": result.history[-1]["loss"],
        "final_train_accuracy": result.history[-1]["train_acc"],
        "epochs": cfg.epochs, "model": cfg.model, "dataset": cfg.dataset, "seed": cfg.seed,
        "train_images": len(tr), "test_images": len(te), "image_size": size,
        "num_params": train.count_params(result.state.params),
        "train_seconds": sum(r["seconds"] for r in result.history),
        "images_per_second": steps * cfg.batch_size * len(warm) / sum(r["seconds"] for r in warm),
        "load_seconds": load_seconds, "eval_seconds": eval_seconds,
        "devices": mesh.size, "platform": jax.devices()[0].platform, "scale": runs.SCALE}
    plot_curves(result.history, out / "figures" / "curves.png",
                title=f"{cfg.model} on {cfg.dataset} ({len(tr)} images)")
    runs.write_json(out / "metrics.json", metrics)
    return metrics


def plot_curves(history: list[dict], path: pathlib.Path, *, title: str) -> pathlib.Path:
    """Training loss and train/test accuracy per epoch, one figure of two panels."""
    from aeclust_jax import viz
    epochs = [r["epoch"] for r in history]
    fig, (a, b) = viz.figure(1, 2, figsize=(9, 3.4))
    a.plot(epochs, [r["loss"] for r in history], marker="o")
    a.set(xlabel="epoch", ylabel="cross-entropy (train)")
    b.plot(epochs, [r["train_acc"] for r in history], marker="o", label="train (augmented)")
    ev = [r for r in history if "test_accuracy" in r]
    b.plot([r["epoch"] for r in ev], [r["test_accuracy"] for r in ev], marker="s", label="test")
    b.set(xlabel="epoch", ylabel="accuracy")
    b.legend()
    fig.suptitle(title, fontsize=10)
    return viz.save(fig, path)


# ----------------------------------------------------------------------------- CLI

# Fields that may change on --resume: the epoch count, and those that do not change the numbers.
RESUME_MAY_DIFFER = ("epochs", "progress", "checkpoint_every", "keep_checkpoints", "eval_every",
                     "eval_batch_size")


def train_parser():
    """``train.py --model resnet18|...``: one option per SupervisedConfig field."""
    p = make_parser(prog=prog_name("train.py"),
                    description="Supervised training of an ImageNet backbone on an image dataset; "
                                "reports the test accuracy.\nAn option left out takes its value "
                                "from --config FILE.yaml, else the default shown.")
    add_config_options(p, SupervisedConfig)
    add_run_options(p, SupervisedConfig, "runs/<dataset>-<model>-<seed>")
    return p


def config_from_args(args) -> SupervisedConfig:
    """Defaults <- --config <- options typed; --resume starts from the run's config.yaml."""
    return _config.config_from_args(SupervisedConfig, args)


def train_main(argv: Sequence[str]) -> int:
    args = train_parser().parse_args(list(argv))
    cfg = config_from_args(args).validate()
    out = pathlib.Path(args.out or f"runs/{cfg.dataset}-{cfg.model}-{cfg.seed}")
    m = run(cfg, out, resume=args.resume)
    print(f"test_accuracy={m['test_accuracy']:.4f} train_images={m['train_images']} "
          f"epochs={m['epochs']} images_per_second={m['images_per_second']:.1f}")
    print(f"wrote {out}")
    return 0
