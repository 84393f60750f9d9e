"""The primitives the layers share: the backend switch, lax's correlation with explicit pads,
strided tap slices and their stacks, TF 'SAME' padding."""

from __future__ import annotations

import functools
import inspect
import os

import jax
import jax.numpy as jnp
from jax import lax

from aeclust_jax.models.layers import native


_DN = ("NHWC", "HWIO", "NHWC")


def cpu_kernels() -> bool:
    """Whether ``Conv`` and ``max_pool_2x2`` use this package's XLA:CPU kernels (GEMM kernel
    gradients, fused pool gradient): on the CPU backend, unless ``AECLUST_KERNELS`` says
    ``cpu`` (always) or ``xla`` (never; XLA's own ops everywhere)."""
    choice = os.environ.get("AECLUST_KERNELS", "auto")
    if choice not in ("auto", "cpu", "xla"):
        raise ValueError(f"AECLUST_KERNELS must be auto, cpu or xla, got {choice!r}")
    return choice == "cpu" or (choice == "auto" and jax.default_backend() == "cpu")


def kernel_setting() -> tuple[bool, bool]:
    """(``cpu_kernels()``, ``native.enabled()``): what decides which kernels a layer traces to."""
    return cpu_kernels(), native.enabled()


def one_program(*static: str):
    """Decorator: the layer function as one jitted program, with the arguments named in
    ``static`` (ints, strings, tuples) and ``kernel_setting()`` in its cache key (a changed
    ``AECLUST_KERNELS`` or ``AECLUST_NATIVE`` traces again). Inside a jitted step XLA inlines it: the step is the same
    (ResNet-18's and CAEv1's train steps: identical losses and speed). Called eagerly, as a
    model's ``init`` or an ``apply`` outside ``jit`` does, it compiles once per shape instead of
    once per op: Winograd's transforms alone made ~290 small programs, and ResNet-18's eager
    apply on 2 images took 11.5 s (2.1 s now)."""
    def wrap(fn):
        signature = inspect.signature(fn)

        def run(_kernels, **kwargs):
            return fn(**kwargs)
        run.__name__ = run.__qualname__ = fn.__name__          # the program's name in profiles
        program = jax.jit(run, static_argnames=static + ("_kernels",))

        @functools.wraps(fn)
        def call(*args, **kwargs):
            bound = signature.bind(*args, **kwargs)
            bound.apply_defaults()
            return program(_kernels=kernel_setting(), **bound.arguments)
        return call
    return wrap


def _conv(x: jax.Array, kernel: jax.Array, pads: tuple, stride: int = 1) -> jax.Array:
    """Correlation, NHWC x HWIO, explicit ((top, bottom), (left, right)) zero padding."""
    return lax.conv_general_dilated(x, kernel, (stride, stride), pads, dimension_numbers=_DN)


def _tap(xp: jax.Array, i: int, j: int, stride: int, ho: int, wo: int) -> jax.Array:
    """(N, Ho, Wo, C): the (strided) slice of the padded input xp that kernel tap (i, j) reads
    for each output pixel."""
    n, _, _, c = xp.shape
    return lax.slice(xp, (0, i, j, 0), (n, i + (ho - 1) * stride + 1, j + (wo - 1) * stride + 1, c),
                     (1, stride, stride, 1))


def _taps(xp: jax.Array, kh: int, kw: int, stride: int, ho: int, wo: int) -> jax.Array:
    """(N, Ho, Wo, kh*kw, C): every ``_tap`` of a kh x kw kernel, stacked."""
    return jnp.stack([_tap(xp, i, j, stride, ho, wo) for i in range(kh) for j in range(kw)], 3)


def _out_size(x_shape: tuple, kernel_shape: tuple, pads: tuple,
              stride: int = 1) -> tuple[int, int]:
    """(Ho, Wo) of a correlation with this stride."""
    return ((x_shape[1] + sum(pads[0]) - kernel_shape[0]) // stride + 1,
            (x_shape[2] + sum(pads[1]) - kernel_shape[1]) // stride + 1)


def _stacked_taps(x: jax.Array, kernel_shape: tuple, pads: tuple) -> jax.Array:
    """The stride-1 taps of x (N, H, W, C) zero-padded by pads, as a matrix (N*Ho*Wo, kh*kw*C):
    row p, column block t = (i, j) holds x_padded[p + (i, j)]."""
    kh, kw = kernel_shape[:2]
    ho, wo = _out_size(x.shape, kernel_shape, pads)
    (pt, pb), (pl, pr) = pads                            # negative pads crop (lax.pad)
    xp = lax.pad(x, jnp.zeros((), x.dtype), ((0, 0, 0), (pt, pb, 0), (pl, pr, 0), (0, 0, 0)))
    return _taps(xp, kh, kw, 1, ho, wo).reshape(-1, kh * kw * x.shape[-1])


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
    """TensorFlow/XLA 'SAME' padding of one axis: (low, high) for ceil(size / stride) outputs,
    the extra pixel of an odd total after."""
    total = max((-(-size // stride) - 1) * stride + kernel - size, 0)
    return total // 2, total - total // 2
