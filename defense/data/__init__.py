"""Pluggable image data sources for training and evaluation, and their registry.

``base`` holds the small base class (``DataSource``: ``take(indices)`` plus derived batching,
subsets and sampling), ``fashion`` the Fashion-MNIST source, ``imagenet`` the ILSVRC2012
index and its source, ``preprocess`` the published ImageNet preprocessing. ``open_source``
looks a source up by name.
"""
from __future__ import annotations

from typing import Callable, Dict

from ..core import ToolkitError
from ..presets import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR  # noqa: F401  (re-exported)
from .base import ArraySource, DataSource, Subset  # noqa: F401
from .fashion import FashionMnist


def _imagenet(spec: str, preset) -> DataSource:
    from .imagenet import ImageNetIndex  # Pillow decoding is only needed for ImageNet

    return ImageNetIndex(spec, preset)


DATA_SOURCES: Dict[str, Callable[[str, object], DataSource]] = {
    "fashion-mnist": lambda split, preset: FashionMnist(split),
    "imagenet": _imagenet,
}
"""Name -> factory ``(spec, preset)``: ``spec`` is a split (fashion-mnist) or an index file made by
``python -m defense.imagenet prepare`` (imagenet, preprocessed as the preset publishes)."""


def open_source(name: str, spec: str, preset=None) -> DataSource:
    """Look a data source up by name; the error lists the known names."""
    if name not in DATA_SOURCES:
        raise ToolkitError(f"unknown data source '{name}'; known: {', '.join(DATA_SOURCES)}")
    return DATA_SOURCES[name](spec, preset)
