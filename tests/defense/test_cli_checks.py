"""The command-line checks every command shares (``defense.core.parse_args``): argparse errors as
one line naming the option, counts and seeds in range, and ``--out`` never one of the inputs."""
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


@pytest.mark.parametrize("command,message", [
    (["-m", "defense.evaluate", "--net", "FashionNet", "--perturbations", "p.h5", "--limit", "0"],
     "python -m defense.evaluate: error: argument --limit: must be a positive integer, got '0'"),
    (["-m", "defense.evaluate", "--net", "FashionNet", "--perturbations", "p.h5", "--batch-size", "0"],
     "python -m defense.evaluate: error: argument --batch-size: must be a positive integer, got '0'"),
    (["-m", "defense.evaluate", "--net", "FashionNet", "--perturbations", "p.h5", "--seed", "-1"],
     "python -m defense.evaluate: error: argument --seed: must be an integer from 0 to 4294967295, got '-1'"),
    (["-m", "defense.train", "--net", "FashionNet", "--perturbations", "p.h5", "--out", "o", "--seed", "4294967296"],
     "python -m defense.train: error: argument --seed: must be an integer from 0 to 4294967295, got '4294967296'"),
    (["-m", "defense.train", "--net", "FashionNet", "--perturbations", "p.h5", "--out", "o", "--max-iter", "x"],
     "python -m defense.train: error: argument --max-iter: must be a positive integer, got 'x'"),
    (["-m", "defense.bench", "--reps", "0"], "python -m defense.bench: error: argument --reps: must be a positive integer, got '0'"),
    (["-m", "defense.evaluate", "--net", "FashionNet"],
     "python -m defense.evaluate: error: the following arguments are required: --perturbations"),
])
def test_bad_options_are_one_line_naming_the_option(command, message, tmp_path, root):
    res = subprocess.run([sys.executable, *command], capture_output=True, text=True, cwd=tmp_path,
                         env={**__import__("os").environ, "PYTHONPATH": str(root)})
    assert res.returncode == 2 and res.stdout == ""
    assert res.stderr.strip() == message
    assert list(tmp_path.iterdir()) == []
