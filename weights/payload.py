"""What a download turned out to be: the file itself, an archive holding it, or a web page.

Servers and Google Drive sometimes answer with an HTML page (an error, a sign-in, a quota
notice) where a file should be, and a release may come packed as zip or tar(.gz). Both are
recognised from the first bytes, so nothing depends on what a server claims in its headers.
"""
from __future__ import annotations

import contextlib
import os
import shutil
import tarfile
import zipfile
from pathlib import Path
from typing import IO, Callable, Iterator, List, Tuple

from defense.core import ToolkitError

_HTML_STARTS = (b"<!doctype html", b"<html", b"<head", b"<body", b"<?xml")


def looks_like_html(path: Path) -> bool:
    with open(path, "rb") as fh:
        head = fh.read(512).lstrip().lower()
    return head.startswith(_HTML_STARTS)


def archive_kind(path: Path) -> str:
    """``zip``, ``tar`` (plain or compressed) or ``""``, from the file's magic bytes."""
    with open(path, "rb") as fh:
        head = fh.read(262 + 8)
    if head.startswith(b"PK\x03\x04"):
        return "zip"
    if head.startswith((b"\x1f\x8b", b"BZh", b"\xfd7zXZ")) or head[257:262] == b"ustar":
        return "tar"
    return ""


@contextlib.contextmanager
def _opened(path: Path, kind: str, label: str) -> Iterator[Tuple[List[str], Callable[[str], IO[bytes]]]]:
    """The names of an archive's regular files, and how to open one of them."""
    try:
        if kind == "zip":
            with zipfile.ZipFile(path) as archive:
                yield [i.filename for i in archive.infolist() if not i.is_dir()], archive.open
            return
        with tarfile.open(path) as tar:
            files = {m.name: m for m in tar.getmembers() if m.isfile()}
            yield list(files), lambda name: tar.extractfile(files[name])
    except (zipfile.BadZipFile, tarfile.TarError, EOFError, OSError) as exc:
        raise ToolkitError(f"{label}: the download is a damaged {kind} archive ({exc})") from None


def unpack_single(path: Path, suffix: str, label: str) -> bool:
    """If ``path`` is an archive, replace it by the one member whose name ends with ``suffix``.

    :returns: whether ``path`` was an archive. Zero or several such members is a ToolkitError.
    """
    kind = archive_kind(path)
    if not kind:
        return False
    unpacked = path.with_name(path.name + ".unpacked")
    try:
        with _opened(path, kind, label) as (names, open_member):
            hits = [n for n in names if n.lower().endswith(suffix)]
            if len(hits) != 1:
                found = f"{len(hits)} ({', '.join(hits)})" if hits else "none"
                raise ToolkitError(f"{label}: the download is a {kind} archive that must hold exactly one "
                                   f"{suffix} file, found {found}")
            with open_member(hits[0]) as src, open(unpacked, "wb") as dst:
                shutil.copyfileobj(src, dst, 1 << 20)
        os.replace(unpacked, path)
    finally:
        unpacked.unlink(missing_ok=True)
    return True
