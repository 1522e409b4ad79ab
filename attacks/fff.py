"""Fast Feature Fool (Mopuri, Garg, Babu, BMVC 2017): a data-free universal perturbation.

The net sees the perturbation alone (input = v after mean subtraction); v maximises
sum_l log(mean activation of conv layer l), i.e. it makes every conv layer fire as much
as possible, within the l_inf ball of radius xi. Activations are taken after ReLU
(max(A, 0) for blobs with no in-place ReLU).
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .feature_attack import FeatureAttack

EPS = 1e-12


class FFF(FeatureAttack):
    name = "fff"

    def __init__(self, classifier, xi: Optional[float] = None, layers: Optional[Sequence[str]] = None,
                 lr: Optional[float] = None, max_iter: int = 300, verbose: bool = True):
        super().__init__(classifier, xi=xi, layers=layers, lr=lr, max_iter=max_iter, verbose=verbose)

    def _objective(self, acts: Dict[str, np.ndarray]) -> Tuple[float, Dict[str, np.ndarray]]:
        value, diffs = 0.0, {}
        for blob, a in acts.items():
            pos = np.maximum(a, 0).reshape(len(a), -1).astype(np.float64)
            m = pos.mean(axis=1) + EPS
            value += float(np.log(m).sum())
            d = (a > 0) / (m.reshape((-1,) + (1,) * (a.ndim - 1)) * pos.shape[1])
            diffs[blob] = d.astype(np.float32)
        return value, diffs
