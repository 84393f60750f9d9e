"""Supervised classification on the shared engine: on-device augmentation, cross-entropy with
batch norm, learning-rate schedules, a separate backbone learning rate, accuracy.

    model = get_model("resnet18", num_classes=10, small_stem=True)
    schedule = make_schedule("cosine", 0.1, total_steps=epochs * steps, warmup_steps=steps)
    tx = make_classifier_optimizer("sgd", schedule, weight_decay=5e-4)
    state = create_train_state(model, key, x[:1].astype("float32"), tx, init_kwargs={"train": False})
    result = fit(state, {"image": x, "label": y}, classification_loss(model), batch_size=128,
                 epochs=epochs, key=key, last_batch="drop")
    acc = accuracy(model, variables_of(result.state), x_test, y_test, batch_size=500, mesh=mesh)

Images stay uint8 on the devices; augmentation (random crop of the zero-padded image, horizontal
flip), the resize and the normalisation run inside the jitted step (``features.preprocess``).
"""

from __future__ import annotations

import functools
from typing import Callable

import jax
import jax.numpy as jnp
import numpy as np
import optax

from aeclust_jax.features import IMAGENET_MEAN, IMAGENET_STD, preprocess
from aeclust_jax.train.optim import path_str
from aeclust_jax.train.steps import masked_mean, predict

SCHEDULES = ("constant", "cosine", "step", "onecycle")
CLASSIFIER_OPTIMIZERS = ("sgd", "adam", "adamw")
# top-level module names of the classification heads of our backbones (ResNet fc, VGG
# classifier_6, EfficientNet classifier, the optional embedding): new when fine-tuning
HEAD_MODULES = ("fc", "classifier_6", "classifier", "embed")


def random_crop_flip(images: jax.Array, key: jax.Array, *, pad: int = 4,
                     flip: bool = True) -> jax.Array:
    """(B, H, W, C) -> (B, H, W, C): each image zero-padded by ``pad`` pixels on every side and
    cropped back to H x W at a uniform random offset (the CIFAR recipe), then mirrored left-right
    with probability 1/2 when ``flip``. Any dtype (uint8 stays uint8)."""
    b, h, w, c = images.shape
    k_y, k_x, k_f = jax.random.split(key, 3)
    if pad > 0:
        padded = jnp.pad(images, ((0, 0), (pad, pad), (pad, pad), (0, 0)))
        dy = jax.random.randint(k_y, (b,), 0, 2 * pad + 1)
        dx = jax.random.randint(k_x, (b,), 0, 2 * pad + 1)
        crop = lambda im, y, x: jax.lax.dynamic_slice(im, (y, x, 0), (h, w, c))
        images = jax.vmap(crop)(padded, dy, dx)
    if flip:
        mirror = jax.random.bernoulli(k_f, 0.5, (b,))
        images = jnp.where(mirror[:, None, None, None], images[:, :, ::-1], images)
    return images


def _norm(model, mean, std):
    mean = tuple(mean if mean is not None else getattr(model, "input_mean", IMAGENET_MEAN))
    std = tuple(std if std is not None else getattr(model, "input_std", IMAGENET_STD))
    return mean, std


def classification_loss(model, *, image_size: int | None = None, augment: bool = True,
                        crop_pad: int = 4, label_smoothing: float = 0.0, mean=None,
                        std=None) -> Callable:
    """The engine's loss for ``model`` (logits (B, K) from ``model.apply(v, x, train=True)``):
    softmax cross-entropy over the real rows of the batch (``batch["image"]`` uint8 (B, H, W, C),
    ``batch["label"]`` int (B,)), with optional label smoothing; aux: ``ce`` and ``train_acc``
    (on the augmented images). With batch norm the engine passes ``batch_stats`` and gets the
    updated statistics back. ``mean``/``std``: the normalisation on [0, 1] pixels (default the
    model's ``input_mean``/``input_std``, else ImageNet's); ``image_size``: resize first.
    Equal settings return the same function object, so a second run in the process (a resume,
    another seed) reuses the compiled train step (the engine memoises it on the loss function)."""
    return _classification_loss(model, image_size, augment, crop_pad, float(label_smoothing),
                                *_norm(model, mean, std))


@functools.lru_cache(maxsize=16)
def _classification_loss(model, image_size, augment, crop_pad, label_smoothing, mean, std):
    def loss_fn(params, batch, rng, batch_stats=None):
        k_aug, k_drop = jax.random.split(rng)
        x = batch["image"]
        if augment:
            x = random_crop_flip(x, k_aug, pad=crop_pad)
        x = preprocess(x, image_size, mean, std)
        variables = {"params": params}
        if batch_stats is not None:
            variables["batch_stats"] = batch_stats
            logits, new = model.apply(variables, x, train=True, rngs={"dropout": k_drop},
                                      mutable=["batch_stats"])
        else:
            logits, new = model.apply(variables, x, train=True, rngs={"dropout": k_drop}), None
        target = jax.nn.one_hot(batch["label"], logits.shape[-1])
        if label_smoothing:
            target = optax.smooth_labels(target, label_smoothing)
        ce = masked_mean(optax.softmax_cross_entropy(logits, target), batch["mask"])
        hit = (jnp.argmax(logits, -1) == batch["label"]).astype(jnp.float32)
        aux = {"ce": ce, "train_acc": masked_mean(hit, batch["mask"])}
        return (ce, aux) if batch_stats is None else (ce, (aux, new["batch_stats"]))

    return loss_fn


def variables_of(state) -> dict:
    """The model variables of a train state: {'params'[, 'batch_stats']}."""
    out = {"params": state.params}
    if getattr(state, "batch_stats", None) is not None:
        out["batch_stats"] = state.batch_stats
    return out


def predict_labels(model, variables, images: np.ndarray, *, batch_size: int, mesh,
                   image_size: int | None = None, mean=None, std=None,
                   progress: bool = False) -> np.ndarray:
    """int32 (N,): argmax of the model's logits (eval mode) on uint8 images (N, H, W, C)."""
    fn = _label_fn(model, image_size, *_norm(model, mean, std))
    return predict(fn, variables, {"image": images}, batch_size=batch_size, mesh=mesh,
                   progress=progress)


@functools.lru_cache(maxsize=16)
def _label_fn(model, image_size, mean, std):
    """One function object per setting, so the per-epoch evaluation compiles once (jit caches
    on the function's identity)."""
    def fn(v, batch):
        x = preprocess(batch["image"], image_size, mean, std)
        return jnp.argmax(model.apply(v, x, train=False), -1).astype(jnp.int32)
    return fn


def accuracy(model, variables, images: np.ndarray, labels: np.ndarray, *, batch_size: int,
             mesh, **kwargs) -> float:
    """Top-1 accuracy (a fraction) of ``predict_labels`` against int labels (N,)."""
    pred = predict_labels(model, variables, images, batch_size=batch_size, mesh=mesh, **kwargs)
    return float(np.mean(pred == np.asarray(labels)))


def per_class_accuracy(labels: np.ndarray, pred: np.ndarray, num_classes: int) -> np.ndarray:
    """float64 (num_classes,): the accuracy over the rows of each true class (nan: no rows)."""
    labels, pred = np.asarray(labels), np.asarray(pred)
    out = np.full(num_classes, np.nan)
    for c in range(num_classes):
        rows = labels == c
        if rows.any():
            out[c] = float(np.mean(pred[rows] == c))
    return out


def make_schedule(name: str, lr: float, *, total_steps: int,
                  warmup_steps: int = 0) -> optax.Schedule:
    """Learning rate per step: ``constant``; ``cosine`` (linear warmup from 0, then cosine decay
    to 0 at ``total_steps``); ``step`` (x0.1 at 50% and again at 75% of the steps, after the
    warmup); ``onecycle`` (optax's one-cycle: up to ``lr`` over the first 30%, then down)."""
    if name not in SCHEDULES:
        raise ValueError(f"unknown schedule {name!r}; choices: {', '.join(SCHEDULES)}")
    if total_steps < 1 or not 0 <= warmup_steps < max(total_steps, 1) + 1:
        raise ValueError(f"need total_steps >= 1 and 0 <= warmup_steps <= total_steps, got "
                         f"{total_steps}, {warmup_steps}")
    if name == "onecycle":
        return optax.cosine_onecycle_schedule(total_steps, lr)
    if name == "cosine":
        if warmup_steps:
            return optax.warmup_cosine_decay_schedule(0.0, lr, warmup_steps, total_steps)
        return optax.cosine_decay_schedule(lr, total_steps)
    if name == "step":
        main = optax.piecewise_constant_schedule(
            lr, {int(total_steps * 0.5) - warmup_steps: 0.1, int(total_steps * 0.75) - warmup_steps: 0.1})
    else:
        main = optax.constant_schedule(lr)
    if not warmup_steps:
        return main
    return optax.join_schedules([optax.linear_schedule(0.0, lr, warmup_steps), main],
                                [warmup_steps])


def is_head(path: str) -> bool:
    """Whether a '/'-joined parameter path lies in a classification head (HEAD_MODULES)."""
    return path.split("/", 1)[0] in HEAD_MODULES


def make_classifier_optimizer(name: str, schedule: optax.Schedule | float, *,
                              momentum: float = 0.9, weight_decay: float = 0.0,
                              backbone_lr_scale: float = 1.0,
                              head: Callable[[str], bool] = is_head) -> optax.GradientTransformation:
    """``sgd`` (momentum, Nesterov off), ``adam`` or ``adamw`` at ``schedule``; ``weight_decay``
    on conv/dense kernels only (not biases or batch-norm scales: SGD adds it to the gradient,
    adamw decouples it). ``backbone_lr_scale`` != 1: the parameters outside ``head(path)`` learn
    at ``scale x`` the rate (fine-tuning: optax.multi_transform), 0 freezes them."""
    if name not in CLASSIFIER_OPTIMIZERS:
        raise ValueError(f"unknown optimizer {name!r}; choices: {', '.join(CLASSIFIER_OPTIMIZERS)}")
    if backbone_lr_scale < 0:
        raise ValueError(f"backbone_lr_scale must be >= 0, got {backbone_lr_scale}")

    def kernels(params):
        return jax.tree_util.tree_map_with_path(lambda p, v: path_str(p).endswith("kernel"), params)

    def build(lr):
        if name == "sgd":
            parts = [optax.add_decayed_weights(weight_decay, kernels)] if weight_decay else []
            return optax.chain(*parts, optax.sgd(lr, momentum=momentum or None))
        if name == "adamw":
            return optax.adamw(lr, weight_decay=weight_decay, mask=kernels)
        parts = [optax.add_decayed_weights(weight_decay, kernels)] if weight_decay else []
        return optax.chain(*parts, optax.adam(lr))

    if backbone_lr_scale == 1.0:
        return build(schedule)
    if backbone_lr_scale == 0.0:
        backbone = optax.set_to_zero()
    else:
        scaled = (lambda s: backbone_lr_scale * schedule(s)) if callable(schedule) \
            else backbone_lr_scale * schedule
        backbone = build(scaled)

    def labels(params):
        return jax.tree_util.tree_map_with_path(
            lambda p, _: "head" if head(path_str(p)) else "backbone", params)
    return optax.multi_transform({"head": build(schedule), "backbone": backbone}, labels)


def merge_pretrained(init: dict, pretrained: dict) -> tuple[dict, list[str]]:
    """Variables with every leaf of ``pretrained`` whose path and shape match ``init``'s, the
    rest (a new head) from ``init``. Returns (variables, paths taken from ``init``)."""
    flat_pre = {path_str(p): v for p, v in jax.tree_util.tree_flatten_with_path(pretrained)[0]}
    fresh: list[str] = []

    def pick(path, leaf):
        key = path_str(path)
        got = flat_pre.get(key)
        if got is not None and tuple(got.shape) == tuple(leaf.shape):
            return jnp.asarray(got, leaf.dtype)
        fresh.append(key)
        return leaf

    merged = jax.tree_util.tree_map_with_path(pick, init)
    return merged, fresh


__all__ = ("random_crop_flip", "classification_loss", "variables_of", "predict_labels",
           "accuracy", "per_class_accuracy", "make_schedule", "make_classifier_optimizer",
           "merge_pretrained", "is_head", "SCHEDULES", "CLASSIFIER_OPTIMIZERS", "HEAD_MODULES")
