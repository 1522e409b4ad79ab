"""``python -m defense.train_baseline``: train the FashionNet baseline on Fashion-MNIST.

The shipped ``weights/FashionNet/fashionnet.caffemodel`` comes from ``make reproduce``, which
runs the same training (``defense.train.baseline``) as its first stage. Writes the caffemodel
and a JSON summary beside it.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from typing import Optional, Sequence

from .core import ToolkitError, parse_args, positive_int, run_cli, seed_int, set_mode
from .outputs import check_output, output_file
from .train.baseline import DEFAULT_OUTPUT, BaselineOptions, train_fashionnet


def build_parser() -> argparse.ArgumentParser:
    d = BaselineOptions()
    p = argparse.ArgumentParser(prog="python -m defense.train_baseline",
                                description="Train the FashionNet baseline on Fashion-MNIST (CPU by default) and "
                                            "write its caffemodel plus a JSON summary beside it.")
    p.add_argument("--out", type=output_file, default=DEFAULT_OUTPUT, help=f"caffemodel to write (default {DEFAULT_OUTPUT})")
    p.add_argument("--epochs", type=float, default=d.epochs, help=f"passes over the 60,000 images (default {d.epochs})")
    p.add_argument("--batch-size", type=positive_int, default=d.batch_size, help=f"mini-batch size (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.base_lr, help=f"base learning rate (default {d.base_lr})")
    p.add_argument("--seed", type=seed_int, default=d.seed, help=f"seed of the init, data order and Caffe (default {d.seed})")
    p.add_argument("--gpu", type=int, default=None, metavar="N", help="train on GPU N (default: CPU)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    if args.out.suffix == ".json":
        raise ToolkitError(f"--out {args.out}: the JSON summary goes beside the caffemodel as .json; "
                           "give the caffemodel another suffix (.caffemodel)")
    check_output(args.out.with_suffix(".json"), "--out", "file", args)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = BaselineOptions(epochs=args.epochs, batch_size=args.batch_size, base_lr=args.lr, seed=args.seed)
    set_mode(args.gpu, args.seed)
    argv = sys.argv[1:] if argv is None else list(argv)
    summary = train_fashionnet(args.out, options, command=" ".join(["python -m defense.train_baseline"] + argv))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
