"""Universal adversarial perturbations (Moosavi-Dezfooli, Fawzi, Fawzi, Frossard, CVPR 2017).

Passes over the data in a seeded random order; for each image that x + v does not yet
fool, DeepFool (``attacks.deepfool``) finds a minimal step, which is added to v and v is
projected back onto the l_p ball of radius xi. A step whose DeepFool did not converge is
not applied. Passes stop once the fooling rate on the data reaches 1 - delta, or after
``max_passes``. The reference code visits one image at a time; here ``batch_size`` images
share DeepFool's forward/backward passes (``batch_size=1`` is the reference loop). The
state after each pass (v, passes done, RNG state) is saved to ``state_path`` so an
interrupted run resumes from its last pass.
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
from pathlib import Path
from typing import Optional

import numpy as np
from tqdm import tqdm

from defense.core import ToolkitError, atomic_path

from .base import UapResult, UniversalAttack
from .deepfool import deepfool
from .metrics import fooling_rate
from .projection import project_lp

log = logging.getLogger(__name__)


class UAP(UniversalAttack):
    """:param norm: 'inf' or '2'; ``xi``: ball radius in pixel units (None: 10 / 2000 scaled).
    :param delta: stop when the fooling rate reaches 1 - delta.
    :param max_passes: limit on passes over the data.
    :param overshoot, max_iter_df, num_classes: DeepFool's (0.02, 50, top-10 classes).
    :param batch_size: images per DeepFool batch (1 = the reference one-at-a-time loop).
    :param state_path: resume file (written after each pass); None for no resume.
    :param recheck: within a batch, apply DeepFool steps in chunks of this many images,
        skipping images the current v already fools (None: batch_size // 4).
    """

    name = "uap"
    attack_params = ("norm", "xi", "delta", "max_passes", "overshoot", "max_iter_df",
                     "num_classes", "batch_size", "recheck", "state_path", "verbose")

    def __init__(self, classifier, norm="inf", xi: Optional[float] = None, delta: float = 0.2,
                 max_passes: int = 10, overshoot: float = 0.02, max_iter_df: int = 50,
                 num_classes: int = 10, batch_size: int = 32, recheck: Optional[int] = None,
                 state_path: Optional[os.PathLike | str] = None, verbose: bool = True):
        super().__init__(classifier, norm=norm, xi=xi, delta=delta, max_passes=max_passes,
                         overshoot=overshoot, max_iter_df=max_iter_df, num_classes=num_classes,
                         batch_size=batch_size, recheck=recheck, state_path=state_path, verbose=verbose)

    def _check_params(self) -> None:
        self._check_norm_xi()
        if not 0.0 <= float(self.delta) < 1.0:
            raise ValueError(f"delta must be in [0, 1), got {self.delta}")
        self.max_passes = self._positive_int("max_passes", self.max_passes)
        if not float(self.overshoot) >= 0:
            raise ValueError(f"overshoot must be non-negative, got {self.overshoot}")
        self.max_iter_df = self._positive_int("max_iter_df", self.max_iter_df)
        self.num_classes = self._positive_int("num_classes", self.num_classes)
        if self.num_classes < 2:
            raise ValueError(f"num_classes must be at least 2, got {self.num_classes}")
        self.batch_size = self._positive_int("batch_size", self.batch_size)
        if self.recheck is not None:
            self.recheck = self._positive_int("recheck", self.recheck)

    # ------------------------------------------------------------ resume state
    def _fingerprint(self, x: np.ndarray) -> str:
        h = hashlib.sha256()
        h.update(str(x.shape).encode())
        h.update(np.ascontiguousarray(x[:: max(1, len(x) // 64)]).tobytes())
        # stopping parameters (delta, max_passes) may change between runs; the rest shape v
        keep = {k: v for k, v in self.params.items() if k not in ("state_path", "verbose", "delta", "max_passes")}
        h.update(json.dumps(keep, sort_keys=True, default=str).encode())
        return h.hexdigest()

    def _save_state(self, v, passes, history, rng, fingerprint) -> None:
        with atomic_path(self.state_path) as tmp:
            with open(tmp, "wb") as f:
                np.savez(f, v=v, passes=passes, history=np.asarray(history, dtype=np.float64),
                         rng=json.dumps(rng.bit_generator.state), fingerprint=fingerprint)

    def _load_state(self, rng, fingerprint):
        path = Path(self.state_path)
        try:
            with np.load(path, allow_pickle=False) as z:
                if str(z["fingerprint"]) != fingerprint:
                    raise ToolkitError(f"{path}: this UAP state file belongs to another run (other data or "
                                       "parameters); delete it or choose another state path")
                v, passes, history = z["v"].astype(np.float32), int(z["passes"]), list(z["history"])
                rng.bit_generator.state = json.loads(str(z["rng"]))
        except (OSError, ValueError, KeyError) as exc:
            raise ToolkitError(f"{path}: unreadable UAP state file ({exc}); delete it to start again") from None
        log.info("resuming UAP from %s after pass %d (fooling rate %.4f)", path, passes,
                 history[-1] if history else 0.0)
        return v, passes, history

    # ------------------------------------------------------------ attack
    def _apply_batch(self, xb: np.ndarray, clean: np.ndarray, v: np.ndarray) -> np.ndarray:
        """DeepFool on the batch at v, then its converged steps in order, v projected after each.

        As in the reference loop, an image that the current v already fools gets no step:
        the steps are applied in chunks of ``recheck`` images, each chunk re-checked with
        one forward pass at the current v (the reference loop re-checks every image).
        """
        clf = self.classifier
        res = deepfool(clf, xb + v, self.num_classes, self.overshoot, self.max_iter_df, batch_size=self.batch_size)
        order = np.flatnonzero(res.converged)
        chunk = max(1, len(xb) // 4) if self.recheck is None else int(self.recheck)
        for s in range(0, len(order), chunk):
            part = order[s:s + chunk]
            if s > 0:
                part = part[clf.labels(xb[part], perturbation=v) == clean[part]]
            for i in part:
                v = project_lp(v + res.step[i], self.xi, self.norm)
        return v

    def generate(self, x: np.ndarray, rng: np.random.Generator) -> UapResult:
        clf = self.classifier
        x = self._images(x, clf)
        n = len(x)
        clean = clf.labels(x)
        v = np.zeros(clf.input_shape, dtype=np.float32)
        passes, history = 0, []
        fingerprint = self._fingerprint(x)
        if self.state_path is not None and Path(self.state_path).exists():
            v, passes, history = self._load_state(rng, fingerprint)
        fr = history[-1] if history else 0.0
        target = 1.0 - float(self.delta)
        while fr < target and passes < self.max_passes:
            order = rng.permutation(n)
            seen = fooled = 0
            with tqdm(total=n, desc=f"UAP pass {passes + 1}/{self.max_passes}", unit="img",
                      disable=not self.verbose, leave=False) as bar:
                for s in range(0, n, self.batch_size):
                    idx = order[s:s + self.batch_size]
                    xb = x[idx] + v
                    todo = clf.labels(xb) == clean[idx]
                    seen, fooled = seen + len(idx), fooled + int((~todo).sum())
                    if todo.any():
                        v = self._apply_batch(x[idx[todo]], clean[idx[todo]], v)
                    bar.update(len(idx))
                    bar.set_postfix(fooling=f"{fooled / seen:.3f}", last_pass=f"{fr:.3f}")
            passes += 1
            fr = fooling_rate(clean, clf.labels(x, perturbation=v))
            history.append(fr)
            log.info("UAP pass %d: fooling rate %.4f", passes, fr)
            if self.state_path is not None:
                self._save_state(v, passes, history, rng, fingerprint)
        return UapResult(v, fr, fr >= target, passes, history)
