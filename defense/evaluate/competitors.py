"""The trained competitor defences (``generate.competitors``) as rows of an evaluation.

A trained competitor (PRN and HGD prepended, FD inside the net) is a deploy net like any other,
loaded by ``classifier_for``; PRN with its detector (``defense.train.detector``) is the row ``PRN+detector``, whose detection
and false-alarm rates are reported beside its metrics.
"""
from __future__ import annotations

from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core import ToolkitError
from ..data import DataSource
from ..generate.competitors import COMPETITORS, get_competitor
from ..train.detector import Detector, DetectorGated, detection_rates, detector_flags
from .compare import Model

DETECTOR_ROW = "PRN+detector"


def parse_competitors(specs: Sequence[Sequence[str]], option: str = "--competitor") -> List[Tuple[str, Path, Path]]:
    """``NAME PROTOTXT WEIGHTS`` triples of ``option``, names checked (files are checked on loading)."""
    out = []
    for name, prototxt, weights in specs:
        key = name.lower()
        if key not in COMPETITORS or get_competitor(key).kind == "preprocess":
            trained = [n for n, c in COMPETITORS.items() if c.kind != "preprocess"]
            raise ToolkitError(f"{option}: '{name}' is not a trained competitor; valid: {', '.join(trained)}")
        if key in [k for k, _, _ in out]:
            raise ToolkitError(f"{option}: '{name}' is given twice")
        out.append((key, Path(prototxt), Path(weights)))
    return out


def competitor_models(specs: Sequence[Tuple[str, Path, Path]], load, baseline,
                      detector: Optional[Path] = None) -> List[Model]:
    """A ``Model`` per competitor (``load(prototxt, weights)`` gives its classifier), and
    ``PRN+detector`` when a detector file is given (it needs the PRN among ``specs``)."""
    models, loaded = [], {}
    for name, prototxt, weights in specs:
        loaded[name] = load(prototxt, weights)
        models.append(Model(get_competitor(name).title, loaded[name]))
    if detector is not None:
        if "prn" not in loaded:
            raise ToolkitError("--detector gates the PRN: give --competitor prn PROTOTXT WEIGHTS too")
        models.append(Model(DETECTOR_ROW, DetectorGated(loaded["prn"], baseline, Detector.load(detector))))
    return models


def detector_report(models: Sequence[Model], source: DataSource, perturbations: np.ndarray,
                    choice: np.ndarray, batch_size: int) -> Dict[str, float]:
    """Detection and false-alarm rates of the ``PRN+detector`` row on ``source`` (empty without one)."""
    gated = next((m.classifier for m in models if m.name == DETECTOR_ROW), None)
    if gated is None:
        return {}
    x, _ = source.take(np.arange(len(source)))
    x = np.asarray(x, np.float32)
    flags = [detector_flags(gated.detector, gated.prn, images, batch_size) for images in (x, x + perturbations[choice])]
    return detection_rates(flags[0], flags[1:])
