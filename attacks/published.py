"""The paper's published perturbation files: a manifest and a verified fetch.

The universal perturbations used in the paper's tables (UAP l_inf/l_2 for the five
networks, the stronger CaffeNet UAPs, FFF, NAG, S.Fool, GAP, G-UAP, sPGD) are raw files of
https://github.com/tsborkar/Selective-feature-regeneration (folder ``Attack_samples/``),
listed with fixed-commit URLs in ``published_manifest.json``. Downloads go through the same
verified, resumable code as the caffemodels (``weights.download``); the format check only
makes sure the file opens as HDF5 with a dataset ``v`` or as a plain numeric ``.npy``
(how each format becomes a perturbation is ``attacks/perturbation_io.py``'s job).
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence, Union

from defense.core import ToolkitError, input_file
from weights.download import LOCK_NAME, RemoteFile, download_dir, fetch_file

from .array_files import read_h5_dataset, read_npy

PUBLISHED_MANIFEST = Path(__file__).resolve().parent / "published_manifest.json"


def published_dir() -> Path:
    """Where the published files are cached, in the authors' layout: ``$FRU_DOWNLOAD_DIR/Attack_samples``."""
    return download_dir() / "Attack_samples"


@dataclass(frozen=True)
class PublishedFile:
    """One file of ``Attack_samples/``; ``name`` is its path below that folder."""

    name: str
    attack: str
    net: Optional[str]
    url: str
    size: Optional[int]
    sha256: Optional[str]
    note: Optional[str] = None


def load_published_manifest(path: os.PathLike | str = PUBLISHED_MANIFEST) -> List[PublishedFile]:
    """Read the manifest of published perturbation files."""
    path = input_file(path, "perturbation manifest")
    try:
        data = json.loads(path.read_text())
        return [PublishedFile(name=e["name"], attack=e["attack"], net=e.get("net"), url=e["url"],
                              size=e.get("size"), sha256=e.get("sha256"), note=e.get("note"))
                for e in data["entries"]]
    except (json.JSONDecodeError, KeyError, TypeError, UnicodeDecodeError) as exc:
        raise ToolkitError(f"{path}: not a valid perturbation manifest ({exc!r})") from None


def check_perturbation_file(path: Path, label: str) -> None:
    """The file reads as HDF5 with dataset ``v`` (``.h5``) or as a numeric ``.npy`` array, through
    the toolkit's array readers (``attacks.array_files``: header size cap, no pickles, no groups)."""
    try:
        if label.endswith(".h5"):
            read_h5_dataset(path, "v")
        elif label.endswith(".npy"):
            read_npy(path)
    except ToolkitError as exc:
        raise ToolkitError(f"{label}: the download is not the expected file ({exc})") from None


def fetch_published(names: Union[str, Sequence[str]], dest_dir: os.PathLike | str,
                    base_url: Optional[str] = None, force: bool = False,
                    manifest: os.PathLike | str = PUBLISHED_MANIFEST, offline: Optional[bool] = None) -> List[Path]:
    """Download published perturbation files into ``dest_dir`` (keeping their sub-folders).

    :param names: ``"all"``, or names (paths below ``Attack_samples/``, e.g.
        ``UAP/CaffeNet/caffenet_adv_iter_1.h5``), or a folder prefix such as ``UAP/CaffeNet``.
    :param base_url: mirror serving ``<base_url>/<name>`` (default ``$FRU_WEIGHTS_MIRROR``).
    :param offline: never download (default ``$FRU_OFFLINE``): a missing file is a ToolkitError.
    :returns: the local paths, in manifest order. Files without a SHA-256 in the manifest are
        recorded at their first download in ``<dest_dir>/downloads.lock.json``.
    """
    entries = load_published_manifest(manifest)
    if isinstance(names, str):
        names = [names]
    if list(names) == ["all"]:
        chosen = entries
    else:
        chosen = []
        for wanted in names:
            key = wanted.strip("/")
            hits = [e for e in entries if e.name == key or e.name.startswith(key + "/")]
            if not hits:
                raise ToolkitError(f"no published perturbation file '{wanted}'; names look like "
                                   f"'{entries[0].name}' (see {manifest})")
            chosen += [e for e in hits if e not in chosen]
    dest_dir = Path(dest_dir)
    paths = []
    for e in chosen:
        remote = RemoteFile(name=e.name, dest=dest_dir / e.name, file=e.name, url=e.url,
                            size=e.size, sha256=e.sha256, note=e.note, lock=dest_dir / LOCK_NAME)
        paths.append(fetch_file(remote, base_url=base_url, force=force, offline=offline,
                                verify=lambda p, label=e.name: check_perturbation_file(p, label)))
    return paths
