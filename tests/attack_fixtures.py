"""Session-wide tiny classifier for the attack tests (trained once per process, ~6 s)."""
from __future__ import annotations

import functools
import tempfile
from pathlib import Path
from typing import Tuple

from attacks.toy import MEAN, fashion_subset, train_tiny_net

__all__ = ["MEAN", "fashion_subset", "trained_tiny_net"]


@functools.lru_cache(maxsize=None)
def trained_tiny_net(iters: int = 300, seed: int = 0) -> Tuple[Path, Path]:
    """(deploy prototxt, caffemodel) of attacks.toy's net trained on 3000 Fashion-MNIST images."""
    return train_tiny_net(tempfile.mkdtemp(prefix="tiny_attack_net_"), iters=iters, seed=seed)
