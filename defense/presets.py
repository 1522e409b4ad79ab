"""Per-network constants, in one place: inputs, preprocessing, FRU targets and their names.

The five ImageNet presets reproduce the published FRU models (Borkar, Heide, Karam,
CVPR 2020), so that the released caffemodels load by layer name; the facts come from the
released deploy files (the FRU table of the paper's repository, tsborkar/Selective-feature-
regeneration; the reference tests compare them with it). No other module writes an input size,
a mean value, a batch size, a published layer name or where a network's files lie.
"""
from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, Optional, Tuple

from .core import ToolkitError

REPO_ROOT = Path(__file__).resolve().parent.parent
PROTOTXT_DIR = REPO_ROOT / "prototxt"
WEIGHTS_DIR = REPO_ROOT / "weights"
"""``weights/<Net>/<file>.caffemodel``: see ``NetPreset.weights``."""

FASHION_MNIST_DIR = Path(os.environ.get("FASHION_MNIST_DIR", "/usr/share/datasets/fashion-mnist"))
FASHION_MNIST_FIX = "apt-get install dataset-fashion-mnist"
FASHION_MNIST_FILES = {  # split -> (images file, labels file, image count)
    "train": ("train-images-idx3-ubyte.gz", "train-labels-idx1-ubyte.gz", 60000),
    "test": ("t10k-images-idx3-ubyte.gz", "t10k-labels-idx1-ubyte.gz", 10000),
}
FASHION_MNIST_CLASSES = ("T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
                         "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot")

IMAGENET_MEAN_BGR = (103.939, 116.779, 123.68)
RESNET_MEAN_BGR = (102.98, 115.947, 122.772)


@dataclass(frozen=True)
class FruTarget:
    """One regenerated conv layer and how its FRU's layers are named.

    :param layer: the baseline conv whose top-``n`` ranked output channels are regenerated.
    :param n: channels passed through the FRU (top-ranked by filter-weight norm).
    :param d: FRU depth (output channels of its first three convs).
    :param short: short name used in blob names (``topranked_<short>``, ``<short>_concat``)
        and permutation layers (``<short>_imap``, ``<short>_remap``).
    :param prefix: FRU layer names are ``<prefix>conv<k><suffix>``, ``<prefix>bn<k><suffix>``,
        ``<prefix>scale<k><suffix>``, ``<prefix>merge<suffix>``.
    :param suffix: see ``prefix``.
    """

    layer: str
    n: int
    d: int
    short: str
    prefix: str
    suffix: str = ""

    def fru_layer(self, kind: str, k: Optional[int] = None) -> str:
        return f"{self.prefix}{kind}{'' if k is None else k}{self.suffix}"


@dataclass(frozen=True)
class FruNames:
    """Every layer and blob name of one FRU block (see ``fru_names``)."""

    imap: str
    remap: str
    slice: str
    convs: Tuple[str, str, str, str]
    bns: Tuple[str, str, str]
    scales: Tuple[str, str, str]
    relus: Tuple[str, str, str]
    merge: str
    concat: str
    raw_blob: str          # the target conv's own output once the FRU takes its top name
    permuted_blob: str     # imap output (explicit mode)
    top_blob: str          # top-ranked slice
    bottom_blob: str       # bottom-ranked slice
    merged_blob: str
    concat_blob: str


def fru_names(target: FruTarget) -> FruNames:
    """The single naming rule; released caffemodels load by these names."""
    t = target.short
    return FruNames(
        imap=f"{t}_imap",
        remap=f"{t}_remap",
        slice=f"split_{t}",
        convs=tuple(target.fru_layer("conv", k) for k in range(1, 5)),  # type: ignore[arg-type]
        bns=tuple(target.fru_layer("bn", k) for k in range(1, 4)),  # type: ignore[arg-type]
        scales=tuple(target.fru_layer("scale", k) for k in range(1, 4)),  # type: ignore[arg-type]
        relus=tuple(target.fru_layer("relu", k) for k in range(1, 4)),  # type: ignore[arg-type]
        merge=target.fru_layer("merge"),
        concat=f"{t}_concat",
        raw_blob=f"{target.layer}_inp",
        permuted_blob=f"{t}_perm",
        top_blob=f"topranked_{t}",
        bottom_blob=f"bottomranked_{t}",
        merged_blob=f"{t}_merged",
        concat_blob=f"{t}_concat",
    )


def default_target(layer: str, channels: int, ratio: float = 0.5,
                   depth: Optional[int] = None, depth_ratio: float = 1.0) -> FruTarget:
    """The default rule for any network and layer: N = round(ratio*C), D = depth or N*depth_ratio."""
    if not 0.0 < ratio <= 1.0:
        raise ValueError(f"ratio must be in (0, 1], got {ratio}")
    n = max(1, int(round(ratio * channels)))
    if n > channels:
        raise ValueError(f"N={n} is larger than the {channels} channels of '{layer}'")
    d = int(depth) if depth is not None else max(1, int(round(n * depth_ratio)))
    if d < 1:
        raise ValueError(f"FRU depth must be a positive integer, got {d}")
    return FruTarget(layer=layer, n=n, d=d, short=layer, prefix=f"{layer}_fru_")


@dataclass(frozen=True)
class NetPreset:
    """Everything the toolkit needs to know about one network.

    :param mode: ``explicit`` (imap/remap permutation convs) or ``folded`` (permutation baked
        into the weights).
    :param resize: ``squash`` (resize to ``resize_to`` x ``resize_to``) or ``shorter`` (shorter
        side to ``resize_to``, aspect kept), then a centre crop of ``input_size``.
    :param eval_batch: batch size of the published evaluation scripts.
    :param baseline_top1: clean top-1 used as the restoration-accuracy denominator.
    :param params_baseline: parameter count of the published baseline deploy file.
    :param params_fru: the same with FRUs (imap/remap and BatchNorm's 3 blobs counted).
    :param class_names: names of the classes when the toolkit ships them (else the demo reads
        ImageNet's from a labels file at run time).
    """

    name: str
    file_stem: str
    mode: str
    targets: Tuple[FruTarget, ...]
    input_size: int = 224
    channels: int = 3
    mean_bgr: Tuple[float, ...] = IMAGENET_MEAN_BGR
    resize: str = "squash"
    resize_to: int = 256
    eval_batch: int = 50
    num_classes: int = 1000
    output_blob: str = "prob"
    baseline_top1: Optional[float] = None
    params_baseline: Optional[int] = None
    params_fru: Optional[int] = None
    class_names: Optional[Tuple[str, ...]] = None
    extra: Dict[str, object] = field(default_factory=dict)

    @property
    def input_shape(self) -> Tuple[int, int, int]:
        """``(C, H, W)`` of one input image: the shape every perturbation of this network has."""
        return self.channels, self.input_size, self.input_size

    @property
    def deploy(self) -> Path:
        return PROTOTXT_DIR / self.name / f"deploy_{self.file_stem}.prototxt"

    @property
    def deploy_fru(self) -> Path:
        return PROTOTXT_DIR / self.name / f"deploy_{self.file_stem}_FRU.prototxt"

    @property
    def deploy_fd(self) -> Path:
        """The FD competitor's deploy file (feature denoising blocks after ``targets``)."""
        return PROTOTXT_DIR / self.name / f"deploy_{self.file_stem}_FD.prototxt"

    def weights(self, defended: bool = False, root: Optional[Path] = None, file: Optional[str] = None) -> Path:
        """The one rule for where a caffemodel of this network lies: ``<root>/<Net>/<file>``.

        :param root: folder of the per-network folders (default: the repository's ``weights/``).
        :param file: file name (default ``<stem>.caffemodel``, ``<stem>_FRU.caffemodel`` if ``defended``).
        """
        name = file or f"{self.file_stem}{'_FRU' if defended else ''}.caffemodel"
        return (WEIGHTS_DIR if root is None else Path(root)) / self.name / name

    def target(self, layer: str) -> FruTarget:
        for t in self.targets:
            if t.layer == layer:
                return t
        raise ToolkitError(f"{self.name} has no FRU target '{layer}'; targets: {', '.join(t.layer for t in self.targets)}")


def _plain(i_layers, nd, prefix_of, short_of=lambda layer: layer, suffix_of=lambda layer: ""):
    return tuple(FruTarget(layer=layer, n=n, d=d, short=short_of(layer), prefix=prefix_of(layer),
                           suffix=suffix_of(layer)) for layer, (n, d) in zip(i_layers, nd))


_CAFFENET_TARGETS = _plain(
    [f"conv{i}" for i in range(1, 6)],
    [(48, 36), (128, 96), (192, 144), (192, 144), (128, 144)],
    prefix_of=lambda layer: f"dc{layer[4:]}_")

_VGG_F_TARGETS = _plain(
    [f"conv{i}" for i in range(1, 6)],
    [(32, 32), (128, 96), (128, 128), (128, 128), (128, 128)],
    prefix_of=lambda layer: f"dc{layer[4:]}_")

_GOOGLENET_TARGETS = (
    FruTarget("conv1/7x7_s2", 32, 16, short="conv1", prefix="dc1_"),
    FruTarget("conv2/3x3", 96, 48, short="conv2", prefix="dc2_"),
) + tuple(
    FruTarget(f"inception_{stage}/{kind}", n, d, short=f"inception_{stage}/{kind}",
              prefix=f"inception_{stage}/{kind}_")
    for stage, kind, n, d in [
        ("3a", "3x3", 64, 32), ("3a", "5x5", 16, 8), ("3b", "3x3", 96, 48), ("3b", "5x5", 48, 24),
        ("4a", "3x3", 104, 52), ("4a", "5x5", 24, 12), ("4b", "3x3", 112, 56), ("4b", "5x5", 32, 16),
        ("4d", "3x3", 144, 72), ("4d", "5x5", 32, 16), ("5a", "3x3", 160, 80), ("5a", "5x5", 64, 32)])

_VGG16_TARGETS = (
    FruTarget("conv1_1", 12, 12, short="conv1_1", prefix="dc1_"),
    FruTarget("conv1_2", 12, 12, short="conv1_2", prefix="dc1_", suffix="_conv1_2"),
    FruTarget("conv2_1", 20, 20, short="conv2_1", prefix="dc2_"),
    FruTarget("conv3_1", 54, 54, short="conv3_1", prefix="dc3_"),
    FruTarget("conv4_1", 92, 92, short="conv4_1", prefix="dc4_"),
    FruTarget("conv5_1", 256, 256, short="conv5_1", prefix="dc5_"),
)

_RESNET152_TARGETS = (FruTarget("conv1", 32, 32, short="conv1", prefix="dc1_"),) + tuple(
    FruTarget(f"res{j}_conv2", n, n, short=f"res{j}_conv2", prefix=f"res{j}_c2_dc1_")
    for j, n in [(1, 32), (4, 64), (12, 128), (24, 128), (30, 128), (48, 256)])

FASHION_MNIST_MEAN = (72.94,)  # mean pixel of the 60,000 Fashion-MNIST training images
_FASHIONNET_TARGETS = tuple(default_target(layer, channels)
                            for layer, channels in (("conv1", 32), ("conv2", 64), ("conv3", 96)))

PRESETS: Dict[str, NetPreset] = {
    p.name: p for p in [
        NetPreset("CaffeNet", "caffenet", "explicit", _CAFFENET_TARGETS, resize="squash",
                  eval_batch=100, baseline_top1=0.564, params_baseline=60_965_224, params_fru=63_326_855),
        NetPreset("VGG_F", "vgg_f", "explicit", _VGG_F_TARGETS, resize="shorter",
                  eval_batch=100, baseline_top1=0.584, params_baseline=60_834_536, params_fru=62_567_159),
        NetPreset("GoogLeNet", "googlenet", "explicit", _GOOGLENET_TARGETS, resize="squash",
                  eval_batch=50, baseline_top1=0.686, params_baseline=6_998_552, params_fru=8_388_866),
        NetPreset("VGG16", "vgg16", "explicit", _VGG16_TARGETS, resize="shorter",
                  eval_batch=25, baseline_top1=0.684, params_baseline=130_879_294, params_fru=133_057_554),
        NetPreset("ResNet152", "resnet152", "folded", _RESNET152_TARGETS, mean_bgr=RESNET_MEAN_BGR,
                  resize="shorter", eval_batch=20, baseline_top1=0.79,
                  params_baseline=60_329_023, params_fru=62_754_900),
        # Offline stand-in (defense/networks/fashionnet.py): one grey channel, 28x28, no resize;
        # mean = Fashion-MNIST train pixel mean (72.94); default FRU rule N = C/2, D = N on its convs.
        NetPreset("FashionNet", "fashionnet", "explicit", _FASHIONNET_TARGETS, input_size=28, channels=1,
                  mean_bgr=FASHION_MNIST_MEAN, resize="none", resize_to=28, eval_batch=100, num_classes=10,
                  class_names=FASHION_MNIST_CLASSES),
    ]
}

PUBLISHED_NETS: Tuple[str, ...] = tuple(name for name, p in PRESETS.items() if p.baseline_top1 is not None)
"""The five ImageNet networks of the paper (those with a published top-1), in the paper's order."""


def get_preset(name: str) -> NetPreset:
    """Look a preset up by name (case-insensitive, '-' and '_' alike)."""
    key = name.replace("-", "_").lower()
    for preset in PRESETS.values():
        if preset.name.lower() == key:
            return preset
    raise ToolkitError(f"unknown network '{name}'; valid names: {', '.join(PRESETS)}")


def list_presets() -> Tuple[str, ...]:
    return tuple(PRESETS)
