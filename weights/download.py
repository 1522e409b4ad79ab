"""Verified, resumable downloads of published files (caffemodels, perturbation files).

One code path for every released file: bytes go into ``<dest>.part`` beside the
destination, are checked (size, SHA-256, then a format check the caller supplies) and only
then renamed onto ``<dest>``. So the toolkit never loads a truncated or wrong file:

- a network failure keeps ``<dest>.part`` so that the next run resumes it (HTTP ``Range``
  request, or gdown's own resume for Google Drive);
- a verification failure deletes ``<dest>.part`` and raises a one-line ``ToolkitError``.

A mirror (``base_url``, or the ``FRU_WEIGHTS_MIRROR`` environment variable) serves the same
files by their manifest file name, e.g. ``<base_url>/caffenet_FRU.caffemodel``.
"""
from __future__ import annotations

import hashlib
import http.client
import logging
import os
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional

from tqdm import tqdm

from defense.core import ToolkitError

log = logging.getLogger(__name__)

MIRROR_ENV = "FRU_WEIGHTS_MIRROR"
CHUNK = 1 << 20
TIMEOUT_S = 60


@dataclass(frozen=True)
class RemoteFile:
    """One published file and where it goes.

    :param name: manifest name, used in messages.
    :param dest: absolute destination path.
    :param file: the file's name on a mirror (``<base_url>/<file>``).
    :param url: plain HTTP(S) address, or None.
    :param gdrive_id: Google Drive file id, or None.
    :param size: expected size in bytes, or None when not yet recorded.
    :param sha256: expected SHA-256 (hex), or None when not yet recorded.
    :param note: where to get the file by hand when no source is known.
    """

    name: str
    dest: Path
    file: str
    url: Optional[str] = None
    gdrive_id: Optional[str] = None
    size: Optional[int] = None
    sha256: Optional[str] = None
    note: Optional[str] = None

    @property
    def part(self) -> Path:
        return self.dest.with_name(self.dest.name + ".part")


class NetworkError(ToolkitError):
    """The transfer broke off; the ``.part`` file is kept for a resume."""


Verifier = Callable[[Path], None]
"""Checks a complete download (raises ToolkitError when the file is not the expected one)."""


def mirror_url(base_url: Optional[str]) -> Optional[str]:
    """The mirror to use: the explicit ``base_url``, else ``$FRU_WEIGHTS_MIRROR``, else None."""
    base = base_url if base_url else os.environ.get(MIRROR_ENV) or None
    return base.rstrip("/") if base else None


def sha256_of(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as fh:
        for chunk in iter(lambda: fh.read(CHUNK), b""):
            digest.update(chunk)
    return digest.hexdigest()


def check_size_and_hash(remote: RemoteFile, path: Path, what: str = "the download") -> None:
    """Compare ``path`` with the manifest's size and SHA-256 (each only when recorded)."""
    size = path.stat().st_size
    if remote.size is not None and size != remote.size:
        raise ToolkitError(f"{remote.name}: {what} has {size} bytes but the manifest says {remote.size} "
                           "(truncated or wrong file)")
    if remote.sha256 is not None:
        got = sha256_of(path)
        if got != remote.sha256.lower():
            raise ToolkitError(f"{remote.name}: {what} has SHA-256 {got[:16]}... but the manifest says "
                               f"{remote.sha256[:16]}... (wrong or corrupt file)")


def _http_fetch(url: str, part: Path, label: str) -> None:
    """Download ``url`` into ``part``, appending to what is already there (Range resume)."""
    have = part.stat().st_size if part.exists() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "fru-toolkit"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=TIMEOUT_S)
    except urllib.error.HTTPError as exc:
        if exc.code == 416 and have:  # nothing left to send: the .part file is complete
            return
        if exc.code == 404:
            raise ToolkitError(f"{label}: {url} answered 404 (not found); check the manifest entry "
                               "or the mirror") from None
        raise NetworkError(f"{label}: {url} answered HTTP {exc.code}; run the command again later") from None
    except (urllib.error.URLError, OSError) as exc:
        reason = getattr(exc, "reason", exc)
        raise NetworkError(f"{label}: cannot reach {url} ({reason}); check the network and run again") from None
    with response:
        if have and response.status != 206:  # server ignored the Range header: start over
            log.info("%s: server does not resume; downloading from the start", label)
            have = 0
        length = response.headers.get("Content-Length")
        expected = int(length) if length is not None else None
        received = 0
        mode = "ab" if have else "wb"
        total = have + expected if expected is not None else None
        try:
            with open(part, mode) as out, tqdm(total=total, initial=have, unit="B", unit_scale=True,
                                               desc=label, leave=False, disable=None) as bar:
                while True:
                    chunk = response.read(CHUNK)
                    if not chunk:
                        break
                    out.write(chunk)
                    received += len(chunk)
                    bar.update(len(chunk))
        except (OSError, http.client.HTTPException) as exc:
            raise NetworkError(f"{label}: transfer broke off after {have + received} bytes ({exc}); "
                               f"run the command again to resume from {part}") from None
    if expected is not None and received < expected:
        raise NetworkError(f"{label}: transfer broke off after {have + received} of {have + expected} bytes; "
                           f"run the command again to resume from {part}")


def _gdrive_fetch(gdrive_id: str, part: Path, label: str, dest: Path) -> None:
    """Download a Google Drive file into ``part`` with gdown (which resumes its own partials)."""
    import gdown
    from gdown.exceptions import FileURLRetrievalError

    try:
        out = gdown.download(id=gdrive_id, output=str(part), resume=True, quiet=False)
    except FileURLRetrievalError as exc:
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else "access refused"
        raise ToolkitError(f"{label}: Google Drive refused file id {gdrive_id} ({first}); download "
                           f"https://drive.google.com/uc?id={gdrive_id} by hand to {dest} "
                           "or use --base-url with a mirror") from None
    except Exception as exc:  # requests' connection errors and the like: keep gdown's partial
        raise NetworkError(f"{label}: Google Drive download broke off ({type(exc).__name__}); "
                           "run the command again to resume") from None
    if out is None or not part.is_file():
        raise NetworkError(f"{label}: gdown could not resume (several partial files beside {part}?); "
                           f"delete {part.parent}/{part.name}*.part and run again")


def fetch_file(remote: RemoteFile, base_url: Optional[str] = None, force: bool = False,
               verify: Optional[Verifier] = None) -> Path:
    """Download ``remote`` to ``remote.dest`` unless a verified copy is already there.

    :param base_url: a mirror serving ``<base_url>/<remote.file>``; overrides the manifest's
        sources (default ``$FRU_WEIGHTS_MIRROR``).
    :param force: download again even when the destination exists.
    :param verify: format check run on the complete ``.part`` file before the rename.
    """
    dest, part = remote.dest, remote.part
    if dest.exists() and not force:
        try:
            check_size_and_hash(remote, dest, what=str(dest))
        except ToolkitError as exc:
            raise ToolkitError(f"{exc}; run again with --force to replace it") from None
        log.info("%s: already at %s", remote.name, dest)
        return dest
    mirror = mirror_url(base_url)
    if mirror is None and not remote.url and not remote.gdrive_id:
        note = f" {remote.note}" if remote.note else ""
        raise ToolkitError(f"{remote.name}: no download address is known.{note} Then place it at {dest}, "
                           "or use --base-url with a mirror")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if force and part.exists():
        part.unlink()
    if mirror is not None:
        _http_fetch(f"{mirror}/{urllib.parse.quote(remote.file)}", part, remote.name)
    elif remote.url:
        _http_fetch(remote.url, part, remote.name)
    else:
        _gdrive_fetch(str(remote.gdrive_id), part, remote.name, dest)
    try:
        check_size_and_hash(remote, part)
        if verify is not None:
            verify(part)
    except ToolkitError as exc:
        part.unlink(missing_ok=True)
        raise ToolkitError(f"{exc}; the download was deleted") from None
    if remote.sha256 is None:
        log.warning("%s: no SHA-256 in the manifest; this file has size %d and SHA-256 %s",
                    remote.name, part.stat().st_size, sha256_of(part))
    os.replace(part, dest)
    log.info("%s: saved %s", remote.name, dest)
    return dest
