"""The one attack factory: ``make_attack(name, classifier, **params)``.

Each attack's defaults are the defaults of its class's ``__init__`` (the one place they are
written); ``attack_defaults`` reads them there for the command line's help, and a parameter
given as None keeps its default.
"""
from __future__ import annotations

import inspect
from typing import Dict, Type

from defense.core import ToolkitError

from .base import UniversalAttack
from .fff import FFF
from .gap import GAP
from .gduap import GDUAP
from .nag import NAG
from .spgd import SPGD
from .svuap import SVUAP
from .uap import UAP

ATTACKS: Dict[str, Type[UniversalAttack]] = {cls.name: cls for cls in (UAP, SPGD, FFF, GDUAP, SVUAP, GAP, NAG)}
"""Attack name -> class (the CLI's sub-commands, the reproduction's attack kinds)."""


def attack_class(name: str) -> Type[UniversalAttack]:
    if name not in ATTACKS:
        raise ToolkitError(f"unknown attack '{name}'; known: {', '.join(ATTACKS)}")
    return ATTACKS[name]


def attack_defaults(name: str) -> Dict[str, object]:
    """Parameter -> default value of attack ``name`` (from its class's signature)."""
    signature = inspect.signature(attack_class(name).__init__)
    return {p.name: p.default for p in list(signature.parameters.values())[2:]
            if p.default is not inspect.Parameter.empty}


def make_attack(name: str, classifier, **params) -> UniversalAttack:
    """The attack ``name`` on ``classifier``; parameters given as None keep their defaults, an
    unknown parameter is a ValueError naming the valid ones."""
    cls = attack_class(name)
    valid = attack_defaults(name)
    unknown = [k for k in params if k not in valid]
    if unknown:
        raise ValueError(f"{unknown[0]!r} is not a parameter of {name}; valid: {', '.join(valid)}")
    return cls(classifier, **{k: v for k, v in params.items() if v is not None})
