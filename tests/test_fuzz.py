"""A property-based fuzzer of the command lines (issue 22): Hypothesis generates argument values
and malformed files, and every example must keep the bad-input contract.

Malformed files are truncated or bit-flipped copies of valid ones (a prototxt, a caffemodel, a
solver, ``.npy``, ``.h5``, ``.mat``, a PNG image, JSON and text label files), each given to the
commands that read that kind of file. Argument values are drawn from numbers, words and
near-misses (``nan``, ``-1``, ``1e309``, ``0,x``) for the options that take values. Each example
asserts:

- exit code 0 or 2;
- on 2, exactly one line on stderr, and no output written;
- no traceback and no abort (commands that hand a file to Caffe run in a child process, where an
  abort is a signal, not the end of this test run);
- the folder of inputs unchanged, byte for byte.

Fixed seeds (``derandomize``) and a bounded number of examples keep the default profile within
about 60 s of ``make test``; ``FRU_FUZZ=slow`` runs ten times as many. A failure found here
becomes a row of ``tests/defense/test_bad_input.py`` and is fixed where it arises.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import h5py
import numpy as np
import pytest
import scipy.io
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from PIL import Image

from attacks.perturbation_io import DATASET, FORMAT_NAME
from defense.core import run_cli

PROFILE = os.environ.get("FRU_FUZZ", "default")
SCALE = 10 if PROFILE == "slow" else 1
settings.register_profile("fuzz", derandomize=True, deadline=None, database=None, print_blob=True,
                          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
EXAMPLES = {"file": 3 * SCALE, "child": 2 * SCALE, "option": 3 * SCALE}
"""Examples per case of each test (the default profile); ``FRU_FUZZ=slow`` multiplies them by ten."""

RUNS: List[Tuple[str, float]] = []
"""(test, seconds) of every example, for the summary line printed at the end of the module."""


@pytest.fixture(scope="module", autouse=True)
def _summary(request):
    """After the module: how many examples ran, in how many seconds (a line of pytest's report)."""
    yield
    if RUNS:
        kinds = ", ".join(f"{sum(1 for w, _ in RUNS if w == k)} x {k}" for k in sorted({w for w, _ in RUNS}))
        line = f"fuzz ({PROFILE} profile): {len(RUNS)} examples in {sum(s for _, s in RUNS):.1f} s ({kinds})"
        request.config.pluginmanager.get_plugin("terminalreporter").write_line(line)


# ---------------------------------------------------------------- the valid files mutated
@pytest.fixture(scope="module")
def inputs(tmp_path_factory, root) -> Path:
    """A folder of valid inputs, one per kind of file; each example adds its mutated file here."""
    w = tmp_path_factory.mktemp("fuzz_inputs")
    pert = np.load(root / "attacks/samples/FashionNet/uap_linf.npy")  # (1, 28, 28)
    np.save(w / "pert.npy", pert)
    with h5py.File(w / "pert.h5", "w") as f:
        f.create_dataset(DATASET, data=pert)
        f.attrs["format"] = FORMAT_NAME
        f.attrs["xi"] = 10.0
    with h5py.File(w / "uap.h5", "w") as f:
        f.create_dataset("v", data=np.random.default_rng(0).normal(size=(3, 224, 224)).astype(np.float32))
    scipy.io.savemat(w / "v.mat", {"v": np.random.default_rng(1).normal(size=(28, 28, 3))})
    Image.fromarray(np.random.default_rng(2).integers(0, 255, (28, 28), dtype=np.uint8)).save(w / "image.png")
    shutil.copy(root / "prototxt/FashionNet/deploy_fashionnet.prototxt", w / "net.prototxt")
    shutil.copy(root / "weights/FashionNet/fashionnet.caffemodel", w / "net.caffemodel")
    shutil.copy(root / "weights/manifest.json", w / "manifest.json")
    (w / "index.jsonl").write_text(json.dumps({"meta": {"root": str(w), "split": "val"}}) + "\n"
                                   + json.dumps({"path": "image.png", "label": 3}) + "\n")
    (w / "val.txt").write_text("image.png 3\n")
    np.save(w / "images.npy", np.random.default_rng(3).uniform(0, 255, (4, 1, 28, 28)).astype(np.float32))
    return w


# ---------------------------------------------------------------- what each kind of file is given to
# (command, arguments, child): {f} is the fuzzed file, {w} the inputs, {o} an output folder.
NET_ARGS = "--prototxt {w}/net.prototxt --weights {w}/net.caffemodel --preset FashionNet"
READERS: Dict[str, List[Tuple[str, str, bool]]] = {
    "pert.npy": [("defense.evaluate", "--net FashionNet --perturbations {f} --limit 2 --no-defended --out {o}", False),
                 ("attacks", "convert --format fff --input {f} --out {o}/c.h5", False)],
    "pert.h5": [("attacks", "synthetic --inputs {f} --count 2 --out {o}/s.h5", False),
                ("defense.evaluate", "--net FashionNet --perturbations {f} --limit 2 --no-defended --out {o}", False)],
    "uap.h5": [("attacks", "convert --format uap --input {f} --out {o}/c.h5", False)],
    "v.mat": [("attacks", "convert --format mat --input {f} --out {o}/c.h5", False)],
    "image.png": [("defense_example", "--dnn FashionNet --input {f} --defense False --out {o}/d.png", False),
                  ("defense.imagenet", "check {w}/index.jsonl --dnn CaffeNet", False)],
    "index.jsonl": [("defense.imagenet", "check {f} --dnn CaffeNet", False)],
    "manifest.json": [("weights", "--manifest {f} list", False)],
    "val.txt": [("defense.imagenet", "prepare val --images {w} --labels {f} --out {o}/i.jsonl", False)],
    "images.npy": [("attacks", f"uap {NET_ARGS} --data {{f}} --max-passes 1 --out {{o}}/u.h5", True)],
    "net.prototxt": [("defense.generate", "--prototxt {f} --layers conv1 --out {o}", False)],
    "net.caffemodel": [("attacks", "uap --prototxt {w}/net.prototxt --weights {f} --preset FashionNet "
                                   "--data {w}/images.npy --max-passes 1 --out {o}/u.h5", True)],
}
"""The file the image index reads is ``image.png`` itself, so that command sees the fuzzed image."""

# (command, arguments with {v} for the drawn value); each is valid with a sensible value and cheap
OPTIONS: List[Tuple[str, str]] = [
    ("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --no-defended --limit {v} --out {o}"),
    ("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --no-defended --limit 2 --batch-size {v} "
                         "--out {o}"),
    ("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --no-defended --limit 2 --peers {v} --out {o}"),
    ("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --no-defended --limit 2 --seed {v} --out {o}"),
    ("attacks", "synthetic --inputs {w}/pert.h5 --count 2 --threshold {v} --out {o}/s.h5"),
    ("attacks", "synthetic --inputs {w}/pert.h5 --count {v} --max-steps 5 --out {o}/s.h5"),
    ("attacks", "synthetic --inputs {w}/pert.h5 --count 2 --max-steps {v} --out {o}/s.h5"),
    ("attacks", "convert --format mat --input {w}/v.mat --mat-layout {v} --out {o}/c.h5"),
    ("attacks", "convert --format mat --input {w}/v.mat --mat-variable {v} --out {o}/c.h5"),
    ("defense.generate", "--prototxt {w}/net.prototxt --layers {v} --out {o}"),
    ("defense.generate", "--prototxt {w}/net.prototxt --layers conv1 --ratio {v} --out {o}"),
    ("defense.generate", "--prototxt {w}/net.prototxt --layers conv1 --depth {v} --out {o}"),
    ("defense.generate", "--preset FashionNet --batch {v} --out {o}"),
    ("defense_example", "--dnn FashionNet --input fashion:{v} --defense False --out {o}/d.png"),
    ("defense.imagenet", "prepare val --images {w} --labels {w}/val.txt --per-class {v} --out {o}/i.jsonl"),
]

VALUES = st.one_of(
    st.sampled_from(["0", "1", "2", "-1", "nan", "inf", "-inf", "1e309", "1e-320", "0.5", "abc", "0,x", "1,2",
                     "conv1", "conv1,conv9", "median", "median:x", "jpeg:500", "bits:3", "min", "max", "CHW",
                     "WHC", "XYZ", "v", "w", "9999999999999999999999", "0x10", " ", "--", "1_000"]),
    st.integers(-3, 40).map(str),
    st.floats(allow_nan=True, allow_infinity=True, width=32).map(repr),
    st.text(alphabet="0123456789.,-eEnaixXv:", min_size=1, max_size=6),
)


# ---------------------------------------------------------------- running one example
def _tree(folder: Path) -> Dict[str, str]:
    return {str(p.relative_to(folder)): "" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


def _main(command: str):
    try:
        return importlib.import_module(f"{command}.__main__").main
    except ModuleNotFoundError:  # a plain module, not a package
        return importlib.import_module(command).main


def _run(command: str, argv: List[str], child: bool, root: Path, capfd) -> Tuple[Optional[int], str]:
    """(exit code, stderr) of the command, in this process or (``child``) a child, whose
    negative code is the signal that stopped it (an abort)."""
    if child:
        script = ["defense_example.py"] if command == "defense_example" else ["-m", command]
        res = subprocess.run([sys.executable, *script, *argv], capture_output=True, text=True, cwd=root, timeout=300)
        return res.returncode, res.stderr
    capfd.readouterr()
    try:
        code = run_cli(_main(command), argv)
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    return code, capfd.readouterr().err


def check_contract(command: str, args: str, fill: Dict[str, str], child: bool, root: Path, capfd, what: str) -> None:
    """Run one example and assert the contract of the module docstring."""
    import time
    inputs, out = Path(fill["w"]), Path(fill["o"])
    shutil.rmtree(out, ignore_errors=True)
    before = _tree(inputs)
    start = time.perf_counter()
    code, err = _run(command, args.format(**fill).split(), child, root, capfd)
    RUNS.append((what, time.perf_counter() - start))
    shown = f"{command} {args.format(**fill)}\n{err[-3000:]}"
    assert code in (0, 2), f"exit code {code} (a negative one is the signal of an abort): {shown}"
    assert "Traceback" not in err and "Check failed" not in err, shown
    if code == 2:
        lines = err.strip().splitlines()
        assert len(lines) == 1, shown
        assert not out.exists() or not any(out.rglob("*")), f"output written on refusal: {shown}"
    assert _tree(inputs) == before, f"the inputs changed: {shown}"


def _mutate(data: bytes, how: str, where: int, mask: int) -> bytes:
    """``data`` truncated at ``where``, or with the byte at ``where`` XORed with ``mask`` (1..255)."""
    where %= max(len(data), 1)
    if how == "truncate":
        return data[:where]
    return data[:where] + bytes([data[where] ^ mask]) + data[where + 1:]


FILES = sorted(READERS)
MUTATIONS = st.tuples(st.sampled_from(["truncate", "flip", "flip"]), st.integers(0, 2 ** 31), st.integers(1, 255))


def _fuzz_file(name: str, mutation, command: str, args: str, child: bool, inputs: Path, root: Path, capfd,
               tmp_path_factory) -> None:
    data = (inputs / name).read_bytes()
    fuzzed = inputs / f"fuzzed{Path(name).suffix}"
    fuzzed.write_bytes(_mutate(data, *mutation))
    if name == "image.png":  # the index check reads image.png itself: give it the fuzzed bytes for that command
        fuzzed = inputs / name if "imagenet" in command else fuzzed
    out = tmp_path_factory.getbasetemp() / "fuzz_out"
    try:
        if name == "image.png" and "imagenet" in command:
            (inputs / "image.orig").write_bytes(data)
            (inputs / name).write_bytes(_mutate(data, *mutation))
        check_contract(command, args, {"f": str(fuzzed), "w": str(inputs), "o": str(out)}, child, root, capfd,
                       f"file {name}")
    finally:
        if (inputs / "image.orig").exists():
            (inputs / "image.orig").replace(inputs / name)
        (inputs / f"fuzzed{Path(name).suffix}").unlink(missing_ok=True)


IN_PROCESS = [(name, c, a) for name in FILES for c, a, child in READERS[name] if not child]
IN_CHILD = [(name, c, a) for name in FILES for c, a, child in READERS[name] if child]


def _ids(cases) -> List[str]:
    return [" ".join(str(part) for part in case)[:60] for case in cases]


@pytest.mark.parametrize("case", IN_PROCESS, ids=_ids(IN_PROCESS))
@settings(settings.get_profile("fuzz"), max_examples=EXAMPLES["file"])
@given(mutation=MUTATIONS)
def test_malformed_files_keep_the_contract(case, mutation, inputs, root, capfd, tmp_path_factory):
    name, command, args = case
    _fuzz_file(name, mutation, command, args, False, inputs, root, capfd, tmp_path_factory)


@pytest.mark.slow
@pytest.mark.parametrize("case", IN_CHILD, ids=_ids(IN_CHILD))
@settings(settings.get_profile("fuzz"), max_examples=EXAMPLES["child"])
@given(mutation=MUTATIONS)
def test_malformed_files_handed_to_caffe_never_abort(case, mutation, inputs, root, capfd, tmp_path_factory):
    name, command, args = case
    _fuzz_file(name, mutation, command, args, True, inputs, root, capfd, tmp_path_factory)


@pytest.mark.parametrize("case", OPTIONS, ids=_ids(OPTIONS))
@settings(settings.get_profile("fuzz"), max_examples=EXAMPLES["option"])
@given(value=VALUES)
def test_argument_values_keep_the_contract(case, value, inputs, root, capfd, tmp_path_factory):
    command, args = case
    if value.startswith("-") and not value[1:2].isdigit() or not value.strip():
        value = f"={value}"  # argparse would read '--x' as an option: pass it glued to the option instead
    glued = args.replace(" {v}", "{v}") if value.startswith("=") else args
    out = tmp_path_factory.getbasetemp() / "fuzz_out"
    check_contract(command, glued, {"v": value, "w": str(inputs), "o": str(out)}, False, root, capfd, "option")

