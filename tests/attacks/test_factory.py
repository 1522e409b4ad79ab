"""attacks.factory: one factory, the defaults written once (in each attack class's signature)."""
import inspect

import pytest

from attacks import ATTACKS, UAP, attack_defaults, make_attack
from defense.core import ToolkitError


def test_defaults_come_from_the_class_signatures():
    for name, cls in ATTACKS.items():
        signature = inspect.signature(cls.__init__).parameters
        assert attack_defaults(name) == {k: p.default for k, p in list(signature.items())[2:]}
    assert attack_defaults("uap")["max_passes"] == 10


class _Classifier:
    input_shape = (3, 8, 8)


def test_none_keeps_the_default_and_names_are_checked():
    attack = make_attack("uap", _Classifier(), xi=10.0, delta=None, max_passes=3)
    assert isinstance(attack, UAP) and (attack.xi, attack.delta, attack.max_passes) == (10.0, 0.2, 3)
    with pytest.raises(ValueError, match=r"'epochs' is not a parameter of uap; valid: norm, xi, delta"):
        make_attack("uap", _Classifier(), epochs=3)
    with pytest.raises(ToolkitError, match=r"unknown attack 'cw'; known: uap, spgd, fff, gduap, svuap, gap, nag$"):
        make_attack("cw", _Classifier())
