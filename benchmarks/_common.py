"""Shared helpers for the benchmarks: peers checked, warm timings, compile time apart, machine info,
JSON last line."""

from __future__ import annotations

import importlib
import json
import os
import platform
import sys
import time
from typing import Any, Callable

import jax
import numpy as np

from aeclust_jax.errors import UsageError
from aeclust_jax.host_memory import keep_freed_memory

# As the command-line tools run (cli.run_main): freed host memory kept for reuse by both sides
# of every benchmark, which share this process's malloc.
try:
    MALLOC_KEPT = keep_freed_memory()
except UsageError as e:                    # a bad AECLUST_MALLOC: one line, exit 2
    print(f"error: {e}", file=sys.stderr)
    raise SystemExit(2) from None

BENCH_EXTRA = "pip install -e '.[bench]'"


def require_peers(*modules: str) -> None:
    """Imports the peer packages a benchmark compares against; when one is missing, prints one
    line naming the extra that installs it and exits with status 2 (before any work is done)."""
    for name in modules:
        try:
            importlib.import_module(name)
        except ModuleNotFoundError as e:
            script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "benchmark"
            print(f"error: {script}: its peer {name!r} is not installed ({e.name}); install the "
                  f"benchmark extra: {BENCH_EXTRA}", file=sys.stderr)
            raise SystemExit(2) from None


def optional_peers(*modules: str) -> dict[str, Any]:
    """Imports the optional peers of a benchmark (scikit-learn-intelex, faiss, ott-jax): name ->
    module, or None when it is not installed; each missing one is one stderr line and the
    benchmark reports it as missing instead of timing it."""
    found = {}
    for name in modules:
        try:
            found[name] = importlib.import_module(name)
        except ModuleNotFoundError as e:
            script = os.path.basename(sys.argv[0]) if sys.argv and sys.argv[0] else "benchmark"
            print(f"note: {script}: optional peer {name!r} is not installed ({e.name}); reported "
                  f"as missing ({BENCH_EXTRA})", file=sys.stderr)
            found[name] = None
    return found


MISSING = "missing"


def peers_to_time(names, runs: dict, skip, out: dict):
    """Yields the names in ``names`` that have a run to time; records the others in ``out`` as
    ``<name>_s`` = "skipped" (in ``skip``) or MISSING (not installed)."""
    for name in names:
        if name in skip:
            out[f"{name}_s"] = "skipped"
        elif name not in runs:
            out[f"{name}_s"] = MISSING
        else:
            yield name


def add_speedups(out: dict, names) -> None:
    """``out["speedup_vs_<name>"]`` = ``<name>_s / ours_s`` for each peer timed (None where it was
    skipped or missing)."""
    for name in names:
        t = out.get(f"{name}_s")
        out[f"speedup_vs_{name}"] = t / out["ours_s"] if isinstance(t, float) else None


def worst_case_speedups(res: dict, cases, names) -> None:
    """Top-level ``speedup`` (vs scikit-learn) and ``speedup_vs_<name>``: the worst of the cases
    run (None when a case lacks that peer)."""
    res["speedup"] = min(res[c]["speedup_vs_sklearn"] for c in cases)
    for name in names:
        v = [res[c][f"speedup_vs_{name}"] for c in cases]
        res[f"speedup_vs_{name}"] = min(v) if all(isinstance(u, float) for u in v) else None


def add_torch_device_option(parser) -> None:
    parser.add_argument("--torch-device", default="auto", choices=("auto", "cpu", "cuda"),
                        help="the PyTorch peer's device (auto: cuda when JAX runs on a GPU and "
                             "torch sees one; the data sits on it, as ours does)")


def torch_device(choice: str) -> str:
    """'cpu' or 'cuda' for ``--torch-device`` (see add_torch_device_option)."""
    import torch
    if choice == "auto":
        return "cuda" if jax.default_backend() == "gpu" and torch.cuda.is_available() else "cpu"
    return choice


def torch_synced(fn: Callable[[], Any], device: str) -> Callable[[], Any]:
    """fn, then waiting for the GPU's queue (CUDA calls return before the work is done)."""
    if device == "cpu":
        return fn

    def run():
        import torch
        out = fn()
        torch.cuda.synchronize()
        return out
    return run


def block(x: Any) -> Any:
    """Waits for every jax array in x (numpy results pass through)."""
    return jax.block_until_ready(x)


def first_call(fn: Callable[[], Any]) -> tuple[float, Any]:
    """Seconds of the first (compiling) call of fn and its result."""
    t0 = time.perf_counter()
    out = block(fn())
    return time.perf_counter() - t0, out


def best_of(fn: Callable[[], Any], repeat: int = 3) -> tuple[float, Any]:
    """Fastest of `repeat` warm calls (seconds) and the last result; the minimum is the least
    disturbed by other processes on a shared machine."""
    times, out = [], None
    for _ in range(max(1, repeat)):
        t0 = time.perf_counter()
        out = block(fn())
        times.append(time.perf_counter() - t0)
    return min(times), out


def rounds(ours: Callable[[], Any], peer: Callable[[], Any], repeat: int,
           settle: int = 1) -> tuple[list[float], list[float]]:
    """Seconds of `repeat` interleaved rounds (ours blocked on): each round calls the peer
    settle + 1 times in a row, then ours settle + 1 times, and times the last call of each side.

    Interleaving lets both sides see the same minutes of this shared machine's drifting speed;
    the untimed calls make each timed call follow a call of its own library, as when a library
    runs batch after batch (steady state). The first call after the other library's runs with
    the other's data in the caches and its threads still spinning: ResNet-18 at 96 px, batch 32,
    ms: ours 137 after ours, 185 after PyTorch; PyTorch 156 after PyTorch, 182 after ours (and
    both ~250 after 0.5 s idle), so strict alternation (settle=0) cost ours more than the peer."""
    t_ours, t_peer = [], []
    for _ in range(repeat):
        for fn, times in ((peer, t_peer), (lambda: block(ours()), t_ours)):
            for _ in range(settle):
                fn()
            t = time.perf_counter()
            fn()
            times.append(time.perf_counter() - t)
    return t_ours, t_peer


def machine() -> dict:
    """Cores, jax device, and the 1-minute load average (contention from other processes)."""
    return {
        "cpu_count": os.cpu_count(),
        "device": str(jax.devices()[0]),
        "backend": jax.default_backend(),
        "jax": jax.__version__,
        "python": platform.python_version(),
        "load_avg_1m": round(os.getloadavg()[0], 2),
        "malloc": "keep" if MALLOC_KEPT else "system",
    }


def mnist_pixels(n: int | None = None) -> np.ndarray | None:
    """MNIST train+test pixels (70000, 784) float32 in [0, 1] via ``aeclust_jax.data.load``, or
    None when $AECLUST_MANUAL_DIR is not set (the benchmarks then use random data of that shape)."""
    if not os.environ.get("AECLUST_MANUAL_DIR"):
        return None
    from aeclust_jax.data import load

    x = np.concatenate([load("mnist", split).images for split in ("train", "test")])
    x = x.reshape(len(x), -1).astype(np.float32) / 255.0
    return x[:n] if n else x


def emit(result: dict) -> None:
    """Prints the result as the last line: one JSON object (numpy scalars made plain)."""
    def plain(v):
        if isinstance(v, dict):
            return {k: plain(u) for k, u in v.items()}
        if isinstance(v, (list, tuple)):
            return [plain(u) for u in v]
        if isinstance(v, (np.generic, np.ndarray)) or hasattr(v, "__array__"):
            a = np.asarray(v)
            return a.item() if a.ndim == 0 else a.tolist()
        if isinstance(v, float):
            return float(f"{v:.6g}")
        return v
    print(json.dumps(plain(result)), flush=True)
