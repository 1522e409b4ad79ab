"""ILSVRC2012 as an index of (path, label) pairs, and the data source that reads it.

Images are never copied: ``prepare`` writes a JSON-lines index (first line ``{"meta": ...}``,
then one ``{"path": ..., "label": ...}`` per image, paths relative to ``meta.root``) that
evaluation and training read through ``ImageNetIndex``. The command line is
``python -m defense.imagenet`` (``defense/imagenet.py``).

Labels are Caffe's class indices: the 1000 synsets (WordNet ids) in sorted order, which
is the order of Caffe's ``synsets.txt`` and of the published ``imagenet_labels.json``.

- Validation: a flat folder of ``ILSVRC2012_val_*.JPEG`` and either Caffe's ``val.txt``
  (``<file> <label>`` lines) or the devkit's ``ILSVRC2012_validation_ground_truth.txt``
  (one 1-based ILSVRC2012_ID per line, line i for ``ILSVRC2012_val_<i:08d>.JPEG``), which
  needs the devkit's ``meta.mat`` (or an ``<ILSVRC2012_ID> <wnid>`` text file) to map ids to
  synsets. ``--per-class N`` keeps the first N file names of each class in sorted order.
  The published scripts take the first 50 names of ``os.listdir`` per class folder; with 50
  validation images per class that is all of them, so sorting (for determinism) changes
  nothing for the published protocol.
- Training subset: ``<train>/<wnid>/<file>.JPEG``; ``--per-class K --seed S`` draws K files
  per class without replacement, from a generator seeded with ``(S, label)``, so a class's
  draw does not depend on which other classes are present.
"""
from __future__ import annotations

import json
import logging
import os
import re
from collections import defaultdict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np
from tqdm import tqdm

from ..core import ToolkitError, input_file, write_text
from ..presets import NetPreset
from .base import DataSource
from .preprocess import PUBLISHED_RESAMPLE, RESAMPLE, load_image, preprocess

log = logging.getLogger(__name__)

WNID = re.compile(r"^n\d{8}$")
IMAGE_SUFFIXES = (".jpeg", ".jpg", ".png")
Item = Tuple[str, int]


# ---------------------------------------------------------------- synset mappings
@dataclass(frozen=True)
class Synsets:
    """WordNet id -> Caffe label, and (devkit only) ILSVRC2012_ID -> WordNet id."""

    labels: Dict[str, int]
    ilsvrc_ids: Optional[Dict[int, str]] = None


def _sorted_labels(wnids: Sequence[str]) -> Dict[str, int]:
    return {w: i for i, w in enumerate(sorted(wnids))}


def _check_wnids(wnids: Sequence[str], path: Path) -> None:
    bad = [w for w in wnids if not WNID.match(w)]
    if bad:
        raise ToolkitError(f"{path}: '{bad[0]}' is not a WordNet id like n01440764; check the synset file")
    if len(set(wnids)) != len(wnids):
        raise ToolkitError(f"{path}: a WordNet id appears twice; check the synset file")


def _read_text(path: os.PathLike | str, what: str, fix: str = "check the path") -> str:
    """A text input (synsets, labels)'s content (UTF-8): a file that does not decode is refused naming it."""
    path = input_file(path, what, fix)
    try:
        return path.read_text(encoding="utf-8")
    except UnicodeDecodeError as exc:
        raise ToolkitError(f"{path}: {what} is not UTF-8 text (byte {exc.start}); give the text file") from None


def load_synsets(path: os.PathLike | str) -> Synsets:
    """Read a synset mapping in one of these forms (chosen by content):

    - the devkit's ``meta.mat`` (ids 1..1000 are the classes; labels = sorted WordNet ids);
    - JSON ``{"<label>": ["<wnid>", "<name>"], ...}`` (like the published imagenet_labels.json);
    - text ``<ILSVRC2012_ID> <wnid>`` per line (labels = sorted WordNet ids);
    - text ``<wnid> [words]`` per line in label order (Caffe's synsets.txt / synset_words.txt).
    """
    path = input_file(path, "synset file", "check --synsets")
    if path.suffix == ".mat":
        return _synsets_from_mat(path)
    text = _read_text(path, "synset file (text, JSON or .mat)")
    if path.suffix == ".json":
        try:
            data = json.loads(text)
            pairs = sorted((int(k), v[0] if isinstance(v, list) else v) for k, v in data.items())
        except (json.JSONDecodeError, ValueError, TypeError, IndexError, AttributeError):
            raise ToolkitError(f"{path}: expected JSON like {{\"0\": [\"n01440764\", \"tench\"]}}") from None
        _check_wnids([w for _, w in pairs], path)
        if [k for k, _ in pairs] != list(range(len(pairs))):
            raise ToolkitError(f"{path}: labels must be 0..{len(pairs) - 1} without gaps")
        return Synsets({w: k for k, w in pairs})
    rows = [line.split() for line in text.splitlines() if line.strip()]
    if rows and all(len(r) >= 2 and r[0].isdigit() for r in rows):
        ids = {int(r[0]): r[1] for r in rows}
        _check_wnids(list(ids.values()), path)
        return Synsets(_sorted_labels(list(ids.values())), ids)
    wnids = [r[0] for r in rows]
    _check_wnids(wnids, path)
    return Synsets({w: i for i, w in enumerate(wnids)})


def _synsets_from_mat(path: Path) -> Synsets:
    from scipy.io import loadmat
    try:
        synsets = loadmat(str(path), squeeze_me=True)["synsets"]
        ids = {int(s["ILSVRC2012_ID"]): str(s["WNID"]) for s in synsets if int(s["num_children"]) == 0}
    except (KeyError, ValueError, TypeError, OSError) as exc:
        raise ToolkitError(f"{path}: not the devkit's meta.mat ({type(exc).__name__}: {exc}); "
                           "use ILSVRC2012_devkit_t12/data/meta.mat") from None
    _check_wnids(list(ids.values()), path)
    return Synsets(_sorted_labels(list(ids.values())), ids)


# ---------------------------------------------------------------- validation index
def read_val_labels(path: os.PathLike | str, synsets: Optional[Synsets] = None) -> List[Item]:
    """``(file name, label)`` pairs from Caffe's val.txt or the devkit ground-truth file."""
    path = input_file(path, "label file", "check --labels")
    rows = [(n, line.split()) for n, line in enumerate(_read_text(path, "label file").splitlines(), 1) if line.strip()]
    if not rows:
        raise ToolkitError(f"{path}: label file is empty")
    if len(rows[0][1]) == 2:  # Caffe val.txt
        items = []
        for n, row in rows:
            if len(row) != 2 or not row[1].isdigit():
                raise ToolkitError(f"{path}:{n}: expected '<file> <label>' like Caffe's val.txt, got '{' '.join(row)}'")
            items.append((row[0], int(row[1])))
        return items
    if len(rows[0][1]) == 1:  # devkit ground truth
        if synsets is None or synsets.ilsvrc_ids is None:
            raise ToolkitError(f"{path}: devkit ground truth (ILSVRC2012_IDs) needs --synsets "
                               "ILSVRC2012_devkit_t12/data/meta.mat to map ids to classes")
        items = []
        for i, (n, row) in enumerate(rows, 1):
            if len(row) != 1 or not row[0].isdigit() or int(row[0]) not in synsets.ilsvrc_ids:
                raise ToolkitError(f"{path}:{n}: expected one ILSVRC2012_ID (1..1000), got '{' '.join(row)}'")
            if n != i:
                raise ToolkitError(f"{path}:{n}: blank line inside the ground truth; line i is image i")
            items.append((f"ILSVRC2012_val_{i:08d}.JPEG", synsets.labels[synsets.ilsvrc_ids[int(row[0])]]))
        return items
    raise ToolkitError(f"{path}:{rows[0][0]}: neither '<file> <label>' (val.txt) nor one ILSVRC2012_ID per line")


def first_per_class(items: Sequence[Item], per_class: Optional[int]) -> List[Item]:
    """Items grouped by label (ascending), names sorted, the first ``per_class`` of each."""
    if per_class is not None and int(per_class) < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class}")
    groups: Dict[int, List[str]] = defaultdict(list)
    for name, label in items:
        groups[label].append(name)
    out, short = [], 0
    for label in sorted(groups):
        names = sorted(groups[label])
        if per_class is not None:
            short += len(names) < per_class
            names = names[:per_class]
        out += [(n, label) for n in names]
    if short:
        log.warning("%d classes have fewer than %s images; all of theirs are kept", short, per_class)
    return out


def build_val_index(images: os.PathLike | str, labels: os.PathLike | str, synsets: Optional[Synsets] = None,
                    per_class: Optional[int] = None, allow_missing: bool = False) -> List[Item]:
    images = Path(images)
    if not images.is_dir():
        raise ToolkitError(f"{images}: validation image folder not found; check --images")
    items = read_val_labels(labels, synsets)
    present = set(os.listdir(images))
    missing = [name for name, _ in items if name not in present]
    if missing:
        if not allow_missing:
            raise ToolkitError(f"{images}: {len(missing)} of the {len(items)} images in {labels} are missing "
                               f"(first: {missing[0]}); fix --images or pass --allow-missing")
        log.warning("%d of %d listed images are missing from %s; skipped", len(missing), len(items), images)
        gone = set(missing)
        items = [it for it in items if it[0] not in gone]
    return first_per_class(items, per_class)


# ---------------------------------------------------------------- training subset
def build_train_index(images: os.PathLike | str, synsets: Synsets, per_class: Optional[int] = None,
                      seed: int = 0) -> List[Item]:
    images = Path(images)
    if not images.is_dir():
        raise ToolkitError(f"{images}: training image folder not found; check --images")
    if per_class is not None and int(per_class) < 1:
        raise ValueError(f"per_class must be a positive integer, got {per_class}")
    folders = sorted(p.name for p in images.iterdir() if p.is_dir())
    if not folders:
        raise ToolkitError(f"{images}: no class folders (<wnid>/) found; point --images at ILSVRC2012's train folder")
    unknown = [f for f in folders if f not in synsets.labels]
    if unknown:
        raise ToolkitError(f"{images}: folder '{unknown[0]}' is not a class of the synset file; check --synsets")
    out: List[Item] = []
    for wnid in sorted(folders, key=synsets.labels.__getitem__):
        label = synsets.labels[wnid]
        files = sorted(f for f in os.listdir(images / wnid) if f.lower().endswith(IMAGE_SUFFIXES))
        if per_class is not None and len(files) > per_class:
            rng = np.random.default_rng([int(seed), label])
            chosen = np.sort(rng.choice(len(files), size=int(per_class), replace=False))
            files = [files[i] for i in chosen]
        elif per_class is not None and len(files) < per_class:
            log.warning("%s has only %d images (< %d); all are kept", wnid, len(files), per_class)
        out += [(f"{wnid}/{f}", label) for f in files]
    return out


# ---------------------------------------------------------------- index files
def write_index(path: os.PathLike | str, items: Sequence[Item], root: os.PathLike | str, meta: dict) -> Path:
    """Atomically write the JSON-lines index (meta line first)."""
    head = dict(meta, root=str(Path(root).resolve()), count=len(items),
                classes=len({label for _, label in items}))
    lines = [json.dumps({"meta": head})] + [json.dumps({"path": p, "label": int(lab)}) for p, lab in items]
    return write_text(path, "\n".join(lines) + "\n")


def read_index(path: os.PathLike | str) -> Tuple[dict, List[Item]]:
    path = input_file(path, "ImageNet index", "make it with 'python -m defense.imagenet prepare'")
    rebuild = "rebuild it with 'python -m defense.imagenet prepare'"
    try:
        lines = path.read_text().splitlines()
        meta = json.loads(lines[0])["meta"]
        items = [(r["path"], int(r["label"])) for r in map(json.loads, lines[1:]) if r]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError, ValueError, UnicodeDecodeError):
        raise ToolkitError(f"{path}: not an index written by 'python -m defense.imagenet prepare'; {rebuild}") from None
    if not isinstance(meta, dict) or not isinstance(meta.get("root"), str):
        raise ToolkitError(f"{path}: the meta line needs key 'root' (the image folder, a string); {rebuild}")
    if not all(isinstance(p, str) for p, _ in items):
        raise ToolkitError(f"{path}: every 'path' must be a string; {rebuild}")
    return meta, items


class ImageNetIndex(DataSource):
    """Images of an index file, preprocessed as published for ``preset`` (pixel units, BGR).

    :param root: image folder, overriding the one recorded in the index (moved data sets).
    :param resample: resize filter; ``nearest`` reproduces the published scripts.
    :param workers: threads decoding images in parallel (Pillow releases the GIL).
    """

    def __init__(self, index: os.PathLike | str, preset: NetPreset, root: os.PathLike | str | None = None,
                 resample: str = PUBLISHED_RESAMPLE, workers: int = 4):
        if resample not in RESAMPLE:
            raise ValueError(f"resample must be one of {', '.join(RESAMPLE)}, got '{resample}'")
        if int(workers) < 1:
            raise ValueError(f"workers must be a positive integer, got {workers}")
        self.meta, items = read_index(index)
        if not items:
            raise ToolkitError(f"{index}: the index lists no images")
        self.root = Path(root or self.meta["root"])
        self.paths = [self.root / p for p, _ in items]
        self.labels = np.array([lab for _, lab in items], dtype=np.int64)
        bad = self.labels[(self.labels < 0) | (self.labels >= preset.num_classes)]
        if bad.size:
            raise ToolkitError(f"{index}: label {bad[0]} is out of range for {preset.name}'s "
                               f"{preset.num_classes} classes (0 to {preset.num_classes - 1})")
        self.preset, self.resample, self.workers = preset, resample, int(workers)
        self.name = f"imagenet-{self.meta.get('split', 'index')}"

    def __len__(self) -> int:
        return len(self.paths)

    @property
    def image_shape(self):
        return (self.preset.channels, self.preset.input_size, self.preset.input_size)

    def _one(self, i: int) -> np.ndarray:
        return preprocess(self.paths[i], self.preset, resample=self.resample)

    def take(self, indices):
        idx = [int(i) for i in np.asarray(indices, dtype=np.int64).ravel()]
        if self.workers > 1 and len(idx) > 1:
            with ThreadPoolExecutor(self.workers) as pool:
                images = list(pool.map(self._one, idx))
        else:
            images = [self._one(i) for i in idx]
        x = np.stack(images) if images else np.empty((0,) + self.image_shape, np.float32)
        return x, self.labels[idx]


def verify_images(root: Path, items: Sequence[Item]) -> None:
    """Decode every image once (slow: use before a long run to find bad files early)."""
    for rel, _ in tqdm(items, desc="checking images", unit="img"):
        load_image(root / rel)
