"""``make gpu-check`` (caffe_build/gpu_check.py) on a stubbed GPU machine: a broken check never exits 0.

The GPU, the GPU tests and the benchmark sections are replaced by stubs, so the exit status rule
runs here on the CPU: a GPU test that failed or was skipped (other than for the machine's number
of GPUs), no GPU test at all, or a benchmark that raised, is exit code 1 with one line per reason.
"""
from __future__ import annotations

import importlib.util
import json

import pytest


@pytest.fixture
def gpu_check(root, monkeypatch):
    spec = importlib.util.spec_from_file_location("gpu_check", root / "caffe_build" / "gpu_check.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    monkeypatch.setattr(module, "cuda_device_count", lambda: (1, "ok"))
    monkeypatch.setattr(module, "use_gpu", lambda gpu: None)
    monkeypatch.setattr(module, "gpu_name", lambda: "stub GPU")
    return module


def _tests(skipped=(), failed=(), ran=3):
    return {"exit_code": 0, "seconds": 0.1, "failed": list(failed), "tests": ran, "failures": len(failed), "errors": 0,
            "skipped": len(skipped), "passed": ran - len(failed) - len(skipped), "skipped_tests": list(skipped)}


def _run(gpu_check, monkeypatch, tmp_path, tests, sections):
    monkeypatch.setattr(gpu_check, "run_tests", lambda xml: tests)
    monkeypatch.setattr(gpu_check, "SECTIONS", sections)
    out = tmp_path / "g.json"
    return gpu_check.main(["--out", str(out)]), json.loads(out.read_text())


def _raises():
    raise RuntimeError("out of memory")


def test_a_clean_run_exits_0(gpu_check, monkeypatch, tmp_path, capsys):
    code, report = _run(gpu_check, monkeypatch, tmp_path, _tests(), {"uap": lambda: {"seconds": 1.0}})
    assert code == 0 and report["bench"]["uap"] == {"seconds": 1.0} and capsys.readouterr().err == ""


def test_a_skip_for_the_number_of_gpus_is_the_machine_not_the_check(gpu_check, monkeypatch, tmp_path):
    skipped = ["test_nccl_training: NCCL training needs two GPUs"]
    assert _run(gpu_check, monkeypatch, tmp_path, _tests(skipped), {})[0] == 0


@pytest.mark.parametrize("tests, sections, reason", [
    (_tests(["test_gpu_forward[VGG16]: needs a CUDA build of Caffe (make setup-cuda) and a GPU"]), {},
     "gpu-check: 1 GPU test(s) skipped on a machine with a GPU: test_gpu_forward[VGG16]: needs a CUDA build"),
    (_tests(failed=["test_gpu_forward[VGG16]"]), {}, "gpu-check: GPU tests failed: test_gpu_forward[VGG16]"),
    (_tests(ran=0), {}, "gpu-check: no GPU test ran"),
    (_tests(), {"uap": _raises}, "gpu-check: benchmark 'uap' raised RuntimeError: out of memory"),
])
def test_a_broken_check_exits_1_naming_why(gpu_check, monkeypatch, tmp_path, capsys, tests, sections, reason):
    code, _ = _run(gpu_check, monkeypatch, tmp_path, tests, sections)
    err = [line for line in capsys.readouterr().err.splitlines() if line]
    assert code == 1 and len(err) == 1 and err[0].startswith(reason)


@pytest.mark.parametrize("where", ["venv", "bundle"])
def test_the_report_names_the_build_by_its_cache_name_not_its_path(gpu_check, monkeypatch, tmp_path, where):
    """Reports are committed (results/bench): a machine's folders must not appear in them."""
    build = "cuda13.0-py3.11-np1-0123456789abcdef"
    prefix, bundle = tmp_path / "venv", tmp_path / "bundle"
    prefix.mkdir(), bundle.mkdir()
    if where == "venv":
        (prefix / ".caffe_build").write_text(f"/root/.cache/fru-toolkit/caffe/{build}\n")
    else:
        (bundle / "BUILD").write_text(build + "\n")
    monkeypatch.setattr(gpu_check.sys, "prefix", str(prefix))
    monkeypatch.setenv("FRU_BUNDLE", str(bundle))
    assert _run(gpu_check, monkeypatch, tmp_path, _tests(), {})[1]["caffe_build"] == build
