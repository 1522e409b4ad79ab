"""The download tests download (from the local server of tests/local_server.py only)."""
import pytest


@pytest.fixture(autouse=True)
def _downloads_on(downloads_on):
    """Destinations follow each test's manifest."""
