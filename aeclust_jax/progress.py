"""Timed stages with an optional progress line each: what the CLIs print during evaluation.

    stages = Stages(enabled=cfg.progress, timings=timings)
    with stages("tsne", "t-SNE of 3000 latents (30-d)"):
        emb = tsne(...)
    # prints "eval: t-SNE of 3000 latents (30-d) ... 12.3 s" when enabled; timings["tsne"] += 12.3

Library code keeps ``enabled=False`` unless its caller asks (the CLIs do, ``--no-progress`` not).
"""

from __future__ import annotations

import contextlib
import time
from typing import Iterator


class Stages:
    """Times stages into ``timings`` (seconds, summed per key) and, when ``enabled``, prints one
    line per stage on stdout: ``<prefix>: <what> ... <seconds> s``."""

    def __init__(self, enabled: bool = False, *, prefix: str = "eval",
                 timings: dict[str, float] | None = None):
        self.enabled = enabled
        self.prefix = prefix
        self.timings = {} if timings is None else timings

    @contextlib.contextmanager
    def __call__(self, key: str, what: str) -> Iterator[None]:
        if self.enabled:
            print(f"{self.prefix}: {what} ...", end="", flush=True)
        t0 = time.perf_counter()
        done = False
        try:
            yield
            done = True
        finally:
            dt = time.perf_counter() - t0
            self.timings[key] = self.timings.get(key, 0.0) + dt
            if self.enabled:
                print(f" {dt:.1f} s" if done else " failed", flush=True)
