"""The reproduction's attack stages: training, test and white-box perturbations, each from its own
subset of the training split (no test image is ever attacked), and the calibration of the unseen
attacks' radius.
"""
from __future__ import annotations

import dataclasses
import json
import logging
import time
from typing import List, Optional

import numpy as np
from tqdm import tqdm

from attacks.base import UniversalAttack
from attacks.factory import make_attack
from attacks.metrics import fooling_rate
from attacks.projection import lp_norm
from attacks.synthetic import synthesize

from .config import AttackSet, attack_sets, stage_of, train_extra_sets, train_subsets
from .runner import Context, save_json, save_npy

log = logging.getLogger(__name__)


def make_set_attack(ctx: Context, s: AttackSet, classifier) -> UniversalAttack:
    """The attack of a set, through the one factory (``attacks.make_attack``), with the config's parameters."""
    cfg = ctx.cfg
    params = {"uap": dict(norm=s.norm, delta=cfg.uap_delta, max_passes=cfg.uap_passes, num_classes=cfg.uap_classes,
                          batch_size=cfg.uap_batch),
              "spgd": dict(norm=s.norm, epochs=cfg.spgd_epochs, batch_size=cfg.uap_batch),
              "gduap": dict(max_iter=cfg.gduap_iters, prior=cfg.gduap_prior),
              "fff": dict(max_iter=cfg.gduap_iters),
              "svuap": dict(norm=s.norm, layer=cfg.svuap_layer, q=cfg.svuap_q, n_images=cfg.svuap_images,
                            max_iter=cfg.svuap_iters, batch_size=cfg.uap_batch),
              "gap": dict(norm=s.norm, max_iter=cfg.gap_iters),
              "nag": dict(norm=s.norm, max_iter=cfg.nag_iters, diversity_weight=cfg.nag_diversity,
                          lr=cfg.nag_lr)}
    if s.kind not in params:
        raise ValueError(f"unknown attack kind '{s.kind}'")
    return make_attack(s.kind, classifier, xi=s.xi, verbose=ctx.progress, **params[s.kind])


def compute_set(ctx: Context, s: AttackSet, stage: str, xi: Optional[float] = None) -> List[dict]:
    """Compute (or keep) the ``count`` perturbations of ``s`` into ``<stage>/<set>/<k>.npy``."""
    subsets = train_subsets(ctx.cfg, len(ctx.train_data()))
    clf = ctx.classifier(s.target)
    index = attack_sets(ctx.cfg).index(s)
    if xi is not None:
        s = dataclasses.replace(s, xi=float(xi))
    folder = ctx.folder(stage) / s.name
    infos = []
    for k in tqdm(range(s.count), desc=f"{s.name} ({s.kind})", unit="pert", disable=not ctx.progress):
        npy, meta = folder / f"{k:02d}.npy", folder / f"{k:02d}.json"
        if npy.is_file() and meta.is_file():
            infos.append(json.loads(meta.read_text()))
            continue
        x = ctx.train_data().take(subsets[(s.name, k)])[0] if s.uses_images else None
        seed = [ctx.cfg.seed, 202, index, k]
        start = time.perf_counter()
        res = make_set_attack(ctx, s, clf).generate(x, np.random.default_rng(seed))
        v = np.asarray(res.perturbation, np.float32)
        info = {"set": s.name, "attack": s.kind, "norm": s.norm, "xi": s.xi, "target": s.target,
                "linf": lp_norm(v, "inf"), "l2": lp_norm(v, "2"), "seed": seed,
                "train_images": int(len(x)) if x is not None else 0,
                "fooling_rate_on_its_images": None if not np.isfinite(res.fooling_rate) else res.fooling_rate,
                "iterations": res.n_iter, "seconds": round(time.perf_counter() - start, 2)}
        save_npy(npy, v)
        save_json(meta, info)
        infos.append(info)
    return infos


def stage_train_attacks(ctx: Context) -> dict:
    """The training UAPs on the baseline (each from its own subset of the training split),
    then the synthetic training perturbations mixed from them."""
    train = next(s for s in attack_sets(ctx.cfg) if s.name == "train")
    out = {"train": set_summary(compute_set(ctx, train, "train_attacks"))}
    cfg = ctx.cfg
    if cfg.synthetic:
        stack = np.stack(ctx.perturbations("train"))
        res = synthesize(stack, cfg.synthetic, np.random.default_rng([cfg.seed, 303]), rule=cfg.synthetic_rule)
        folder = ctx.folder("train_attacks") / "synthetic"
        for k, v in enumerate(res.perturbations):
            save_npy(folder / f"{k:02d}.npy", v)
        out["synthetic"] = {"count": cfg.synthetic, "rule": cfg.synthetic_rule, "l2_threshold": res.threshold,
                            "rescaled": res.rescaled}
    for s in train_extra_sets(cfg):
        out[s.name] = set_summary(compute_set(ctx, s, "train_attacks"))
    return out


def stage_test_attacks(ctx: Context) -> dict:
    """Same-norm, cross-norm, stronger and unseen perturbations on the baseline, each from its
    own subset of the training split (no test image is used)."""
    out = {}
    for s in attack_sets(ctx.cfg):
        if stage_of(s.name) != "test_attacks":
            continue
        calibration = calibrate_xi(ctx, s) if s.name.startswith("unseen-") else None
        out[s.name] = set_summary(compute_set(ctx, s, "test_attacks", calibration["xi"] if calibration else None))
        if calibration:
            out[s.name]["calibration"] = calibration
    return out


def calibrate_xi(ctx: Context, s: AttackSet) -> dict:
    """The smallest ``xi x step`` (steps: ``cfg.unseen_xi_steps``) at which the attack fools the
    baseline on at least ``cfg.unseen_min_fooling`` of held-out *training* images (the rule the
    UAPs' xi follows); the last step if none does. No test image is used. The attack runs in
    Caffe, the fooling rate's forward passes in ``ctx.runtime``."""
    cfg, clf, fast = ctx.cfg, ctx.classifier("baseline"), ctx.forward_classifier("baseline")
    subsets = train_subsets(cfg, len(ctx.train_data()))
    held_out = ctx.train_data().take(subsets[("calibration", 0)])[0]
    clean = fast.labels(held_out)
    x = ctx.train_data().take(subsets[(s.name, 0)])[0] if s.uses_images else None
    tried = []
    for step in cfg.unseen_xi_steps:
        xi = round(cfg.xi * step, 4)
        res = make_set_attack(ctx, dataclasses.replace(s, xi=xi), clf).generate(x, np.random.default_rng([cfg.seed, 505]))
        fr = fooling_rate(clean, fast.labels(held_out, perturbation=res.perturbation))
        tried.append({"xi": xi, "fooling_rate_held_out_train": fr})
        log.info("calibrating %s: xi %g fools %.3f of held-out training images", s.name, xi, fr)
        if fr >= cfg.unseen_min_fooling:
            break
    return {"xi": tried[-1]["xi"], "tried": tried, "rule": f"fooling rate >= {cfg.unseen_min_fooling} on "
            f"{len(held_out)} held-out training images"}


def set_summary(infos: List[dict]) -> dict:
    fr = [i["fooling_rate_on_its_images"] for i in infos if i["fooling_rate_on_its_images"] is not None]
    return {"count": len(infos), "xi": infos[0]["xi"] if infos else None, "norm": infos[0]["norm"] if infos else None,
            "mean_fooling_rate_on_its_images": float(np.mean(fr)) if fr else None,
            "seconds": round(sum(i["seconds"] for i in infos), 1)}


def stage_adaptive(ctx: Context) -> dict:
    """White-box UAPs through baseline+FRU (test perturbations of the adaptive case)."""
    s = next(s for s in attack_sets(ctx.cfg) if s.name == "adaptive")
    return {"adaptive": set_summary(compute_set(ctx, s, "adaptive"))}
