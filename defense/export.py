"""``python -m defense.export``: export a deploy net for use outside the published layout.

- ``--format fast`` (default): the fast deploy layout of an FRU model (no permutation, Slice or
  Concat), checked to compute the same outputs; see ``defense.generate.export``;
- ``--format onnx``: any baseline or FRU deploy net as an ONNX graph (onnxruntime, TensorRT,
  OpenVINO, converters to PyTorch), checked against Caffe on a random batch; see
  ``defense.generate.onnx_graph``.

  python -m defense.export --prototxt deploy_FRU.prototxt --weights fru.caffemodel --out DIR
  python -m defense.export --format onnx --prototxt P --weights W --out model.onnx
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Optional, Sequence

from .core import parse_args, run_cli, seed_int, set_mode
from .generate.export import export_fast
from .generate.onnx_graph import export_onnx
from .outputs import check_output, output_path


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m defense.export", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--format", choices=("fast", "onnx"), default="fast", help="fast (default) or onnx")
    ap.add_argument("--prototxt", type=Path, required=True,
                    help="deploy prototxt (fast: an FRU net, explicit or folded layout; onnx: any)")
    ap.add_argument("--weights", type=Path, required=True, help="its caffemodel")
    ap.add_argument("--out", type=output_path, required=True,
                    help="fast: folder for deploy_fast.prototxt and fast.caffemodel; onnx: the .onnx file")
    ap.add_argument("--no-check", action="store_true", help="skip the forward pass comparing the two")
    ap.add_argument("--seed", type=seed_int, default=0, help="seed of the random check input (0)")
    ap.add_argument("--gpu", type=int, default=None, help="GPU id for the check (default: CPU)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    def _main(argv):
        args = parse_args(build_parser(), argv)
        check_output(args.out, "--out", "file" if args.format == "onnx" else "folder")
        set_mode(args.gpu, args.seed)
        export = export_onnx if args.format == "onnx" else export_fast
        summary = export(args.prototxt, args.weights, args.out, not args.no_check, args.seed)
        for key, value in summary.items():
            print(f"{key}: {value}")
        return 0
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
