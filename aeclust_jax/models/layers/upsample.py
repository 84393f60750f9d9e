"""upsample_conv: a 3x3 conv of a x2 nearest-upsampled map, computed on the small map.

Why (benchmarks/bench_train_step.py, 2-core CPU): in the S1 decoders most time went to 3x3 convs
on nearest-upsampled maps (28x28x16 -> 1 alone was a quarter of the step: Eigen's conv is poor with
one output channel, and the upsampled map and its gradient are 4x the data). A 3x3 conv of a x2
nearest-upsampled map is exactly four 3x3 convs of the small map ("phases", one per output pixel
parity) whose kernels are sums of the original taps, each reading only a 2x2 window of the small
map; ``upsample_conv`` runs them as one conv with 2x2 kernels and 4*Cout channels and a
depth-to-space shuffle. Same function, same parameters, 1/4 of the pixels and 4/9 of the
multiplies. S2's conv autoencoders use it for every decoder conv (``models/cae.py``)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np

from aeclust_jax.models.layers.base import _conv, cpu_kernels, one_program
from aeclust_jax.models.layers.convolution import conv2d


# first row of the (virtually) upsampled map read by output row 0, per padding
_FIRST_ROW = {"SAME": -1, "VALID": 0, "FULL": -2}
_PADS = {"SAME": ((1, 1), (1, 1)), "VALID": ((0, 0), (0, 0)), "FULL": ((2, 2), (2, 2))}


@one_program("padding")
def conv3x3(x: jax.Array, kernel: jax.Array, padding: str) -> jax.Array:
    """Plain 3x3 correlation, NHWC x HWIO. 'FULL' (pad 2) is flax's stride-1 'VALID'
    ConvTranspose with the same kernel: (N, H, W, Cin) -> (N, H+2, W+2, Cout)."""
    return _conv(x, kernel, _PADS[padding])


def _phase_taps(padding: str, shared: bool) -> tuple[np.ndarray, tuple, tuple[int, int], int]:
    """How a 3-tap filter over an x2 nearest-upsampled axis (small axis of length H) reads the
    small axis, per output parity p (output row 2a + p, whose taps read two consecutive small rows
    from a + start_p): M (2, K, 3) 0/1, M[p, d, t] = 1 when tap t reads window row d for parity p;
    offsets (2,): where parity p's rows sit in the output of one K-tap conv over the small axis
    zero-padded by pads (low, high); extra: outputs per parity are H + extra (SAME 0, VALID -1,
    FULL +1).

    ``shared``: both parities read one window from a + min(start) (K = 3 for SAME, whose two
    parities start one row apart; 2 otherwise) and the conv's output rows are theirs (offsets 0);
    else each parity reads its own 2-row window (K = 2) and SAME's parity 1 sits one row later."""
    lo = _FIRST_ROW[padding]
    starts = [(p + lo) // 2 for p in range(2)]
    first = min(starts)
    k = 2 + max(starts) - first if shared else 2
    origin = [first, first] if shared else starts
    m = np.zeros((2, k, 3), np.float32)
    for p in range(2):
        for t in range(3):
            m[p, (p + lo + t) // 2 - origin[p], t] = 1.0   # upsampled row 2a+p+lo+t = small row
    offsets = (origin[0] - first, origin[1] - first)
    extra = {"SAME": 0, "VALID": -1, "FULL": 1}[padding]
    return m, offsets, (-first, extra + max(offsets) + k - 1 + first), extra


@one_program("padding")
def upsample_conv(x: jax.Array, kernel: jax.Array, bias: jax.Array | None, padding: str) -> jax.Array:
    """conv3x3(nearest_upsample_x2(x)) without materialising the upsampled map.

    x (N, H, W, Cin); kernel (3, 3, Cin, Cout); bias (Cout,) or None; padding 'SAME' -> output
    (N, 2H, 2W, Cout), 'VALID' -> (N, 2H-2, 2W-2, Cout), 'FULL' -> (N, 2H+2, 2W+2, Cout).
    Exact up to float summation order.

    Each output parity (p, q) reads a 2x2 window of the small map, so the four are one conv of x
    with 2x2 "phase" kernels (4 * Cout channels; 4/9 of the 3x3 conv's multiplies per output),
    interleaved. SAME's two parities read windows one row (column) apart: the conv gives one extra
    row and column and each parity takes its own slice; with Cout < 4 one 3x3 window holding both
    parities is used instead (4 * Cout channels of output are too narrow for the slices to pay:
    S1's one-channel output layer was 3% of its step slower with them). On XLA:CPU the 2x2 convs'
    kernel gradients are ``conv2d``'s GEMM (XLA's own was a large-window conv, 6x slower for the
    whole CAEv1 step); CAEv1's train step went 1213 -> 1700 img/s (the literal up-then-conv) and
    S1's kept its speed.
    """
    padding = padding.upper()
    if padding not in _FIRST_ROW or kernel.shape[:2] != (3, 3):
        raise ValueError(f"upsample_conv takes a 3x3 kernel and padding SAME, VALID or FULL, got "
                         f"{kernel.shape[:2]} and {padding!r}")
    cin, cout = kernel.shape[2:]
    m, offsets, pads, extra = _phase_taps(padding, shared=cout < 4)
    m = jnp.asarray(m, kernel.dtype)
    kk = m.shape[1]
    # phase kernels: k[d_r, d_c, ci, p, q, co] =
    #   sum_{t_r, t_c} M[p, d_r, t_r] M[q, d_c, t_c] w[t_r, t_c, ci, co]
    k = jnp.einsum("prt,qsu,tuio->rsipqo", m, m, kernel).reshape(kk, kk, cin, 4 * cout)
    if kk == 2 and cpu_kernels():
        y = conv2d(x, k, 1, (pads, pads))
    else:
        y = _conv(x, k, (pads, pads))
    n, hc, wc, _ = y.shape
    y = y.reshape(n, hc, wc, 2, 2, cout)
    h, w = x.shape[1] + extra, x.shape[2] + extra
    if any(offsets):   # SAME: parity 1's rows (columns) start one later in the conv's output
        y = jnp.stack([jnp.stack([y[:, a:a + h, b:b + w, p, q] for q, b in enumerate(offsets)], 3)
                       for p, a in enumerate(offsets)], 2)
    else:
        y = y.transpose(0, 1, 3, 2, 4, 5)
    y = y.reshape(n, 2 * h, 2 * w, cout)                 # (N, H', 2, W', 2, C) -> (N, 2H', 2W', C)
    return y if bias is None else y + bias
