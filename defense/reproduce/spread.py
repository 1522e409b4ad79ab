"""Where a cell's spread over the seeds comes from: ``python -m defense.reproduce.spread``.

A cell of the aggregate (a model's restoration or fooling rate on one case) varies between
seeds for three reasons: each seed draws its own perturbations (k of them, one per image),
trains its own nets, and evaluates n images (binomial noise). With the variance of one
perturbation's mean metric about the case's mean, ``sigma_u^2``, and the per-image variance,
``sigma_w^2``, the variance of a seed's cell is

    V(k) = sigma_b^2 + sigma_u^2 / k + sigma_w^2 / n

where ``sigma_b^2`` is what the seed's trained nets add (for an image-domain filter, the seed's
baseline and how it shapes the seed's perturbations). One replica evaluated with many
perturbations gives ``sigma_u^2`` and ``sigma_w^2`` (method of moments: the spread of the
per-perturbation means less their binomial part); the aggregates' per-seed values, made with the
protocol's k, give V(k) and so ``sigma_b^2``. The 95% half-width of K seeds is then
t_{0.975, K-1} sqrt(V(k) / K) (``stats.half_width``), for any K and k: what it takes to bring a
cell under a target.
"""
from __future__ import annotations

import argparse
import dataclasses
import json
import math
import sys
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from attacks.metrics import fooling_rate, restoration_accuracy

from ..core import ToolkitError, parse_args, run_cli, write_text
from ..evaluate.conditions import draw_choices
from ..outputs import check_output, output_file
from .config import ReproConfig, attack_sets, eval_cases
from .runner import save_json
from .stats import LEVEL, half_width

METRICS = ("restoration", "fooling_rate")


def _load_predictions(folder: Path, model: str, case: str) -> Dict[str, np.ndarray]:
    path = folder / f"predictions_{model}.npz"
    try:
        with np.load(path, allow_pickle=False) as data:
            return {"labels": data["labels"].astype(np.int64), "clean": data[f"{model}|clean|top1"],
                    "perturbed": data[f"{model}|{case}|top1"]}
    except (OSError, ValueError) as exc:
        raise ToolkitError(f"{path}: not a readable prediction file ({exc})") from None
    except KeyError as exc:
        raise ToolkitError(f"{path}: no key {exc} (is '{case}' a case of this run?)") from None


def per_perturbation(replica: Path, case: str) -> Dict[str, Dict[str, object]]:
    """Per model of one replica's evaluation of ``case``: each perturbation's mean restoration and
    fooling rate over the images it was drawn for, its image count, and the per-image variance.

    Restoration of perturbation j is (clean top-1 + perturbed top-1 on j's images) / (2 x the
    baseline's clean top-1), as the aggregate's cell, so the cell is their image-weighted mean.
    """
    folder = Path(replica) / "evaluate"
    result_path = folder / f"{case}.json"
    try:
        result = json.loads(result_path.read_text())
        config = json.loads((Path(replica) / "config.json").read_text())
        k, denominator = int(result["perturbations"]), float(result["restoration_denominator"])
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise ToolkitError(f"{replica}: not an evaluated replica of case '{case}' ({exc})") from None
    models = [m for m in result["models"] if (folder / f"predictions_{m}.npz").is_file()]
    if k < 2 or not models:
        raise ToolkitError(f"{replica}: '{case}' needs predictions and at least 2 perturbations, has {k} "
                           f"and {len(models)} prediction files (run it with e.g. --set test_uaps=16)")
    out = {}
    for model in models:
        p = _load_predictions(folder, model, case)
        choice = draw_choices(len(p["labels"]), k, int(config["eval_seed"]))
        if not len(p["labels"]) == len(p["clean"]) == len(p["perturbed"]) or np.bincount(choice, minlength=k).min() < 2:
            raise ToolkitError(f"{folder / f'predictions_{model}.npz'}: its arrays differ in length or leave a "
                               f"perturbation under 2 images")
        clean = float(np.mean(p["clean"] == p["labels"]))
        hits = (p["perturbed"] == p["labels"]).astype(np.float64)
        rows = {key: [] for key in ("restoration", "fooling_rate", "images", "within_restoration", "within_fooling_rate")}
        for j in range(k):
            on = choice == j
            per_image = restoration_accuracy(clean, hits[on], denominator)
            rows["images"].append(int(on.sum()))
            rows["restoration"].append(float(per_image.mean()))
            rows["within_restoration"].append(float(per_image.var(ddof=1)))
            rows["fooling_rate"].append(fooling_rate(p["clean"][on], p["perturbed"][on]))
            rows["within_fooling_rate"].append(float((p["perturbed"][on] != p["clean"][on]).var(ddof=1)))
        out[model] = rows
    return out


def components(rows: Dict[str, List[float]], metric: str) -> Dict[str, float]:
    """``sigma_u^2`` (between perturbations, binomial part removed, at least 0) and ``sigma_w^2``
    (per image) of ``metric`` from one replica's per-perturbation rows."""
    means, n = np.asarray(rows[metric]), np.asarray(rows["images"], dtype=np.float64)
    within = float(np.average(rows[f"within_{metric}"], weights=n - 1))
    between = float(means.var(ddof=1) - within * np.mean(1.0 / n))
    return {"sigma_u2": max(between, 0.0), "sigma_w2": within}


def decompose(parts: Dict[str, float], seed_values: Sequence[Sequence[float]], k: int, images: int,
              seeds_grid: Sequence[int] = (5, 7, 10), target: float = 0.03) -> Dict[str, object]:
    """``sigma_b^2`` from the per-seed values of runs made with ``k`` perturbations on ``images``
    images (each list one run; their sample variances pooled), and the predicted half-width for
    each number of seeds in ``seeds_grid`` with k, 2k and 4k perturbations; ``seeds_for_target``:
    the fewest seeds (up to 50) whose predicted half-width is under ``target``, per count."""
    k_grid = (k, 2 * k, 4 * k)
    dof = sum(len(v) - 1 for v in seed_values)
    if dof < 1:
        raise ValueError("the per-seed values need at least two seeds in one run")
    observed = sum(np.var(v, ddof=1) * (len(v) - 1) for v in seed_values) / dof
    binomial = parts["sigma_w2"] / images
    sigma_b2 = max(float(observed) - parts["sigma_u2"] / k - binomial, 0.0)

    def sd(kk: int) -> float:
        return math.sqrt(sigma_b2 + parts["sigma_u2"] / kk + binomial)

    return {"observed_sd": math.sqrt(observed), "dof": dof, "sigma_b": math.sqrt(sigma_b2),
            "sigma_u": math.sqrt(parts["sigma_u2"]), "binomial_sd": math.sqrt(binomial),
            "share_of_perturbations": parts["sigma_u2"] / k / observed if observed > 0 else None,
            "half_width": {f"K={K},k={kk}": half_width(sd(kk), K) for K in seeds_grid for kk in k_grid},
            "seeds_for_target": {f"k={kk}": next((K for K in range(2, 51) if half_width(sd(kk), K) < target), None)
                                 for kk in k_grid}}


def seeds_to_decide(claims: Sequence[dict], most: int = 200) -> List[dict]:
    """Per claim of an aggregate: its verdict, and the fewest seeds whose 95% interval would lie
    wholly on one side of the threshold if the mean and sd over the seeds stayed as measured
    (None: the mean sits on the threshold or more than ``most`` seeds would be needed)."""
    out = []
    for claim in claims:
        d = claim["difference"]
        mean, sd, n = float(d["mean"]), float(np.std(d["values"], ddof=1)), int(d["n"])
        gap = abs(mean - float(claim["threshold"]))
        need = next((K for K in range(2, most + 1) if half_width(sd, K) < gap), None) if gap > 0 else None
        out.append({"claim": claim["claim"], "verdict": claim["verdict"], "mean": mean, "sd": sd, "seeds": n,
                    "op": claim["op"], "threshold": claim["threshold"], "seeds_to_decide": need})
    return out


def case_perturbations(config: dict, case: str) -> int:
    """How many perturbations a seed of a run with ``config`` (a summary's) draws for ``case``."""
    cfg = ReproConfig(**{f.name: config[f.name] for f in dataclasses.fields(ReproConfig) if f.name in config})
    counts = {s.name: s.count for s in attack_sets(cfg)}
    sets = next((c.sets for c in eval_cases(cfg) if c.key == case), None)
    if sets is None:
        raise KeyError(f"no case '{case}'")
    return sum(counts[s] for s in sets)


def spread_report(replica: Path, aggregates: Sequence[Path], case: str = "same-norm", target: float = 0.03) -> dict:
    """Every model's and metric's decomposition for ``case`` (see the module's docstring)."""
    rows = per_perturbation(replica, case)
    runs = []
    for path in aggregates:
        try:
            summary = json.loads(Path(path).read_text())
            cell = summary["cases"][case]
            values = {m: {metric: [float(v) for v in cell["models"][m][metric]["values"]] for metric in METRICS}
                      for m in rows if m in cell["models"]}
            k = case_perturbations(summary["config"], case)
            if any(len(v) < 2 for m in values.values() for v in m.values()):
                raise ToolkitError(f"{path}: '{case}' has fewer than 2 seeds; the spread over seeds needs a K-seed run")
            runs.append({"path": str(path), "k": k, "images": int(summary["evaluation_images"]), "values": values,
                         "claims": seeds_to_decide(summary.get("claims", []))})
        except (OSError, ValueError, KeyError, TypeError) as exc:
            raise ToolkitError(f"{path}: not an aggregate summary.json with case '{case}' ({exc!r})") from None
    ks = {(r["k"], r["images"]) for r in runs}
    if len(ks) != 1:
        raise ToolkitError(f"the aggregates must share one count of perturbations and images for '{case}', "
                           f"got {sorted(ks)}")
    (k, images), = ks
    models = {}
    for model, per in rows.items():
        if not all(model in r["values"] for r in runs):
            continue
        models[model] = {}
        for metric in METRICS:
            parts = components(per, metric)
            values = [r["values"][model][metric] for r in runs]
            models[model][metric] = {"per_perturbation": [float(v) for v in per[metric]],
                                     **decompose(parts, values, k, images, target=target)}
    config = json.loads((Path(replica) / "config.json").read_text())
    return {"case": case, "replica": {f: config.get(f) for f in ("seed", "test_uaps", "test_images", "eval_seed")},
            "replica_perturbations": len(next(iter(rows.values()))["images"]),
            "aggregates": [r["path"] for r in runs], "protocol_k": k, "images": images, "target_half_width": target,
            "level": LEVEL, "models": models, "claims": {r["path"]: r["claims"] for r in runs}}


def markdown(report: dict) -> str:
    """One row per model and metric: observed sd, its parts, and the predicted half-widths; then,
    per aggregate, the seeds each claim would need for a decided verdict."""
    k = report["protocol_k"]
    ks = (k, 2 * k, 4 * k)
    lines = [f"| model | metric | sd over seeds (k={k}) | share from the perturbation draw | sigma_b (the seed's nets) "
             "| sigma_u (one perturbation) " + "".join(f"| ±, K=5, k={kk} " for kk in ks)
             + f"| seeds for ±{report['target_half_width']:g}, k={' / '.join(map(str, ks))} |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for model, metrics in report["models"].items():
        for metric, d in metrics.items():
            hw, need = d["half_width"], d["seeds_for_target"]
            share = "n/a" if d["share_of_perturbations"] is None else f"{100 * d['share_of_perturbations']:.0f}%"
            lines.append(f"| {model} | {metric} | {d['observed_sd']:.4f} | {share} | {d['sigma_b']:.4f} "
                         f"| {d['sigma_u']:.4f} "
                         + "".join(f"| {hw[f'K=5,k={kk}']:.3f} " for kk in ks)
                         + f"| {' / '.join(str(need[f'k={kk}'] or '>50') for kk in ks)} |")
    for path, claims in [(p, c) for p, c in report.get("claims", {}).items() if c]:
        lines += ["", f"Seeds each claim of `{path}` would need for a decided verdict, if its mean and sd over the "
                      "seeds held (the interval wholly on one side of the threshold):", "",
                  "| claim | claimed | mean | sd | verdict now | seeds to decide |", "|---|---|---|---|---|---|"]
        lines += [f"| {c['claim']} | {c['op']} {c['threshold']:g} | {c['mean']:.3f} | {c['sd']:.3f} | {c['verdict']} "
                  f"| {c['seeds_to_decide'] or 'over 200'} |" for c in claims]
    return "\n".join(lines) + "\n"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m defense.reproduce.spread", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("replica", type=Path, help="a finished replica folder (OUT/seed-<s>), ideally run with many "
                                              "perturbations, e.g. --set test_uaps=16")
    p.add_argument("aggregates", type=Path, nargs="+", help="aggregate summary.json files of K-seed runs made with the "
                                                            "protocol's perturbation count")
    p.add_argument("--case", default="same-norm",
                   help="the evaluated case, e.g. cross-norm or unseen-gap (default same-norm)")
    p.add_argument("--target", type=float, default=0.03, help="half-width to reach (default 0.03)")
    p.add_argument("--out", type=output_file, required=True, help="JSON report; a .md table is written beside it")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    if args.out.suffix != ".json":
        raise ToolkitError(f"--out {args.out}: name a .json file (the .md table goes beside it)")
    check_output(args.out.with_suffix(".md"), "--out", "file", args, skip={"out"})
    if not 0 < args.target < 1:
        raise ToolkitError(f"--target must be in (0, 1), got {args.target}")
    report = spread_report(args.replica, args.aggregates, args.case, args.target)
    save_json(args.out, report)
    table = markdown(report)
    write_text(args.out.with_suffix(".md"), table)
    print(table, end="")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
