"""What the solver is fed: the run's options and the mixed clean/perturbed mini-batches.

Each mini-batch mixes clean and perturbed images (Borkar et al., CVPR 2020, "every mini-batch
contains both"): by default half of it gets one perturbation each, drawn at random from the
given set, added in pixel space before the mean is subtracted and, as published, not clipped.
The batch of iteration ``i`` and Caffe's random draws in it (Dropout masks) depend only on
``(seed, i)``, so a run resumed from a ``.solverstate`` is byte-identical to an uninterrupted one.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Optional, Sequence, Tuple

import numpy as np

from ..data import DataSource


# ---------------------------------------------------------------- options
@dataclass(frozen=True)
class TrainOptions:
    """How a run feeds and snapshots the solver.

    :param max_iter: last iteration (default: the solver file's ``max_iter``).
    :param snapshot_every: snapshot period in iterations (default: the solver file's ``snapshot``;
        0 = only at the end and on Ctrl-C).
    :param seed: seeds the data order, the perturbation draw and, per iteration, Caffe's RNG.
    :param clean_fraction: share of each mini-batch left clean; the rest is perturbed.
    :param clip: clip perturbed images to [0, 255] (the published training did not).
    :param clean_blob: Input of a train net fed the unperturbed batch (HGD), when the net has one.
    """

    max_iter: Optional[int] = None
    snapshot_every: Optional[int] = None
    seed: int = 0
    clean_fraction: float = 0.5
    clip: bool = False
    data_blob: str = "data"
    label_blob: str = "label"
    loss_blob: str = "loss"
    clean_blob: str = "clean"
    progress: bool = True

    def __post_init__(self):
        if self.max_iter is not None and int(self.max_iter) < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter}")
        if self.snapshot_every is not None and int(self.snapshot_every) < 0:
            raise ValueError(f"snapshot_every must be 0 or a positive integer, got {self.snapshot_every}")
        if not 0.0 <= float(self.clean_fraction) <= 1.0:
            raise ValueError(f"clean_fraction must be in [0, 1], got {self.clean_fraction}")


# ---------------------------------------------------------------- data feeding
def stack_perturbations(perturbations: Sequence[np.ndarray], image_shape: Tuple[int, ...]) -> np.ndarray:
    """Check every perturbation is a finite (C, H, W) array of the images' shape; stack them."""
    out = []
    for k, p in enumerate(perturbations):
        p = np.asarray(p, dtype=np.float32)
        if p.shape != tuple(image_shape):
            raise ValueError(f"perturbation {k} has shape {p.shape}, the images {tuple(image_shape)}")
        if not np.all(np.isfinite(p)):
            raise ValueError(f"perturbation {k} holds NaN or infinite values")
        out.append(p)
    return np.stack(out) if out else np.zeros((0,) + tuple(image_shape), np.float32)


class EpochSampler:
    """Image indices for any stretch of a run: a fresh seeded permutation per epoch."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError("the data source holds no images")
        self.n, self.seed = int(n), int(seed)
        self._epoch, self._perm = -1, np.empty(0, np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm

    def indices(self, start: int, count: int) -> np.ndarray:
        pos = np.arange(start, start + count, dtype=np.int64)
        out = np.empty(count, np.int64)
        for epoch in np.unique(pos // self.n):
            sel = pos // self.n == epoch
            out[sel] = self._permutation(int(epoch))[pos[sel] % self.n]
        return out


def batch_indices(sampler: EpochSampler, batch_size: int, iteration: int, rank: int = 0, world: int = 1) -> np.ndarray:
    """The data-source indices of ``iteration``'s mini-batch on worker ``rank`` of ``world``."""
    return sampler.indices((iteration * world + rank) * batch_size, batch_size)


def mixed_batch(source: DataSource, perturbations: np.ndarray, sampler: EpochSampler, batch_size: int,
                iteration: int, options: TrainOptions, rank: int = 0, world: int = 1
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixel-unit mini-batch of ``iteration``: clean images first, then perturbed ones.

    :returns: images, labels, and for each image the index of its perturbation (-1 = clean).
    """
    x, y = source.take(batch_indices(sampler, batch_size, iteration, rank, world))
    x = np.array(x, dtype=np.float32, copy=True)
    n_clean = int(round(batch_size * options.clean_fraction)) if len(perturbations) else batch_size
    rng = np.random.default_rng([options.seed, iteration, rank, 1])
    which = np.full(batch_size, -1, np.int64)
    which[n_clean:] = rng.integers(len(perturbations), size=batch_size - n_clean) if n_clean < batch_size else []
    if n_clean < batch_size:
        x[n_clean:] += perturbations[which[n_clean:]]
        if options.clip:
            np.clip(x[n_clean:], 0.0, 255.0, out=x[n_clean:])
    return x, y, which


def caffe_seed(seed: int, iteration: int, rank: int = 0) -> int:
    """Caffe's RNG seed for ``iteration`` (its Dropout masks): Caffe's RNG state is not in the
    ``.solverstate``, so it is reseeded from ``(seed, iteration, rank)`` before every step."""
    return int(np.random.SeedSequence([seed, iteration, rank, 2]).generate_state(1)[0] >> 1)
