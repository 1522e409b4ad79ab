"""Fetch released caffemodels and check, before they are put in place, that they load.

A download counts as good only when (1) size and SHA-256 match the manifest when recorded,
(2) it parses as a caffemodel, and (3) every parameter layer of its deploy prototxt is in
it with the same blob shapes, which is exactly what ``caffe.Net.copy_from`` needs. Check (3)
is skipped with a warning while the prototxt has not been generated yet.
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from defense.core import ToolkitError, load_net, param_shapes, read_caffemodel

from .download import check_size_and_hash, fetch_file
from .manifest import WeightEntry

log = logging.getLogger(__name__)

Shapes = Dict[str, List[tuple]]


def _blob_shape(blob) -> tuple:
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    return (blob.num, blob.channels, blob.height, blob.width)  # legacy 4-D blob


def caffemodel_shapes(path: Path, label: str) -> Shapes:
    """``{layer: [blob shapes]}`` of a caffemodel, read without converting its data."""
    try:
        net = read_caffemodel(path)
    except ToolkitError:
        raise ToolkitError(f"{label}: the download is not a valid caffemodel (truncated or corrupt)") from None
    shapes: Shapes = {}
    for layer in list(net.layer) + list(net.layers):
        if not layer.blobs:
            continue
        layer_shapes = []
        for blob in layer.blobs:
            shape = _blob_shape(blob)
            stored = len(blob.double_data) or len(blob.data)
            if stored != int(np.prod(shape)):
                raise ToolkitError(f"{label}: layer '{layer.name}' of the download holds {stored} values "
                                   f"for shape {shape} (corrupt file)")
            layer_shapes.append(shape)
        shapes[layer.name] = layer_shapes
    return shapes


def _same_shape(stored: tuple, wanted: tuple) -> bool:
    """Equal, or a legacy 4-D blob whose leading 1s pad the wanted shape (Caffe accepts both)."""
    if stored == wanted:
        return True
    return len(stored) == 4 and len(wanted) < 4 and stored == (1,) * (4 - len(wanted)) + tuple(wanted)


def check_fits(stored: Shapes, wanted: Shapes, label: str, prototxt: Path) -> None:
    """Every parameter layer of the prototxt must be in the caffemodel with the same blob shapes."""
    missing = [name for name in wanted if name not in stored]
    if missing:
        more = f" (+{len(missing) - 3} more)" if len(missing) > 3 else ""
        raise ToolkitError(f"{label}: the download lacks layer(s) {', '.join(missing[:3])}{more} that "
                           f"{prototxt} needs; it is not the caffemodel of this prototxt")
    for name, want in wanted.items():
        got = stored[name]
        if len(got) != len(want) or not all(_same_shape(g, w) for g, w in zip(got, want)):
            raise ToolkitError(f"{label}: layer '{name}' of the download has blob shapes {got} but "
                               f"{prototxt} needs {want}; it is not the caffemodel of this prototxt")


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
