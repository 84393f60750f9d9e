"""aeclust_jax.grid: independent runs spread over worker processes, one device / core share each."""

from __future__ import annotations

import os

import numpy as np
import pytest

from aeclust_jax import grid
from aeclust_jax.errors import UsageError
from aeclust_jax.grid import Task


def test_plan_slots_splits_cores_and_gpus():
    cpu = grid.plan_slots(2, gpus=[], cpus=[0, 1, 2, 3])
    assert [s.cpus for s in cpu] == [(0, 1), (2, 3)]
    assert all(s.env["OMP_NUM_THREADS"] == "2" for s in cpu)
    over = grid.plan_slots(3, gpus=[], cpus=[4, 7])            # more workers than cores: round robin
    assert [s.cpus for s in over] == [(4,), (7,), (4,)]
    odd = grid.plan_slots(2, gpus=[], cpus=[0, 1, 2])           # the spare core stays unused
    assert [s.cpus for s in odd] == [(0,), (1,)]
    gpu = grid.plan_slots(3, gpus=["2", "5"], cpus=list(range(7)))
    assert [s.env["CUDA_VISIBLE_DEVICES"] for s in gpu] == ["2", "5", "2"]
    assert [s.cpus for s in gpu] == [(0, 1), (2, 3), (4, 5)]                # host threads shared out
    assert all(s.env["XLA_PYTHON_CLIENT_PREALLOCATE"] == "false" for s in gpu)
    with pytest.raises(UsageError, match="--workers must be >= 1"):
        grid.plan_slots(0)


def test_plan_slots_gives_each_cpu_worker_one_host_device(monkeypatch):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=4 --xla_dump_to=/tmp/x")
    (slot,) = grid.plan_slots(1, gpus=[], cpus=[0])
    assert slot.env["XLA_FLAGS"] == "--xla_dump_to=/tmp/x"


def _fit_tiny(seed: int) -> dict:
    """A small real training run (MLP regression, 20 Adam steps) -> where it ran and its result."""
    import jax
    import jax.numpy as jnp
    import optax

    rng = np.random.default_rng(seed)
    x = rng.normal(size=(256, 16)).astype(np.float32)
    y = np.tanh(x @ rng.normal(size=(16, 1))).astype(np.float32)
    k1, k2 = jax.random.split(jax.random.key(seed))
    params = {"w1": jax.random.normal(k1, (16, 32)) * 0.3, "w2": jax.random.normal(k2, (32, 1)) * 0.3}
    opt = optax.adam(1e-2)

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(lambda p: jnp.mean((jnp.tanh(x @ p["w1"]) @ p["w2"] - y) ** 2))(p)
        u, s = opt.update(g, s)
        return optax.apply_updates(p, u), s, loss

    state = opt.init(params)
    losses = []
    for _ in range(20):
        params, state, loss = step(params, state)
        losses.append(float(loss))
    return {"pid": os.getpid(), "cpus": sorted(os.sched_getaffinity(0)), "devices": jax.device_count(),
            "threads": grid.worker_threads(), "losses": losses,
            "w2": np.asarray(params["w2"]).ravel().tolist()}


def _fail(message: str):
    raise ValueError(message)


def test_run_tasks_in_workers_equals_in_process(monkeypatch, capsys):
    monkeypatch.setenv("XLA_FLAGS", "--xla_force_host_platform_device_count=2")   # workers get 1
    tasks = [Task(f"seed {s}", _fit_tiny, (s,)) for s in (0, 1, 2)]
    par = grid.run_tasks(tasks, workers=2)
    out = capsys.readouterr().out
    assert "3 runs on 2 worker processes" in out and "[3/3]" in out
    assert all(r["pid"] != os.getpid() for r in par)
    cores = sorted(os.sched_getaffinity(0))
    shares = {tuple(r["cpus"]) for r in par}            # each worker on its own half of the cores
    assert shares <= {tuple(s.cpus) for s in grid.plan_slots(2, gpus=[], cpus=cores)}
    assert all(r["threads"] == max(1, len(cores) // 2) for r in par)
    assert all(r["devices"] == 1 for r in par)
    seq = [_fit_tiny(s) for s in (0, 1, 2)]           # in this process: same numbers, task order
    for a, b in zip(par, seq):
        np.testing.assert_allclose(a["losses"], b["losses"], rtol=0, atol=1e-6)
        np.testing.assert_allclose(a["w2"], b["w2"], rtol=0, atol=1e-6)
    assert par[0]["losses"] != par[1]["losses"]


def test_run_tasks_reraises_a_failed_run_with_its_message(capsys):
    with pytest.raises(ValueError, match="bad run [12]"):
        grid.run_tasks([Task("a", _fail, ("bad run 1",)), Task("b", _fail, ("bad run 2",))], workers=2)
    assert "failed" in capsys.readouterr().out
    with pytest.raises(UsageError, match="--workers must be >= 1"):
        grid.run_tasks([Task("x", _fail, ("y",))], workers=0)
    assert grid.run_tasks([Task("one", len, ("abc",))], workers=4) == [3]   # one task: no pool
