"""Generate FRU networks: deploy, train and solver prototxts, and the initial weights.

  python -m defense.generate --all
      regenerate every committed prototxt (baselines and prototxt/<Net>/deploy_<net>_FRU.prototxt)
  python -m defense.generate --preset CaffeNet --weights base.caffemodel --out DIR
      the published FRU layout of a network; DIR gets deploy_FRU.prototxt, train.prototxt,
      solver.prototxt and (with --weights) init.caffemodel, where every FRU starts as the identity
  python -m defense.generate --prototxt P --layers conv1,conv2 [--ratio 0.5] [--depth D] --out DIR
      any other network, with names derived from each target's name
  python -m defense.generate --defense prn|hgd --preset FashionNet [--weights base.caffemodel] --out DIR
      a competitor defence prepended to the baseline (generate.competitors): DIR gets
      deploy_PRN.prototxt (or _HGD), train.prototxt, solver.prototxt and init.caffemodel
  python -m defense.generate --defense fd --preset FashionNet [--layers L] [--affinity dot] --weights W --out DIR
      the FD competitor: feature denoising blocks after the FRUs' targets (or --layers), the whole
      net trained; deploy_FD.prototxt, train.prototxt, solver.prototxt, init.caffemodel (FD = baseline at start)
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import List, Optional, Sequence

from ..core import (ToolkitError, caffe, check_net_builds, net_param_text, parse_args, positive_int, read_net_param,
                    run_cli, seed_int, set_mode)
from ..networks import build_baseline
from ..outputs import check_output, output_dir
from ..presets import PRESETS, get_preset
from .build import OUTPUT_NAMES, load_base_blobs, targets_for, write_all, write_competitor, write_outputs
from .competitors import DEFENCES, get_competitor
from .fd import AFFINITIES
from .fru import MODES, build_fru
from .graph import normalize
from .ranking import NORMS


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m defense.generate", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    src = ap.add_mutually_exclusive_group(required=True)
    src.add_argument("--all", action="store_true", help="regenerate every committed prototxt under prototxt/")
    src.add_argument("--preset", help=f"published network: {', '.join(PRESETS)}")
    src.add_argument("--prototxt", type=Path, help="baseline deploy prototxt of any other network")
    ap.add_argument("--defense", default="fru", type=str.lower, choices=DEFENCES,
                    help="the defence generated: fru (default), a competitor prepended to the net (prn, hgd) "
                    "or inside it after the targets (fd)")
    ap.add_argument("--affinity", choices=AFFINITIES,
                    help="fd only: non-local means affinity (auto: gaussian up to 56x56 positions, else dot)")
    ap.add_argument("--layers", help="comma-separated target conv layers (default for a preset: the published ones)")
    ap.add_argument("--ratio", type=float, default=0.5, help="N = ratio x channels for non-preset targets (0.5)")
    depth = ap.add_mutually_exclusive_group()
    depth.add_argument("--depth", type=positive_int, help="FRU depth D for non-preset targets")
    depth.add_argument("--depth-ratio", type=float, default=1.0, help="D = depth-ratio x N (1.0)")
    ap.add_argument("--mode", choices=MODES, help="permutation layout (default: the preset's, else explicit)")
    ap.add_argument("--weights", type=Path, help="baseline caffemodel: rank channels and write init.caffemodel")
    ap.add_argument("--out", type=output_dir, help="output folder (with --all: root instead of prototxt/)")
    ap.add_argument("--norm", choices=NORMS, default="l1", help="filter norm used for ranking (l1)")
    ap.add_argument("--batch", type=positive_int, default=32, help="batch size of the train net (32)")
    ap.add_argument("--seed", type=seed_int, default=0, help="seed of the FRU MSRA initialisation and the solver (0)")
    return ap


def run(args: argparse.Namespace) -> List[Path]:
    if args.all:
        if args.defense != "fru":
            raise ToolkitError(f"--all regenerates the committed prototxts (baseline, FRU, FD); "
                               f"--defense {args.defense} needs --preset or --prototxt")
        return write_all(args.out)
    if args.affinity is not None and args.defense != "fd":
        raise ToolkitError("--affinity applies to --defense fd only")
    preset = get_preset(args.preset) if args.preset else None
    if preset is not None:
        source = preset.name
        base = build_baseline(preset.name)
    else:
        source = str(args.prototxt)
        base = normalize(read_net_param(args.prototxt), source)
        check_net_builds(net_param_text(base), caffe.TEST, source)  # before reading channels off it
    if args.defense != "fru":
        return _run_competitor(args, base, source, preset)
    if args.layers:
        layers = [x.strip() for x in args.layers.split(",") if x.strip()]
        targets = targets_for(base, layers, preset, args.ratio, args.depth, args.depth_ratio, source)
    elif preset is not None:
        targets = preset.targets
    else:
        raise ToolkitError("--layers is needed with --prototxt (e.g. --layers conv1,conv2)")
    mode = args.mode or (preset.mode if preset else "explicit")
    if args.out is None:
        raise ToolkitError("--out DIR is needed (where deploy_FRU.prototxt, train.prototxt, solver.prototxt go)")
    for name in OUTPUT_NAMES + (("init.caffemodel",) if args.weights is not None else ()):
        check_output(args.out / name, "--out", "file", args, skip={"out"})  # an input under a name written here
    command = "python -m defense.generate " + " ".join(sys.argv[1:] if args.argv is None else args.argv)
    header = f"Generated by: {command.strip()}"
    build = build_fru(base, targets, mode, args.batch, source)
    base_blobs = load_base_blobs(base, args.weights, source) if args.weights is not None else None
    return write_outputs(build, args.out, header, base, base_blobs, args.seed, args.norm, source)


def _run_competitor(args: argparse.Namespace, base, source: str, preset) -> List[Path]:
    """A competitor of the registry; an ``internal`` one (FD) sits after ``--layers`` or the preset's targets."""
    competitor = get_competitor(args.defense)
    options = {}
    if competitor.kind == "internal":
        if args.mode:
            raise ToolkitError(f"--mode places FRUs; --defense {args.defense} has no permutation layout")
        if args.layers:
            options["layers"] = [x.strip() for x in args.layers.split(",") if x.strip()]
        elif preset is not None:
            options["layers"] = [t.layer for t in preset.targets]
        else:
            raise ToolkitError(f"--layers is needed with --prototxt and --defense {args.defense} (e.g. --layers conv1)")
        if args.affinity is not None:
            options["affinity"] = args.affinity
    elif args.layers or args.mode:
        raise ToolkitError(f"--layers and --mode place FRUs; --defense {args.defense} is prepended to the net")
    if args.out is None:
        raise ToolkitError("--out DIR is needed (where the deploy, train and solver prototxts go)")
    command = "python -m defense.generate " + " ".join(sys.argv[1:] if args.argv is None else args.argv)
    build = competitor.build(base, args.batch, source, **options)
    base_blobs = load_base_blobs(base, args.weights, source) if args.weights is not None else None
    return write_competitor(build, args.out, f"Generated by: {command.strip()}", base_blobs, args.seed)


def main(argv: Optional[Sequence[str]] = None) -> int:
    def _main(argv):
        args = parse_args(build_parser(), argv)
        args.argv = argv
        set_mode(None, args.seed)
        for path in run(args):
            print(f"wrote {path}")
        return 0
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
