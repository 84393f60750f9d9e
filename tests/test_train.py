"""Training engine: optimizers, the fit loop's batching/masking, checkpoints, resume, NaN stop,
multi-device equality. Small Flax models keep compilation short; S1 models train in test_s1.py."""

import json
import os
import pathlib
import subprocess
import sys
import textwrap

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aeclust_jax import train

REPO = pathlib.Path(__file__).resolve().parents[1]


class Tiny(nn.Module):
    @nn.compact
    def __call__(self, x):
        return nn.Dense(4)(nn.relu(nn.Dense(8)(x)))


def regression_data(n=100, seed=0):
    rng = np.random.default_rng(seed)
    x = rng.normal(size=(n, 6)).astype(np.float32)
    y = (x @ rng.normal(size=(6, 4))).astype(np.float32)
    return {"x": x, "y": y}


def regression_loss(model):
    def loss_fn(params, batch, rng):
        pred = model.apply({"params": params}, batch["x"])
        loss = train.masked_mean((pred - batch["y"]) ** 2, batch["mask"])
        return loss, {"mse": loss}
    return loss_fn


def test_adadelta_is_keras_2020():
    """make_optimizer('adadelta') == Keras 2.x Adadelta (lr 1.0, rho 0.95, eps 1e-7), by hand."""
    tx = train.make_optimizer("adadelta")
    p = {"w": jnp.array([0.5, -1.0, 2.0])}
    grads = [np.array([0.1, -0.2, 0.3]), np.array([1.0, 0.0, -2.0]), np.array([-0.5, 0.25, 0.0])]
    state = tx.init(p)
    acc_g = np.zeros(3)
    acc_d = np.zeros(3)
    w = np.array([0.5, -1.0, 2.0])
    rho, eps, lr = 0.95, 1e-7, 1.0
    for g in grads:
        upd, state = tx.update({"w": jnp.asarray(g, jnp.float32)}, state, p)
        p = {"w": p["w"] + upd["w"]}
        acc_g = rho * acc_g + (1 - rho) * g ** 2
        d = np.sqrt(acc_d + eps) / np.sqrt(acc_g + eps) * g
        acc_d = rho * acc_d + (1 - rho) * d ** 2
        w = w - lr * d
    np.testing.assert_allclose(np.asarray(p["w"]), w, rtol=1e-5, atol=1e-7)
    with pytest.raises(ValueError, match="choices: adadelta, adam, sgd"):
        train.make_optimizer("rmsprop")


def test_frozen_params_do_not_move_and_loss_falls():
    model = Tiny()
    data = regression_data()
    tx = train.make_optimizer("adam", 1e-2, frozen=lambda path: path.startswith("Dense_0"))
    state = train.create_train_state(model, jax.random.key(0), data["x"][:1], tx)
    before = jax.tree.map(np.asarray, state.params)
    res = train.fit(state, data, regression_loss(model), batch_size=20, epochs=5,
                    key=jax.random.key(1), progress=False)
    after = res.state.params
    np.testing.assert_array_equal(after["Dense_0"]["kernel"], before["Dense_0"]["kernel"])
    assert not np.array_equal(after["Dense_1"]["kernel"], before["Dense_1"]["kernel"])
    losses = [r["loss"] for r in res.history]
    assert losses[-1] < losses[0]
    assert [r["epoch"] for r in res.history] == [1, 2, 3, 4, 5]
    assert all(r["mse"] == pytest.approx(r["loss"]) for r in res.history)


@pytest.mark.parametrize("last_batch,n,bs", [("pad", 37, 8), ("drop", 37, 8), ("pad", 32, 8)])
def test_each_row_once_per_epoch(last_batch, n, bs):
    """The loss = masked batch mean of a row id: the epoch's weighted mean recovers exactly the
    mean over the rows seen (all n with padding; floor(n/B)*B of them when dropping)."""
    ids = np.arange(n, dtype=np.float32)[:, None] ** 2

    def loss_fn(params, batch, rng):
        return train.masked_mean(batch["v"] + 0 * params["b"], batch["mask"]), {
            "count": batch["mask"].sum()}

    state = train.create_train_state(None, None, None, train.make_optimizer("sgd", 0.1),
                                     params={"b": jnp.zeros(())})
    res = train.fit(state, {"v": ids}, loss_fn, batch_size=bs, epochs=2, key=jax.random.key(3),
                    last_batch=last_batch, progress=False)
    steps = train.steps_per_epoch(n, bs, last_batch)
    for r in res.history:
        if last_batch == "pad":
            assert r["loss"] == pytest.approx(float(ids.mean()), rel=1e-6)
            # weighted mean of per-step real-row counts = sum(count^2)/n
            counts = [bs] * (steps - 1) + [n - (steps - 1) * bs]
            assert r["count"] == pytest.approx(sum(c * c for c in counts) / n)
        else:
            assert r["count"] == bs
            assert steps == n // bs
    # different epochs shuffle differently (drop: the dropped rows differ, so the means differ)
    if last_batch == "drop":
        assert res.history[0]["loss"] != res.history[1]["loss"]
    with pytest.raises(ValueError, match="multiple"):
        train.fit(state, {"v": ids}, loss_fn, batch_size=0, epochs=1, key=jax.random.key(0),
                  progress=False)


def test_shuffle_false_keeps_the_stored_order():
    """Full batch without shuffling (DSC's C is indexed by row): each epoch's batch is the data
    in its stored order, so an order-sensitive loss repeats exactly; shuffled, it does not."""
    n = 12
    v = np.arange(n, dtype=np.float32)

    def loss_fn(params, batch, rng):
        return jnp.sum(batch["v"] * jnp.arange(n)) + 0 * params["b"], {}

    state = train.create_train_state(None, None, None, train.make_optimizer("sgd", 0.1),
                                     params={"b": jnp.zeros(())})
    kw = dict(batch_size=n, epochs=3, key=jax.random.key(0), progress=False)
    fixed = train.fit(state, {"v": v}, loss_fn, shuffle=False, **kw)
    assert [r["loss"] for r in fixed.history] == [float(v @ np.arange(n))] * 3
    shuffled = train.fit(state, {"v": v}, loss_fn, **kw)
    assert all(r["loss"] < float(v @ np.arange(n)) for r in shuffled.history)


def test_at_most_steps_in_flight_are_queued_ahead():
    """The host waits for step s - STEPS_IN_FLIGHT before it dispatches more, so Ctrl-C is seen
    within a few steps. Each step here is ~0.1 s of matmuls (dispatched asynchronously; a host
    callback would make the CPU run it inline): bounded, the step hooks (run after each dispatch)
    are spread over most of the epoch; unbounded, all 12 ran within a millisecond of each other
    before the first step finished."""
    import time

    from aeclust_jax.train.loop import STEPS_IN_FLIGHT
    m = jnp.asarray(np.random.default_rng(0).normal(size=(384, 384)) / 20, jnp.float32)

    def loss_fn(params, batch, rng):
        h = jax.lax.fori_loop(0, 40, lambda i, h: jnp.tanh(h @ m),
                              jnp.full((384, 384), params["b"]))
        return params["b"] ** 2 + 0 * jnp.sum(h), {}

    state = train.create_train_state(None, None, None, train.make_optimizer("sgd", 0.1),
                                     params={"b": jnp.ones(())})
    kw = dict(batch_size=1, epochs=1, key=jax.random.key(0), shuffle=False, progress=False)
    steps, hooks = 12, []
    train.fit(state, {"s": np.zeros(steps, np.int32)}, loss_fn, **kw)          # compiles
    train.fit(state, {"s": np.zeros(steps, np.int32)}, loss_fn,
              step_hook=lambda epoch, s: hooks.append(time.perf_counter()), **kw)
    end = time.perf_counter()
    assert 1 <= STEPS_IN_FLIGHT < steps - 2 and len(hooks) == steps
    # steps after the first STEPS_IN_FLIGHT + 1 each wait for one to finish
    waited = (steps - STEPS_IN_FLIGHT - 1) / steps
    assert hooks[-1] - hooks[0] > 0.5 * waited * (end - hooks[0]), (hooks, end)


@pytest.mark.parametrize("scan_epoch", [False, True])
def test_step_rngs_are_a_stream_apart_from_the_shuffle(scan_epoch):
    """A step's loss rng is not one of the keys the epoch's permutation uses. With JAX's threefry,
    split(k)[i] == fold_in(k, i), so the former fold_in(epoch_key, s) handed steps 0 and 1 the
    shuffle's own keys; the rng is now fold_in(fold_in(epoch_key, 2^31 - 1), s)."""
    key = jax.random.key(5)
    assert (jax.random.key_data(jax.random.split(key)[1])
            == jax.random.key_data(jax.random.fold_in(key, 1))).all()       # the collision
    n = 8

    def loss_fn(params, batch, rng):
        u = jax.random.uniform(rng)
        return 0 * params["b"].sum() + u, {"u": u}

    state = train.create_train_state(None, None, None, train.make_optimizer("sgd", 0.1),
                                     params={"b": jnp.zeros(())})
    res = train.fit(state, {"v": np.zeros(n, np.float32)}, loss_fn, batch_size=n // 2, epochs=3,
                    key=key, progress=False, scan_epoch=scan_epoch)
    for e, rec in enumerate(res.history, 1):
        ekey = jax.random.fold_in(key, e)
        parent = jax.random.fold_in(ekey, 0x7FFFFFFF)
        want = [float(jax.random.uniform(jax.random.fold_in(parent, s))) for s in (0, 1)]
        assert rec["u"] == pytest.approx(np.mean(want), abs=1e-7)
        shuffle = [float(jax.random.uniform(k)) for k in jax.random.split(ekey)]
        assert not set(want) & set(shuffle)
    assert len({r["u"] for r in res.history}) == 3


@pytest.mark.parametrize("n", [10, 32, 45])
def test_predict_pads_and_trims(n):
    """One batch, whole batches, a padded last batch: every row comes back once, in order."""
    model = Tiny()
    data = regression_data(n=n)
    state = train.create_train_state(model, jax.random.key(0), data["x"][:1], train.make_optimizer("adam"))
    got = train.predict(lambda p, b: {"y": model.apply({"params": p}, b["x"])}, state.params,
                        {"x": data["x"]}, batch_size=16, mesh=train.make_mesh())
    ref = jax.jit(lambda p: model.apply({"params": p}, data["x"]))(state.params)
    assert got["y"].shape == (n, 4)
    np.testing.assert_allclose(got["y"], np.asarray(ref), rtol=1e-5, atol=1e-6)


def _leaves_equal(a, b):
    la, lb = jax.tree.leaves(a), jax.tree.leaves(b)
    return len(la) == len(lb) and all(np.array_equal(np.asarray(x), np.asarray(y)) for x, y in zip(la, lb))


def test_checkpoint_resume_is_bitwise(tmp_path):
    model = Tiny()
    data = regression_data(n=60)
    mk = lambda: train.create_train_state(model, jax.random.key(0), data["x"][:1],
                                          train.make_optimizer("adadelta"))
    kw = dict(batch_size=16, key=jax.random.key(5), progress=False)
    full = train.fit(mk(), data, regression_loss(model), epochs=4, **kw)
    ck = train.Checkpointer(tmp_path / "ck", every=2, keep=1)
    part = train.fit(mk(), data, regression_loss(model), epochs=2, checkpointer=ck,
                     history_path=tmp_path / "h.jsonl", **kw)
    assert ck.all_epochs() == [2]
    rest = train.fit(mk(), data, regression_loss(model), epochs=4, checkpointer=ck, resume=True,
                     history_path=tmp_path / "h.jsonl", **kw)
    assert rest.start_epoch == 2 and part.start_epoch == 0
    assert ck.all_epochs() == [4]                   # keep=1: only the newest remains
    assert _leaves_equal(full.state.params, rest.state.params)
    assert _leaves_equal(full.state.opt_state, rest.state.opt_state)
    assert int(rest.state.step) == int(full.state.step)
    hist = [json.loads(l) for l in (tmp_path / "h.jsonl").read_text().splitlines()]
    assert [h["epoch"] for h in hist] == [1, 2, 3, 4]
    assert [h["loss"] for h in hist] == [h["loss"] for h in full.history]
    ck.close()


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    """SGD with a huge step on a quadratic diverges to inf/nan after a few epochs."""
    x = np.ones((16, 1), np.float32)

    def loss_fn(params, batch, rng):
        return train.masked_mean((params["w"] * batch["x"]) ** 2, batch["mask"]), {}

    state = train.create_train_state(None, None, None, train.make_optimizer("sgd", 30.0),
                                     params={"w": jnp.ones(())})
    ck = train.Checkpointer(tmp_path / "ck", every=1, keep=5)
    with pytest.raises(train.TrainingDivergedError, match=r"at epoch (\d+), step (\d+)") as err:
        train.fit(state, {"x": x}, loss_fn, batch_size=4, epochs=50, key=jax.random.key(0),
                  checkpointer=ck, log_every=1, progress=False)
    e = err.value
    assert e.epoch >= 2 and not np.isfinite(e.value)
    assert "last good checkpoint (epoch" in str(e)
    assert ck.latest_epoch() == e.epoch - 1          # nothing saved from the diverged epoch
    restored = ck.restore(state, ck.latest_epoch())
    assert np.isfinite(float(restored.params["w"]))
    ck.close()


_SCRIPT = textwrap.dedent("""
    import json, os, signal, sys
    import jax, numpy as np
    sys.path.insert(0, {tests!r})
    from test_train import Tiny, regression_data, regression_loss
    from aeclust_jax import train
    model, data = Tiny(), regression_data(n=64)
    out, mode = sys.argv[1], sys.argv[2]
    state = train.create_train_state(model, jax.random.key(0), data["x"][:1], train.make_optimizer("adadelta"))
    def hook(epoch, step):
        if mode == "kill" and epoch == 3 and step == 2:
            os.kill(os.getpid(), signal.SIGKILL)          # a real kill, mid-epoch
    ck = train.Checkpointer(os.path.join(out, "ck"), every=1, keep=2) if mode != "plain" else None
    res = train.fit(state, data, regression_loss(model), batch_size=8, epochs=4,
                    key=jax.random.key(7), checkpointer=ck, resume=(mode == "resume"),
                    history_path=os.path.join(out, "h.jsonl"), step_hook=hook, progress=False)
    np.savez(os.path.join(out, "params.npz"), *[np.asarray(v) for v in jax.tree.leaves(res.state.params)])
    print(json.dumps({{"losses": [r["loss"] for r in res.history], "devices": jax.device_count()}}))
""")


def _run_script(args, env_extra=None):
    env = dict(os.environ, JAX_PLATFORMS="cpu", **(env_extra or {}))
    code = _SCRIPT.format(tests=str(REPO / "tests"))
    return subprocess.run([sys.executable, "-c", code, *args], capture_output=True, text=True,
                          env=env, timeout=600)


def _last(proc):
    return json.loads(proc.stdout.strip().splitlines()[-1])


def test_kill_mid_epoch_then_resume_matches_uninterrupted(tmp_path):
    (tmp_path / "a").mkdir(), (tmp_path / "b").mkdir()
    plain = _run_script([str(tmp_path / "a"), "plain"])
    assert plain.returncode == 0, plain.stderr
    killed = _run_script([str(tmp_path / "b"), "kill"])
    assert killed.returncode == -9                     # SIGKILL during epoch 3
    ck = train.Checkpointer(tmp_path / "b" / "ck")
    assert ck.all_epochs() == [1, 2]
    ck.close()
    resumed = _run_script([str(tmp_path / "b"), "resume"])
    assert resumed.returncode == 0, resumed.stderr
    assert _last(resumed)["losses"] == _last(plain)["losses"]
    a, b = np.load(tmp_path / "a" / "params.npz"), np.load(tmp_path / "b" / "params.npz")
    for k in a.files:
        np.testing.assert_array_equal(a[k], b[k])      # bitwise


def test_two_cpu_devices_give_the_same_losses(tmp_path):
    (tmp_path / "one").mkdir(), (tmp_path / "two").mkdir()
    one = _run_script([str(tmp_path / "one"), "plain"])
    two = _run_script([str(tmp_path / "two"), "plain"],
                      {"XLA_FLAGS": "--xla_force_host_platform_device_count=2"})
    assert one.returncode == 0 and two.returncode == 0, one.stderr + two.stderr
    assert (_last(one)["devices"], _last(two)["devices"]) == (1, 2)
    np.testing.assert_allclose(_last(one)["losses"], _last(two)["losses"], rtol=1e-5)
    a, b = np.load(tmp_path / "one" / "params.npz"), np.load(tmp_path / "two" / "params.npz")
    for k in a.files:
        np.testing.assert_allclose(a[k], b[k], rtol=1e-4, atol=1e-6)


def test_compiled_steps_live_as_long_as_their_loss_fn():
    import gc
    import weakref

    from aeclust_jax.train.steps import make_epoch_scan, make_train_step

    mesh = train.make_mesh()
    loss = regression_loss(nn.Dense(1))
    step = make_train_step(loss, mesh)
    assert make_train_step(loss, mesh) is step                       # same loss_fn: reused
    assert make_epoch_scan(loss, mesh) is make_epoch_scan(loss, mesh)
    assert make_train_step(regression_loss(nn.Dense(1)), mesh) is not step   # another run's closure
    dead = weakref.ref(step)
    del step, loss
    gc.collect()
    assert dead() is None                                            # freed with its loss_fn


class _InitProbe(nn.Module):
    """Every kind of initialiser the models use: random kernels (truncated normal, uniform),
    zero biases, batch norm's ones / zeros (params and batch_stats)."""

    @nn.compact
    def __call__(self, x, train: bool = False):
        x = nn.Conv(8, (3, 3))(x)
        x = nn.BatchNorm(use_running_average=not train)(x)
        x = nn.Dense(5, kernel_init=nn.initializers.uniform(0.1))(x.reshape(len(x), -1))
        return nn.Dense(3, kernel_init=nn.initializers.truncated_normal(0.5))(x)


def test_jitted_init_is_flax_init_up_to_rounding_and_deterministic():
    """train.jitted_init compiles the init program at XLA's level 0 on CPU (seconds faster): the
    same tree, the same constants (zero biases, batch-norm ones/zeros) exactly, the random kernels
    within a few ulps of an optimised compile (same threefry integers), the same values on a rerun."""
    model, key, x = _InitProbe(), jax.random.key(7), jnp.ones((2, 6, 6, 3))
    ours = train.jitted_init(model, train=False)(key, x)
    flax_init = jax.jit(lambda k, v: model.init(k, v, train=False))(key, x)
    assert set(ours) == {"params", "batch_stats"}
    assert jax.tree.structure(ours) == jax.tree.structure(flax_init)
    ours_again = train.jitted_init(model, train=False)(key, x)
    for a, b, c in zip(jax.tree.leaves(ours), jax.tree.leaves(flax_init),
                       jax.tree.leaves(ours_again)):
        a, b = np.asarray(a), np.asarray(b)
        assert a.dtype == b.dtype and np.array_equal(a, np.asarray(c))
        if np.all(b == b.flat[0]):                     # a constant initialiser: exact
            assert np.array_equal(a, b)
        else:                                          # a random one: rounding at most
            np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
            assert np.mean(a == b) > 0.8 and a.std() > 0
