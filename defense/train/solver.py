"""The Python-driven Caffe solver: solver files checked in Python, the ``SolverWrapper`` loop.

Follows py-faster-rcnn's ``SolverWrapper``: Python makes every mini-batch (``defense.train.batches``),
feeds it to the train net's ``Input`` blobs and steps (``core.step_solver``), and owns the snapshots.
Frozen layers (``lr_mult: 0`` in the train prototxt) are checked bit-identical at the end of
training.
"""
from __future__ import annotations

import hashlib
import json
import logging
import math
import os
import tempfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from google.protobuf import text_format

from attacks.interrupt import sigint_flag

from ..core import (ToolkitError, caffe, caffe_pb2, check_finite_params, check_weights_fit, copy_weights,
                    input_file, param_shapes, read_binary_proto, read_caffemodel, read_net_param, step_solver,
                    subtract_mean, validate_net_param, write_text)
from ..data import DataSource
from ..devices import blas_threads
from .batches import EpochSampler, TrainOptions, batch_indices, caffe_seed, mixed_batch, stack_perturbations

log = logging.getLogger(__name__)


@dataclass
class TrainResult:
    """What a run produced: the last iteration, its snapshot files and the loss curve."""

    iterations: int
    caffemodel: Path
    solverstate: Path
    losses: List[float] = field(default_factory=list)


# ---------------------------------------------------------------- solver files
def read_solver_param(path: os.PathLike | str) -> "caffe_pb2.SolverParameter":
    """Parse a solver prototxt and inline its (validated) train net, so Caffe cannot abort on it.

    A relative ``net:`` path is looked up beside the solver file when it does not exist from
    the working directory. Test nets are dropped: evaluation is done by ``defense.evaluate``.
    """
    path = input_file(path, "solver prototxt", "generate it with 'python -m defense.generate'")
    try:
        param = text_format.Parse(path.read_text(), caffe_pb2.SolverParameter())
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        msg = str(exc).splitlines()[0]
        raise ToolkitError(f"{path}: not a valid Caffe solver prototxt ({msg}); fix or regenerate it") from None
    if param.HasField("net_param") or param.HasField("train_net_param"):
        net = param.net_param if param.HasField("net_param") else param.train_net_param
        net_source: os.PathLike | str = f"{path} (inline net)"
    else:
        name = param.net or param.train_net
        if not name:
            raise ToolkitError(f"{path}: solver names no train net ('net:'); regenerate it")
        net_source = Path(name) if Path(name).is_file() else path.parent / name
        net = read_net_param(net_source)
    validate_net_param(net, net_source)
    _check_solver_fields(param, path)
    out = caffe_pb2.SolverParameter()
    out.CopyFrom(param)
    for name in ("net", "train_net", "train_net_param", "test_net", "test_net_param", "test_iter",
                 "test_interval", "test_state", "snapshot_prefix"):
        out.ClearField(name)
    out.net_param.CopyFrom(net)
    out.test_initialization = False
    return out


SOLVER_TYPES = ("SGD", "Nesterov", "AdaGrad", "RMSProp", "AdaDelta", "Adam")
LR_POLICIES = ("fixed", "step", "exp", "inv", "multistep", "poly", "sigmoid")


def _check_solver_fields(param: "caffe_pb2.SolverParameter", path: Path) -> None:
    """The solver fields on which Caffe would abort (or divide by zero) mid-run."""
    if param.type not in SOLVER_TYPES:
        raise ToolkitError(f"{path}: unknown solver type '{param.type}'; use one of {', '.join(SOLVER_TYPES)}")
    if param.lr_policy not in LR_POLICIES:
        raise ToolkitError(f"{path}: lr_policy '{param.lr_policy}' is not one of {', '.join(LR_POLICIES)}; set it")
    if param.lr_policy in ("step", "sigmoid") and param.stepsize <= 0:
        raise ToolkitError(f"{path}: lr_policy '{param.lr_policy}' needs a positive stepsize")
    for key in ("base_lr", "momentum", "weight_decay", "gamma", "power"):
        value = getattr(param, key)
        if not (math.isfinite(value) and value >= 0):
            raise ToolkitError(f"{path}: {key} must be a finite number >= 0, got {value}")
    if param.iter_size != 1:
        raise ToolkitError(f"{path}: iter_size must be 1 (each iteration gets a fresh batch from Python), "
                           f"got {param.iter_size}; use a larger batch in the train net instead")


def _read_solverstate(path: Path) -> "caffe_pb2.SolverState":
    state = read_binary_proto(path, caffe_pb2.SolverState(), "solverstate",
                              "pass a '<prefix>_iter_<N>.solverstate' snapshot", "use an earlier snapshot")
    if state.learned_net:
        learned = Path(state.learned_net)
        if not learned.is_file():
            raise ToolkitError(f"{path}: its weights {learned} are missing; keep the .caffemodel beside the .solverstate")
        read_caffemodel(learned)
    return state


def check_solverstate(path: os.PathLike | str) -> Path:
    """Validate a ``.solverstate`` (and the caffemodel it points to) before Caffe reads it."""
    _read_solverstate(Path(path))
    return Path(path)


HISTORY_SETS = {"Adam": 2, "AdaDelta": 2}
"""Solver types keeping two history blobs per parameter blob (the others keep one)."""


def _check_history_fits(state: "caffe_pb2.SolverState", path: Path, net: "caffe.Net", solver_type: str) -> None:
    """Caffe aborts on a solverstate of another net or solver type: refuse it in one line first."""
    blobs = [(f"{name}[{j}]", tuple(b.data.shape)) for name, params in net.params.items()
             for j, b in enumerate(params)] * HISTORY_SETS.get(solver_type, 1)
    held = [tuple(h.shape.dim) for h in state.history]
    if held != [shape for _, shape in blobs]:
        if len(held) != len(blobs):
            where = f"{len(held)} history blobs, this {solver_type} solver needs {len(blobs)}"
        else:
            (name, shape), have = next((b, h) for b, h in zip(blobs, held) if b[1] != h)
            where = f"its history of {name} has shape {have}, the net's {shape}"
        raise ToolkitError(f"{path}: written for another net or solver type ({where}); "
                           "resume with the solver and train net that wrote it")


def record_path(solverstate: os.PathLike | str) -> Path:
    """The training record beside a snapshot: what the ``.solverstate`` lacks to resume exactly."""
    return Path(solverstate).with_suffix(".train.json")


def _check_record(path: Path, record: Dict[str, object]) -> None:
    """Refuse a snapshot whose run fed other data, perturbations or random draws than this one."""
    rec = record_path(path)
    if not rec.is_file():
        raise ToolkitError(f"{path}: its training record {rec} is missing; keep it beside the .solverstate "
                           "(a snapshot without one cannot resume exactly: start over)")
    try:
        saved = json.loads(input_file(rec, "training record").read_text())
    except (ValueError, UnicodeDecodeError):
        saved = None
    if not isinstance(saved, dict):
        raise ToolkitError(f"{rec}: not a valid training record (truncated or corrupt); use an earlier snapshot")
    if "blas_threads" in saved and saved["blas_threads"] != record.get("blas_threads"):
        raise ToolkitError(f"{path}: written with {saved['blas_threads']} BLAS thread(s), this run has "
                           f"{record.get('blas_threads')}, and Caffe's sums depend on it; set "
                           f"OPENBLAS_NUM_THREADS={saved['blas_threads']} to resume byte-identically, or start over")
    for key, value in record.items():
        if key != "blas_threads" and saved.get(key) != value:
            raise ToolkitError(f"{path}: written by a run with {key} {saved.get(key)!r}, this one has {value!r}; "
                               "resume with that run's options and data, or start over")


def frozen_layers(net: "caffe_pb2.NetParameter") -> List[str]:
    """Layers whose parameters the solver must never change.

    ``lr_mult: 0`` on every blob, or a BatchNorm that uses its stored statistics (a BatchNorm
    in training mode rewrites its statistics whatever its ``lr_mult``).
    """
    frozen = []
    for layer in net.layer:
        if layer.type == "BatchNorm":
            if layer.batch_norm_param.use_global_stats:
                frozen.append(layer.name)
        elif layer.param and all(p.lr_mult == 0 for p in layer.param):
            frozen.append(layer.name)
    return frozen


def _digests(net: "caffe.Net", names: Sequence[str]) -> Dict[str, str]:
    return {name: hashlib.sha256(b"".join(b.data.tobytes() for b in net.params[name])).hexdigest()
            for name in names if name in net.params}


# ---------------------------------------------------------------- the solver wrapper
class SolverWrapper:
    """A Caffe solver fed from Python, owning its snapshots (py-faster-rcnn's pattern).

    :param solver: solver prototxt (its train net must read Input blobs ``data`` and ``label``).
    :param snapshot_dir: where ``<prefix>_iter_<N>.caffemodel/.solverstate`` go.
    :param weights: initial weights (e.g. the generator's ``init.caffemodel``), copied by name.
    :param resume: a ``.solverstate`` to continue from (iteration, momentum and weights).
    :param mean: per-channel mean (pixel units) subtracted after the perturbation is added.
    """

    def __init__(self, solver: os.PathLike | str, snapshot_dir: os.PathLike | str, mean: Sequence[float],
                 weights: os.PathLike | str | None = None, resume: os.PathLike | str | None = None,
                 options: TrainOptions = TrainOptions(), prefix: Optional[str] = None):
        self.options, self.mean = options, tuple(float(m) for m in mean)
        param = read_solver_param(solver)
        self.max_iter = int(options.max_iter or param.max_iter)
        if self.max_iter < 1:
            raise ToolkitError(f"{solver}: max_iter is not set; give it in the solver or with --max-iter")
        self.snapshot_every = int(param.snapshot if options.snapshot_every is None else options.snapshot_every)
        self.snapshot_dir = Path(snapshot_dir)  # made at the first snapshot: a refused run leaves no folder
        self.prefix = str((self.snapshot_dir / (prefix or Path(solver).stem)).resolve())
        param.snapshot_prefix = self.prefix
        param.snapshot = 0  # the Python loop snapshots, not Caffe
        param.display = 0
        param.max_iter = self.max_iter
        param.snapshot_format = caffe_pb2.SolverParameter.BINARYPROTO
        state = _read_solverstate(Path(resume)) if resume is not None else None
        with tempfile.TemporaryDirectory() as tmp:
            if weights is not None:
                read_caffemodel(weights)
            solver_file = Path(tmp) / "solver.prototxt"
            solver_file.write_text(text_format.MessageToString(param))
            self.solver = caffe.get_solver(str(solver_file))
        net = self.solver.net
        for blob in (options.data_blob, options.label_blob, options.loss_blob):
            if blob not in net.blobs:
                raise ToolkitError(f"{solver}: train net has no blob '{blob}'; it needs Inputs "
                                   f"'{options.data_blob}', '{options.label_blob}' and a loss '{options.loss_blob}'")
        self.num_classes = self._loss_classes(net)
        if weights is not None:
            copy_weights(net, weights, solver)
        self.resume = Path(resume) if resume is not None else None
        if state is not None:
            _check_history_fits(state, self.resume, net, param.type)
            if state.learned_net:  # Caffe aborts on weights of another net: the one fit check first
                check_weights_fit(state.learned_net, param_shapes(net), solver, require_all=True,
                                  subject=f"the weights of {self.resume}",
                                  fix="resume with the solver and train net that wrote it")
            del state  # its history can be as large as the net's weights
            self.solver.restore(str(resume))
            check_finite_params(net, resume)
            log.info("resumed from %s at iteration %d", resume, self.solver.iter)
        self.frozen = frozen_layers(param.net_param)
        self._frozen_digests = _digests(net, self.frozen)
        free = [n for n in net.params if n not in self.frozen]
        log.info("%d frozen layers; %d layers that change (%d parameters, BatchNorm statistics included)",
                 len(self._frozen_digests), len(free), sum(b.data.size for n in free for b in net.params[n]))

    @property
    def iter(self) -> int:
        return int(self.solver.iter)

    @property
    def batch_size(self) -> int:
        return int(self.solver.net.blobs[self.options.data_blob].data.shape[0])

    def _loss_classes(self, net: "caffe.Net") -> int:
        """Classes of the scores the loss reads (Caffe's CPU loss does not check label range)."""
        for name in net._layer_names:
            if self.options.loss_blob in net.top_names[name]:
                scores = net.bottom_names[name][0]
                return int(np.prod(net.blobs[scores].data.shape[1:]))
        raise ToolkitError(f"the train net has no layer that writes '{self.options.loss_blob}'")

    @property
    def needs_clean(self) -> bool:
        """The train net reads the unperturbed batch too (Input ``clean``: HGD's LGD loss)."""
        return self.options.clean_blob in self.solver.net.blobs

    def step(self, x: np.ndarray, y: np.ndarray, clean: Optional[np.ndarray] = None) -> float:
        """One solver iteration on pixel-unit images ``x`` and labels ``y`` (and, for a net with an
        Input ``clean``, the same images unperturbed); returns the loss."""
        y = np.asarray(y)
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            # an out-of-range label makes Caffe's SoftmaxWithLoss read past its scores
            raise ToolkitError(f"labels must lie in [0, {self.num_classes}) for this net, got "
                               f"{int(y.min())}..{int(y.max())}; the data source does not match the network")
        net, opt = self.solver.net, self.options
        inputs = {opt.data_blob: subtract_mean(x, self.mean),
                  opt.label_blob: y.reshape(net.blobs[opt.label_blob].data.shape)}
        if self.needs_clean:
            if clean is None:
                raise ValueError(f"this train net reads the unperturbed batch ('{opt.clean_blob}'); pass clean")
            inputs[opt.clean_blob] = subtract_mean(clean, self.mean)
        step_solver(self.solver, inputs)
        return float(net.blobs[opt.loss_blob].data)

    def snapshot(self, record: Dict[str, object]) -> Tuple[Path, Path]:
        """Write ``<prefix>_iter_<N>.caffemodel``, ``.solverstate`` and the training ``record``."""
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        self.solver.snapshot()
        stem = f"{self.prefix}_iter_{self.iter}"
        write_text(record_path(stem + ".solverstate"), json.dumps(record, indent=2) + "\n")
        log.info("snapshot %s.caffemodel", stem)
        return Path(stem + ".caffemodel"), Path(stem + ".solverstate")

    def check_frozen(self) -> None:
        """Raise if any frozen layer's blobs changed (a train prototxt without lr_mult 0, say)."""
        now = _digests(self.solver.net, self.frozen)
        changed = [name for name, digest in self._frozen_digests.items() if now[name] != digest]
        if changed:
            raise ToolkitError(f"frozen layers changed during training: {', '.join(changed)}; "
                               "their train prototxt needs lr_mult 0 (BatchNorm: use_global_stats)")

    def run(self, source: DataSource, perturbations: Sequence[np.ndarray], rank: int = 0,
            world: int = 1) -> TrainResult:
        """Step until ``max_iter``; snapshot every ``snapshot_every`` and on Ctrl-C."""
        from tqdm import tqdm

        perts = stack_perturbations(perturbations, source.image_shape)
        if self.options.clean_fraction < 1.0 and not len(perts):
            raise ValueError("training with perturbed images needs at least one perturbation")
        sampler = EpochSampler(len(source), self.options.seed)
        batch = self.batch_size
        # with the .solverstate, all that decides the coming batches and Caffe's random draws
        record = {"seed": self.options.seed, "clean_fraction": self.options.clean_fraction,
                  "clip": self.options.clip, "workers": world, "images": len(source),
                  "perturbations": hashlib.sha256(perts.tobytes()).hexdigest()[:16], "blas_threads": blas_threads()}
        if self.resume is not None:
            _check_record(self.resume, record)
        losses: List[float] = []
        files: Optional[Tuple[Path, Path]] = None
        last_good: Optional[Path] = self.resume  # the newest snapshot, written before any divergence
        bar = tqdm(total=self.max_iter, initial=self.iter, desc="train", unit="it",
                   disable=not self.options.progress or rank != 0)
        with sigint_flag() as flag, bar:
            while self.iter < self.max_iter:
                x, y, _ = mixed_batch(source, perts, sampler, batch, self.iter, self.options, rank, world)
                caffe.set_random_seed(caffe_seed(self.options.seed, self.iter, rank))
                if self.needs_clean:
                    clean = source.take(batch_indices(sampler, batch, self.iter, rank, world))[0]
                    losses.append(self.step(x, y, clean))
                else:
                    losses.append(self.step(x, y))
                if not np.isfinite(losses[-1]):
                    kept = f"the last good snapshot is {last_good}" if last_good else "no snapshot was written"
                    raise ToolkitError(f"training diverged (loss {losses[-1]}) at iteration {self.iter}; {kept}; "
                                       "lower the learning rate")
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
                files = None
                if rank == 0 and self.snapshot_every and self.iter % self.snapshot_every == 0:
                    files = self.snapshot(record)
                    last_good = files[1]
                if flag["stop"]:
                    if rank == 0:
                        files = files or self.snapshot(record)
                        log.warning("interrupted at iteration %d; resume with --resume %s", self.iter, files[1])
                    raise KeyboardInterrupt
        if rank == 0 and files is None:
            files = self.snapshot(record)
        self.check_frozen()
        caffemodel, state = files if files else (Path(), Path())
        return TrainResult(self.iter, caffemodel, state, losses)
