"""``python -m defense.imagenet``: index ILSVRC2012 (``prepare val|train``) or look at an index (``check``).

The library is ``defense.data.imagenet``; see its docstring for the index format and the rules.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from .core import ToolkitError, parse_args, positive_int, run_cli, seed_int
from .data import imagenet as index_lib
from .data.imagenet import (ImageNetIndex, build_train_index, build_val_index, load_synsets, verify_images,
                            write_index)
from .outputs import output_file
from .presets import get_preset


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="python -m defense.imagenet", description=index_lib.__doc__,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = parser.add_subparsers(dest="command", required=True)
    prep = sub.add_parser("prepare", help="write an index of (path, label) pairs; images are not copied")
    prep.add_argument("split", choices=("val", "train"))
    prep.add_argument("--images", required=True,
                      help="val: the flat folder of ILSVRC2012_val_*.JPEG; train: the folder of <wnid>/ folders")
    prep.add_argument("--labels", help="val only: Caffe's val.txt or ILSVRC2012_validation_ground_truth.txt")
    prep.add_argument("--synsets", help="meta.mat, synsets.txt / synset_words.txt, '<id> <wnid>' text, or a "
                                        "labels JSON; needed for train and for the devkit ground truth")
    prep.add_argument("--per-class", type=positive_int, default=None,
                      help="images per class (val: first N names in sorted order; train: N drawn at random)")
    prep.add_argument("--seed", type=seed_int, default=0, help="train only: seed of the per-class draw (default 0)")
    prep.add_argument("--allow-missing", action="store_true", help="val only: skip listed images that are absent")
    prep.add_argument("--verify", action="store_true", help="decode every indexed image once (slow)")
    prep.add_argument("--out", type=output_file, required=True, help="index file to write (JSON lines)")
    show = sub.add_parser("check", help="load the first batch of an index as a network would see it")
    show.add_argument("index")
    show.add_argument("--dnn", default="CaffeNet", help="preset whose resize rule to use")
    show.add_argument("--batch", type=positive_int, default=8, help="images in the batch (default 8)")
    return parser


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    logging.basicConfig(level=logging.INFO, format="%(message)s")
    if args.command == "check":
        source = ImageNetIndex(args.index, get_preset(args.dnn))
        x, y = next(source.batches(args.batch))
        print(json.dumps({"images": len(source), "batch_shape": list(x.shape), "labels": y.tolist(),
                          "min": float(x.min()), "max": float(x.max())}))
        return 0
    synsets = load_synsets(args.synsets) if args.synsets else None
    if args.split == "val":
        if not args.labels:
            raise ToolkitError("prepare val needs --labels (Caffe's val.txt or the devkit ground truth)")
        items = build_val_index(args.images, args.labels, synsets, args.per_class, args.allow_missing)
        meta = {"split": "val", "labels": str(Path(args.labels).resolve()), "per_class": args.per_class,
                "order": "by label, file names sorted"}
    else:
        if synsets is None:
            raise ToolkitError("prepare train needs --synsets to map <wnid> folders to labels")
        items = build_train_index(args.images, synsets, args.per_class, args.seed)
        meta = {"split": "train", "per_class": args.per_class, "seed": args.seed,
                "order": "by label, file names sorted; per-class draw seeded with (seed, label)"}
    if args.synsets:
        meta["synsets"] = str(Path(args.synsets).resolve())
    meta["command"] = "python -m defense.imagenet " + " ".join(sys.argv[1:] if argv is None else argv)
    if args.verify:
        verify_images(Path(args.images), items)
    path = write_index(args.out, items, args.images, meta)
    print(json.dumps({"index": str(path), "images": len(items), "classes": len({lab for _, lab in items})}))
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
