"""A fake ImageNet with a known answer, for the tables and demo tests.

Images: uniform colours, class c has BGR channel c at 230 and the others at 30 (CaffeNet's
224 preprocessing leaves them uniform). Nets (input 3x224x224, 1000 classes, logits = the
three channel means after mean subtraction, other classes at -1000):
- "baseline": ReLU before the global average pool, so a +-400 checkerboard on the blue
  channel raises the blue mean and every image becomes class 0;
- "FRU": no ReLU, so the checkerboard averages out and every image stays right.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Sequence

import h5py
import numpy as np
from PIL import Image

from defense.core import L, P, caffe, save_blobs, write_net_param
from defense.imagenet import main as imagenet_main

CLASSES = 3
SIZE = 224
AMPLITUDE = 400.0


def _net(relu: bool):
    n = caffe.NetSpec()
    n.data = L.Input(name="data", shape=dict(dim=[1, 3, SIZE, SIZE]))
    x = n.data
    if relu:
        n.relu0 = L.ReLU(x, name="relu0")
        x = n.relu0
    n.pool = L.Pooling(x, name="pool", pool=P.Pooling.AVE, global_pooling=True)
    n.fc8 = L.InnerProduct(n.pool, name="fc8", num_output=1000)
    n.prob = L.Softmax(n.fc8, name="prob")
    net = n.to_proto()
    net.name = "FakeNet"
    return net


def _fc8() -> Dict[str, List[np.ndarray]]:
    w = np.zeros((1000, 3), np.float32)
    w[np.arange(CLASSES), np.arange(CLASSES)] = 1.0
    b = np.full(1000, -1000.0, np.float32)
    b[:CLASSES] = 0.0
    return {"fc8": [w, b]}


def write_nets(root: Path, net: str = "CaffeNet", stem: str = "caffenet", baseline_weights: bool = True) -> Path:
    """Tiny baseline/FRU prototxts + caffemodels under ``root`` and a weights manifest for them."""
    proto = root / "prototxt" / net
    write_net_param(proto / f"deploy_{stem}.prototxt", _net(relu=True))
    write_net_param(proto / f"deploy_{stem}_FRU.prototxt", _net(relu=False))
    if baseline_weights:
        save_blobs(root / "weights" / net / f"{stem}.caffemodel", _fc8())
    save_blobs(root / "weights" / net / f"{stem}_FRU.caffemodel", _fc8())
    entries = [
        {"name": f"{net}-baseline", "net": net, "kind": "baseline", "defense": None, "url": None, "gdrive_id": None,
         "size": None, "sha256": None, "dest": f"weights/{net}/{stem}.caffemodel",
         "prototxt": f"prototxt/{net}/deploy_{stem}.prototxt"},
        {"name": f"{net}-FRU", "net": net, "kind": "fru", "defense": "primary", "url": None, "gdrive_id": None,
         "size": None, "sha256": None, "dest": f"weights/{net}/{stem}_FRU.caffemodel",
         "prototxt": f"prototxt/{net}/deploy_{stem}_FRU.prototxt"},
    ]
    manifest = root / "manifest.json"
    manifest.write_text(json.dumps({"root": ".", "entries": entries}))
    return manifest


def class_image(label: int) -> np.ndarray:
    """RGB uint8 (H, W, 3) of a class: BGR channel ``label`` bright."""
    rgb = np.full((40, 60, 3), 30, np.uint8)
    rgb[:, :, 2 - label] = 230
    return rgb


def write_images(root: Path, per_class: int = 2) -> Path:
    """JPEGs of every class plus an index from ``python -m defense.imagenet prepare val``."""
    images = root / "val"
    images.mkdir(parents=True)
    lines = []
    i = 0
    for label in range(CLASSES):
        for _ in range(per_class):
            i += 1
            name = f"ILSVRC2012_val_{i:08d}.JPEG"
            Image.fromarray(class_image(label)).save(images / name, quality=95)
            lines.append(f"{name} {label}")
    (root / "val.txt").write_text("\n".join(lines) + "\n")
    index = root / "val.jsonl"
    assert imagenet_main(["prepare", "val", "--images", str(images), "--labels", str(root / "val.txt"),
                          "--out", str(index)]) == 0
    return index


def checkerboard(size: int = SIZE, amplitude: float = AMPLITUDE) -> np.ndarray:
    """(3, size, size) BGR: +-amplitude on the blue channel, zero elsewhere."""
    v = np.zeros((3, size, size), np.float64)
    ii, jj = np.indices((size, size))
    v[0] = np.where((ii + jj) % 2 == 0, amplitude, -amplitude)
    return v


def write_uap(path: Path, v: np.ndarray) -> Path:
    """A published UAP file: dataset ``v`` stored C x W x H (MATLAB order)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    with h5py.File(path, "w") as fh:
        fh.create_dataset("v", data=np.asarray(v, np.float64).transpose(0, 2, 1))
    return path


def write_same_norm(folder: Path, net: str = "CaffeNet", stem: str = "caffenet", fooling: Sequence[int] = (1,)) -> Path:
    """The five same-norm UAP files; those numbered in ``fooling`` are the checkerboard, the rest zero."""
    for k in range(1, 6):
        v = checkerboard() if k in fooling else np.zeros((3, SIZE, SIZE))
        write_uap(folder / "UAP" / net / f"{stem}_adv_iter_{k}.h5", v)
    return folder


def write_unseen_caffenet(folder: Path) -> Path:
    """FFF and NAG zero; S.Fool conv3 = checkerboard (227x227 file), fc6 zero."""
    (folder / "FFF").mkdir(parents=True, exist_ok=True)
    np.save(folder / "FFF" / "perturbation_caffenet_mean.npy", np.zeros((1, 227, 227, 3), np.float32))
    (folder / "NAG").mkdir(parents=True, exist_ok=True)
    np.save(folder / "NAG" / "perturbation19.npy", np.zeros((224, 224, 3), np.float32))
    (folder / "SFool").mkdir(parents=True, exist_ok=True)
    with h5py.File(folder / "SFool" / "alexnet_singular_uap_5_c3.h5", "w") as fh:
        fh.create_dataset("v", data=checkerboard(227))
    with h5py.File(folder / "SFool" / "alexnet_singular_uap_5_fc6.h5", "w") as fh:
        fh.create_dataset("v", data=np.zeros((3, 227, 227)))
    return folder
