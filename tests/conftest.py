"""Shared fixtures. Every test session prepares datasets in its own temporary data dir."""

import os
import pathlib

import pytest


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
