"""``python -m defense.export``: write the fast deploy layout of an FRU model (no permutation,
Slice or Concat) and check it computes the same outputs; see ``defense.generate.export``.

  python -m defense.export --prototxt deploy_FRU.prototxt --weights fru.caffemodel --out DIR
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .core import run_cli, set_mode
from .generate import export as export_lib
from .generate.export import export_fast


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m defense.export", description=export_lib.__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--prototxt", type=Path, required=True, help="FRU deploy prototxt (explicit or folded layout)")
    ap.add_argument("--weights", type=Path, required=True, help="its caffemodel")
    ap.add_argument("--out", type=Path, required=True, help="folder for deploy_fast.prototxt and fast.caffemodel")
    ap.add_argument("--no-check", action="store_true", help="skip the forward pass comparing both layouts")
    ap.add_argument("--seed", type=int, default=0, help="seed of the random check input (0)")
    ap.add_argument("--gpu", type=int, default=None, help="GPU id for the check (default: CPU)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    def _main(argv):
        args = build_parser().parse_args(argv)
        set_mode(args.gpu, args.seed)
        summary = export_fast(args.prototxt, args.weights, args.out, not args.no_check, args.seed)
        for key, value in summary.items():
            print(f"{key}: {value}")
        return 0
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
