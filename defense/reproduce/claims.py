"""The paper's claims that Fashion-MNIST can test, each as a difference paired over the seeds.

Each claim is a per-seed difference of two numbers of that seed's ``summary.json`` (two
restorations of one case, or two masked restorations of one layer), averaged over the seeds
with its 95% Student-t interval (``stats.mean_interval``), and compared with a threshold:
*reproduced* when the whole interval is on the claim's side, *not reproduced* when the whole
interval is on the other side, *inconclusive* when it straddles the threshold. The statistics
are defined in ``docs/reproduction.md`` ("The paper's claims").
"""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

from ..core import ToolkitError, write_text
from .config import COMPETITOR_MARGIN, RESTORATION_GAIN
from .stats import format_interval, mean_interval, verdict

CLAIM_WORDS = ("reproduced", "not reproduced", "inconclusive")


@dataclass(frozen=True)
class Claim:
    """One claim: ``difference(summary)`` of one seed, claimed to be ``op threshold``.

    :param difference: one seed's summary -> the difference, or None where that seed lacks a number.
    """

    claim: str
    statistic: str
    op: str
    threshold: float
    difference: Callable[[dict], Optional[float]]


def restoration_gap(case: str, model: str, other: str) -> Callable[[dict], Optional[float]]:
    """restoration(model) - restoration(other) on ``case`` in one seed's summary."""
    def difference(summary: dict) -> Optional[float]:
        models = summary["cases"].get(case, {}).get("models", {})
        if model not in models or other not in models:
            return None
        return models[model]["restoration"] - models[other]["restoration"]
    return difference


def masking_gap(layer: str) -> Callable[[dict], Optional[float]]:
    """Masked restoration (top-ranked half given its clean values) minus that of the bottom-ranked half."""
    def difference(summary: dict) -> Optional[float]:
        r = summary.get("ranking", {}).get("masking", {}).get(layer)
        return None if r is None else r["top_half_masked"] - r["bottom_half_masked"]
    return difference


def paper_claims(cases: Dict[str, dict], masking_layers: Sequence[str]) -> List[Claim]:
    """The claims that the aggregate's ``cases`` (key -> ``title``, ``group``, ``models``,
    ``best_competitor``) and masking layers can test, in the paper's order."""
    claims = []
    same = cases.get("same-norm", {})
    best = (same.get("best_competitor") or {}).get("model")
    if best and "fru" in same.get("models", {}):
        claims.append(Claim(f"FRUs beat the best competitor by more than {COMPETITOR_MARGIN:g} restoration "
                            "(same-norm UAPs)", f"restoration(fru) - restoration({best}) on same-norm; {best}: the "
                            "competitor with the highest mean restoration there", ">", COMPETITOR_MARGIN,
                            restoration_gap("same-norm", "fru", best)))
    for key, case in cases.items():
        if case["group"] in ("same-norm", "cross-norm", "stronger", "unseen"):
            verb = "generalise to the unseen attack" if case["group"] == "unseen" else "restore"
            claims.append(Claim(f"FRUs {verb} {key} ({case['title']})",
                                f"restoration(fru) - restoration(baseline) on {key}", ">=", RESTORATION_GAIN,
                                restoration_gap(key, "fru", "baseline")))
    if "fru_bottom" in same.get("models", {}):
        claims.append(Claim("Top-ranked channels matter more than bottom-ranked: regenerating them",
                            "restoration(fru) - restoration(fru_bottom) on same-norm", ">", 0.0,
                            restoration_gap("same-norm", "fru", "fru_bottom")))
    for layer in masking_layers:
        claims.append(Claim(f"Top-ranked channels matter more than bottom-ranked: masking them ({layer})",
                            f"masked restoration(top half of {layer}) - masked restoration(bottom half) on same-norm",
                            ">", 0.0, masking_gap(layer)))
    if "fru_secondary" in cases.get("adaptive", {}).get("models", {}):
        claims.append(Claim("The secondary defence recovers white-box UAPs (computed through baseline + FRU)",
                            "restoration(fru_secondary) - restoration(fru) on adaptive", ">", 0.0,
                            restoration_gap("adaptive", "fru_secondary", "fru")))
    if "fru_secondary" in cases.get("adaptive-secondary", {}).get("models", {}):
        claims.append(Claim("The secondary defence restores white-box UAPs computed through itself",
                            "restoration(fru_secondary) - restoration(baseline) on adaptive-secondary", ">=",
                            RESTORATION_GAIN, restoration_gap("adaptive-secondary", "fru_secondary", "baseline")))
    return claims


def judge_claims(claims: Sequence[Claim], replicas: Sequence[dict]) -> List[dict]:
    """Each claim's difference over the seeds that hold both numbers, its interval and verdict."""
    rows = []
    for c in claims:
        values = [v for v in (c.difference(r) for r in replicas) if v is not None]
        if not values:
            continue
        interval = mean_interval(values)
        rows.append({"claim": c.claim, "statistic": c.statistic, "op": c.op, "threshold": c.threshold,
                     "difference": interval, "verdict": verdict(interval, c.op, c.threshold, CLAIM_WORDS)})
    return rows


def claims_markdown(rows: Sequence[dict]) -> str:
    """The claims table (it opens docs/reproduction.md and sits in the README's results summary)."""
    lines = ["| claim (Fashion-MNIST) | difference, paired over seeds | mean ± 95% half-width [interval] | "
             "claimed | verdict |", "|---|---|---|---|---|"]
    for r in rows:
        d = r["difference"]
        bounds = f" [{d['low']:.3f}, {d['high']:.3f}]" if d["low"] is not None else ""
        lines.append(f"| {r['claim']} | {r['statistic']} | {format_interval(d)}{bounds} | {r['op']} {r['threshold']:g} "
                     f"| {r['verdict']} |")
    return "\n".join(lines) + "\n"


# The documents whose claims table is rewritten from a run shipped into the repository
# (``make reproduce``), between these two markers.
CLAIMS_DOCS = ("docs/reproduction.md", "README.md")
BEGIN, END = "<!-- claims table: begin (written by python -m defense.reproduce) -->", "<!-- claims table: end -->"


def claims_span(doc: Path) -> tuple:
    """``(text, start, stop)``: the text of ``doc`` and where its claims table lies (checked before a run)."""
    text = doc.read_text()
    start, stop = text.find(BEGIN), text.find(END)
    if start < 0 or stop < start:
        raise ToolkitError(f"{doc}: no claims table markers ('{BEGIN}' then '{END}')")
    return text, start + len(BEGIN), stop


def write_claims_into(doc: Path, table: str) -> Path:
    """Replace the text between ``BEGIN`` and ``END`` in ``doc`` by ``table`` (atomically)."""
    text, start, stop = claims_span(doc)
    return write_text(doc, text[:start] + "\n" + table + text[stop:])
