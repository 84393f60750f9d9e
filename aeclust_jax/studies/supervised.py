"""Supervised training of the ImageNet backbones (ResNet, VGG, EfficientNet-Lite0) on any image
dataset: the supervised rows of S2 and the classifier of S5 stand on it.

    python scripts/train.py --model resnet18 --dataset image_folder \\
        --path ../shared/data/cifar10_jpeg/cifar10-jpeg.zip --epochs 5 --out runs/r18-cifar

Writes the run folder every study writes: config.yaml, history.jsonl (loss, train accuracy,
learning rate and test accuracy per epoch), checkpoints/, figures/curves.png, metrics.json
(test accuracy, per-class accuracy, timings) last. ``--resume`` continues an interrupted run
(only ``epochs`` and the options that do not change the numbers may differ).
The command line is generated from ``SupervisedConfig`` (one option per field, its help in the
field's metadata), with ``--config FILE.yaml`` below the options typed.
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
from aeclust_jax import config
from aeclust_jax.cli import make_parser, prog_name
from aeclust_jax.config import ConfigError, add_config_options, field, to_dict
from aeclust_jax.train import supervised as sup

MODELS = ("resnet18", "resnet34", "resnet50", "vgg16", "vgg16_bn", "efficientnet_lite0")
STEMS = ("auto", "small", "imagenet")


@dataclasses.dataclass(frozen=True)
class SupervisedConfig:
    """One supervised run. Defaults: the usual CIFAR recipe (SGD 0.1, momentum 0.9, weight decay
    5e-4, cosine, crop + flip)."""
    model: str = field("resnet18", "backbone", choices=MODELS)
    dataset: str = field("image_folder", "dataset name (aeclust_jax.data)")
    path: str = field("", "image_folder: the folder or .zip/.tar archive of the images")
    dataset_options: dict = field(dict, "more options of the dataset builder, e.g. channels=3")
    image_size: int = field(0, "resize the images to S x S on the device (0: as stored)")
    stem: str = field("auto", "ResNet stem: small (3x3, no max pool; for inputs <= 64 px), imagenet, "
                           "or auto (small below 64 px)", choices=STEMS)
    embed_dim: int = field(0, "ResNet/VGG: a Dense embedding of this width before the classifier "
                           "(S2's 128-d features; 0: none)")
    pretrained: str = field("", "start from weights: a torchvision .pth (resnet*, vgg*), or 'imagenet' "
                             "(efficientnet_lite0's shipped weights); the head is new")
    backbone_lr_scale: float = field(1.0, "learning rate of the pretrained layers relative to the head "
                                       "(0 freezes them)")
    epochs: int = field(10, "training epochs")
    batch_size: int = field(128, "global batch size (a multiple of the devices)")
    optimizer: str = field("sgd", "optimizer", choices=sup.CLASSIFIER_OPTIMIZERS)
    lr: float = field(0.1, "peak learning rate")
    momentum: float = field(0.9, "sgd momentum")
    weight_decay: float = field(5e-4, "weight decay on the kernels")
    schedule: str = field("cosine", "learning-rate schedule", choices=sup.SCHEDULES)
    warmup_epochs: int = field(0, "linear warmup epochs (cosine, step, constant)")
    label_smoothing: float = field(0.0, "label smoothing of the cross-entropy")
    augment: bool = field(True, "random crop (zero padding) + horizontal flip on the device")
    crop_pad: int = field(4, "padding of the random crop, pixels (at the stored size)")
    train_per_class: int = field(0, "a seeded class-balanced subset of the training split: this "
                                 "many per class (S2: 500 = 5k labels; 0: all)")
    train_limit: int = field(0, "the first N training images (0: all)")
    test_per_class: int = field(0, "a seeded class-balanced subset of the test split: this many "
                                   "per class (0: all)")
    test_limit: int = field(0, "the first N test images in stored order (0: all; an archive sorted "
                               "by class gives few classes: prefer test_per_class)")
    seed: int = field(0, "seed of the init, the subset, the shuffling and the augmentation")
    eval_every: int = field(1, "test accuracy every N epochs (and after the last)")
    eval_batch: int = field(500, "batch size of evaluation")
    checkpoint_every: int = field(1, "checkpoint every N epochs")
    keep_checkpoints: int = field(2, "checkpoints kept")
    progress: bool = field(True, "progress bars and stage lines")

    def validate(self) -> "SupervisedConfig":
        from aeclust_jax.data import DATASETS
        if self.model not in MODELS:
            raise ConfigError(f"unknown model {self.model!r}; choices: {', '.join(MODELS)}")
        if self.dataset not in DATASETS:
            raise ConfigError(f"unknown dataset {self.dataset!r}; choices: {', '.join(DATASETS)}")
        if self.dataset == "image_folder" and not self.path:
            raise ConfigError("dataset image_folder needs --path (a folder or .zip/.tar of images)")
        for name, choices in (("stem", STEMS), ("optimizer", sup.CLASSIFIER_OPTIMIZERS),
                              ("schedule", sup.SCHEDULES)):
            if getattr(self, name) not in choices:
                raise ConfigError(f"unknown {name} {getattr(self, name)!r}; choices: "
                                  f"{', '.join(choices)}")
        for name in ("epochs", "batch_size", "eval_every", "eval_batch", "checkpoint_every",
                     "keep_checkpoints"):
            if getattr(self, name) < 1:
                raise ConfigError(f"{name} must be >= 1, got {getattr(self, name)}")
        for name in ("image_size", "embed_dim", "warmup_epochs", "crop_pad", "train_per_class",
                     "train_limit", "test_per_class", "test_limit", "weight_decay", "backbone_lr_scale", "momentum"):
            if getattr(self, name) < 0:
                raise ConfigError(f"{name} must be >= 0, got {getattr(self, name)}")
        if not self.lr > 0:
            raise ConfigError(f"lr must be > 0, got {self.lr}")
        if not 0 <= self.label_smoothing < 1:
            raise ConfigError(f"label_smoothing must be in [0, 1), got {self.label_smoothing}")
        if self.warmup_epochs >= self.epochs and self.warmup_epochs:
            raise ConfigError(f"warmup_epochs ({self.warmup_epochs}) must be < epochs ({self.epochs})")
        if self.schedule == "onecycle" and self.warmup_epochs:
            raise ConfigError("warmup_epochs does not apply to schedule onecycle (it warms up itself)")
        if self.pretrained == "imagenet" and self.model != "efficientnet_lite0":
            raise ConfigError(f"pretrained 'imagenet' ships only for efficientnet_lite0; for "
                              f"{self.model} pass a torchvision .pth file")
        if self.pretrained and self.pretrained != "imagenet":
            if self.model == "efficientnet_lite0":
                raise ConfigError("efficientnet_lite0 takes --pretrained imagenet (its shipped weights)")
            if not pathlib.Path(self.pretrained).expanduser().is_file():
                raise ConfigError(f"--pretrained {self.pretrained}: no such file")
        if self.model == "efficientnet_lite0" and self.embed_dim:
            raise ConfigError("embed_dim applies to resnet* and vgg*, not efficientnet_lite0")
        return self


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
    init = jax.jit(lambda k, x: model.init(k, x, train=False))(key, sample)
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
    predict_kw = dict(batch_size=cfg.eval_batch, mesh=mesh, image_size=cfg.image_size or None)

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
                     "eval_batch")


def train_parser():
    """``train.py --model resnet18|...``: one option per SupervisedConfig field."""
    p = make_parser(prog=prog_name("train.py"),
                    description="Supervised training of an ImageNet backbone on an image dataset; "
                                "reports the test accuracy.\nAn option left out takes its value "
                                "from --config FILE.yaml, else the default shown.")
    add_config_options(p, SupervisedConfig)
    p.add_argument("--config", help="YAML file of SupervisedConfig fields")
    p.add_argument("--out", help="run folder (default runs/<dataset>-<model>-<seed>)")
    p.add_argument("--resume", action="store_true", help="continue the run in --out")
    return p


def config_from_args(args) -> SupervisedConfig:
    """Defaults <- --config <- options typed; --resume starts from the run's config.yaml."""
    return config.config_from_args(SupervisedConfig, args)


def train_main(argv: Sequence[str]) -> int:
    args = train_parser().parse_args(list(argv))
    cfg = config_from_args(args).validate()
    out = pathlib.Path(args.out or f"runs/{cfg.dataset}-{cfg.model}-{cfg.seed}")
    m = run(cfg, out, resume=args.resume)
    print(f"test_accuracy={m['test_accuracy']:.4f} train_images={m['train_images']} "
          f"epochs={m['epochs']} images_per_second={m['images_per_second']:.1f}")
    print(f"wrote {out}")
    return 0


__all__ = ("SupervisedConfig", "MODELS", "run", "load_data", "build_model", "train_main",
           "train_parser", "plot_curves")
