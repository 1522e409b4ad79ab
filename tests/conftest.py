"""Shared fixtures. Tests run on the CPU with tiny nets; reference data is read from ../shared.

The reference tests (the ``reference`` fixture) are skipped where ../shared is missing, except
under CI (``CI`` set in the environment), where a missing reference folder fails them.
"""
import http.server
import os
import threading
from pathlib import Path

import pytest

from local_server import Handler

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


@pytest.fixture(autouse=True)
def _no_downloads(monkeypatch):
    """Tests never reach the internet, whatever the caller's environment: downloads are off
    (``downloads_on`` turns them on, towards the local ``server``)."""
    for name in ("FRU_WEIGHTS_MIRROR", "FRU_GDRIVE_URL", "FRU_WEIGHTS_MANIFEST", "FRU_DOWNLOAD_DIR"):
        monkeypatch.delenv(name, raising=False)
    monkeypatch.setenv("FRU_OFFLINE", "1")


@pytest.fixture
def download_dir(monkeypatch, tmp_path) -> Path:
    """A fresh ``$FRU_DOWNLOAD_DIR``, so that the packaged manifest's files never land in the repository."""
    path = tmp_path / "downloads"
    path.mkdir()
    monkeypatch.setenv("FRU_DOWNLOAD_DIR", str(path))
    return path


@pytest.fixture
def downloads_on(monkeypatch):
    """Downloads allowed (towards the local ``server`` only: nothing else is configured)."""
    monkeypatch.delenv("FRU_OFFLINE", raising=False)


@pytest.fixture(scope="module")
def server(tmp_path_factory):
    """A mirror and a Google Drive on 127.0.0.1 (tests/local_server.py)."""
    root = tmp_path_factory.mktemp("served")
    httpd = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    httpd.root, httpd.requests, httpd.cut, httpd.drive = str(root), [], set(), {}
    thread = threading.Thread(target=httpd.serve_forever, daemon=True)
    thread.start()
    httpd.base_url = f"http://127.0.0.1:{httpd.server_address[1]}"
    yield httpd
    httpd.shutdown()
    httpd.server_close()
