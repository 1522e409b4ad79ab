"""The offline reproduction on Fashion-MNIST (``python -m defense.reproduce``), stage by stage.

- ``config``: ``ReproConfig``, the perturbation sets and the evaluation cases;
- ``runner``: the run's ``Context`` and the stage runner (keys, records, stages side by side);
- ``attack_stages`` and ``stages``: one function per stage;
- ``pipeline``: the stage graph ``STAGES`` and ``reproduce()``;
- ``report``: ``summary.json``, ``results.md``, the figures, the targets, shipping the demo files;
- ``__main__``: the command line.
"""
from .config import DEFAULT_OUT, NET, ReproConfig, attack_sets, eval_cases  # noqa: F401
from .pipeline import STAGE_NAMES, STAGES, reproduce  # noqa: F401
