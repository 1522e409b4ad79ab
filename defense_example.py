"""Single-image demo with the published command line (Borkar, Heide, Karam, CVPR 2020):

  python defense_example.py --dnn ResNet152 --attack UAP --defense True
  python defense_example.py --input IMG --dnn CaffeNet --load WEIGHTS --attack FFF --defense True
  python defense_example.py --dnn FashionNet --attack UAP --defense True --out demo.png   # offline
  python defense_example.py --dnn FashionNet --attack UAP --peers pd,median:3   # + image-domain defences

Adds a universal perturbation to the image (clipped to [0, 255], as published), prints the
top-1 and top-5 of the undefended baseline and of the FRU-defended net, and writes a figure.
For the ImageNet nets, what is missing is downloaded, verified and cached first: the authors'
demo image, the published perturbation file and the released FRU caffemodel (Google Drive;
it also holds the baseline's layers). --offline (or FRU_OFFLINE=1) never downloads;
FRU_WEIGHTS_MIRROR serves all three from a mirror; FRU_DOWNLOAD_DIR says where they go.
Defaults per network are in defense/paper.py (DEMO).
"""
from __future__ import annotations

import argparse
import logging
import sys
from pathlib import Path
from typing import Optional, Sequence

from attacks.runtime import RUNTIME_CHOICES
from defense.core import parse_args, run_cli, set_mode
from defense.evaluate.competitors import parse_competitors
from defense.evaluate.demo import LABELS_ENV, DemoOptions, run_demo, save_figure
from defense.evaluate.peers import peer_specs
from defense.outputs import check_output, output_file
from defense.paper import DEMO, DEMO_ATTACKS


def _bool(text: str) -> bool:
    if text not in ("True", "False"):
        raise argparse.ArgumentTypeError(f"expected True or False, got '{text}'")
    return text == "True"


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="defense_example.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--input", help="image file, or fashion:<i> (Fashion-MNIST test image i); "
                                    "default: the network's demo image (FashionNet: fashion:8)")
    ap.add_argument("--dnn", default="ResNet152", choices=list(DEMO), help="network (default: ResNet152)")
    ap.add_argument("--load", type=Path, help="caffemodel of the selected net (FRU with --defense True); "
                                              "default: the weights manifest's file")
    ap.add_argument("--load-baseline", type=Path, help="baseline caffemodel shown beside the defended net "
                                                       "(default: the manifest's, else the FRU caffemodel's baseline layers)")
    ap.add_argument("--attack", default="UAP", choices=DEMO_ATTACKS, help="universal attack (default: UAP)")
    ap.add_argument("--defense", type=_bool, default=True, metavar="{True,False}",
                    help="True: baseline and FRU defence; False: baseline only (default: True)")
    ap.add_argument("--peers", type=peer_specs, default=[],
                    help="image-domain defences on the baseline, comma-separated, e.g. pd or "
                         "pd:deflections=200,window=10,median:3 (see python -m defense.evaluate --help)")
    ap.add_argument("--perturbation", type=Path, help="perturbation file replacing the attack's default file")
    ap.add_argument("--perturbations", type=Path, default=None,
                    help="local copy of the published Attack_samples/ folder; a missing file is downloaded into it "
                         "(default: $FRU_DOWNLOAD_DIR/Attack_samples, else the repository's)")
    ap.add_argument("--offline", action="store_true",
                    help="never download (also FRU_OFFLINE=1): a missing file is an error naming its address")
    ap.add_argument("--labels", type=Path, help=f"ImageNet labels JSON (default: ${LABELS_ENV} or ./imagenet_labels.json; "
                                                "class indices when absent)")
    ap.add_argument("--manifest", type=Path, help="weights manifest (default: weights/manifest.json)")
    ap.add_argument("--gpu", type=int, default=None, help="GPU id (default: CPU)")
    ap.add_argument("--runtime", choices=RUNTIME_CHOICES, default="caffe",
                    help="caffe (default), or onnx: the nets exported to ONNX and run in onnxruntime (CPU)")
    ap.add_argument("--competitor", nargs=3, action="append", default=[], metavar=("NAME", "PROTOTXT", "WEIGHTS"),
                    help="also show a trained competitor defence (prn, hgd, fd: docs/competitors.md); repeatable")
    ap.add_argument("--out", type=output_file, help="the figure's PNG (default: results/demo/<dnn>_<attack>.png)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    args = parse_args(build_parser(), argv)
    logging.basicConfig(level=logging.WARNING, format="%(message)s")
    logging.getLogger("weights").setLevel(logging.INFO)  # say what is downloaded, and where to
    out = args.out or Path("results") / "demo" / f"{args.dnn}_{args.attack}.png"
    check_output(out, "--out")  # the default too, before anything is downloaded or computed
    set_mode(args.gpu, seed=1000)
    result = run_demo(DemoOptions(net=args.dnn, input=args.input, load=args.load, load_baseline=args.load_baseline,
                                  attack=args.attack, defense=args.defense, perturbation=args.perturbation,
                                  perturbations_dir=args.perturbations, offline=args.offline, labels=args.labels,
                                  manifest=args.manifest, runtime=args.runtime, peers=tuple(args.peers),
                                  competitors=tuple(parse_competitors(args.competitor))))
    for model, pred in result.predictions.items():
        top = pred.perturbed[0]
        print(f"{model}: top 1 prediction on the perturbed image: {top[1]}, confidence score: {top[2]:.4f}")
        print(f"{model}: top 5 predictions: {[name for _, name, _ in pred.perturbed]}")
    print(f"wrote {save_figure(result, out)}")
    return 0


if __name__ == "__main__":
    sys.exit(run_cli(main))
