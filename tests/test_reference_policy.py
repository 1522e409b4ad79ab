"""Reference tests (the ``reference`` fixture, ../shared/reference) skip outside CI when the
folder is missing, and fail under CI (``CI`` set), where they must run."""
import os
import subprocess
import sys

import pytest

REFERENCE_TEST = "tests/defense/generate/test_generate.py::test_v1_prototxt_is_upgraded"


def _pytest(root, env):
    return subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", REFERENCE_TEST],
                          cwd=root, env=env, capture_output=True, text=True, timeout=300)


@pytest.mark.slow
def test_missing_reference_skips_outside_ci_and_fails_under_ci(root, tmp_path):
    env = {k: v for k, v in os.environ.items() if k != "CI"}
    env["FRU_SHARED"] = str(tmp_path / "no-shared")
    outside = _pytest(root, env)
    assert outside.returncode == 0 and "1 skipped" in outside.stdout, outside.stdout[-800:]
    under_ci = _pytest(root, {**env, "CI": "true"})
    assert under_ci.returncode == 1 and "under CI the reference tests must run" in under_ci.stdout, \
        under_ci.stdout[-800:]
