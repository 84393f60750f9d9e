"""Compiled XLA:CPU kernels (C++ custom calls through ``jax.ffi``), built on first use.

Winograd's input and output transforms (``winograd.cc``), which XLA runs at a third of the
machine's elementwise rate, and a direct convolution (``direct_conv.cc``) for the convs XLA runs
far below the machine's FMA rate (few input channels, stride 2). The first process that needs
them compiles the sources
with the system's C++ compiler against the FFI headers of the installed jaxlib (10-20 s, once)
into ``$AECLUST_NATIVE_CACHE`` (default ``~/.cache/aeclust_jax/native``), keyed by the sources,
the jaxlib version, the compiler and the CPU's instruction sets (it is built with
``-march=native``); later processes load the library. Without a compiler, or where the build
fails (a warning says why, once), the jnp version runs instead: the same function to float
rounding. ``AECLUST_NATIVE=off`` never builds or uses it (``auto``, the default: use it on the
CPU backend when it builds)."""

from __future__ import annotations

import contextlib
import ctypes
import hashlib
import os
import pathlib
import platform
import shutil
import subprocess
import tempfile
import threading
import warnings

import jax
import jax.numpy as jnp
import jaxlib
import numpy as np
from jax.experimental.custom_partitioning import custom_partitioning
from jax.sharding import NamedSharding, PartitionSpec as P

_HERE = pathlib.Path(__file__).parent
_SOURCES = [_HERE / "winograd.cc", _HERE / "direct_conv.cc"]
_HEADERS = [_HERE / "native_common.h"]
# our target names -> the handler symbols in the library
_TARGETS = {"input": "aeclust_winograd_input", "output": "aeclust_winograd_output",
            "direct": "aeclust_direct_conv"}
_SYMBOLS = {"input": "AeclustWinogradInput", "output": "AeclustWinogradOutput",
            "direct": "AeclustDirectConv"}
_lock = threading.Lock()
_state: dict = {}          # "lib": the loaded library, or "error": why there is none


_forced = threading.local()


@contextlib.contextmanager
def forced(value: bool):
    """``enabled()`` returns ``value`` inside (this thread): for the rules of a custom VJP, which
    JAX traces once per shape whatever the environment says, so the setting must be one of
    their static arguments (``convolution.conv2d``)."""
    before = getattr(_forced, "value", None)
    _forced.value = value
    try:
        yield
    finally:
        _forced.value = before


def enabled() -> bool:
    """Whether ``AECLUST_NATIVE`` allows the compiled kernels (auto | off); part of the layer
    functions' cache key (``base.one_program``)."""
    if getattr(_forced, "value", None) is not None:
        return _forced.value
    choice = os.environ.get("AECLUST_NATIVE", "auto")
    if choice not in ("auto", "off"):
        raise ValueError(f"AECLUST_NATIVE must be auto or off, got {choice!r}")
    return choice == "auto"


def _cpu_features() -> str:
    """The CPU's instruction-set flags (x86 /proc/cpuinfo 'flags', ARM 'Features'), else the
    machine name: a library built with -march=native is only for CPUs with the same ones."""
    try:
        for line in pathlib.Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.machine() + platform.processor()


def _compiler() -> str | None:
    return os.environ.get("CXX") or shutil.which("c++") or shutil.which("g++") or shutil.which("clang++")


def _build(cache: pathlib.Path) -> pathlib.Path:
    """The compiled library for this source, jaxlib, compiler and CPU: from the cache, or built
    into it (a temporary name renamed at the end, so processes building at once never load a
    half-written file). Raises RuntimeError with the compiler's message."""
    cxx = _compiler()
    if cxx is None:
        raise RuntimeError("no C++ compiler (c++, g++ or clang++; or set CXX)")
    version = subprocess.run([cxx, "--version"], capture_output=True, text=True).stdout
    texts = [p.read_text() for p in _SOURCES + _HEADERS]
    key = hashlib.sha256("\0".join(texts + [jaxlib.__version__, cxx, version,
                                             _cpu_features()]).encode()).hexdigest()[:16]
    lib = cache / f"kernels-{key}.so"
    if lib.is_file():
        return lib
    cache.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(suffix=".so.tmp", dir=cache)
    os.close(fd)
    cmd = [cxx, "-O3", "-march=native", "-std=c++17", "-fPIC", "-shared", "-w",
           f"-I{jax.ffi.include_dir()}", *map(str, _SOURCES), "-o", tmp]
    try:
        done = subprocess.run(cmd, capture_output=True, text=True)
        if done.returncode:
            raise RuntimeError(f"{' '.join(cmd)} failed:\n{done.stderr[-2000:]}")
        os.replace(tmp, lib)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return lib


def _load() -> ctypes.CDLL | None:
    """The registered library, built on the first call; None (with one warning) if it cannot be."""
    with _lock:
        if not _state:
            cache = pathlib.Path(os.environ.get("AECLUST_NATIVE_CACHE")
                                 or pathlib.Path.home() / ".cache" / "aeclust_jax" / "native")
            try:
                lib = ctypes.cdll.LoadLibrary(str(_build(cache)))
                for kind, target in _TARGETS.items():
                    jax.ffi.register_ffi_target(target, jax.ffi.pycapsule(getattr(lib, _SYMBOLS[kind])),
                                                platform="cpu")
                _state["lib"] = lib
            except (RuntimeError, OSError) as e:
                _state["error"] = str(e)
                warnings.warn(f"aeclust_jax: the compiled kernels are not available, using the "
                              f"jnp / XLA versions ({e})", RuntimeWarning, stacklevel=3)
        return _state.get("lib")


def available() -> bool:
    """Whether the compiled kernels can run here: allowed (``enabled``), on the CPU backend, and
    built (building them now if needed)."""
    return enabled() and jax.default_backend() == "cpu" and _load() is not None


def _batch_parallel(fn, n_arrays: int, n_static: int, in_axis: int, out_axis: int, rule: str):
    """fn(array, *other arrays, *n_static static ints) -> array, a custom call on whole images,
    partitioned over the batch under a sharded jit: each device runs it on its own images (a
    custom call is otherwise run on the gathered batch: all-gathers in a data-parallel step). The
    batch is axis ``in_axis`` of the first argument and ``out_axis`` of the result; the other
    ``n_arrays - 1`` arguments (a kernel) are replicated. ``rule`` names the axes, the batch ``n``,
    every other one kept whole."""
    def batch_only(sharding, axis):
        spec = [None] * 4
        spec[axis] = sharding.spec[in_axis] if len(sharding.spec) > in_axis else None
        return NamedSharding(sharding.mesh, P(*spec))

    def partition(*args):
        *static, mesh, arg_shapes, _ = args
        sharding = arg_shapes[0].sharding
        replicated = (NamedSharding(sharding.mesh, P()),) * (n_arrays - 1)
        return (mesh, lambda *a: fn(*a, *static), batch_only(sharding, out_axis),
                (batch_only(sharding, in_axis),) + replicated)

    def infer(*args):
        *_, arg_shapes, _ = args
        return batch_only(arg_shapes[0].sharding, out_axis)

    wrapped = custom_partitioning(fn, static_argnums=tuple(range(n_arrays, n_arrays + n_static)))
    whole = tuple(dict.fromkeys(f for f in rule.replace("->", " ").replace(",", " ").split()
                                if f != "n"))
    wrapped.def_partition(partition, infer_sharding_from_operands=infer, sharding_rule=rule,
                          need_replication_factors=whole)
    return wrapped


def _attrs(**values):
    return {k: np.int64(v) for k, v in values.items()}


def _input_call(x, pt, pl, m, th, tw):
    """x (n, H, W, C) -> v ((m + 2)^2, n, th * tw, C) on one device."""
    out = jax.ShapeDtypeStruct(((m + 2) ** 2, x.shape[0], th * tw, x.shape[3]), x.dtype)
    return jax.ffi.ffi_call(_TARGETS["input"], out)(x, **_attrs(m=m, pt=pt, pl=pl, th=th, tw=tw))


def _output_call(mm, ho, wo, m, th, tw):
    """mm ((m + 2)^2, n, th * tw, C) -> y (n, Ho, Wo, C) on one device."""
    out = jax.ShapeDtypeStruct((mm.shape[1], ho, wo, mm.shape[3]), mm.dtype)
    return jax.ffi.ffi_call(_TARGETS["output"], out)(mm, **_attrs(m=m, th=th, tw=tw))


def _direct_call(x, k, stride, ho, wo):
    """x (n, Hp, Wp, C) padded, k (O / B, KH, KW * C, B) -> (n, Ho, Wo, O) on one device."""
    out = jax.ShapeDtypeStruct((x.shape[0], ho, wo, k.shape[0] * k.shape[3]), x.dtype)
    return jax.ffi.ffi_call(_TARGETS["direct"], out)(x, k, **_attrs(stride=stride))


_sharded_input = _batch_parallel(_input_call, 1, 5, 0, 1, "n h w c -> a n t c")
_sharded_output = _batch_parallel(_output_call, 1, 5, 1, 0, "a n t c -> n h w c")
_sharded_direct = _batch_parallel(_direct_call, 2, 3, 0, 0, "n h w c, b i t o -> n y x z")


def _require() -> None:
    """Build and register the kernels (once), or raise RuntimeError saying why they cannot run."""
    if _load() is None:
        raise RuntimeError(f"the compiled kernels are not available: {_state['error']}")


def winograd_input(x: jax.Array, pads: tuple, m: int, th: int, tw: int) -> jax.Array:
    """``winograd._winograd_input``'s v ((m + 2)^2, N * th * tw, C) by the compiled kernel:
    x (N, H, W, C) float32 with C a multiple of 8, pads ((top, _), (left, _)) of zeros, m = 2
    or 4. Builds the kernels on first use (RuntimeError if they cannot be)."""
    _require()
    (pt, _), (pl, _) = pads
    v = _sharded_input(x, int(pt), int(pl), int(m), int(th), int(tw))
    return v.reshape(v.shape[0], -1, v.shape[3])


def winograd_output(mm: jax.Array, n: int, ho: int, wo: int, m: int, th: int, tw: int) -> jax.Array:
    """The m x m output pixels AT M A of every tile's M: mm ((m + 2)^2, n * th * tw, C) float32,
    C a multiple of 8 -> (n, Ho, Wo, C), cropped from (th * m, tw * m). Builds the kernels on
    first use (RuntimeError if they cannot be)."""
    _require()
    mm = mm.reshape(mm.shape[0], n, th * tw, mm.shape[2])
    return _sharded_output(mm, int(ho), int(wo), int(m), int(th), int(tw))


def direct_block(cout: int) -> int:
    """The outputs a block of ``direct_conv``'s kernel holds (32, 16 or 8; 0: cout is not a
    multiple of 8 and the kernel cannot take it)."""
    return next((b for b in (32, 16, 8) if cout % b == 0), 0)


def direct_conv(x: jax.Array, kernel: jax.Array, stride: int, pads: tuple) -> jax.Array:
    """``lax.conv_general_dilated``'s correlation NHWC x HWIO by the compiled direct kernel:
    x (N, H, W, C), kernel (kh, kw, C, O) with O a multiple of 8 (``direct_block``), stride
    (s, s), pads ((top, bottom), (left, right)) of zeros, all >= 0 -> (N, Ho, Wo, O) in x's
    dtype, summed in float32. Builds the kernels on first use (RuntimeError if they cannot be)."""
    _require()
    kh, kw, c, o = kernel.shape
    b = direct_block(o)
    if not b or min(min(p) for p in pads) < 0:
        raise ValueError(f"direct_conv needs outputs a multiple of 8 and pads >= 0, got {o} "
                         f"outputs and pads {pads}")
    xp = jnp.pad(x.astype(jnp.float32), ((0, 0), tuple(pads[0]), tuple(pads[1]), (0, 0)))
    ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    packed = kernel.astype(jnp.float32).reshape(kh, kw * c, o // b, b).transpose(2, 0, 1, 3)
    return _sharded_direct(xp, packed, int(stride), int(ho), int(wo)).astype(x.dtype)
