"""Where a network's baseline/FRU files, the paper's perturbations and its demo image are found.

Evaluation (``defense.tables``) and the single-image demo (``defense_example.py``) share
these lookups. A published file that is missing is downloaded, verified and cached
(``weights.download.fetch_file``) unless downloads are off (``--offline``, ``$FRU_OFFLINE``),
in which case the one-line error names the file, the address to fetch it from and where to
put it:

- caffemodels and deploy prototxts: ``weights/manifest.json`` (``python -m weights fetch <Net>``),
  or ``defense.paper.DEMO`` for networks outside the manifest (FashionNet, never downloaded);
- published perturbations: a copy of the authors' ``Attack_samples/`` folder (default
  ``$FRU_DOWNLOAD_DIR/Attack_samples``), names as in ``attacks/published_manifest.json``,
  read by ``attacks.perturbation_io.load_any``;
- the authors' demo image, ``test_image_icecream.JPEG`` (``defense.paper.DEMO_IMAGE``).
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

import numpy as np

from attacks.classifier import CaffeClassifier
from attacks.published import fetch_published
from weights.download import RemoteFile, download_dir, fetch_file
from weights.fetch import caffemodel_verifier
from weights.manifest import WeightEntry, load_manifest, select

from ..core import ToolkitError, caffemodel_shapes, load_net, param_shapes, weights_misfit
from ..paper import DEMO_IMAGE, demo_defaults
from ..presets import REPO_ROOT, NetPreset, get_preset
from .runtime import classifier_for

log = logging.getLogger(__name__)



@dataclass(frozen=True)
class NetFiles:
    """A deploy prototxt and its caffemodel."""

    prototxt: Path
    weights: Path
    role: str      # "baseline" or "FRU"
    fetch: str     # the command that puts ``weights`` in place
    entry: Optional[WeightEntry] = None  # the manifest entry that downloads ``weights``

    def describe(self) -> dict:
        return {"prototxt": str(self.prototxt), "weights": str(self.weights)}


@dataclass(frozen=True)
class ModelPair:
    net: str
    baseline: NetFiles
    fru: NetFiles


def model_pair(net: str, manifest: os.PathLike | str | None = None,
               weights_dir: os.PathLike | str | None = None, defense: str = "primary") -> ModelPair:
    """The baseline and FRU files of ``net``: from the weights manifest, else ``paper.DEMO``.

    :param weights_dir: folder replacing the manifest's ``weights/`` (files at ``<dir>/<Net>/<file>``).
    """
    preset = get_preset(net)
    entries = load_manifest(manifest)
    if any(e.net.lower() == preset.name.lower() for e in entries):
        chosen = select(entries, preset.name, defense=defense)
        base = next(e for e in chosen if e.kind == "baseline")
        fru = next(e for e in chosen if e.kind == "fru")
        fetch = f"python -m weights fetch {preset.name}" + ("" if defense == "primary" else f" --defense {defense}")

        def files(entry, role: str) -> NetFiles:
            if weights_dir is None:
                return NetFiles(entry.prototxt, entry.dest, role, fetch, entry)
            return NetFiles(entry.prototxt, preset.weights(root=weights_dir, file=entry.dest.name), role, fetch)
        return ModelPair(preset.name, files(base, "baseline"), files(fru, "FRU"))
    demo = demo_defaults(preset.name)
    if demo.baseline is None or demo.fru is None:
        raise ToolkitError(f"{preset.name} is neither in the weights manifest nor has demo files in defense/paper.py")

    def demo_files(spec, role: str, fru: bool) -> NetFiles:
        proto, weights = spec
        weights_path = REPO_ROOT / weights if weights_dir is None else preset.weights(root=weights_dir,
                                                                                    file=Path(weights).name)
        return NetFiles(REPO_ROOT / proto, weights_path, role,
                        demo.fetch_hint.get("fru" if fru else "baseline", "see README"))
    return ModelPair(preset.name, demo_files(demo.baseline, "baseline", False), demo_files(demo.fru, "FRU", True))


def require_weights(files: NetFiles, net: str, offline: Optional[bool] = None) -> Path:
    """The caffemodel path, downloaded first (and verified) when the manifest knows where from;
    else a one-line ToolkitError naming it and the command that fetches it."""
    if files.entry is not None:
        return fetch_file(files.entry.remote, verify=caffemodel_verifier(files.entry), offline=offline)
    if not files.weights.is_file():
        raise ToolkitError(f"{files.weights}: {files.role} caffemodel of {net} not found; "
                           f"fetch it with '{files.fetch}'")
    return files.weights


def has_all_layers(weights: Path, prototxt: Path) -> bool:
    """Whether a caffemodel holds every parameter layer of a deploy net, with its shapes."""
    return weights_misfit(caffemodel_shapes(weights), param_shapes(load_net(prototxt)), require_all=True) is None


def load_classifier(files: NetFiles, preset: NetPreset, batch_size: Optional[int] = None,
                    weights: Optional[Path] = None, runtime: str = "caffe",
                    sample: Optional[np.ndarray] = None) -> CaffeClassifier:
    """A classifier over ``files`` (or ``weights`` instead of ``files.weights``) in ``runtime``
    (an onnxruntime one checked against Caffe on ``sample``: ``runtime.classifier_for``)."""
    return classifier_for(files.prototxt, Path(weights or files.weights), preset.mean_bgr, runtime, sample=sample,
                          batch_size=int(batch_size or preset.eval_batch))


# ---------------------------------------------------------------- published perturbations
def published_path(name: str, folder: os.PathLike | str) -> Path:
    return Path(folder) / name


def missing_published(names: Sequence[str], folder: os.PathLike | str) -> List[str]:
    return [n for n in names if not published_path(n, folder).is_file()]


def fetch_missing(names: Sequence[str], folder: os.PathLike | str, offline: Optional[bool] = None) -> List[Path]:
    """Download the published files among ``names`` that ``folder`` lacks (verified); with
    ``offline``, a one-line ToolkitError naming the first missing one and its address."""
    missing = missing_published(names, folder)
    return fetch_published(missing, folder, offline=offline) if missing else []


def demo_image(offline: Optional[bool] = None) -> Path:
    """The authors' demo image, ``$FRU_DOWNLOAD_DIR/test_image_icecream.JPEG``, fetched when missing.

    Its size and SHA-256 are known, so nothing but the published image passes the download's
    check; decoding problems of a user's ``--input`` are ``load_image``'s."""
    remote = RemoteFile(name=DEMO_IMAGE.name, dest=download_dir() / DEMO_IMAGE.name, file=DEMO_IMAGE.name,
                        url=DEMO_IMAGE.url, size=DEMO_IMAGE.size, sha256=DEMO_IMAGE.sha256)
    return fetch_file(remote, offline=offline)

