"""t-SNE with three backends: openTSNE (CPU), tsnecuda (CUDA GPU), and an exact t-SNE in jnp.

``tsne(x, backend="auto")`` picks the fastest available backend for the input (see
``pick_backend``). The jnp backend is scikit-learn's exact method (``TSNE(method="exact")``):
perplexity-calibrated Gaussian affinities by a vectorised bisection, symmetrised; Student-t
similarities in the embedding; gradient descent with early exaggeration, momentum and gains. It
holds N x N matrices, so it is for N up to ~10^4 (O(N^2) time and memory per iteration).

``kl_divergence(x, y, perplexity)`` scores any embedding y of x against the same exact P, so the
backends can be compared with one yardstick.
"""

from __future__ import annotations

import functools
import importlib.util

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["tsne", "kl_divergence", "joint_probabilities", "pick_backend", "available_backends",
           "BACKENDS"]

BACKENDS = ("auto", "opentsne", "tsnecuda", "jax")
# On an accelerator the exact jnp t-SNE is used up to this N (a documented guess: no GPU was
# available where this was written; O(N^2) work grows past the FFT methods beyond this).
JAX_ACCELERATOR_MAX_N = 5000
_EPS = np.finfo(np.float64).eps


def _sq_dists(x):
    sq = jnp.sum(x * x, axis=1)
    return jnp.maximum(sq[:, None] - 2.0 * x @ x.T + sq[None, :], 0.0)


@functools.partial(jax.jit, static_argnames=("n_steps",))
def joint_probabilities(x, perplexity: float = 30.0, n_steps: int = 100):
    """Symmetric t-SNE affinities P (N, N) of x (N, D) for the given perplexity (sklearn's exact).

    Per row, bisection on the Gaussian precision beta so that the conditional distribution has
    entropy log(perplexity); P = (P_cond + P_cond^T) / sum, floored at machine epsilon.
    """
    d = _sq_dists(x)
    n = x.shape[0]
    target = jnp.log(perplexity)
    off = ~jnp.eye(n, dtype=bool)

    def cond_p(beta):
        logits = jnp.where(off, -d * beta[:, None], -jnp.inf)
        p = jax.nn.softmax(logits, axis=1)
        ent = -jnp.sum(jnp.where(off & (p > 0), p * jnp.log(jnp.where(p > 0, p, 1.0)), 0.0), axis=1)
        return p, ent

    def step(_, s):
        beta, lo, hi = s
        _, ent = cond_p(beta)
        too_flat = ent > target  # entropy too high -> increase beta
        lo = jnp.where(too_flat, beta, lo)
        hi = jnp.where(too_flat, hi, beta)
        beta = jnp.where(too_flat, jnp.where(jnp.isinf(hi), beta * 2.0, (beta + hi) / 2.0),
                         jnp.where(jnp.isinf(lo), beta / 2.0, (beta + lo) / 2.0))
        return beta, lo, hi

    ones = jnp.ones((n,), x.dtype)
    beta, _, _ = jax.lax.fori_loop(0, n_steps, step, (ones, -jnp.inf * ones, jnp.inf * ones))
    p, _ = cond_p(beta)
    p = p + p.T
    p = p / jnp.maximum(jnp.sum(p), _EPS)
    return jnp.where(off, jnp.maximum(p, _EPS), 0.0)


def _student_q(y):
    """Student-t kernel (N, N) and Q = kernel / sum; distances from explicit differences (y is
    low-dimensional, and the matmul form loses precision far from the origin)."""
    d = jnp.sum(jnp.square(y[:, None, :] - y[None, :, :]), axis=-1)
    num = jnp.where(jnp.eye(y.shape[0], dtype=bool), 0.0, 1.0 / (1.0 + d))
    return num, num / jnp.sum(num)


@jax.jit
def _kl(p, y):
    _, q = _student_q(y)
    off = ~jnp.eye(y.shape[0], dtype=bool)
    q = jnp.maximum(q, _EPS)
    return jnp.sum(jnp.where(off, p * jnp.log(jnp.where(off, p, 1.0) / q), 0.0))


def kl_divergence(x, y, perplexity: float = 30.0) -> float:
    """KL(P || Q) of an embedding y (N, d) of x (N, D): exact P at ``perplexity``, Student-t Q."""
    x = jnp.asarray(x, jnp.float32)
    p = joint_probabilities(x, perplexity)
    return float(_kl(p, jnp.asarray(y, jnp.float32)))


def _pca_init(x, n_components: int):
    """PCA projection rescaled so column 0 has std 1e-4 (openTSNE's and sklearn's init)."""
    xc = x - x.mean(0)
    _, _, vt = np.linalg.svd(xc, full_matrices=False)
    y = xc @ vt[:n_components].T
    y = y * np.sign(y[np.argmax(np.abs(y), axis=0), np.arange(n_components)])  # fix signs
    return (y / np.std(y[:, 0]) * 1e-4).astype(np.float32)


@functools.partial(jax.jit, static_argnames=("n_exag", "n_iter"))
def _optimize(p, y0, n_exag: int, n_iter: int, exaggeration: float = 12.0):
    """openTSNE's gradient descent on the exact gradient: learning rate N / exaggeration, momentum
    0.8, gains (+0.2 when the gradient flips, else x0.8 + 0.01), per-point steps clipped to norm 5,
    embedding re-centred each step. y0 (N, d) -> y (N, d) after n_exag + n_iter steps."""
    n = y0.shape[0]

    def grad(y, pe):  # openTSNE's convention: the exact KL gradient without the factor 4
        num, q = _student_q(y)
        w = (pe - q) * num  # (N, N)
        return jnp.sum(w, axis=1)[:, None] * y - w @ y

    def step(s, i):
        y, upd, gains = s
        exag = jnp.where(i < n_exag, exaggeration, 1.0)
        g = grad(y, exag * p)
        flipped = jnp.sign(g) != jnp.sign(upd)
        gains = jnp.where(flipped, gains + 0.2, gains * 0.8 + 0.01)
        upd = 0.8 * upd - (n / exag) * gains * g
        norm = jnp.linalg.norm(upd, axis=1, keepdims=True)
        upd = jnp.where(norm > 5.0, upd / norm * 5.0, upd)
        y = y + upd
        return (y - jnp.mean(y, axis=0), upd, gains), None

    s0 = (y0, jnp.zeros_like(y0), jnp.ones_like(y0))
    (y, _, _), _ = jax.lax.scan(step, s0, jnp.arange(n_exag + n_iter))
    return y


def _tsne_jax(x, n_components, perplexity, n_iter, early_exaggeration_iter=250):
    x = np.asarray(x, np.float32)
    p = joint_probabilities(jnp.asarray(x), perplexity)
    y0 = jnp.asarray(_pca_init(x, n_components))
    return _optimize(p, y0, early_exaggeration_iter, n_iter)


OPENTSNE_BH_MAX_N = 10000   # Barnes-Hut below, FFT interpolation above (openTSNE's guidance)


def _tsne_opentsne(x, n_components, perplexity, seed, n_iter, n_jobs):
    """openTSNE, Barnes-Hut for N < 10000 (3000 x 30 latents, 2 threads: 8.1 s vs 17.9 s with its
    default FFT; the same embedding for any n_jobs, measured), FFT above."""
    import openTSNE

    method = "bh" if x.shape[0] < OPENTSNE_BH_MAX_N else "fft"
    emb = openTSNE.TSNE(n_components=n_components, perplexity=perplexity, random_state=seed,
                        n_iter=n_iter, n_jobs=n_jobs, negative_gradient_method=method,
                        verbose=False).fit(np.asarray(x, np.float64))
    return np.asarray(emb)


def _tsne_cuda(x, n_components, perplexity, seed, n_iter):
    from tsnecuda import TSNE

    if n_components != 2:
        raise ValueError("backend='tsnecuda' supports n_components=2 only")
    return TSNE(n_components=2, perplexity=perplexity, random_seed=seed,
                n_iter=n_iter + 250).fit_transform(np.asarray(x, np.float32))


def available_backends() -> tuple[str, ...]:
    """The concrete backends usable here ("jax" always; the others when their package and device are)."""
    out = []
    if importlib.util.find_spec("tsnecuda") is not None and jax.default_backend() == "gpu":
        out.append("tsnecuda")
    if importlib.util.find_spec("openTSNE") is not None:
        out.append("opentsne")
    out.append("jax")
    return tuple(out)


def pick_backend(n: int) -> str:
    """backend="auto": tsnecuda on a CUDA GPU; else the exact jnp t-SNE on an accelerator for
    n <= JAX_ACCELERATOR_MAX_N; else openTSNE (measured fastest on CPU, docs/cluster.md)."""
    avail = available_backends()
    if "tsnecuda" in avail:
        return "tsnecuda"
    if jax.default_backend() != "cpu" and n <= JAX_ACCELERATOR_MAX_N:
        return "jax"
    return "opentsne" if "opentsne" in avail else "jax"


def tsne(x, n_components: int = 2, *, perplexity: float = 30.0, seed: int = 0,
         backend: str = "auto", n_iter: int = 500, n_jobs: int = -1):
    """Embeds x (N, D) into (N, n_components) with t-SNE. Returns a numpy (N, n_components) array.

    backend: "auto" | "opentsne" | "tsnecuda" | "jax". n_iter counts iterations after the 250
    early-exaggeration ones (openTSNE's default schedule). ``seed`` fixes every random choice
    (the jnp backend is deterministic: PCA init). n_jobs: openTSNE threads (-1: all cores; the
    embedding does not depend on it).
    """
    if backend not in BACKENDS:
        raise ValueError(f"tsne: backend must be one of {BACKENDS}, got {backend!r}")
    x = np.asarray(x)
    if x.ndim != 2:
        raise ValueError(f"tsne: x must be 2-D (N, D), got shape {x.shape}")
    if not 0 < perplexity < x.shape[0]:
        raise ValueError(f"tsne: perplexity must be in (0, N={x.shape[0]}), got {perplexity}")
    if backend == "auto":
        backend = pick_backend(x.shape[0])
    elif backend not in available_backends():
        raise ValueError(f"tsne: backend {backend!r} is not available here "
                         f"(available: {available_backends()})")
    if backend == "opentsne":
        return _tsne_opentsne(x, n_components, perplexity, seed, n_iter, n_jobs)
    if backend == "tsnecuda":
        return _tsne_cuda(x, n_components, perplexity, seed, n_iter)
    return np.asarray(_tsne_jax(x, n_components, perplexity, n_iter))
