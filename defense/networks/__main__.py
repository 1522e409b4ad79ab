"""Regenerate the baseline deploy prototxts: ``python -m defense.networks --all [--out DIR]``."""
from __future__ import annotations

import argparse
import sys
from typing import Optional, Sequence

from ..core import parse_args, run_cli
from ..outputs import output_dir
from . import BUILDERS, write_baselines


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="python -m defense.networks",
        description="Write the baseline deploy prototxts (prototxt/<Net>/deploy_<stem>.prototxt) "
                    "from their NetSpec builders.")
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--all", action="store_true", help=f"all networks: {', '.join(BUILDERS)}")
    which.add_argument("--net", action="append", metavar="NAME",
                       help="one network (repeatable); case-insensitive preset name")
    parser.add_argument("--out", type=output_dir, metavar="DIR", default=None,
                        help="output root (default: the repository's prototxt/ folder)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    for path in write_baselines(args.out, None if args.all else args.net):
        print(path)
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
