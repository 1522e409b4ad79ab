"""``python -m defense.train``: train the FRUs of a generated network (``python -m defense.generate``).

Every mini-batch is half clean, half perturbed by a random perturbation of the given set; only
FRU layers learn. Ctrl-C writes a snapshot; ``--resume`` continues from it; ``--gpus 0,1``
trains on several GPUs with NCCL. The same command trains a competitor generated with
``--defense prn|hgd`` (only its layers learn) or ``--defense fd`` (every layer learns, as its
train net says); ``--detector D.npz`` then fits PRN's detector.
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from attacks.classifier import CaffeClassifier
from attacks.perturbation_io import load_perturbations
from attacks.synthetic import synthesize

from ..core import ToolkitError, check_gpus, parse_args, positive_int, run_cli, seed_int, set_mode
from ..data import DATA_SOURCES, open_source
from ..generate.competitors import get_competitor
from ..outputs import check_output, output_file
from ..presets import get_preset
from .batches import TrainOptions, stack_perturbations
from .detector import train_detector
from .launch import parse_gpus, snapshot_folder, train


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m defense.train",
        description="Train the FRUs of a generated network (python -m defense.generate ... --out DIR): every "
                    "mini-batch half clean, half perturbed by a random perturbation from the given set; only FRU "
                    "layers learn. Ctrl-C writes a snapshot; --resume continues from it.")
    p.add_argument("--net", required=True, help="preset name (input mean, shapes), e.g. FashionNet")
    p.add_argument("--dir", type=Path, help="generator output folder: uses DIR/solver.prototxt and DIR/init.caffemodel")
    p.add_argument("--solver", type=Path, help="solver prototxt (default DIR/solver.prototxt)")
    p.add_argument("--weights", type=Path, help="initial weights (default DIR/init.caffemodel)")
    p.add_argument("--perturbations", nargs="+", type=Path, required=True, metavar="FILE",
                   help="training perturbations (.h5 toolkit files or .npy arrays, pixel units)")
    p.add_argument("--synthetic", type=int, default=0, metavar="K",
                   help="add K synthetic perturbations mixed from the given ones (attacks.synthetic)")
    p.add_argument("--data", default="fashion-mnist", choices=sorted(DATA_SOURCES), help="data source")
    p.add_argument("--split", default="train",
                   help="fashion-mnist: data split (default train); imagenet: the training index "
                        "(python -m defense.imagenet prepare train ...)")
    p.add_argument("--out", type=output_file, required=True, help="final caffemodel (snapshots go to <out stem>_snapshots/)")
    p.add_argument("--max-iter", type=positive_int, help="last iteration (default: the solver's max_iter)")
    p.add_argument("--snapshot-every", type=int, help="snapshot period (default: the solver's snapshot)")
    p.add_argument("--clean-fraction", type=float, default=0.5, help="clean share of each mini-batch (0.5)")
    p.add_argument("--clip", action="store_true", help="clip perturbed images to [0,255] (published: no)")
    p.add_argument("--resume", type=Path, metavar="SOLVERSTATE", help="continue from a snapshot's .solverstate")
    p.add_argument("--seed", type=seed_int, default=0, help="seed of data order, perturbation draw and Caffe (0)")
    dev = p.add_mutually_exclusive_group()
    dev.add_argument("--gpu", type=int, metavar="N", help="train on GPU N (default: CPU)")
    dev.add_argument("--gpus", metavar="0,1", help="train on several GPUs with NCCL (one process per GPU)")
    p.add_argument("--detector", type=output_file, metavar="NPZ",
                   help="PRN only: after training, fit its perturbation detector (a linear SVM on the DCT of "
                        "input - PRN(input)) on training images and write it here")
    p.add_argument("--detector-images", type=positive_int, default=2000,
                   help="training images for the detector, half clean, half perturbed (2000)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    check_output(snapshot_folder(args.out), "--out", "folder", args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    preset = get_preset(args.net)
    solver = args.solver or (args.dir / "solver.prototxt" if args.dir else None)
    if solver is None:
        raise ToolkitError("give --dir (generator output) or --solver")
    prn_deploy = args.dir / get_competitor("prn").file_name if args.dir else None
    if args.detector is not None and (prn_deploy is None or not prn_deploy.is_file()):
        raise ToolkitError(f"--detector needs --dir with the PRN's {get_competitor('prn').file_name} "
                           "(python -m defense.generate --defense prn)")
    weights = args.weights or (args.dir / "init.caffemodel" if args.dir and args.resume is None else None)
    gpus = parse_gpus(args.gpus) if args.gpus else []
    if len(gpus) <= 1:
        set_mode(gpus[0] if gpus else args.gpu, args.seed)
    else:
        check_gpus(gpus, "--gpus")  # before any data is read
    perturbations = load_perturbations(args.perturbations, expect=preset.input_shape)
    if args.synthetic:
        mixed = synthesize(np.stack(perturbations), args.synthetic, np.random.default_rng(args.seed))
        perturbations += list(mixed.perturbations)
    options = TrainOptions(max_iter=args.max_iter, snapshot_every=args.snapshot_every, seed=args.seed,
                           clean_fraction=args.clean_fraction, clip=args.clip, progress=not args.quiet)
    source = open_source(args.data, args.split, preset)
    out = train(solver, source, perturbations, args.out, preset.mean_bgr,
                weights=weights, resume=args.resume, gpus=gpus if len(gpus) > 1 else (), options=options)
    print(out)
    if args.detector is not None:
        prn = CaffeClassifier.from_files(prn_deploy, out, preset.mean_bgr, batch_size=preset.eval_batch)
        detector, stats = train_detector(prn, source, stack_perturbations(perturbations, source.image_shape),
                                         args.detector_images, args.seed, preset.eval_batch)
        print(detector.save(args.detector))
        print(f"detector: {stats['images']} images, training detection rate {stats['train_detection_rate']:.3f}, "
              f"false-alarm rate {stats['train_false_alarm_rate']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
