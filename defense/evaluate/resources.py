"""Where a network's baseline/FRU files and the paper's perturbations are found on disk.

Evaluation (``defense.tables``) and the single-image demo (``defense_example.py``) share
these lookups, so a missing file always gives the same one-line error naming the file and
the command that fetches it:

- caffemodels and deploy prototxts: ``weights/manifest.json`` (``python -m weights fetch <Net>``),
  or ``defense.paper.DEMO`` for networks outside the manifest (FashionNet);
- published perturbations: a local copy of the authors' ``Attack_samples/`` folder, names as
  in ``attacks/published_manifest.json`` (``attacks.published.fetch_published``), read by
  ``attacks.perturbation_io.load_any``.
"""
from __future__ import annotations

import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from attacks.classifier import CaffeClassifier
from attacks.published import fetch_published
from weights.manifest import load_manifest, select

from ..core import ToolkitError, caffemodel_shapes, load_net, param_shapes, weights_misfit
from ..generate.onnx_graph import classifier_for
from ..paper import demo_defaults
from ..presets import REPO_ROOT, NetPreset, get_preset

log = logging.getLogger(__name__)

PUBLISHED_PERTURBATIONS = REPO_ROOT / "Attack_samples"
"""Default folder of the published perturbation files (the authors' repository layout)."""


@dataclass(frozen=True)
class NetFiles:
    """A deploy prototxt and its caffemodel."""

    prototxt: Path
    weights: Path
    role: str      # "baseline" or "FRU"
    fetch: str     # the command that puts ``weights`` in place

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
            weights = entry.dest if weights_dir is None else preset.weights(root=weights_dir, file=entry.dest.name)
            return NetFiles(entry.prototxt, weights, role, fetch)
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


def require_weights(files: NetFiles, net: str) -> Path:
    """The caffemodel path, or a one-line ToolkitError naming it and the fetch command."""
    if not files.weights.is_file():
        raise ToolkitError(f"{files.weights}: {files.role} caffemodel of {net} not found; "
                           f"fetch it with '{files.fetch}'")
    return files.weights


def has_all_layers(weights: Path, prototxt: Path) -> bool:
    """Whether a caffemodel holds every parameter layer of a deploy net, with its shapes."""
    return weights_misfit(caffemodel_shapes(weights), param_shapes(load_net(prototxt)), require_all=True) is None


def load_classifier(files: NetFiles, preset: NetPreset, batch_size: Optional[int] = None,
                    weights: Optional[Path] = None, runtime: str = "caffe") -> CaffeClassifier:
    """A classifier over ``files`` (or ``weights`` instead of ``files.weights``) in ``runtime``."""
    return classifier_for(files.prototxt, Path(weights or files.weights), preset.mean_bgr, runtime,
                          batch_size=int(batch_size or preset.eval_batch))


# ---------------------------------------------------------------- published perturbations
def published_path(name: str, folder: os.PathLike | str) -> Path:
    return Path(folder) / name


def missing_published(names: Sequence[str], folder: os.PathLike | str) -> List[str]:
    return [n for n in names if not published_path(n, folder).is_file()]


def fetch_missing(names: Sequence[str], folder: os.PathLike | str) -> List[Path]:
    """Download the published files among ``names`` that ``folder`` lacks (verified)."""
    missing = missing_published(names, folder)
    return fetch_published(missing, folder) if missing else []
