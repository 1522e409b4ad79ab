"""The data-source base class: a finite, indexable set of labelled images in pixel units.

Every source yields images as float32 ``(N, C, H, W)`` arrays in pixel units [0, 255]
(BGR channel order for colour nets; one channel for FashionNet) and int64 labels. The
perturbation is added in this space and the preset's mean is subtracted afterwards, so
sources never normalise. A source only has to implement ``take(indices)``; batching,
shuffling and subsets come from the small base class, so any folder or list-file source
plugs into ``train`` and ``evaluate`` unchanged.
"""
from __future__ import annotations

import abc
from typing import Iterator, Optional, Sequence, Tuple

import numpy as np


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
