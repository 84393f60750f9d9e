"""host_memory.keep_freed_memory: freed buffers are reused without page faults (measured in fresh
processes, as the tools run), AECLUST_MALLOC=system leaves glibc alone, a bad value is one error."""

import json
import os
import platform
import subprocess
import sys

import pytest

from aeclust_jax.cli import run_main
from aeclust_jax.errors import UsageError
from aeclust_jax.host_memory import MALLOC_ENV, keep_freed_memory

glibc_only = pytest.mark.skipif(platform.libc_ver()[0] != "glibc", reason="mallopt is glibc's")

# Minor page faults of a call of a jitted op whose 128 MB result is freed on return (above
# glibc's largest mmap threshold, 32 MB): the median of 9 calls once the heap has stopped growing.
# Results are freed on PjRt's threads, so several can coexist: kept, the heap grows over the first
# calls, by one result a call, and then serves every call from freed memory. How many coexist
# depends on how soon those threads run: 5 on an idle machine here, 13 with the process starved of
# CPU (pinned to a core beside two busy loops), which outlasted a fixed 10 warm-up calls on a busy
# CI machine. So the warm-up ends once the heap's top (sbrk(0)) has stayed put for 10 calls (at
# most 200 calls). (numpy is no probe: it asks for huge pages on big arrays, so its faults are few
# either way.)
FAULTS = """
import ctypes, json, resource, sys
from aeclust_jax.host_memory import keep_freed_memory
kept = keep_freed_memory()
import jax, jax.numpy as jnp
x = jnp.ones(32 * 2**20, jnp.float32)
double = jax.jit(lambda v: v * 2.0)
libc = ctypes.CDLL(None)
libc.sbrk.restype = ctypes.c_void_p

def warm_up(fn, still=10, most=200):
    top, same = libc.sbrk(0), 0
    for calls in range(1, most + 1):
        fn()
        same = same + 1 if libc.sbrk(0) == top else 0
        top = libc.sbrk(0)
        if same == still:
            return calls
    return calls

def faults(fn, n=9):
    counts = []
    for _ in range(n):
        before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
        fn()
        counts.append(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
    return sorted(counts)[n // 2]

def jax_call():
    double(x).block_until_ready()        # the 128 MB result is freed on return
calls = warm_up(jax_call)
print(json.dumps({"kept": kept, "warm_up_calls": calls, "faults": faults(jax_call)}))
"""


def faults_per_call(malloc: str) -> dict:
    p = subprocess.run([sys.executable, "-c", FAULTS], capture_output=True, text=True, timeout=300,
                       env=dict(os.environ, **{MALLOC_ENV: malloc}, JAX_PLATFORMS="cpu"))
    assert p.returncode == 0, p.stderr
    return json.loads(p.stdout.strip().splitlines()[-1])


@glibc_only
def test_kept_memory_is_reused_without_page_faults():
    pages = 32 * 2**20 * 4 // 4096                          # 32768 pages in 128 MB
    kept, system = faults_per_call("keep"), faults_per_call("system")
    assert kept["kept"] is True and system["kept"] is False
    # glibc's default maps each big buffer afresh: every page faults again on every call
    assert system["faults"] > 0.9 * pages, system
    # kept: the heap stops growing, and a freed buffer is the next call's, already mapped
    assert kept["warm_up_calls"] < 200, kept
    assert kept["faults"] < 0.01 * pages, kept


def test_system_leaves_malloc_alone(monkeypatch):
    monkeypatch.setenv(MALLOC_ENV, "system")
    assert keep_freed_memory() is False


def test_a_bad_value_is_one_error_naming_the_variable(monkeypatch, capsys):
    monkeypatch.setenv(MALLOC_ENV, "jemalloc")
    with pytest.raises(UsageError, match="AECLUST_MALLOC must be keep or system, got 'jemalloc'"):
        keep_freed_memory()
    ran = []
    assert run_main(lambda argv: ran.append(argv), ["--help"]) == 2      # before main runs
    assert ran == []
    assert capsys.readouterr().err.strip() == ("error: AECLUST_MALLOC must be keep or system, "
                                               "got 'jemalloc'")
