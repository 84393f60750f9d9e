"""models.layers: the sub-pixel upsample+conv and the reshape max pool equal the literal ops,
values and gradients, on random shapes (odd sizes, 1x1 maps, one channel in or out); the
shifted-slice depthwise conv equals XLA's grouped conv, values and gradients; conv2d / Conv (GEMM
gradients) equal autodiff of lax's conv / nn.Conv."""

import functools

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from jax import lax

from aeclust_jax.models.layers import convolution, native, winograd
from aeclust_jax.models.layers import (Conv, Conv3x3, ConvTranspose, DepthwiseConv, conv2d,
                                      conv3x3, cpu_kernels, depthwise_conv,
                                      fused_max_pool_2x2, max_pool_2x2, pointwise_conv,
                                      upsample_conv, winograd_conv3x3)
from aeclust_jax.models.skip_ae import upsample2x

SHAPES = [(2, 14, 14, 16, 1), (3, 8, 8, 8, 16), (1, 7, 5, 3, 2), (2, 1, 1, 1, 1), (2, 4, 9, 1, 4)]


def _literal(x, kernel, bias, padding):
    return conv3x3(upsample2x(x), kernel, padding) + bias


# VALID of a 1x1 map upsampled to 2x2 has no output pixel: that pair is not a case
CASES = [(pad,) + s for pad in ("SAME", "VALID", "FULL") for s in SHAPES
         if not (pad == "VALID" and min(s[1:3]) < 2)]


@pytest.mark.parametrize("padding,n,h,w,cin,cout", CASES)
def test_upsample_conv_equals_conv_of_upsampled(padding, n, h, w, cin, cout):
    rng = np.random.default_rng(h * 100 + w)
    x = jnp.asarray(rng.normal(size=(n, h, w, cin)), jnp.float32)
    k = jnp.asarray(rng.normal(size=(3, 3, cin, cout)), jnp.float32)
    b = jnp.asarray(rng.normal(size=cout), jnp.float32)
    ref_shape = jax.eval_shape(lambda: _literal(x, k, b, padding)).shape
    ct = jnp.asarray(rng.normal(size=ref_shape), jnp.float32)     # a random cotangent
    (ref, ours), (g_ref, g_our) = _values_and_grads(
        [lambda *a: _literal(*a, padding), lambda *a: upsample_conv(*a, padding)], (x, k, b), ct)
    assert ours.shape == ref.shape
    np.testing.assert_allclose(ours, ref, rtol=1e-5, atol=1e-4)
    for gr, go in zip(g_ref, g_our):
        np.testing.assert_allclose(go, gr, rtol=1e-4, atol=1e-3)


def _values_and_grads(fns, args, ct, argnums=(0, 1, 2)):
    """([fn(*args) for fn in fns], [gradients of sum(fn(*args) * ct) wrt args[argnums]]), in one
    jitted call (eager compiles each primitive apart: slower). Traced anew per call, so
    monkeypatched settings apply."""
    @jax.jit
    def run(args, ct):
        grad = lambda f: jax.grad(lambda *a: jnp.sum(f(*a) * ct), argnums=argnums)(*args)  # noqa: E731
        return [f(*args) for f in fns], [grad(f) for f in fns]
    return run(args, ct)


def test_upsample_conv_rejects_other_kernels_and_paddings():
    x = jnp.zeros((1, 4, 4, 2))
    with pytest.raises(ValueError, match="3x3 kernel"):
        upsample_conv(x, jnp.zeros((5, 5, 2, 1)), None, "SAME")
    with pytest.raises(ValueError, match="SAME, VALID or FULL"):
        upsample_conv(x, jnp.zeros((3, 3, 2, 1)), None, "CIRCULAR")


def _pool_inputs(h, w):
    """Inputs for the pool: continuous (no ties), small integers (many ties), all zeros, one
    constant, a flat-background image with a bright patch, and -inf (ties with the padding)."""
    rng = np.random.default_rng(h * 31 + w)
    shape = (2, h, w, 3)
    patch = np.zeros(shape, np.float32)
    patch[:, h // 3: h // 3 + 2, w // 4: w // 4 + 3] = 0.75
    return {"normal": rng.normal(size=shape), "integers": rng.integers(-1, 2, shape),
            "zeros": np.zeros(shape), "constant": np.full(shape, 0.3), "patch": patch,
            "neg_inf": np.full(shape, -np.inf)}


def _wide_inputs(h, w, kind, channels):
    """``_pool_inputs(h, w)[kind]`` (2, h, w, 3) with its channels repeated to ``channels``."""
    x = np.resize(_pool_inputs(h, w)[kind].transpose(3, 0, 1, 2), (channels, 2, h, w))
    return x.transpose(1, 2, 3, 0)


@pytest.mark.parametrize("h,w", [(28, 28), (14, 14), (7, 7), (5, 3), (1, 1), (4, 6)])
@pytest.mark.parametrize("kind", ["normal", "integers", "zeros", "constant", "patch", "neg_inf"])
@pytest.mark.parametrize("channels", [3, 64])   # 64: the forward as four strided slices
def test_max_pool_values_and_gradient_equal_flax_max_pool(h, w, kind, channels):
    """The hand-written gradient (``fused_max_pool_2x2``, called directly so that it is tested on
    any backend) is exactly nn.max_pool's autodiff, ties included: one element per window (the
    first maximum in row-major order), never all tied ones."""
    x = jnp.asarray(_wide_inputs(h, w, kind, channels), jnp.float32)
    flax_pool = lambda t: nn.max_pool(t, (2, 2), strides=(2, 2), padding="SAME")
    ct = jax.random.normal(jax.random.key(1), flax_pool(x).shape)
    (y, ref), (g, g_ref), ones = _pool_values_and_grads(x, ct)
    np.testing.assert_array_equal(y, ref)
    np.testing.assert_allclose(g, g_ref, rtol=0, atol=1e-6)
    # the gradient of the pooled sum puts exactly one 1 in every window
    assert float(ones.sum()) == float(np.prod(ref.shape))


@jax.jit          # one compile per input shape (eager compiles each primitive apart: slower)
def _pool_values_and_grads(x, ct):
    """fused_max_pool_2x2 and nn.max_pool of x: values, gradients of sum(pool * ct), and the
    gradient of our pool's plain sum."""
    flax_pool = lambda t: nn.max_pool(t, (2, 2), strides=(2, 2), padding="SAME")
    g = lambda f: jax.grad(lambda t: jnp.sum(f(t) * ct))(x)
    return ((fused_max_pool_2x2(x), flax_pool(x)), (g(fused_max_pool_2x2), g(flax_pool)),
            jax.grad(lambda t: fused_max_pool_2x2(t).sum())(x))


@pytest.mark.parametrize("kernels", ["cpu", "xla"])
def test_max_pool_of_either_kernel_equals_flax_on_ties(kernels, monkeypatch):
    """``AECLUST_KERNELS`` picks the fused pool (cpu) or nn.max_pool (xla, a GPU's default):
    same values and the same one-per-window gradient on tied inputs."""
    monkeypatch.setenv("AECLUST_KERNELS", kernels)
    assert cpu_kernels() == (kernels == "cpu")
    x = jnp.asarray(_pool_inputs(5, 6)["integers"], jnp.float32)
    flax_pool = lambda t: nn.max_pool(t, (2, 2), strides=(2, 2), padding="SAME")
    np.testing.assert_array_equal(max_pool_2x2(x), flax_pool(x))
    g = lambda f: jax.grad(lambda t: f(t).sum())(x)
    np.testing.assert_array_equal(g(max_pool_2x2), g(flax_pool))


def test_cpu_kernels_follow_the_backend_and_refuse_a_bad_setting(monkeypatch):
    monkeypatch.delenv("AECLUST_KERNELS", raising=False)
    assert cpu_kernels() == (jax.default_backend() == "cpu")
    monkeypatch.setenv("AECLUST_KERNELS", "gpu")
    with pytest.raises(ValueError, match="AECLUST_KERNELS must be auto, cpu or xla, got 'gpu'"):
        cpu_kernels()


def test_max_pool_gradient_of_zeros_counts_windows():
    """The issue's measurement: 16 (every tied element) before the fix, 4 (one per window) now."""
    grad = jax.grad(lambda x: fused_max_pool_2x2(x).sum())(jnp.zeros((1, 4, 4, 1)))
    assert float(grad.sum()) == 4.0


def _conv2d_and_lax_conv(x, kernel, stride, pads, key=5):
    """((conv2d's values, lax's), [(conv2d's dx, lax's dx), (conv2d's dkernel, lax's)]): the
    reference is lax.conv_general_dilated and jax.grad of it, under one random cotangent."""
    plain = lambda t, k: lax.conv_general_dilated(t, k, (stride, stride), pads,  # noqa: E731
                                                  dimension_numbers=("NHWC", "HWIO", "NHWC"))
    ours = lambda t, k: conv2d(t, k, stride, pads)  # noqa: E731
    ct = jax.random.normal(jax.random.key(key), jax.eval_shape(plain, x, kernel).shape)
    values, (g_ours, g_ref) = _values_and_grads([ours, plain], (x, kernel), ct, (0, 1))
    return tuple(values), list(zip(g_ours, g_ref))


@pytest.mark.parametrize("kind", ["normal", "integers", "zeros", "constant", "patch"])
@pytest.mark.parametrize("cin,pads", [(1, ((1, 1), (1, 1))), (8, ((0, 1), (0, 1))),
                                       (3, ((1, 2), (1, 2)))])
@pytest.mark.parametrize("stride", [1, 2])
def test_conv2d_whole_batch_gradient_equals_autodiff_of_plain_conv(kind, cin, pads, stride):
    """conv2d's VJP with the kernel gradient as one GEMM over the whole batch (small taps: S1's
    one-channel image input, its layout taps-first, and the 2x2 phase kernels of upsample_conv)
    against jax.grad of lax.conv_general_dilated itself."""
    x = jnp.asarray(_pool_inputs(7, 6)[kind][..., :1].repeat(cin, -1), jnp.float32)
    kh = 2 if cin == 8 else 3
    rng = np.random.default_rng(cin)
    kernel = jnp.asarray(rng.integers(-2, 3, (kh, kh, cin, 4)), jnp.float32)   # ties in weights
    (got, ref), grads = _conv2d_and_lax_conv(x, kernel, stride, pads)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    for go, gr in grads:
        np.testing.assert_allclose(go, gr, rtol=1e-5, atol=1e-4)


def _numpy_correlation(x, kernel, pads):
    """float64 reference: sum over the kh*kw taps of shifted slices times the tap's matrix."""
    x, kernel = np.asarray(x, np.float64), np.asarray(kernel, np.float64)
    kh, kw = kernel.shape[:2]
    xp = np.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
    ho, wo = xp.shape[1] - kh + 1, xp.shape[2] - kw + 1
    return sum(xp[:, i:i + ho, j:j + wo] @ kernel[i, j] for i in range(kh) for j in range(kw))


def _numpy_correlation_grads(x, kernel, pads, ct):
    """float64 reference gradients of sum(correlation * ct): (dx, dkernel), tap by tap."""
    x, kernel, ct = (np.asarray(a, np.float64) for a in (x, kernel, ct))
    kh, kw = kernel.shape[:2]
    (pt, pb), (pl, pr) = pads
    xp = np.pad(x, ((0, 0),) + tuple(pads) + ((0, 0),))
    ho, wo = ct.shape[1:3]
    dxp = np.zeros_like(xp)
    dk = np.zeros_like(kernel)
    for i in range(kh):
        for j in range(kw):
            dxp[:, i:i + ho, j:j + wo] += ct @ kernel[i, j].T
            dk[i, j] = np.einsum("nhwc,nhwo->co", xp[:, i:i + ho, j:j + wo], ct)
    return dxp[:, pt:xp.shape[1] - pb, pl:xp.shape[2] - pr], dk


@functools.partial(jax.jit, static_argnums=3)
def _conv2d_and_grads(x, kernel, ct, pads):
    """conv2d(x, kernel, 1, pads) and its gradients wrt x and kernel under the cotangent ct."""
    y, vjp = jax.vjp(lambda t, k: conv2d(t, k, 1, pads), x, kernel)
    return y, vjp(ct)


def _assert_stride1_conv2d_is_the_correlation(x, kernel, pads, rng):
    """conv2d(x, kernel, 1, pads), its values and both gradients under a random cotangent from
    rng, equal the float64 numpy correlation and its tap-by-tap gradients."""
    ref = _numpy_correlation(x, kernel, pads)
    xj, kj = jnp.asarray(x, jnp.float32), jnp.asarray(kernel)
    ct = rng.normal(size=ref.shape).astype(np.float32)
    y, got = _conv2d_and_grads(xj, kj, ct, pads)
    assert y.shape == ref.shape
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=0,
                               atol=1e-6 * max(1.0, np.abs(ref).max()))
    for g, r in zip(got, _numpy_correlation_grads(x, kernel, pads, ct)):
        assert g.shape == r.shape
        np.testing.assert_allclose(np.asarray(g, np.float64), r, rtol=0,
                                   atol=1e-5 * max(1.0, np.abs(r).max()))


@pytest.mark.parametrize("kind", ["normal", "integers", "zeros", "constant", "patch"])
@pytest.mark.parametrize("cin,cout,k,h,w,pads,form", [
    (3, 16, 3, 9, 7, ((1, 1), (1, 1)), "taps"),       # an RGB input (the CAEs' first conv)
    (1, 8, 3, 6, 6, ((0, 2), (1, 0)), "taps"),        # one channel, asymmetric pads
    (16, 3, 3, 8, 9, ((1, 1), (1, 1)), "shift"),      # an RGB output (the CAEs' last conv)
    (16, 5, 3, 5, 6, ((2, 0), (0, 1)), "shift"),
    (16, 5, 3, 4, 5, ((3, 0), (0, 3)), "shift"),       # pads past the kernel: XLA's dx
    (8, 4, 2, 5, 5, ((1, 1), (1, 1)), "shift"),       # upsample_conv's 2x2 phase kernel
    (4, 8, 2, 4, 3, ((0, 0), (0, 0)), "taps"),        # and its input gradient's
    (8, 16, 3, 6, 6, ((1, 1), (1, 1)), None)])        # XLA's conv
def test_narrow_conv_forms_equal_the_correlation(kind, cin, cout, k, h, w, pads, form):
    """conv2d's narrow stride-1 forms ("taps": one GEMM of the stacked input taps; "shift": a GEMM
    to every tap's output, then a sum of shifted slices; with the kernel gradient from the
    shifted cotangent) against a float64 numpy correlation and its tap-by-tap gradients: ties,
    zeros and constants in the input, integer weights, asymmetric pads, 2x2 kernels."""
    assert convolution._narrow_form((2, h, w, cin), (k, k, cin, cout), 1) == form
    rng = np.random.default_rng(cin * 100 + cout)
    x = _wide_inputs(h, w, kind, cin)
    kernel = rng.integers(-2, 3, (k, k, cin, cout)).astype(np.float32)
    _assert_stride1_conv2d_is_the_correlation(x, kernel, pads, rng)


def test_narrow_form_choice():
    """The GEMM forms only where measured faster (stride 1; 4 or fewer input channels: "taps";
    outputs at most half the inputs and 64 or fewer: "shift") and within _NARROW_BYTES."""
    form = convolution._narrow_form
    assert form((128, 32, 32, 3), (3, 3, 3, 16), 1) == "taps"
    assert form((128, 32, 32, 3), (3, 3, 3, 16), 2) is None
    assert form((128, 32, 32, 16), (3, 3, 16, 3), 1) == "shift"
    assert form((128, 17, 17, 64), (2, 2, 64, 32), 1) == "shift"
    assert form((128, 5, 5, 256), (2, 2, 256, 128), 1) is None
    assert form((128, 16, 16, 32), (2, 2, 32, 64), 1) is None
    assert form((128, 32, 32, 16), (1, 1, 16, 3), 1) is None
    assert form((256, 224, 224, 3), (3, 3, 3, 64), 1) is None       # 1.4 GB of taps


@pytest.mark.parametrize("m", [2, 4])
@pytest.mark.parametrize("kind", ["normal", "integers", "zeros", "constant", "patch"])
@pytest.mark.parametrize("h,w,pads", [(8, 8, ((1, 1), (1, 1))), (7, 9, ((1, 1), (1, 1))),
                                      (6, 5, ((0, 0), (0, 0))), (5, 6, ((2, 2), (2, 2))),
                                      (9, 4, ((0, 2), (1, 0))), (1, 1, ((1, 1), (1, 1)))])
def test_winograd_conv3x3_equals_the_correlation(m, kind, h, w, pads):
    """Winograd F(m x m, 3 x 3) against a float64 numpy correlation: sizes that are not multiples
    of the tile (the last tiles zero-padded), asymmetric pads, a 1x1 map; inputs with ties, zeros
    and constants, integer weights. Error bound: ~1e-6 (m = 2) and ~2e-5 (m = 4) relative."""
    rng = np.random.default_rng(h * 10 + w)
    x = _wide_inputs(h, w, kind, 5)
    kernel = rng.integers(-2, 3, (3, 3, 5, 7)).astype(np.float32)
    ref = _numpy_correlation(x, kernel, pads)
    y = jax.jit(winograd_conv3x3, static_argnums=(2, 3))(jnp.asarray(x, jnp.float32),
                                                         jnp.asarray(kernel), pads, m)
    assert y.shape == ref.shape
    tol = {2: 1e-6, 4: 1e-5}[m] * max(1.0, np.abs(ref).max())
    np.testing.assert_allclose(np.asarray(y, np.float64), ref, rtol=0, atol=tol)
    # swap_io (the input gradient's form): the kernel given as (3, 3, Cout, Cin), used transposed
    swapped = jax.jit(winograd_conv3x3, static_argnums=(2, 3, 4))(
        jnp.asarray(x, jnp.float32), jnp.asarray(kernel.transpose(0, 1, 3, 2).copy()), pads, m, True)
    np.testing.assert_allclose(np.asarray(swapped, np.float64), ref, rtol=0, atol=tol)


@pytest.mark.parametrize("kind", ["normal", "integers", "zeros", "constant"])
@pytest.mark.parametrize("h,pads", [(8, ((1, 1), (1, 1))),      # F(4x4) everywhere
                                    (6, ((1, 1), (1, 1))),      # F(2x2)
                                    (14, ((0, 2), (2, 0))),     # F(2x2), asymmetric pads
                                    (10, ((0, 0), (0, 0))),     # F(4x4), input gradient F(2x2)
                                    (4, ((3, 1), (1, 3))),      # F(2x2), pads past the kernel:
                                                                # XLA's transposed input gradient
                                    (3, ((1, 1), (1, 1)))])     # not Winograd: tiles mostly padding
def test_conv2d_with_winograd_equals_autodiff_of_lax_conv(kind, h, pads):
    """conv2d on the 64-channel shapes where ``_winograd_tile`` picks Winograd (forward, the
    input gradient as a 3x3 conv of the cotangent with the flipped kernel, the kernel gradient
    as the transposed algorithm): values and both gradients against jax.grad of
    lax.conv_general_dilated, on ties, zeros and constants."""
    ho = h + sum(pads[0]) - 2
    expect = {8: 4, 6: 2, 14: 2, 10: 4, 4: 2, 3: 0}[h]
    assert winograd._winograd_tile(ho, ho, 64, 64) == expect
    x = jnp.asarray(_wide_inputs(h, h, kind, 64), jnp.float32)
    rng = np.random.default_rng(h)
    kernel = jnp.asarray(rng.integers(-2, 3, (3, 3, 64, 64)) / 24.0, jnp.float32)
    (got, ref), grads = _conv2d_and_lax_conv(x, kernel, 1, pads, key=3)
    np.testing.assert_allclose(got, ref, rtol=0, atol=5e-5 * max(1.0, float(jnp.abs(ref).max())))
    for go, gr in grads:
        np.testing.assert_allclose(go, gr, rtol=0, atol=5e-5 * max(1.0, float(jnp.abs(gr).max())))


def test_winograd_tile_choice():
    """Winograd only where it was measured faster: 64+ channels, maps up to 128 px."""
    tile = winograd._winograd_tile
    assert [tile(s, s, 256, 256) for s in (224, 112, 56, 28, 14, 12, 8, 6, 4, 3)] == \
        [0, 4, 4, 4, 2, 4, 4, 2, 4, 0]
    assert tile(28, 28, 32, 512) == 0 and tile(28, 27, 512, 512) == 0


@pytest.mark.parametrize("kind", ["normal", "integers", "zeros", "constant"])
@pytest.mark.parametrize("h,w,k,pads", [(3, 3, 3, ((1, 1), (1, 1))),    # ResNet's 3x3 maps
                                        (7, 5, 3, ((0, 2), (2, 0))),    # asymmetric pads
                                        (1, 1, 3, ((1, 1), (1, 1))),    # one pixel: 8 taps read only padding
                                        (3, 4, 3, ((3, 1), (0, 2)))])   # a pad past the kernel
def test_valid_taps_conv_equals_the_correlation(kind, h, w, k, pads):
    """conv2d on small maps of 64 channels (one GEMM per tap over the output pixels it reads
    inside the map; the input gradient its transpose, the kernel gradient per tap) against a
    float64 numpy correlation and its tap-by-tap gradients: ties, zeros and constants in the
    input, integer weights, asymmetric pads, taps wholly in the padding (their gradient is 0)."""
    assert convolution._form((2, h, w, 64), (k, k, 64, 64), 1, pads) == "valid_taps"
    rng = np.random.default_rng(h * 10 + w)
    x = _wide_inputs(h, w, kind, 64)
    kernel = rng.integers(-2, 3, (k, k, 64, 64)).astype(np.float32)
    _assert_stride1_conv2d_is_the_correlation(x, kernel, pads, rng)


@pytest.mark.parametrize("kind", ["normal", "integers", "zeros", "constant"])
@pytest.mark.parametrize("h,w,k,pads", [(6, 6, 3, ((1, 1), (1, 1))),    # ResNet's 6 -> 3 px
                                        (8, 7, 3, ((0, 1), (0, 1))),    # odd width, one-sided pads
                                        (9, 9, 5, ((2, 2), (2, 2))),
                                        (2, 2, 3, ((1, 1), (1, 1)))])   # one output pixel
def test_valid_taps_stride2_equals_autodiff_of_lax_conv(kind, h, w, k, pads):
    """The same form at stride 2 (strided slices of the input per tap): values and both
    gradients against jax.grad of lax.conv_general_dilated, on ties, zeros and constants."""
    assert convolution._form((2, h, w, 64), (k, k, 64, 96), 2, pads) == "valid_taps"
    x = jnp.asarray(_wide_inputs(h, w, kind, 64), jnp.float32)
    kernel = jnp.asarray(np.random.default_rng(h).integers(-2, 3, (k, k, 64, 96)), jnp.float32)
    (got, ref), grads = _conv2d_and_lax_conv(x, kernel, 2, pads, key=4)
    np.testing.assert_allclose(got, ref, rtol=0, atol=1e-5 * max(1.0, float(jnp.abs(ref).max())))
    for go, gr in grads:
        np.testing.assert_allclose(go, gr, rtol=0, atol=1e-5 * max(1.0, float(jnp.abs(gr).max())))


@pytest.mark.parametrize("compiled", [False, True])
def test_conv_form_choice(compiled):
    """Winograd first, then the compiled direct conv when the kernels are on (outputs a multiple
    of 8, not where valid taps are), then the narrow GEMM forms, then valid taps for wide convs
    (64+ channels) into maps of at most 64 pixels, else XLA's conv."""
    if compiled and not native.available():
        pytest.skip("no C++ compiler here: the compiled kernels cannot build")
    with native.forced(compiled):
        _assert_conv_forms(convolution._form, "direct" if compiled else None)


def _assert_conv_forms(form, direct):
    same = ((1, 1), (1, 1))
    assert form((32, 3, 3, 512), (3, 3, 512, 512), 1, same) == "valid_taps"    # ResNet-18, 96 px
    assert form((32, 7, 7, 512), (3, 3, 512, 512), 1, same) == "valid_taps"    # 224 px
    assert form((32, 6, 6, 256), (3, 3, 256, 512), 2, same) == "valid_taps"
    assert form((128, 4, 4, 512), (3, 3, 512, 512), 1, same) == "winograd"     # 32 px
    assert form((128, 32, 32, 64), (3, 3, 64, 128), 2, same) == (direct or "xla")   # 16x16 out
    assert form((32, 96, 96, 3), (7, 7, 3, 64), 2, ((3, 3), (3, 3))) == (direct or "xla")  # stem
    assert form((128, 32, 32, 3), (3, 3, 3, 16), 1, same) == (direct or "taps")    # RGB input
    assert form((64, 32, 32, 32), (3, 3, 32, 16), 1, same) == (direct or "shift")
    assert form((128, 32, 32, 16), (3, 3, 16, 3), 1, same) == "shift"            # 3 outputs
    assert form((32, 3, 3, 512), (3, 3, 512, 32), 1, same) == "shift"            # window > 1152
    assert form((32, 3, 3, 32), (3, 3, 32, 32), 1, same) == (direct or "xla")      # narrow
    assert form((32, 3, 3, 512), (1, 1, 512, 512), 1, ((0, 0), (0, 0))) == "xla"


def test_kernel_gradient_batch_chunks():
    """The whole batch when its taps fit in 32 MB, else the largest divisor of the batch whose
    taps fit in 4 MB."""
    assert convolution._batch_chunk(128, 200_000) == 128            # 25.6 MB
    assert convolution._batch_chunk(128, 1 << 20) == 4               # 128 MB -> 4 images of 1 MB
    assert convolution._batch_chunk(100, 300_000) == 100             # 30 MB
    assert convolution._batch_chunk(100, 1_500_000) == 2             # 150 MB -> 2 (a divisor of 100)
    assert convolution._batch_chunk(7, 10 << 20) == 1                # one image is over 4 MB


@pytest.mark.parametrize("k,stride,h,w,chunk_bytes", [
    (3, 1, 7, 6, None), (3, 2, 7, 8, 1), (1, 2, 7, 7, 1), (7, 2, 9, 10, 4000)])
@pytest.mark.parametrize("kind", ["normal", "integers", "zeros", "constant"])
def test_conv2d_equals_autodiff_of_lax_conv(monkeypatch, k, stride, h, w, chunk_bytes, kind):
    """conv2d's hand-written VJP (batch-chunked GEMM kernel gradient; input gradient: the
    flipped-kernel conv at stride 1, the sub-pixel form at stride 2 with these 5 channels)
    against jax.grad of lax.conv_general_dilated; chunk_bytes forces the kernel gradient's scan
    over chunks of images (1: one image a step; batch 3 has no other divisor)."""
    if chunk_bytes is not None:
        monkeypatch.setattr(convolution, "_WGRAD_WHOLE_BATCH_BYTES", 0)
        monkeypatch.setattr(convolution, "_WGRAD_CHUNK_BYTES", chunk_bytes)
    x = _pool_inputs(h, w)[kind]
    x = jnp.asarray(np.concatenate([x, x[:1] * 0.5]).repeat(2, -1)[..., :5], jnp.float32)
    rng = np.random.default_rng(k * 10 + stride)
    kernel = jnp.asarray(rng.integers(-2, 3, (k, k, 5, 4)), jnp.float32)   # ties in weights
    p = k // 2
    pads = ((p, p), (p, p)) if k != 3 or stride != 1 else ((1, 0), (2, 1))   # + uneven pads
    (got, ref), grads = _conv2d_and_lax_conv(x, kernel, stride, pads)
    np.testing.assert_allclose(got, ref, atol=1e-5)
    for go, gr in grads:
        np.testing.assert_allclose(go, gr, rtol=1e-5, atol=1e-4)


@pytest.mark.parametrize("k,h,w,pads", [
    (3, 8, 8, ((0, 1), (0, 1))), (3, 7, 9, ((1, 1), (1, 1))), (2, 6, 7, ((1, 0), (0, 0))),
    (2, 5, 5, ((0, 0), (1, 1))), (1, 7, 8, ((0, 0), (0, 0))), (4, 9, 8, ((2, 1), (1, 2))),
    (7, 11, 10, ((3, 3), (3, 3))), (3, 3, 3, ((0, 0), (0, 0)))])
@pytest.mark.parametrize("kind", ["integers", "zeros", "constant", "patch"])
def test_stride2_input_gradient_equals_autodiff(k, h, w, pads, kind):
    """The sub-pixel input gradient of a stride-2 conv (odd and even sizes, kernels 1-7 including
    even ones, asymmetric pads, padded rows that no output reads) against jax.vjp of lax's conv,
    on inputs and cotangents with ties, zeros and constants."""
    x = jnp.asarray(_wide_inputs(h, w, kind, 5), jnp.float32)
    rng = np.random.default_rng(k * 100 + h)
    kernel = jnp.asarray(rng.integers(-2, 3, (k, k, 5, 6)), jnp.float32)
    plain = lambda t: lax.conv_general_dilated(t, kernel, (2, 2), pads,
                                               dimension_numbers=("NHWC", "HWIO", "NHWC"))
    y, vjp = jax.vjp(plain, x)
    ct = jnp.asarray(rng.integers(-1, 2, y.shape), jnp.float32)
    want = vjp(ct)[0]
    got = convolution._stride2_input_grad(ct, kernel, x.shape, pads)
    assert got.shape == x.shape
    np.testing.assert_allclose(got, want, rtol=0, atol=1e-5)


@pytest.mark.parametrize("kernels", ["cpu", "xla"])
@pytest.mark.parametrize("k,stride,h,w", [(3, 2, 16, 16), (3, 2, 5, 7), (2, 2, 4, 3),
                                          (4, 2, 6, 5), (5, 2, 3, 4), (1, 2, 4, 4),
                                          (3, 1, 6, 5)])
@pytest.mark.parametrize("kind", ["normal", "integers", "zeros", "constant"])
def test_conv_transpose_module_is_nn_conv_transpose(kernels, k, stride, h, w, kind, monkeypatch):
    """ConvTranspose = flax's nn.ConvTranspose (padding 'SAME'): the same parameters, values and
    gradients (both parameters and the input) on ties, zeros and constants; stride 2 with 2+
    taps takes the sub-pixel form on the CPU kernels, the rest lax's conv_transpose."""
    _assert_conv_transpose_is_nn_conv_transpose(kernels, k, stride, h, w, kind, 3, monkeypatch)


@pytest.mark.parametrize("kernels", ["cpu", "xla"])
@pytest.mark.parametrize("kind", ["normal", "integers", "constant"])
def test_conv_transpose_with_the_direct_kernel_is_nn_conv_transpose(kernels, kind, monkeypatch):
    """With 4 outputs the sub-pixel form's stride-1 conv has 16 (4 x 4) and takes the compiled
    direct conv on the CPU kernels: autodiff through conv_transpose must reach conv2d's own
    gradients (the custom call has no autodiff rule)."""
    assert convolution._form((2, 6, 5, 6), (2, 2, 6, 16), 1, ((1, 1), (1, 1))) == (
        "direct" if native.available() else "xla")
    _assert_conv_transpose_is_nn_conv_transpose(kernels, 3, 2, 6, 5, kind, 4, monkeypatch)


def _assert_conv_transpose_is_nn_conv_transpose(kernels, k, stride, h, w, kind, features, monkeypatch):
    """ConvTranspose(features, k, stride) under AECLUST_KERNELS=kernels against nn.ConvTranspose:
    values and the gradients of both parameters and the input."""
    monkeypatch.setenv("AECLUST_KERNELS", kernels)
    z = jnp.asarray(_wide_inputs(h, w, kind, 6), jnp.float32)
    ours = ConvTranspose(features, (k, k), (stride, stride))
    ref = nn.ConvTranspose(features, (k, k), strides=(stride, stride), padding="SAME")
    p = ours.init(jax.random.key(1), z)
    assert jax.tree.map(jnp.shape, p) == jax.tree.map(jnp.shape, ref.init(jax.random.key(1), z))
    p = jax.tree.map(lambda a: jnp.round(a * 4) / 4, p)                 # ties in the weights
    p["params"]["bias"] = jnp.asarray([0.5, -1.0, 0.0, 2.0][:features])
    ct = jax.random.normal(jax.random.key(2), (2, stride * h, stride * w, features))
    (y, y_ref), (g_ours, g_ref) = _values_and_grads([ours.apply, ref.apply], (p, z), ct, (0, 1))
    assert y.shape == (2, stride * h, stride * w, features)
    np.testing.assert_allclose(y, y_ref, rtol=0, atol=1e-5)
    for go, gr in zip(jax.tree.leaves(g_ours), jax.tree.leaves(g_ref)):
        np.testing.assert_allclose(go, gr, rtol=0, atol=1e-4 * max(1.0, float(jnp.abs(gr).max())))


@pytest.mark.parametrize("kernels", ["cpu", "xla"])
@pytest.mark.parametrize("use_bias", [False, True])
@pytest.mark.parametrize("features", [6, 32])   # 32 from 3 channels: XLA:CPU's zero 4th channel
def test_conv_module_has_nn_conv_parameters_values_and_gradients(use_bias, kernels, features,
                                                                 monkeypatch):
    """Both sides of ``cpu_kernels()``: the GEMM-gradient conv2d (XLA:CPU) and XLA's own conv
    (what a GPU runs)."""
    monkeypatch.setenv("AECLUST_KERNELS", kernels)
    x = jax.random.normal(jax.random.key(0), (3, 9, 8, 3))
    init = nn.initializers.variance_scaling(2.0, "fan_out", "normal")
    kw = dict(padding=((1, 1), (1, 1)), use_bias=use_bias, kernel_init=init)
    ours, theirs = Conv(features, (3, 3), (2, 2), **kw), nn.Conv(features, (3, 3), (2, 2), **kw)
    key = jax.random.key(3)
    p_ours, p_theirs = ours.init(key, x), theirs.init(key, x)
    jax.tree.map(np.testing.assert_array_equal, p_ours, p_theirs)     # same tree, same init
    np.testing.assert_allclose(ours.apply(p_ours, x), theirs.apply(p_theirs, x), atol=1e-5)
    ct = jax.random.normal(jax.random.key(4), theirs.apply(p_theirs, x).shape)
    grad = lambda m: jax.grad(lambda p, t: jnp.sum(m.apply(p, t) * ct), argnums=(0, 1))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                 grad(ours)(p_ours, x), grad(theirs)(p_theirs, x))


@pytest.mark.parametrize("cin", [1, 8])     # 1: the image-input path with its own kernel gradient
def test_conv3x3_has_flax_parameters_values_and_gradients(cin):
    x = jax.random.normal(jax.random.key(0), (2, 7, 7, cin))
    key = jax.random.key(3)
    for ours, theirs in [(Conv3x3(4), nn.Conv(4, (3, 3))),
                         (Conv3x3(4, "VALID"), nn.Conv(4, (3, 3), padding="VALID")),
                         (Conv3x3(4, "FULL"), nn.ConvTranspose(4, (3, 3), padding="VALID"))]:
        p_ours, p_theirs = ours.init(key, x), theirs.init(key, x)
        jax.tree.map(np.testing.assert_array_equal, p_ours, p_theirs)     # same tree, same init
        np.testing.assert_allclose(ours.apply(p_ours, x), theirs.apply(p_theirs, x), atol=1e-5)
        ct = jax.random.normal(jax.random.key(4), theirs.apply(p_theirs, x).shape)
        grad = lambda m, ct=ct: jax.grad(lambda p, t: jnp.sum(m.apply(p, t) * ct), argnums=(0, 1))
        g_ours, g_theirs = grad(ours)(p_ours, x), grad(theirs)(p_theirs, x)
        jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-4),
                     g_ours, g_theirs)


def test_conv3x3_pooled_is_pool_of_conv_plus_bias():
    x = jax.random.normal(jax.random.key(0), (2, 7, 6, 3))
    m = Conv3x3(5)
    p = m.init(jax.random.key(1), x)
    ref = nn.max_pool(m.apply(p, x), (2, 2), strides=(2, 2), padding="SAME")
    np.testing.assert_allclose(m.apply(p, x, pooled=True), ref, rtol=1e-6, atol=1e-6)


# ----------------------------------------------------------------------------- depthwise conv

def _grouped(x, kernel, stride, padding="SAME"):
    """The reference: XLA's grouped conv, one channel per group ('SAME' is TensorFlow's rule)."""
    return lax.conv_general_dilated(x, kernel, (stride, stride), padding,
                                    dimension_numbers=("NHWC", "HWIO", "NHWC"),
                                    feature_group_count=x.shape[-1])


DW_CASES = [(k, s, h, w) for k in (3, 5) for s in (1, 2)
            for h, w in ((7, 7), (8, 8), (15, 8), (7, 15), (112, 112))]


def _dw_inputs(kind, shape, k, seed):
    rng = np.random.default_rng(seed)
    kernel = rng.normal(size=(k, k, 1, shape[-1])).astype(np.float32)
    if kind == "random":
        x = rng.normal(size=shape)
    elif kind == "zeros":
        x = np.zeros(shape)
    else:   # constant per channel, one channel all zero, and a zero block
        x = np.broadcast_to(rng.normal(size=shape[-1]), shape).copy()
        x[..., 0] = 0.0
        x[:, : shape[1] // 2, : shape[2] // 3] = 0.0
    return jnp.asarray(x, jnp.float32), jnp.asarray(kernel)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _dw_vjp(fn, x, kernel, stride, ct):
    """fn(x, kernel, stride) and its gradients wrt x and kernel through the cotangent ct
    (jitted: eager dispatch of the k*k taps is slower than compiling)."""
    y, vjp = jax.vjp(lambda a, b: fn(a, b, stride), x, kernel)
    return y, vjp(ct)


@pytest.mark.parametrize("kind", ["random", "zeros", "constant"])
@pytest.mark.parametrize("k, stride, h, w", DW_CASES)
def test_depthwise_conv_equals_grouped_conv(k, stride, h, w, kind):
    c = 3 if h == 112 else 5
    x, kernel = _dw_inputs(kind, (2, h, w, c), k, seed=h * 31 + w + k + stride)
    ct = np.random.default_rng(7).normal(size=(2, -(-h // stride), -(-w // stride), c))
    ct = jnp.asarray(ct, jnp.float32)               # a random cotangent for the gradients
    want, vjp_want = _dw_vjp(_grouped, x, kernel, stride, ct)
    got, vjp_got = _dw_vjp(depthwise_conv, x, kernel, stride, ct)
    assert got.shape == want.shape == (2, -(-h // stride), -(-w // stride), c)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    # gradients wrt input and kernel (plain autodiff on our side)
    for g, r, name in zip(vjp_got, vjp_want, ("input", "kernel")):
        np.testing.assert_allclose(g, r, atol=1e-4 * max(1.0, float(np.abs(r).max())),
                                   rtol=1e-5, err_msg=f"gradient wrt {name}")


@pytest.mark.parametrize("k, stride", [(3, 1), (3, 2), (5, 2)])
def test_depthwise_conv_valid_padding(k, stride):
    x, kernel = _dw_inputs("random", (2, 11, 8, 4), k, seed=3)
    np.testing.assert_allclose(depthwise_conv(x, kernel, stride, "VALID"),
                               _grouped(x, kernel, stride, "VALID"), atol=1e-5, rtol=1e-5)


def test_depthwise_module_has_nn_conv_parameter_and_values():
    """DepthwiseConv keeps nn.Conv(feature_group_count=C)'s parameter: name, shape, init."""
    x = jnp.asarray(np.random.default_rng(0).normal(size=(2, 9, 10, 6)), jnp.float32)
    ours = DepthwiseConv(5, 2)
    theirs = nn.Conv(6, (5, 5), (2, 2), padding="SAME", feature_group_count=6, use_bias=False)
    v_ours = ours.init(jax.random.key(0), x)
    v_theirs = theirs.init(jax.random.key(0), x)
    assert jax.tree.map(jnp.shape, v_ours) == jax.tree.map(jnp.shape, v_theirs) == {
        "params": {"kernel": (5, 5, 1, 6)}}
    np.testing.assert_array_equal(v_ours["params"]["kernel"], v_theirs["params"]["kernel"])
    np.testing.assert_allclose(ours.apply(v_ours, x), theirs.apply(v_theirs, x), atol=1e-5)


def test_depthwise_conv_rejects_mismatched_kernel():
    with pytest.raises(ValueError, match="kernel"):
        depthwise_conv(jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 1, 5)))
    with pytest.raises(ValueError, match="padding"):
        depthwise_conv(jnp.zeros((1, 8, 8, 4)), jnp.zeros((3, 3, 1, 4)), padding="FULL")


@pytest.mark.parametrize("kind", ["random", "zeros", "constant"])
@pytest.mark.parametrize("stride, h, w", [(1, 7, 5), (2, 7, 5), (2, 8, 8), (3, 1, 4)])
def test_pointwise_conv_equals_lax_1x1_conv(stride, h, w, kind):
    """Values and gradients (input and kernel) against XLA's conv, odd sizes and strides."""
    x, _ = _dw_inputs(kind, (2, h, w, 6), 1, seed=h * 7 + w + stride)
    kernel = jnp.asarray(np.random.default_rng(stride).normal(size=(1, 1, 6, 4)), jnp.float32)
    lax_conv = lambda a, b: lax.conv_general_dilated(a, b, (stride, stride), "VALID",
                                                     dimension_numbers=("NHWC", "HWIO", "NHWC"))
    want = lax_conv(x, kernel)
    got = pointwise_conv(x, kernel, stride)
    assert got.shape == want.shape == (2, -(-h // stride), -(-w // stride), 4)
    np.testing.assert_allclose(got, want, atol=1e-5, rtol=1e-5)
    ct = jnp.asarray(np.random.default_rng(9).normal(size=want.shape), jnp.float32)
    grads = lambda f: jax.vjp(f, x, kernel)[1](ct)
    for g, r, name in zip(grads(lambda a, b: pointwise_conv(a, b, stride)), grads(lax_conv),
                          ("input", "kernel")):
        np.testing.assert_allclose(g, r, atol=1e-5, rtol=1e-5, err_msg=f"gradient wrt {name}")


@pytest.mark.parametrize("stride", [1, 2])
def test_conv_module_1x1_is_nn_conv(stride):
    """Conv's 1x1 path (pointwise_conv): nn.Conv's parameters, values and gradients."""
    x = jax.random.normal(jax.random.key(0), (3, 9, 8, 5))
    ours, theirs = Conv(7, (1, 1), (stride, stride)), nn.Conv(7, (1, 1), (stride, stride),
                                                              padding="VALID")
    p_ours, p_theirs = ours.init(jax.random.key(3), x), theirs.init(jax.random.key(3), x)
    jax.tree.map(np.testing.assert_array_equal, p_ours, p_theirs)
    np.testing.assert_allclose(ours.apply(p_ours, x), theirs.apply(p_theirs, x), atol=1e-5)
    ct = jax.random.normal(jax.random.key(4), theirs.apply(p_theirs, x).shape)
    grad = lambda m: jax.grad(lambda p, t: jnp.sum(m.apply(p, t) * ct), argnums=(0, 1))
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-5),
                 grad(ours)(p_ours, x), grad(theirs)(p_theirs, x))


def test_pointwise_conv_rejects_other_kernels():
    with pytest.raises(ValueError, match="kernel"):
        pointwise_conv(jnp.zeros((1, 4, 4, 3)), jnp.zeros((3, 3, 3, 2)))
    with pytest.raises(ValueError, match="kernel"):
        pointwise_conv(jnp.zeros((1, 4, 4, 3)), jnp.zeros((1, 1, 4, 2)))


def test_layer_functions_are_one_program_keyed_by_the_kernel_setting(monkeypatch):
    """``layers.base.one_program``: an eager ``conv`` on a Winograd shape compiles one program
    (op by op it compiled dozens: ResNet-18's eager apply took 11.5 s), none on a second call, and
    ``AECLUST_KERNELS`` is part of the key: the GEMM-gradient ``conv2d`` (a custom VJP) for cpu,
    lax's conv for xla, in one process."""
    from jax import monitoring
    x = jax.random.normal(jax.random.key(0), (2, 8, 8, 64))
    k = jax.random.normal(jax.random.key(1), (3, 3, 64, 64))
    pads = ((1, 1), (1, 1))
    compiles = []
    # a program traced earlier in this worker, or loaded from the session's disk cache, would
    # not compile: count in a cold process state
    jax.clear_caches()
    cache_was = jax.config.jax_enable_compilation_cache
    jax.config.update("jax_enable_compilation_cache", False)

    def count(event, duration, **kw):
        if event == "/jax/core/compile/backend_compile_duration":
            compiles.append(duration)
    monitoring.register_event_duration_secs_listener(count)
    try:
        monkeypatch.setenv("AECLUST_KERNELS", "cpu")
        y = convolution.conv(x, k, 1, pads)
        first = len(compiles)
        convolution.conv(x, k, 1, pads).block_until_ready()
        assert first == 1 and len(compiles) == first, compiles
        for f in (lambda: conv2d(x, k, 1, pads), lambda: winograd_conv3x3(x, k, pads, 4)):
            del compiles[:]
            np.testing.assert_array_equal(f(), y)          # the same program's numbers
            assert len(compiles) == 1, compiles
    finally:
        monitoring.unregister_event_duration_listener(count)
        jax.config.update("jax_enable_compilation_cache", cache_was)
    np.testing.assert_allclose(y, lax.conv_general_dilated(x, k, (1, 1), pads, dimension_numbers=(
        "NHWC", "HWIO", "NHWC")), rtol=0, atol=1e-4 * float(jnp.abs(y).max()))
    trace = lambda: str(jax.make_jaxpr(lambda a, b: convolution.conv(a, b, 1, pads))(x, k))  # noqa: E731
    assert "custom_vjp_call" in trace()
    monkeypatch.setenv("AECLUST_KERNELS", "xla")
    traced = trace()
    assert "custom_vjp_call" not in traced and "conv_general_dilated" in traced
