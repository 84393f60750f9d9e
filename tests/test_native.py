"""models.layers.native: the compiled kernels (C++ XLA:CPU custom calls) build here; Winograd's
transforms equal a float64 numpy transform of every tile (odd sizes, asymmetric pads, a 1x1 map;
ties, zeros, constants) and make conv2d's values and gradients those of the jnp transform; the
direct conv equals a float64 numpy correlation (strides 1-3, 7x7 to 2x3 kernels, output blocks of
8-32, tails of pixel blocks) and makes conv2d's values and gradients those of autodiff through
lax's conv; both keep a data-parallel step sharded, and conv2d falls back to jnp / XLA when they
cannot build."""

import os
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from aeclust_jax.models.layers import conv2d, native, winograd

# Lavin & Gray (2016), typed again here: B^T of F(2x2, 3x3) and F(4x4, 3x3)
BT = {2: np.array([[1, 0, -1, 0], [0, 1, 1, 0], [0, -1, 1, 0], [0, 1, 0, -1]], np.float64),
      4: np.array([[4, 0, -5, 0, 1, 0], [0, -4, -4, 1, 1, 0], [0, 4, -4, -1, 1, 0],
                   [0, -2, -1, 2, 1, 0], [0, 2, -1, -2, 1, 0], [0, 4, 0, -5, 0, 1]], np.float64)}

AT = {2: np.array([[1, 1, 1, 0], [0, 1, -1, -1]], np.float64),
      4: np.array([[1, 1, 1, 1, 1, 0], [0, 1, -1, 2, -2, 0], [0, 1, 1, 4, 4, 0],
                   [0, 1, -1, 8, -8, 1]], np.float64)}

needs_compiler = pytest.mark.skipif(native._compiler() is None, reason="no C++ compiler here")


def _inputs(shape, kind, seed=0):
    rng = np.random.default_rng(seed)
    if kind == "zeros":
        return np.zeros(shape, np.float32)
    if kind == "constant":
        return np.full(shape, 0.75, np.float32)
    if kind == "integers":                              # many ties
        return rng.integers(-2, 3, shape).astype(np.float32)
    return rng.standard_normal(shape).astype(np.float32)


def _numpy_transform(x, pads, m):
    """((m + 2)^2, N * th * tw, C) float64: BT d BT^T of each zero-padded (m + 2)^2 tile d,
    tiles every m pixels, image-major then row-major over tiles."""
    n, h, w, c = x.shape
    (pt, pb), (pl, pr) = pads
    a = m + 2
    th, tw = -(-(h + pt + pb - 2) // m), -(-(w + pl + pr - 2) // m)
    xp = np.zeros((n, th * m + 2, tw * m + 2, c))
    xp[:, pt:pt + h, pl:pl + w] = x[:, :th * m + 2 - pt, :tw * m + 2 - pl]
    out = np.zeros((a, a, n, th, tw, c))
    for i in range(th):
        for j in range(tw):
            d = xp[:, i * m:i * m + a, j * m:j * m + a]                    # (n, a, a, c)
            out[:, :, :, i, j] = np.einsum("ui,nijc,wj->uwnc", BT[m], d, BT[m])
    return out.reshape(a * a, n * th * tw, c), th, tw


@pytest.fixture
def small_tiles_compiled(monkeypatch):
    """The compiled transforms for tiles of any size, with JAX's caches cleared before and after:
    the threshold is read when a layer is traced, and another test may have traced these shapes
    (with the jnp transforms) in this process already."""
    monkeypatch.setattr(winograd, "_NATIVE_MIN_BYTES", 0)
    jax.clear_caches()
    yield
    monkeypatch.undo()
    jax.clear_caches()


@needs_compiler
def test_the_kernel_builds_and_is_used_on_the_cpu():
    assert native.enabled() and native.available()


@needs_compiler
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("kind", ["normal", "integers", "zeros", "constant"])
@pytest.mark.parametrize("shape,pads", [((2, 8, 8, 8), ((1, 1), (1, 1))),
                                        ((1, 7, 9, 16), ((1, 1), (1, 1))),    # partial tiles
                                        ((3, 5, 6, 8), ((2, 2), (2, 2))),
                                        ((2, 9, 4, 24), ((0, 2), (1, 0))),    # asymmetric
                                        ((1, 1, 1, 8), ((1, 1), (1, 1))),     # 1x1 map
                                        ((1, 6, 6, 72), ((0, 0), (0, 0)))])
def test_winograd_input_equals_the_numpy_transform(m, kind, shape, pads):
    x = _inputs(shape, kind, seed=sum(shape))
    ref, th, tw = _numpy_transform(x, pads, m)
    got = jax.jit(native.winograd_input, static_argnums=(1, 2, 3, 4))(jnp.asarray(x), pads, m, th, tw)
    assert got.shape == ref.shape
    # float32 sums of up to 4 terms per pass, constants up to 5: a few ulps of the largest term
    np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=0,
                               atol=1e-6 * max(1.0, np.abs(ref).max()))
    if kind in ("zeros", "integers"):                   # exact in float32
        np.testing.assert_array_equal(np.asarray(got, np.float64), ref)


@needs_compiler
@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("kind", ["normal", "integers", "zeros", "constant"])
@pytest.mark.parametrize("n,ho,wo,c", [(2, 8, 8, 8), (1, 7, 9, 16), (3, 1, 1, 8), (1, 5, 2, 72)])
def test_winograd_output_equals_the_numpy_transform(m, kind, n, ho, wo, c):
    """AT M AT^T of every tile's M ((m + 2)^2, n * th * tw, C), tiles placed every m pixels and
    the last ones cropped to Ho x Wo."""
    a = m + 2
    th, tw = -(-ho // m), -(-wo // m)
    mm = _inputs((a * a, n * th * tw, c), kind, seed=ho * 10 + wo)
    tiles = np.einsum("ui,ijntsc,wj->ntuswc",
                      AT[m], mm.astype(np.float64).reshape(a, a, n, th, tw, c), AT[m])
    ref = tiles.reshape(n, th * m, tw * m, c)[:, :ho, :wo]
    got = jax.jit(native.winograd_output, static_argnums=range(1, 7))(jnp.asarray(mm), n, ho, wo, m, th, tw)
    assert got.shape == ref.shape
    np.testing.assert_allclose(np.asarray(got, np.float64), ref, rtol=0,
                               atol=1e-6 * max(1.0, np.abs(ref).max()))
    if kind in ("zeros", "integers"):
        np.testing.assert_array_equal(np.asarray(got, np.float64), ref)


@needs_compiler
@pytest.mark.parametrize("kind", ["normal", "integers", "constant"])
@pytest.mark.parametrize("h,pads", [(8, ((1, 1), (1, 1))), (10, ((0, 0), (0, 0))),
                                    (14, ((0, 2), (2, 0)))])
def test_conv2d_with_the_kernel_equals_conv2d_with_jnp(small_tiles_compiled, monkeypatch, kind, h, pads):
    """conv2d on Winograd shapes (the transforms are in the forward, the input gradient and the
    kernel gradient): values and both gradients with the compiled transforms against the jnp
    ones, and the custom calls are in the traced gradient exactly when they are on, switched
    both ways in one process."""
    x = jnp.asarray(_inputs((2, h, h, 64), kind, seed=h), jnp.float32)
    kernel = jnp.asarray(np.random.default_rng(h).integers(-2, 3, (3, 3, 64, 64)) / 24, jnp.float32)
    ct = jnp.asarray(np.random.default_rng(1).standard_normal((2, h + sum(pads[0]) - 2,
                                                               h + sum(pads[1]) - 2, 64)), jnp.float32)

    def run():
        f = lambda x, k: conv2d(x, k, 1, pads)                     # noqa: E731
        y, vjp = jax.vjp(jax.jit(f), x, kernel)
        traced = str(jax.make_jaxpr(jax.grad(lambda x, k: jnp.vdot(f(x, k), ct), (0, 1)))(x, kernel))
        return (y, *vjp(ct)), sum(traced.count(t) for t in native._TARGETS.values())

    # on first: a custom VJP's rules are traced once per shape, so the setting must be keyed
    monkeypatch.setenv("AECLUST_NATIVE", "auto")
    got, calls_on = run()
    monkeypatch.setenv("AECLUST_NATIVE", "off")
    ref, calls_off = run()
    assert calls_off == 0 and calls_on >= 3     # input gradient: in, out; kernel gradient: in
    # and plain autodiff of lax's conv, which shares no code with either
    lax_conv = lambda x, k: jax.lax.conv_general_dilated(                 # noqa: E731
        x, k, (1, 1), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y_lax, vjp_lax = jax.vjp(lax_conv, x, kernel)
    for g, r, p in zip(got, ref, (y_lax, *vjp_lax(ct))):
        np.testing.assert_allclose(g, r, rtol=0, atol=2e-5 * max(1.0, float(jnp.abs(r).max())))
        np.testing.assert_allclose(g, p, rtol=0, atol=5e-5 * max(1.0, float(jnp.abs(p).max())))


def _numpy_correlation(x, kernel, stride, pads):
    """float64 y (N, Ho, Wo, O) = sum over taps (a, b) of the zero-padded input's strided slice
    at (a, b) @ kernel[a, b]: a loop over taps, no conv routine."""
    xp = np.pad(x.astype(np.float64), ((0, 0), pads[0], pads[1], (0, 0)))
    kh, kw, _, o = kernel.shape
    ho, wo = (xp.shape[1] - kh) // stride + 1, (xp.shape[2] - kw) // stride + 1
    y = np.zeros((x.shape[0], ho, wo, o))
    for a in range(kh):
        for b in range(kw):
            taps = xp[:, a:a + stride * (ho - 1) + 1:stride, b:b + stride * (wo - 1) + 1:stride]
            y += taps @ kernel[a, b].astype(np.float64)
    return y


@needs_compiler
@pytest.mark.parametrize("kind", ["normal", "integers", "zeros", "constant"])
@pytest.mark.parametrize("x_shape,kernel_shape,stride,pads", [
    ((2, 13, 11, 3), (7, 7, 3, 64), 2, ((3, 3), (3, 3))),    # ResNet's stem, odd sizes
    ((3, 9, 10, 5), (3, 3, 5, 16), 1, ((1, 0), (2, 1))),     # asymmetric pads; 11 = 2 * 4 + 3 pixels
    ((1, 5, 5, 2), (3, 3, 2, 8), 3, ((0, 0), (0, 0))),       # stride 3, one output pixel
    ((2, 8, 8, 16), (3, 3, 16, 40), 2, ((0, 1), (0, 1))),    # 40 outputs: blocks of 8
    ((1, 6, 7, 1), (2, 3, 1, 24), 1, ((0, 0), (1, 1)))])     # 2x3 kernel, one channel
def test_direct_conv_equals_the_numpy_correlation(kind, x_shape, kernel_shape, stride, pads):
    x = _inputs(x_shape, kind, seed=sum(x_shape))
    kernel = np.random.default_rng(1).integers(-2, 3, kernel_shape).astype(np.float32)
    if kind == "normal":
        kernel = kernel / 4 + np.random.default_rng(2).standard_normal(kernel_shape).astype(np.float32)
    got = jax.jit(native.direct_conv, static_argnums=(2, 3))(jnp.asarray(x), jnp.asarray(kernel),
                                                              stride, pads)
    ref = _numpy_correlation(x, kernel, stride, pads)
    assert got.shape == ref.shape and got.dtype == jnp.float32
    if kind == "normal":
        np.testing.assert_allclose(got, ref, rtol=0, atol=2e-6 * max(1.0, np.abs(ref).max()))
    else:            # integer sums: exact in float32
        np.testing.assert_array_equal(np.asarray(got, np.float64), ref)


@needs_compiler
def test_direct_conv_refuses_what_it_cannot_compute():
    x, k = jnp.ones((1, 6, 6, 3)), jnp.ones((3, 3, 3, 12))
    with pytest.raises(ValueError, match="multiple of 8"):
        native.direct_conv(x, k, 1, ((1, 1), (1, 1)))
    with pytest.raises(ValueError, match="pads >= 0"):
        native.direct_conv(x, jnp.ones((3, 3, 3, 16)), 1, ((-1, 1), (1, 1)))
    assert [native.direct_block(o) for o in (64, 48, 40, 12)] == [32, 16, 8, 0]


@needs_compiler
def test_direct_conv_in_bfloat16_sums_in_float32():
    rng = np.random.default_rng(0)
    x = jnp.asarray(rng.standard_normal((2, 9, 9, 3)), jnp.bfloat16)
    k = jnp.asarray(rng.standard_normal((3, 3, 3, 16)), jnp.bfloat16)
    got = native.direct_conv(x, k, 2, ((1, 1), (1, 1)))
    ref = _numpy_correlation(np.asarray(x, np.float32), np.asarray(k, np.float32), 2, ((1, 1), (1, 1)))
    assert got.dtype == jnp.bfloat16
    np.testing.assert_allclose(np.asarray(got, np.float32), ref, rtol=1e-2, atol=1e-2)


@needs_compiler
@pytest.mark.parametrize("kind", ["normal", "integers", "constant"])
@pytest.mark.parametrize("x_shape,kernel_shape,stride,pads", [
    ((2, 12, 12, 3), (7, 7, 3, 64), 2, ((3, 3), (3, 3))),    # ResNet's stem
    ((2, 10, 10, 16), (3, 3, 16, 32), 2, ((0, 1), (0, 1))),  # the CAEs' stride-2 convs
    ((2, 9, 9, 32), (3, 3, 32, 16), 1, ((1, 1), (1, 1)))])   # a decoder conv (was "shift")
def test_conv2d_with_the_direct_kernel_equals_autodiff_of_lax_conv(monkeypatch, kind, x_shape,
                                                                   kernel_shape, stride, pads):
    """conv2d picks the direct kernel for these shapes when the kernels are on, and none when
    off; values and both gradients equal plain autodiff through lax's conv either way."""
    from aeclust_jax.models.layers import convolution
    x = jnp.asarray(_inputs(x_shape, kind, seed=3), jnp.float32)
    kernel = jnp.asarray(np.random.default_rng(4).integers(-2, 3, kernel_shape) / 8, jnp.float32)
    lax_conv = lambda x, k: jax.lax.conv_general_dilated(                 # noqa: E731
        x, k, (stride, stride), pads, dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y_lax, vjp_lax = jax.vjp(lax_conv, x, kernel)
    ct = jnp.asarray(_inputs(y_lax.shape, "normal", seed=5))
    want = (y_lax, *vjp_lax(ct))
    for setting in ("auto", "off"):
        monkeypatch.setenv("AECLUST_NATIVE", setting)
        f = lambda x, k: conv2d(x, k, stride, pads)                     # noqa: E731
        y, vjp = jax.vjp(jax.jit(f), x, kernel)
        traced = str(jax.make_jaxpr(jax.grad(lambda x, k: jnp.vdot(f(x, k), ct), (0, 1)))(x, kernel))
        assert (native._TARGETS["direct"] in traced) == (setting == "auto")
        with native.forced(setting == "auto"):
            assert (convolution._form(x_shape, kernel_shape, stride, pads) == "direct") == (setting == "auto")
        for g, w in zip((y, *vjp(ct)), want):
            np.testing.assert_allclose(g, w, rtol=0, atol=1e-5 * max(1.0, float(jnp.abs(w).max())))


def _run_python(code, **env):
    env = {**os.environ, "JAX_PLATFORMS": "cpu", **env}
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env,
                          timeout=600)


@needs_compiler
def test_a_sharded_step_stays_sharded():
    """Under a data-parallel jit over 2 devices each device transforms (and direct-convolves) its
    own images: the gradient's program has no all-gather (the custom calls alone had one each)
    and equals the 1-device numbers."""
    code = """
import jax, jax.numpy as jnp, numpy as np
from jax.sharding import Mesh, NamedSharding, PartitionSpec as P
from aeclust_jax.models.layers import conv2d, native, winograd
winograd._NATIVE_MIN_BYTES = 0
x = jnp.asarray(np.random.default_rng(0).standard_normal((4, 8, 8, 64)), jnp.float32)
k = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 64, 64)) * 0.05, jnp.float32)
k2 = jnp.asarray(np.random.default_rng(2).standard_normal((3, 3, 64, 16)) * 0.05, jnp.float32)
def loss(x, k):            # Winograd's 64 -> 64, then a direct 64 -> 16 at stride 2
    return jnp.sum(conv2d(conv2d(x, k, 1, ((1, 1), (1, 1))), k2, 2, ((0, 1), (0, 1))) ** 2)
grad = jax.jit(jax.grad(loss, (0, 1)))
xs = jax.device_put(x, NamedSharding(Mesh(np.array(jax.devices()), ("d",)), P("d")))
hlo = grad.lower(xs, k).compile().as_text()
assert jax.device_count() == 2 and native.available()
assert native._TARGETS["direct"] in hlo, "no direct conv"
assert sum(hlo.count(t) for t in native._TARGETS.values()) >= 4 and "all-gather" not in hlo, hlo.count("all-gather")
for a, b in zip(grad(xs, k), grad(x, k)):
    np.testing.assert_allclose(a, b, rtol=0, atol=1e-5 * float(jnp.abs(b).max()))  # summation order
print("ok")
"""
    done = _run_python(code, XLA_FLAGS="--xla_force_host_platform_device_count=2")
    assert done.returncode == 0 and "ok" in done.stdout, done.stderr[-3000:]


def test_without_a_compiler_it_warns_once_and_uses_jnp(tmp_path):
    """A compiler that fails: one RuntimeWarning naming the command, conv2d's jnp transform,
    the right numbers, nothing left in the cache folder."""
    code = """
import warnings, jax, jax.numpy as jnp, numpy as np
from aeclust_jax.models.layers import native, winograd, winograd_conv3x3
winograd._NATIVE_MIN_BYTES = 0
x = jnp.asarray(np.random.default_rng(0).standard_normal((1, 8, 8, 64)), jnp.float32)
k = jnp.asarray(np.random.default_rng(1).standard_normal((3, 3, 64, 64)), jnp.float32)
with warnings.catch_warnings(record=True) as caught:
    warnings.simplefilter("always")
    assert not native.available() and not native.available()
    traced = str(jax.make_jaxpr(lambda x, k: winograd_conv3x3(x, k, ((1, 1), (1, 1)), 4))(x, k))
print(len(caught), any(t in traced for t in native._TARGETS.values()), str(caught[0].message))
"""
    done = _run_python(code, CXX=shutil.which("false") or "/bin/false",
                       AECLUST_NATIVE_CACHE=str(tmp_path / "cache"))
    assert done.returncode == 0, done.stderr[-3000:]
    count, in_trace, message = done.stdout.strip().split(" ", 2)
    assert (count, in_trace) == ("1", "False")
    assert "not available" in message and "failed" in message
    assert list((tmp_path / "cache").iterdir()) == []


def test_native_setting_is_checked(monkeypatch):
    monkeypatch.setenv("AECLUST_NATIVE", "on")
    with pytest.raises(ValueError, match="AECLUST_NATIVE must be auto or off"):
        native.enabled()
    monkeypatch.setenv("AECLUST_NATIVE", "off")
    assert not native.enabled() and not native.available()


@needs_compiler
def test_the_build_is_cached_and_keyed(tmp_path, monkeypatch):
    """A second build for the same source, jaxlib, compiler and CPU returns the library already
    built (no compile); another CPU flag set gets its own file."""
    first = native._build(tmp_path)
    mtime = first.stat().st_mtime_ns
    assert native._build(tmp_path) == first and first.stat().st_mtime_ns == mtime
    monkeypatch.setattr(native, "_cpu_features", lambda: "some other cpu")
    real_run = subprocess.run
    monkeypatch.setattr(native.subprocess, "run", lambda *a, **k: pytest.fail("compiled again")
                        if "-shared" in a[0] else real_run(*a, **k))
    with pytest.raises(pytest.fail.Exception, match="compiled again"):
        native._build(tmp_path)
    assert sorted(p.name for p in tmp_path.iterdir()) == [first.name]
