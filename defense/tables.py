"""The paper's ImageNet tables as commands: ``python -m defense.tables <table> --net NAME``.

  python -m defense.tables same-norm  --net CaffeNet  --index val.jsonl   # Table 2
  python -m defense.tables cross-norm --net VGG16     --index val.jsonl   # Table 3 (l_2 UAPs)
  python -m defense.tables stronger   --net CaffeNet  --index val.jsonl   # Table 4 (xi 15/20/25)
  python -m defense.tables unseen     --net ResNet152 --index val.jsonl   # Table 5 (GAP, G-UAP, sPGD)
  python -m defense.tables unseen --net CaffeNet --index val.jsonl --limit 200   # quick look

Each command evaluates the undefended baseline and the FRU-defended net of the weights
manifest on the published protocol (``defense.paper``): the first ``per_class`` images of
each class of a validation index (``python -m defense.imagenet prepare val ...``), clean and
with the published perturbation files (``--perturbations``: a local copy of the authors'
``Attack_samples/``), or with the toolkit's own files (``--own``). Missing published files
(caffemodels, perturbations) are downloaded, verified and cached first; ``--offline`` (or
``FRU_OFFLINE=1``) never downloads. It reports clean/perturbed top-1 and top-5, fooling rate
and restoration accuracy, (clean top-1 + perturbed top-1) / (2 x baseline clean top-1), with the published denominator
(``preset.baseline_top1``) and with the measured one, next to the published number.
``--peers pd,median:3`` adds the baseline behind image-domain defences (``defense.evaluate.peers``).
Outputs: ``<out>/<table>_<net>.json`` and ``.md``; ``.state.npz`` lets an interrupted run resume.
The forward passes run in onnxruntime where it is installed (``--runtime auto``, the default
without ``--gpu``), both nets' top-1 checked against Caffe's on the first images first;
``--runtime caffe`` runs them in Caffe.

Differences from the published scripts, by design: images within a class are taken in sorted
file-name order (the scripts used ``os.listdir`` order), so which image gets which of the K
files differs while the draw sequence (numpy legacy seed, one ``randint`` per image) is the
same; ``--clip`` clips perturbed images to [0, 255] (the table scripts do not).
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

import numpy as np

from attacks.metrics import bootstrap_ci, restoration_accuracy
from attacks.perturbation_io import load_any, load_perturbations
from attacks.published import published_dir
from attacks.runtime import CHECK_IMAGES, RUNTIME_CHOICES, OnnxClassifier, resolve_runtime

from .core import ToolkitError, input_file, parse_args, positive_int, run_cli, set_mode, write_text
from .data import Subset
from .data.imagenet import ImageNetIndex
from .evaluate.compare import Model, add_restoration, metric_row, metric_rows
from .evaluate.competitors import parse_competitors
from .evaluate.conditions import Condition, Predictions, draw_choices, predict_conditions
from .evaluate.peers import make_peer, peer_specs
from .evaluate.resources import (ModelPair, fetch_missing, load_classifier, model_pair, published_path,
                                 require_weights)
from .generate.competitors import TITLES as COMPETITOR_TITLES, get_competitor
from .evaluate.runtime import classifier_for
from .outputs import output_dir
from .paper import TABLE_TITLES, TABLES, Published, Run, TableCase, table_cases, table_nets
from .presets import NetPreset, get_preset

log = logging.getLogger(__name__)

INDEX_ENV = "FRU_IMAGENET_VAL_INDEX"
DEFAULT_OUT = Path("results") / "tables"
MODELS = ("baseline", "fru")
MODEL_LABELS = {"baseline": "baseline", "fru": "FRU"}  # a peer's row: "baseline+<its key>"
RUN_METRICS = ("perturbed_top1", "perturbed_top5", "fooling_rate")


# ---------------------------------------------------------------- protocol -> arrays
def protocol_positions(labels: np.ndarray, per_class: Optional[int]) -> np.ndarray:
    """Positions of the first ``per_class`` images of each class, in index order (by label)."""
    labels = np.asarray(labels)
    if per_class is None:
        return np.arange(len(labels))
    seen: Dict[int, int] = {}
    keep = []
    for i, lab in enumerate(labels.tolist()):
        if seen.get(lab, 0) < per_class:
            keep.append(i)
            seen[lab] = seen.get(lab, 0) + 1
    short = sum(1 for c in seen.values() if c < per_class)
    if short:
        log.warning("%d classes have fewer than %d images in the index; all of theirs are used", short, per_class)
    return np.asarray(keep, dtype=np.int64)


def limit_positions(n: int, limit: Optional[int]) -> np.ndarray:
    """``limit`` positions spread evenly over ``range(n)`` (so a quick run still spans the classes)."""
    if limit is None or int(limit) >= n:
        return np.arange(n)
    if int(limit) < 1:
        raise ValueError(f"limit must be a positive integer, got {limit}")
    return np.unique(np.linspace(0, n, int(limit), endpoint=False).astype(np.int64))


def case_conditions(case: TableCase, arrays: Mapping[str, np.ndarray], n_protocol: int,
                    selected: np.ndarray) -> List[Condition]:
    """One condition per run of ``case``; draws are made over the whole protocol list, then selected."""
    out = []
    for run in case.runs:
        stack = np.stack([arrays[f] for f in run.files])
        choice = draw_choices(n_protocol, len(run.files), case.seed)[selected]
        name = case.key if len(case.runs) == 1 else f"{case.key}/{run.label}"
        out.append(Condition(name, stack, choice, run.files))
    return out


# ---------------------------------------------------------------- metrics
def summarize_case(case: TableCase, conditions: Sequence[Condition], labels: np.ndarray,
                   preds: Mapping[str, Mapping[str, Predictions]], published_denominator: Optional[float],
                   ci_seed: int = 0) -> Dict[str, dict]:
    """Per model: clean/perturbed top-1/top-5, fooling rate, restoration accuracy (both denominators).

    A case with several runs reports the mean over its runs (S.Fool: conv3 and fc6 files).
    """
    names = [c.name for c in conditions]
    rows = metric_rows(labels, preds, names, top5=True, fooling_ci=False)
    add_restoration(rows, published_denominator)
    add_restoration(rows, rows["baseline"]["clean_top1"] if "baseline" in rows else None,
                    key="restoration_accuracy_measured_denominator")
    for model, row in rows.items():
        row["published_restoration_accuracy"] = {"baseline": case.published.baseline,
                                                 "fru": case.published.fru}.get(model)
        if published_denominator:
            pert_hit = np.mean([preds[model][c].top1 == labels for c in names], axis=0)
            per_image = restoration_accuracy(preds[model]["clean"].top1 == labels, pert_hit, published_denominator)
            row["restoration_accuracy_ci95"] = list(bootstrap_ci(per_image, seed=ci_seed))
        if len(names) > 1:
            row["runs"] = {}
            for c in conditions:  # each run on its own
                run = metric_row(labels, preds[model]["clean"], [preds[model][c.name]], top5=True, fooling_ci=False)
                row["runs"][c.name] = {**{k: run[k] for k in RUN_METRICS}, "files": list(c.files)}
    return rows


# ---------------------------------------------------------------- report
def _fmt(v: Optional[float]) -> str:
    return "-" if v is None else f"{v:.3f}"


def markdown(report: dict) -> str:
    """The report as a markdown table, one row per attack and model."""
    den = report["denominators"]
    lines = [f"## {report['title']}: {report['net']}", "",
             f"{report['images']} images ({report['per_class_note']}), clipping: "
             f"{'[0, 255]' if report['clip'] else 'none (as published)'}, "
             f"restoration-accuracy denominators: published {_fmt(den['published'])}, measured {_fmt(den['measured'])}; "
             f"forward passes in {report['runtime']['forward_passes']}.",
             "",
             "| attack | model | clean top-1 | perturbed top-1 | clean top-5 | perturbed top-5 | fooling rate "
             "| restoration acc. | restoration acc. (measured denom.) | published |",
             "|---|---|---|---|---|---|---|---|---|---|"]
    for case in report["cases"]:
        for model, r in case["results"].items():
            label = MODEL_LABELS.get(model, model if model in COMPETITOR_TITLES else f"baseline+{model}")
            lines.append(f"| {case['attack']} | {label} | {_fmt(r['clean_top1'])} "
                         f"| {_fmt(r['perturbed_top1'])} | {_fmt(r['clean_top5'])} | {_fmt(r['perturbed_top5'])} "
                         f"| {_fmt(r['fooling_rate'])} | {_fmt(r['restoration_accuracy'])} "
                         f"| {_fmt(r['restoration_accuracy_measured_denominator'])} "
                         f"| {_fmt(r['published_restoration_accuracy'])} |")
    return "\n".join(lines) + "\n"


# ---------------------------------------------------------------- one table
@dataclass(frozen=True)
class TableOptions:
    """What ``run_table`` needs besides the table and the network (see the CLI's --help)."""

    index: Path
    root: Optional[Path] = None
    manifest: Optional[Path] = None
    weights_dir: Optional[Path] = None
    defense: str = "primary"
    perturbations: Optional[Path] = None  # default: published_dir()
    offline: bool = False
    own: Tuple[Path, ...] = ()
    competitors: Tuple[Tuple[str, Path, Path], ...] = ()  # (name, deploy prototxt, caffemodel): --load
    peers: Tuple[str, ...] = ()  # make_peer specs: the baseline behind each
    limit: Optional[int] = None
    batch: Optional[int] = None
    workers: int = 4
    clip: bool = False
    out: Path = DEFAULT_OUT
    resume: bool = True
    progress: bool = True
    command: str = ""
    runtime: str = "auto"  # where the forward passes run: auto, caffe or onnx (attacks.runtime)


def _own_case(table: str, net: str, cases: Sequence[TableCase], names: Tuple[str, ...],
              paths: Sequence[Path]) -> TableCase:
    """The table's protocol (images, seed, draw) with the toolkit's own perturbations."""
    published = cases[0].published if len(cases) == 1 else Published(None, None, "not comparable")
    return TableCase(table, net, "own", f"own perturbations ({len(names)})", (Run(names, "toolkit"),),
                    cases[0].per_class, cases[0].seed, published,
                    "own files: " + ", ".join(str(p) for p in paths))


def _perturbation_arrays(cases: Sequence[TableCase], options: TableOptions, table: str, net: str,
                         shape: tuple) -> Tuple[List[TableCase], Dict[str, np.ndarray]]:
    if options.own:
        for path in options.own:
            input_file(path, "perturbation file", "check --own")
        stack = load_perturbations(options.own, expect=shape)
        names = tuple(f"own[{i}]" for i in range(len(stack)))
        return [_own_case(table, net, cases, names, options.own)], dict(zip(names, stack))
    names = [f for c in cases for f in c.files]
    folder = options.perturbations or published_dir()
    fetch_missing(names, folder, offline=options.offline)
    fmt = {f: run.fmt for c in cases for run in c.runs for f in run.files}
    return list(cases), {f: load_any(published_path(f, folder), fmt[f], expect=shape) for f in names}


def run_table(table: str, net: str, options: TableOptions) -> dict:
    """Evaluate one table for one network; write JSON + markdown under ``options.out``; return the report."""
    preset: NetPreset = get_preset(net)
    cases = list(table_cases(table, preset.name))
    pair: ModelPair = model_pair(preset.name, options.manifest, options.weights_dir, options.defense)
    input_file(options.index, "validation index", "make one with 'python -m defense.imagenet prepare val "
               "--images DIR --labels val.txt --out val.jsonl'")  # a local input: checked before any download
    shape = preset.input_shape
    cases, arrays = _perturbation_arrays(cases, options, table, preset.name, shape)
    for files in (pair.baseline, pair.fru):
        require_weights(files, preset.name, offline=options.offline)
    index = ImageNetIndex(options.index, preset, root=options.root, workers=options.workers)
    per_class = cases[0].per_class
    protocol = protocol_positions(index.labels, per_class)
    selected = limit_positions(len(protocol), options.limit)
    source = Subset(index, protocol[selected])
    conditions = [Condition("clean")]
    by_case = {}
    for case in cases:
        by_case[case.key] = case_conditions(case, arrays, len(protocol), selected)
        conditions += by_case[case.key]
    batch = int(options.batch or preset.eval_batch)
    runtime = resolve_runtime(options.runtime)
    classifiers = {"baseline": load_classifier(pair.baseline, preset, batch, runtime=runtime),
                   "fru": load_classifier(pair.fru, preset, batch, runtime=runtime)}
    loaded = {get_competitor(name).title: (prototxt, weights) for name, prototxt, weights in options.competitors}
    classifiers.update({title: classifier_for(prototxt, weights, preset.mean_bgr, runtime, batch_size=batch)
                        for title, (prototxt, weights) in loaded.items()})
    files = {"baseline": pair.baseline.prototxt, "fru": pair.fru.prototxt, **{t: p for t, (p, _) in loaded.items()}}
    for name, clf in classifiers.items():
        if tuple(clf.input_shape) != shape:
            raise ToolkitError(f"{files[name]}: input shape "
                               f"{clf.input_shape} does not match the {preset.name} preset's {shape}")
    models = {**classifiers}
    for peer in map(make_peer, options.peers):
        peer.check_images(shape)  # before the first batch, so a refusal is one line
        models[peer.key] = Model(peer.key, classifiers["baseline"], peer)
    described = {"baseline": pair.baseline.describe(), "fru": pair.fru.describe(),
                 **{t: f"{p} + {w}" for t, (p, w) in loaded.items()},
                 **{m: f"baseline+{model.preprocessor.describe()}" for m, model in models.items()
                    if m not in MODELS and m not in loaded}}
    fast = {name: clf for name, clf in classifiers.items() if isinstance(clf, OnnxClassifier)}
    sample = source.take(np.arange(min(CHECK_IMAGES, len(source))))[0] if fast else None
    checks = {name: clf.verify(sample) for name, clf in fast.items()}
    out = Path(options.out)
    stem = f"{table}_{preset.name}"
    config = {"table": table, "net": preset.name, "index": str(Path(options.index).resolve()), "images": len(source),
              "limit": options.limit, "clip": options.clip, "models": described,
              "conditions": [[c.name, list(c.files)] for c in conditions], "runtime": runtime}
    state = out / f"{stem}.state.npz"
    if not options.resume and state.exists():
        state.unlink()
    labels, preds = predict_conditions(models, source, conditions, batch, options.clip, state, config,
                             options.progress, desc=f"{table} {preset.name}")
    measured = float(np.mean(preds["baseline"]["clean"].top1 == labels))
    report = {
        "table": table, "title": TABLE_TITLES[table], "net": preset.name,
        "preset": {"name": preset.name, "input_size": preset.input_size, "mean_bgr": list(preset.mean_bgr),
                   "resize": preset.resize, "resize_to": preset.resize_to, "eval_batch": preset.eval_batch,
                   "baseline_top1": preset.baseline_top1},
        "index": str(options.index), "images": len(source), "per_class": per_class, "limit": options.limit,
        "per_class_note": f"first {per_class} per class" + (f", {len(source)} spread over them (--limit)"
                                                             if options.limit and len(source) < len(protocol) else ""),
        "clip": options.clip, "clipping": "[0, 255]" if options.clip else "none (published table scripts do not clip)",
        "batch_size": batch, "models": described,
        "runtime": {"forward_passes": runtime, "checks": checks},
        "denominators": {"published": preset.baseline_top1, "measured": measured},
        "cases": [], "command": options.command,
    }
    for case in cases:
        conds = by_case[case.key]
        report["cases"].append({
            "key": case.key, "attack": case.attack, "seed": case.seed, "per_class": case.per_class,
            "runs": [{"label": run.label, "files": list(run.files), "format": run.fmt,
                      "draw": "one file per image, numpy legacy seed " f"{case.seed}" if len(run.files) > 1
                      else "the same file for every image"} for run in case.runs],
            "combine": case.combine, "note": case.note, "published_source": case.published.source,
            "results": summarize_case(case, conds, labels, preds, preset.baseline_top1),
        })
    write_text(out / f"{stem}.json", json.dumps(report, indent=2) + "\n")
    write_text(out / f"{stem}.md", markdown(report))
    return report


# ---------------------------------------------------------------- command line
def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m defense.tables", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("table", choices=TABLES, help="same-norm (Table 2), cross-norm (Table 3), stronger (Table 4), "
                                                  "unseen (Table 5)")
    ap.add_argument("--net", help="network (default: the table's only one; stronger: CaffeNet)")
    ap.add_argument("--index", type=Path, default=os.environ.get(INDEX_ENV),
                    help=f"validation index from 'python -m defense.imagenet prepare val' (default: ${INDEX_ENV})")
    ap.add_argument("--root", type=Path, help="image folder, overriding the one recorded in the index")
    ap.add_argument("--weights-dir", type=Path, help="folder of <Net>/<file>.caffemodel (default: the manifest's, weights/)")
    ap.add_argument("--manifest", type=Path, help="weights manifest (default: weights/manifest.json)")
    ap.add_argument("--defense", choices=("primary", "secondary"), default="primary",
                    help="which released FRU model (default: primary)")
    ap.add_argument("--perturbations", type=Path, default=None,
                    help="local copy of the published Attack_samples/ folder; missing files are downloaded "
                         "into it (default: $FRU_DOWNLOAD_DIR/Attack_samples, else the repository's)")
    ap.add_argument("--offline", action="store_true",
                    help="never download (also FRU_OFFLINE=1): a missing file is an error naming its address")
    ap.add_argument("--own", type=Path, nargs="+", default=(),
                    help="the toolkit's own perturbation files (.h5 or .npy) instead of the published ones")
    ap.add_argument("--load", nargs=3, action="append", default=[], metavar=("NAME", "PROTOTXT", "WEIGHTS"),
                    help="also evaluate a trained competitor defence (prn, hgd, fd: docs/competitors.md); repeatable")
    ap.add_argument("--peers", type=peer_specs, default=[],
                    help="image-domain defences on the baseline, comma-separated (e.g. pd,median:3; "
                         "see python -m defense.evaluate --help)")
    ap.add_argument("--limit", type=positive_int, help="evaluate only N images, spread over the protocol's images (quick run)")
    ap.add_argument("--batch", type=positive_int, help="batch size (default: the preset's, as in the published scripts)")
    ap.add_argument("--workers", type=positive_int, default=4, help="image decoding threads (default: 4)")
    ap.add_argument("--gpu", type=int, default=None, help="GPU id (default: CPU)")
    ap.add_argument("--clip", action="store_true", help="clip perturbed images to [0, 255] (the published tables do not)")
    ap.add_argument("--runtime", choices=RUNTIME_CHOICES, default="auto",
                    help="where the forward passes run: onnx (onnxruntime, checked against Caffe on the first "
                         f"{CHECK_IMAGES} images), caffe, or auto (default: onnx where onnxruntime is "
                         "installed and no --gpu, else caffe)")
    ap.add_argument("--out", type=output_dir, default=DEFAULT_OUT, help="output folder (default: %(default)s)")
    ap.add_argument("--no-resume", action="store_true", help="ignore a saved state file and start over")
    ap.add_argument("--quiet", action="store_true", help="no progress bar")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    nets = table_nets(args.table)
    net = args.net or (nets[0] if len(nets) == 1 else None)
    if net is None:
        raise ToolkitError(f"the {args.table} table needs --net (one of {', '.join(nets)})")
    if args.index is None:
        raise ToolkitError(f"give --index VAL.jsonl (or set ${INDEX_ENV}); make one with "
                           "'python -m defense.imagenet prepare val --images DIR --labels val.txt --out val.jsonl'")
    if args.limit is not None and args.limit < 1:
        raise ValueError(f"--limit must be a positive integer, got {args.limit}")
    command = "python -m defense.tables " + " ".join(sys.argv[1:] if argv is None else argv)
    options = TableOptions(index=args.index, root=args.root, manifest=args.manifest, weights_dir=args.weights_dir,
                           defense=args.defense, perturbations=args.perturbations, offline=args.offline,
                           own=tuple(args.own), peers=tuple(args.peers),
                           competitors=tuple(parse_competitors(args.load, "--load")), limit=args.limit,
                           batch=args.batch, workers=args.workers,
                           clip=args.clip, out=args.out, resume=not args.no_resume, progress=not args.quiet,
                           command=command,
                           runtime=resolve_runtime(args.runtime, args.gpu))
    set_mode(args.gpu, seed=0)
    report = run_table(args.table, net, options)
    print(markdown(report), end="")
    stem = Path(args.out) / f"{args.table}_{report['net']}"
    print(f"wrote {stem}.json and {stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
