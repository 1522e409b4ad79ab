"""The declarative list of released caffemodels (``weights/manifest.json``) and its selection rules.

Each entry names one caffemodel of the paper's release (baseline, or FRU model with the
primary or secondary defence), where it comes from (plain URL or Google Drive id), its size
and SHA-256 once known, where it goes, and the deploy prototxt it must fit. Relative paths
in a manifest are relative to its ``root`` (itself relative to the manifest file; the
packaged manifest's root is the repository), except that downloads (``dest``, ``lock``) go
below ``$FRU_DOWNLOAD_DIR`` when it is set. No network-specific branch lives in code.
"""
from __future__ import annotations

import json
import os
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Sequence

from defense.core import ToolkitError, input_file

from .download import DOWNLOAD_DIR_ENV, LOCK_NAME, RemoteFile, download_dir

MANIFEST = Path(__file__).resolve().parent / "manifest.json"
MANIFEST_ENV = "FRU_WEIGHTS_MANIFEST"
KINDS = ("baseline", "fru")
DEFENSES = ("primary", "secondary")
_FIELDS = ("name", "net", "kind", "defense", "url", "gdrive_id", "size", "sha256", "dest", "prototxt")


@dataclass(frozen=True)
class WeightEntry:
    """One released caffemodel (see the module docstring)."""

    name: str
    net: str
    kind: str
    defense: Optional[str]
    remote: RemoteFile
    prototxt: Path

    @property
    def dest(self) -> Path:
        return self.remote.dest

    @property
    def source(self) -> str:
        if self.remote.url:
            return "url"
        return "gdrive" if self.remote.gdrive_id else "none"


_TYPES = {"name": (str,), "net": (str,), "kind": (str,), "dest": (str,), "prototxt": (str,),
          "url": (str, type(None)), "gdrive_id": (str, type(None)), "size": (int, type(None)),
          "sha256": (str, type(None)), "defense": (str, type(None)), "file": (str, type(None)),
          "note": (str, type(None))}
"""The JSON type of each entry field (null where the field may be unknown)."""


def _entry(raw: dict, root: Path, downloads: Path, lock: Path, where: Path) -> WeightEntry:
    if not isinstance(raw, dict):
        raise ToolkitError(f"{where}: every entry must be an object, got {raw!r}")
    missing = [k for k in _FIELDS if k not in raw]
    if missing:
        raise ToolkitError(f"{where}: entry {raw.get('name', '?')!r} lacks field(s) {', '.join(missing)}")
    for key, types in _TYPES.items():
        if key in raw and (not isinstance(raw[key], types) or isinstance(raw[key], bool)):
            kind = " or ".join("null" if t is type(None) else {str: "a string", int: "an integer"}[t] for t in types)
            raise ToolkitError(f"{where}: entry {raw.get('name', '?')!r} key '{key}' must be {kind}, got {raw[key]!r}")
    name = str(raw["name"])
    if raw["kind"] not in KINDS:
        raise ToolkitError(f"{where}: entry {name!r} has kind {raw['kind']!r}; use one of {', '.join(KINDS)}")
    if raw["kind"] == "fru" and raw["defense"] not in DEFENSES:
        raise ToolkitError(f"{where}: FRU entry {name!r} has defense {raw['defense']!r}; "
                           f"use one of {', '.join(DEFENSES)}")
    if raw["kind"] == "baseline" and raw["defense"] is not None:
        raise ToolkitError(f"{where}: baseline entry {name!r} must have defense null")
    dest = downloads / raw["dest"]
    remote = RemoteFile(name=name, dest=dest, file=str(raw.get("file") or dest.name), url=raw["url"] or None,
                        gdrive_id=raw["gdrive_id"] or None,
                        size=None if raw["size"] is None else int(raw["size"]),
                        sha256=raw["sha256"] or None, note=raw.get("note"), lock=lock, member=".caffemodel")
    return WeightEntry(name=name, net=str(raw["net"]), kind=raw["kind"], defense=raw["defense"],
                       remote=remote, prototxt=root / raw["prototxt"])


def load_manifest(path: os.PathLike | str | None = None) -> List[WeightEntry]:
    """Read and validate a manifest (default: ``$FRU_WEIGHTS_MANIFEST`` or the packaged one)."""
    path = Path(path or os.environ.get(MANIFEST_ENV) or MANIFEST)
    path = input_file(path, "weights manifest", "check --manifest")
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ToolkitError(f"{path}: not valid JSON ({exc}); fix the manifest") from None
    if not isinstance(data, dict) or not isinstance(data.get("entries"), list):
        raise ToolkitError(f"{path}: a manifest is an object with an 'entries' list")
    for key in ("root", "lock"):
        if not isinstance(data.get(key, ""), str):
            raise ToolkitError(f"{path}: key '{key}' must be a string, got {data[key]!r}")
    root = (path.parent / data.get("root", ".")).resolve()
    downloads = download_dir() if os.environ.get(DOWNLOAD_DIR_ENV) else root
    lock = downloads / data.get("lock", LOCK_NAME)
    entries = [_entry(raw, root, downloads, lock, path) for raw in data["entries"]]
    names = [e.name for e in entries]
    if len(set(names)) != len(names):
        raise ToolkitError(f"{path}: entry names must be unique")
    return entries


def select(entries: Sequence[WeightEntry], net: str, defense: str = "primary",
           baseline_only: bool = False) -> List[WeightEntry]:
    """The baseline of ``net`` plus (unless ``baseline_only``) its FRU model with ``defense``."""
    if defense not in DEFENSES:
        raise ValueError(f"defense must be one of {', '.join(DEFENSES)}, got '{defense}'")
    nets = sorted({e.net for e in entries})
    of_net = [e for e in entries if e.net.lower() == net.replace("-", "_").lower()]
    if not of_net:
        raise ToolkitError(f"the manifest has no network '{net}'; known: {', '.join(nets)}")
    chosen = [e for e in of_net if e.kind == "baseline"]
    if not baseline_only:
        fru = [e for e in of_net if e.kind == "fru" and e.defense == defense]
        if not fru:
            have = sorted({str(e.defense) for e in of_net if e.kind == "fru"}) or ["none"]
            raise ToolkitError(f"{of_net[0].net} has no FRU model with the {defense} defence; "
                               f"available: {', '.join(have)}")
        chosen += fru
    return chosen
