"""Every command line against bad input (issue 13): one table of (command, arguments, culprit).

Each case runs a real command: in this process (its ``main`` under ``run_cli``, argparse's exit
caught), or in a child process where, before the checks, Caffe aborted the process. Each asserts
exit code 2, exactly one line on stderr (no traceback, no Caffe log) that names the culprit (the
file and key or layer, or the option), and that the workspace holding every input is unchanged
afterwards, byte for byte, with no file or folder added: nothing overwritten, no partial output.
"""
from __future__ import annotations

import hashlib
import importlib
import json
import os
import shlex
import shutil
import struct
import subprocess
import sys
import zlib
from pathlib import Path
from typing import Dict, NamedTuple

import h5py
import numpy as np
import pytest
import scipy.io
from PIL import Image

from attacks.perturbation_io import DATASET, FORMAT_NAME
from defense.core import caffe_pb2, load_blobs, read_net_param, run_cli, save_blobs, write_net_param

FASHION_DEPLOY = "prototxt/FashionNet/deploy_fashionnet.prototxt"
FASHION_WEIGHTS = "weights/FashionNet/fashionnet.caffemodel"
HUGE = (100_000, 3, 224, 224)  # 60 GB of float32, declared by a file of a few kilobytes


class Case(NamedTuple):
    """A command (module run as ``python -m``, or ``defense_example``), its arguments and the
    text the one-line message must hold; ``{w}`` is the workspace, ``{ro}`` a read-only folder."""

    command: str
    args: str
    culprit: str
    child: bool = False  # run in a child process: Caffe aborted on this input before the checks
    unprivileged: bool = False  # run in a child process without capabilities (root's CAP_DAC_OVERRIDE dropped)


# ---------------------------------------------------------------- the workspace of bad files
def _png_header(width: int, height: int) -> bytes:
    """A PNG that declares ``width`` x ``height`` pixels in a few bytes (a decompression bomb)."""
    def chunk(kind: bytes, data: bytes) -> bytes:
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    return (b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", struct.pack(">IIBBBBB", width, height, 1, 0, 0, 0, 0))
            + chunk(b"IDAT", zlib.compress(b"\0" * 64)) + chunk(b"IEND", b""))


def _npy_header(path: Path, shape) -> None:
    """An .npy file whose header declares ``shape`` but holds no data."""
    with open(path, "wb") as fh:
        np.lib.format.write_array_header_1_0(fh, {"descr": "<f4", "fortran_order": False, "shape": shape})


def _toolkit_h5(path: Path, data=None, shape=None, **attrs) -> None:
    """A toolkit perturbation file written around the writer's checks (bad data, bad attributes)."""
    with h5py.File(path, "w") as f:
        if data is not None:
            f.create_dataset(DATASET, data=data)
        else:  # declared, never written: chunked, so the file stays small
            f.create_dataset(DATASET, shape=shape, dtype="f4", chunks=(1,) + shape[1:], compression="gzip")
        f.attrs["format"] = FORMAT_NAME
        for key, value in attrs.items():
            f.attrs[key] = value


def _train_net(deploy):
    """FashionNet's deploy net with a label Input and a loss: what a solver trains."""
    train = caffe_pb2.NetParameter(name="train")
    train.layer.add(name="label", type="Input", top=["label"]).input_param.shape.add(dim=[1])
    for layer in deploy.layer:
        train.layer.add().CopyFrom(layer)
    loss = train.layer[-1]
    loss.name, loss.type, loss.top[:] = "loss", "SoftmaxWithLoss", ["loss"]
    loss.bottom.append("label")
    return train


def _solverstate(path: Path, train: Path, learned: Path) -> None:
    """An SGD solverstate whose history fits ``train`` but whose ``learned_net`` is ``learned``."""
    from defense.core import caffe, load_net, param_shapes
    state = caffe_pb2.SolverState(iter=1, learned_net=str(learned))
    for shapes in param_shapes(load_net(train, phase=caffe.TRAIN)).values():
        for shape in shapes:
            state.history.add(shape=caffe_pb2.BlobShape(dim=shape), data=np.zeros(int(np.prod(shape))).tolist())
    path.write_bytes(state.SerializeToString())


def _index(path: Path, root: Path, items) -> None:
    lines = [{"meta": {"root": str(root), "split": "val"}}] + [{"path": p, "label": lab} for p, lab in items]
    path.write_text("".join(json.dumps(line) + "\n" for line in lines))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory, root) -> Dict[str, str]:
    """Every bad file of the table, built once; the placeholders of ``Case`` args and culprits."""
    w = tmp_path_factory.mktemp("bad_input")
    good = np.load(root / "attacks/samples/FashionNet/uap_linf.npy")  # (1, 28, 28)
    np.save(w / "pert.npy", good)
    np.save(w / "nan.npy", np.where(good > 0, np.nan, good).astype(np.float32))
    np.save(w / "complex.npy", good + 1j * good)
    _npy_header(w / "bomb.npy", HUGE)
    _toolkit_h5(w / "bomb.h5", shape=HUGE)
    _toolkit_h5(w / "inf.h5", data=np.full((1, 28, 28), np.inf, np.float32))
    _toolkit_h5(w / "complex.h5", data=good + 1j)
    _toolkit_h5(w / "bad_attr.h5", data=good, xi=np.arange(3))
    images = np.full((4, 1, 28, 28), 128, np.float32)
    np.save(w / "images.npy", images)
    images[2, 0, 5, 5] = np.nan
    np.save(w / "nan_images.npy", images)
    v = np.random.default_rng(0).normal(size=(28, 28, 3))
    scipy.io.savemat(w / "v.mat", {"v": v})
    scipy.io.savemat(w / "nan.mat", {"v": np.where(v > 1, np.nan, v)})
    scipy.io.savemat(w / "complex.mat", {"v": v + 1j})
    with h5py.File(w / "bomb.mat", "w") as f:  # a MATLAB v7.3 file is HDF5
        f.create_dataset("v", shape=HUGE[1:] + (HUGE[0],), dtype="f8", chunks=HUGE[1:] + (1,), compression="gzip")
    (w / "bomb.png").write_bytes(_png_header(20000, 20000))
    _index(w / "bomb_index.jsonl", w, [("bomb.png", 0)])
    _index(w / "label_index.jsonl", w, [("bomb.png", 10)])
    (w / "noroot_index.jsonl").write_text(json.dumps({"meta": {"split": "val"}}) + "\n")
    shutil.copy(root / FASHION_DEPLOY, w / "net.prototxt")
    shutil.copy(root / FASHION_WEIGHTS, w / "net.caffemodel")
    shutil.copy(root / FASHION_DEPLOY.replace(".prototxt", "_FRU.prototxt"), w / "fru.prototxt")
    blobs = load_blobs(root / FASHION_WEIGHTS)
    name = next(iter(blobs))
    save_blobs(w / "nan.caffemodel", {**blobs, name: [np.full_like(blobs[name][0], np.nan)] + blobs[name][1:]})
    save_blobs(w / "misfit.caffemodel", {**blobs, name: [blobs[name][0].reshape(-1, 1, 1, 1)] + blobs[name][1:]})
    text = (root / FASHION_DEPLOY).read_text()
    (w / "bad_net.prototxt").write_text(text.replace("kernel_size: 5", "kernel_size: 99", 1))
    (w / "manifest.json").write_text(json.dumps({"entries": [{"name": "x", "net": "FashionNet", "kind": "baseline",
                                                              "defense": None, "url": None, "gdrive_id": None,
                                                              "size": "12", "sha256": None, "dest": "x",
                                                              "prototxt": "p"}]}))
    (w / "lock_manifest.json").write_text(json.dumps({"lock": 3, "entries": []}))
    (w / "solver.prototxt").write_text(f'net: "{w}/train.prototxt"\nbase_lr: 0.01\nmax_iter: 10\nlr_policy: "fixed"\n')
    write_net_param(w / "train.prototxt", _train_net(read_net_param(w / "net.prototxt")))
    for source, unreadable in (("pert.npy", "unreadable.npy"), ("net.caffemodel", "unreadable.caffemodel")):
        shutil.copy(w / source, w / unreadable)
        (w / unreadable).chmod(0)  # unreadable to a process without CAP_DAC_OVERRIDE
    with h5py.File(w / "group.h5", "w") as f:  # the expected dataset is a group
        f.create_group("v").create_dataset("x", data=good)
        f.create_group(DATASET)
    Image.new("L", (20000, 1)).save(w / "wide.png")  # 20,000 pixels, 5,120,000 x 256 after 'shorter'
    _index(w / "wide_index.jsonl", w, [("wide.png", 0)])
    save_blobs(w / "noblobs.caffemodel", {**blobs, name: []})  # a parameter layer holding no blobs
    _solverstate(w / "other.solverstate", w / "train.prototxt", w / "misfit.caffemodel")
    np.save(w / "rgb.npy", np.zeros((3, 28, 28), np.float32))
    _toolkit_h5(w / "good.h5", data=good)
    _toolkit_h5(w / "rgb.h5", data=np.zeros((3, 28, 28), np.float32))
    (w / "empty.mat").write_bytes(b"")
    raw = (w / "pert.npy").read_bytes()
    (w / "flipped.npy").write_bytes(raw[:8] + bytes([raw[8] ^ 64]) + raw[9:])  # the header's length: a cut literal
    (w / "gen").mkdir()
    shutil.copy(w / "net.prototxt", w / "gen" / "deploy_FRU.prototxt")
    (w / "garbage.caffemodel").write_bytes(b"\x08\x96\x01" * 100)
    (w / "fetch_manifest.json").write_text(json.dumps({"root": ".", "entries": [
        {"name": "x", "net": "FashionNet", "kind": "baseline", "defense": None, "url": "http://127.0.0.1:9/x",
         "gdrive_id": None, "size": None, "sha256": None, "dest": "garbage.caffemodel", "prototxt": "net.prototxt"}]}))
    (w / "labels.txt").write_bytes(b"a.JPEG 1\n\xff\xfe\x00 2\n")
    (w / "afile").write_text("a file where a folder goes\n")
    (w / "model_snapshots").write_text("a file where train's snapshot folder goes\n")
    (w / "dir").mkdir()
    (w / "dir.md").mkdir()  # where defense.reproduce.spread would write the table beside --out dir.json
    (w / "base.json").mkdir()
    return {"w": str(w), "layer": name, "ro": str(_read_only_folder(w))}


def _read_only_folder(w: Path) -> Path:
    """A folder this process cannot write in: a chmod 555 one, or for root (whom modes do not stop) /sys."""
    ro = w / "ro"
    ro.mkdir()
    ro.chmod(0o555)
    try:
        (ro / "probe").write_text("")
    except OSError:
        return ro
    (ro / "probe").unlink()
    ro.chmod(0o755)
    return Path("/sys")


def _tree(folder: Path) -> Dict[str, str]:
    """Every path under ``folder`` with its content hash (folders: '')."""
    return {str(p.relative_to(folder)): "" if p.is_dir() else hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(folder.rglob("*"))}


# ---------------------------------------------------------------- the table
# class 3: every command that writes, each output option, three places it cannot write
WRITERS = [
    ("defense_example", "--dnn FashionNet --input fashion:0", "--out", "file"),
    ("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy", "--out", "folder"),
    ("defense.networks", "--net FashionNet", "--out", "folder"),
    ("defense.train_baseline", "--epochs 0.01", "--out", "file"),
    ("defense.reproduce", "--quick", "--out", "folder"),
    ("defense.reproduce.spread", "{w}/replica {w}/manifest.json", "--out", "file"),
    ("defense.bench", "--nets FashionNet", "--out", "file"),
    ("defense.bench", "--compare conv-batching --nets FashionNet", "--out", "file"),
    ("defense.export", "--format onnx --prototxt {w}/net.prototxt --weights {w}/net.caffemodel", "--out", "file"),
    ("defense.export", "--prototxt {w}/net.prototxt --weights {w}/net.caffemodel", "--out", "folder"),
    ("defense.tables", "same-norm --net CaffeNet --index {w}/bomb_index.jsonl", "--out", "folder"),
    ("defense.train", "--net FashionNet --solver {w}/solver.prototxt --perturbations {w}/pert.npy", "--out", "file"),
    ("defense.generate", "--preset FashionNet", "--out", "folder"),
    ("defense.generate", "--defense prn --preset FashionNet", "--out", "folder"),
    ("defense.train", "--net FashionNet --solver {w}/solver.prototxt --perturbations {w}/pert.npy --out {w}/o.caffemodel",
     "--detector", "file"),
    ("defense.imagenet", "prepare val --images {w} --labels {w}/afile", "--out", "file"),
    ("attacks.bench", "--n-images 4", "--out", "file"),
    ("attacks", "convert --format mat --input {w}/v.mat", "--out", "file"),
    ("attacks", "convert --format mat --input {w}/v.mat --out {w}/new.h5", "--report", "file"),
    ("attacks", f"uap --prototxt {{w}}/net.prototxt --weights {{w}}/net.caffemodel --preset FashionNet "
                "--data {w}/images.npy --out {w}/new.h5", "--state", "file"),
    ("attacks", "fetch UAP", "--dest", "folder"),
    ("attacks", "gap --prototxt {w}/net.prototxt --weights {w}/net.caffemodel --preset FashionNet "
                "--data {w}/images.npy --out {w}/new.h5", "--snapshots", "folder"),
]
UNWRITABLE = [  # (place, culprit) for a file output and for a folder output
    ("{ro}/x", "{option} {ro}/x: cannot write in {ro}", "{option} {ro}/x: cannot write in {ro}"),
    ("{w}/dir", "{option} {w}/dir: is a folder, not a file", None),
    ("{w}/afile", None, "{option} {w}/afile: is a file, not a folder"),
    ("{w}/afile/x", "{w}/afile is a file, so no folder", "{w}/afile is a file, so no folder"),
]
OUTPUT_CASES = [
    Case(command, f"{args} {option} {place}", (file_culprit if kind == "file" else folder_culprit)
         .replace("{option}", option))
    for command, args, option, kind in WRITERS
    for place, file_culprit, folder_culprit in UNWRITABLE
    if (file_culprit if kind == "file" else folder_culprit)
]
OUTPUT_CASES += [  # outputs that are inputs, and outputs derived from an option
    Case("attacks", "convert --format mat --input {w}/v.mat --out {w}/v.mat", "--out {w}/v.mat is also the input --input"),
    Case("attacks", "synthetic --inputs {w}/pert.npy --out {w}/pert.npy", "--out {w}/pert.npy is also the input --inputs"),
    Case("attacks", "convert --format mat --input {w}/v.mat --out {w}/new.h5 --report {w}/v.mat",
         "--report {w}/v.mat is also the input --input"),
    Case("defense.imagenet", "prepare val --images {w} --labels {w}/afile --out {w}/afile",
         "--out {w}/afile is also the input --labels"),
    Case("attacks", "convert --format mat --input {w}/v.mat --out {w}/new.json",
         "--report {w}/new.json is also the output --out"),
    Case("defense.train", "--net FashionNet --solver {w}/solver.prototxt --perturbations {w}/pert.npy "
                          "--out {w}/model.caffemodel", "--out {w}/model_snapshots: is a file, not a folder"),
    Case("defense.train_baseline", "--out {w}/base.caffemodel", "--out {w}/base.json: is a folder, not a file"),
    Case("defense.train_baseline", "--out {w}/base2.json", "--out {w}/base2.json: the JSON summary goes beside"),
]

NET = "--prototxt {w}/net.prototxt --weights {w}/net.caffemodel --preset FashionNet"
BOMB = "declares an array of shape"
BOMB_CASES = [  # class 4: sizes declared in a header, refused before allocation
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/bomb.npy --out {w}/o", f"{{w}}/bomb.npy: {BOMB}"),
    Case("defense.train", "--net FashionNet --solver {w}/solver.prototxt --perturbations {w}/bomb.h5 --out {w}/o.caffemodel",
         f"{{w}}/bomb.h5: dataset 'perturbation': {BOMB}"),
    Case("attacks", "convert --format mat --input {w}/bomb.mat --out {w}/o.h5", f"{{w}}/bomb.mat: variable 'v': {BOMB}"),
    Case("attacks", "synthetic --inputs {w}/inf.h5 {w}/bomb.h5 --out {w}/o.h5", f"{{w}}/inf.h5: perturbation holds NaN"),
    Case("attacks", "synthetic --inputs {w}/bomb.h5 {w}/inf.h5 --out {w}/o.h5", f"{{w}}/bomb.h5: dataset 'perturbation': {BOMB}"),
    Case("attacks", f"uap {NET} --data {{w}}/bomb.npy --out {{w}}/o.h5", f"{{w}}/bomb.npy: {BOMB}"),
    Case("attacks.bench", "--prototxt {w}/net.prototxt --weights {w}/net.caffemodel --data {w}/bomb.npy",
         f"{{w}}/bomb.npy: {BOMB}"),
    Case("defense_example", "--dnn FashionNet --input {w}/bomb.png", "{w}/bomb.png: image too large"),
    Case("defense.imagenet", "check {w}/bomb_index.jsonl --dnn CaffeNet", "{w}/bomb.png: image too large"),
]

SILENT_CASES = [  # class 6: accepted without a word before
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/complex.npy --out {w}/o", "{w}/complex.npy: array holds complex"),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/nan.npy --out {w}/o", "{w}/nan.npy: perturbation holds NaN"),
    Case("defense.train", "--net FashionNet --solver {w}/solver.prototxt --perturbations {w}/inf.h5 --out {w}/o.caffemodel",
         "{w}/inf.h5: perturbation holds NaN or infinite"),
    Case("attacks", "convert --format mat --input {w}/nan.mat --out {w}/o.h5", "{w}/nan.mat: perturbation holds NaN"),
    Case("attacks", "convert --format mat --input {w}/complex.mat --out {w}/o.h5", "{w}/complex.mat: variable 'v' holds complex"),
    Case("attacks", "synthetic --inputs {w}/complex.h5 --out {w}/o.h5", "{w}/complex.h5: dataset 'perturbation' holds complex"),
    Case("attacks", f"uap {NET} --data {{w}}/nan_images.npy --out {{w}}/o.h5", "{w}/nan_images.npy: images hold NaN"),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --limit 0", "argument --limit"),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --batch-size 0", "argument --batch-size"),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --peers blur", "argument --peers: unknown peer defence 'blur'"),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --peers median:3,pd:window=0",
         "argument --peers: peer defence 'pd:window=0': window must be a positive integer"),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --peers pd:radius=3",
         "argument --peers: peer defence 'pd:radius=3': unknown option 'radius'"),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --peers pd:sigma=x",
         "argument --peers: peer defence 'pd:sigma=x': sigma must be a number"),
    Case("defense.reproduce", "--quick --out {w}/o --set peers=jpeg:75,pd:map=saliency",
         "peer defence 'pd:map=saliency': map must be one of cam, uniform"),
    Case("defense.train", "--net FashionNet --perturbations {w}/pert.npy --out {w}/o --seed -1", "argument --seed"),
    Case("defense.tables", "same-norm --net CaffeNet --index {w}/bomb_index.jsonl --batch 0", "argument --batch"),
    Case("defense.tables", "same-norm --net CaffeNet --index {w}/bomb_index.jsonl --peers pd:deflections=x",
         "argument --peers: peer defence 'pd:deflections=x': deflections must be an integer"),
    Case("defense_example", "--dnn FashionNet --input fashion:0 --peers pd:map=x", "argument --peers: peer defence 'pd:map=x'"),
    Case("defense.tables", "same-norm --net CaffeNet --index {w}/bomb_index.jsonl --runtime tensorrt", "argument --runtime"),
    Case("defense.reproduce", "--quick --out {w}/o --runtime tensorrt", "argument --runtime"),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --runtime tensorrt", "argument --runtime"),
    Case("defense.imagenet", "check {w}/bomb_index.jsonl --batch 0", "argument --batch"),
    Case("attacks.bench", "--n-images 0", "argument --n-images"),
    Case("defense.reproduce", "--quick --seeds 0 --out {w}/o", "argument --seeds"),
    *[Case("defense.reproduce.spread", "{w}/none {w}/manifest.json --out " + args, culprit) for args, culprit in (
        ("{w}/o.json", "{w}/none: not an evaluated replica of case 'same-norm'"),
        ("{w}/o.txt", "--out {w}/o.txt: name a .json file"),
        ("{w}/dir.json", "--out {w}/dir.md: is a folder"),
        ("{w}/o.json --target 2", "--target must be in (0, 1), got 2.0"))],
    Case("defense.imagenet", "check {w}/label_index.jsonl --dnn FashionNet", "{w}/label_index.jsonl"),
    Case("defense.generate", "--prototxt {w}/bad_net.prototxt --layers conv1 --out {w}/o", "{w}/bad_net.prototxt: Caffe cannot build"),
    Case("defense.bench", "--compare conv-batching --batch 0 --out {w}/o.json", "--batch must list positive integers"),
    Case("defense.bench", "--compare conv-batching --gpu 0 --out {w}/o.json", "drop --gpu"),
    Case("defense.bench", "--compare conv-batching --kinds forward,infer --out {w}/o.json", "--kinds lists forward"),
    Case("defense.generate", "--preset FashionNet --affinity dot --out {w}/o", "--affinity applies to --defense fd only"),
    Case("defense.generate", "--defense pd --preset FashionNet --out {w}/o", "argument --defense"),
    Case("defense.generate", "--defense fd --preset FashionNet --affinity cosine --out {w}/o", "argument --affinity"),
    Case("defense.generate", "--defense fd --preset FashionNet --layers relu1 --out {w}/o",
         "FashionNet: FD target 'relu1' is a ReLU layer, not a Convolution"),
    Case("defense.generate", "--defense fd --prototxt {w}/net.prototxt --out {w}/o",
         "--layers is needed with --prototxt and --defense fd"),
    Case("defense.generate", "--defense fd --preset FashionNet --mode folded --out {w}/o",
         "--mode places FRUs; --defense fd has no permutation layout"),
    Case("defense.generate", "--defense fd --preset FashionNet --weights {w}/nan.caffemodel --out {w}/o",
         "{w}/nan.caffemodel: layer '{layer}' blob 0 holds NaN"),
]

COMPETITOR_CASES = [  # issue 19: the competitor defences' options
    Case("defense.generate", "--defense pd --preset FashionNet --out {w}/o", "argument --defense"),
    Case("defense.generate", "--defense prn --preset FashionNet --layers conv1 --out {w}/o",
         "--layers and --mode place FRUs; --defense prn is prepended to the net"),
    Case("defense.generate", "--all --defense hgd", "--all regenerates the committed prototxts (baseline, FRU, FD); --defense hgd needs"),
    Case("defense.generate", "--defense hgd --prototxt {w}/bad_net.prototxt --out {w}/o",
         "{w}/bad_net.prototxt: Caffe cannot build"),
    Case("defense.train", "--net FashionNet --solver {w}/solver.prototxt --perturbations {w}/pert.npy "
                          "--out {w}/o.caffemodel --detector {w}/d.npz", "--detector needs --dir with the PRN's"),
    Case("defense.train", "--net FashionNet --dir {w} --perturbations {w}/pert.npy --out {w}/o.caffemodel "
                          "--detector-images 0", "argument --detector-images"),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --no-defended --competitor median "
                             "{w}/net.prototxt {w}/net.caffemodel --out {w}/o", "--competitor: 'median' is not a trained"),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --no-defended --detector {w}/pert.npy "
                             "--out {w}/o", "--detector gates the PRN"),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --no-defended --competitor prn "
                             "{w}/net.prototxt {w}/net.caffemodel --detector {w}/pert.npy --out {w}/o",
         "{w}/pert.npy: not a PRN detector file"),
    Case("defense_example", "--dnn FashionNet --input fashion:0 --competitor pd {w}/net.prototxt {w}/net.caffemodel "
                            "--out {w}/o.png", "--competitor: 'pd' is not a trained competitor"),
    Case("defense.tables", "same-norm --net CaffeNet --index {w}/bomb_index.jsonl --load median {w}/net.prototxt "
                           "{w}/net.caffemodel", "--load: 'median' is not a trained competitor"),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --no-defended --competitor hgd "
                             "{w}/net.prototxt {w}/nan.caffemodel --out {w}/o", "{w}/nan.caffemodel: layer '{layer}'",
         child=True),
]

FORMAT_CASES = [  # class 5: JSON and HDF5 attributes of the wrong type or missing
    Case("weights", "--manifest {w}/manifest.json list", "{w}/manifest.json: entry 'x' key 'size'"),
    Case("weights", "--manifest {w}/lock_manifest.json list", "{w}/lock_manifest.json: key 'lock' must be a string"),
    Case("defense.imagenet", "check {w}/noroot_index.jsonl", "{w}/noroot_index.jsonl: the meta line needs key 'root'"),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/bad_attr.h5 --out {w}/o", "{w}/bad_attr.h5: attribute 'xi'"),
]

ABORT_CASES = [  # classes 1 and 2: Caffe aborted (or glibc stopped) the process on these
    Case("defense.export", "--format onnx --prototxt {w}/bad_net.prototxt --weights {w}/net.caffemodel --out {w}/o.onnx",
         "{w}/bad_net.prototxt: Caffe cannot build this net", child=True),
    Case("attacks", f"fff --prototxt {{w}}/net.prototxt --weights {{w}}/misfit.caffemodel --preset FashionNet "
                    "--out {w}/o.h5", "{w}/misfit.caffemodel: layer '{layer}'", child=True),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --baseline-weights {w}/nan.caffemodel "
                             "--out {w}/o", "{w}/nan.caffemodel: layer '{layer}' blob 0 holds NaN", child=True),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --gpu 0 --out {w}/o", "--gpu 0", child=True),
    Case("defense.train", "--net FashionNet --solver {w}/solver.prototxt --perturbations {w}/pert.npy --weights "
                          "{w}/misfit.caffemodel --out {w}/o.caffemodel", "{w}/misfit.caffemodel: layer '{layer}'",
         child=True),
]

GEN = f"{NET} --data {{w}}/images.npy --out {{w}}/o.h5"
GENERATOR_CASES = [  # the generative attacks' options (issue 20)
    Case("attacks", f"gap {GEN} --max-iter 0", "argument --max-iter"),
    Case("attacks", f"nag {GEN} --samples 0", "argument --samples"),
    Case("attacks", f"nag {GEN} --batch-size 1", "batch_size must be at least 2 for nag, got 1"),
    Case("attacks", f"nag {GEN} --layer nosuch", "the network has no blob 'nosuch'"),
    Case("attacks", f"gap {GEN} --snapshot-every -1", "snapshot_every must be 0 or a positive integer, got -1"),
    Case("attacks", f"gap {GEN} --resume {{w}}/nope.solverstate", "{w}/nope.solverstate: solverstate not found"),
    Case("attacks", f"gap {GEN} --resume {{w}}/afile", "{w}/afile: "),
    Case("attacks", f"nag {NET} --out {{w}}/o.h5", "--data"),
]


TRAIN = "defense.train", "--net FashionNet --solver {w}/solver.prototxt --perturbations {w}/pert.npy --out {w}/o.caffemodel"
ISSUE22_CASES = [  # the eight classes of issue 22, each where it arose
    # 1. unreadable files (root without CAP_DAC_OVERRIDE)
    Case("attacks", "synthetic --inputs {w}/unreadable.npy --out {w}/o.h5",
         "{w}/unreadable.npy: perturbation file cannot be read (Permission denied)", unprivileged=True),
    Case("defense.export", "--format onnx --prototxt {w}/net.prototxt --weights {w}/unreadable.caffemodel --out {w}/o.onnx",
         "{w}/unreadable.caffemodel: caffemodel cannot be read", unprivileged=True),
    Case("defense_example", "--dnn FashionNet --load {w}/unreadable.caffemodel --out {w}/o.png",
         "{w}/unreadable.caffemodel: file given with --load cannot be read", unprivileged=True),
    # 2. wrong container structure
    Case("attacks", "convert --format uap --input {w}/group.h5 --out {w}/o.h5", "{w}/group.h5: has no dataset 'v'"),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/group.h5 --out {w}/o",
         "{w}/group.h5: has no dataset 'perturbation'"),
    # 3. memory bombs through resizing
    Case("defense.imagenet", "check {w}/wide_index.jsonl --dnn VGG16", "{w}/wide.png: image of 20000x1 pixels would be"),
    # 4. Caffe aborts
    Case(TRAIN[0], TRAIN[1] + " --resume {w}/other.solverstate",
         "{w}/misfit.caffemodel: layer '{layer}' of the weights of {w}/other.solverstate", child=True),
    Case(TRAIN[0], TRAIN[1] + " --weights {w}/noblobs.caffemodel",
         "{w}/noblobs.caffemodel: layer '{layer}' of the caffemodel has blob shapes []", child=True),
    # 5. outputs that are inputs through a derived name
    Case("defense.generate", "--prototxt {w}/gen/deploy_FRU.prototxt --layers conv1 --out {w}/gen",
         "--out {w}/gen/deploy_FRU.prototxt is also the input --prototxt"),
    # 6. an existing download that no hash vouches for
    Case("weights", "--manifest {w}/fetch_manifest.json fetch FashionNet --baseline-only",
         "{w}/garbage.caffemodel: the file already there fails the check"),
    # 7. messages naming the culprit
    Case("defense.bench", "--nets FashionNet --batch 1,x", "--batch takes integers separated by commas, got '1,x'"),
    Case("attacks", "synthetic --inputs {w}/pert.npy --threshold abc --out {w}/o.h5", "argument --threshold"),
    Case("attacks", "uap --prototxt {w}/net.prototxt --weights {w}/net.caffemodel --mean 1,y --data {w}/images.npy "
                    "--out {w}/o.h5", "--mean takes numbers separated by commas, got '1,y'"),
    Case("defense.generate", "--preset FashionNet --batch 0 --out {w}/o", "argument --batch: must be a positive integer"),
    Case("attacks", "synthetic --inputs {w}/good.h5 --max-steps 0 --out {w}/o.h5", "argument --max-steps"),
    Case("defense.imagenet", "prepare val --images {w} --labels {w}/labels.txt --out {w}/o.jsonl",
         "{w}/labels.txt: label file is not UTF-8 text"),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy {w}/rgb.npy --out {w}/o",
         "{w}/rgb.npy: perturbation shape (3, 28, 28) does not fit (1, 28, 28)"),
    Case("attacks", "synthetic --inputs {w}/good.h5 {w}/rgb.h5 --out {w}/o.h5",
         "{w}/rgb.h5: perturbation shape (3, 28, 28) does not fit (1, 28, 28)"),
    # found by the fuzzer (tests/test_fuzz.py)
    Case("attacks", "convert --format mat --input {w}/empty.mat --out {w}/o.h5", "{w}/empty.mat: not a readable .mat file"),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --seed=-- --out {w}/o",
         "argument --seed: expected one argument"),
    Case("attacks", "convert --format mat --input {w}/v.mat --mat-variable=-- --out {w}/o.h5",
         "argument --mat-variable: expected one argument"),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/pert.npy --peers median:99999 --limit 2 --out {w}/o",
         "peer defence median:99999: the window is larger than the 28x28 images"),
    Case("defense.evaluate", "--net FashionNet --perturbations {w}/flipped.npy --out {w}/o",
         "{w}/flipped.npy: not a valid .npy array (TokenError"),
    # claims: the ONNX export needs every parameter layer, as the classifiers do
    Case("defense.export", "--format onnx --prototxt {w}/fru.prototxt --weights {w}/net.caffemodel --out {w}/o.onnx",
         "{w}/net.caffemodel: the caffemodel lacks layer(s)"),
    # 8. local inputs before any download; every missing one in one line
    Case("defense_example", "--dnn ResNet152 --load {w}/missing.caffemodel --out {w}/o.png",
         "not found: {w}/missing.caffemodel (--load)"),
    Case("defense_example", "--dnn ResNet152 --load {w}/missing.caffemodel --perturbation {w}/gone.h5 --out {w}/o.png",
         "not found: {w}/missing.caffemodel (--load), {w}/gone.h5 (--perturbation); check the paths"),
]

CASES = OUTPUT_CASES + BOMB_CASES + SILENT_CASES + FORMAT_CASES + ABORT_CASES + ISSUE22_CASES + GENERATOR_CASES + COMPETITOR_CASES


def _run(case: Case, fill: Dict[str, str], root: Path, capfd) -> tuple:
    """(exit code, stderr) of the command, in this process or a child."""
    argv = shlex.split(case.args.format(**fill))
    if case.child or case.unprivileged:
        script = ["defense_example.py"] if case.command == "defense_example" else ["-m", case.command]
        drop = ["setpriv", "--inh-caps=-all", "--bounding-set=-all"] if case.unprivileged and os.geteuid() == 0 else []
        res = subprocess.run([*drop, sys.executable, *script, *argv], capture_output=True, text=True, cwd=root)
        return res.returncode, res.stderr
    try:
        main = importlib.import_module(f"{case.command}.__main__").main
    except ModuleNotFoundError:  # a plain module, not a package
        main = importlib.import_module(case.command).main
    capfd.readouterr()
    try:
        code = run_cli(main, argv)
    except SystemExit as exc:  # argparse's errors
        code = exc.code
    return code, capfd.readouterr().err


@pytest.mark.parametrize("case", [pytest.param(c, marks=[pytest.mark.slow] if c.child or c.unprivileged else [],
                                               id=f"{c.command} {c.args}") for c in CASES])
def test_bad_input_is_one_line_naming_the_culprit_and_changes_nothing(case, workspace, root, capfd, monkeypatch):
    monkeypatch.chdir(workspace["w"])  # default outputs (results/ ...) would land here and be seen
    before = _tree(Path(workspace["w"]))
    code, err = _run(case, workspace, root, capfd)
    lines = err.strip().splitlines()
    assert code == 2 and len(lines) == 1, err[-2000:]
    assert case.culprit.format(**workspace) in lines[0] and "Traceback" not in err
    assert _tree(Path(workspace["w"])) == before


def test_the_table_covers_every_command_line(root):
    """Each of the toolkit's commands (every ``run_cli`` entry point) has a case, and each class of the issue."""
    sources = [p for p in list(root.glob("*.py")) + list((root / "defense").rglob("*.py")) +
               list((root / "attacks").rglob("*.py")) + list((root / "weights").rglob("*.py"))
               if "run_cli(" in p.read_text() and p.name != "core.py"]
    commands = {".".join(p.relative_to(root).with_suffix("").parts).removesuffix(".__main__") for p in sources}
    assert len(commands) == 15 and commands == {c.command for c in CASES}
    assert all((OUTPUT_CASES, BOMB_CASES, SILENT_CASES, FORMAT_CASES, ABORT_CASES, ISSUE22_CASES))


def test_a_missing_parent_folder_is_created(tmp_path, capfd):
    """The other side of the output rule: missing folders are not an error, they are made."""
    from defense.networks.__main__ import main
    out = tmp_path / "new" / "deeper"
    assert run_cli(main, ["--net", "FashionNet", "--out", str(out)]) == 0
    assert [p.name for p in out.rglob("*.prototxt")] == ["deploy_fashionnet.prototxt"]


def test_an_interrupted_write_leaves_no_partial_file(tmp_path):
    """Writes go through a temporary file renamed on success: a writer that fails half-way
    leaves neither the output nor its temporary file."""
    from defense.core import atomic_path
    with pytest.raises(RuntimeError):
        with atomic_path(tmp_path / "out.h5") as tmp:
            tmp.write_bytes(b"half")
            raise RuntimeError("the writer failed")
    assert list(tmp_path.iterdir()) == []


def test_idx_files_are_checked_from_their_header(tmp_path):
    """An IDX file (Fashion-MNIST) whose header declares a huge array is refused before reading
    its data; Fashion-MNIST's folder is fixed at import, so this is checked on the reader."""
    from defense.core import ToolkitError, read_idx
    import gzip
    path = tmp_path / "bomb-idx3-ubyte.gz"
    with gzip.open(path, "wb") as fh:
        fh.write(struct.pack(">HBB3I", 0, 8, 3, 2 ** 31, 2 ** 15, 2 ** 15))
    with pytest.raises(ToolkitError, match=f"{path}: declares an array of shape .* over the toolkit's limit"):
        read_idx(path, 3, "fix")
