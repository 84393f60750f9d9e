"""Clustering and image metrics in jnp: scikit-learn's answers, O(N) memory, N up to 10^7.

All label metrics reduce two labelings (N,) to the "pair statistics" of their contingency table:
for every non-empty cell (class i, cluster j) its count n_ij, its row total a_i and its column
total b_j. Every metric is a short formula over those arrays (empty cells are zero padding).

Two ways to build them, chosen automatically:

* concrete arrays (the normal call): the label ranges (min, max) are read back to the host once,
  then one jitted call builds a dense table over the value ranges by a single scatter-add
  (segment_sum; absent values are empty rows/columns, which change no metric) and evaluates the
  formula. No sort, no relabel pass (labels spread far wider than N are relabelled on the host
  first). Not traceable (the ranges size the table); fast. Up to 2^24 table cells.
* traced arrays (inside ``jax.jit`` / ``vmap``): a sort-based path with static shapes (lexsort of
  the label pairs, run lengths by segment_sum), O(N log N) time, O(N) memory; any label values.

So ``nmi``, ``ari``, ``purity``, ``pairwise_f``, ``bcubed_f`` work both eagerly and under jit.
``acc`` needs the Hungarian assignment (scipy, host) and is therefore eager only. ``psnr`` and
``accuracy`` are plain jnp and traceable.

Precision: sums run in the default float dtype (float32, or float64 with ``jax_enable_x64``).
In float32 the label metrics agree with scikit-learn to about 1e-5 absolute.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["psnr", "nmi", "ari", "acc", "purity", "pairwise_f", "pairwise_prf", "bcubed_f",
           "bcubed_prf", "accuracy", "contingency_matrix", "PRF", "AVERAGES"]

AVERAGES = ("arithmetic", "geometric", "min", "max")
# Dense Ka x Kb tables up to this many cells; larger label sets use the sort path.
_MAX_DENSE_CELLS = 1 << 24


class PRF(NamedTuple):
    """Precision, recall and their harmonic mean F (scalars)."""
    precision: jax.Array
    recall: jax.Array
    f: jax.Array


class _Stats(NamedTuple):
    """Per non-empty cell: count n, row total a, column total b, column id; plus N, Ka, Kb.

    Arrays have equal length (cells or N); padding entries have n = 0 (and a = b = 1).
    """
    n: jax.Array
    a: jax.Array
    b: jax.Array
    col: jax.Array
    total: jax.Array
    n_rows: jax.Array
    n_cols: jax.Array


def _float():
    return jnp.float64 if jax.config.jax_enable_x64 else jnp.float32


def _is_traced(*xs) -> bool:
    return any(isinstance(x, jax.core.Tracer) for x in xs)


def _host_labels(v, name: str):
    """Labels (N,) as an integer array: integer jax/numpy arrays as they are (traceable); any other
    labels scikit-learn accepts (floats, strings, bools, lists of those) as a numpy array."""
    if isinstance(v, jax.Array):
        if v.ndim != 1:
            raise ValueError(f"{name} must be 1-D, got shape {v.shape}")
        if jnp.issubdtype(v.dtype, jnp.integer) or not _is_traced(v):
            return v
        raise ValueError(f"{name}: non-integer labels ({v.dtype}) are relabelled on the host and "
                         "cannot be traced; pass integer labels under jit/vmap")
    v = np.asarray(v)
    if v.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {v.shape}")
    if v.dtype.kind in "fc" and not np.all(np.isfinite(v)):
        raise ValueError(f"{name} contains NaN or infinity")
    return v


def _check_pair(labels_true, labels_pred):
    """Two labelings (N,) -> two integer jax arrays (N,). Integer arrays pass unchanged (the
    traceable path); other labels (floats, strings, bools) are mapped to 0..K-1 on the host by
    ``np.unique(return_inverse=True)``, which keeps every metric's value."""
    t, p = _host_labels(labels_true, "labels_true"), _host_labels(labels_pred, "labels_pred")
    if t.shape != p.shape:
        raise ValueError(f"labels_true and labels_pred differ in length: {t.shape[0]} != {p.shape[0]}")
    out = []
    for v in (t, p):
        if not jnp.issubdtype(v.dtype, jnp.integer):
            v = np.unique(np.asarray(v), return_inverse=True)[1].reshape(-1).astype(np.int32)
        out.append(jnp.asarray(v))
    return tuple(out)


# ---------------------------------------------------------------------------------------------
# Relabelling and the dense (eager) path


def _bucket(n: int, floor: int = 256) -> int:
    """Static sizes are rounded up to powers of two so that varying N or K reuses compiled code."""
    return max(floor, 1 << (int(n) - 1).bit_length())


def _padded(x):
    """Pads (edge values) short label arrays to a bucketed length; long ones (>= 2^16) stay."""
    n = x.shape[0]
    size = _bucket(n) if n < (1 << 16) else n
    return jnp.pad(x, (0, size - n), mode="edge") if size > n else x


@jax.jit
def _ranges(t, p):
    return jnp.min(t), jnp.max(t), jnp.min(p), jnp.max(p)


@jax.jit(static_argnums=(5, 6))
def _range_table(t, p, n, lo_t, lo_p, rt, rp):
    """Table (rt, rp) int32 over the label ranges [lo, lo + r), counting only the first n items.

    Rows/columns of absent label values stay zero (they change no metric)."""
    valid = (jnp.arange(t.shape[0]) < n).astype(jnp.int32)
    cell = (t - lo_t) * rp + (p - lo_p)
    return jax.ops.segment_sum(valid, cell, num_segments=rt * rp).reshape(rt, rp)


def _stats_from_table(table) -> _Stats:
    """Pair statistics of a contingency table (rows/columns may be empty)."""
    f = _float()
    n = table.astype(f)
    rows, cols = n.sum(1, keepdims=True), n.sum(0, keepdims=True)
    a = jnp.broadcast_to(rows, n.shape)
    b = jnp.broadcast_to(cols, n.shape)
    col = jnp.broadcast_to(jnp.arange(n.shape[1])[None, :], n.shape)
    return _Stats(n.ravel(), jnp.maximum(a, 1).ravel(), jnp.maximum(b, 1).ravel(), col.ravel(),
                  n.sum(), jnp.sum(rows > 0), jnp.sum(cols > 0))


def _range_plan(t, p):
    """Eager: padded labels and the static table plan (tp, pp, lo_t, lo_p, rt, rp).

    When the label values are spread out (the range table would be far larger than N, or than
    2^24 cells) they are first relabelled to 0..K-1 on the host (np.unique, a sort)."""
    if all(d.platform == "cpu" for d in t.devices() | p.devices()):
        # numpy's integer min/max is ~5x faster than XLA:CPU's; the arrays are shared, not copied
        tn, pn = np.asarray(t), np.asarray(p)
        lo_t, hi_t, lo_p, hi_p = int(tn.min()), int(tn.max()), int(pn.min()), int(pn.max())
    else:
        lo_t, hi_t, lo_p, hi_p = (int(v) for v in _ranges(t, p))
    rt, rp = _bucket(hi_t - lo_t + 1, 16), _bucket(hi_p - lo_p + 1, 16)
    if rt * rp > min(_MAX_DENSE_CELLS, max(4 * t.shape[0], 1 << 12)):
        t = np.unique(np.asarray(t), return_inverse=True)[1].astype(np.int32)
        p = np.unique(np.asarray(p), return_inverse=True)[1].astype(np.int32)
        lo_t = lo_p = 0
        rt, rp = _bucket(int(t.max()) + 1, 16), _bucket(int(p.max()) + 1, 16)
        if rt * rp > _MAX_DENSE_CELLS:
            raise ValueError(f"contingency table {rt} x {rp} exceeds {_MAX_DENSE_CELLS} cells; "
                             "use the metrics under jax.jit (sort-based path) for so many labels")
    return _padded(jnp.asarray(t)), _padded(jnp.asarray(p)), lo_t, lo_p, rt, rp


def contingency_matrix(labels_true, labels_pred) -> np.ndarray:
    """Contingency table (Ka, Kb) int64 numpy of two labelings (N,); rows follow the sorted unique
    values of ``labels_true``, columns those of ``labels_pred``. Eager (K is data dependent)."""
    t, p = _check_pair(labels_true, labels_pred)
    if t.shape[0] == 0:
        return np.zeros((0, 0), np.int64)
    plan = _range_plan(t, p)
    tp, pp, lo_t, lo_p, rt, rp = plan
    table = np.asarray(_range_table(tp, pp, t.shape[0], lo_t, lo_p, rt, rp)).astype(np.int64)
    return table[table.sum(1) > 0][:, table.sum(0) > 0]


# ---------------------------------------------------------------------------------------------
# The sort path (static shapes, traceable)


def _runs(sorted_keys):
    """Sorted key arrays (each (N,)) -> run id of every position (N,), 0-based."""
    change = jnp.zeros(sorted_keys[0].shape, bool).at[0].set(True)
    for k in sorted_keys:
        change = change.at[1:].set(change[1:] | (k[1:] != k[:-1]))
    return jnp.cumsum(change) - 1


def _stats_sorted(t, p) -> _Stats:
    """Pair statistics from any int labels (N,) via sorts; N-length padded arrays."""
    f = _float()
    N = t.shape[0]
    ones = jnp.ones((N,), f)
    # Row and column totals per item.
    ts, t_perm = jax.lax.sort_key_val(t, jnp.arange(N))
    t_run = _runs([ts])
    row_n = jax.ops.segment_sum(ones, t_run, num_segments=N)
    a_item = jnp.zeros((N,), f).at[t_perm].set(row_n[t_run])
    ps, p_perm = jax.lax.sort_key_val(p, jnp.arange(N))
    p_run = _runs([ps])
    col_n = jax.ops.segment_sum(ones, p_run, num_segments=N)
    b_item = jnp.zeros((N,), f).at[p_perm].set(col_n[p_run])
    p_rank = jnp.zeros((N,), jnp.int32).at[p_perm].set(p_run.astype(jnp.int32))
    # Cells: lexsort on (t, p), carrying the per-item totals along.
    t2, p2, a2, b2, c2 = jax.lax.sort((t, p, a_item, b_item, p_rank), num_keys=2)
    cell = _runs([t2, p2])
    n = jax.ops.segment_sum(ones, cell, num_segments=N)
    a = jax.ops.segment_max(a2, cell, num_segments=N)
    b = jax.ops.segment_max(b2, cell, num_segments=N)
    col = jax.ops.segment_max(c2, cell, num_segments=N)
    used = n > 0
    return _Stats(n, jnp.where(used, a, 1), jnp.where(used, b, 1), jnp.where(used, col, 0),
                  jnp.asarray(N, f), t_run[-1] + 1, p_run[-1] + 1)


def _metric(formula, empty, labels_true, labels_pred, *args):
    """Evaluates formula(stats, *args) on the pair statistics, eagerly (dense) or traced (sorted).

    Two empty labelings are the same (empty) partition: ``empty`` is returned (1.0 everywhere,
    sklearn's answer for NMI and ARI)."""
    t, p = _check_pair(labels_true, labels_pred)
    if t.shape[0] == 0:
        return jax.tree.map(lambda v: jnp.asarray(v, _float()), empty)
    if _is_traced(t, p):
        return formula(_stats_sorted(t, p), *args)
    plan = _range_plan(t, p)
    tp, pp, lo_t, lo_p, rt, rp = plan
    return _on_range(formula, args, tp, pp, t.shape[0], lo_t, lo_p, rt, rp)


@jax.jit(static_argnums=(0, 1, 7, 8))
def _on_range(formula, args, t, p, n, lo_t, lo_p, rt, rp):
    return formula(_stats_from_table(_range_table.__wrapped__(t, p, n, lo_t, lo_p, rt, rp)), *args)




# ---------------------------------------------------------------------------------------------
# Formulas over the pair statistics (all traceable)


def _xlogx_over(c, total):
    """sum over entries of -(c/total) log(c/total), zero entries contributing 0."""
    pr = c / total
    return -jnp.sum(jnp.where(c > 0, pr * jnp.log(jnp.where(c > 0, pr, 1)), 0))


def _entropies(s: _Stats):
    """H(true), H(pred) from the cells: sum over cells of n_ij/N * -log(a_i/N) = H(true)."""
    N = s.total
    ht = -jnp.sum(jnp.where(s.n > 0, s.n / N * jnp.log(s.a / N), 0))
    hp = -jnp.sum(jnp.where(s.n > 0, s.n / N * jnp.log(s.b / N), 0))
    return ht, hp


_SKLEARN_EPS = float(np.finfo(np.float64).eps)   # scikit-learn's cut-off of a cell's MI term


def _mutual_info(s: _Stats):
    N = s.total
    nz = s.n > 0
    n = jnp.where(nz, s.n, 1)
    # log(n N / (a b)) as log1p((n N - a b) / (a b)) with n N - a b = n (N - b) - b (a - n):
    # integer factors, small exactly where the four logs of the plain formula nearly cancel
    # (one dominant class and cluster: 2e-5 off scikit-learn's NMI of 1e-3 in float32)
    excess = n * (N - s.b) - s.b * (s.a - n)
    term = s.n / N * jnp.log1p(excess / (s.a * s.b))
    term = jnp.where(nz & (jnp.abs(term) >= _SKLEARN_EPS), term, 0)
    mi = jnp.maximum(jnp.sum(term), 0)
    return jnp.where((s.n_rows == 1) | (s.n_cols == 1), 0.0, mi)


def _nmi_from_stats(s: _Stats, average: str):
    mi = _mutual_info(s)
    ht, hp = _entropies(s)
    if average == "arithmetic":
        norm = (ht + hp) / 2
    elif average == "geometric":
        norm = jnp.sqrt(ht * hp)
    elif average == "min":
        norm = jnp.minimum(ht, hp)
    else:
        norm = jnp.maximum(ht, hp)
    out = jnp.where(mi == 0, 0.0, mi / jnp.where(norm > 0, norm, 1))
    return jnp.where((s.n_rows == 1) & (s.n_cols == 1), 1.0, out)


def _comb2(x):
    return x * (x - 1) / 2


def _pair_counts(s: _Stats):
    """Unordered pair counts: same cell (tp), same class, same cluster, all pairs."""
    n = s.n
    used = n > 0
    tp = jnp.sum(_comb2(n))
    # Each class total a_i appears once per non-empty cell of that row: weight by n/a to count
    # once. n/a * C(a, 2) = n (a - 1) / 2, written so: integers, exact in float32 (the quotient
    # n / a was not, and ARI's tp*tn - fn*fp cancellation magnified its rounding to 2e-5).
    same_true = jnp.sum(jnp.where(used, n * (s.a - 1) / 2, 0))
    same_pred = jnp.sum(jnp.where(used, n * (s.b - 1) / 2, 0))
    return tp, same_true, same_pred, _comb2(s.total)


def _ari_from_stats(s: _Stats):
    tp, same_true, same_pred, total = _pair_counts(s)
    fn = same_true - tp
    fp = same_pred - tp
    tn = total - tp - fn - fp
    num = 2.0 * (tp * tn - fn * fp)
    den = (tp + fn) * (fn + tn) + (tp + fp) * (fp + tn)
    return jnp.where((fn == 0) & (fp == 0), 1.0, num / jnp.where(den == 0, 1, den))


def _prf(p, r):
    f = jnp.where(p + r > 0, 2 * p * r / jnp.where(p + r > 0, p + r, 1), 0.0)
    return PRF(p, r, f)


def _pairwise_from_stats(s: _Stats) -> PRF:
    tp, same_true, same_pred, _ = _pair_counts(s)
    p = jnp.where(same_pred > 0, tp / jnp.where(same_pred > 0, same_pred, 1), 1.0)
    r = jnp.where(same_true > 0, tp / jnp.where(same_true > 0, same_true, 1), 1.0)
    return _prf(p, r)


def _bcubed_from_stats(s: _Stats) -> PRF:
    p = jnp.sum(s.n * s.n / s.b) / s.total
    r = jnp.sum(s.n * s.n / s.a) / s.total
    return _prf(p, r)


def _purity_from_stats(s: _Stats):
    best = jax.ops.segment_max(s.n, s.col, num_segments=s.n.shape[0])
    return jnp.sum(jnp.maximum(best, 0)) / s.total


# ---------------------------------------------------------------------------------------------
# Public metrics


def nmi(labels_true, labels_pred, average: str = "arithmetic") -> jax.Array:
    """Normalised mutual information of two labelings (N,) = sklearn's normalized_mutual_info_score.

    ``average`` in ("arithmetic", "geometric", "min", "max") normalises MI by that mean of the two
    entropies. Two single-cluster labelings give 1.0; MI = 0 gives 0.0. Returns a scalar.
    """
    if average not in AVERAGES:
        raise ValueError(f"average must be one of {AVERAGES}, got {average!r}")
    return _metric(_nmi_from_stats, 1.0, labels_true, labels_pred, average)


def ari(labels_true, labels_pred) -> jax.Array:
    """Adjusted Rand index of two labelings (N,) = sklearn's adjusted_rand_score. Scalar."""
    return _metric(_ari_from_stats, 1.0, labels_true, labels_pred)


def pairwise_prf(labels_true, labels_pred) -> PRF:
    """Pair-counting precision, recall, F over all unordered item pairs (from the contingency).

    precision = pairs together in both / pairs together in the prediction; recall = ... / pairs
    together in the truth. A side with no pairs at all (all singletons) counts as 1.0.
    """
    return _metric(_pairwise_from_stats, PRF(1.0, 1.0, 1.0), labels_true, labels_pred)


def pairwise_f(labels_true, labels_pred) -> jax.Array:
    """Pair-counting F measure (harmonic mean of pairwise precision and recall). Scalar."""
    return pairwise_prf(labels_true, labels_pred).f


def bcubed_prf(labels_true, labels_pred) -> PRF:
    """BCubed precision, recall, F (Amigo et al. 2009): item-wise, averaged over the N items.

    precision(e) = |cluster(e) & class(e)| / |cluster(e)|, recall(e) = ... / |class(e)|.
    """
    return _metric(_bcubed_from_stats, PRF(1.0, 1.0, 1.0), labels_true, labels_pred)


def bcubed_f(labels_true, labels_pred) -> jax.Array:
    """BCubed F (harmonic mean of BCubed precision and recall). Scalar."""
    return bcubed_prf(labels_true, labels_pred).f


def purity(labels_true, labels_pred) -> jax.Array:
    """Purity: fraction of items in the majority class of their predicted cluster. Scalar."""
    return _metric(_purity_from_stats, 1.0, labels_true, labels_pred)


def acc(labels_true, labels_pred) -> float:
    """Clustering accuracy under the best one-to-one cluster -> class map (Hungarian).

    Labels (N,) of any values (ints, floats, strings); the numbers of clusters and classes may
    differ (clusters left unmatched count as errors). Eager only: scipy's linear_sum_assignment
    runs on the host on the Ka x Kb contingency table. Returns a Python float; two empty
    labelings give 1.0 (like nmi / ari).
    """
    from scipy.optimize import linear_sum_assignment

    if _is_traced(labels_true, labels_pred):
        raise TypeError("acc runs the Hungarian assignment on the host and cannot be traced "
                        "(call it outside jit/vmap)")
    table = contingency_matrix(labels_true, labels_pred)
    if table.size == 0:
        return 1.0
    rows, cols = linear_sum_assignment(table, maximize=True)
    return float(table[rows, cols].sum() / table.sum())


def accuracy(labels_true, labels_pred) -> jax.Array:
    """Classification accuracy: mean of labels_true == labels_pred over (N,). Scalar.

    Any label values (compared as given, on the host unless both are integer arrays); empty
    labels raise ValueError, as sklearn's accuracy_score."""
    t, p = _host_labels(labels_true, "labels_true"), _host_labels(labels_pred, "labels_pred")
    if t.shape != p.shape:
        raise ValueError(f"labels_true and labels_pred differ in length: {t.shape[0]} != {p.shape[0]}")
    if t.shape[0] == 0:
        raise ValueError("accuracy: labels are empty")
    if jnp.issubdtype(t.dtype, jnp.integer) and jnp.issubdtype(p.dtype, jnp.integer):
        return jnp.mean((jnp.asarray(t) == jnp.asarray(p)).astype(_float()))
    return jnp.asarray(np.mean(np.asarray(t) == np.asarray(p)), _float())


def psnr(x, y, max_val: float = 1.0, axis=None) -> jax.Array:
    """Peak signal-to-noise ratio per image = skimage's peak_signal_noise_ratio(x_i, y_i, data_range).

    x, y: (N, H, W, C) (any shape with a leading batch axis); returns (N,) in dB. ``axis`` picks
    the reduced axes (default: all but the first; ``axis=()``-style tuples allowed, and
    ``axis="all"`` gives one PSNR over the whole array). Identical images give ``inf``; take
    ``.mean()`` for the mean PSNR (inf if any image is reproduced exactly).
    """
    x = jnp.asarray(x)
    y = jnp.asarray(y)
    if x.shape != y.shape:
        raise ValueError(f"psnr: x and y differ in shape: {x.shape} != {y.shape}")
    if axis is None:
        axis = tuple(range(1, x.ndim))
    elif axis == "all":
        axis = None
    f = _float()
    mse = jnp.mean(jnp.square(x.astype(f) - y.astype(f)), axis=axis)
    return 10.0 * jnp.log10(jnp.asarray(max_val, f) ** 2 / mse)
