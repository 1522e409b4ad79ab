"""Every relative link of the committed Markdown (README, docs/, results/) names a committed file.

A fresh clone has only what git tracks, so a link to an ignored file (a run's local output)
is broken for every reader even when the file exists on the machine that wrote the page.
"""
from __future__ import annotations

import posixpath
import re
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
LINK = re.compile(r"\]\(([^)\s]+)\)")
EXTERNAL = re.compile(r"^(?:[a-z][a-z0-9+.-]*:|#)", re.IGNORECASE)


def tracked_paths() -> set:
    try:
        out = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("not a git checkout: the committed files are unknown")
    files = set(out.decode().split("\0")) - {""}
    folders = {posixpath.dirname(f) for f in files}
    while True:  # every folder above a tracked file
        above = {posixpath.dirname(d) for d in folders} - folders
        if not above:
            break
        folders |= above
    return files | folders


def broken_links(markdown: str, page: str, tracked: set) -> list:
    """(page, link) of each relative link in ``markdown`` whose target is not in ``tracked``."""
    broken = []
    for link in LINK.findall(markdown):
        if EXTERNAL.match(link):
            continue
        target = posixpath.normpath(posixpath.join(posixpath.dirname(page), link.split("#", 1)[0]))
        if target not in tracked:
            broken.append((page, link))
    return broken


def test_broken_links_finds_an_untracked_target():
    tracked = {"docs", "docs/a.md", "results", "results/x.json"}
    text = "[ok](../results/x.json) [gone](../results/y.json#top) [web](https://e.org) [here](#time)"
    assert broken_links(text, "docs/a.md", tracked) == [("docs/a.md", "../results/y.json#top")]


def test_every_relative_link_of_the_committed_markdown_names_a_committed_file():
    tracked = tracked_paths()
    pages = sorted(p for p in tracked if p.endswith(".md") and (ROOT / p).is_file())
    assert "README.md" in pages and "docs/reproduction.md" in pages
    broken = [b for page in pages for b in broken_links((ROOT / page).read_text(encoding="utf-8"), page, tracked)]
    assert broken == []
