"""Train the FashionNet baseline on Fashion-MNIST: ``python -m defense.train_baseline``.

The shipped ``weights/FashionNet/fashionnet.caffemodel`` comes from this command with its
defaults (seeded; a few minutes on two CPU cores). The same Python solver loop as FRU
training is used (``defense.train.SolverWrapper``), with every mini-batch clean and every
layer trainable; weights start from a seeded He initialisation written by Python.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional, Sequence

import numpy as np

from .core import (caffe_pb2, load_net, param_shapes, run_cli, save_blobs, set_mode, write_bytes, write_net_param,
                   write_text)
from .data import DataSource, FashionMnist
from .networks import fashionnet
from .presets import get_preset
from .train import SolverWrapper, TrainOptions

log = logging.getLogger(__name__)

WEIGHTS_DIR = Path(__file__).resolve().parent.parent / "weights"
DEFAULT_OUTPUT = WEIGHTS_DIR / "FashionNet" / "fashionnet.caffemodel"


@dataclass(frozen=True)
class BaselineOptions:
    """Solver settings of the shipped FashionNet (step-down schedule)."""

    solver_type: str = "Adam"
    epochs: float = 3.0
    batch_size: int = 64
    base_lr: float = 0.001
    momentum: float = 0.9
    weight_decay: float = 5e-4
    gamma: float = 0.1
    seed: int = 0

    def __post_init__(self):
        if not self.epochs > 0:
            raise ValueError(f"epochs must be positive, got {self.epochs}")
        if int(self.batch_size) < 1:
            raise ValueError(f"batch_size must be a positive integer, got {self.batch_size}")
        if self.solver_type not in ("SGD", "Adam"):
            raise ValueError(f"solver_type must be SGD or Adam, got '{self.solver_type}'")
        if not self.base_lr > 0:
            raise ValueError(f"base_lr must be positive, got {self.base_lr}")

    def max_iter(self, n_images: int) -> int:
        return max(1, int(round(self.epochs * n_images / self.batch_size)))


def solver_param(train_net: "caffe_pb2.NetParameter", options: BaselineOptions,
                 max_iter: int) -> "caffe_pb2.SolverParameter":
    """The learning rate is divided by 10 for the last third of the run."""
    return caffe_pb2.SolverParameter(
        net_param=train_net, type=options.solver_type, base_lr=options.base_lr, momentum=options.momentum,
        weight_decay=options.weight_decay, lr_policy="multistep", gamma=options.gamma,
        stepvalue=[int(max_iter * 2 / 3)], max_iter=max_iter, snapshot=0, display=0,
        random_seed=options.seed)


def accuracy(deploy_weights: Path, source: DataSource, batch: int) -> float:
    """Top-1 of FashionNet with ``deploy_weights`` on ``source`` (clean images)."""
    from attacks.classifier import CaffeClassifier
    from attacks.metrics import topk_accuracy

    preset = get_preset("FashionNet")
    with tempfile.TemporaryDirectory() as tmp:
        deploy = write_net_param(Path(tmp) / "deploy.prototxt", fashionnet.build(preset, batch))
        clf = CaffeClassifier.from_files(deploy, deploy_weights, preset.mean_bgr, batch_size=batch)
    x, y = source.arrays()
    return topk_accuracy(clf.logits(x), y, 1)


def train_fashionnet(output: Path = DEFAULT_OUTPUT, options: BaselineOptions = BaselineOptions(),
                     train_source: Optional[DataSource] = None, test_source: Optional[DataSource] = None,
                     progress: bool = True, command: str = "python -m defense.train_baseline") -> dict:
    """Train FashionNet, write ``output`` atomically, and return a JSON-ready summary.

    :param command: how to reproduce the run, recorded in the JSON beside the weights.
    """
    preset = get_preset("FashionNet")
    train_source = train_source or FashionMnist("train")
    test_source = test_source or FashionMnist("test")
    max_iter = options.max_iter(len(train_source))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train_net = fashionnet.build_train(preset, options.batch_size)
        solver_file = Path(tmp) / "solver.prototxt"
        write_text(solver_file, str(solver_param(train_net, options, max_iter)))
        net = load_net(write_net_param(Path(tmp) / "train.prototxt", train_net))
        x, _ = train_source.take(np.arange(min(len(train_source), 1000)))
        init = save_blobs(Path(tmp) / "init.caffemodel", fashionnet.init_blobs(
            param_shapes(net), np.random.default_rng(options.seed), float(x.std())))
        del net
        wrapper = SolverWrapper(solver_file, Path(tmp) / "snapshots", preset.mean_bgr, weights=init,
                                options=TrainOptions(seed=options.seed, clean_fraction=1.0, progress=progress),
                                prefix="fashionnet")
        result = wrapper.run(train_source, [])
        train_s = time.perf_counter() - start
        top1 = accuracy(result.caffemodel, test_source, preset.eval_batch)
        write_bytes(output, result.caffemodel.read_bytes())
    root = WEIGHTS_DIR.parent
    shown = Path(output).resolve()
    summary = {"network": preset.name,
               "weights": str(shown.relative_to(root)) if shown.is_relative_to(root) else str(output), "test_top1": top1,
               "test_images": len(test_source), "train_images": len(train_source), "iterations": max_iter,
               "train_seconds": round(train_s, 1), "final_loss": float(np.mean(result.losses[-50:])),
               "options": asdict(options),
               "command": command}
    write_text(Path(output).with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    return summary


def build_parser() -> argparse.ArgumentParser:
    d = BaselineOptions()
    p = argparse.ArgumentParser(prog="python -m defense.train_baseline",
                                description="Train the FashionNet baseline on Fashion-MNIST (CPU by default) and "
                                            "write its caffemodel plus a JSON summary beside it.")
    p.add_argument("--out", type=Path, default=DEFAULT_OUTPUT, help=f"caffemodel to write (default {DEFAULT_OUTPUT})")
    p.add_argument("--epochs", type=float, default=d.epochs, help=f"passes over the 60,000 images (default {d.epochs})")
    p.add_argument("--batch-size", type=int, default=d.batch_size, help=f"mini-batch size (default {d.batch_size})")
    p.add_argument("--lr", type=float, default=d.base_lr, help=f"base learning rate (default {d.base_lr})")
    p.add_argument("--seed", type=int, default=d.seed, help=f"seed of the init, data order and Caffe (default {d.seed})")
    p.add_argument("--gpu", type=int, default=None, metavar="N", help="train on GPU N (default: CPU)")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = build_parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    options = BaselineOptions(epochs=args.epochs, batch_size=args.batch_size, base_lr=args.lr, seed=args.seed)
    set_mode(args.gpu, args.seed)
    argv = sys.argv[1:] if argv is None else list(argv)
    summary = train_fashionnet(args.out, options, command=" ".join(["python -m defense.train_baseline"] + argv))
    print(json.dumps(summary, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
