"""``python -m defense.evaluate``: a baseline and its FRU-defended version (and image-domain peers)
under universal perturbations: clean/perturbed top-1, fooling rate, restoration accuracy ->
JSON, markdown and a bar chart (see ``defense.evaluate.compare`` for the protocol).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from attacks.perturbation_io import load_perturbations
from attacks.runtime import CHECK_IMAGES, RUNTIME_CHOICES, resolve_runtime

from ..core import ToolkitError, parse_args, positive_int, run_cli, seed_int, set_mode
from ..data import DATA_SOURCES, open_source
from ..outputs import output_dir
from ..presets import get_preset
from .competitors import DETECTOR_ROW, competitor_models, detector_report, parse_competitors
from .compare import Model, evaluate
from .conditions import draw_choices
from .peers import PEERS, make_peer, peer_specs
from .report import markdown_table, write_reports
from .runtime import classifier_for


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
    p.add_argument("--competitor", nargs=3, action="append", default=[], metavar=("NAME", "PROTOTXT", "WEIGHTS"),
                   help="a trained competitor defence (prn, hgd, fd: python -m defense.generate --defense NAME, then "
                        "defense.train); repeatable")
    p.add_argument("--detector", type=Path, metavar="NPZ",
                   help="PRN's detector (defense.train --detector): adds the row PRN+detector")
    p.add_argument("--peers", type=peer_specs, default=[],
                   help=f"comma-separated image-domain defences on the baseline: {', '.join(PEERS)} "
                        "(e.g. median:3,jpeg:75,pd or pd:deflections=200,window=10)")
    p.add_argument("--data", default="fashion-mnist", choices=sorted(DATA_SOURCES), help="data source")
    p.add_argument("--split", default="test", help="data split (default test)")
    p.add_argument("--limit", type=positive_int, default=None, help="evaluate a seeded random subset of this many images")
    p.add_argument("--published-denominator", action="store_true",
                   help="use the preset's published baseline top-1 as restoration denominator")
    p.add_argument("--clip", action="store_true", help="clip perturbed images to [0,255]")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of the perturbation draw (default 0, as published)")
    p.add_argument("--batch-size", type=positive_int, default=None, help="default: the preset's eval batch")
    p.add_argument("--gpu", type=int, default=None, metavar="N", help="run on GPU N (default: CPU)")
    p.add_argument("--runtime", choices=RUNTIME_CHOICES, default="caffe",
                   help="caffe (default), onnx: the same nets exported to ONNX and run in onnxruntime (CPU), their "
                        f"top-1 checked against Caffe's on the first {CHECK_IMAGES} images, or auto: onnx where "
                        "onnxruntime is installed and no --gpu")
    p.add_argument("--out", type=output_dir, default=Path("results"), help="output folder (default results/)")
    p.add_argument("--stem", default="evaluation", help="output file stem (default evaluation)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    preset = get_preset(args.net)
    set_mode(args.gpu, args.seed)
    batch = int(args.batch_size or preset.eval_batch)
    source = open_source(args.data, args.split, preset)
    if args.limit:
        source = source.sample(args.limit, np.random.default_rng(args.seed))
    perturbations = load_perturbations(args.perturbations, expect=preset.input_shape)
    runtime = resolve_runtime(args.runtime, args.gpu)
    sample = source.take(np.arange(min(CHECK_IMAGES, len(source))))[0] if runtime == "onnx" else None
    base = classifier_for(args.baseline_prototxt or preset.deploy, args.baseline_weights or preset.weights(),
                          preset.mean_bgr, runtime, sample=sample, batch_size=batch)
    models = [Model("baseline", base)]
    if not args.no_defended:
        models.append(Model("FRU", classifier_for(args.defended_prototxt or preset.deploy_fru,
                                                  args.defended_weights or preset.weights(defended=True),
                                                  preset.mean_bgr, runtime, sample=sample, batch_size=batch)))
    competitors = parse_competitors(args.competitor)
    models += competitor_models(competitors, lambda p, w: classifier_for(p, w, preset.mean_bgr, runtime, sample=sample,
                                                                         batch_size=batch), base, args.detector)
    for spec in args.peers:
        peer = make_peer(spec)
        peer.check_images(source.image_shape)
        models.append(Model(f"baseline+{peer.describe()}", base, peer))
    denominator = preset.baseline_top1 if args.published_denominator else None
    if args.published_denominator and denominator is None:
        raise ToolkitError(f"{preset.name} has no published baseline top-1; drop --published-denominator")
    result = evaluate(models, source, perturbations, seed=args.seed, baseline_top1=denominator, batch_size=batch,
                      clip=args.clip)
    perts = np.stack([np.asarray(p, np.float32) for p in perturbations])
    rates = detector_report(models, source, perts, draw_choices(len(source), len(perts), args.seed), batch)
    if rates:
        result["models"][DETECTOR_ROW].update(rates)
    result.update(network=preset.name, perturbation_files=[str(p) for p in args.perturbations],
                  runtime=runtime, command="python -m defense.evaluate " + " ".join(sys.argv[1:] if argv is None else argv))
    for path in write_reports(result, args.out, args.stem):
        print(path)
    print(markdown_table(result), end="")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
