"""Universal adversarial perturbations for Caffe classifiers, and their file formats.

Conventions: images (N,C,H,W) and perturbations (C,H,W) are float32, BGR, in [0,255] pixel
units, the perturbation added before mean subtraction. Metrics are defined once in
``attacks.metrics``; file formats live in ``attacks.perturbation_io``.
"""
from defense.core import ToolkitError  # noqa: F401

from .base import UapResult, UniversalAttack  # noqa: F401
from .classifier import CaffeClassifier  # noqa: F401
from .factory import ATTACKS, attack_defaults, make_attack  # noqa: F401
from .fff import FFF
from .gap import GAP
from .gduap import GDUAP
from .nag import NAG
from .perturbation_io import (FORMATS, PUBLISHED_LOADERS, PerturbationMeta, load_any, load_mat,  # noqa: F401
                              load_perturbation, load_perturbations, load_published, save_perturbation)
from .projection import lp_norm, project_lp  # noqa: F401
from .spgd import SPGD
from .svuap import SVUAP
from .synthetic import synthesize  # noqa: F401
from .uap import UAP

__all__ = ["ToolkitError", "UapResult", "UniversalAttack", "CaffeClassifier", "UAP", "SPGD", "FFF", "GDUAP",
           "SVUAP", "GAP", "NAG", "ATTACKS", "attack_defaults", "make_attack", "FORMATS", "load_any",
           "load_perturbations",
           "PUBLISHED_LOADERS", "PerturbationMeta", "load_mat", "load_perturbation",
           "load_published", "save_perturbation", "lp_norm", "project_lp", "synthesize"]
