"""Command line: ``python -m attacks <uap|spgd|fff|gduap|svuap|gap|nag|synthetic|convert|fetch> ...``.

Writes the perturbation (toolkit HDF5, see attacks.perturbation_io) and a JSON report
(fooling rate on the attack data and on held-out data with 95% bootstrap intervals, norms,
time, seed, parameters).
"""
from __future__ import annotations

import argparse
import json
import logging
import math
import sys
import time
from pathlib import Path
from typing import Dict, Optional, Sequence

import numpy as np

from defense.core import ToolkitError, number_list, parse_args, positive_int, run_cli, seed_int, set_mode, write_text
from defense.outputs import check_output, output_dir, output_file

from .classifier import CaffeClassifier
from .data import load_images, split_holdout
from .factory import attack_defaults, make_attack
from .metrics import fooling_report
from .perturbation_io import PUBLISHED_LOADERS, PerturbationMeta, load_mat, load_perturbations, load_published, \
    save_perturbation
from .projection import lp_norm
from .synthetic import RULES, synthesize

DATA_HELP = ".npy (never unpickled) or .h5 array of images (N,C,H,W), float32 BGR in [0,255] before mean subtraction"


# ------------------------------------------------------------------ parser
def _net_args(p: argparse.ArgumentParser, required: bool = True) -> None:
    g = p.add_argument_group("network")
    g.add_argument("--prototxt", required=required, help="deploy prototxt (input shape is read from it)")
    g.add_argument("--weights", required=required, help="caffemodel")
    g.add_argument("--mean", help="per-channel BGR mean to subtract, e.g. '104,117,123' (or one value)")
    g.add_argument("--preset", help="take the mean from this network preset (e.g. CaffeNet)")
    g.add_argument("--clip", action="store_true", help="clip perturbed images to [0,255] (default: no clipping, "
                   "as the published evaluation scripts)")
    g.add_argument("--gpu", type=int, default=None, help="GPU id (default: CPU)")
    g.add_argument("--batch-size", type=positive_int, default=32, help="images per forward/backward pass")


def _out_args(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", type=output_file, required=True, help="perturbation file to write (.h5)")
    p.add_argument("--report", type=output_file, help="JSON report (default: --out with .json)")
    p.add_argument("--network", help="network name recorded in the file (default: preset or prototxt name)")
    p.add_argument("--seed", type=seed_int, default=0, help="random seed (recorded)")
    p.add_argument("--quiet", action="store_true", help="no progress bars")


def _attack_args(p: argparse.ArgumentParser, data_required: bool, norm: bool = True) -> None:
    _net_args(p)
    p.add_argument("--data", required=data_required, help=DATA_HELP)
    p.add_argument("--heldout", help="held-out images (same format); default: split --holdout-fraction off --data")
    p.add_argument("--holdout-fraction", type=float, default=0.2, help="share of --data held out (default 0.2)")
    if norm:
        p.add_argument("--norm", default="inf", choices=["inf", "2"], help="l_inf or l_2 ball (default inf)")
    p.add_argument("--xi", type=float, default=None,
                   help="ball radius in pixel units (default: 10 for l_inf, 2000 for l_2 at 224x224x3)")
    _out_args(p)


def _threshold(text: str):
    """argparse type of ``--threshold``: ``min``, ``max`` or a positive finite number."""
    if text in ("min", "max"):
        return text
    try:
        value = float(text)
    except ValueError:
        value = float("nan")
    if not (math.isfinite(value) and value > 0):
        raise argparse.ArgumentTypeError(f"expected 'min', 'max' or a positive number, got '{text}'")
    return value


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m attacks", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)

    p = sub.add_parser("uap", help="UAP (Moosavi-Dezfooli et al. 2017), batched DeepFool")
    _attack_args(p, data_required=True)
    d = attack_defaults("uap")
    p.add_argument("--delta", type=float, help=f"stop at fooling rate 1-delta (default {d['delta']})")
    p.add_argument("--max-passes", type=positive_int, help=f"passes over the data (default {d['max_passes']})")
    p.add_argument("--overshoot", type=float, help=f"DeepFool overshoot (default {d['overshoot']})")
    p.add_argument("--max-iter-df", type=positive_int, help=f"DeepFool iterations (default {d['max_iter_df']})")
    p.add_argument("--num-classes", type=positive_int, help=f"DeepFool's top-k classes (default {d['num_classes']})")
    p.add_argument("--state", type=output_file, help="resume file (default: --out with .state.npz); rerun to resume")

    p = sub.add_parser("spgd", help="sPGD (Mummadi et al. 2019): stochastic PGD on one perturbation")
    _attack_args(p, data_required=True)
    d = attack_defaults("spgd")
    p.add_argument("--step-size", type=float, help="pixel units per step (default xi/10)")
    p.add_argument("--epochs", type=positive_int, help=f"passes over the data (default {d['epochs']})")
    p.add_argument("--loss-clip", type=float, help="cross-entropy clip (default: none)")
    p.add_argument("--delta", type=float, help=f"stop early at fooling rate 1-delta (default {d['delta']}: never)")

    for name, helptext in (("fff", "Fast Feature Fool (Mopuri et al. 2017), data-free"),
                           ("gduap", "GD-UAP (Mopuri et al. 2018), data-free with priors")):
        p = sub.add_parser(name, help=helptext)
        _attack_args(p, data_required=False, norm=False)
        p.add_argument("--layers", nargs="+", help="blobs to excite (default: every conv output)")
        d = attack_defaults(name)
        p.add_argument("--lr", type=float, help="Adam step, pixel units (default xi/100)")
        p.add_argument("--max-iter", type=positive_int, help=f"iterations (default {d['max_iter']})")
        if name == "gduap":
            p.add_argument("--prior", choices=["none", "range", "data"], help=f"default {d['prior']}")
            p.add_argument("--saturation", type=float,
                           help=f"halve v above this saturated share (default {d['saturation']})")

    p = sub.add_parser("svuap", help="SV-UAP (Khrulkov & Oseledets 2018): (p,q)-singular vectors")
    _attack_args(p, data_required=True)
    p.add_argument("--layer", help="hidden blob (default: first conv output)")
    d = attack_defaults("svuap")
    p.add_argument("--p", type=float, help="power-method input norm (default: inf / 2)")
    p.add_argument("--q", type=float, help=f"output norm of the singular vector (default {d['q']})")
    p.add_argument("--n-images", type=positive_int, help=f"images of the power method (default {d['n_images']})")
    p.add_argument("--max-iter", type=positive_int, help=f"power iterations (default {d['max_iter']})")
    p.add_argument("--fd-step", type=float, help=f"finite-difference step, l_2 pixel units (default {d['fd_step']})")

    for name, helptext in (("gap", "GAP (Poursaeed et al. 2018): a ResNet generator of one universal perturbation"),
                           ("nag", "NAG (Mopuri et al. 2018): a generator of a distribution of perturbations")):
        p = sub.add_parser(name, help=helptext)
        _attack_args(p, data_required=True)
        d = attack_defaults(name)
        p.add_argument("--max-iter", type=positive_int,
                       help=f"generator training iterations (default {d['max_iter']}); --batch-size images each")
        p.add_argument("--lr", type=float, help=f"Adam learning rate (default {d['lr']})")
        p.add_argument("--ngf", type=positive_int, help="generator width (default: the paper's from 128 pixels up, "
                       "smaller below)")
        if name == "gap":
            p.add_argument("--blocks", type=positive_int,
                           help="residual blocks (default: 6 from 128 pixels up, else 3)")
            p.add_argument("--loss", choices=["clean", "least_likely"], help=f"default {d['loss']}")
        else:
            p.add_argument("--layer", help="blob of the diversity loss (default: the last conv output)")
            p.add_argument("--diversity-weight", type=float, help=f"default {d['diversity_weight']}")
            p.add_argument("--latent-dim", type=positive_int, help=f"default {d['latent_dim']}")
            p.add_argument("--samples", type=positive_int, default=1,
                           help="perturbations to draw from the trained generator (default 1; more: a stacked file)")
        p.add_argument("--snapshots", type=output_dir, help="snapshot folder (default: --out's name + .snapshots)")
        p.add_argument("--snapshot-every", type=int, default=0,
                       help="also snapshot every N iterations (default 0: at the end and on Ctrl-C only)")
        p.add_argument("--resume", help="continue from a .solverstate snapshot of the same run (byte-identical)")

    p = sub.add_parser("synthetic", help="synthetic perturbations mixed from a set of UAP files")
    p.add_argument("--inputs", nargs="+", required=True, help="perturbation files (toolkit format, or --input-format)")
    p.add_argument("--input-format", default="toolkit", choices=["toolkit", *PUBLISHED_LOADERS],
                   help="format of --inputs (default: toolkit)")
    p.add_argument("--count", type=positive_int, default=100, help="how many to make (default 100)")
    p.add_argument("--threshold", type=_threshold, default="min", help="l_2 norm to reach: a number, 'min' or 'max' of the set")
    p.add_argument("--rule", default="convex", choices=list(RULES))
    p.add_argument("--max-steps", type=positive_int, default=1000, help="most rescaling steps per perturbation (1000)")
    _out_args(p)

    p = sub.add_parser("convert", help="convert a published / .mat / .npy perturbation to the toolkit format")
    p.add_argument("--format", required=True, choices=[*PUBLISHED_LOADERS, "mat"], help="input format")
    p.add_argument("--input", required=True, help="file to convert")
    p.add_argument("--mat-variable", help=".mat variable (default: 'v' or the only 3-D one)")
    p.add_argument("--mat-layout", default="WHC", help=".mat array dimension order (default WHC)")
    p.add_argument("--mat-bgr", action="store_true", help=".mat channels are already BGR")
    _out_args(p)

    p = sub.add_parser("fetch", help="download published perturbation files (verified) from the paper's repository")
    p.add_argument("names", nargs="*", default=["all"],
                   help="file names or folders below Attack_samples/, e.g. UAP/CaffeNet (default: all)")
    p.add_argument("--dest", type=output_dir, default=None,
                   help="destination folder (default: $FRU_DOWNLOAD_DIR/Attack_samples, else the repository's "
                        "Attack_samples/, where the demo and the tables look)")
    p.add_argument("--base-url", help="mirror serving <base-url>/<name> (default $FRU_WEIGHTS_MIRROR or GitHub)")
    p.add_argument("--force", action="store_true", help="download again even if a verified copy exists")
    return parser


# ------------------------------------------------------------------ helpers
def _mean(args) -> object:
    if args.mean and args.preset:
        raise ToolkitError("give either --mean or --preset, not both")
    if args.preset:
        return None
    if args.mean is None:
        raise ToolkitError("the mean to subtract is needed: give --mean B,G,R or --preset NAME")
    values = number_list(args.mean, "--mean", float)
    return values[0] if len(values) == 1 else values


def _classifier(args) -> CaffeClassifier:
    mean = _mean(args)
    set_mode(args.gpu, args.seed)
    return CaffeClassifier.from_files(args.prototxt, args.weights, mean, preset=args.preset, clip=args.clip,
                                      batch_size=args.batch_size)


def _network_name(args) -> str:
    if getattr(args, "network", None):
        return args.network
    if getattr(args, "preset", None):
        return args.preset
    return Path(args.prototxt).stem if getattr(args, "prototxt", None) else ""


def _report_path(args) -> Path:
    return Path(args.report) if args.report else Path(args.out).with_suffix(".json")


def _state_path(args) -> Path:
    return Path(args.state) if args.state else Path(args.out).with_suffix(".state.npz")


def _snapshot_dir(args) -> Path:
    return Path(args.snapshots) if args.snapshots else Path(args.out).with_suffix(".snapshots")


def check_derived_outputs(args) -> None:
    """The report (and UAP's state file, the generators' snapshot folder) defaults are derived
    from --out: check them as if given."""
    outputs = {"out", "report", "state", "snapshots"}
    check_output(_report_path(args), "--report", "file", args, skip={"report"}, outputs=outputs)
    if args.command == "uap":
        check_output(_state_path(args), "--state", "file", args, skip={"state"}, outputs=outputs)
    if args.command in ("gap", "nag"):
        check_output(_snapshot_dir(args), "--snapshots", "folder", args, skip={"snapshots"}, outputs=outputs)


def _norms(v: np.ndarray) -> Dict[str, float]:
    return {"linf": lp_norm(v, "inf"), "l2": lp_norm(v, "2")}


def _attack_kwargs(args) -> Dict[str, object]:
    c = args.command
    common = {"verbose": not args.quiet}
    if c in ("uap", "spgd", "svuap", "gap", "nag"):
        common.update(norm=args.norm, xi=args.xi)
    else:
        common.update(xi=args.xi)
    if c == "uap":
        state = str(_state_path(args))
        return dict(common, delta=args.delta, max_passes=args.max_passes, overshoot=args.overshoot,
                    max_iter_df=args.max_iter_df, num_classes=args.num_classes, batch_size=args.batch_size,
                    state_path=state)
    if c == "spgd":
        return dict(common, step_size=args.step_size, epochs=args.epochs, batch_size=args.batch_size,
                    loss_clip=args.loss_clip, delta=args.delta)
    if c == "fff":
        return dict(common, layers=args.layers, lr=args.lr, max_iter=args.max_iter)
    if c == "gduap":
        return dict(common, layers=args.layers, lr=args.lr, max_iter=args.max_iter, prior=args.prior,
                    batch_size=args.batch_size, saturation=args.saturation)
    if c in ("gap", "nag"):
        common.update(max_iter=args.max_iter, batch_size=args.batch_size, lr=args.lr, ngf=args.ngf,
                      snapshot_dir=str(_snapshot_dir(args)), snapshot_every=args.snapshot_every, resume=args.resume)
        if c == "gap":
            return dict(common, blocks=args.blocks, loss=args.loss)
        return dict(common, layer=args.layer, diversity_weight=args.diversity_weight, latent_dim=args.latent_dim)
    return dict(common, layer=args.layer, p=args.p, q=args.q, n_images=args.n_images, max_iter=args.max_iter,
                fd_step=args.fd_step, batch_size=args.batch_size)


def _jsonable(params: Dict[str, object]) -> Dict[str, object]:
    return {k: (str(v) if isinstance(v, Path) else v) for k, v in params.items()}


# ------------------------------------------------------------------ commands
def run_attack(args) -> Dict[str, object]:
    clf = _classifier(args)
    rng = np.random.default_rng(args.seed)
    x_attack = x_held = None
    if args.data:
        x = load_images(args.data, clf.input_shape)
        if args.heldout:
            x_attack, x_held = x, load_images(args.heldout, clf.input_shape)
        else:
            a, h = split_holdout(len(x), args.holdout_fraction, np.random.default_rng([args.seed, 1]))
            x_attack, x_held = x[a], (x[h] if len(h) else None)
    attack = make_attack(args.command, clf, **_attack_kwargs(args))
    t0 = time.perf_counter()
    result = attack.generate(x_attack, rng)
    elapsed = time.perf_counter() - t0
    v = result.perturbation
    samples = getattr(args, "samples", 1)
    if samples > 1:  # NAG: the first sample, then more from the trained generator
        v = np.concatenate([v[None], attack.sample(samples - 1, np.random.default_rng([args.seed, 2]))])
    stack = v.reshape((-1,) + v.shape[-3:])
    report: Dict[str, object] = {"attack": args.command, "network": _network_name(args),
                                 "prototxt": args.prototxt, "weights": args.weights, "data": args.data,
                                 "seed": args.seed, "clip": bool(args.clip), "params": _jsonable(attack.params),
                                 "time_s": elapsed, "n_iter": result.n_iter, "converged": bool(result.converged),
                                 "norms": _norms(stack[0]), "samples": samples,
                                 "history": [float(h) for h in result.history]}
    for key, xs in (("attack_data", x_attack), ("heldout", x_held)):
        if xs is not None:
            clean = clf.labels(xs)
            reports = [fooling_report(clean, clf.labels(xs, perturbation=p), seed=args.seed) for p in stack]
            report[key] = reports[0] if samples == 1 else dict(reports[0], per_sample=reports)
    fr = report["attack_data"]["fooling_rate"] if x_attack is not None else float("nan")
    meta = PerturbationMeta(attack=args.command, network=report["network"], input_size=tuple(clf.input_shape[1:]),
                            norm=getattr(attack, "norm", "inf"), xi=float(attack.xi), fooling_rate=fr,
                            data=str(args.data or ""), seed=args.seed, attack_params=_jsonable(attack.params),
                            extra={"clip": bool(args.clip), "heldout": report.get("heldout")})
    save_perturbation(args.out, v, meta)
    report["out"] = str(args.out)
    return report


def run_synthetic(args) -> Dict[str, object]:
    first = load_perturbations(args.inputs[:1], args.input_format)
    arrays = first + load_perturbations(args.inputs[1:], args.input_format, expect=first[0].shape)
    stack = np.stack(arrays)
    threshold = args.threshold
    t0 = time.perf_counter()
    res = synthesize(stack, args.count, np.random.default_rng(args.seed), threshold, args.rule, args.max_steps)
    params = {"inputs": list(args.inputs), "count": args.count, "threshold": res.threshold, "rule": args.rule,
              "max_steps": args.max_steps}
    meta = PerturbationMeta(attack="synthetic", network=args.network or "", input_size=tuple(stack.shape[-2:]),
                            norm="2", xi=res.threshold, seed=args.seed, attack_params=params)
    save_perturbation(args.out, res.perturbations, meta)
    l2 = np.sqrt((res.perturbations.reshape(len(res.perturbations), -1).astype(np.float64) ** 2).sum(1))
    return {"attack": "synthetic", "out": str(args.out), "seed": args.seed, "params": params,
            "time_s": time.perf_counter() - t0, "rescaled": res.rescaled,
            "steps": {"mean": float(res.steps.mean()), "max": int(res.steps.max())},
            "norms": {"l2_min": float(l2.min()), "l2_max": float(l2.max()),
                      "linf_max": float(np.abs(res.perturbations).max())}}


def run_convert(args) -> Dict[str, object]:
    if args.format == "mat":
        v = load_mat(args.input, args.mat_variable, args.mat_layout, rgb=not args.mat_bgr)
    else:
        v = load_published(args.format, args.input)
    meta = PerturbationMeta(attack=args.format, network=args.network or "", input_size=tuple(v.shape[-2:]),
                            data=str(args.input), seed=None, extra={"converted_from": str(args.input)})
    save_perturbation(args.out, v, meta)
    return {"attack": args.format, "input": str(args.input), "out": str(args.out), "shape": list(v.shape),
            "norms": _norms(v)}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    logging.basicConfig(level=logging.WARNING if getattr(args, "quiet", False) else logging.INFO, format="%(message)s")
    if args.command == "fetch":
        from .published import fetch_published, published_dir
        for path in fetch_published(args.names, args.dest or published_dir(), base_url=args.base_url, force=args.force):
            print(path)
        return 0
    check_derived_outputs(args)
    if args.command == "synthetic":
        report = run_synthetic(args)
    elif args.command == "convert":
        report = run_convert(args)
    else:
        report = run_attack(args)
    text = json.dumps(report, indent=2, sort_keys=True, default=float)
    write_text(_report_path(args), text + "\n")
    print(text)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
