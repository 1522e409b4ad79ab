"""train: FRU training (and the small FashionNet baseline) with a Python-driven Caffe solver.

- ``batches``: ``TrainOptions`` and the mixed clean/perturbed mini-batches;
- ``solver``: solver files checked in Python and ``SolverWrapper``, the step loop owning snapshots;
- ``launch``: ``train()`` on the CPU, one GPU or several GPUs with NCCL, and ``parse_gpus``;
- ``baseline``: training the FashionNet baseline (``python -m defense.train_baseline``);
- ``__main__``: ``python -m defense.train``.
"""
from .batches import EpochSampler, TrainOptions, batch_indices, caffe_seed, mixed_batch, stack_perturbations  # noqa: F401
from .launch import parse_gpus, train  # noqa: F401
from .solver import (SolverWrapper, TrainResult, check_solverstate, frozen_layers,  # noqa: F401
                     read_solver_param)
