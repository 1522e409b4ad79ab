"""The offline reproduction on Fashion-MNIST (``python -m defense.reproduce``), stage by stage.

- ``config``: ``ReproConfig``, the perturbation sets and the evaluation cases;
- ``runner``: the run's ``Context`` and the stage runner (keys, records, stages side by side);
- ``attack_stages`` and ``stages``: one function per stage;
- ``pipeline``: the stage graph ``STAGES`` and ``reproduce()`` (one replica per seed);
- ``report``: one replica's ``summary.json``, ``results.md``, figures and targets, shipping the demo files;
- ``stats``, ``aggregate``, ``claims``: the replicas over seeds as means with 95% intervals,
  verdicts from intervals, and the paper's claims table;
- ``__main__``: the command line.
"""
from .config import DEFAULT_OUT, NET, ReproConfig, attack_sets, eval_cases  # noqa: F401
from .pipeline import STAGE_NAMES, STAGES, reproduce  # noqa: F401
