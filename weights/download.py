"""Verified, resumable, cached downloads of published files (caffemodels, perturbations, demo image).

One code path for every published file: bytes go into ``<dest>.part`` beside the
destination, are unpacked if they came as an archive, checked (not an HTML page; size and
SHA-256; a format check the caller supplies) and only then renamed onto ``<dest>``. So the
toolkit never loads a truncated or wrong file:

- a network failure keeps ``<dest>.part`` so that the next run resumes it (HTTP ``Range``
  request, or gdown's own resume for Google Drive);
- a verification failure deletes ``<dest>.part`` and raises a one-line ``ToolkitError``.

A file already at ``<dest>`` is the cache: it is checked, never downloaded again. Where the
manifest does not know a file's size and SHA-256 (the released caffemodels), the first
verified download records them in a lock file beside it (``RemoteFile.lock``), and every
later copy must match that record; the committed manifest is never written.

A mirror (``base_url``, or ``$FRU_WEIGHTS_MIRROR``) serves the same files by their name,
e.g. ``<base_url>/caffenet_FRU.caffemodel``. ``$FRU_OFFLINE=1`` (``--offline``) forbids
downloading: a missing file is one line with the address to fetch it from by hand and the
path to put it at. Downloads go below ``$FRU_DOWNLOAD_DIR`` (default: the repository).
"""
from __future__ import annotations

import hashlib
import http.client
import json
import logging
import os
import time
import urllib.error
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Optional, Tuple

from tqdm import tqdm

from defense.core import ToolkitError, input_file, write_text
from defense.outputs import output_problem
from defense.presets import REPO_ROOT

from .gdrive import NetworkError, browser_url, gdrive_fetch, manual_way
from .payload import looks_like_html, unpack_single

log = logging.getLogger(__name__)

MIRROR_ENV = "FRU_WEIGHTS_MIRROR"
OFFLINE_ENV = "FRU_OFFLINE"
DOWNLOAD_DIR_ENV = "FRU_DOWNLOAD_DIR"
LOCK_NAME = "downloads.lock.json"
CHUNK = 1 << 20
TIMEOUT_S = 60


def download_dir() -> Path:
    """Where published files are cached: ``$FRU_DOWNLOAD_DIR``, else the repository."""
    return Path(os.environ.get(DOWNLOAD_DIR_ENV) or REPO_ROOT).resolve()


def is_offline(flag: Optional[bool] = None) -> bool:
    """Whether downloads are forbidden: ``--offline`` (``flag``), else ``$FRU_OFFLINE`` set to 1/true/yes."""
    if flag:
        return True
    return os.environ.get(OFFLINE_ENV, "").strip().lower() in ("1", "true", "yes", "on")


@dataclass(frozen=True)
class RemoteFile:
    """One published file and where it goes.

    :param name: manifest name, used in messages.
    :param dest: absolute destination path.
    :param file: the file's name on a mirror (``<base_url>/<file>``).
    :param url: plain HTTP(S) address, or None.
    :param gdrive_id: Google Drive file id, or None.
    :param size: expected size in bytes of the file at ``dest``, or None when not yet recorded.
    :param sha256: expected SHA-256 (hex) of the file at ``dest``, or None when not yet recorded.
    :param note: where to get the file by hand when no source is known.
    :param lock: the lock file that records size and SHA-256 at the first verified download
        (used when the manifest has no SHA-256).
    :param member: if the download is a zip or tar archive, take its one member with this suffix.
    """

    name: str
    dest: Path
    file: str
    url: Optional[str] = None
    gdrive_id: Optional[str] = None
    size: Optional[int] = None
    sha256: Optional[str] = None
    note: Optional[str] = None
    lock: Optional[Path] = None
    member: Optional[str] = None

    @property
    def part(self) -> Path:
        return self.dest.with_name(self.dest.name + ".part")


Verifier = Callable[[Path], None]
"""Checks a complete download (raises ToolkitError when the file is not the expected one)."""


class MissingOffline(ToolkitError):
    """A file to download is missing and downloads are off: the message says where to get it."""


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


# ---------------------------------------------------------------- recorded size and hash
def read_lock(lock: Path) -> dict:
    """``{file: {"size", "sha256", "source", "recorded"}}`` of a lock file ({} if there is none)."""
    if not lock.is_file():
        return {}
    try:
        data = json.loads(input_file(lock, "lock file").read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as exc:
        raise ToolkitError(f"{lock}: not valid JSON ({exc}); delete it to record the files again") from None
    if not isinstance(data, dict) or not all(isinstance(v, dict) and isinstance(v.get("sha256"), str)
                                             and isinstance(v.get("size"), int) for v in data.values()):
        raise ToolkitError(f"{lock}: expected {{file: {{\"size\": int, \"sha256\": str}}}}; "
                           "delete it to record the files again")
    return data


def recorded(remote: RemoteFile) -> Tuple[Optional[int], Optional[str], str]:
    """(size, sha256, where it comes from) that ``remote`` must have: the manifest's, else the lock's."""
    if remote.sha256 is not None or remote.lock is None:
        return remote.size, remote.sha256, "the manifest"
    entry = read_lock(remote.lock).get(remote.file)
    if entry is None:
        return remote.size, None, "the manifest"
    return entry["size"], entry["sha256"], f"{remote.lock} (recorded at the first download)"


def check_size_and_hash(remote: RemoteFile, path: Path, what: str = "the download") -> None:
    """Compare ``path`` with the recorded size and SHA-256 (each only when known)."""
    size_wanted, sha_wanted, source = recorded(remote)
    size = path.stat().st_size
    if size_wanted is not None and size != size_wanted:
        raise ToolkitError(f"{remote.name}: {what} has {size} bytes but {source} says {size_wanted} "
                           "(truncated or wrong file)")
    if sha_wanted is not None:
        got = sha256_of(path)
        if got != sha_wanted.lower():
            raise ToolkitError(f"{remote.name}: {what} has SHA-256 {got[:16]}... but {source} says "
                               f"{sha_wanted[:16]}... (changed, wrong or corrupt file)")


def record(remote: RemoteFile, path: Path, source: str) -> None:
    """Write ``path``'s size and SHA-256 into ``remote.lock`` when neither the manifest nor the
    lock has them yet (a record, once written, is what every later copy is checked against)."""
    if remote.sha256 is not None or remote.lock is None:
        return
    data = read_lock(remote.lock)
    if remote.file in data:
        return
    data[remote.file] = {"size": path.stat().st_size, "sha256": sha256_of(path), "source": source,
                         "recorded": time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime())}
    write_text(remote.lock, json.dumps(data, indent=2, sort_keys=True) + "\n")
    log.info("%s: recorded size %d and SHA-256 %s in %s", remote.name, data[remote.file]["size"],
             data[remote.file]["sha256"], remote.lock)


# ---------------------------------------------------------------- transfers
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


def source_url(remote: RemoteFile, mirror: Optional[str]) -> Optional[str]:
    """The address ``remote`` comes from: the mirror's, the manifest's URL, or Drive's page for people."""
    if mirror is not None:
        return f"{mirror}/{urllib.parse.quote(remote.file)}"
    if remote.url:
        return remote.url
    return browser_url(remote.gdrive_id) if remote.gdrive_id else None


def _check_download(remote: RemoteFile, part: Path, verify: Optional[Verifier], url: str, drive: bool) -> None:
    """Unpack an archive, refuse a web page, then size, hash and format (ToolkitError on failure)."""
    if remote.member and unpack_single(part, remote.member, remote.name):
        log.info("%s: unpacked the one %s file of the downloaded archive", remote.name, remote.member)
    if looks_like_html(part):
        if drive:
            raise ToolkitError(f"{remote.name}: Google Drive sent an HTML page instead of file id {remote.gdrive_id}; "
                               f"{manual_way(str(remote.gdrive_id), remote.dest)}")
        raise ToolkitError(f"{remote.name}: {url} sent an HTML page instead of the file; check the address "
                           "or the mirror")
    check_size_and_hash(remote, part)
    if verify is not None:
        verify(part)


def fetch_file(remote: RemoteFile, base_url: Optional[str] = None, force: bool = False,
               verify: Optional[Verifier] = None, offline: Optional[bool] = None) -> Path:
    """``remote.dest``, downloaded first unless a verified copy is already there (the cache).

    :param base_url: a mirror serving ``<base_url>/<remote.file>``; overrides the manifest's
        sources (default ``$FRU_WEIGHTS_MIRROR``).
    :param force: download again even when the destination exists.
    :param verify: format check run on the complete ``.part`` file before the rename.
    :param offline: never download (default ``$FRU_OFFLINE``); a missing file is an error.
    """
    dest, part = remote.dest, remote.part
    if dest.exists() and not force:
        try:
            check_size_and_hash(remote, dest, what=str(dest))
        except ToolkitError as exc:
            raise ToolkitError(f"{exc}; the file is not used: delete it to download it again") from None
        if verify is not None and recorded(remote)[1] is None:  # no hash vouches for it: check its format
            try:
                verify(dest)
            except ToolkitError as exc:
                raise ToolkitError(f"{dest}: the file already there fails the check ({exc}); it is not used: "
                                   "delete it to download it again") from None
        log.debug("%s: already at %s", remote.name, dest)
        return dest
    mirror = mirror_url(base_url)
    url = source_url(remote, mirror)
    if url is None:
        note = f" {remote.note}" if remote.note else ""
        raise ToolkitError(f"{remote.name}: no download address is known.{note} Then place it at {dest}, "
                           "or use --base-url with a mirror")
    if is_offline(offline):
        raise MissingOffline(f"{remote.name}: {dest} is missing and downloads are off (--offline or "
                           f"{OFFLINE_ENV}=1); download {url} and put it there")
    problem = output_problem(dest, "file")
    if problem:
        raise ToolkitError(f"{remote.name}: cannot save {dest}: {problem}; set {DOWNLOAD_DIR_ENV} (or the "
                           "command's folder option) to a folder you can write")
    dest.parent.mkdir(parents=True, exist_ok=True)
    if force and part.exists():
        part.unlink()
    drive = mirror is None and not remote.url
    log.info("%s: downloading %s -> %s", remote.name, url, dest)
    if drive:
        gdrive_fetch(str(remote.gdrive_id), part, remote.name, dest)
    else:
        _http_fetch(url, part, remote.name)
    try:
        _check_download(remote, part, verify, url, drive)
    except ToolkitError as exc:
        part.unlink(missing_ok=True)
        raise ToolkitError(f"{exc}; the download was deleted") from None
    except Exception:  # a checker's own bug must not leave a complete but unchecked .part to resume from
        part.unlink(missing_ok=True)
        raise
    if remote.sha256 is None:
        record(remote, part, url)
    os.replace(part, dest)
    log.info("%s: saved %s", remote.name, dest)
    return dest
