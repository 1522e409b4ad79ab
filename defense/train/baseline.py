"""Train the FashionNet baseline on Fashion-MNIST (the library behind ``python -m defense.train_baseline``).

The shipped ``weights/FashionNet/fashionnet.caffemodel`` comes from this command with its
defaults (seeded; a few minutes on two CPU cores). The same Python solver loop as FRU
training is used (``defense.train.SolverWrapper``), with every mini-batch clean and every
layer trainable; weights start from a seeded He initialisation written by Python.
"""
from __future__ import annotations

import json
import logging
import tempfile
import time
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Optional

import numpy as np

from attacks.classifier import CaffeClassifier
from attacks.metrics import topk_accuracy

from ..core import load_net, param_shapes, save_blobs, solver_param, write_bytes, write_net_param, write_text
from ..data import DataSource, FashionMnist
from ..networks import fashionnet
from ..presets import REPO_ROOT, get_preset
from .batches import TrainOptions
from .solver import SolverWrapper

log = logging.getLogger(__name__)

NET = "FashionNet"
DEFAULT_OUTPUT = get_preset(NET).weights()


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


def accuracy(deploy_weights: Path, source: DataSource, batch: int) -> float:
    """Top-1 of FashionNet with ``deploy_weights`` on ``source`` (clean images)."""
    preset = get_preset(NET)
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
    preset = get_preset(NET)
    train_source = train_source or FashionMnist("train")
    test_source = test_source or FashionMnist("test")
    max_iter = options.max_iter(len(train_source))
    start = time.perf_counter()
    with tempfile.TemporaryDirectory() as tmp:
        train_net = fashionnet.build_train(preset, options.batch_size)
        solver_file = Path(tmp) / "solver.prototxt"
        write_text(solver_file, str(solver_param(
            train_net, solver_type=options.solver_type, base_lr=options.base_lr, momentum=options.momentum,
            weight_decay=options.weight_decay, lr_policy="multistep", gamma=options.gamma,
            stepvalue=[int(max_iter * 2 / 3)], max_iter=max_iter, snapshot=0, display=0, random_seed=options.seed)))
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
    root = REPO_ROOT
    shown = Path(output).resolve()
    summary = {"network": preset.name,
               "weights": str(shown.relative_to(root)) if shown.is_relative_to(root) else str(output), "test_top1": top1,
               "test_images": len(test_source), "train_images": len(train_source), "iterations": max_iter,
               "train_seconds": round(train_s, 1), "final_loss": float(np.mean(result.losses[-50:])),
               "options": asdict(options),
               "command": command}
    write_text(Path(output).with_suffix(".json"), json.dumps(summary, indent=2) + "\n")
    return summary
