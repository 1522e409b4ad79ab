"""GD-UAP (Mopuri, Ganeshan, Babu, "Generalizable data-free objective for crafting
universal adversarial perturbations", TPAMI 2018).

v maximises sum_l log ||A_l(input)||_2 over conv layers l, within the l_inf ball xi. The
``prior`` says what the net sees: ``none`` - v alone (the no-data objective); ``range`` -
v plus dummy images drawn from N(0, (128/3)^2) around the mean and clipped to the
pixel range (the range prior: 99.7% of samples in [-128, 128]); ``data`` - v plus real
images. When more than ``saturation`` of v's pixels sit at +-xi and that share has
stopped changing (by less than ``saturation_change`` per step), v is halved (the paper's
adaptive rescaling), so the optimisation keeps moving; the final v is scaled to
||v||_inf = xi.
"""
from __future__ import annotations

from typing import Dict, Optional, Sequence, Tuple

import numpy as np

from .feature_attack import Adam, FeatureAttack

PRIORS = ("none", "range", "data")
RANGE_SIGMA = 128.0 / 3.0
EPS = 1e-12


class GDUAP(FeatureAttack):
    """:param prior: 'none', 'range' or 'data'. ``batch_size``: dummy/real images per step.
    :param saturation: share of pixels at +-xi above which a plateau triggers halving (None: never).
    :param saturation_change: a change of the saturated share below this is a plateau.
    """

    name = "gduap"
    attack_params = FeatureAttack.attack_params + ("prior", "batch_size", "saturation", "saturation_change")

    def __init__(self, classifier, xi: Optional[float] = None, layers: Optional[Sequence[str]] = None,
                 lr: Optional[float] = None, max_iter: int = 300, prior: str = "range",
                 batch_size: int = 16, saturation: Optional[float] = 0.5, saturation_change: float = 1e-3,
                 verbose: bool = True):
        super().__init__(classifier, xi=xi, layers=layers, lr=lr, max_iter=max_iter, prior=prior,
                         batch_size=batch_size, saturation=saturation, saturation_change=saturation_change,
                         verbose=verbose)
        self._last_saturation = 0.0

    def _check_params(self) -> None:
        self._check_common()
        if self.prior not in PRIORS:
            raise ValueError(f"prior must be one of {', '.join(PRIORS)}, got {self.prior!r}")
        self.batch_size = self._positive_int("batch_size", self.batch_size)
        if self.saturation is not None and not 0.0 < float(self.saturation) <= 1.0:
            raise ValueError(f"saturation must be in (0, 1] or None, got {self.saturation}")
        if not float(self.saturation_change) >= 0:
            raise ValueError(f"saturation_change must be non-negative, got {self.saturation_change}")

    def _inputs(self, v: np.ndarray, x: Optional[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        base = self._base_image()
        if self.prior == "none":
            return base + v
        if self.prior == "range":
            d = rng.normal(0.0, RANGE_SIGMA, size=(self.batch_size,) + base.shape[1:]).astype(np.float32)
            return np.clip(base + d, 0.0, 255.0) + v
        if x is None:
            raise ValueError("the data prior needs images")
        idx = rng.choice(len(x), size=min(self.batch_size, len(x)), replace=False)
        return x[idx] + v

    def _objective(self, acts: Dict[str, np.ndarray]) -> Tuple[float, Dict[str, np.ndarray]]:
        value, diffs = 0.0, {}
        for blob, a in acts.items():
            flat = a.reshape(len(a), -1).astype(np.float64)
            sq = (flat ** 2).sum(axis=1) + EPS
            value += float(0.5 * np.log(sq).sum() / len(a))
            diffs[blob] = (a / (sq.reshape((-1,) + (1,) * (a.ndim - 1)) * len(a))).astype(np.float32)
        return value, diffs

    def _after_step(self, v: np.ndarray, opt: Adam) -> np.ndarray:
        if self.saturation is None:
            return v
        sat = float(np.mean(np.abs(v) >= self.xi * (1 - 1e-6)))
        plateau = abs(sat - self._last_saturation) < self.saturation_change
        self._last_saturation = sat
        if sat > self.saturation and plateau:
            self._last_saturation = 0.0
            return v * np.float32(0.5)
        return v

    def _finish(self, v: np.ndarray) -> np.ndarray:
        """Halving leaves v inside the ball; the result uses the whole budget xi."""
        m = float(np.abs(v).max())
        return v * np.float32(self.xi / m) if m > 0 else v

    def generate(self, x, rng):
        if self.prior == "data" and x is None:
            raise ValueError("GD-UAP with the data prior needs images (--data)")
        self._last_saturation = 0.0
        return super().generate(x, rng)
