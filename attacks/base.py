"""``UniversalAttack``: the small base class every universal attack follows (ART's style).

An attack is built from a ``CaffeClassifier`` and keyword parameters (checked once, one
sentence per bad value, in ``_check_params``); ``generate(x, rng)`` returns a ``UapResult``
whose ``perturbation`` is the product: float32 (C,H,W), BGR pixel units, added before mean
subtraction. Inputs are never modified.
"""
from __future__ import annotations

import abc
from dataclasses import dataclass, field
from typing import ClassVar, Dict, List, Optional, Tuple

import numpy as np

from .projection import default_xi, parse_norm


@dataclass
class UapResult:
    """:param fooling_rate: on the images the attack was computed on (see attacks.metrics).
    :param converged: the attack's own stopping rule was met (not only its iteration limit).
    :param n_iter: passes (UAP), epochs (sPGD) or iterations (the others) actually run.
    """

    perturbation: np.ndarray
    fooling_rate: float
    converged: bool
    n_iter: int
    history: List[float] = field(default_factory=list)


class UniversalAttack(abc.ABC):
    """Base class: ``attack_params`` lists what ``set_params`` accepts."""

    name: ClassVar[str] = "universal"
    attack_params: ClassVar[Tuple[str, ...]] = ()

    def __init__(self, classifier, **params):
        self.classifier = classifier
        for key, value in params.items():
            setattr(self, key, value)
        self._check_params()

    @property
    def params(self) -> Dict[str, object]:
        return {k: getattr(self, k) for k in self.attack_params}

    def set_params(self, **params) -> None:
        for key, value in params.items():
            if key not in self.attack_params:
                raise ValueError(f"{key!r} is not a parameter of {self.name}; valid: {', '.join(self.attack_params)}")
            setattr(self, key, value)
        self._check_params()

    def _check_norm_xi(self) -> None:
        self.norm = parse_norm(self.norm)
        if self.xi is None:
            self.xi = default_xi(self.norm, self.classifier.input_shape)
        if not float(self.xi) > 0:
            raise ValueError(f"xi must be positive, got {self.xi}")
        self.xi = float(self.xi)

    def _check_params(self) -> None:  # noqa: B027 - optional override
        """Raise ValueError with one sentence per bad parameter."""

    @staticmethod
    def _positive_int(name: str, value) -> int:
        if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
            raise ValueError(f"{name} must be a positive integer, got {value!r}")
        return int(value)

    @staticmethod
    def _images(x: np.ndarray, classifier) -> np.ndarray:
        x = np.asarray(x)
        if x.ndim != 4 or tuple(x.shape[1:]) != tuple(classifier.input_shape):
            raise ValueError(f"images must have shape (N, {', '.join(map(str, classifier.input_shape))}), got {x.shape}")
        if len(x) == 0:
            raise ValueError("the attack needs at least one image")
        return x.astype(np.float32, copy=False)

    @abc.abstractmethod
    def generate(self, x: Optional[np.ndarray], rng: np.random.Generator) -> UapResult:
        """Compute one universal perturbation from images ``x`` (None for data-free attacks)."""
