"""The single-image demo behind ``defense_example.py``: one image, one universal perturbation,
the top-5 of the undefended baseline and of the FRU-defended net, and a figure.

As the published ``defense_example.py`` (Borkar, Heide, Karam, CVPR 2020): the image is
preprocessed as for the tables, the perturbation is added in pixel units and the perturbed
image is clipped to [0, 255]; FFF is cropped at offset 1 here (the tables crop at 0).
With ``--defense True`` the baseline shown beside the defended net uses the baseline
caffemodel when present, else the FRU caffemodel itself (the released FRU models carry the
frozen baseline weights under the same layer names), so the published command downloads one
caffemodel. What is missing (the authors' demo image, the published perturbation, the
caffemodel) is downloaded, verified and cached first (``resources``) unless ``offline``.
``peers`` adds the baseline behind image-domain defences (``peers.make_peer`` specs, e.g. ``pd``).
"""
from __future__ import annotations

import json
import logging
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence, Tuple

import numpy as np

from attacks.classifier import softmax
from attacks.perturbation_io import FORMATS, detect_format, load_any
from attacks.published import published_dir

from ..core import ToolkitError, atomic_path
from ..data import FashionMnist
from ..data.preprocess import load_image, preprocess
from ..paper import DEMO_IMAGE, DemoDefaults, demo_defaults
from ..presets import REPO_ROOT, NetPreset, get_preset
from .compare import Model
from .peers import make_peer
from .resources import (NetFiles, demo_image, fetch_missing, has_all_layers, load_classifier, model_pair,
                        require_weights)

log = logging.getLogger(__name__)

LABELS_ENV = "FRU_IMAGENET_LABELS"
DEFAULT_LABELS = "imagenet_labels.json"  # the published demo's file name, looked up in the working folder
FASHION_PREFIX = "fashion:"


@dataclass(frozen=True)
class DemoOptions:
    """The demo's inputs; ``None`` means the network's default from ``defense.paper.DEMO``.

    :param load: caffemodel of the net ``defense`` selects (FRU if True, baseline if False).
    :param load_baseline: baseline caffemodel shown beside the defended net.
    :param perturbation: a perturbation file replacing the attack's default file.
    :param perturbations_dir: the copy of ``Attack_samples/`` (default: ``attacks.published.published_dir()``).
    :param offline: never download; a missing published file is an error naming its address.
    :param runtime: ``caffe``, or ``onnx`` (the nets exported to ONNX, run in onnxruntime).
    :param peers: image-domain defences (``make_peer`` specs) shown on the baseline, ``baseline+<key>``.
    """

    net: str = "ResNet152"
    input: Optional[str] = None
    load: Optional[Path] = None
    load_baseline: Optional[Path] = None
    attack: str = "UAP"
    defense: bool = True
    perturbation: Optional[Path] = None
    perturbations_dir: Optional[Path] = None
    offline: bool = False
    labels: Optional[Path] = None
    manifest: Optional[Path] = None
    clip: bool = True
    runtime: str = "caffe"
    peers: Tuple[str, ...] = ()


@dataclass
class Prediction:
    """Top-5 (class index, name, probability) of one net on the clean and the perturbed image."""

    clean: List[Tuple[int, str, float]]
    perturbed: List[Tuple[int, str, float]]


@dataclass
class DemoResult:
    net: str
    attack: str
    image: np.ndarray          # (C, H, W) pixel units, BGR
    perturbed: np.ndarray      # (C, H, W), clipped as published
    true_label: Optional[int]
    true_name: Optional[str] = None
    predictions: Dict[str, Prediction] = field(default_factory=dict)  # "baseline" / "FRU" / "baseline+pd"
    files: Dict[str, str] = field(default_factory=dict)


# ---------------------------------------------------------------- inputs
def class_names(preset: NetPreset, labels: Optional[os.PathLike | str]) -> Optional[List[str]]:
    """Class names: the preset's (Fashion-MNIST), or ImageNet's from a labels JSON (``{"0": [wnid, name]}``)
    at run time."""
    if preset.class_names is not None:
        return list(preset.class_names)
    path = Path(labels) if labels else None
    if path is None:
        env = os.environ.get(LABELS_ENV)
        candidates = [Path(env)] if env else []
        candidates.append(Path(DEFAULT_LABELS))
        path = next((p for p in candidates if p.is_file()), None)
        if path is None:
            log.info("no ImageNet labels file (--labels, $%s or ./%s): showing class indices", LABELS_ENV, DEFAULT_LABELS)
            return None
    if not path.is_file():
        raise ToolkitError(f"{path}: labels file not found; check --labels")
    try:
        data = json.loads(path.read_text())
        names = [data[str(i)][1] if isinstance(data[str(i)], list) else str(data[str(i)])
                 for i in range(len(data))]
    except (json.JSONDecodeError, KeyError, IndexError, TypeError, UnicodeDecodeError):
        raise ToolkitError(f"{path}: expected JSON like {{\"0\": [\"n01440764\", \"tench\"], ...}}") from None
    if len(names) != preset.num_classes:
        raise ToolkitError(f"{path}: has {len(names)} classes, {preset.name} has {preset.num_classes}")
    return names


def load_input(spec: str, preset: NetPreset) -> Tuple[np.ndarray, Optional[int]]:
    """``(C, H, W)`` pixel image and its label if known: ``fashion:<i>`` (test split) or an image file."""
    if spec.startswith(FASHION_PREFIX):
        index = spec[len(FASHION_PREFIX):]
        test = FashionMnist("test")
        if not index.isdigit() or int(index) >= len(test):
            raise ToolkitError(f"--input {spec}: expected fashion:<i> with i in 0..{len(test) - 1}")
        x, y = test.take([int(index)])
        return x[0], int(y[0])
    if preset.channels == 1:
        from PIL import Image
        img = load_image(spec).convert("L")
        if img.size != (preset.input_size, preset.input_size):
            img = img.resize((preset.input_size, preset.input_size), Image.Resampling.NEAREST)
        return np.asarray(img, dtype=np.float32)[None], None
    path = Path(spec)
    if not path.is_file():
        raise ToolkitError(f"{path}: input image not found; give --input IMG")
    return preprocess(path, preset), None


def load_attack(options: DemoOptions, demo: DemoDefaults, preset: NetPreset) -> Tuple[np.ndarray, str]:
    """The attack's perturbation (``(C, H, W)`` pixel units) and the file it came from."""
    if options.attack not in demo.attacks:
        raise ToolkitError(f"no {options.attack} perturbation for {preset.name}; available: {', '.join(demo.attacks)}")
    name, fmt = demo.attacks[options.attack]
    shape = (preset.channels, preset.input_size, preset.input_size)
    if options.perturbation is not None:
        path = Path(options.perturbation)
        fmt = detect_format(path, fmt)
    elif FORMATS[fmt].kind in ("published", "variant"):
        folder = options.perturbations_dir or published_dir()
        fetch_missing([name], folder, offline=options.offline)
        path = Path(folder) / name
    else:
        path = REPO_ROOT / name
        if not path.is_file():
            hint = demo.fetch_hint.get(options.attack, "give --perturbation FILE")
            raise ToolkitError(f"{path}: {preset.name} {options.attack} perturbation not found; make it with '{hint}' "
                               "or give --perturbation FILE")
        fmt = detect_format(path, "npy")
    return load_any(path, fmt, expect=shape), str(path)


# ---------------------------------------------------------------- nets
def _input_spec(options: DemoOptions, demo: DemoDefaults) -> str:
    """``--input``, else the network's demo input; the authors' image is fetched when missing."""
    if options.input is not None:
        return options.input
    return str(demo_image(options.offline)) if demo.input == DEMO_IMAGE.name else demo.input


def _nets(options: DemoOptions, preset: NetPreset) -> List[Tuple[str, NetFiles, Path]]:
    """(label, files, caffemodel) of each net to run: the baseline, and the FRU net if ``defense``.

    With the defence on, the FRU caffemodel comes first: it also holds the baseline's layers,
    so the baseline caffemodel is only read (or downloaded) when that one lacks them.
    """
    pair = model_pair(preset.name, options.manifest)
    if not options.defense:
        return [("baseline", pair.baseline, _given(options.load, "baseline", "--load")
                 or require_weights(pair.baseline, preset.name, options.offline))]
    fru_weights = _given(options.load, "FRU", "--load") or require_weights(pair.fru, preset.name, options.offline)
    base_weights = _given(options.load_baseline, "baseline", "--load-baseline")
    if base_weights is None:
        if pair.baseline.weights.is_file() or not has_all_layers(fru_weights, pair.baseline.prototxt):
            base_weights = require_weights(pair.baseline, preset.name, options.offline)
        else:
            base_weights = fru_weights
    return [("baseline", pair.baseline, base_weights), ("FRU", pair.fru, fru_weights)]


def _given(path: Optional[Path], role: str, option: str) -> Optional[Path]:
    if path is not None and not Path(path).is_file():
        raise ToolkitError(f"{path}: {role} caffemodel not found; check {option}")
    return None if path is None else Path(path)


def _top5(probs: np.ndarray, names: Optional[Sequence[str]]) -> List[Tuple[int, str, float]]:
    order = np.argsort(-probs, kind="stable")[:min(5, probs.size)]
    return [(int(i), names[i] if names else f"class {int(i)}", float(probs[i])) for i in order]


def run_demo(options: DemoOptions) -> DemoResult:
    """Classify the clean and the perturbed image with the baseline (and the FRU net if ``defense``)."""
    preset = get_preset(options.net)
    demo = demo_defaults(preset.name)
    if options.attack not in demo.attacks:
        raise ToolkitError(f"no {options.attack} perturbation for {preset.name}; available: {', '.join(demo.attacks)}")
    image, true_label = load_input(_input_spec(options, demo), preset)
    v, v_file = load_attack(options, demo, preset)
    nets = _nets(options, preset)
    perturbed = image + v
    if options.clip:
        perturbed = np.clip(perturbed, 0.0, 255.0)
    names = class_names(preset, options.labels)
    true_name = None if true_label is None else (names[true_label] if names else f"class {true_label}")
    result = DemoResult(preset.name, options.attack, image, perturbed, true_label, true_name,
                        files={"perturbation": v_file})
    peers = [make_peer(spec) for spec in options.peers]
    batch = np.stack([image, perturbed]).astype(np.float32)
    models = []
    for label, files, weights in nets:
        models.append(Model(label, load_classifier(files, preset, batch_size=2, weights=weights,
                                                   runtime=options.runtime)))
        result.files[label] = str(weights)
    models += [Model(f"baseline+{peer.key}", models[0].classifier, peer) for peer in peers]
    for model in models:
        probs = softmax(model.logits(batch, batch_size=2))
        result.predictions[model.name] = Prediction(_top5(probs[0], names), _top5(probs[1], names))
    return result


# ---------------------------------------------------------------- figure
def _display(x: np.ndarray) -> np.ndarray:
    img = np.clip(x, 0, 255).astype(np.uint8)
    return img[0] if img.shape[0] == 1 else img[::-1].transpose(1, 2, 0)  # BGR CHW -> RGB HWC


def save_figure(result: DemoResult, path: os.PathLike | str) -> Path:
    """PNG: clean and perturbed image above, the top-5 on the perturbed image of each net below."""
    import matplotlib
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt
    models = list(result.predictions)
    fig, axes = plt.subplots(2, max(2, len(models)), figsize=(max(10, 3.3 * len(models)), 8))
    for ax, img, title in ((axes[0, 0], result.image, "Original image"),
                           (axes[0, 1], result.perturbed, f"Perturbed ({result.attack})")):
        ax.imshow(_display(img), cmap="gray" if img.shape[0] == 1 else None)
        ax.set_title(title)
        ax.axis("off")
    for ax in axes[0, 2:]:
        ax.axis("off")
    for ax, model in zip(axes[1], models):
        pred = result.predictions[model].perturbed
        ax.barh(range(len(pred))[::-1], [p for _, _, p in pred], color="tab:red" if model == "baseline" else "tab:green")
        ax.set_yticks(range(len(pred))[::-1])
        ax.set_yticklabels([name for _, name, _ in pred])
        for y, (_, _, p) in zip(range(len(pred))[::-1], pred):
            ax.text(min(p, 0.85) + 0.01, y, f"{p:.2f}", va="center", fontsize=9)
        ax.set_xlim(0, 1)
        clean = result.predictions[model].clean[0]
        title = {"FRU": "FRU defence", "baseline": "Baseline"}.get(model, model.replace("baseline+", "Baseline + "))
        ax.set_title(f"{title} on the perturbed image\n"
                     f"(clean image: {clean[1]}, {clean[2]:.2f})", fontsize=10)
        ax.set_xlabel("probability")
    for ax in axes[1, len(models):]:
        ax.axis("off")
    truth = "" if result.true_name is None else f" (true class: {result.true_name})"
    fig.suptitle(f"{result.net}, {result.attack}{truth}")
    fig.tight_layout()
    path = Path(path)
    with atomic_path(path) as tmp:
        fig.savefig(tmp, format="png", dpi=100)
    plt.close(fig)
    return path
