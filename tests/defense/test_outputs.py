"""``--out`` naming one of a command's own inputs is refused before anything is written."""
from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys

import pytest


def _digest(path):
    return hashlib.sha256(path.read_bytes()).hexdigest()


@pytest.mark.parametrize("command,option", [
    (["-m", "defense.export", "--format", "onnx", "--prototxt", "prototxt/FashionNet/deploy_fashionnet.prototxt",
      "--weights", "{file}", "--out", "{file}"], "--weights"),
    (["-m", "defense.evaluate", "--net", "FashionNet", "--perturbations", "{file}", "--out", "{file}"], "--perturbations"),
    (["defense_example.py", "--dnn", "FashionNet", "--input", "{file}", "--out", "{file}"], "--input"),
    (["-m", "defense.train", "--net", "FashionNet", "--solver", "{file}", "--perturbations", "{other}",
      "--out", "{file}"], "--solver"),
])
def test_out_equal_to_an_input_is_refused_and_the_input_kept(command, option, tmp_path, root):
    victim = tmp_path / "input.bin"
    shutil.copy(root / "weights" / "FashionNet" / "fashionnet.caffemodel", victim)
    before = _digest(victim)
    spelled = str(tmp_path / "." / "input.bin")  # another spelling of the same file
    args = [a.format(file=spelled, other=str(victim)) if "{" in a else a for a in command]
    res = subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=root)
    assert res.returncode == 2, res.stderr[-1500:]
    assert res.stderr.strip() == f"error: --out {spelled} is also the input {option}; write the output elsewhere"
    assert _digest(victim) == before and sorted(p.name for p in tmp_path.iterdir()) == ["input.bin"]
