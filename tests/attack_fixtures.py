"""Session-wide tiny classifier for the attack tests (trained once per process, ~6 s)."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Tuple

from attacks.toy import MEAN, fashion_subset, train_tiny_net
from defense.devices import blas_thread_count

__all__ = ["MEAN", "fashion_subset", "trained_tiny_net"]


@functools.lru_cache(maxsize=None)
def trained_tiny_net(iters: int = 300, seed: int = 0) -> Tuple[Path, Path]:
    """(deploy prototxt, caffemodel) of attacks.toy's net trained on 3000 Fashion-MNIST images.

    Trained on one BLAS thread: with more, the weight gradients are summed per thread (and per
    thread count differently), so the net, and with it the kinks that the finite-difference
    tests must avoid, would depend on the machine's cores."""
    with blas_thread_count(1):
        return train_tiny_net(tempfile.mkdtemp(prefix="tiny_attack_net_"), iters=iters, seed=seed)
