"""The reproduction's report: ``summary.json``, ``results.md``, the figures, the targets, and
shipping the demo files to the paths of ``paper.DEMO``.
"""
from __future__ import annotations

import dataclasses
import json
import os
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from ..core import atomic_path, load_blobs, write_bytes, write_text
from ..evaluate.report import bar_chart
from ..generate.ranking import rank_channels
from ..paper import demo_defaults
from .config import COMPETITORS, IMAGE_PEERS, MODEL_ORDER, NET, RESTORATION_GAIN, eval_cases, stage_of
from .runner import Context, save_json
from .stages import evaluation_images, fru_targets
from .stats import OPS


def case_rows(result: dict) -> Dict[str, Dict[str, float]]:
    return {name: {"clean_top1": row["clean_top1"], "perturbed_top1": row["perturbed_top1"],
                   "restoration": row["restoration_accuracy"], "fooling_rate": row["fooling_rate"]}
            for name, row in result["models"].items()}


def check_targets(summary: dict) -> List[dict]:
    """The issue's targets, each with the measured value, its comparison (``value op threshold``)
    and whether it is met. ``over_seeds``: whether the aggregate judges it from the interval over
    the seeds (every target but this replica's own wall time)."""
    cases, out = summary["cases"], []

    def add(name, value, op, threshold, detail="", over_seeds=True):
        out.append({"target": name, "value": value, "op": op, "threshold": threshold,
                    "met": bool(OPS[op](value, threshold)), "detail": detail, "over_seeds": over_seeds})

    top1 = summary["baseline"]["test_top1"]
    add("baseline test top-1 >= 0.90", top1, ">=", 0.90, f"on {summary['baseline']['test_images']} test images")
    if "same-norm" in cases:
        m = cases["same-norm"]["models"]
        add("same-norm: baseline fooling rate >= 0.5", m["baseline"]["fooling_rate"], ">=", 0.5)
        add("same-norm: baseline restoration <= 0.75", m["baseline"]["restoration"], "<=", 0.75)
        add("same-norm: FRU restoration >= 0.95", m["fru"]["restoration"], ">=", 0.95)
        diff = abs(m["fru"]["clean_top1"] - m["baseline"]["clean_top1"])
        add("FRU clean top-1 within 0.01 of the baseline's", diff, "<=", 0.01,
            f"FRU {m['fru']['clean_top1']:.4f}, baseline {m['baseline']['clean_top1']:.4f}")
    for key, case in cases.items():
        if case["group"] not in ("stronger", "unseen"):
            continue
        m = case["models"]
        add(f"{key}: FRU restoration >= 0.85", m["fru"]["restoration"], ">=", 0.85)
        add(f"{key}: FRU - baseline restoration >= {RESTORATION_GAIN:g}",
            m["fru"]["restoration"] - m["baseline"]["restoration"], ">=", RESTORATION_GAIN)
    rk = summary.get("ranking", {})
    if "fru_bottom" in cases.get("same-norm", {}).get("models", {}):
        top, bottom = (cases["same-norm"]["models"][k]["restoration"] for k in ("fru", "fru_bottom"))
        add("ranking: top-ranked FRU beats bottom-ranked FRU (same-norm restoration)", top - bottom, ">", 0.0,
            f"top {top:.4f}, bottom {bottom:.4f}")
    for layer, r in rk.get("masking", {}).items():
        add(f"ranking: masking top half beats bottom half ({layer})", r["top_half_masked"] - r["bottom_half_masked"],
            ">", 0.0, f"top {r['top_half_masked']:.4f}, bottom {r['bottom_half_masked']:.4f}")
    for key, case in cases.items():
        if case["group"] not in ("same-norm", "unseen"):
            continue
        m = case["models"]
        best = max(IMAGE_PEERS, key=lambda p: m[p]["restoration"] if p in m else -1)
        if best in m:
            add(f"{key}: FRU restoration above every image-domain peer", m["fru"]["restoration"] - m[best]["restoration"],
                ">", 0.0, f"best peer {best} {m[best]['restoration']:.4f}")
    wall = summary.get("wall_seconds_all_stages")
    if wall is not None:
        add("reproduction under 20 minutes (first stage start to last stage end)", wall, "<", 1200,
            f"{os.cpu_count()} cores, {summary['machine'].get('jobs', 1)} jobs, "
            f"load average {summary['machine']['loadavg_end']}", over_seeds=False)
    return out


def best_competitor(restoration: Dict[str, float]) -> Optional[str]:
    """The competitor column (``config.COMPETITORS``) with the highest restoration among those
    present in ``restoration`` (model -> restoration); the first in that order on a tie."""
    present = [c for c in COMPETITORS if c in restoration]
    return max(present, key=lambda c: restoration[c]) if present else None


def competitor_row(models: Dict[str, dict]) -> Optional[dict]:
    """One case's best competitor and the FRUs' margin over it (restoration), in one replica."""
    best = best_competitor({m: row["restoration"] for m, row in models.items()})
    if best is None or "fru" not in models:
        return None
    return {"model": best, "restoration": models[best]["restoration"],
            "fru_margin": models["fru"]["restoration"] - models[best]["restoration"]}


def ordered_models(cases: Dict[str, dict]) -> List[str]:
    """Every model column of ``cases``: ``MODEL_ORDER`` first, then any other in order of appearance."""
    present = [m for c in cases.values() for m in c["models"]]
    return [m for m in MODEL_ORDER if m in present] + [m for m in dict.fromkeys(present) if m not in MODEL_ORDER]


def metric_tables(cases: Dict[str, dict], models: Sequence[str], cell: Callable[[object], str]) -> List[str]:
    """One markdown table per metric (cases x models), each cell written by ``cell``; "-" where missing."""
    lines = []
    for metric, title in (("restoration", "Restoration accuracy"), ("fooling_rate", "Fooling rate"),
                          ("perturbed_top1", "Perturbed top-1"), ("clean_top1", "Clean top-1")):
        lines += [f"## {title}", "", "| case | " + " | ".join(models) + " |", "|---" * (len(models) + 1) + "|"]
        for key, case in cases.items():
            cells = [cell(case["models"][m][metric]) if metric in case["models"].get(m, {}) else "-" for m in models]
            lines.append(f"| {key}: {case['title']} | " + " | ".join(cells) + " |")
        lines.append("")
    return lines


def markdown_report(summary: dict) -> str:
    cases = summary["cases"]
    models = ordered_models(cases)
    lines = [f"# Fashion-MNIST reproduction (FashionNet), seed {summary['config']['seed']}", "",
             f"Baseline test top-1 {summary['baseline']['test_top1']:.4f} on {summary['baseline']['test_images']} "
             f"images. Attacks: l_inf xi = {summary['config']['xi']:g}, l_2 xi = {summary['xi_l2']:g} (pixel units, "
             f"[0, 255]), computed on the training split. Evaluation: {summary['evaluation_images']} test images, one "
             "perturbation per image drawn at random (seeded), not clipped.", ""]
    extra = summary["config"].get("train_extra") or ()
    if extra:
        lines += [f"**Diagnostic run, outside the paper's protocol:** {summary['config']['train_extra_per_attack']} "
                  f"perturbations each of {', '.join(extra)} (on their own training images) were added to the FRU and "
                  "fine-tuning training set, so those attacks are seen, not unseen, here.", ""]
    lines += ["Restoration accuracy = (clean top-1 + perturbed top-1) / (2 x baseline clean top-1).", ""]
    lines += metric_tables(cases, models, lambda value: f"{value:.4f}")
    lines += ["## Best competitor per case", "", f"The competitor ({', '.join(COMPETITORS)}) with the highest "
              "restoration, and the FRUs' margin over it.", "",
              "| case | best competitor | its restoration | FRU - best competitor |", "|---|---|---|---|"]
    lines += [f"| {key} | {b['model']} | {b['restoration']:.4f} | {b['fru_margin']:+.4f} |"
              for key, b in ((k, c.get("best_competitor")) for k, c in cases.items()) if b]
    lines.append("")
    rk = summary.get("ranking", {})
    if rk.get("masking"):
        lines += ["## Ranking experiment", "",
                  "Masking: the top- (bottom-) ranked half of a target conv's activations under the same-norm "
                  "UAPs replaced by the clean activations (no training). Restoration accuracy:", "",
                  "| layer | top half masked | bottom half masked |", "|---|---|---|"]
        lines += [f"| {layer} | {r['top_half_masked']:.4f} | {r['bottom_half_masked']:.4f} |"
                  for layer, r in rk["masking"].items()]
        lines += ["", "Regeneration: `fru` regenerates the top-ranked half, `fru_bottom` the bottom-ranked half "
                  "(same training); see the tables above.", ""]
    budget = summary.get("training_budget") or {}
    if budget:
        lines += ["## Training budget", "", "FD (feature denoising blocks, the whole net trained) gets the FRUs' batches, "
                  "iterations and batch size; seconds are wall time on this run's machine.", "",
                  "| model | iterations | batch | solver | trainable parameters | seconds |", "|---|---|---|---|---|---|"]
        lines += [f"| {m} | {b['iterations']} | {b['batch']} | {b['solver']} | {b['trainable_parameters']:,} | "
                  f"{b['seconds']:.1f} |" for m, b in budget.items()]
        lines.append("")
    lines += ["## Targets", "", "| target | value | met |", "|---|---|---|"]
    lines += [f"| {t['target']} | {t['value']:.4f} | {'yes' if t['met'] else '**no**'} {t['detail']} |"
              for t in summary["targets"]]
    lines += ["", "## Stage timings (seconds)", "", "| stage | seconds | note |", "|---|---|---|"]
    lines += [f"| {name} | {t['seconds']:.1f} | {'from an earlier run' if t['resumed'] else ''} |"
              for name, t in summary["timings"].items()]
    m = summary["machine"]
    lines += ["", f"First stage start to last stage end: {summary['wall_seconds_all_stages']:.1f} s "
              f"({m.get('jobs', 1)} worker process{'es' if m.get('jobs', 1) > 1 else ''}; independent stages overlap).",
              "", f"Machine: {m['cpus']} CPUs, load average at start {m['loadavg_start']}, at end {m['loadavg_end']}.", ""]
    return "\n".join(lines)


def restoration_figure(restoration: Dict[str, Dict[str, float]], path: Path,
                       errors: Optional[Dict[str, Dict[str, float]]] = None, subtitle: str = "") -> Path:
    """Restoration accuracy per case (groups) and model (bars), with error bars when given.

    :param restoration: case -> model -> restoration; ``errors``: the same, half-widths.
    """
    cases = {k: {"models": v} for k, v in restoration.items()}
    models = [m for m in ordered_models(cases) if m != "fru_bottom"]
    nan = float("nan")
    bar_chart(path, list(restoration), {m: [row.get(m, nan) for row in restoration.values()] for m in models},
              f"FashionNet on Fashion-MNIST test: restoration per attack{subtitle}",
              figsize=(2 + 1.3 * len(restoration), 4.5), ylim=(0.4, 1.05), ylabel="restoration accuracy",
              tick_style=dict(rotation=30, ha="right"), hline=1.0, legend=dict(fontsize=7, ncol=4),
              errors=None if errors is None else {m: [row.get(m, nan) for row in errors.values()] for m in models})
    return path


def feature_map_figure(ctx: Context, path: Path, image: int = 0) -> Tuple[Path, dict]:
    """One channel of the first target (its top-ranked channel): clean / perturbed / regenerated."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    target = fru_targets(ctx)[0]
    channel = int(rank_channels(load_blobs(ctx.baseline_weights)[target.layer][0], "l1")[0])
    x, _ = evaluation_images(ctx)
    x = x[image:image + 1]
    v = ctx.perturbations("same-norm")[0]
    blob = target.layer  # the ReLU's output in both nets (after the FRU in the defended one)
    clean = ctx.classifier("baseline").blob_values(x, [blob])[blob][0, channel]
    pert = ctx.classifier("baseline").blob_values(x, [blob], perturbation=v)[blob][0, channel]
    regen = ctx.classifier("fru").blob_values(x, [blob], perturbation=v)[blob][0, channel]
    vmax = float(max(clean.max(), pert.max(), regen.max(), 1e-6))
    fig, axes = plt.subplots(1, 4, figsize=(11, 3))
    axes[0].imshow(np.clip(x[0, 0] + v[0], 0, 255), cmap="gray")
    axes[0].set_title("perturbed input")
    for ax, img, title in zip(axes[1:], (clean, pert, regen), ("clean", "perturbed", "regenerated (FRU)")):
        im = ax.imshow(img, cmap="viridis", vmin=0, vmax=vmax)
        ax.set_title(f"{blob}[{channel}]\n{title}")
    for ax in axes:
        ax.axis("off")
    fig.colorbar(im, ax=list(axes[1:]), shrink=0.8)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=110)
    plt.close(fig)
    err = lambda a: float(np.linalg.norm(a - clean) / max(np.linalg.norm(clean), 1e-12))  # noqa: E731
    return path, {"layer": blob, "channel": channel, "image": image,
                  "relative_error_perturbed": err(pert), "relative_error_regenerated": err(regen)}


def perturbation_sets(records: Dict[str, dict]) -> dict:
    return {**records.get("train_attacks", {}).get("result", {}), **records.get("test_attacks", {}).get("result", {})}


def stages_wall_seconds(records) -> float:
    """From the first stage's start to the last stage's end (stages run side by side overlap);
    the sum of stage times for records written before start and end times were kept."""
    records = list(records)
    if all("started_at" in r for r in records):
        return round(max(r["ended_at"] for r in records) - min(r["started_at"] for r in records), 1)
    return round(sum(r["seconds"] for r in records), 1)


def adaptive_results(records: Dict[str, dict]) -> dict:
    """The white-box sets and the secondary training, from both stages that make them."""
    return {**records.get("adaptive", {}).get("result", {}), **records.get("secondary", {}).get("result", {})}


def finish_order(records: Dict[str, dict]) -> List[Tuple[str, dict]]:
    """Stage records in the order the stages ended (their recorded ``ended_at``), so a rerun that
    skips every stage reports them as the run that computed them did, whatever order the workers
    answer in; records written before end times were kept stay in arrival order."""
    items = list(records.items())
    if all("ended_at" in r for _, r in items):
        items.sort(key=lambda item: item[1]["ended_at"])
    return items


def training_budget(records: Dict[str, dict]) -> dict:
    """Iterations, batch, solver, seconds and trainable parameters of the FRUs and of FD, side by side."""
    fd = records.get("fd", {}).get("result")
    if not fd:
        return {}
    fru = records.get("train_fru", {}).get("result", {})
    return {"fru": {**fru, "trainable_parameters": fd["fru_trainable_parameters"]},
            "fd": {**fd["training"], "trainable_parameters": fd["trainable_parameters"],
                   "block_parameters": fd["block_parameters"], "blocks": fd["blocks"]}}


def build_summary(ctx: Context, started: float, load_start: Sequence[float]) -> dict:
    cases = {}
    rec = ctx.records
    for case in eval_cases(ctx.cfg):
        result = json.loads((ctx.folder("evaluate") / f"{case.key}.json").read_text())
        sets = {**perturbation_sets(rec), **adaptive_results(rec)}
        xi = sets.get(case.sets[0], {}).get("xi")
        title = case.title.replace("xi calibrated", f"xi={xi:g} (calibrated)") if xi is not None else case.title
        cases[case.key] = {"title": title, "group": case.group, "perturbations": result["perturbations"],
                           "images": result["images"], "models": case_rows(result)}
        cases[case.key]["best_competitor"] = competitor_row(cases[case.key]["models"])
    rec = ctx.records
    base = rec["baseline"]["result"]
    timings = {name: {"seconds": r["seconds"], "resumed": r.get("resumed", False)} for name, r in finish_order(rec)}
    summary = {
        "network": NET, "command": "python -m defense.reproduce " + " ".join(sys.argv[1:]),
        "config": dataclasses.asdict(ctx.cfg), "xi_l2": ctx.cfg.l2_radius,
        "seeds": {"master": ctx.cfg.seed, "evaluation": ctx.cfg.eval_seed,
                  "rule": "every random draw uses numpy default_rng([seed, purpose, ...]); Caffe seeded with seed"},
        "baseline": base, "evaluation_images": cases[next(iter(cases))]["images"] if cases else 0,
        "restoration_formula": "(clean_top1 + perturbed_top1) / (2 * baseline clean_top1)",
        "cases": cases, "ranking": {**rec.get("masking", {}).get("result", {}),
                    "bottom_ranked_training": rec.get("ranking", {}).get("result", {})},
        "adaptive": adaptive_results(rec),
        "training_budget": training_budget(rec),
        "perturbation_sets": perturbation_sets(rec),
        "timings": timings, "wall_seconds_this_run": round(time.perf_counter() - started, 1),
        "wall_seconds_all_stages": stages_wall_seconds(rec.values()),
        "machine": {"cpus": os.cpu_count(), "jobs": ctx.jobs, "loadavg_start": [round(a, 2) for a in load_start],
                    "loadavg_end": [round(a, 2) for a in os.getloadavg()]},
        "stage_keys": dict(ctx.keys),
    }
    return summary


def write_report(ctx: Context, started: float, load_start: Sequence[float]) -> dict:
    summary = build_summary(ctx, started, load_start)
    _, fmap = feature_map_figure(ctx, ctx.out / "feature_map.png")
    summary["feature_map"] = fmap
    restoration_figure({k: {m: r["restoration"] for m, r in c["models"].items()} for k, c in summary["cases"].items()},
                       ctx.out / "restoration.png", subtitle=f" (seed {ctx.cfg.seed})")
    summary["targets"] = check_targets(summary)
    save_json(ctx.out / "summary.json", summary)
    write_text(ctx.out / "results.md", markdown_report(summary))
    return summary


# ---------------------------------------------------------------- shipping the demo files
def ship(ctx: Context, root: Path) -> List[Path]:
    """Copy the baseline, the FRU model (each with its training record) and a few test
    perturbations to ``paper.DEMO``'s paths."""
    demo = demo_defaults(NET)
    written = []
    for rel, src in ((demo.baseline[1], ctx.baseline_weights), (demo.fru[1], ctx.weights("fru"))):
        written.append(write_bytes(root / rel, src.read_bytes()))
        record = json.loads(src.with_suffix(".json").read_text())
        if "weights" in record:  # the record travels with the file: name where it now lies
            record["weights"] = rel
        written.append(save_json((root / rel).with_suffix(".json"), record))
    uap = root / demo.attacks["UAP"][0]
    samples = {uap: "same-norm", uap.with_name("uap_l2.npy"): "cross-norm"}
    for a in ctx.cfg.unseen:
        samples[uap.with_name(f"{a}.npy")] = f"unseen-{a}"
    for dst, name in samples.items():
        src = ctx.folder(stage_of(name)) / name / "00.npy"
        if src.is_file():
            written.append(write_bytes(dst, src.read_bytes()))
    return written
