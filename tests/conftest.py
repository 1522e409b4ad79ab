"""Shared fixtures. Tests run on the CPU with tiny nets; reference data is read from ../shared."""
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
        pytest.skip(f"reference data not found at {ref}")
    return ref


@pytest.fixture(autouse=True)
def _cpu_mode():
    import caffe
    caffe.set_mode_cpu()
    yield
