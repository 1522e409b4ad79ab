"""Google Drive downloads through gdown, with Drive's answers turned into one-line errors.

Drive answers a download request in one of four ways, and gdown (pinned in requirements.txt)
handles the protocol:

- a small file comes directly (``Content-Disposition: attachment``);
- a large one first comes as an HTML "can't scan this file for viruses" page whose form
  (``id``, ``export=download``, ``confirm``, ``uuid``) gdown submits to get the file;
- a file downloaded too often comes as a "Too many users have viewed or downloaded this file
  recently" page, and a file that is gone or private as some other HTML page: gdown raises
  ``FileURLRetrievalError``, which becomes one line naming the Drive id and the manual way.

An HTML page that Drive labels as the file itself is caught later, by the download's format
check (``weights.payload``). The Drive address is ``$FRU_GDRIVE_URL`` (default
``https://drive.google.com``) so that tests can play Drive on 127.0.0.1: gdown applies its
Drive handling only to Google's host names, so for another base URL that host is added to
them for the duration of the call.
"""
from __future__ import annotations

import contextlib
import os
import re
import sys
import urllib.parse
from pathlib import Path
from typing import Iterator

from defense.core import ToolkitError

GDRIVE_ENV = "FRU_GDRIVE_URL"
GDRIVE_URL = "https://drive.google.com"


class NetworkError(ToolkitError):
    """The transfer broke off; the partial file is kept for a resume (plain HTTP and Drive alike)."""


def drive_base() -> str:
    return (os.environ.get(GDRIVE_ENV) or GDRIVE_URL).rstrip("/")


def browser_url(gdrive_id: str) -> str:
    """The page a person opens to download the file by hand (always Google's own address)."""
    return f"{GDRIVE_URL}/file/d/{gdrive_id}/view"


def manual_way(gdrive_id: str, dest: Path) -> str:
    return (f"download {browser_url(gdrive_id)} in a browser, then put it at {dest} "
            "or give it with --load")


@contextlib.contextmanager
def _drive_host(base: str) -> Iterator[None]:
    """Let gdown treat ``base``'s host as Google Drive while a download runs (see the module docstring)."""
    import gdown.parse_url as parse_url

    host = urllib.parse.urlparse(base).hostname
    original = parse_url.is_google_drive_url
    if original(url=base):
        yield
        return
    parse_url.is_google_drive_url = lambda url: original(url=url) or urllib.parse.urlparse(url).hostname == host
    try:
        yield
    finally:
        parse_url.is_google_drive_url = original


def _reason(exc: Exception) -> str:
    """Drive's own sentence out of gdown's multi-line message (e.g. "Too many users have ...")."""
    text = " ".join(str(exc).split())
    text = re.sub(r"^Failed to retrieve file url:\s*", "", text)
    text = re.split(r"\s*You may still be able to access the file from the browser", text)[0]
    sentence = re.match(r"(.+?[.!])(\s|$)", text)
    return (sentence.group(1) if sentence else text) or "no file in Drive's answer"


def gdrive_fetch(gdrive_id: str, part: Path, label: str, dest: Path) -> None:
    """Download Drive file ``gdrive_id`` into ``part`` (gdown resumes its own partial file)."""
    import gdown
    from gdown.exceptions import FileURLRetrievalError

    base = drive_base()
    url = f"{base}/uc?{urllib.parse.urlencode({'id': gdrive_id, 'export': 'download'})}"
    try:
        with _drive_host(base):
            out = gdown.download(url=url, output=str(part), resume=True, use_cookies=False,
                                 quiet=not sys.stderr.isatty())
    except FileURLRetrievalError as exc:
        raise ToolkitError(f"{label}: Google Drive did not send file id {gdrive_id} ({_reason(exc)}); "
                           f"{manual_way(gdrive_id, dest)}") from None
    except Exception as exc:  # requests' connection errors and the like: keep gdown's partial file
        raise NetworkError(f"{label}: the Google Drive download of file id {gdrive_id} failed or broke off "
                           f"({type(exc).__name__}); check the network and run again (a partial download "
                           f"resumes), or {manual_way(gdrive_id, dest)}") from None
    if out is None or not part.is_file():
        raise NetworkError(f"{label}: gdown could not resume (several partial files beside {part}?); "
                           f"delete {part.parent}/{part.name}*.part and run again")
