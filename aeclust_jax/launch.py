"""Run a script as N cooperating JAX processes on this machine (multi-process data parallelism).

    python -m aeclust_jax.launch --nproc 2 scripts/train.py --model dae_skip --dataset mnist
    python -m aeclust_jax.launch --nproc 2 --devices-per-process 1 my_script.py ...

Each process gets ``JAX_COORDINATOR_ADDRESS`` (127.0.0.1 and a free port), ``AECLUST_NUM_PROCESSES``,
``AECLUST_PROCESS_ID`` and ``AECLUST_HEARTBEAT_TIMEOUT``; ``train.maybe_initialize_distributed()``
(called by every study) turns them into ``jax.distributed.initialize``, and the 1-D mesh then
spans the devices of all processes. Process 0 prints to this terminal; process i > 0 writes to
``<log-dir>/process<i>.log``. When a process fails, the others are stopped and the launcher
exits with status 1 naming it and its log: no process waits forever for a dead peer.
On CPU, ``--devices-per-process K`` gives each process K host devices (XLA_FLAGS).
Slurm / multi-GPU nodes: see docs/distributed.md (no launcher needed there).
"""

from __future__ import annotations

import os
import pathlib
import signal
import socket
import subprocess
import sys
import tempfile
import time
from typing import Sequence

from aeclust_jax.cli import make_parser, prog_name, run_main
from aeclust_jax.errors import UsageError


def free_port() -> int:
    """A TCP port on 127.0.0.1 that nothing listens on right now."""
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def process_env(base: dict, rank: int, nproc: int, port: int, *, devices_per_process: int,
                heartbeat: int) -> dict:
    """The environment of process ``rank`` of ``nproc``."""
    env = dict(base, JAX_COORDINATOR_ADDRESS=f"127.0.0.1:{port}", AECLUST_NUM_PROCESSES=str(nproc),
               AECLUST_PROCESS_ID=str(rank), AECLUST_HEARTBEAT_TIMEOUT=str(heartbeat),
               PYTHONUNBUFFERED="1")
    if devices_per_process:
        flags = [f for f in env.get("XLA_FLAGS", "").split()
                 if not f.startswith("--xla_force_host_platform_device_count")]
        env["XLA_FLAGS"] = " ".join(flags + [f"--xla_force_host_platform_device_count="
                                             f"{devices_per_process}"])
    return env


def _stop(procs: Sequence[subprocess.Popen], grace: float = 10.0) -> None:
    for p in procs:
        if p.poll() is None:
            p.send_signal(signal.SIGTERM)
    deadline = time.monotonic() + grace
    for p in procs:
        try:
            p.wait(timeout=max(0.1, deadline - time.monotonic()))
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait()


def launch(command: Sequence[str], nproc: int, *, devices_per_process: int = 0,
           log_dir: str | os.PathLike | None = None, heartbeat: int = 30,
           timeout: float | None = None) -> int:
    """Runs ``python command...`` as ``nproc`` processes; 0 when all of them succeed, else 1."""
    log_dir = pathlib.Path(log_dir or tempfile.mkdtemp(prefix="aeclust-launch-"))
    log_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    procs, logs = [], []
    for rank in range(nproc):
        env = process_env(os.environ, rank, nproc, port, devices_per_process=devices_per_process,
                          heartbeat=heartbeat)
        out = None
        if rank > 0:
            out = open(log_dir / f"process{rank}.log", "w")
            logs.append(out)
        procs.append(subprocess.Popen([sys.executable, *command], env=env, stdout=out,
                                      stderr=subprocess.STDOUT if out else None))
    start = time.monotonic()
    failed = None
    try:
        while True:
            codes = [p.poll() for p in procs]
            bad = [(r, c) for r, c in enumerate(codes) if c not in (None, 0)]
            if bad:
                failed = bad[0]
                break
            if all(c == 0 for c in codes):
                return 0
            if timeout is not None and time.monotonic() - start > timeout:
                failed = (None, f"still running after {timeout:.0f} s")
                break
            time.sleep(0.2)
    except KeyboardInterrupt:
        _stop(procs)
        raise
    finally:
        if failed is not None:
            _stop(procs)
        for f in logs:
            f.close()
    rank, code = failed
    where = "" if rank in (None, 0) else f" (its output: {log_dir / f'process{rank}.log'})"
    what = f"process {rank} exited with status {code}" if rank is not None else code
    print(f"error: {what}{where}; stopped the other processes", file=sys.stderr)
    return 1


def main(argv: Sequence[str]) -> int:
    p = make_parser(prog_name("python -m aeclust_jax.launch"),
                    "Run a Python script as N JAX processes on this machine (data parallel over "
                    "the devices of all of them).")
    p.add_argument("--nproc", type=int, required=True, help="number of processes")
    p.add_argument("--devices-per-process", type=int, default=0,
                   help="CPU: host devices per process (0: the platform's own)")
    p.add_argument("--log-dir", help="folder of process<i>.log (default: a new temp folder)")
    p.add_argument("--heartbeat-timeout", type=int, default=30,
                   help="seconds before the others give up on a process that stopped answering")
    p.add_argument("--timeout", type=float, help="stop everything after this many seconds")
    p.add_argument("script", help="the Python script to run")
    p.add_argument("args", nargs="*", help="its arguments (put -- before options of the script)")
    argv = list(argv)
    if "--" in argv:                     # everything after -- belongs to the script
        i = argv.index("--")
        a = p.parse_args(argv[:i])
        a.args = list(a.args) + argv[i + 1:]
    else:
        a, rest = p.parse_known_args(argv)
        a.args = list(a.args) + rest
    if a.nproc < 1:
        raise UsageError(f"--nproc must be >= 1, got {a.nproc}")
    if not pathlib.Path(a.script).is_file():
        raise UsageError(f"no such script: {a.script}")
    return launch([a.script, *a.args], a.nproc, devices_per_process=a.devices_per_process,
                  log_dir=a.log_dir, heartbeat=a.heartbeat_timeout, timeout=a.timeout)


if __name__ == "__main__":
    sys.exit(run_main(main))
