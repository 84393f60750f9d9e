"""Tiny raw dataset files for end-to-end CLI tests that need no real data (not a test module)."""

import gzip
import pathlib

import numpy as np


def write_idx_gz(path: pathlib.Path, array: np.ndarray) -> None:
    """A gzipped IDX file of unsigned bytes (MNIST's format)."""
    header = bytes([0, 0, 8, array.ndim]) + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(np.uint8).tobytes())


def write_tiny_mnist(folder: pathlib.Path, n_train: int = 64, n_test: int = 40) -> pathlib.Path:
    """MNIST's four IDX files in ``folder``: random 28x28 images, labels 0..9 in turn (not the
    canonical files: load them with ``verify_checksums=False``)."""
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)
    for prefix, n in (("train", n_train), ("t10k", n_test)):
        write_idx_gz(folder / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        write_idx_gz(folder / f"{prefix}-labels-idx1-ubyte.gz", np.arange(n) % 10)
    return folder


# S1 settings of a run that only checks the plumbing: 1 epoch, 40 test images clustered, the
# exact jnp t-SNE (faster than openTSNE's threads on a loaded 2-core machine at this size).
TINY_S1_YAML = ("epochs: 1\nbatch_size: 32\nn_cluster: 40\nkmeans_n_init: 1\ntsne_iter: 50\n"
                "tsne_backend: jax\ncheckpoint_every: 1\n")
