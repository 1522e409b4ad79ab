"""Fashion-MNIST (Xiao et al. 2017) from the Debian package's IDX files (``dataset-fashion-mnist``)."""
from __future__ import annotations

import logging
import os
from functools import lru_cache
from pathlib import Path
from typing import Tuple

import numpy as np

from ..core import ToolkitError, read_idx
from ..presets import FASHION_MNIST_CLASSES, FASHION_MNIST_DIR, FASHION_MNIST_FILES, FASHION_MNIST_FIX
from .base import ArraySource

log = logging.getLogger(__name__)


@lru_cache(maxsize=4)
def _fashion_arrays(root: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    image_file, label_file, count = FASHION_MNIST_FILES[split]
    images = read_idx(Path(root) / image_file, 3, FASHION_MNIST_FIX)
    labels = read_idx(Path(root) / label_file, 1, FASHION_MNIST_FIX)
    if images.shape != (count, 28, 28):
        raise ToolkitError(f"{Path(root) / image_file}: expected {count} images of 28x28, got shape "
                           f"{images.shape}; reinstall it with '{FASHION_MNIST_FIX}'")
    if labels.shape != (count,) or labels.max() >= len(FASHION_MNIST_CLASSES):
        raise ToolkitError(f"{Path(root) / label_file}: expected {count} labels in 0..9; "
                           f"reinstall it with '{FASHION_MNIST_FIX}'")
    log.debug("loaded Fashion-MNIST %s from %s", split, root)
    x = images.astype(np.float32)[:, None, :, :]
    x.setflags(write=False)
    y = labels.astype(np.int64)
    y.setflags(write=False)
    return x, y


class FashionMnist(ArraySource):
    """Fashion-MNIST (Xiao et al. 2017) from the Debian package's IDX files.

    Images are ``(N, 1, 28, 28)`` float32 in [0, 255]: one grey channel, which FashionNet
    treats as its "BGR" input.

    :param split: ``train`` (60,000 images) or ``test`` (10,000).
    :param root: folder holding the four ``*-ubyte.gz`` files.
    """

    classes = FASHION_MNIST_CLASSES

    def __init__(self, split: str = "test", root: os.PathLike | str = FASHION_MNIST_DIR):
        if split not in FASHION_MNIST_FILES:
            raise ValueError(f"split must be one of {', '.join(FASHION_MNIST_FILES)}, got '{split}'")
        x, y = _fashion_arrays(str(root), split)
        super().__init__(x, y, name=f"fashion-mnist-{split}")
        self.split = split
