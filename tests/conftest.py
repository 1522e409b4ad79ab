"""Shared fixtures. Tests run on the CPU with tiny nets; reference data is read from ../shared.

The reference tests (the ``reference`` fixture) are skipped where ../shared is missing, except
under CI (``CI`` set in the environment), where a missing reference folder fails them.
"""
import os
from pathlib import Path

import pytest

os.environ.setdefault("GLOG_minloglevel", "2")

ROOT = Path(__file__).resolve().parent.parent
SHARED = Path(os.environ.get("FRU_SHARED", ROOT.parent / "shared"))


@pytest.fixture(scope="session")
def root() -> Path:
    return ROOT


@pytest.fixture(scope="session")
def reference() -> Path:
    """../shared/reference (published files, read only, never copied into the repo)."""
    ref = SHARED / "reference"
    if not ref.is_dir():
        message = f"reference data not found at {ref} (set FRU_SHARED to the folder that holds reference/)"
        if os.environ.get("CI"):
            pytest.fail(f"{message}; under CI the reference tests must run, not skip", pytrace=False)
        pytest.skip(message)
    return ref


@pytest.fixture(autouse=True)
def _cpu_mode():
    import caffe
    caffe.set_mode_cpu()
    yield
