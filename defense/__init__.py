"""Selective Feature Regeneration (Borkar, Heide, Karam, CVPR 2020) on Caffe.

The pipeline, and where each step lives:

- ground floor: ``core`` (pycaffe I/O, the toolkit's error, the one net loader, the one
  weights-fit check, the one checked way to an input file, the one solver step, entry-point
  plumbing), ``devices`` (the CUDA devices and BLAS threads this process computes with),
  ``outputs`` (the output options every command declares, checked before it starts) and
  ``presets`` (every per-network constant, path and weights location);
- ``networks/`` one NetSpec builder per network; ``data/`` the data sources; ``paper`` the
  published numbers, table protocols and demo defaults;
- rank -> generate: ``generate/`` (ranking, FRU layout, weight surgery, fast export);
- train: ``train/`` (mini-batches, the solver loop, CPU/GPU/NCCL, the FashionNet baseline);
- attack: the ``attacks`` package (universal attacks, perturbation formats, metrics);
- evaluate: ``evaluate/`` (the protocol, the metric comparison, peers, reports, the demo);
- drivers: ``tables`` (the paper's Tables 2-5), ``reproduce/`` (the Fashion-MNIST
  reproduction), ``bench`` (deploy-layout timing), and the thin commands ``export``,
  ``imagenet`` and ``train_baseline``.

The dependency rule: ``attacks`` and ``weights`` import only the ground floor of this
package (``defense.core``, ``defense.devices``, ``defense.outputs``, ``defense.presets``); inside it, imports go down the list above
only, and no import cycle exists (``tests/test_architecture.py`` checks all three).

Importing the package keeps Caffe's glog INFO lines quiet unless GLOG_minloglevel is already set.
"""
from .core import ToolkitError  # noqa: F401  (also sets GLOG_minloglevel before caffe loads)
