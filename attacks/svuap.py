"""SV-UAP: universal perturbations as (p, q)-singular vectors of a hidden layer's Jacobian
(Khrulkov & Oseledets, "Art of singular vectors and universal adversarial perturbations",
CVPR 2018).

With J the Jacobians of blob ``layer`` w.r.t. the input, stacked over a batch of images,
v maximises ||J v||_q / ||v||_p and is found by the generalised power method
  v <- psi_p'(J^T psi_q(J v)),  v <- v / ||v||_p,   psi_r(z) = sign(z) |z|^(r-1),
p' = p / (p - 1) (p = inf gives psi_1 = sign). Caffe has only reverse mode, so J v is a
central finite difference (exact up to rounding on a piecewise-linear net when no ReLU
flips); J^T y is a backward pass. The result is scaled to the xi-ball; of v and -v the one
with the higher fooling rate on the images is kept.
"""
from __future__ import annotations

import logging
from typing import Optional

import numpy as np
from tqdm import tqdm

from .base import UapResult, UniversalAttack
from .metrics import fooling_rate
from .projection import lp_norm

log = logging.getLogger(__name__)


def psi(z: np.ndarray, r: float) -> np.ndarray:
    if r == 1.0:
        return np.sign(z)
    return np.sign(z) * np.abs(z) ** (r - 1.0)


def dual(p: float) -> float:
    return 1.0 if np.isinf(p) else p / (p - 1.0)


def p_normalise(v: np.ndarray, p: float) -> np.ndarray:
    n = float(np.abs(v).max()) if np.isinf(p) else float((np.abs(v.astype(np.float64)) ** p).sum() ** (1.0 / p))
    return v / n if n > 0 else v


class SVUAP(UniversalAttack):
    """:param layer: hidden blob (None: the output of the first Convolution layer).
    :param p: the power method's input norm (None: inf for l_inf, 2 for l_2); ``q``: output norm.
    :param n_images: images stacked into J; ``max_iter``: power iterations; ``tol``: stop when
        v changes by less than this (relative l_2).
    :param fd_step: finite-difference step for J v, l_2 pixel units per image.
    """

    name = "svuap"
    attack_params = ("norm", "xi", "layer", "p", "q", "n_images", "max_iter", "tol", "fd_step",
                     "batch_size", "verbose")

    def __init__(self, classifier, norm="inf", xi: Optional[float] = None, layer: Optional[str] = None,
                 p: Optional[float] = None, q: float = 10.0, n_images: int = 64, max_iter: int = 30,
                 tol: float = 1e-4, fd_step: float = 1.0, batch_size: int = 32, verbose: bool = True):
        super().__init__(classifier, norm=norm, xi=xi, layer=layer, p=p, q=q, n_images=n_images,
                         max_iter=max_iter, tol=tol, fd_step=fd_step, batch_size=batch_size, verbose=verbose)

    def _check_params(self) -> None:
        self._check_norm_xi()
        if self.layer is None:
            blobs = self.classifier.conv_blobs()
            if not blobs:
                raise ValueError("the network has no Convolution layer; give layer=")
            self.layer = blobs[0]
        self.classifier.producer(self.layer)
        if self.p is None:
            self.p = float("inf") if self.norm == "inf" else 2.0
        if not float(self.p) > 1.0:
            raise ValueError(f"p must be greater than 1, got {self.p}")
        if not float(self.q) > 1.0:
            raise ValueError(f"q must be greater than 1, got {self.q}")
        self.p, self.q = float(self.p), float(self.q)
        self.n_images = self._positive_int("n_images", self.n_images)
        self.max_iter = self._positive_int("max_iter", self.max_iter)
        self.batch_size = self._positive_int("batch_size", self.batch_size)
        if not float(self.fd_step) > 0:
            raise ValueError(f"fd_step must be positive, got {self.fd_step}")
        if not float(self.tol) >= 0:
            raise ValueError(f"tol must be non-negative, got {self.tol}")

    def jvp(self, xs: np.ndarray, u: np.ndarray) -> np.ndarray:
        """J u for every image of ``xs`` (central finite difference)."""
        un = float(np.sqrt((u.astype(np.float64) ** 2).sum()))
        if un == 0:
            return np.zeros_like(self.classifier.blob_values(xs[:1], [self.layer])[self.layer]).repeat(len(xs), 0)
        h = np.float32(self.fd_step / un)
        clf, b = self.classifier, self.batch_size
        up = clf.blob_values(xs, [self.layer], b, perturbation=h * u)[self.layer].astype(np.float64)
        dn = clf.blob_values(xs, [self.layer], b, perturbation=-h * u)[self.layer].astype(np.float64)
        return (up - dn) / (2.0 * float(h))

    def vjp(self, xs: np.ndarray, y: np.ndarray) -> np.ndarray:
        """J^T y summed over the images (one backward pass per batch)."""
        g = self.classifier.input_gradient(xs, {self.layer: y.astype(np.float32)}, self.batch_size)
        return g.astype(np.float64).sum(axis=0)

    def generate(self, x: np.ndarray, rng: np.random.Generator) -> UapResult:
        clf = self.classifier
        x = self._images(x, clf)
        pick = rng.choice(len(x), size=min(self.n_images, len(x)), replace=False)
        xs = x[np.sort(pick)]
        v = p_normalise(rng.uniform(-1.0, 1.0, size=clf.input_shape), self.p)
        converged, it = False, 0
        history = []
        for it in tqdm(range(1, self.max_iter + 1), desc="SV-UAP power method", disable=not self.verbose, leave=False):
            jv = self.jvp(xs, v.astype(np.float32))
            history.append(float((np.abs(jv) ** self.q).sum() ** (1.0 / self.q)))
            new = p_normalise(psi(self.vjp(xs, psi(jv, self.q)), dual(self.p)), self.p)
            change = float(np.linalg.norm(new - v) / max(np.linalg.norm(v), 1e-30))
            v = new
            if change <= self.tol:
                converged = True
                break
        v = v.astype(np.float32)
        v = v * np.float32(self.xi / lp_norm(v, self.norm))
        clean = clf.labels(x)
        fr_plus = fooling_rate(clean, clf.labels(x, perturbation=v))
        fr_minus = fooling_rate(clean, clf.labels(x, perturbation=-v))
        if fr_minus > fr_plus:
            v, fr_plus = -v, fr_minus
        log.info("SV-UAP on '%s': %d power iterations, fooling rate %.4f", self.layer, it, fr_plus)
        return UapResult(v, fr_plus, converged, it, history)
