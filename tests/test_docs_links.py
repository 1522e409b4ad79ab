"""Every relative link of the committed Markdown (README, docs/, results/) names a committed file,
and every ``#anchor`` into a committed page names one of its headings.

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
HEADING = re.compile(r"^#{1,6}\s+(.*?)\s*$", re.MULTILINE)
FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)


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


def heading_anchors(markdown: str) -> set:
    """The anchors GitHub gives a page's headings: lower case, punctuation but '-' and '_'
    dropped, spaces to '-', '-1', '-2' ... after repeats (fenced code is not a heading)."""
    anchors, seen = set(), {}
    for heading in HEADING.findall(FENCE.sub("", markdown)):
        slug = re.sub(r"[^\w\- ]", "", heading.replace("`", "").strip().lower()).replace(" ", "-")
        anchors.add(f"{slug}-{seen[slug]}" if slug in seen else slug)
        seen[slug] = seen.get(slug, 0) + 1
    return anchors


def broken_links(markdown: str, page: str, tracked: set, pages: dict = None) -> list:
    """(page, link) of each relative link in ``markdown`` whose target is not in ``tracked``, or
    whose ``#anchor`` is no heading of the target (``pages``: path -> Markdown of the pages)."""
    broken = []
    for link in LINK.findall(markdown):
        if re.match(r"^[a-z][a-z0-9+.-]*:", link, re.IGNORECASE):
            continue
        path, _, anchor = link.partition("#")
        target = posixpath.normpath(posixpath.join(posixpath.dirname(page), path)) if path else page
        if target not in tracked:
            broken.append((page, link))
        elif anchor and target.endswith(".md") and anchor not in heading_anchors((pages or {}).get(target, "")):
            broken.append((page, link))
    return broken


def test_broken_links_finds_an_untracked_target_and_a_missing_heading():
    tracked = {"docs", "docs/a.md", "docs/b.md", "results", "results/x.json"}
    pages = {"docs/a.md": "## Time\n```\n# not a heading\n```\n", "docs/b.md": "# A `K = 5` run: 59.5 min\n## Time\n"}
    text = ("[ok](../results/x.json) [gone](../results/y.json#top) [web](https://e.org) [here](#time) "
            "[there](b.md#a-k--5-run-595-min) [repeat](b.md#time) [code](#not-a-heading) [nowhere](b.md#time-1)")
    assert broken_links(text, "docs/a.md", tracked, pages) == [
        ("docs/a.md", "../results/y.json#top"), ("docs/a.md", "#not-a-heading"), ("docs/a.md", "b.md#time-1")]
    assert heading_anchors("# Time\n## Time\n### Time!\n") == {"time", "time-1", "time-2"}


def test_every_relative_link_of_the_committed_markdown_names_a_committed_file_and_heading():
    tracked = tracked_paths()
    pages = sorted(p for p in tracked if p.endswith(".md") and (ROOT / p).is_file())
    assert "README.md" in pages and "docs/reproduction.md" in pages
    texts = {page: (ROOT / page).read_text(encoding="utf-8") for page in pages}
    broken = [b for page in pages for b in broken_links(texts[page], page, tracked, texts)]
    assert broken == []
