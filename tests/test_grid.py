"""aeclust_jax.grid: independent runs spread over worker processes, one device / core share each."""

from __future__ import annotations

import os

import numpy as np
import pytest

from aeclust_jax import grid
from aeclust_jax.errors import UsageError
from aeclust_jax.grid import Task


def test_plan_slots_round_robin_gpus_else_one_host_device():
    cpu = grid.plan_slots(2, gpus=[])
    assert all("CUDA_VISIBLE_DEVICES" not in s.env for s in cpu)
    gpu = grid.plan_slots(3, gpus=["2", "5"])
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in gpu] == ["2", "5", "2"]
    assert all(s.env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" for s in gpu)
    with pytest.raises(UsageError, match="--workers must be >= 1"):
        grid.plan_slots(0)


def test_plan_slots_gives_each_cpu_worker_one_host_device(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_dump_to=/tmp/x")
    (slot,) = grid.plan_slots(1, gpus=[])
    assert slot.env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"


def _fit_tiny(seed: int) -> dict:
    """A small real training run (a conv net, 15 Adam steps) -> where it ran and its result.
    XLA:CPU's convolutions give other digits with another thread count, so this also checks
    that a worker computes with the thread pool of a run alone (it fails with workers pinned to
    one core each)."""
    import flax.linen as nn
    import jax
    import optax

    class Net(nn.Module):
        @nn.compact
        def __call__(self, x):
            h = nn.max_pool(nn.relu(nn.Conv(16, (3, 3))(x)), (2, 2), (2, 2))
            return nn.Dense(4)(nn.relu(nn.Conv(32, (3, 3))(h)).reshape(len(x), -1))

    rng = np.random.default_rng(seed)
    x, y = rng.random((32, 16, 16, 1), np.float32), rng.integers(0, 4, 32)
    net, opt = Net(), optax.adam(1e-3)
    params = net.init(jax.random.key(seed), x)
    state = opt.init(params)

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(
            lambda p: optax.softmax_cross_entropy_with_integer_labels(net.apply(p, x), y).mean())(p)
        u, s = opt.update(g, s)
        return optax.apply_updates(p, u), s, loss

    losses = []
    for _ in range(15):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    return {"pid": os.getpid(), "devices": jax.device_count(), "losses": losses, "params": [np.asarray(v).ravel().tolist() for v in jax.tree.leaves(params)]}


def _fail(message: str):
    raise ValueError(message)


def test_run_tasks_in_workers_equals_in_process(monkeypatch, capsys):
    session_flags = os.environ.get("XLA_FLAGS", "")              # conftest.py's: kept for all
    monkeypatch.setenv("XLA_FLAGS", session_flags + " --xla_force_host_platform_device_count=2")  # workers get 1
    tasks = [Task(f"seed {s}", _fit_tiny, (s,)) for s in (0, 1, 2)]
    seen = []                       # on_result: each result here as its task finishes
    par = grid.run_tasks(tasks, workers=2, on_result=lambda i, r: seen.append((i, r["losses"])))
    out = capsys.readouterr().out
    assert "3 runs on 2 worker processes" in out and "[3/3]" in out
    assert sorted(seen) == [(i, r["losses"]) for i, r in enumerate(par)]
    assert all(r["pid"] != os.getpid() for r in par) and all(r["devices"] == 1 for r in par)
    monkeypatch.setenv("XLA_FLAGS", session_flags)
    seq = [_fit_tiny(s) for s in (0, 1, 2)]           # here, one device: the same digits, in order
    for a, b in zip(par, seq):
        assert a["losses"] == b["losses"] and a["params"] == b["params"]
    assert par[0]["losses"] != par[1]["losses"]


def test_run_tasks_reraises_a_failed_run_with_its_message(capsys):
    with pytest.raises(ValueError, match="bad run [12]"):
        grid.run_tasks([Task("a", _fail, ("bad run 1",)), Task("b", _fail, ("bad run 2",))], workers=2)
    assert "failed" in capsys.readouterr().out
    with pytest.raises(UsageError, match="--workers must be >= 1"):
        grid.run_tasks([Task("x", _fail, ("y",))], workers=0)
    seen = []
    assert grid.run_tasks([Task("one", len, ("abc",)), Task("two", len, ("de",))], workers=1,
                          on_result=lambda i, r: seen.append((i, r))) == [3, 2]   # here, in order
    assert seen == [(0, 3), (1, 2)]
    assert grid.run_tasks([Task("one", len, ("abc",))], workers=4) == [3]   # one task: no pool


def _wait_then_mark(i: int, folder: str) -> int:
    """Task i > 0 waits (at most 60 s) for the file ``released``, then writes ``ran<i>``."""
    import pathlib
    import time
    folder = pathlib.Path(folder)
    for _ in range(600 if i else 0):
        if (folder / "released").exists():
            break
        time.sleep(0.1)
    (folder / f"ran{i}").touch()
    return i


def test_a_failing_on_result_cancels_the_runs_not_started(tmp_path, capsys):
    """on_result raising (e.g. writing a table fails) stops the grid as a failed run does: of 12
    tasks, only the running ones and those already in the pool's call queue (workers + 1) run."""
    tasks = [Task(f"t{i}", _wait_then_mark, (i, str(tmp_path))) for i in range(12)]

    def fail(i, result):        # the other tasks go on only once this has run
        (tmp_path / "released").touch()
        raise RuntimeError(f"table of {result} not written")

    with pytest.raises(RuntimeError, match="table of 0 not written"):
        grid.run_tasks(tasks, workers=2, on_result=fail)
    assert "t0: failed" in capsys.readouterr().out
    assert len(list(tmp_path.glob("ran*"))) <= 1 + 2 + 3     # not the whole queue (12)


def _mark_and_wait(i: int, folder: str):
    """A run that writes its process id to ``started<i>`` and then waits 60 s (interruptible),
    writing ``done<i>`` if it was not interrupted."""
    import os
    import pathlib
    import time
    (pathlib.Path(folder) / f"started{i}").write_text(str(os.getpid()))
    for _ in range(600):
        time.sleep(0.1)
    (pathlib.Path(folder) / f"done{i}").touch()


INTERRUPTED = """
import signal, sys
# as started from a shell: a job run in the background (CI) ignores SIGINT, and a child inherits that
signal.signal(signal.SIGINT, signal.default_int_handler)
sys.path.insert(0, {tests!r})
from aeclust_jax.grid import Task, run_tasks
from test_grid import _mark_and_wait
try:
    run_tasks([Task(f"t{{i}}", _mark_and_wait, (i, {folder!r})) for i in range(4)], workers=2)
except KeyboardInterrupt:
    print("KeyboardInterrupt", flush=True)
"""


@pytest.mark.parametrize("to", ["parent", "group", "worker"])
def test_ctrl_c_stops_the_running_runs_and_starts_no_more(tmp_path, to):
    """SIGINT to the parent alone (kill -INT), to its whole process group (a terminal's Ctrl-C) or
    to one worker: the two running runs stop, the two not started never start, and the parent
    exits within seconds (it used to wait for the running runs and then run the rest). The worker
    case is the race a Ctrl-C to the group can lose: the interrupted worker is free at once and
    its next task is queued before the parent has reacted."""
    import pathlib
    import signal
    import subprocess
    import sys
    import time
    script = INTERRUPTED.format(tests=str(pathlib.Path(__file__).parent), folder=str(tmp_path))
    p = subprocess.Popen([sys.executable, "-c", script], stdout=subprocess.PIPE, text=True,
                         start_new_session=True)
    deadline = time.monotonic() + 120
    while len(list(tmp_path.glob("started*"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert sorted(f.name for f in tmp_path.glob("started*")) == ["started0", "started1"]
    sent = time.monotonic()
    if to == "parent":
        p.send_signal(signal.SIGINT)
    elif to == "group":
        os.killpg(p.pid, signal.SIGINT)
    else:
        os.kill(int((tmp_path / "started0").read_text()), signal.SIGINT)
    out, _ = p.communicate(timeout=50)
    assert time.monotonic() - sent < 20
    assert "KeyboardInterrupt" in out and "interrupted: runs not started are cancelled" in out
    assert sorted(f.name for f in tmp_path.glob("*")) == ["started0", "started1"]
