"""Pluggable image data sources for training and evaluation.

Every source yields images as float32 ``(N, C, H, W)`` arrays in pixel units [0, 255]
(BGR channel order for colour nets; one channel for FashionNet) and int64 labels. The
perturbation is added in this space and the preset's mean is subtracted afterwards, so
sources never normalise. A source only has to implement ``take(indices)``; batching,
shuffling and subsets come from the small base class, so a later ImageNet folder or
list-file source plugs into ``train`` and ``evaluate`` unchanged.
"""
from __future__ import annotations

import abc
import gzip
import logging
import os
import struct
from functools import lru_cache
from pathlib import Path
from typing import Callable, Dict, Iterator, Optional, Sequence, Tuple

import numpy as np

from .core import ToolkitError

log = logging.getLogger(__name__)

FASHION_MNIST_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_FIX = "apt-get install dataset-fashion-mnist"
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")
_FASHION_FILES = {  # split -> (images file, labels file, image count)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
_IDX_UBYTE = 0x08  # IDX type code for unsigned bytes


class DataSource(abc.ABC):
    """A finite, indexable set of labelled images in pixel units.

    Subclasses implement ``__len__`` and ``take``; everything else is derived.
    """

    name: str = "data"

    @abc.abstractmethod
    def __len__(self) -> int:
        ...

    @abc.abstractmethod
    def take(self, indices: Sequence[int] | np.ndarray) -> Tuple[np.ndarray, np.ndarray]:
        """Images ``(len(indices), C, H, W)`` float32 in [0, 255] and their int64 labels."""

    @property
    def image_shape(self) -> Tuple[int, int, int]:
        return tuple(self.take([0])[0].shape[1:])  # type: ignore[return-value]

    def batches(self, batch_size: int, rng: Optional[np.random.Generator] = None
                ) -> Iterator[Tuple[np.ndarray, np.ndarray]]:
        """One pass over the source; shuffled when ``rng`` is given, the last batch may be short."""
        if int(batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
        order = rng.permutation(len(self)) if rng is not None else np.arange(len(self))
        for start in range(0, len(order), int(batch_size)):
            yield self.take(order[start:start + int(batch_size)])

    def arrays(self) -> Tuple[np.ndarray, np.ndarray]:
        """The whole source in memory (small sources only)."""
        return self.take(np.arange(len(self)))

    def subset(self, indices: Sequence[int] | np.ndarray) -> "Subset":
        return Subset(self, indices)

    def sample(self, n: int, rng: np.random.Generator) -> "Subset":
        """``n`` distinct images drawn at random (all of them, shuffled, when ``n >= len``)."""
        if int(n) < 1:
            raise ValueError(f"the number of images must be a positive integer, got {n}")
        return Subset(self, np.sort(rng.permutation(len(self))[:int(n)]))


class ArraySource(DataSource):
    """Images and labels already in memory (tests, small data sets)."""

    def __init__(self, images: np.ndarray, labels: np.ndarray, name: str = "arrays"):
        images = np.asarray(images, dtype=np.float32)
        labels = np.asarray(labels).astype(np.int64)
        if images.ndim != 4:
            raise ValueError(f"images must be (N, C, H, W), got shape {images.shape}")
        if labels.shape != (images.shape[0],):
            raise ValueError(f"labels must have shape ({images.shape[0]},), got {labels.shape}")
        self._images, self._labels, self.name = images, labels, name

    def __len__(self) -> int:
        return int(self._labels.shape[0])

    def take(self, indices):
        idx = np.asarray(indices, dtype=np.int64)
        return self._images[idx], self._labels[idx]

    @property
    def image_shape(self):
        return tuple(self._images.shape[1:])


class Subset(DataSource):
    """A fixed selection of another source's images, in the given order."""

    def __init__(self, source: DataSource, indices: Sequence[int] | np.ndarray):
        idx = np.asarray(indices, dtype=np.int64)
        if idx.ndim != 1 or (idx.size and (idx.min() < 0 or idx.max() >= len(source))):
            raise ValueError(f"subset indices must be a 1-D selection of 0..{len(source) - 1}")
        self.source, self.indices = source, idx
        self.name = f"{source.name}[{idx.size}]"

    def __len__(self) -> int:
        return int(self.indices.size)

    def take(self, indices):
        return self.source.take(self.indices[np.asarray(indices, dtype=np.int64)])

    @property
    def image_shape(self):
        return self.source.image_shape


# ---------------------------------------------------------------- IDX (MNIST format)
def read_idx(path: os.PathLike | str, ndim: int, fix: str = FASHION_MNIST_FIX) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes with ``ndim`` dimensions, validating its header.

    :param fix: the command that repairs a missing or corrupt file, quoted in the error.
    """
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{path}: file not found; install it with '{fix}'")
    try:
        with gzip.open(path, "rb") as fh:
            raw = fh.read()
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ToolkitError(f"{path}: not a readable gzip file ({exc}); reinstall it with '{fix}'") from None
    header = 4 + 4 * ndim
    if len(raw) < header:
        raise ToolkitError(f"{path}: truncated IDX header; reinstall it with '{fix}'")
    zero, dtype_code, dims = struct.unpack(">HBB", raw[:4])
    if zero != 0 or dtype_code != _IDX_UBYTE or dims != ndim:
        raise ToolkitError(f"{path}: bad IDX magic number 0x{raw[:4].hex()} (expected 0x0000{_IDX_UBYTE:02x}"
                           f"{ndim:02x}); reinstall it with '{fix}'")
    shape = struct.unpack(f">{ndim}I", raw[4:header])
    if len(raw) - header != int(np.prod(shape)):
        raise ToolkitError(f"{path}: IDX data has {len(raw) - header} bytes but its header says "
                           f"{int(np.prod(shape))}; reinstall it with '{fix}'")
    return np.frombuffer(raw, dtype=np.uint8, offset=header).reshape(shape)


@lru_cache(maxsize=4)
def _fashion_arrays(root: str, split: str) -> Tuple[np.ndarray, np.ndarray]:
    image_file, label_file, count = _FASHION_FILES[split]
    images = read_idx(Path(root) / image_file, 3)
    labels = read_idx(Path(root) / label_file, 1)
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
        if split not in _FASHION_FILES:
            raise ValueError(f"split must be one of {', '.join(_FASHION_FILES)}, got '{split}'")
        x, y = _fashion_arrays(str(root), split)
        super().__init__(x, y, name=f"fashion-mnist-{split}")
        self.split = split


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
