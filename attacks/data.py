"""Image sources for the attacks: a path -> (N, C, H, W) float32 BGR images in [0,255].

One small loader per kind of source in ``DATA_LOADERS`` (by file suffix), so a later
source (image folders) is one more entry. Images are expected *before* mean subtraction.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Callable, Dict, Optional, Sequence, Tuple

import numpy as np

from defense.core import ToolkitError

from .array_files import H5_ERRORS, read_h5_dataset, read_npy


def _h5_images(path: Path) -> np.ndarray:
    import h5py
    try:
        with h5py.File(path, "r") as f:
            name = "data" if "data" in f else None
    except H5_ERRORS:
        name = None
    return read_h5_dataset(path, name)


DATA_LOADERS: Dict[str, Callable[[Path], np.ndarray]] = {
    ".npy": read_npy,
    ".h5": _h5_images,
    ".hdf5": _h5_images,
}


def load_images(path: os.PathLike | str, input_shape: Optional[Sequence[int]] = None) -> np.ndarray:
    """Read images and check them against the network's (C, H, W)."""
    path = Path(path)
    loader = DATA_LOADERS.get(path.suffix.lower())
    if loader is None:
        raise ToolkitError(f"{path}: unsupported data file; give one of {', '.join(DATA_LOADERS)} "
                           "holding (N,C,H,W) float32 BGR images in [0,255]")
    x = np.asarray(loader(path), dtype=np.float32)
    if x.ndim != 4:
        raise ToolkitError(f"{path}: images must be a 4-D (N,C,H,W) array, got shape {x.shape}")
    if input_shape is not None and tuple(x.shape[1:]) != tuple(input_shape):
        raise ToolkitError(f"{path}: images have shape {tuple(x.shape[1:])} but the network takes "
                           f"{tuple(input_shape)}; resize/crop them first")
    if len(x) == 0:
        raise ToolkitError(f"{path}: holds no images")
    if not np.all(np.isfinite(x)):
        raise ToolkitError(f"{path}: images hold NaN or infinite values")
    return x


def split_holdout(n: int, fraction: float, rng: np.random.Generator) -> Tuple[np.ndarray, np.ndarray]:
    """Indices (attack set, held-out set): a seeded random split, held-out share ``fraction``."""
    if not 0.0 <= fraction < 1.0:
        raise ValueError(f"held-out fraction must be in [0, 1), got {fraction}")
    order = rng.permutation(n)
    k = int(round(fraction * n))
    return np.sort(order[k:]), np.sort(order[:k])
