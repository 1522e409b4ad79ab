"""Shared loop of the data-free feature attacks (FFF, GD-UAP): ascend an objective of the
activations of chosen blobs with Adam, keeping v in the l_inf ball of radius xi.

Subclasses say what images the net sees (``_inputs``) and the objective with its
gradient w.r.t. each blob (``_objective``).
"""
from __future__ import annotations

import logging
from typing import Dict, List, Optional, Tuple

import numpy as np
from tqdm import tqdm

from .base import UapResult, UniversalAttack
from .metrics import fooling_rate
from .projection import project_lp

log = logging.getLogger(__name__)


class Adam:
    """Adam (Kingma & Ba, 2015) for one array, as ascent."""

    def __init__(self, lr: float, beta1: float = 0.9, beta2: float = 0.999, eps: float = 1e-8):
        self.lr, self.b1, self.b2, self.eps = lr, beta1, beta2, eps
        self.m: Optional[np.ndarray] = None
        self.s: Optional[np.ndarray] = None
        self.t = 0

    def step(self, grad: np.ndarray) -> np.ndarray:
        if self.m is None:
            self.m, self.s = np.zeros_like(grad, np.float64), np.zeros_like(grad, np.float64)
        self.t += 1
        self.m = self.b1 * self.m + (1 - self.b1) * grad
        self.s = self.b2 * self.s + (1 - self.b2) * grad.astype(np.float64) ** 2
        mh = self.m / (1 - self.b1 ** self.t)
        sh = self.s / (1 - self.b2 ** self.t)
        return (self.lr * mh / (np.sqrt(sh) + self.eps)).astype(np.float32)


class FeatureAttack(UniversalAttack):
    """:param xi: l_inf radius (pixel units; None: 10). ``layers``: blobs (None: every conv output).
    :param lr: Adam step in pixel units (None: xi / 100). ``max_iter``: optimisation steps.
    """

    attack_params: Tuple[str, ...] = ("xi", "layers", "lr", "max_iter", "verbose")

    def _check_common(self) -> None:
        self.norm = "inf"
        self._check_norm_xi()
        if self.lr is None:
            self.lr = self.xi / 100.0
        if not float(self.lr) > 0:
            raise ValueError(f"lr must be positive, got {self.lr}")
        self.max_iter = self._positive_int("max_iter", self.max_iter)
        if self.layers is not None:
            if isinstance(self.layers, str) or not len(self.layers):
                raise ValueError(f"layers must be a non-empty list of blob names or None, got {self.layers!r}")
            for b in self.layers:
                self.classifier.producer(b)

    def _check_params(self) -> None:
        self._check_common()

    def blobs(self) -> List[str]:
        return list(self.layers) if self.layers is not None else self.classifier.conv_blobs()

    def _base_image(self) -> np.ndarray:
        """The image whose mean-subtracted value is zero: the net then sees v alone."""
        return np.broadcast_to(self.classifier.mean, self.classifier.input_shape).astype(np.float32)[None]

    def _inputs(self, v: np.ndarray, x: Optional[np.ndarray], rng: np.random.Generator) -> np.ndarray:
        return self._base_image() + v

    def _objective(self, acts: Dict[str, np.ndarray]) -> Tuple[float, Dict[str, np.ndarray]]:
        raise NotImplementedError

    def _after_step(self, v: np.ndarray, opt: Adam) -> np.ndarray:
        return v

    def _finish(self, v: np.ndarray) -> np.ndarray:
        return v

    def generate(self, x: Optional[np.ndarray], rng: np.random.Generator) -> UapResult:
        clf = self.classifier
        if x is not None:
            x = self._images(x, clf)
        blobs = self.blobs()
        v = rng.uniform(-self.xi, self.xi, size=clf.input_shape).astype(np.float32)
        opt = Adam(float(self.lr))
        history = []
        for it in tqdm(range(self.max_iter), desc=self.name, disable=not self.verbose, leave=False):
            batch = self._inputs(v, x, rng)
            acts = clf.forward_batch(batch, blobs)
            value, diffs = self._objective(acts)
            grad = clf.backward_batch(diffs).sum(axis=0)
            v = project_lp(v + opt.step(grad), self.xi, "inf")
            v = self._after_step(v, opt)
            history.append(value)
        v = self._finish(v)
        fr = float("nan")
        if x is not None:
            fr = fooling_rate(clf.labels(x), clf.labels(x, perturbation=v))
        log.info("%s: objective %.4f after %d steps, fooling rate %.4f", self.name, history[-1], self.max_iter, fr)
        return UapResult(v, fr, True, self.max_iter, history)
