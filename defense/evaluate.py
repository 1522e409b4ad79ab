"""Evaluate a baseline and its defended version side by side under universal perturbations.

The published protocol (Borkar, Heide, Karam, CVPR 2020, evaluation scripts): every test
image is perturbed by one perturbation drawn at random (seeded) from the attack's set, added
in pixel units before mean subtraction, not clipped by default. For every evaluated model
(baseline, FRU-defended, and optionally the baseline behind an image-domain peer defence) we
report clean and perturbed top-1, the fooling rate (top-1 label changes, ground truth
unused) and the restoration accuracy
``(clean top-1 + perturbed top-1) / (2 x clean top-1 of the undefended baseline)``;
all metrics come from ``attacks.metrics``. Results go to JSON, a markdown table and a bar
chart, each written atomically.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence

import numpy as np

from attacks.classifier import CaffeClassifier
from attacks.metrics import fooling_report, restoration_accuracy

from .conditions import Condition, draw_choices, predict_conditions
from .core import ToolkitError, atomic_path, run_cli, set_mode, write_text
from .data import DataSource, open_source, DATA_SOURCES
from .peers import PEERS, Preprocessor, make_peer
from .presets import NetPreset, get_preset

log = logging.getLogger(__name__)


@dataclass(frozen=True)
class Model:
    """One row of the comparison: a classifier, optionally behind an image-domain preprocessor."""

    name: str
    classifier: CaffeClassifier
    preprocessor: Optional[Preprocessor] = None

    def logits(self, x: np.ndarray, batch_size: int) -> np.ndarray:
        """Logits (N, classes) of pixel-unit images, after the preprocessor if any."""
        if self.preprocessor is not None:
            x = self.preprocessor(x)
        return self.classifier.logits(x, batch_size)


def evaluate(models: Sequence[Model], source: DataSource, perturbations: Sequence[np.ndarray], seed: int = 0,
             baseline: Optional[str] = None, baseline_top1: Optional[float] = None, batch_size: int = 100,
             clip: bool = False, progress: bool = True) -> Dict[str, object]:
    """Metrics of every model on ``source``, clean and with one random perturbation per image.

    The perturbation of each image is drawn as the published scripts draw it
    (``defense.conditions.draw_choices``: numpy's legacy seed, one draw per image in order).

    :param baseline: name of the undefended model whose clean top-1 is the restoration
        denominator (default: the first model).
    :param baseline_top1: use this denominator instead (e.g. the published one).
    :param clip: clip perturbed images to [0, 255] (the published tables did not).
    """
    if not models:
        raise ValueError("evaluation needs at least one model")
    names = [m.name for m in models]
    if len(set(names)) != len(names):
        raise ValueError(f"model names must be distinct, got {names}")
    baseline = baseline or names[0]
    if baseline not in names:
        raise ValueError(f"baseline '{baseline}' is not one of the models {names}")
    if not len(perturbations):
        raise ValueError("evaluation needs at least one perturbation")
    perts = np.stack([np.asarray(p, dtype=np.float32) for p in perturbations])
    if perts.shape[1:] != tuple(source.image_shape):
        raise ValueError(f"perturbations have shape {perts.shape[1:]}, the images {tuple(source.image_shape)}")
    which = draw_choices(len(source), len(perts), seed)
    conditions = [Condition("clean"), Condition("perturbed", perts, which)]
    labels, preds = predict_conditions({m.name: m for m in models}, source, conditions, batch_size, clip,
                                       progress=progress, desc="evaluate")
    rows: Dict[str, Dict[str, object]] = {}
    for m in models:
        clean, pert = preds[m.name]["clean"].top1, preds[m.name]["perturbed"].top1
        rows[m.name] = {"clean_top1": float(np.mean(clean == labels)), "perturbed_top1": float(np.mean(pert == labels)),
                        **fooling_report(clean, pert, seed=seed),
                        "preprocessor": None if m.preprocessor is None else m.preprocessor.describe()}
    measured = float(rows[baseline]["clean_top1"])
    denominator = float(baseline_top1) if baseline_top1 is not None else measured
    for row in rows.values():
        row["restoration_accuracy"] = restoration_accuracy(row["clean_top1"], row["perturbed_top1"], denominator)
    return {"images": len(source), "data": source.name, "perturbations": int(len(perts)), "seed": int(seed),
            "clip": bool(clip), "baseline": baseline, "baseline_clean_top1_measured": measured,
            "restoration_denominator": denominator,
            "perturbation_counts": np.bincount(which, minlength=len(perts)).tolist(), "models": rows}


# ---------------------------------------------------------------- reports
def markdown_table(result: Dict[str, object]) -> str:
    lines = [f"Images: {result['images']} ({result['data']}), perturbations: {result['perturbations']}, "
             f"seed {result['seed']}, restoration denominator {result['restoration_denominator']:.4f}", "",
             "| model | clean top-1 | perturbed top-1 | fooling rate | restoration accuracy |",
             "|---|---|---|---|---|"]
    for name, row in result["models"].items():  # type: ignore[union-attr]
        lines.append(f"| {name} | {row['clean_top1']:.4f} | {row['perturbed_top1']:.4f} | "
                     f"{row['fooling_rate']:.4f} | {row['restoration_accuracy']:.4f} |")
    return "\n".join(lines) + "\n"


def bar_chart(result: Dict[str, object], path: Path, title: str = "") -> Path:
    """Grouped bars: the four metrics per model, written atomically as PNG."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metrics = [("clean_top1", "clean top-1"), ("perturbed_top1", "perturbed top-1"),
               ("fooling_rate", "fooling rate"), ("restoration_accuracy", "restoration acc.")]
    models = list(result["models"])  # type: ignore[arg-type]
    width = 0.8 / len(models)
    fig, ax = plt.subplots(figsize=(2 + 2.2 * len(metrics), 4))
    for i, name in enumerate(models):
        values = [result["models"][name][key] for key, _ in metrics]  # type: ignore[index]
        bars = ax.bar(np.arange(len(metrics)) + (i - (len(models) - 1) / 2) * width, values, width, label=name)
        ax.bar_label(bars, fmt="%.2f", fontsize=7)
    ax.set_xticks(np.arange(len(metrics)), [label for _, label in metrics])
    ax.set_ylim(0, 1.1)
    ax.legend(fontsize=8)
    ax.set_title(title or f"{result['data']}, {result['perturbations']} perturbation(s), seed {result['seed']}")
    fig.tight_layout()
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=120)
    plt.close(fig)
    return Path(path)


def write_reports(result: Dict[str, object], out_dir: Path, stem: str = "evaluation") -> List[Path]:
    """``<stem>.json``, ``<stem>.md`` and ``<stem>.png`` in ``out_dir``."""
    out_dir = Path(out_dir)
    return [write_text(out_dir / f"{stem}.json", json.dumps(result, indent=2) + "\n"),
            write_text(out_dir / f"{stem}.md", markdown_table(result)),
            bar_chart(result, out_dir / f"{stem}.png")]


# ---------------------------------------------------------------- entry point
def load_perturbation_files(paths: Sequence[Path]) -> List[np.ndarray]:
    """Toolkit HDF5 files (attacks.perturbation_io) or plain ``.npy`` arrays, single or stacked."""
    from attacks.array_files import read_npy
    from attacks.perturbation_io import load_perturbation

    out: List[np.ndarray] = []
    for path in paths:
        v = read_npy(path) if Path(path).suffix == ".npy" else load_perturbation(path)[0]
        v = np.asarray(v, dtype=np.float32)
        if v.ndim == 3:
            out.append(v)
        elif v.ndim == 4:
            out.extend(v)
        else:
            raise ToolkitError(f"{path}: a perturbation must be (C,H,W) or (K,C,H,W), got shape {v.shape}")
    return out


def default_weights(preset: NetPreset, defended: bool) -> Path:
    from .train_baseline import WEIGHTS_DIR
    return WEIGHTS_DIR / preset.name / f"{preset.file_stem}{'_FRU' if defended else ''}.caffemodel"


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m defense.evaluate",
        description="Baseline vs FRU-defended network (and optional image-domain peer defences) under universal "
                    "perturbations: clean/perturbed top-1, fooling rate, restoration accuracy -> JSON, markdown, PNG.")
    p.add_argument("--net", required=True, help="preset name, e.g. FashionNet")
    p.add_argument("--perturbations", nargs="+", type=Path, required=True, metavar="FILE",
                   help="perturbation files (.h5 toolkit files or .npy arrays), pixel units; one is drawn per image")
    p.add_argument("--baseline-prototxt", type=Path, help="default: the preset's deploy file")
    p.add_argument("--baseline-weights", type=Path, help="default: weights/<Net>/<stem>.caffemodel")
    p.add_argument("--defended-prototxt", type=Path, help="default: the preset's deploy_*_FRU file")
    p.add_argument("--defended-weights", type=Path, help="default: weights/<Net>/<stem>_FRU.caffemodel")
    p.add_argument("--no-defended", action="store_true", help="evaluate the baseline (and peers) only")
    p.add_argument("--peers", default="", help=f"comma-separated image-domain defences on the baseline: {', '.join(PEERS)}")
    p.add_argument("--data", default="fashion-mnist", choices=sorted(DATA_SOURCES), help="data source")
    p.add_argument("--split", default="test", help="data split (default test)")
    p.add_argument("--limit", type=int, default=None, help="evaluate a seeded random subset of this many images")
    p.add_argument("--published-denominator", action="store_true",
                   help="use the preset's published baseline top-1 as restoration denominator")
    p.add_argument("--clip", action="store_true", help="clip perturbed images to [0,255]")
    p.add_argument("--seed", type=int, default=0, help="seed of the perturbation draw (default 0, as published)")
    p.add_argument("--batch-size", type=int, default=None, help="default: the preset's eval batch")
    p.add_argument("--gpu", type=int, default=None, metavar="N", help="run on GPU N (default: CPU)")
    p.add_argument("--out", type=Path, default=Path("results"), help="output folder (default results/)")
    p.add_argument("--stem", default="evaluation", help="output file stem (default evaluation)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    preset = get_preset(args.net)
    set_mode(args.gpu, args.seed)
    batch = int(args.batch_size or preset.eval_batch)
    source = open_source(args.data, args.split, preset)
    if args.limit:
        source = source.sample(args.limit, np.random.default_rng(args.seed))
    perturbations = load_perturbation_files(args.perturbations)
    base = CaffeClassifier.from_files(args.baseline_prototxt or preset.deploy,
                                      args.baseline_weights or default_weights(preset, False),
                                      preset.mean_bgr, batch_size=batch)
    models = [Model("baseline", base)]
    if not args.no_defended:
        models.append(Model("FRU", CaffeClassifier.from_files(args.defended_prototxt or preset.deploy_fru,
                                                              args.defended_weights or default_weights(preset, True),
                                                              preset.mean_bgr, batch_size=batch)))
    for name in filter(None, (s.strip() for s in args.peers.split(","))):
        peer = make_peer(name)
        models.append(Model(f"baseline+{peer.describe()}", base, peer))
    denominator = preset.baseline_top1 if args.published_denominator else None
    if args.published_denominator and denominator is None:
        raise ToolkitError(f"{preset.name} has no published baseline top-1; drop --published-denominator")
    result = evaluate(models, source, perturbations, seed=args.seed, baseline_top1=denominator, batch_size=batch,
                      clip=args.clip)
    result.update(network=preset.name, perturbation_files=[str(p) for p in args.perturbations],
                  command="python -m defense.evaluate " + " ".join(sys.argv[1:] if argv is None else argv))
    for path in write_reports(result, args.out, args.stem):
        print(path)
    print(markdown_table(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
