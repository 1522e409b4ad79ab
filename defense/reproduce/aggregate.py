"""The aggregate of the reproduction's replicas: every cell as the mean and 95% interval over the
seeds, the best competitor per case, the targets and the paper's claims judged from intervals.

It reads only the per-seed summaries (``seed-<s>/summary.json``), whatever cases, models and
metrics they hold, and writes ``summary.json``, ``results.md``, ``claims.md`` and
``restoration.png`` (with error bars) beside the ``seed-<s>/`` folders.
"""
from __future__ import annotations

import dataclasses
import os
import sys
import time
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from ..core import write_text
from .claims import claims_markdown, judge_claims, paper_claims
from .config import COMPETITORS, NET, ReproConfig
from .report import best_competitor, metric_tables, ordered_models, restoration_figure, stages_wall_seconds
from .runner import save_json
from .stats import LEVEL, format_interval, mean_interval, verdict

# issue 20's targets of the run itself: the whole K = 5 run, every column, on an idle 2-core
# machine; the half-width of every same-norm cell's interval
WHOLE_RUN_LIMIT_SECONDS = 90 * 60
SAME_NORM_HALF_WIDTH = 0.03


def _keys(dicts: Sequence[dict]) -> List[str]:
    """The union of the dicts' keys, in order of first appearance."""
    return list(dict.fromkeys(k for d in dicts for k in d))


def aggregate_case(rows: Sequence[dict]) -> Dict[str, Dict[str, dict]]:
    """model -> metric -> interval over the replicas holding that cell (``rows``: one case's
    ``models`` per replica)."""
    return {m: {metric: mean_interval([r[m][metric] for r in rows if m in r and metric in r[m]])
                for metric in _keys([r[m] for r in rows if m in r])}
            for m in _keys(rows)}


def competitor_interval(rows: Sequence[dict], models: Dict[str, Dict[str, dict]]) -> Optional[dict]:
    """The competitor with the highest mean restoration, and the FRUs' margin over it, paired per seed."""
    best = best_competitor({m: cell["restoration"]["mean"] for m, cell in models.items() if "restoration" in cell})
    if best is None or "fru" not in models:
        return None
    margins = [r["fru"]["restoration"] - r[best]["restoration"] for r in rows if "fru" in r and best in r]
    return {"model": best, "restoration": models[best]["restoration"], "fru_margin": mean_interval(margins)}


def aggregate_cases(replicas: Sequence[dict]) -> Dict[str, dict]:
    """Every case of every replica: title, group, per-cell intervals and the best-competitor row."""
    out = {}
    for key in _keys([r["cases"] for r in replicas]):
        held = [r["cases"][key] for r in replicas if key in r["cases"]]
        titles = list(dict.fromkeys(c["title"] for c in held))
        rows = [c["models"] for c in held]
        models = aggregate_case(rows)
        out[key] = {"title": titles[0] if len(titles) == 1 else " / ".join(titles), "group": held[0]["group"],
                    "seeds": len(held), "models": models, "best_competitor": competitor_interval(rows, models)}
    return out


def aggregate_masking(replicas: Sequence[dict]) -> Dict[str, Dict[str, dict]]:
    masks = [r.get("ranking", {}).get("masking", {}) for r in replicas]
    return {layer: {k: mean_interval([m[layer][k] for m in masks if layer in m])
                    for k in ("top_half_masked", "bottom_half_masked")}
            for layer in _keys(masks)}


def aggregate_targets(replicas: Sequence[dict], wall_seconds: float, cases: Dict[str, dict]) -> List[dict]:
    """Each replica target judged from its interval over the seeds (met / missed / inconclusive),
    then two properties of the run itself (met or missed): the widest same-norm interval, and
    the whole run's wall time."""
    per_seed = [t for r in replicas for t in r["targets"] if t.get("over_seeds", True)]
    out = []
    for name in _keys([{t["target"]: None} for t in per_seed]):
        these = [t for t in per_seed if t["target"] == name]
        interval = mean_interval([t["value"] for t in these])
        out.append({"target": name, "value": interval, "op": these[0]["op"], "threshold": these[0]["threshold"],
                    "verdict": verdict(interval, these[0]["op"], these[0]["threshold"])})
    widths = [cell["half_width"] for cells in cases.get("same-norm", {}).get("models", {}).values()
              for cell in cells.values() if cell["half_width"] is not None]
    if widths:
        out.append({"target": f"every same-norm cell's 95% interval narrower than +-{SAME_NORM_HALF_WIDTH:g}",
                    "value": max(widths), "op": "<", "threshold": SAME_NORM_HALF_WIDTH,
                    "verdict": "met" if max(widths) < SAME_NORM_HALF_WIDTH else "missed"})
    out.append({"target": f"whole {len(replicas)}-seed run under {WHOLE_RUN_LIMIT_SECONDS // 60} minutes "
                          f"({WHOLE_RUN_LIMIT_SECONDS} s, first stage start to last stage end)", "value": wall_seconds,
                "op": "<=",
                "threshold": WHOLE_RUN_LIMIT_SECONDS,
                "verdict": "met" if wall_seconds <= WHOLE_RUN_LIMIT_SECONDS else "missed"})
    return out


def build_aggregate(cfg: ReproConfig, replicas: Sequence[dict], folders: Sequence[str], records: Sequence[dict],
                    started: float, load_start: Sequence[float], jobs: int) -> dict:
    """The aggregate summary of the per-seed summaries ``replicas`` (in ``folders``, relative to ``--out``)."""
    cases = aggregate_cases(replicas)
    masking = aggregate_masking(replicas)
    wall = stages_wall_seconds(records)
    return {
        "network": NET, "command": "python -m defense.reproduce " + " ".join(sys.argv[1:]),
        "config": dataclasses.asdict(cfg), "seeds": [r["config"]["seed"] for r in replicas],
        "replicas": {str(r["config"]["seed"]): f"{folder}/summary.json" for r, folder in zip(replicas, folders)},
        "interval": {"level": LEVEL, "method": "mean +- t_{0.975, n-1} * s / sqrt(n) over the seeds (Student t, "
                     "scipy.stats.t); claims: the same over per-seed paired differences",
                     "verdict": "met / reproduced: the whole interval on the target's side; missed / not reproduced: "
                                "the whole interval on the other side; otherwise inconclusive"},
        "competitors": list(COMPETITORS), "xi_l2": replicas[0]["xi_l2"],
        "baseline": {"test_top1": mean_interval([r["baseline"]["test_top1"] for r in replicas]),
                     "test_images": replicas[0]["baseline"]["test_images"]},
        "evaluation_images": replicas[0]["evaluation_images"],
        "restoration_formula": replicas[0]["restoration_formula"],
        "cases": cases, "ranking": {"masking": masking},
        "claims": judge_claims(paper_claims(cases, list(masking)), replicas),
        "targets": aggregate_targets(replicas, wall, cases),
        "wall_seconds_this_run": round(time.perf_counter() - started, 1), "wall_seconds_all_stages": wall,
        "machine": {"cpus": os.cpu_count(), "jobs": jobs, "loadavg_start": [round(a, 2) for a in load_start],
                    "loadavg_end": [round(a, 2) for a in os.getloadavg()]},
    }


def markdown_aggregate(summary: dict) -> str:
    """results.md of the aggregate: claims, every metric as mean ± 95% half-width, the best
    competitor per case, the ranking experiment, the targets, and links to the per-seed tables."""
    cases, seeds = summary["cases"], summary["seeds"]
    models = ordered_models(cases)
    lines = [f"# Fashion-MNIST reproduction (FashionNet), {len(seeds)} seeds", "",
             f"Seeds {', '.join(map(str, seeds))}, each an independent replica (its own baseline, UAPs, defences and "
             "attacks). Every cell: mean ± half-width of the 95% Student-t interval over the seeds; a verdict is "
             "decided from the whole interval (inside: met / reproduced; outside: missed / not reproduced; "
             "straddling: inconclusive).", "",
             f"Baseline test top-1 {format_interval(summary['baseline']['test_top1'])} on "
             f"{summary['baseline']['test_images']} "
             f"images. Attacks: l_inf xi = {summary['config']['xi']:g}, l_2 xi = {summary['xi_l2']:g} (pixel units, "
             f"[0, 255]), computed on the training split. Evaluation: {summary['evaluation_images']} test images.", "",
             "## The paper's claims", "", claims_markdown(summary["claims"]),
             "Restoration accuracy = (clean top-1 + perturbed top-1) / (2 x baseline clean top-1).", ""]
    lines += metric_tables(cases, models, format_interval)
    lines += ["## Best competitor per case", "", f"The competitor ({', '.join(summary['competitors'])}) with the "
              "highest mean restoration, and the FRUs' margin over it (paired over the seeds).", "",
              "| case | best competitor | its restoration | FRU restoration | FRU - best competitor |",
              "|---|---|---|---|---|"]
    lines += [f"| {key} | {b['model']} | {format_interval(b['restoration'])} | "
              f"{format_interval(c['models']['fru']['restoration'])} | {format_interval(b['fru_margin'])} |"
              for key, c in cases.items() for b in [c["best_competitor"]] if b]
    lines.append("")
    if summary["ranking"]["masking"]:
        lines += ["## Ranking experiment (masking)", "", "Same-norm restoration when the top- (bottom-) ranked half of "
                  "a target conv's activations gets the clean values:", "",
                  "| layer | top half masked | bottom half masked |", "|---|---|---|"]
        lines += [f"| {layer} | {format_interval(r['top_half_masked'])} | {format_interval(r['bottom_half_masked'])} |"
                  for layer, r in summary["ranking"]["masking"].items()]
        lines.append("")
    lines += ["## Targets", "", "| target | value | verdict |", "|---|---|---|"]
    for t in summary["targets"]:
        value = format_interval(t["value"]) if isinstance(t["value"], dict) else f"{t['value']:.4g}"
        shown = t["verdict"] if t["verdict"] == "met" else f"**{t['verdict']}**"
        lines.append(f"| {t['target']} | {value} | {shown} |")
    m = summary["machine"]
    lines += ["", "## Per-seed tables", ""]
    lines += [f"- seed {s}: [{Path(p).parent.as_posix()}/results.md]({Path(p).parent.as_posix()}/results.md)"
              for s, p in summary["replicas"].items()]
    lines += ["", f"First stage start to last stage end, every seed: {summary['wall_seconds_all_stages']:.1f} s "
              f"({m['jobs']} worker process{'es' if m['jobs'] > 1 else ''}). Machine: {m['cpus']} CPUs, load average "
              f"at start {m['loadavg_start']}, at end {m['loadavg_end']}.", ""]
    return "\n".join(lines)


def write_aggregate(out: Path, cfg: ReproConfig, replicas: Sequence[dict], folders: Sequence[Path],
                    records: Sequence[dict], started: float, load_start: Sequence[float], jobs: int) -> dict:
    """Write the aggregate's summary.json, results.md, claims.md and restoration.png into ``out``."""
    summary = build_aggregate(cfg, replicas, [Path(f).relative_to(out).as_posix() for f in folders], records,
                              started, load_start, jobs)
    cases = summary["cases"]
    def restoration(field: str) -> Dict[str, Dict[str, float]]:
        return {k: {m: float("nan") if c["restoration"][field] is None else c["restoration"][field]
                    for m, c in case["models"].items()} for k, case in cases.items()}
    restoration_figure(restoration("mean"), out / "restoration.png", errors=restoration("half_width"),
                       subtitle=f" (mean and 95% interval, {len(replicas)} seeds)")
    save_json(out / "summary.json", summary)
    write_text(out / "claims.md", claims_markdown(summary["claims"]))
    write_text(out / "results.md", markdown_aggregate(summary))
    return summary
