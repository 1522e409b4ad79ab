"""Fetch released caffemodels and check, before they are put in place, that they load.

A download counts as good only when (1) size and SHA-256 match the manifest when recorded,
(2) it parses as a caffemodel, and (3) every parameter layer of its deploy prototxt is in
it with the same blob shapes, which is exactly what ``caffe.Net.copy_from`` needs. Check (3)
is skipped with a warning while the prototxt has not been generated yet.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import List, Optional, Sequence

from defense.core import Shapes, ToolkitError, check_weights_fit, load_net, param_shapes, read_caffemodel
from defense.core import caffemodel_shapes as core_caffemodel_shapes

from .download import check_size_and_hash, fetch_file
from .manifest import WeightEntry

log = logging.getLogger(__name__)


def caffemodel_shapes(path: Path, label: str) -> Shapes:
    """``{layer: [blob shapes]}`` of a download (``defense.core.caffemodel_shapes``)."""
    try:
        model = read_caffemodel(path)
    except ToolkitError:
        raise ToolkitError(f"{label}: the download is not a valid caffemodel (truncated or corrupt)") from None
    return core_caffemodel_shapes(model, label)


def check_fits(stored: Shapes, wanted: Shapes, label: str, prototxt: Path) -> None:
    """Every parameter layer of the prototxt must be in the caffemodel with the same blob shapes."""
    check_weights_fit(label, wanted, prototxt, require_all=True, subject="the download",
                      fix="it is not the caffemodel of this prototxt", stored=stored)


def prototxt_shapes(prototxt: Path) -> Shapes:
    """Parameter shapes of a deploy prototxt, from a CPU-built net without weights."""
    return param_shapes(load_net(prototxt))


def caffemodel_verifier(entry: WeightEntry):
    """The format check of ``entry``'s download (see the module docstring)."""

    def verify(path: Path) -> None:
        stored = caffemodel_shapes(path, entry.name)
        if not entry.prototxt.is_file():
            log.warning("%s: %s not found, so the layers were not checked against it "
                        "(generate it with 'python -m defense.generate --all')", entry.name, entry.prototxt)
            return
        try:
            wanted = prototxt_shapes(entry.prototxt)
        except ToolkitError as exc:  # a broken prototxt is no reason to throw the download away
            log.warning("%s: layers not checked, the prototxt does not build (%s)", entry.name, exc)
            return
        check_fits(stored, wanted, entry.name, entry.prototxt)

    return verify


def fetch_weights(entries: Sequence[WeightEntry], base_url: Optional[str] = None,
                  force: bool = False) -> List[Path]:
    """Download and verify ``entries`` in order; stops at the first failure (ToolkitError)."""
    return [fetch_file(e.remote, base_url=base_url, force=force, verify=caffemodel_verifier(e))
            for e in entries]


def status(entry: WeightEntry, check: bool = False) -> str:
    """``missing``, ``present`` or (with ``check``) ``verified``/``bad: ...`` for ``entry.dest``."""
    if not entry.dest.is_file():
        return "missing"
    if not check:
        return "present"
    try:
        check_size_and_hash(entry.remote, entry.dest, what=str(entry.dest))
        caffemodel_verifier(entry)(entry.dest)
    except ToolkitError as exc:
        return f"bad: {exc}"
    return "verified"
