"""Random-weight preset nets for the GPU tests and the GPU check (``caffe_build/gpu_check.py``):
library code, so the check imports it from the package rather than from ``tests/``."""
from __future__ import annotations

import subprocess
import sys
from pathlib import Path
from typing import Dict, List

import numpy as np

from ..core import caffe, load_net, param_shapes, read_net_param, set_net_blobs, write_net_param
from ..presets import PRESETS, get_preset
from .surgery import random_blobs

NETS = tuple(PRESETS)
ROOT = Path(__file__).resolve().parents[2]


def layer_types(net: "caffe.Net") -> Dict[str, str]:
    return {name: net.layer_dict[name].type for name in net._layer_names}


def random_net(prototxt: Path, batch: int, seed: int = 0, backward: bool = False) -> "caffe.Net":
    """The committed deploy net at ``batch`` with well-scaled random weights (fixed by ``seed``)."""
    net = load_net(prototxt, force_backward=backward)
    shape = net.blobs["data"].data.shape
    net.blobs["data"].reshape(batch, *shape[1:])
    net.reshape()
    set_net_blobs(net, random_blobs(param_shapes(net), layer_types(net), np.random.default_rng(seed)))
    return net


def random_input(net: "caffe.Net", seed: int = 1) -> np.ndarray:
    shape = net.blobs["data"].data.shape
    return (np.random.default_rng(seed).standard_normal(shape) * 50).astype(np.float32)


def generated_fru_dir(name: str, out: Path, batch: int, seed: int = 0) -> Path:
    """``python -m defense.generate`` output (train net, solver, init.caffemodel) for a preset,
    on its baseline weights where present (FashionNet's are shipped), else on random ones."""
    preset = get_preset(name)
    weights = preset.weights()
    if not weights.is_file():
        weights = out / "base.caffemodel"
        random_net(preset.deploy, 1, seed).save(str(weights))
    cmd = [sys.executable, "-m", "defense.generate", "--preset", name, "--weights", str(weights),
           "--out", str(out / "fru"), "--batch", str(batch), "--seed", str(seed)]
    subprocess.run(cmd, check=True, capture_output=True, cwd=ROOT)
    # Dropout draws its masks from cuRAND on the GPU and Boost on the CPU: drop it (in place,
    # so the graph is otherwise the same) to compare the two devices step for step.
    train_net = out / "fru" / "train.prototxt"
    param = read_net_param(train_net)
    kept = [layer for layer in param.layer if layer.type != "Dropout"]
    del param.layer[:]
    param.layer.extend(kept)
    write_net_param(train_net, param)
    return out / "fru"


def blob_names_changed(before: Dict[str, List[np.ndarray]], after: Dict[str, List[np.ndarray]]) -> List[str]:
    return sorted(k for k in before if any(not np.array_equal(a, b) for a, b in zip(before[k], after[k])))
