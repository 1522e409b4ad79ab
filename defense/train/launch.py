"""Training entry: CPU, one GPU, or one process per GPU joined by NCCL (BVLC ``python/train.py``).

CPU and single-GPU runs step in the calling process (the entry point has set the mode); two or
more GPUs start one process per GPU, each feeding its shard of every iteration's batches.
"""
from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import List, Sequence

import numpy as np

from ..core import ToolkitError, caffe, check_gpus, number_list, write_bytes
from ..data import DataSource
from .batches import TrainOptions
from .solver import SolverWrapper

log = logging.getLogger(__name__)


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


def snapshot_folder(output: os.PathLike | str) -> Path:
    """Where a run writing ``output`` keeps its snapshots: ``<output without suffix>_snapshots/``."""
    return Path(output).with_name(Path(output).stem + "_snapshots")


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
    snapshot_dir = Path(snapshot_dir) if snapshot_dir else snapshot_folder(output)
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


def parse_gpus(text: str) -> List[int]:
    gpus = number_list(text, "--gpus")
    if any(g < 0 for g in gpus) or len(set(gpus)) != len(gpus):
        raise ValueError(f"--gpus takes distinct device numbers like 0,1, got '{text}'")
    return gpus
