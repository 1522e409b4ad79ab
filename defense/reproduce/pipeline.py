"""The reproduction's stage graph (``STAGES``, each naming its upstream stages and the config
fields its key covers) and ``reproduce()``, which runs or resumes them and writes the report.
"""
from __future__ import annotations

import dataclasses
import functools
import os
import time
from pathlib import Path
from typing import List, Optional, Sequence, Tuple

from ..data import DataSource
from .attack_stages import stage_adaptive, stage_test_attacks, stage_train_attacks
from ..generate.competitors import COMPETITORS as DEFENCE_REGISTRY
from ..core import set_mode
from .aggregate import write_aggregate
from .claims import CLAIMS_DOCS, claims_markdown, claims_span, write_claims_into
from .config import DEFAULT_SEEDS, ReproConfig
from .report import ship, write_report
from .runner import Context, Stage, run_parallel, run_stage, save_json
from .stages import (stage_baseline, stage_competitor, stage_evaluate, stage_generate, stage_masking, stage_peers,
                     stage_ranking, stage_secondary, stage_train_fru)


# Fields that place a perturbation set's training subset (train_subsets allocates them in order).
_SUBSET_FIELDS = ("seed", "uap_images", "train_uaps", "test_uaps", "l2_uaps", "stronger", "stronger_uaps", "unseen",
                  "unseen_per_attack", "gduap_prior")
_UAP_FIELDS = ("xi", "uap_passes", "uap_delta", "uap_classes", "uap_batch")
_ATTACK_FIELDS = ("spgd_epochs", "gduap_iters", "svuap_layer", "svuap_q", "svuap_images", "svuap_iters", "gap_iters",
                  "nag_iters", "nag_diversity", "nag_lr")
# Wall seconds of each stage of one seed (every column, two workers, the evaluation on both),
# measured on an idle 2-core Zen 4 VM on 2026-12-06 (results/bench/reproduce_one_seed_zen4.json):
# the scheduler starts the stage with the longest chain of stages behind it first.
STAGE_SECONDS = {"baseline": 187.3, "train_attacks": 43.6, "generate": 1.1, "train_fru": 66.2, "secondary": 182.0,
                 "adaptive": 45.6, "ranking": 66.8, "test_attacks": 120.4, "masking": 6.8, "peers": 26.4,
                 "train_prn": 110.8, "train_hgd": 124.6, "train_fd": 248.1, "evaluate": 102.2}
# Every stage after its upstream stages; ties of the scheduler go to the earlier one.
_STAGES: Tuple[Stage, ...] = (
    Stage("baseline", stage_baseline, ("seed", "baseline_epochs", "baseline_train_images", "baseline_test_images")),
    Stage("train_attacks", stage_train_attacks, _SUBSET_FIELDS + _UAP_FIELDS + _ATTACK_FIELDS + (
        "synthetic", "synthetic_rule", "train_extra", "train_extra_per_attack"), ("baseline",)),
    Stage("generate", stage_generate, ("seed", "fru_batch"), ("baseline",)),
    Stage("train_fru", stage_train_fru, ("seed", "fru_iters", "fru_lr", "fru_clean_fraction"),
          ("train_attacks", "generate")),
    Stage("secondary", stage_secondary, _SUBSET_FIELDS + _UAP_FIELDS + (
        "adaptive_train_uaps", "adaptive_test_uaps", "secondary_iters", "secondary_lr", "fru_clean_fraction"),
        ("train_attacks", "train_fru")),
    Stage("adaptive", stage_adaptive, _SUBSET_FIELDS + _UAP_FIELDS + ("adaptive_train_uaps", "adaptive_test_uaps"),
          ("train_fru",)),
    Stage("ranking", stage_ranking, ("seed", "fru_iters", "fru_lr", "fru_clean_fraction"),
          ("train_attacks", "generate")),
    Stage("test_attacks", stage_test_attacks, _SUBSET_FIELDS + _UAP_FIELDS + _ATTACK_FIELDS + (
        "xi_l2", "unseen_min_fooling", "unseen_xi_steps"), ("baseline",), forward=True),
    Stage("masking", stage_masking, ("test_images", "eval_seed"), ("baseline", "test_attacks")),
    Stage("peers", stage_peers, ("seed", "fru_iters", "fru_batch", "advft_solver", "advft_lr", "fru_clean_fraction"),
          ("train_attacks", "baseline")),
) + tuple(
    Stage(f"train_{name}", functools.partial(stage_competitor, name),
          ("seed", "fru_iters", "fru_batch", "fru_lr", "fru_clean_fraction", "eval_batch")
          + (("detector_images",) if name == "prn" else ()), ("train_attacks", "baseline"))
    for name in DEFENCE_REGISTRY) + (
    Stage("evaluate", stage_evaluate, ("test_images", "eval_seed", "peers"),
          ("test_attacks", "train_fru", "ranking", "adaptive", "secondary", "peers")
          + tuple(f"train_{name}" for name in DEFENCE_REGISTRY), forward=True),
)
STAGES = tuple(dataclasses.replace(s, seconds=STAGE_SECONDS[s.name]) for s in _STAGES)
STAGE_NAMES = tuple(s.name for s in STAGES)


def stages_for(cfg: ReproConfig) -> Tuple[Stage, ...]:
    """``STAGES`` without the training of the competitors that ``cfg.trained_competitors`` leaves
    out (and without them among the evaluation's upstream stages); with every competitor, the
    stages and so every stage key are ``STAGES``'."""
    dropped = {f"train_{name}" for name in DEFENCE_REGISTRY if name not in cfg.trained_competitors}
    return tuple(dataclasses.replace(s, upstream=tuple(u for u in s.upstream if u not in dropped))
                 for s in STAGES if s.name not in dropped)


def replica_folder(out: Path, seed: int) -> Path:
    """Where one seed's replica (its stages, summary.json, results.md, figures) lives."""
    return Path(out) / f"seed-{seed}"


def reproduce(cfg: ReproConfig, out: Path, seeds: int = DEFAULT_SEEDS, force: bool = False, progress: bool = True,
              ship_to: Optional[Path] = None, train_source: Optional[DataSource] = None,
              test_source: Optional[DataSource] = None, jobs: int = 1, gpu: Optional[int] = None,
              runtime: str = "caffe") -> dict:
    """Run (or resume) every stage of ``seeds`` independent replicas (seeds ``cfg.seed`` ..
    ``cfg.seed + seeds - 1``, each in ``out/seed-<s>/`` with its own report), then write the
    aggregate (means and 95% intervals over the seeds, the claims) into ``out``.

    :param jobs: worker processes for independent stages, of every replica (1: every stage in
        this process, replica by replica; also when custom data sources are given).
    :param runtime: where the forward-only stages' passes run, ``caffe`` or ``onnx`` (resolved).
    """
    if seeds < 1:
        raise ValueError(f"seeds must be a positive integer, got {seeds}")
    for doc in CLAIMS_DOCS if ship_to is not None else ():
        claims_span(Path(ship_to) / doc)  # a document without its markers fails now, not after the run
    started, load_start = time.perf_counter(), os.getloadavg()
    parallel = jobs > 1 and train_source is None and test_source is None
    contexts = [Context(dataclasses.replace(cfg, seed=cfg.seed + i), replica_folder(out, cfg.seed + i), force=force,
                        progress=progress, gpu=gpu, jobs=jobs if parallel else 1, train_source=train_source,
                        test_source=test_source, runtime=runtime) for i in range(seeds)]
    Path(out).mkdir(parents=True, exist_ok=True)
    save_json(Path(out) / "config.json", dataclasses.asdict(cfg))
    for ctx in contexts:
        ctx.out.mkdir(parents=True, exist_ok=True)
        save_json(ctx.out / "config.json", dataclasses.asdict(ctx.cfg))
    stages = stages_for(cfg)
    if parallel:
        run_parallel(contexts, stages, jobs)
    else:
        for ctx in contexts:
            set_mode(gpu, ctx.cfg.seed)
            for stage in stages:
                run_stage(ctx, stage)
    replicas = [write_report(ctx, started, load_start) for ctx in contexts]
    summary = write_aggregate(Path(out), cfg, replicas, [ctx.out for ctx in contexts],
                              [r for ctx in contexts for r in ctx.records.values()], started, load_start, jobs)
    if ship_to is not None:
        summary["shipped"] = ship_run(contexts[0], summary["claims"], Path(ship_to))
        save_json(Path(out) / "summary.json", summary)
    return summary


def ship_run(ctx: Context, claims: Sequence[dict], root: Path) -> List[str]:
    """Copy one replica's demo files (``report.ship``) and write the claims table into
    ``CLAIMS_DOCS`` below ``root`` (the repository); returns the paths written, relative to
    ``root`` (never the machine's)."""
    table = claims_markdown(claims)
    shipped = ship(ctx, root) + [write_claims_into(root / doc, table) for doc in CLAIMS_DOCS]
    return [Path(p).relative_to(root).as_posix() for p in shipped]
