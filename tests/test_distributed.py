"""Multi-process training for real: processes on localhost with CPU devices (gloo collectives),
started by ``python -m aeclust_jax.launch``, against one process with the same global batch."""

import json
import os
import pathlib
import re
import subprocess
import sys

import numpy as np
import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]
WORKER = ROOT / "tests" / "distributed_worker.py"


def _env(devices: int | None = None) -> dict:
    env = dict(os.environ, JAX_PLATFORMS="cpu",
               PYTHONPATH=os.pathsep.join([str(ROOT), os.environ.get("PYTHONPATH", "")]))
    flags = [f for f in env.get("XLA_FLAGS", "").split()       # the session's (conftest.py)
             if not f.startswith("--xla_force_host_platform_device_count")]
    if devices:
        flags.append(f"--xla_force_host_platform_device_count={devices}")
    env["XLA_FLAGS"] = " ".join(flags)
    return env


def _launch(*args, timeout=600):
    return subprocess.run([sys.executable, "-m", "aeclust_jax.launch", *map(str, args)],
                          capture_output=True, text=True, env=_env(), timeout=timeout, cwd=ROOT)


def test_two_processes_train_like_one_and_a_killed_one_is_reported_and_resumed(tmp_path):
    """Two processes (one CPU device each) train cae_skip; process 1 dies in epoch 2: the
    launcher stops process 0 and exits 1 naming process 1 (no hang). The epoch-1 checkpoint that
    the two processes wrote (orbax, multi-process) resumes in ONE process with two devices and
    ends with exactly the parameters and epoch-2 loss of an uninterrupted one-process run with
    the same global batch (so the two-process epoch was the same computation); that reference
    run trains from scratch in the same process afterwards (``--then-fresh``: one compile)."""
    ckpt = tmp_path / "ckpt"
    p = _launch("--nproc", 2, "--log-dir", tmp_path / "logs", WORKER, "--", tmp_path / "x.npz",
                "--ckpt", ckpt, "--die-at-step", 6)
    assert p.returncode == 1, p.stderr[-2000:]
    last = p.stderr.strip().splitlines()[-1]
    assert last.startswith("error: process 1 exited with status 3") and "process1.log" in last
    assert not (tmp_path / "x.npz").exists()
    assert sorted(int(d.name) for d in ckpt.iterdir() if d.name.isdigit()) == [1]
    resumed, ref = tmp_path / "resumed.npz", tmp_path / "ref.npz"
    subprocess.run([sys.executable, str(WORKER), resumed, "--ckpt", ckpt, "--resume",
                    "--then-fresh", ref], env=_env(devices=2), check=True, timeout=600,
                   capture_output=True)
    a, b = np.load(ref), np.load(resumed)
    assert int(b["devices"]) == 2 and len(a["losses"]) == 2 and len(b["losses"]) == 1
    np.testing.assert_array_equal(b["params"], a["params"])
    assert b["losses"][0] == a["losses"][1]


def test_launcher_success_bad_usage_and_one_process_per_rank(tmp_path):
    script = tmp_path / "hello.py"
    script.write_text(
        "from aeclust_jax import train\n"
        "assert train.maybe_initialize_distributed()\n"
        "import jax, jax.numpy as jnp, json, sys\n"
        "from jax.experimental import multihost_utils\n"
        "total = multihost_utils.process_allgather(jnp.array([jax.process_index() + 1.0]))\n"
        "print(json.dumps({'rank': jax.process_index(), 'n': jax.process_count(),\n"
        "                  'devices': jax.device_count(), 'sum': float(total.sum()),\n"
        "                  'main': train.is_main_process(), 'arg': sys.argv[1]}))\n")
    p = _launch("--nproc", 2, "--devices-per-process", 2, "--log-dir", tmp_path / "logs", script,
                "--", "--flag-of-the-script", timeout=300)
    assert p.returncode == 0, p.stderr[-2000:]
    def json_line(text):
        """The script's JSON among gloo's and JAX's log lines. Gloo writes from its own thread in
        pieces, so its words can land on either side of the script's line (CI once saw
        ``[Gloo] Rank 0{"rank": 0, ...}``); Python writes the line in one piece, so search it."""
        return json.loads(re.findall(r'\{"rank": [^{}]*\}', text)[-1])
    rank0 = json_line(p.stdout)
    rank1 = json_line((tmp_path / "logs" / "process1.log").read_text())
    assert rank0 == {"rank": 0, "n": 2, "devices": 4, "sum": 3.0, "main": True,
                     "arg": "--flag-of-the-script"}
    assert rank1["rank"] == 1 and rank1["main"] is False and rank1["sum"] == 3.0
    p = _launch("--nproc", 0, script)
    assert p.returncode == 2 and p.stderr.strip() == "error: --nproc must be >= 1, got 0"
    p = _launch("--nproc", 2, tmp_path / "missing.py")
    assert p.returncode == 2 and "no such script" in p.stderr
