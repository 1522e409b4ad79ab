"""Evaluation reports: the markdown table, the grouped bar chart (also the reproduction's
figure), and the JSON + markdown + PNG trio written by ``python -m defense.evaluate``.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from ..core import atomic_path, write_text

METRICS = (("clean_top1", "clean top-1"), ("perturbed_top1", "perturbed top-1"),
           ("fooling_rate", "fooling rate"), ("restoration_accuracy", "restoration acc."))


def markdown_table(result: Dict[str, object]) -> str:
    lines = [f"Images: {result['images']} ({result['data']}), perturbations: {result['perturbations']}, "
             f"seed {result['seed']}, restoration denominator {result['restoration_denominator']:.4f}", "",
             "| model | clean top-1 | perturbed top-1 | fooling rate | restoration accuracy |",
             "|---|---|---|---|---|"]
    for name, row in result["models"].items():  # type: ignore[union-attr]
        lines.append(f"| {name} | {row['clean_top1']:.4f} | {row['perturbed_top1']:.4f} | "
                     f"{row['fooling_rate']:.4f} | {row['restoration_accuracy']:.4f} |")
    return "\n".join(lines) + "\n"


def bar_chart(path: Path, groups: Sequence[str], series: Mapping[str, Sequence[float]], title: str,
              figsize: Tuple[float, float], ylim: Tuple[float, float], ylabel: Optional[str] = None,
              value_labels: bool = False, tick_style: Optional[dict] = None, hline: Optional[float] = None,
              legend: Optional[dict] = None, errors: Optional[Mapping[str, Sequence[float]]] = None) -> Path:
    """The one bar-chart helper: a bar per series within each group, written atomically as PNG.

    :param series: name -> one value per group (NaN leaves a gap).
    :param errors: name -> one error-bar half-height per group (NaN: no bar), or None.
    """
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    width = 0.8 / len(series)
    # tab20's dark shades (tab10's colours) first, then its light ones: 20 distinct colours, where
    # matplotlib's default cycle repeats after 10 (13 reproduction columns drew FRU and FD alike)
    tab20 = plt.get_cmap("tab20").colors
    colours = tab20[0::2] + tab20[1::2]
    fig, ax = plt.subplots(figsize=figsize)
    for i, (name, values) in enumerate(series.items()):
        yerr = None if errors is None else errors[name]
        bars = ax.bar(np.arange(len(groups)) + (i - (len(series) - 1) / 2) * width, values, width, label=name,
                      color=colours[i % len(colours)], yerr=yerr, capsize=2 if yerr is not None else 0,
                      error_kw=dict(lw=0.8))
        if value_labels:
            ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(np.arange(len(groups)), list(groups), **(tick_style or {}))
    if hline is not None:
        ax.axhline(hline, color="grey", lw=0.5)
    if ylabel:
        ax.set_ylabel(ylabel)
    ax.set_ylim(*ylim)
    ax.legend(**(legend or {}))
    ax.set_title(title)
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


def metrics_chart(result: Dict[str, object], path: Path, title: str = "") -> Path:
    """Grouped bars: the four metrics per model of one evaluation."""
    models = result["models"]  # type: ignore[assignment]
    return bar_chart(path, [label for _, label in METRICS],
                     {name: [models[name][key] for key, _ in METRICS] for name in models},  # type: ignore[index]
                     title or f"{result['data']}, {result['perturbations']} perturbation(s), seed {result['seed']}",
                     figsize=(2 + 2.2 * len(METRICS), 4), ylim=(0, 1.1), value_labels=True, legend=dict(fontsize=8))


def write_reports(result: Dict[str, object], out_dir: Path, stem: str = "evaluation") -> List[Path]:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    return [write_text(out_dir / f"{stem}.json", json.dumps(result, indent=2) + "\n"),
            write_text(out_dir / f"{stem}.md", markdown_table(result)),
            metrics_chart(result, out_dir / f"{stem}.png")]
