"""Generative universal attacks: a Caffe generator net trained through the frozen classifier.

GAP (``attacks.gap``) and NAG (``attacks.nag``) share this loop. The generator is a NetSpec net
trained by a pycaffe Adam solver. Its output u (tanh) is scaled to the budget, v = c u with
c = xi / ||u||_p for each perturbation, the factor held constant in the gradient (as GAP's code
does). The gradient of the attack's loss w.r.t. v comes from the ``CaffeClassifier`` (whose
weights never change) and is chained into the generator by hand: the train net ends in
``loss = sum(u * g)`` with ``g = c dL/dv`` fed as an input blob, so Caffe's backward pass gives
dL/dtheta exactly. One iteration: a forward pass for u, the classifier's gradient, then
``solver.step(1)`` (which recomputes the same u, then updates).

Every random draw of iteration t comes from ``np.random.default_rng([seed, t])`` and the initial
weights from numpy, so a snapshot (caffemodel + solverstate: weights, Adam history, iteration)
plus its record holds all a run needs: ``resume`` continues byte-identically. Ctrl-C finishes the
iteration, writes a snapshot (when ``snapshot_dir`` is set) and raises KeyboardInterrupt.
"""
from __future__ import annotations

import abc
import hashlib
import json
import logging
import os
import tempfile
from pathlib import Path
from typing import Dict, List, Optional, Tuple

import numpy as np
from google.protobuf import text_format
from tqdm import tqdm

from defense.core import (L, P, ToolkitError, caffe, caffe_pb2, check_weights_fit, param_shapes, read_binary_proto,
                          read_caffemodel, solver_param, step_solver, write_text)

from .base import UapResult, UniversalAttack
from .interrupt import sigint_flag
from .metrics import fooling_rate
from .projection import scale_to_norm

log = logging.getLogger(__name__)

OUTPUT = "generated"
GRAD = "grad"
INIT_STD = 0.02  # DCGAN-style N(0, 0.02) weights, N(1, 0.02) BatchNorm scales (GAP's and NAG's code)
INIT_STREAM = 7919  # the rng stream of the initial weights, apart from the iterations' streams
WEIGHTED = ("Convolution", "Deconvolution", "InnerProduct")
RESUME_FIX = "resume with the run's options, data and seed, or start over"


def net_blob(n: "caffe.NetSpec", name: str, top) -> object:
    """``n[name] = top``, returning it (NetSpec names the top by the key)."""
    n[name] = top
    return top


class GenerativeAttack(UniversalAttack):
    """Base of the generator attacks.

    :param norm: 'inf' or '2'; ``xi``: the budget every perturbation is scaled to (None: the toolkit's).
    :param max_iter: solver iterations; ``batch_size``: images per iteration.
    :param lr: Adam's learning rate; ``beta1``: its first momentum.
    :param snapshot_dir: where ``<name>_iter_<N>.caffemodel/.solverstate`` and their records go
        (None: no snapshots); ``snapshot_every``: also every N iterations (0: only at the end and on Ctrl-C).
    :param resume: a ``.solverstate`` of this run to continue from.
    """

    common_params: Tuple[str, ...] = ("norm", "xi", "max_iter", "batch_size", "lr", "beta1", "snapshot_dir",
                                      "snapshot_every", "resume", "verbose")
    input_blob: str = "noise"
    min_batch: int = 1

    def _check_common(self) -> None:
        self._check_norm_xi()
        self.max_iter = self._positive_int("max_iter", self.max_iter)
        self.batch_size = self._positive_int("batch_size", self.batch_size)
        if self.batch_size < self.min_batch:
            raise ValueError(f"batch_size must be at least {self.min_batch} for {self.name}, got {self.batch_size}")
        for name in ("lr", "beta1"):
            if not 0 < float(getattr(self, name)) < (1 if name == "beta1" else float("inf")):
                raise ValueError(f"{name} must be {'in (0, 1)' if name == 'beta1' else 'positive'}, "
                                 f"got {getattr(self, name)}")
        if isinstance(self.snapshot_every, bool) or not isinstance(self.snapshot_every, (int, np.integer)) \
                or self.snapshot_every < 0:
            raise ValueError(f"snapshot_every must be 0 or a positive integer, got {self.snapshot_every!r}")
        if self.resume is not None and not Path(self.resume).is_file():
            raise ToolkitError(f"{self.resume}: solverstate not found; pass a '<name>_iter_<N>.solverstate' snapshot")
        c, h, w = self.classifier.input_shape
        if min(h, w) < 8:
            raise ValueError(f"the generators need inputs of at least 8x8 pixels, the network takes {h}x{w}")

    # ------------------------------------------------------------ what a subclass provides
    @abc.abstractmethod
    def _build(self, n: "caffe.NetSpec") -> Tuple[object, int]:
        """Add the generator to ``n`` (its input Input blob named ``input_blob``); return the tanh
        output top and how many perturbations one pass makes."""

    @abc.abstractmethod
    def _generator_input(self, seed: int, rng: np.random.Generator) -> np.ndarray:
        """The generator's input for one iteration (``rng``: that iteration's stream)."""

    @abc.abstractmethod
    def _targets(self, clean_logits: np.ndarray) -> np.ndarray:
        """Per-image labels the loss needs, from the clean logits."""

    @abc.abstractmethod
    def _loss_and_gradient(self, x: np.ndarray, targets: np.ndarray, v: np.ndarray,
                           rng: np.random.Generator) -> Tuple[float, np.ndarray]:
        """The loss of one batch at perturbations ``v`` and its gradient w.r.t. ``v``."""

    @abc.abstractmethod
    def _product(self, seed: int, rng: np.random.Generator) -> np.ndarray:
        """The (C,H,W) perturbation of the trained generator."""

    # ------------------------------------------------------------ the nets
    def train_net(self) -> "caffe_pb2.NetParameter":
        """The generator, then ``loss = sum(u * grad)`` (``grad``: an input blob fed by the loop)."""
        n = caffe.NetSpec()
        out, count = self._build(n)
        grad = net_blob(n, GRAD, L.Input(name=GRAD, shape=dict(dim=[count, *self.classifier.input_shape])))
        weighted = net_blob(n, "weighted", L.Eltwise(out, grad, name="weighted", operation=P.Eltwise.PROD))
        net_blob(n, "loss", L.Reduction(weighted, name="loss", operation=P.Reduction.SUM, loss_weight=1.0))
        net = n.to_proto()
        net.name = f"{self.name}_generator"
        return net

    def _crop(self, n: "caffe.NetSpec", top, size: Tuple[int, int], reference) -> object:
        """Crop ``top`` to the input's (H, W) when the generator makes more (sizes not a power-of-2 multiple)."""
        if tuple(size) == tuple(self.classifier.input_shape[1:]):
            return top
        return net_blob(n, "g_crop", L.Crop(top, reference, name="g_crop", axis=2, offset=0))

    def _solver(self) -> "caffe.Solver":
        prefix = str((Path(self.snapshot_dir) / self.name).resolve()) if self.snapshot_dir is not None else None
        param = solver_param(self.train_net(), solver_type="Adam", base_lr=float(self.lr), max_iter=self.max_iter,
                             momentum=float(self.beta1), momentum2=0.999, lr_policy="fixed", display=0,
                             snapshot_prefix=prefix)
        with tempfile.TemporaryDirectory() as tmp:
            path = Path(tmp) / "solver.prototxt"
            path.write_text(text_format.MessageToString(param))
            return caffe.get_solver(str(path))

    def _init_weights(self, net: "caffe.Net", seed: int) -> None:
        rng = np.random.default_rng([seed, INIT_STREAM])
        for name, layer in zip(net._layer_names, net.layers):
            if name not in net.params:
                continue
            blobs = net.params[name]
            if layer.type in WEIGHTED:
                blobs[0].data[...] = rng.normal(0.0, INIT_STD, blobs[0].data.shape)
            elif layer.type == "Scale":
                blobs[0].data[...] = rng.normal(1.0, INIT_STD, blobs[0].data.shape)
            else:
                continue
            if len(blobs) > 1:
                blobs[1].data[...] = 0.0

    # ------------------------------------------------------------ snapshots
    def _record(self, x: np.ndarray, seed: int) -> Dict[str, object]:
        """What, besides the solverstate, decides the coming iterations (checked on resume)."""
        skip = ("verbose", "snapshot_dir", "snapshot_every", "resume", "max_iter")
        params = {k: (str(v) if isinstance(v, Path) else v) for k, v in self.params.items() if k not in skip}
        images = hashlib.sha256(str(x.shape).encode() + np.ascontiguousarray(x).tobytes()).hexdigest()[:16]
        return {"attack": self.name, "params": json.loads(json.dumps(params, default=str)), "seed": seed,
                "images": images, "input_shape": list(self.classifier.input_shape)}

    def _snapshot(self, solver: "caffe.Solver", record: Dict[str, object], history: List[float]) -> Path:
        Path(self.snapshot_dir).mkdir(parents=True, exist_ok=True)
        solver.snapshot()
        state = Path(f"{Path(self.snapshot_dir).resolve() / self.name}_iter_{solver.iter}.solverstate")
        write_text(record_path(state), json.dumps(dict(record, history=history), indent=1) + "\n")
        log.info("snapshot %s", state)
        return state

    def _restore(self, solver: "caffe.Solver", record: Dict[str, object]) -> List[float]:
        """Check the snapshot ``resume`` against this run, then load it; returns its loss history."""
        path = Path(self.resume)
        state = read_binary_proto(path, caffe_pb2.SolverState(), "solverstate",
                                  "pass a '<name>_iter_<N>.solverstate' snapshot", "use an earlier snapshot")
        rec = record_path(path)
        try:
            saved = json.loads(rec.read_text())
        except (OSError, ValueError, UnicodeDecodeError):
            saved = None
        if not isinstance(saved, dict):
            raise ToolkitError(f"{path}: its record {rec} is missing or unreadable; keep it beside the solverstate "
                               "(without it the run cannot resume exactly: start over)")
        for key, value in record.items():
            if saved.get(key) != value:
                raise ToolkitError(f"{path}: written by a run with {key} {saved.get(key)!r}, this one has {value!r}; "
                                   f"{RESUME_FIX}")
        net = solver.net
        wanted = [tuple(b.data.shape) for blobs in net.params.values() for b in blobs] * 2  # Adam: m and v
        if [tuple(h.shape.dim) for h in state.history] != wanted or not state.learned_net:
            raise ToolkitError(f"{path}: not an Adam solverstate of this generator; {RESUME_FIX}")
        read_caffemodel(state.learned_net)
        check_weights_fit(state.learned_net, param_shapes(net), f"the {self.name} generator", require_all=True)
        solver.restore(str(path))
        history = saved.get("history")
        if not isinstance(history, list) or len(history) != solver.iter:
            raise ToolkitError(f"{rec}: its loss history does not match iteration {solver.iter}; {RESUME_FIX}")
        log.info("resumed %s from %s at iteration %d", self.name, path, solver.iter)
        return [float(h) for h in history]

    # ------------------------------------------------------------ training
    def generate(self, x: Optional[np.ndarray], rng: np.random.Generator) -> UapResult:
        clf = self.classifier
        if x is None:
            raise ValueError(f"{self.name} trains on images: give --data")
        x = self._images(x, clf)
        seed = int(rng.integers(2 ** 32))
        clean_logits = clf.logits(x)
        targets = self._targets(clean_logits)
        solver = self._solver()
        self._net = net = solver.net
        record = self._record(x, seed)
        if self.resume is not None:
            history = self._restore(solver, record)
        else:
            self._init_weights(net, seed)
            history = []
        batch = min(self.batch_size, len(x))
        with sigint_flag() as flag, tqdm(total=self.max_iter, initial=solver.iter, desc=self.name, unit="it",
                                         disable=not self.verbose, leave=False) as bar:
            while solver.iter < self.max_iter:
                step_rng = np.random.default_rng([seed, solver.iter])
                idx = np.sort(step_rng.choice(len(x), size=batch, replace=False))
                net.blobs[self.input_blob].data[...] = self._generator_input(seed, step_rng)
                net.forward()
                v, factors = scale_to_norm(net.blobs[OUTPUT].data, self.xi, self.norm)
                value, grad = self._loss_and_gradient(x[idx], targets[idx], v, step_rng)
                step_solver(solver, {GRAD: grad * factors.reshape((-1,) + (1,) * (grad.ndim - 1))})
                history.append(float(value))
                if not np.isfinite(value):
                    raise ToolkitError(f"{self.name}: the loss is {value} at iteration {solver.iter}; lower lr")
                bar.update(1)
                bar.set_postfix(loss=f"{np.mean(history[-20:]):.4f}")
                stopping = flag["stop"]
                due = self.snapshot_every and solver.iter % self.snapshot_every == 0
                if self.snapshot_dir is not None and (due or stopping or solver.iter == self.max_iter):
                    state = self._snapshot(solver, record, history)
                    if stopping:
                        log.warning("interrupted at iteration %d; resume with --resume %s", solver.iter, state)
                if stopping:
                    raise KeyboardInterrupt
        v = self._product(seed, np.random.default_rng([seed, self.max_iter, 1]))
        fr = fooling_rate(clf.labels(x), clf.labels(x, perturbation=v))
        log.info("%s: loss %.4f after %d iterations, fooling rate %.4f", self.name,
                 history[-1] if history else float("nan"), solver.iter, fr)
        return UapResult(v, fr, True, int(solver.iter), history)

    def _forward(self, generator_input: np.ndarray) -> np.ndarray:
        """The trained generator's perturbations (scaled to the budget) for one input."""
        self._net.blobs[self.input_blob].data[...] = generator_input
        self._net.forward()
        return scale_to_norm(self._net.blobs[OUTPUT].data, self.xi, self.norm)[0]


def record_path(solverstate: os.PathLike | str) -> Path:
    """The record beside a generator snapshot: what the ``.solverstate`` lacks to resume exactly."""
    return Path(solverstate).with_suffix(".attack.json")

