"""Shared fixtures. Every test session prepares datasets in its own temporary data dir."""

import os
import pathlib
import shutil
import tempfile

import pytest

# One XLA compilation cache for the session: the xdist workers and every command-line run the
# tests start (they inherit the environment) load a program another test compiled instead of
# compiling it again (the CLI tests train the same models many times). The controller makes the
# folder before the workers start and removes it at the end. A cached executable is the
# compiled program itself, so no number changes.
if "AECLUST_TEST_XLA_CACHE" not in os.environ:
    os.environ["AECLUST_TEST_XLA_CACHE"] = tempfile.mkdtemp(prefix="aeclust_test_xla_")
    _OWN_CACHE = True
else:
    _OWN_CACHE = False
os.environ["JAX_COMPILATION_CACHE_DIR"] = os.environ["AECLUST_TEST_XLA_CACHE"]
os.environ.setdefault("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "0.2")
# XLA:CPU's LLVM code generation at -O0 for the session (and the command-line runs it starts):
# the tests are compile-bound (small batches, many shapes), and LLVM's optimisation passes were
# about half their time: the S1/S2 whole-model gradient tests 129 -> 71 s. The programs are the
# same HLO (XLA's own passes, the conv/GEMM libraries and our compiled kernels are untouched);
# only the fused elementwise loops run slower (a ResNet-18 train step ~2.5x). A flag already in
# XLA_FLAGS wins; speed is measured by benchmarks/, never here.
if "xla_backend_optimization_level" not in os.environ.get("XLA_FLAGS", ""):
    os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") +
                               " --xla_backend_optimization_level=0").strip()
# Float32 products in full float32 on every backend: the tests compare with float32/float64
# references at 1e-5, and a GPU's default (TF32 convolutions and matmuls) is ~1e-3 off (seen on
# an H200: the Conv gradient test failed by 5e-3 until this was set). No effect on a CPU.
os.environ.setdefault("JAX_DEFAULT_MATMUL_PRECISION", "highest")


def pytest_sessionfinish(session):
    if _OWN_CACHE and not hasattr(session.config, "workerinput"):
        shutil.rmtree(os.environ["AECLUST_TEST_XLA_CACHE"], ignore_errors=True)


@pytest.fixture(scope="session", autouse=True)
def isolated_data_dir(tmp_path_factory) -> pathlib.Path:
    """Prepared datasets go to a fresh folder per session, never the user's ~/aeclust_data."""
    path = tmp_path_factory.mktemp("aeclust_data")
    os.environ["AECLUST_DATA_DIR"] = str(path)
    return path


@pytest.fixture(scope="session")
def real_manual_dir() -> pathlib.Path:
    """The folder of real datasets ($AECLUST_MANUAL_DIR, set by .ci/run); skips when absent."""
    value = os.environ.get("AECLUST_MANUAL_DIR")
    if not value or not pathlib.Path(value).is_dir():
        pytest.skip("AECLUST_MANUAL_DIR with the real datasets is not set (CI sets it)")
    return pathlib.Path(value)
