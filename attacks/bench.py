"""Benchmark: batched UAP against the reference one-image-at-a-time DeepFool loop.

Both modes use the same net, images, seeds, xi and stopping rule (fooling rate 1 - delta or
``--max-passes``); only DeepFool's batch size differs (1 = the loop of the reference
implementations). Prints time and fooling rate side by side and the speed-up. Without
``--prototxt`` it trains the small Fashion-MNIST net of ``attacks.toy`` first (not timed),
by default with two 2048-wide fully connected layers, CaffeNet's layout in small: on a
CPU, Caffe convolves a batch one image at a time, so batching pays off in the fully
connected layers (one matrix product instead of N matrix-vector products). Times are
process CPU time (robust on a shared machine) and wall time, summed over ``--seeds`` runs;
fooling rates are averaged over them (one run's rate moves by a few points from pass to pass).
"""
from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time
from typing import Optional, Sequence

import numpy as np

from defense.core import number_list, parse_args, positive_int, run_cli, seed_int, set_mode, write_text
from defense.outputs import output_file

from .classifier import CaffeClassifier
from .data import load_images
from .metrics import fooling_rate
from .factory import make_attack


def build_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog="python -m attacks.bench", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--prototxt", help="deploy prototxt (default: the tiny Fashion-MNIST net, trained first)")
    p.add_argument("--weights", help="caffemodel for --prototxt")
    p.add_argument("--data", help="images (.npy/.h5, N,C,H,W BGR [0,255]); default: Fashion-MNIST test images")
    p.add_argument("--mean", default=None, help="per-channel BGR mean (default: the tiny net's 128)")
    p.add_argument("--fc-width", type=int, default=2048,
                   help="width of the toy net's two fully connected layers (0: conv-only net; default 2048)")
    p.add_argument("--n-images", type=positive_int, default=500, help="images the attack uses (default 500)")
    p.add_argument("--norm", default="inf", choices=["inf", "2"])
    p.add_argument("--xi", type=float, default=40.0, help="ball radius, pixel units (default 40 for the tiny net)")
    p.add_argument("--delta", type=float, default=0.2)
    p.add_argument("--max-passes", type=positive_int, default=4)
    p.add_argument("--batch-size", type=positive_int, default=128,
                   help="DeepFool batch of the batched run (default 128: the toy net's activations are small; "
                        "use 16-32 for ImageNet-sized nets)")
    p.add_argument("--seed", type=seed_int, default=0, help="first seed (default 0)")
    p.add_argument("--seeds", type=positive_int, default=3,
                   help="runs per mode with seeds seed, seed+1, ...; fooling rates are averaged, times summed (default 3)")
    p.add_argument("--gpu", type=int, default=None)
    p.add_argument("--out", type=output_file, help="write the results as JSON here")
    return p


def _classifier(args) -> CaffeClassifier:
    from . import toy
    if args.prototxt:
        mean = number_list(args.mean or "0", "--mean", float)
        return CaffeClassifier.from_files(args.prototxt, args.weights, mean if len(mean) > 1 else mean[0])
    proto, weights = toy.train_tiny_net(tempfile.mkdtemp(prefix="uap_bench_"), seed=args.seed,
                                        fc_width=args.fc_width)
    return CaffeClassifier.from_files(proto, weights, toy.MEAN)


def run(args) -> dict:
    set_mode(args.gpu, args.seed)
    clf = _classifier(args)
    if args.data:
        x = load_images(args.data, clf.input_shape)[: args.n_images]
    else:
        from . import toy
        x = toy.fashion_subset("test", args.n_images)[0]
    clean = clf.labels(x)
    seeds = [args.seed + k for k in range(args.seeds)]
    rows = {}
    for label, batch in (("one_at_a_time", 1), ("batched", args.batch_size)):
        runs = []
        for seed in seeds:
            attack = make_attack("uap", clf, norm=args.norm, xi=args.xi, delta=args.delta, max_passes=args.max_passes,
                         batch_size=batch, verbose=False)
            t0, c0 = time.perf_counter(), time.process_time()
            res = attack.generate(x, np.random.default_rng(seed))
            elapsed, cpu = time.perf_counter() - t0, time.process_time() - c0
            runs.append({"seed": seed, "cpu_s": cpu, "wall_s": elapsed, "passes": res.n_iter,
                         "fooling_rate": fooling_rate(clean, clf.labels(x, perturbation=res.perturbation)),
                         "history": res.history})
        rows[label] = {"batch_size": batch, "runs": runs,
                       "cpu_s": sum(r["cpu_s"] for r in runs), "wall_s": sum(r["wall_s"] for r in runs),
                       "passes": sum(r["passes"] for r in runs),
                       "fooling_rate": float(np.mean([r["fooling_rate"] for r in runs]))}
    one, bat = rows["one_at_a_time"], rows["batched"]
    net = args.prototxt or f"attacks.toy Fashion-MNIST net (fc width {args.fc_width})"
    return {"net": net, "n_images": int(len(x)), "openblas_threads": os.environ.get("OPENBLAS_NUM_THREADS", "default"),
            "norm": args.norm, "xi": args.xi, "delta": args.delta, "max_passes": args.max_passes,
            "seeds": seeds, "device": "cpu" if args.gpu is None else f"gpu{args.gpu}", **rows,
            "speedup_cpu": one["cpu_s"] / bat["cpu_s"], "speedup_wall": one["wall_s"] / bat["wall_s"],
            "fooling_rate_difference": bat["fooling_rate"] - one["fooling_rate"]}


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    r = run(args)
    print(f"UAP benchmark on {r['net']}: {r['n_images']} images, l_{r['norm']} xi={r['xi']}, "
          f"stop at fooling rate {1 - r['delta']:.2f} or {r['max_passes']} passes, seeds {r['seeds']}, {r['device']}, "
          f"OPENBLAS_NUM_THREADS={r['openblas_threads']}")
    print(f"{'':16}{'batch':>6}{'cpu (s)':>10}{'wall (s)':>10}{'passes':>8}{'mean fooling rate':>19}")
    for key in ("one_at_a_time", "batched"):
        row = r[key]
        print(f"{key:16}{row['batch_size']:>6}{row['cpu_s']:>10.2f}{row['wall_s']:>10.2f}{row['passes']:>8}"
              f"{row['fooling_rate']:>19.4f}")
    print(f"speed-up batched / one-at-a-time: {r['speedup_cpu']:.2f}x CPU time, {r['speedup_wall']:.2f}x wall; "
          f"fooling-rate difference {r['fooling_rate_difference']:+.4f}")
    if args.out:
        write_text(args.out, json.dumps(r, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
