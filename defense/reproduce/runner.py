"""The stage runner: the run's context, one stage run or skipped by its key, stages side by side.

Each stage owns a folder under ``--out`` and records in it a key (a hash of the config fields it
reads and of its upstream stages' keys). A stage whose record matches is skipped, so a re-run
resumes; a changed field reruns that stage and everything downstream; ``--force`` redoes all.

Forward-only work (predictions, xi calibration) runs in the context's ``runtime``: Caffe, or
onnxruntime (``defense.evaluate.runtime``), each model checked against Caffe on a sample of
training images first. Attacks and training always run in Caffe.
"""
from __future__ import annotations

import hashlib
import json
import logging
import multiprocessing
import os
import resource
import shutil
import time
from concurrent.futures import FIRST_COMPLETED, ProcessPoolExecutor, wait
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from attacks.classifier import CaffeClassifier
from attacks.perturbation_io import load_any

from ..core import ToolkitError, atomic_path, set_mode, write_text
from ..data import DataSource, FashionMnist
from ..evaluate.runtime import onnx_classifier
from ..generate.competitors import COMPETITORS as DEFENCE_REGISTRY, get_competitor
from ..presets import NetPreset, get_preset
from .config import NET, ReproConfig, stage_of

log = logging.getLogger(__name__)

RUNTIME_CHECK_IMAGES = 100  # training images on which each onnxruntime model's top-1 must equal Caffe's


# ---------------------------------------------------------------- run context
@dataclass
class Context:
    """What every stage needs: options, folders, data, and lazily built classifiers.

    :param runtime: where forward-only passes run, ``caffe`` or ``onnx`` (already resolved).
    """

    cfg: ReproConfig
    out: Path
    force: bool = False
    progress: bool = True
    gpu: Optional[int] = None
    jobs: int = 1
    train_source: Optional[DataSource] = None
    test_source: Optional[DataSource] = None
    keys: Dict[str, str] = field(default_factory=dict)
    records: Dict[str, dict] = field(default_factory=dict)
    runtime: str = "caffe"
    runtime_checks: Dict[str, dict] = field(default_factory=dict)  # model -> OnnxClassifier.verify's record
    _classifiers: Dict[str, CaffeClassifier] = field(default_factory=dict)
    _forward: Dict[str, CaffeClassifier] = field(default_factory=dict)

    @property
    def preset(self) -> NetPreset:
        return get_preset(NET)

    def folder(self, stage: str) -> Path:
        return self.out / stage

    def train_data(self) -> DataSource:
        if self.train_source is None:
            self.train_source = FashionMnist("train")
        return self.train_source

    def test_data(self) -> DataSource:
        if self.test_source is None:
            self.test_source = FashionMnist("test")
        return self.test_source

    # files shared between stages
    @property
    def baseline_weights(self) -> Path:
        return self.folder("baseline") / "fashionnet.caffemodel"

    @property
    def baseline_deploy(self) -> Path:
        return self.folder("baseline") / "deploy.prototxt"

    @property
    def fru_deploy(self) -> Path:
        return self.folder("generate") / "top" / "deploy_FRU.prototxt"

    def weights(self, model: str) -> Path:
        return {"baseline": self.baseline_weights,
                "fru": self.folder("train_fru") / "fashionnet_FRU.caffemodel",
                "fru_bottom": self.folder("ranking") / "fashionnet_FRU_bottom.caffemodel",
                "fru_secondary": self.folder("secondary") / "fashionnet_FRU_secondary.caffemodel",
                "adv_finetune": self.folder("peers") / "fashionnet_adv_finetune.caffemodel",
                **{name: self.folder(f"train_{name}") / f"fashionnet_{name.upper()}.caffemodel"
                   for name in DEFENCE_REGISTRY}}[model]

    def deploy(self, model: str) -> Path:
        """The deploy prototxt of a trained model: the baseline's, the FRU net's or a competitor's."""
        if model in DEFENCE_REGISTRY:
            return self.folder(f"train_{model}") / get_competitor(model).file_name
        return self.fru_deploy if model.startswith("fru") else self.baseline_deploy

    def detector_path(self) -> Path:
        """PRN's detector, fitted after the PRN (``defense.train.detector``)."""
        return self.folder("train_prn") / "detector.npz"

    def classifier(self, model: str) -> CaffeClassifier:
        """A CaffeClassifier for a trained model (baseline, FRU or competitor deploy)."""
        if model not in self._classifiers:
            deploy = self.deploy(model)
            self._classifiers[model] = CaffeClassifier.from_files(deploy, self.weights(model), self.preset.mean_bgr,
                                                                  batch_size=self.cfg.eval_batch)
        return self._classifiers[model]

    def forward_classifier(self, model: str, blobs: Sequence[str] = ()) -> CaffeClassifier:
        """A classifier for forward passes only, in ``runtime``: with ``onnx``, the Caffe net exported
        to onnxruntime (one thread per worker when stages run side by side), checked against Caffe
        on ``RUNTIME_CHECK_IMAGES`` training images first (``OnnxClassifier.verify``). Its outputs:
        the logits, or ``blobs`` alone (``defense.evaluate.runtime.onnx_classifier``)."""
        if self.runtime == "caffe":
            return self.classifier(model)
        name = "+".join([model, *blobs])  # the record's name: "prn+prn/out" for PRN's rectifier alone
        if name not in self._forward:
            clf = onnx_classifier(self.classifier(model), self.deploy(model), threads=1 if self.jobs > 1 else 0,
                                  blobs=blobs)
            sample = self.train_data().take(np.arange(RUNTIME_CHECK_IMAGES))[0]
            self.runtime_checks[name] = clf.verify(sample)
            self._forward[name] = clf
        return self._forward[name]

    def perturbations(self, set_name: str) -> List[np.ndarray]:
        stage = stage_of(set_name)
        folder = self.folder(stage) / set_name
        files = sorted(folder.glob("*.npy"), key=lambda p: p.stem)
        if not files:
            raise ToolkitError(f"{folder}: no perturbations; run the '{stage}' stage")
        return [load_any(p, "npy") for p in files]


@dataclass(frozen=True)
class Stage:
    name: str
    run: Callable[[Context], dict]
    fields: Tuple[str, ...]
    upstream: Tuple[str, ...] = ()
    forward: bool = False  # runs forward passes in ``Context.runtime`` (its key and record name it)
    seconds: float = 1.0  # wall time of one seed's stage, measured: the scheduler's estimate


def stage_key(ctx: Context, stage: Stage) -> str:
    """A hash of the fields ``stage`` reads, its upstream keys and, for a forward stage run in
    onnxruntime, the runtime (Caffe's keys are those of runs made before the runtime choice)."""
    payload = {"fields": {f: getattr(ctx.cfg, f) for f in stage.fields},
               "upstream": {u: ctx.keys[u] for u in stage.upstream}, "stage": stage.name}
    if stage.forward and ctx.runtime != "caffe":
        payload["runtime"] = ctx.runtime
    return hashlib.sha256(json.dumps(payload, sort_keys=True, default=str).encode()).hexdigest()[:16]


def run_stage(ctx: Context, stage: Stage) -> dict:
    """Run ``stage`` unless its record matches; wipe its folder when its inputs changed."""
    key = stage_key(ctx, stage)
    ctx.keys[stage.name] = key
    folder = ctx.folder(stage.name)
    record_path = folder / "stage.json"
    if not ctx.force and record_path.is_file():
        record = json.loads(record_path.read_text())
        if record.get("key") == key:
            log.info("stage %s: up to date (%s), skipped", stage.name, record_path)
            record["resumed"] = True
            ctx.records[stage.name] = record
            return record
    key_file = folder / ".key"
    stale = folder.exists() and (ctx.force or not key_file.is_file() or key_file.read_text() != key)
    if stale:
        log.info("stage %s: inputs changed%s, redoing it", stage.name, " (--force)" if ctx.force else "")
        shutil.rmtree(folder)
    folder.mkdir(parents=True, exist_ok=True)
    write_text(key_file, key)
    log.info("stage %s: running", stage.name)
    start, started_at, cpu_start = time.perf_counter(), time.time(), cpu_seconds()
    result = stage.run(ctx)
    record = {"key": key, "seconds": round(time.perf_counter() - start, 1),
              "cpu_seconds": round(cpu_seconds() - cpu_start, 1), "result": result,
              "finished": time.strftime("%Y-%m-%d %H:%M:%S"), "started_at": started_at, "ended_at": time.time(),
              "loadavg": list(os.getloadavg())}
    if stage.forward:
        record["runtime"] = {"forward_passes": ctx.runtime, "checks": dict(ctx.runtime_checks)}
    write_text(record_path, json.dumps(record, indent=2, default=_json_default) + "\n")
    record["resumed"] = False
    ctx.records[stage.name] = record
    log.info("stage %s: %.1f s", stage.name, record["seconds"])
    return record


def cpu_seconds() -> float:
    """CPU time (user + system) of this process and of its finished child processes (a stage's
    own workers, reaped when it ends)."""
    own, children = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def _json_default(o):
    if isinstance(o, (np.floating, np.integer)):
        return o.item()
    if isinstance(o, np.ndarray):
        return o.tolist()
    if isinstance(o, Path):
        return str(o)
    raise TypeError(f"not JSON serialisable: {type(o)}")


def save_json(path: Path, data) -> Path:
    return write_text(path, json.dumps(data, indent=2, default=_json_default) + "\n")


def save_npy(path: Path, v: np.ndarray) -> Path:
    """A perturbation as float32 ``.npy``, atomically (np.save into the open temporary file)."""
    with atomic_path(path) as tmp, open(tmp, "wb") as fh:
        np.save(fh, np.asarray(v, np.float32))
    return path


def chain_seconds(stages: Sequence[Stage]) -> Dict[str, float]:
    """Each stage's ``seconds`` plus those of the longest chain of stages that wait for it: how
    long the run lasts after the stage starts, at best."""
    downstream = {s.name: [t for t in stages if s.name in t.upstream] for s in stages}
    chain: Dict[str, float] = {}
    for stage in reversed(stages):  # STAGES lists every stage after its upstream stages
        chain[stage.name] = stage.seconds + max((chain[t.name] for t in downstream[stage.name]), default=0.0)
    return chain


def ready_tasks(stages: Sequence[Stage], replicas: int, done: set, running: set) -> List[Tuple[int, Stage]]:
    """``(replica, stage)`` pairs whose upstream stages (in the same replica) are all done, the
    longest remaining chain first (``chain_seconds``; ties in ``stages`` order), each stage for
    every replica in turn. With one seed, FD's training (the longest stage) then starts as soon as
    it can instead of after the short stages, and the last minutes do not leave a core idle.

    :param done: finished ``(replica, stage name)`` pairs; ``running``: those under way.
    """
    chain = chain_seconds(stages)
    order = sorted(range(len(stages)), key=lambda i: (-chain[stages[i].name], i))
    return [(r, stages[i]) for i in order for r in range(replicas)
            if (r, stages[i].name) not in done | running and all((r, u) in done for u in stages[i].upstream)]


def _stage_worker(cfg: ReproConfig, out: Path, force: bool, gpu: Optional[int], jobs: int, runtime: str,
                  keys: Dict[str, str], stage: Stage, log_level: int) -> dict:
    """One stage in a worker process (fresh interpreter: its own Caffe, data and classifiers)."""
    logging.basicConfig(level=log_level, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    set_mode(gpu, cfg.seed)
    ctx = Context(cfg, out, force=force, progress=False, gpu=gpu, jobs=jobs, keys=dict(keys), runtime=runtime)
    return run_stage(ctx, stage)


def run_parallel(contexts: Sequence[Context], stages: Sequence[Stage], jobs: int) -> None:
    """Run independent stages side by side in ``jobs`` worker processes, over every replica
    (one ``Context`` per seed): the stages of all replicas share one pool.

    On a small CPU, Caffe's convolutions of 28x28 images hardly use a second BLAS thread, so
    two stages on one core each (FRU training beside the bottom-ranked training, the secondary
    defence beside adversarial fine-tuning, or two seeds' stages) take about the time of one.
    Workers run one BLAS thread each (``OPENBLAS_NUM_THREADS=1``), so the numbers do not
    depend on the number of cores (floating-point sums depend on the thread count, and SGD
    amplifies such differences: results are bit-identical for the same ``--jobs`` on the same
    kind of CPU). Progress shows as one bar of stages.
    """
    for ctx in contexts:  # a worker needs the keys of its upstream stages
        for stage in stages:
            ctx.keys[stage.name] = stage_key(ctx, stage)
    saved = {k: os.environ.get(k) for k in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS")}
    os.environ.update({k: "1" for k in saved})
    done: set = set()
    running: Dict[object, Tuple[int, str]] = {}
    total = len(stages) * len(contexts)
    label = (lambda r, name: name) if len(contexts) == 1 else (lambda r, name: f"{contexts[r].cfg.seed}:{name}")
    try:
        with ProcessPoolExecutor(jobs, mp_context=multiprocessing.get_context("spawn")) as pool, \
                tqdm(total=total, desc="stages", unit="stage", disable=not contexts[0].progress) as bar:
            while len(done) < total:
                for r, stage in ready_tasks(stages, len(contexts), done, set(running.values()))[:jobs - len(running)]:
                    ctx = contexts[r]
                    log.info("stage %s (seed %d): starting in a worker", stage.name, ctx.cfg.seed)
                    running[pool.submit(_stage_worker, ctx.cfg, ctx.out, ctx.force, ctx.gpu, jobs, ctx.runtime,
                                        dict(ctx.keys), stage, logging.getLogger().level)] = (r, stage.name)
                bar.set_postfix(running=",".join(sorted(label(*t) for t in running.values())))
                finished, _ = wait(list(running), return_when=FIRST_COMPLETED)
                for future in finished:
                    r, name = running.pop(future)
                    contexts[r].records[name] = future.result()
                    done.add((r, name))
                    bar.update(1)
    finally:
        for k, v in saved.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v
