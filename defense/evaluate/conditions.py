"""One pass over a data source under several perturbation conditions, resumable.

Each batch of images is decoded once and fed, clean or perturbed, to every classifier; the
per-image top-1 labels and top-5 hits are kept, so any metric (``attacks.metrics``) can be
computed afterwards. Used by ``defense.evaluate`` and the paper's tables (``defense.tables``).
"""
from __future__ import annotations

import json
import logging
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Mapping, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ..core import atomic_path
from ..data import DataSource

log = logging.getLogger(__name__)

STATE_SAVE_SECONDS = 20.0


@dataclass
class Condition:
    """Images as evaluated once: clean (no perturbation) or with ``perturbations[choice[i]]`` on image i.

    :param name: ``clean``, ``<case key>`` or ``<case key>/<run label>``.
    """

    name: str
    perturbations: Optional[np.ndarray] = None  # (K, C, H, W)
    choice: Optional[np.ndarray] = None          # (n,) file index per evaluated image
    files: Tuple[str, ...] = ()


def draw_choices(n: int, k: int, seed: int) -> np.ndarray:
    """0-based file index per image as the published scripts draw it.

    ``np.random.seed(seed)`` then one ``np.random.randint(1, k + 1)`` per image in image order
    (the vectorised legacy draw gives the same sequence); a single file needs no draw.
    """
    if int(k) < 1:
        raise ValueError(f"the number of perturbation files must be positive, got {k}")
    if k == 1:
        return np.zeros(int(n), dtype=np.int64)
    return np.random.RandomState(int(seed)).randint(1, int(k) + 1, size=int(n)).astype(np.int64) - 1



@dataclass
class Predictions:
    """Per image: top-1 label and whether the true label is in the top 5."""

    top1: np.ndarray
    top5: np.ndarray


def _state_config_text(config: dict) -> str:
    return json.dumps(config, sort_keys=True, default=str)


def _load_state(path: Optional[Path], config_text: str, keys: Sequence[str], n: int, n_batches: int):
    if path is None or not path.is_file():
        return None
    try:
        with np.load(path, allow_pickle=False) as data:
            if str(data["config"]) != config_text:
                log.warning("%s belongs to another configuration; starting over", path)
                return None
            done = data["done"].astype(bool)
            arrays = {k: data[k].copy() for k in keys}
    except (OSError, KeyError, ValueError) as exc:
        log.warning("%s is unreadable (%s); starting over", path, exc)
        return None
    if done.shape != (n_batches,) or any(a.shape[0] != n for a in arrays.values()):
        log.warning("%s does not match this run's size; starting over", path)
        return None
    return done, arrays


def _save_state(path: Optional[Path], config_text: str, done: np.ndarray, arrays: Mapping[str, np.ndarray]) -> None:
    if path is None:
        return
    with atomic_path(path) as tmp:
        with open(tmp, "wb") as fh:
            np.savez(fh, config=np.array(config_text), done=done, **arrays)


def predict_conditions(classifiers: Mapping[str, object], source: DataSource, conditions: Sequence[Condition],
             batch_size: int, clip: bool = False, state: Optional[Path] = None, config: Optional[dict] = None,
             progress: bool = True, desc: str = "evaluating") -> Tuple[np.ndarray, Dict[str, Dict[str, Predictions]]]:
    """Top-1 labels and top-5 hits of every classifier on every condition, batch by batch.

    Each batch of images is decoded once and fed, clean or perturbed, to every classifier.

    :param classifiers: name -> ``CaffeClassifier`` (same input shape).
    :param state: ``.npz`` file of the finished batches; an interrupted run resumes from it.
    :returns: the true labels and ``{classifier: {condition: Predictions}}``.
    """
    if int(batch_size) < 1:
        raise ValueError(f"batch_size must be a positive integer, got {batch_size}")
    n = len(source)
    starts = list(range(0, n, int(batch_size)))
    keys = ["labels"] + [f"{m}|{c.name}|{kind}" for m in classifiers for c in conditions for kind in ("top1", "top5")]
    config_text = _state_config_text(config or {})
    loaded = _load_state(state, config_text, keys, n, len(starts))
    if loaded is not None:
        done, arrays = loaded
        log.info("resuming from %s: %d of %d batches done", state, int(done.sum()), len(starts))
    else:
        done = np.zeros(len(starts), dtype=bool)
        arrays = {k: np.full(n, -1, dtype=np.int32) if not k.endswith("top5") else np.zeros(n, dtype=bool)
                  for k in keys}
    last_save = time.monotonic()
    bar = tqdm(total=n, initial=int(sum(min(int(batch_size), n - s) for s, d in zip(starts, done) if d)),
               desc=desc, unit="img", disable=not progress)
    try:
        for b, start in enumerate(starts):
            if done[b]:
                continue
            pos = np.arange(start, min(n, start + int(batch_size)))
            x, y = source.take(pos)
            arrays["labels"][pos] = y
            for cond in conditions:
                if cond.perturbations is None:
                    xin = x
                else:
                    xin = x + cond.perturbations[cond.choice[pos]]
                    if clip:
                        np.clip(xin, 0.0, 255.0, out=xin)
                for m, clf in classifiers.items():
                    scores = clf.logits(xin, batch_size=len(pos))
                    k = min(5, scores.shape[1])
                    top = np.argsort(-scores, axis=1, kind="stable")[:, :k]
                    arrays[f"{m}|{cond.name}|top1"][pos] = scores.argmax(axis=1)
                    arrays[f"{m}|{cond.name}|top5"][pos] = (top == y[:, None]).any(axis=1)
            done[b] = True
            bar.update(len(pos))
            if time.monotonic() - last_save > STATE_SAVE_SECONDS:
                _save_state(state, config_text, done, arrays)
                last_save = time.monotonic()
    except KeyboardInterrupt:
        _save_state(state, config_text, done, arrays)
        log.info("progress saved to %s; run the same command again to resume", state)
        raise
    finally:
        bar.close()
    _save_state(state, config_text, done, arrays)
    preds = {m: {c.name: Predictions(arrays[f"{m}|{c.name}|top1"], arrays[f"{m}|{c.name}|top5"])
                 for c in conditions} for m in classifiers}
    return arrays["labels"].astype(np.int64), preds
