"""sPGD: stochastic projected gradient ascent on one universal perturbation
(Mummadi, Brox, Metzen, "Defending against universal perturbations with shared
adversarial training", ICCV 2019).

For each mini-batch, the mean input gradient of the cross-entropy w.r.t. the images'
clean top-1 labels (no ground truth needed) moves v: by ``step_size * sign(g)`` for l_inf,
by ``step_size * g / ||g||_2`` for l_2, then v is projected onto the xi-ball. Per-image
losses above ``loss_clip`` contribute no gradient (the clipped loss of universal
adversarial training, so already-fooled images do not dominate).
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
from tqdm import tqdm

from .base import UapResult, UniversalAttack
from .metrics import fooling_rate
from .projection import project_lp

log = logging.getLogger(__name__)


class SPGD(UniversalAttack):
    """:param step_size: pixel units per step (None: xi / 10).
    :param epochs: passes over the data; ``batch_size``: images per step.
    :param loss_clip: cross-entropy above which an image gives no gradient (None: no clip).
    :param delta: stop early once the fooling rate reaches 1 - delta (0: never).
    """

    name = "spgd"
    attack_params = ("norm", "xi", "step_size", "epochs", "batch_size", "loss_clip", "delta", "verbose")

    def __init__(self, classifier, norm="inf", xi: Optional[float] = None, step_size: Optional[float] = None,
                 epochs: int = 10, batch_size: int = 32, loss_clip: Optional[float] = None,
                 delta: float = 0.0, verbose: bool = True):
        super().__init__(classifier, norm=norm, xi=xi, step_size=step_size, epochs=epochs, batch_size=batch_size,
                         loss_clip=loss_clip, delta=delta, verbose=verbose)

    def _check_params(self) -> None:
        self._check_norm_xi()
        if self.step_size is None:
            self.step_size = self.xi / 10.0
        if not float(self.step_size) > 0:
            raise ValueError(f"step_size must be positive, got {self.step_size}")
        self.epochs = self._positive_int("epochs", self.epochs)
        self.batch_size = self._positive_int("batch_size", self.batch_size)
        if self.loss_clip is not None and not float(self.loss_clip) > 0:
            raise ValueError(f"loss_clip must be positive or None, got {self.loss_clip}")
        if not 0.0 <= float(self.delta) < 1.0:
            raise ValueError(f"delta must be in [0, 1), got {self.delta}")

    def generate(self, x: np.ndarray, rng: np.random.Generator) -> UapResult:
        clf = self.classifier
        x = self._images(x, clf)
        clean = clf.labels(x)
        v = np.zeros(clf.input_shape, dtype=np.float32)
        history = []
        fr, epoch = 0.0, 0
        for epoch in range(1, self.epochs + 1):
            order = rng.permutation(len(x))
            for s in tqdm(range(0, len(x), self.batch_size), desc=f"sPGD epoch {epoch}/{self.epochs}",
                          disable=not self.verbose, leave=False):
                idx = order[s:s + self.batch_size]
                losses, grads = clf.loss_gradient(x[idx] + v, clean[idx], batch_size=self.batch_size)
                if self.loss_clip is not None:
                    grads[losses > self.loss_clip] = 0.0
                g = grads.mean(axis=0)
                if self.norm == "inf":
                    v = v + np.float32(self.step_size) * np.sign(g)
                else:
                    gn = float(np.sqrt((g.astype(np.float64) ** 2).sum()))
                    if gn > 0:
                        v = v + np.float32(self.step_size / gn) * g
                v = project_lp(v, self.xi, self.norm)
            fr = fooling_rate(clean, clf.labels(x, perturbation=v))
            history.append(fr)
            log.info("sPGD epoch %d: fooling rate %.4f", epoch, fr)
            if self.delta > 0 and fr >= 1.0 - self.delta:
                break
        return UapResult(v, fr, self.delta > 0 and fr >= 1.0 - self.delta, epoch, history)
