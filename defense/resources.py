"""Where a network's baseline/FRU files and the paper's perturbations are found on disk.

Evaluation (``defense.tables``) and the single-image demo (``defense_example.py``) share
these lookups, so a missing file always gives the same one-line error naming the file and
the command that fetches it:

- caffemodels and deploy prototxts: ``weights/manifest.json`` (``python -m weights fetch <Net>``),
  or ``defense.paper.DEMO`` for networks outside the manifest (FashionNet);
- published perturbations: a local copy of the authors' ``Attack_samples/`` folder, names as
  in ``attacks/published_manifest.json`` (``attacks.published.fetch_published``);
- single perturbation files in any of those formats, the toolkit's HDF5 or plain ``.npy``.
"""
from __future__ import annotations

import logging
import os
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

import numpy as np

from .core import ToolkitError, caffe_pb2, read_caffemodel, write_net_param
from .paper import demo_defaults
from .presets import NetPreset, get_preset

log = logging.getLogger(__name__)

ROOT = Path(__file__).resolve().parent.parent
PUBLISHED_PERTURBATIONS = ROOT / "Attack_samples"
"""Default folder of the published perturbation files (the authors' repository layout)."""

Prototxt = Union[Path, "caffe_pb2.NetParameter"]


@dataclass(frozen=True)
class NetFiles:
    """A deploy net (file, or a NetParameter built from the preset) and its caffemodel."""

    prototxt: Prototxt
    weights: Path
    role: str      # "baseline" or "FRU"
    fetch: str     # the command that puts ``weights`` in place

    def describe(self) -> dict:
        proto = str(self.prototxt) if isinstance(self.prototxt, Path) else "<built from the preset>"
        return {"prototxt": proto, "weights": str(self.weights)}


@dataclass(frozen=True)
class ModelPair:
    net: str
    baseline: NetFiles
    fru: NetFiles


def _built_deploy(preset: NetPreset, fru: bool) -> "caffe_pb2.NetParameter":
    """A deploy net for presets without a committed prototxt (FashionNet)."""
    if preset.name != "FashionNet":
        raise ToolkitError(f"{preset.deploy_fru if fru else preset.deploy}: deploy prototxt not found; "
                           "regenerate it with 'python -m defense.generate --all'")
    from .networks import fashionnet
    base = fashionnet.build(preset)
    if not fru:
        return base
    from .fru import build_fru
    return build_fru(base, preset.targets, preset.mode, source=preset.name).deploy


def model_pair(net: str, manifest: os.PathLike | str | None = None,
               weights_dir: os.PathLike | str | None = None, defense: str = "primary") -> ModelPair:
    """The baseline and FRU files of ``net``: from the weights manifest, else ``paper.DEMO``.

    :param weights_dir: folder replacing the manifest's ``weights/`` (files at ``<dir>/<Net>/<file>``).
    """
    from weights.manifest import load_manifest, select
    preset = get_preset(net)
    entries = load_manifest(manifest)
    if any(e.net.lower() == preset.name.lower() for e in entries):
        chosen = select(entries, preset.name, defense=defense)
        base = next(e for e in chosen if e.kind == "baseline")
        fru = next(e for e in chosen if e.kind == "fru")
        fetch = f"python -m weights fetch {preset.name}" + ("" if defense == "primary" else f" --defense {defense}")

        def files(entry, role: str) -> NetFiles:
            weights = entry.dest if weights_dir is None else Path(weights_dir) / entry.dest.parent.name / entry.dest.name
            return NetFiles(entry.prototxt, weights, role, fetch)
        return ModelPair(preset.name, files(base, "baseline"), files(fru, "FRU"))
    demo = demo_defaults(preset.name)
    if demo.baseline is None or demo.fru is None:
        raise ToolkitError(f"{preset.name} is neither in the weights manifest nor has demo files in defense/paper.py")

    def demo_files(spec, role: str, fru: bool) -> NetFiles:
        proto, weights = spec
        weights_path = ROOT / weights if weights_dir is None else Path(weights_dir) / preset.name / Path(weights).name
        prototxt: Prototxt = ROOT / proto if proto else _built_deploy(preset, fru)
        return NetFiles(prototxt, weights_path, role, demo.fetch_hint.get("fru" if fru else "baseline", "see README"))
    return ModelPair(preset.name, demo_files(demo.baseline, "baseline", False), demo_files(demo.fru, "FRU", True))


def require_weights(files: NetFiles, net: str) -> Path:
    """The caffemodel path, or a one-line ToolkitError naming it and the fetch command."""
    if not files.weights.is_file():
        raise ToolkitError(f"{files.weights}: {files.role} caffemodel of {net} not found; "
                           f"fetch it with '{files.fetch}'")
    return files.weights


def has_all_layers(weights: Path, prototxt: Prototxt) -> bool:
    """Whether a caffemodel holds every parameter layer of a deploy net (by name)."""
    from .core import read_net_param
    param = read_net_param(prototxt) if isinstance(prototxt, Path) else prototxt
    stored = read_caffemodel(weights)
    have = {layer.name for layer in list(stored.layer) + list(stored.layers) if layer.blobs}
    parametric = {"Convolution", "InnerProduct", "BatchNorm", "Scale", "Deconvolution", "PReLU", "Bias", "Embed"}
    return all(layer.name in have for layer in param.layer if layer.type in parametric)


def load_classifier(files: NetFiles, preset: NetPreset, batch_size: Optional[int] = None, weights: Optional[Path] = None):
    """A ``CaffeClassifier`` over ``files`` (or ``weights`` instead of ``files.weights``)."""
    from attacks.classifier import CaffeClassifier
    weights = Path(weights or files.weights)
    kw = dict(batch_size=int(batch_size or preset.eval_batch))
    if isinstance(files.prototxt, Path):
        return CaffeClassifier.from_files(files.prototxt, weights, preset.mean_bgr, **kw)
    with tempfile.TemporaryDirectory() as tmp:
        path = write_net_param(Path(tmp) / f"deploy_{preset.file_stem}.prototxt", files.prototxt)
        return CaffeClassifier.from_files(path, weights, preset.mean_bgr, **kw)


# ---------------------------------------------------------------- perturbations
FORMATS = ("uap", "fff", "fff1", "nag", "sfool", "gap", "guap", "spgd", "toolkit", "npy")


def published_path(name: str, folder: os.PathLike | str) -> Path:
    return Path(folder) / name


def missing_published(names: Sequence[str], folder: os.PathLike | str) -> List[str]:
    return [n for n in names if not published_path(n, folder).is_file()]


def fetch_missing(names: Sequence[str], folder: os.PathLike | str) -> List[Path]:
    """Download the published files among ``names`` that ``folder`` lacks (verified)."""
    from attacks.published import fetch_published
    missing = missing_published(names, folder)
    return fetch_published(missing, folder) if missing else []


def load_file(path: os.PathLike | str, fmt: str, expect: Optional[tuple] = None) -> np.ndarray:
    """One perturbation file as a float32 ``(C, H, W)`` array in pixel units (BGR).

    :param fmt: a published format (``uap``, ``fff``, ``fff1`` = FFF cropped at offset 1 as in the
        published demo, ``nag``, ``sfool``, ``gap``, ``guap``, ``spgd``), ``toolkit`` (the toolkit's
        HDF5 file; a stack is an error here) or ``npy`` (a plain ``(C, H, W)`` array).
    :param expect: the network's input shape, checked here so Caffe never sees a wrong one.
    """
    from attacks.array_files import read_npy
    from attacks.perturbation_io import load_fff_npy, load_perturbation, load_published
    path = Path(path)
    if fmt not in FORMATS:
        raise ValueError(f"perturbation format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    if not path.is_file():
        raise ToolkitError(f"{path}: perturbation file not found; check the path")
    if fmt == "fff1":
        v = load_fff_npy(path, offset=1)
    elif fmt == "toolkit":
        v = load_perturbation(path)[0]
    elif fmt == "npy":
        v = np.asarray(read_npy(path), dtype=np.float32)
    else:
        v = load_published(fmt, path)
    if v.ndim == 4 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 3:
        raise ToolkitError(f"{path}: expected one (C, H, W) perturbation, got shape {v.shape}")
    if expect is not None and tuple(v.shape) != tuple(expect):
        raise ToolkitError(f"{path}: perturbation shape {tuple(v.shape)} does not fit the network input {tuple(expect)}")
    if not np.all(np.isfinite(v)):
        raise ToolkitError(f"{path}: perturbation holds NaN or infinite values")
    return np.ascontiguousarray(v, dtype=np.float32)
