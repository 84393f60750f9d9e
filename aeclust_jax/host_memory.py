"""Host memory: keep freed memory in the process instead of handing it back to the OS each step.

XLA:CPU allocates an executable's temporary buffer (hundreds of MB for a ResNet-18 train step at
batch 128: 866 MB) with ``malloc`` on every call and frees it at the end. glibc serves an
allocation this large with a fresh ``mmap`` and returns it with ``munmap``, so every step
page-faults all of it in again: ~290,000 faults and ~0.5 s of kernel time a step there, 12-45%
of a CPU train step (measured). ``keep_freed_memory`` tells glibc to serve every allocation from
one heap (``M_ARENA_MAX`` 1, ``M_MMAP_MAX`` 0) and never to trim it (``M_TRIM_THRESHOLD``
unlimited): the freed buffer is reused by the next step, with no faults. The command-line tools
call it at start (``cli.run_main``), and so do the benchmarks; research code may call it first.

The cost: the process keeps its peak heap until it exits (freed memory is reused, not returned).
``AECLUST_MALLOC=system`` leaves glibc's defaults alone. On other C libraries (macOS, musl) this
does nothing. Measured numbers: docs/natural_images.md, "Host memory".
"""

from __future__ import annotations

import ctypes
import os
import platform

from aeclust_jax.errors import UsageError

__all__ = ["MALLOC_ENV", "keep_freed_memory", "malloc_choice"]

MALLOC_ENV = "AECLUST_MALLOC"
# glibc's mallopt parameters (malloc.h)
_M_TRIM_THRESHOLD, _M_MMAP_MAX, _M_ARENA_MAX = -1, -4, -8
_UNLIMITED = -1            # mallopt takes an int; glibc stores the trim threshold as size_t


def malloc_choice() -> str:
    """``AECLUST_MALLOC``: ``keep`` (the default) or ``system``; anything else is a UsageError."""
    choice = os.environ.get(MALLOC_ENV, "keep").strip().lower()
    if choice not in ("keep", "system"):
        raise UsageError(f"{MALLOC_ENV} must be keep or system, got {choice!r}")
    return choice


def keep_freed_memory() -> bool:
    """Sets glibc's malloc to reuse freed memory (module docstring). Returns whether it did:
    False under ``AECLUST_MALLOC=system`` or on a C library other than glibc. Call it before
    the first JAX computation: threads that already have their own malloc arena keep it."""
    if malloc_choice() == "system" or platform.libc_ver()[0] != "glibc":
        return False
    libc = ctypes.CDLL(None)
    return all(libc.mallopt(param, value) == 1 for param, value in
               ((_M_ARENA_MAX, 1), (_M_MMAP_MAX, 0), (_M_TRIM_THRESHOLD, _UNLIMITED)))
