"""Train FRUs (or a small baseline) with a Python-driven Caffe solver.

Follows BVLC ``python/train.py`` (one process per GPU, ``caffe.NCCL``) and py-faster-rcnn's
``SolverWrapper``: Python feeds every mini-batch into the train net's ``Input`` blobs and
calls ``solver.step(1)``, and owns the snapshots. Each mini-batch mixes clean and perturbed
images (Borkar et al., CVPR 2020, "every mini-batch contains both"): by default half of it
gets one perturbation each, drawn at random from the given set, added in pixel space before
the mean is subtracted and, as published, not clipped. The batch of iteration ``i`` depends
only on ``(seed, i)``, so a run resumed from a ``.solverstate`` sees the same data as an
uninterrupted one. Frozen layers (``lr_mult: 0`` in the train prototxt) are checked
bit-identical at the end of training.
"""
from __future__ import annotations

import contextlib
import hashlib
import logging
import os
import signal
import tempfile
import threading
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np
from google.protobuf import text_format

from .core import (ToolkitError, caffe, caffe_pb2, check_gpus, check_weights_fit, read_binary_proto, read_caffemodel,
                   read_net_param, set_mode, validate_net_param, write_bytes)
from .data import DataSource

log = logging.getLogger(__name__)


# ---------------------------------------------------------------- options
@dataclass(frozen=True)
class TrainOptions:
    """How a run feeds and snapshots the solver.

    :param max_iter: last iteration (default: the solver file's ``max_iter``).
    :param snapshot_every: snapshot period in iterations (default: the solver file's ``snapshot``;
        0 = only at the end and on Ctrl-C).
    :param seed: seeds the data order and the perturbation draw (Caffe's own RNG is seeded by the
        entry point).
    :param clean_fraction: share of each mini-batch left clean; the rest is perturbed.
    :param clip: clip perturbed images to [0, 255] (the published training did not).
    """

    max_iter: Optional[int] = None
    snapshot_every: Optional[int] = None
    seed: int = 0
    clean_fraction: float = 0.5
    clip: bool = False
    data_blob: str = "data"
    label_blob: str = "label"
    loss_blob: str = "loss"
    progress: bool = True

    def __post_init__(self):
        if self.max_iter is not None and int(self.max_iter) < 1:
            raise ValueError(f"max_iter must be a positive integer, got {self.max_iter}")
        if self.snapshot_every is not None and int(self.snapshot_every) < 0:
            raise ValueError(f"snapshot_every must be 0 or a positive integer, got {self.snapshot_every}")
        if not 0.0 <= float(self.clean_fraction) <= 1.0:
            raise ValueError(f"clean_fraction must be in [0, 1], got {self.clean_fraction}")


@dataclass
class TrainResult:
    """What a run produced: the last iteration, its snapshot files and the loss curve."""

    iterations: int
    caffemodel: Path
    solverstate: Path
    losses: List[float] = field(default_factory=list)


# ---------------------------------------------------------------- data feeding
def subtract_mean(x: np.ndarray, mean: Sequence[float]) -> np.ndarray:
    """Pixel-unit images (N, C, H, W) -> network input (per-channel mean removed)."""
    mean = np.asarray(mean, dtype=np.float32)
    if mean.shape != (x.shape[1],):
        raise ValueError(f"mean has {mean.size} values but the images have {x.shape[1]} channels")
    return x - mean[None, :, None, None]


def stack_perturbations(perturbations: Sequence[np.ndarray], image_shape: Tuple[int, ...]) -> np.ndarray:
    """Check every perturbation is a finite (C, H, W) array of the images' shape; stack them."""
    out = []
    for k, p in enumerate(perturbations):
        p = np.asarray(p, dtype=np.float32)
        if p.shape != tuple(image_shape):
            raise ValueError(f"perturbation {k} has shape {p.shape}, the images {tuple(image_shape)}")
        if not np.all(np.isfinite(p)):
            raise ValueError(f"perturbation {k} holds NaN or infinite values")
        out.append(p)
    return np.stack(out) if out else np.zeros((0,) + tuple(image_shape), np.float32)


class EpochSampler:
    """Image indices for any stretch of a run: a fresh seeded permutation per epoch."""

    def __init__(self, n: int, seed: int):
        if n < 1:
            raise ValueError("the data source holds no images")
        self.n, self.seed = int(n), int(seed)
        self._epoch, self._perm = -1, np.empty(0, np.int64)

    def _permutation(self, epoch: int) -> np.ndarray:
        if epoch != self._epoch:
            self._epoch, self._perm = epoch, np.random.default_rng([self.seed, epoch]).permutation(self.n)
        return self._perm

    def indices(self, start: int, count: int) -> np.ndarray:
        pos = np.arange(start, start + count, dtype=np.int64)
        out = np.empty(count, np.int64)
        for epoch in np.unique(pos // self.n):
            sel = pos // self.n == epoch
            out[sel] = self._permutation(int(epoch))[pos[sel] % self.n]
        return out


def mixed_batch(source: DataSource, perturbations: np.ndarray, sampler: EpochSampler, batch_size: int,
                iteration: int, options: TrainOptions, rank: int = 0, world: int = 1
                ) -> Tuple[np.ndarray, np.ndarray, np.ndarray]:
    """The pixel-unit mini-batch of ``iteration``: clean images first, then perturbed ones.

    :returns: images, labels, and for each image the index of its perturbation (-1 = clean).
    """
    idx = sampler.indices((iteration * world + rank) * batch_size, batch_size)
    x, y = source.take(idx)
    x = np.array(x, dtype=np.float32, copy=True)
    n_clean = int(round(batch_size * options.clean_fraction)) if len(perturbations) else batch_size
    rng = np.random.default_rng([options.seed, iteration, rank, 1])
    which = np.full(batch_size, -1, np.int64)
    which[n_clean:] = rng.integers(len(perturbations), size=batch_size - n_clean) if n_clean < batch_size else []
    if n_clean < batch_size:
        x[n_clean:] += perturbations[which[n_clean:]]
        if options.clip:
            np.clip(x[n_clean:], 0.0, 255.0, out=x[n_clean:])
    return x, y, which


# ---------------------------------------------------------------- solver files
def read_solver_param(path: os.PathLike | str) -> "caffe_pb2.SolverParameter":
    """Parse a solver prototxt and inline its (validated) train net, so Caffe cannot abort on it.

    A relative ``net:`` path is looked up beside the solver file when it does not exist from
    the working directory. Test nets are dropped: evaluation is done by ``defense.evaluate``.
    """
    path = Path(path)
    if not path.is_file():
        raise ToolkitError(f"{path}: solver prototxt not found; generate it with 'python -m defense.generate'")
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
    if param.iter_size != 1:
        raise ToolkitError(f"{path}: iter_size must be 1 (each iteration gets a fresh batch from Python), "
                           f"got {param.iter_size}; use a larger batch in the train net instead")


def check_solverstate(path: os.PathLike | str) -> Path:
    """Validate a ``.solverstate`` (and the caffemodel it points to) before Caffe reads it."""
    path = Path(path)
    state = read_binary_proto(path, caffe_pb2.SolverState(), "solverstate",
                              "pass a '<prefix>_iter_<N>.solverstate' snapshot", "use an earlier snapshot")
    if state.learned_net:
        learned = Path(state.learned_net)
        if not learned.is_file():
            raise ToolkitError(f"{path}: its weights {learned} are missing; keep the .caffemodel beside the .solverstate")
        read_caffemodel(learned)
    return path


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


@contextlib.contextmanager
def _sigint_flag() -> Iterator[Dict[str, bool]]:
    """Turn Ctrl-C into a flag the loop checks between iterations (so it can snapshot first)."""
    flag = {"stop": False}
    if threading.current_thread() is not threading.main_thread():
        yield flag
        return

    def handler(signum, frame):
        if flag["stop"]:  # second Ctrl-C: give up at once
            raise KeyboardInterrupt
        flag["stop"] = True
        log.warning("Ctrl-C: finishing this iteration, then writing a snapshot")

    old = signal.signal(signal.SIGINT, handler)
    try:
        yield flag
    finally:
        signal.signal(signal.SIGINT, old)


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
        self.snapshot_dir = Path(snapshot_dir)
        self.snapshot_dir.mkdir(parents=True, exist_ok=True)
        self.prefix = str((self.snapshot_dir / (prefix or Path(solver).stem)).resolve())
        param.snapshot_prefix = self.prefix
        param.snapshot = 0  # the Python loop snapshots, not Caffe
        param.display = 0
        param.max_iter = self.max_iter
        param.snapshot_format = caffe_pb2.SolverParameter.BINARYPROTO
        if resume is not None:
            check_solverstate(resume)
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
            check_weights_fit(solver, weights, net)
            net.copy_from(str(weights))
        if resume is not None:
            self.solver.restore(str(resume))
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

    def step(self, x: np.ndarray, y: np.ndarray) -> float:
        """One solver iteration on pixel-unit images ``x`` and labels ``y``; returns the loss."""
        y = np.asarray(y)
        if y.size and (y.min() < 0 or y.max() >= self.num_classes):
            # an out-of-range label makes Caffe's SoftmaxWithLoss read past its scores
            raise ToolkitError(f"labels must lie in [0, {self.num_classes}) for this net, got "
                               f"{int(y.min())}..{int(y.max())}; the data source does not match the network")
        net = self.solver.net
        net.blobs[self.options.data_blob].data[...] = subtract_mean(x, self.mean)
        net.blobs[self.options.label_blob].data[...] = y.reshape(net.blobs[self.options.label_blob].data.shape)
        self.solver.step(1)
        return float(net.blobs[self.options.loss_blob].data)

    def snapshot(self) -> Tuple[Path, Path]:
        """Write ``<prefix>_iter_<N>.caffemodel`` and ``.solverstate`` for the current iteration."""
        self.solver.snapshot()
        stem = f"{self.prefix}_iter_{self.iter}"
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
        losses: List[float] = []
        files: Optional[Tuple[Path, Path]] = None
        bar = tqdm(total=self.max_iter, initial=self.iter, desc="train", unit="it",
                   disable=not self.options.progress or rank != 0)
        with _sigint_flag() as flag, bar:
            while self.iter < self.max_iter:
                x, y, _ = mixed_batch(source, perts, sampler, batch, self.iter, self.options, rank, world)
                losses.append(self.step(x, y))
                if not np.isfinite(losses[-1]):
                    raise ToolkitError(f"training diverged (loss {losses[-1]}) at iteration {self.iter}; "
                                       "lower the learning rate")
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(losses[-20:]):.4f}")
                files = None
                if rank == 0 and self.snapshot_every and self.iter % self.snapshot_every == 0:
                    files = self.snapshot()
                if flag["stop"]:
                    if rank == 0:
                        files = files or self.snapshot()
                        log.warning("interrupted at iteration %d; resume with --resume %s", self.iter, files[1])
                    raise KeyboardInterrupt
        if rank == 0 and files is None:
            files = self.snapshot()
        self.check_frozen()
        caffemodel, state = files if files else (Path(), Path())
        return TrainResult(self.iter, caffemodel, state, losses)


# ---------------------------------------------------------------- entry: CPU, one GPU or NCCL
def _solve_on_gpu(rank: int, gpus: Sequence[int], uid, solver, snapshot_dir, mean, weights, resume,
                  options: TrainOptions, source: DataSource, perturbations, prefix) -> None:
    """One NCCL worker (BVLC python/train.py ``solve``): rank 0 snapshots, every rank feeds its shard."""
    caffe.set_mode_gpu()
    caffe.set_device(int(gpus[rank]))
    caffe.set_solver_count(len(gpus))
    caffe.set_solver_rank(rank)
    caffe.set_multiprocess(True)
    wrapper = SolverWrapper(solver, snapshot_dir, mean, weights, resume, options, prefix)
    nccl = caffe.NCCL(wrapper.solver, uid)
    nccl.bcast()
    wrapper.solver.add_callback(nccl)
    if wrapper.solver.param.layer_wise_reduce:
        wrapper.solver.net.after_backward(nccl)
    wrapper.run(source, perturbations, rank=rank, world=len(gpus))


def train(solver: os.PathLike | str, source: DataSource, perturbations: Sequence[np.ndarray],
          output: os.PathLike | str, mean: Sequence[float], weights: os.PathLike | str | None = None,
          resume: os.PathLike | str | None = None, gpus: Sequence[int] = (),
          options: TrainOptions = TrainOptions(), snapshot_dir: os.PathLike | str | None = None) -> Path:
    """Train and write the final weights to ``output`` (atomically); return its path.

    CPU and single-GPU runs step in this process (the entry point has set the mode); two or more
    GPUs start one process per GPU joined by NCCL, as BVLC ``python/train.py`` does.

    :param snapshot_dir: default ``<output without suffix>_snapshots/``.
    """
    output = Path(output)
    snapshot_dir = Path(snapshot_dir) if snapshot_dir else output.with_name(output.stem + "_snapshots")
    prefix = output.stem
    if len(gpus) > 1:
        import multiprocessing as mp

        check_gpus(gpus, "--gpus")
        if not getattr(caffe, "has_nccl", lambda: False)():
            raise ToolkitError("multi-GPU training needs Caffe built with NCCL (make setup-cuda); use --gpu N")
        uid = caffe.NCCL.new_uid()
        ctx = mp.get_context("spawn")  # a forked child cannot use CUDA once this process has touched it
        procs = [ctx.Process(target=_solve_on_gpu, args=(rank, list(gpus), uid, solver, snapshot_dir, mean,
                                                         weights, resume, options, source, perturbations, prefix),
                             daemon=True) for rank in range(len(gpus))]
        for p in procs:
            p.start()
        for p in procs:
            p.join()
        if any(p.exitcode for p in procs):
            raise ToolkitError(f"a GPU worker failed (exit codes {[p.exitcode for p in procs]}); see its log above")
        snapshots = sorted(snapshot_dir.glob(f"{prefix}_iter_*.caffemodel"), key=lambda p: p.stat().st_mtime)
        if not snapshots:
            raise ToolkitError(f"{snapshot_dir}: the GPU workers wrote no snapshot")
        last = snapshots[-1]
    else:
        wrapper = SolverWrapper(solver, snapshot_dir, mean, weights, resume, options, prefix)
        last = wrapper.run(source, perturbations).caffemodel
    write_bytes(output, last.read_bytes())
    log.info("wrote %s", output)
    return output


# ---------------------------------------------------------------- CLI
def parse_gpus(text: str) -> List[int]:
    try:
        gpus = [int(g) for g in text.split(",") if g.strip()]
    except ValueError:
        raise ValueError(f"--gpus takes comma-separated device numbers like 0,1, got '{text}'") from None
    if not gpus or any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus takes distinct device numbers like 0,1, got '{text}'")
    return gpus


def build_parser():
    import argparse

    from .data import DATA_SOURCES

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
    p.add_argument("--out", type=Path, required=True, help="final caffemodel (snapshots go to <out stem>_snapshots/)")
    p.add_argument("--max-iter", type=int, help="last iteration (default: the solver's max_iter)")
    p.add_argument("--snapshot-every", type=int, help="snapshot period (default: the solver's snapshot)")
    p.add_argument("--clean-fraction", type=float, default=0.5, help="clean share of each mini-batch (0.5)")
    p.add_argument("--clip", action="store_true", help="clip perturbed images to [0,255] (published: no)")
    p.add_argument("--resume", type=Path, metavar="SOLVERSTATE", help="continue from a snapshot's .solverstate")
    p.add_argument("--seed", type=int, default=0, help="seed of data order, perturbation draw and Caffe (0)")
    dev = p.add_mutually_exclusive_group()
    dev.add_argument("--gpu", type=int, metavar="N", help="train on GPU N (default: CPU)")
    dev.add_argument("--gpus", metavar="0,1", help="train on several GPUs with NCCL (one process per GPU)")
    p.add_argument("--quiet", action="store_true", help="no progress bar")
    return p


def main(argv: Optional[Sequence[str]] = None) -> int:
    import logging as _logging

    from .data import open_source
    from .evaluate import load_perturbation_files
    from .presets import get_preset

    args = build_parser().parse_args(argv)
    _logging.basicConfig(level=_logging.INFO, format="%(levelname)s %(name)s: %(message)s")
    preset = get_preset(args.net)
    solver = args.solver or (args.dir / "solver.prototxt" if args.dir else None)
    if solver is None:
        raise ToolkitError("give --dir (generator output) or --solver")
    weights = args.weights or (args.dir / "init.caffemodel" if args.dir and args.resume is None else None)
    gpus = parse_gpus(args.gpus) if args.gpus else []
    if len(gpus) <= 1:
        set_mode(gpus[0] if gpus else args.gpu, args.seed)
    else:
        check_gpus(gpus, "--gpus")  # before any data is read
    perturbations = load_perturbation_files(args.perturbations)
    if args.synthetic:
        from attacks.synthetic import synthesize
        mixed = synthesize(np.stack(perturbations), args.synthetic, np.random.default_rng(args.seed))
        perturbations += list(mixed.perturbations)
    options = TrainOptions(max_iter=args.max_iter, snapshot_every=args.snapshot_every, seed=args.seed,
                           clean_fraction=args.clean_fraction, clip=args.clip, progress=not args.quiet)
    out = train(solver, open_source(args.data, args.split, preset), perturbations, args.out, preset.mean_bgr,
                weights=weights, resume=args.resume, gpus=gpus if len(gpus) > 1 else (), options=options)
    print(out)
    return 0


if __name__ == "__main__":
    import sys

    from .core import run_cli

    sys.exit(run_cli(main))
