"""The paper's published numbers and each table's test protocol, as data.

Borkar, Heide, Karam, "Defending Against Universal Attacks Through Selective Feature
Regeneration", CVPR 2020 (arXiv 1906.03444). Numbers are restoration accuracies as the
authors' README reproduces them (Tables 2, 4, 5; Table 3 has no published numbers). The
protocols follow the authors' evaluation scripts (``samenorm_ilsvrc_eval.py``,
``crossnorm_ilsvrc_eval.py``, ``unseencaffenet_ilsvrc.py``, ``unseenresnet152_ilsvrc.py``):

- images: the first ``per_class`` validation images of every class (50 same-norm, 20 otherwise);
- perturbation: for every image one file of a run, drawn with numpy's legacy generator
  (``np.random.seed(seed)`` then ``np.random.randint(1, K + 1)`` per image, in image order);
  a run with one file gives that file to every image;
- clipping: none (the table scripts add the perturbation and never clip; ``--clip`` is offered);
- a case with several runs reports the mean over its runs (S.Fool: conv3- and fc6-based files).

Perturbation names are paths below ``Attack_samples/`` as in ``attacks/published_manifest.json``;
``fmt`` is the loader key of ``attacks.perturbation_io.load_published``.

``DEMO`` holds the single-image demo's defaults per network (``defense_example.py``).
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, Optional, Tuple

from .core import ToolkitError
from .presets import REPO_ROOT, get_preset

TABLES = ("same-norm", "cross-norm", "stronger", "unseen")
TABLE_TITLES = {
    "same-norm": "Table 2: same-norm test (l_inf UAPs, xi = 10; ResNet152 files have l_inf 16)",
    "cross-norm": "Table 3: cross-norm test (l_2 UAPs, xi = 2000, against the l_inf-trained FRUs)",
    "stronger": "Table 4: stronger l_inf UAPs on CaffeNet (xi = 15, 20, 25; FRUs trained at 10)",
    "unseen": "Table 5: unseen universal attacks (FRUs trained on UAPs only)",
}


@dataclass(frozen=True)
class Published:
    """Restoration accuracy of the undefended baseline and of the FRU-defended net, as published."""

    baseline: Optional[float]
    fru: Optional[float]
    source: str = "README of tsborkar/Selective-feature-regeneration"


@dataclass(frozen=True)
class Run:
    """One perturbed pass: each image gets one of ``files`` (drawn at random when several).

    :param label: short name inside its case (``conv3``, ``fc6``); empty for single-run cases.
    """

    files: Tuple[str, ...]
    fmt: str
    label: str = ""


@dataclass(frozen=True)
class TableCase:
    """One column of a table for one network.

    :param key: short attack name (``UAP``, ``xi15``, ``FFF``, ``SFool``, ...).
    :param per_class: validation images per class the published script used.
    :param seed: numpy legacy seed of the per-image file draw.
    :param note: where the protocol comes from when it is not a released script.
    """

    table: str
    net: str
    key: str
    attack: str
    runs: Tuple[Run, ...]
    per_class: int
    seed: int
    published: Published
    note: str = ""

    @property
    def files(self) -> Tuple[str, ...]:
        return tuple(f for run in self.runs for f in run.files)

    @property
    def combine(self) -> str:
        return "single run" if len(self.runs) == 1 else f"mean over the {len(self.runs)} runs"


# ---------------------------------------------------------------- published numbers
TABLE2: Dict[str, Published] = {
    "CaffeNet": Published(0.596, 0.976),
    "VGG_F": Published(0.628, 0.967),
    "GoogLeNet": Published(0.691, 0.970),
    "VGG16": Published(0.681, 0.963),
    "ResNet152": Published(0.670, 0.982),
}
TABLE3: Dict[str, Published] = {net: Published(None, None, "not published") for net in TABLE2}
TABLE4: Dict[int, Published] = {
    15: Published(0.543, 0.952),
    20: Published(0.525, 0.896),
    25: Published(0.519, 0.854),
}
TABLE5: Dict[Tuple[str, str], Published] = {
    ("CaffeNet", "FFF"): Published(0.645, 0.941),
    ("CaffeNet", "NAG"): Published(0.670, 0.840),
    ("CaffeNet", "SFool"): Published(0.815, 0.914),
    ("ResNet152", "GAP"): Published(0.640, 0.922),
    ("ResNet152", "GUAP"): Published(0.726, 0.914),
    ("ResNet152", "sPGD"): Published(0.671, 0.976),
}


# ---------------------------------------------------------------- protocols
def _uap_files(net: str, sub: str, stem: str, count: int) -> Tuple[str, ...]:
    folder = f"UAP/{net}/{sub}" if sub else f"UAP/{net}"
    return tuple(f"{folder}/{stem}_{k}.h5" for k in range(1, count + 1))


def _same_norm(net: str) -> Tuple[TableCase, ...]:
    stem = get_preset(net).file_stem
    run = Run(_uap_files(net, "", f"{stem}_adv_iter", 5), "uap")
    return (TableCase("same-norm", net, "UAP", "UAP l_inf (one of 5 per image)", (run,), 50, 0, TABLE2[net]),)


def _cross_norm(net: str) -> Tuple[TableCase, ...]:
    stem = get_preset(net).file_stem
    run = Run(_uap_files(net, "L_2", f"{stem}_l2_adv_iter", 3), "uap")
    note = "the three ResNet152 l_2 files are byte-identical" if net == "ResNet152" else ""
    return (TableCase("cross-norm", net, "UAP_l2", "UAP l_2 (one of 3 per image)", (run,), 20, 0, TABLE3[net], note),)


STRONGER_NOTE = ("no released script: protocol taken from the commented-out Linf_<xi> line of "
                 "unseencaffenet_ilsvrc.py (20 images per class, seed 1000, one of 4 files per image)")


def _stronger(net: str) -> Tuple[TableCase, ...]:
    return tuple(
        TableCase("stronger", net, f"xi{xi}", f"UAP l_inf xi={xi} (one of 4 per image)",
                 (Run(_uap_files(net, f"Linf_{xi}", f"caffenet_adv_iter_L{xi}", 4), "uap"),),
                 20, 1000, TABLE4[xi], STRONGER_NOTE)
        for xi in (15, 20, 25))


_UNSEEN_RUNS: Dict[str, Dict[str, Tuple[str, Tuple[Run, ...]]]] = {
    "CaffeNet": {
        "FFF": ("FFF (crop at 0)", (Run(("FFF/perturbation_caffenet_mean.npy",), "fff"),)),
        "NAG": ("NAG (perturbation19 only)", (Run(("NAG/perturbation19.npy",), "nag"),)),
        "SFool": ("S.Fool (mean of the conv3- and fc6-based files)",
                  (Run(("SFool/alexnet_singular_uap_5_c3.h5",), "sfool", "conv3"),
                   Run(("SFool/alexnet_singular_uap_5_fc6.h5",), "sfool", "fc6"))),
    },
    "ResNet152": {
        "GAP": ("GAP (guided, x16, crop [30:254])", (Run(("GAP/res152_guided_GAP_epoch_10.h5",), "gap"),)),
        "GUAP": ("G-UAP (x1.5)", (Run(("GUAP/resnet152_with_data.npy",), "guap"),)),
        "sPGD": ("sPGD", (Run(("sPGD/spgd_resnet152.h5",), "spgd"),)),
    },
}


def _unseen(net: str) -> Tuple[TableCase, ...]:
    return tuple(TableCase("unseen", net, key, attack, runs, 20, 1000, TABLE5[(net, key)])
                 for key, (attack, runs) in _UNSEEN_RUNS[net].items())


_PROTOCOLS = {
    "same-norm": (_same_norm, tuple(TABLE2)),
    "cross-norm": (_cross_norm, tuple(TABLE3)),
    "stronger": (_stronger, ("CaffeNet",)),
    "unseen": (_unseen, tuple(_UNSEEN_RUNS)),
}


def table_nets(table: str) -> Tuple[str, ...]:
    """Networks a table reports."""
    if table not in _PROTOCOLS:
        raise ValueError(f"table must be one of {', '.join(TABLES)}, got '{table}'")
    return _PROTOCOLS[table][1]


def table_cases(table: str, net: str) -> Tuple[TableCase, ...]:
    """The columns of ``table`` for ``net`` (a network the table does not report is an error)."""
    nets = table_nets(table)
    name = get_preset(net).name
    if name not in nets:
        raise ToolkitError(f"the {table} table reports {', '.join(nets)}, not {name}")
    return _PROTOCOLS[table][0](name)




# ---------------------------------------------------------------- single-image demo defaults
@dataclass(frozen=True)
class DemoDefaults:
    """What ``defense_example.py`` uses for a network when no option says otherwise.

    :param input: default ``--input``: an image path, or ``fashion:<i>`` (Fashion-MNIST test image i).
    :param attacks: attack name -> (perturbation file, format). Relative files are looked up in
        the published-perturbation folder (names as in ``attacks/published_manifest.json``) or,
        for ``toolkit``/``npy`` files, relative to the repository root.
    :param baseline / fru: (deploy prototxt, caffemodel) relative to the repository root, for
        networks outside ``weights/manifest.json`` (``repo_files``).
    """

    input: str
    attacks: Dict[str, Tuple[str, str]]
    baseline: Optional[Tuple[str, str]] = None
    fru: Optional[Tuple[str, str]] = None
    fetch_hint: Dict[str, str] = field(default_factory=dict)


def repo_files(net: str, defended: bool) -> Tuple[str, str]:
    """(deploy prototxt, caffemodel) of a network whose files live in the repository, relative to
    it: the committed ``prototxt/`` file and ``NetPreset.weights``."""
    preset = get_preset(net)
    files = (preset.deploy_fru, preset.weights(defended=True)) if defended else (preset.deploy, preset.weights())
    return tuple(path.relative_to(REPO_ROOT).as_posix() for path in files)  # type: ignore[return-value]


AUTHORS_COMMIT = "b5e2b93a94e2e7ca0bf2b5fa99676607cb8819ce"  # the README with the released models' Drive ids


@dataclass(frozen=True)
class ReleasedFile:
    """A file of the authors' repository fetched at run time (never shipped here)."""

    name: str
    url: str
    size: int
    sha256: str


DEMO_IMAGE = ReleasedFile(
    name="test_image_icecream.JPEG",
    url=f"https://raw.githubusercontent.com/tsborkar/Selective-feature-regeneration/{AUTHORS_COMMIT}/"
        "test_image_icecream.JPEG",
    size=57753, sha256="0901fc3f3f90210ce6148944c4a720398c7459cd00d02a06712d7eb47f5d94a3")


def _imagenet_demo(net: str) -> DemoDefaults:
    stem = get_preset(net).file_stem
    return DemoDefaults(input=DEMO_IMAGE.name, attacks={  # the image is fetched when missing
        "UAP": (f"UAP/{net}/{stem}_adv_iter_1.h5", "uap"),
        "FFF": ("FFF/perturbation_caffenet_mean.npy", "fff1"),  # the demo crops FFF at offset 1
        "NAG": ("NAG/perturbation19.npy", "nag"),
        "SFool": ("SFool/alexnet_singular_uap_5_c3.h5", "sfool"),
        "GAP": ("GAP/res152_guided_GAP_epoch_10.h5", "gap"),
        "GUAP": ("GUAP/resnet152_with_data.npy", "guap"),
        "sPGD": ("sPGD/spgd_resnet152.h5", "spgd"),
    })


DEMO: Dict[str, DemoDefaults] = {net: _imagenet_demo(net) for net in TABLE2}
# FashionNet: the offline demo, from the files `make reproduce` ships (weights/FashionNet/,
# attacks/samples/FashionNet/); S.Fool is the singular-vector attack, i.e. our SV-UAP; NAG and GAP
# are computed natively (attacks.nag, attacks.gap). The demo image is the first test image that
# the shipped l_inf UAP fools once the perturbed image is clipped, as the demo clips it (a Sandal
# read as a Shirt; seed 0's UAP does not fool fashion:0 after clipping);
# tests/defense/evaluate/test_demo.py checks it still is.
_FASHION_SAMPLES = "attacks/samples/FashionNet"
DEMO["FashionNet"] = DemoDefaults(
    input="fashion:8",
    attacks={"UAP": (f"{_FASHION_SAMPLES}/uap_linf.npy", "npy"),
             "sPGD": (f"{_FASHION_SAMPLES}/spgd.npy", "npy"),
             "SFool": (f"{_FASHION_SAMPLES}/svuap.npy", "npy"),
             "NAG": (f"{_FASHION_SAMPLES}/nag.npy", "npy"),
             "GAP": (f"{_FASHION_SAMPLES}/gap.npy", "npy")},
    baseline=repo_files("FashionNet", defended=False),
    fru=repo_files("FashionNet", defended=True),
    fetch_hint={"baseline": "make reproduce", "fru": "make reproduce", "UAP": "make reproduce",
                "sPGD": "make reproduce", "SFool": "make reproduce", "NAG": "make reproduce", "GAP": "make reproduce"},
)
DEMO_ATTACKS = ("UAP", "FFF", "SFool", "NAG", "GAP", "GUAP", "sPGD")


def demo_defaults(net: str) -> DemoDefaults:
    name = get_preset(net).name
    if name not in DEMO:
        raise ToolkitError(f"no demo defaults for {name}; networks with demo defaults: {', '.join(DEMO)}")
    return DEMO[name]
