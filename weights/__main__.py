"""``python -m weights``: list and fetch the released caffemodels of the paper.

Examples::

    python -m weights list
    python -m weights fetch CaffeNet                     # baseline + FRU (primary defence)
    python -m weights fetch ResNet152 --defense secondary
    python -m weights fetch VGG16 --baseline-only --base-url https://mirror.example/fru
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Optional, Sequence

from defense.core import parse_args, run_cli

from .download import MIRROR_ENV
from .fetch import fetch_weights, status
from .manifest import DEFENSES, MANIFEST_ENV, load_manifest, select


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m weights", description=__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--manifest", default=None,
                        help=f"manifest JSON (default: ${MANIFEST_ENV} or weights/manifest.json)")
    sub = parser.add_subparsers(dest="command", required=True)
    fetch = sub.add_parser("fetch", help="download and verify a network's caffemodels")
    fetch.add_argument("net", help="network name (CaffeNet, VGG_F, GoogLeNet, VGG16, ResNet152)")
    fetch.add_argument("--defense", choices=DEFENSES, default="primary",
                       help="which released FRU model to fetch besides the baseline (default: primary)")
    fetch.add_argument("--baseline-only", action="store_true", help="fetch only the baseline caffemodel")
    fetch.add_argument("--force", action="store_true", help="download again even if the file exists")
    fetch.add_argument("--base-url", default=None,
                       help=f"mirror serving the files by name (<base-url>/<file>; default: ${MIRROR_ENV})")
    lst = sub.add_parser("list", help="list the manifest and what is already downloaded")
    lst.add_argument("--check", action="store_true",
                     help="verify downloaded files (hash, caffemodel layers against the prototxt)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    entries = load_manifest(args.manifest)
    if args.command == "list":
        for e in entries:
            defense = e.defense or "-"
            print(f"{e.name:28s} {e.net:10s} {e.kind:8s} {defense:9s} source={e.source:6s} "
                  f"{status(e, args.check):8s} {e.dest}")
        return 0
    chosen = select(entries, args.net, defense=args.defense, baseline_only=args.baseline_only)
    for path in fetch_weights(chosen, base_url=args.base_url, force=args.force):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
