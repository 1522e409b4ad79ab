"""Caffe's own gtest suites (caffe_build/gtest-suites.txt) pass against the patched library, in
CPU mode: ``make setup`` builds them beside the library it built (cached, keyed by the list) and
records where in the environment; this runs them. Skipped where they were not built (an
environment set up before the list existed: run ``make setup``), except under CI."""
from __future__ import annotations

import os
import re
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SUITES_FILE = ROOT / "caffe_build" / "gtest-suites.txt"
RECORD = Path(sys.prefix) / ".caffe_gtest"  # written by caffe_build/setup.sh


def listed_suites() -> list[str]:
    """The suites of gtest-suites.txt, in order (comments and blank lines dropped)."""
    return [word for line in SUITES_FILE.read_text().splitlines() for word in line.split("#", 1)[0].split()]


def cpu_filter(gtest_folder: Path) -> str:
    """A --gtest_filter leaving out the GPU tests: those named GPU and, in a CUDA build, the typed
    cases instantiated on ``caffe::GPUDevice``: TestDtypesAndDevices is (CPU float, CPU double,
    GPU float, GPU double) there, so a case's ``/2`` and ``/3``, named by index only; and
    CommonTest.TestBrewMode, which leaves Caffe in GPU mode, where the next test's host memory
    comes from CUDA."""
    negative = ["*GPU*"]
    if gtest_folder.parent.name.startswith("cuda"):
        negative.append("CommonTest.TestBrewMode")
        tests = gtest_folder.parent / "src" / "src" / "caffe" / "test"
        for suite in listed_suites():
            for source in tests.glob(f"test_{suite}.c*"):
                for case in re.findall(r"TYPED_TEST_CASE\((\w+),\s*TestDtypesAndDevices\)", source.read_text()):
                    negative += [f"{case}/2.*", f"{case}/3.*"]
    return "-" + ":".join(negative)


@pytest.fixture(scope="module")
def gtest_folder() -> Path:
    def missing(message: str):
        if os.environ.get("CI"):
            pytest.fail(f"{message}; under CI `make setup` must have built them", pytrace=False)
        pytest.skip(message)
    if not RECORD.is_file():
        missing(f"Caffe's gtest suites are not built for this environment ({RECORD} missing): run make setup")
    folder = Path(RECORD.read_text().strip())
    built = (folder / "suites").read_text().split() if (folder / "suites").is_file() else None
    if built != listed_suites():
        missing(f"the gtest binary in {folder} was built for {built}, not for gtest-suites.txt: run make setup")
    return folder


def test_suite_list_names_existing_test_files(gtest_folder):
    src = Path((gtest_folder.parent / "src").resolve())
    for suite in listed_suites():
        assert any((src / "src" / "caffe" / "test" / f"test_{suite}{ext}").is_file() for ext in (".cpp", ".cu")), suite


def test_caffe_gtest_suites_pass_in_cpu_mode(gtest_folder):
    binary = gtest_folder / "test.testbin"
    # Caffe's tests find their data relative to the source tree; GPU tests need a GPU
    env = {**os.environ, "GLOG_minloglevel": "2", "CAFFE_CONV_BATCH": "1", "OPENBLAS_NUM_THREADS": "1"}
    proc = subprocess.run([str(binary), f"--gtest_filter={cpu_filter(gtest_folder)}"], cwd=gtest_folder.parent / "src",
                          capture_output=True, text=True, timeout=1800, env=env)
    out = proc.stdout
    failed = re.findall(r"^\[  FAILED  \] (\S+)", out, re.M)
    assert proc.returncode == 0 and not failed, f"failed: {sorted(set(failed))}\n{out[-3000:]}\n{proc.stderr[-2000:]}"
    ran = re.search(r"^\[==========\] (\d+) tests? from (\d+) test (?:suites?|cases?) ran", out, re.M)
    passed = re.search(r"^\[  PASSED  \] (\d+) tests?", out, re.M)
    assert ran and passed, out[-3000:]
    assert int(passed.group(1)) == int(ran.group(1)) > 0
