"""The toolkit's perturbation file, and converters from the formats users bring.

Canonical array: float32 ``(C, H, W)`` (or a stack ``(K, C, H, W)``), C = 3 (BGR) or 1 (grey), pixel units
([0,255] scale), added to the image *before* mean subtraction. The toolkit's file is HDF5:
dataset ``perturbation`` plus attributes (``PerturbationMeta``). Published files are read by
one small pure loader per format, following ``attack_samples/FORMATS.md`` of the reference
data. ``FORMATS`` is the one registry of every format a perturbation file can have (published,
the toolkit's, plain arrays); ``load_any`` reads one perturbation and ``load_perturbations`` a
list of files (stacks unpacked). Conversion happens only here.
"""
from __future__ import annotations

import dataclasses
import json
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

import numpy as np

from defense.core import ToolkitError, atomic_path, input_file

from .array_files import H5_ERRORS, read_h5_dataset, read_mat_variables, read_npy, real_variable

FORMAT_NAME = "fru-toolkit-perturbation"
FORMAT_VERSION = 1
DATASET = "perturbation"
PUBLISHED_SIZE = 224


@dataclass
class PerturbationMeta:
    """What a perturbation file records besides the array."""

    attack: str = "unknown"
    network: str = ""
    input_size: Tuple[int, int] = (PUBLISHED_SIZE, PUBLISHED_SIZE)
    channel_order: str = "BGR"
    value_scale: str = "pixel [0,255]"
    added_before_mean: bool = True
    norm: str = ""
    xi: float = float("nan")
    fooling_rate: float = float("nan")
    data: str = ""
    seed: Optional[int] = None
    attack_params: Dict[str, object] = field(default_factory=dict)
    extra: Dict[str, object] = field(default_factory=dict)


def save_perturbation(path: os.PathLike | str, v: np.ndarray, meta: PerturbationMeta) -> Path:
    """Write ``v`` and ``meta`` atomically as the toolkit's HDF5 perturbation file."""
    import h5py
    v = np.asarray(v, dtype=np.float32)
    _check_canonical(v, str(path))
    with atomic_path(path) as tmp:
        with h5py.File(tmp, "w") as f:
            f.create_dataset(DATASET, data=v)
            f.attrs["format"] = FORMAT_NAME
            f.attrs["version"] = FORMAT_VERSION
            for key, value in dataclasses.asdict(meta).items():
                if isinstance(value, dict):
                    f.attrs[key] = json.dumps(value, sort_keys=True, default=str)
                elif value is None:
                    f.attrs[key] = "null"
                else:
                    f.attrs[key] = value
    return Path(path)


def load_perturbation(path: os.PathLike | str) -> Tuple[np.ndarray, PerturbationMeta]:
    """Read a toolkit perturbation file: (array, metadata)."""
    import h5py
    v = read_h5_dataset(path, DATASET).astype(np.float32)
    _check_canonical(v, str(path))
    try:
        with h5py.File(path, "r") as f:
            attrs = dict(f.attrs)
    except H5_ERRORS as exc:
        raise ToolkitError(f"{path}: its attributes cannot be read ({exc}); rewrite the file") from None
    if attrs.get("format") != FORMAT_NAME:
        raise ToolkitError(f"{path}: not a toolkit perturbation file (no format attribute); "
                           "convert it with 'python -m attacks convert'")
    kw: Dict[str, object] = {}
    for fld in dataclasses.fields(PerturbationMeta):
        if fld.name not in attrs:
            continue
        try:
            kw[fld.name] = _meta_value(fld.name, attrs[fld.name])
        except (TypeError, ValueError, UnicodeDecodeError):  # json.JSONDecodeError is a ValueError
            raise ToolkitError(f"{path}: attribute '{fld.name}' has the wrong type ({attrs[fld.name]!r}); "
                               "rewrite the file with 'python -m attacks convert'") from None
    return v, PerturbationMeta(**kw)  # type: ignore[arg-type]


def _meta_value(name: str, value):
    """One HDF5 attribute as its ``PerturbationMeta`` field's type (TypeError/ValueError if it is not)."""
    if isinstance(value, bytes):
        value = value.decode()
    if name in ("attack_params", "extra"):
        value = json.loads(value)
        if not isinstance(value, dict):
            raise TypeError(name)
        return value
    if name == "seed":
        return None if isinstance(value, str) and value == "null" else int(value)
    if name == "input_size":
        size = tuple(int(a) for a in value)
        if len(size) != 2:
            raise ValueError(name)
        return size
    if name == "added_before_mean":
        return bool(value)
    if isinstance(value, np.generic):
        value = value.item()
    if name in ("xi", "fooling_rate"):
        return float(value)
    if not isinstance(value, str):
        raise TypeError(name)
    return value


def _check_canonical(v: np.ndarray, source: str) -> None:
    if v.ndim not in (3, 4) or v.shape[-3] not in (1, 3):
        raise ToolkitError(f"{source}: perturbation must have shape (C,H,W) or (K,C,H,W) with C 1 or 3, got {v.shape}")
    _check_finite(v, source)


def _check_finite(v: np.ndarray, source: os.PathLike | str) -> None:
    if not np.all(np.isfinite(v)):
        raise ToolkitError(f"{source}: perturbation holds NaN or infinite values; recompute or re-download it")


# ------------------------------------------------------------------ published formats
def _expect(arr: np.ndarray, shape: Tuple[int, ...], path: os.PathLike | str, fmt: str) -> np.ndarray:
    if tuple(arr.shape) != shape:
        raise ToolkitError(f"{path}: a {fmt} file holds an array of shape {shape}, this one {tuple(arr.shape)}; "
                           "check the file or the attack name")
    return arr


def _finish(v: np.ndarray, path: os.PathLike | str) -> np.ndarray:
    """Every loader's last step: contiguous float32, NaN or infinity (also from the cast) refused naming the file."""
    v = np.ascontiguousarray(v, dtype=np.float32)
    _check_finite(v, path)
    return v


def load_uap_h5(path: os.PathLike | str) -> np.ndarray:
    """UAP (l_inf, l_2, stronger): dataset ``v`` (3,224,224), C x W x H (MATLAB order), BGR."""
    v = _expect(read_h5_dataset(path, "v"), (3, PUBLISHED_SIZE, PUBLISHED_SIZE), path, "UAP")
    return _finish(v.transpose(0, 2, 1), path)


def load_fff_npy(path: os.PathLike | str, offset: int = 0) -> np.ndarray:
    """FFF: (1,227,227,3) H x W x C RGB; crop at ``offset`` (0 as in the evaluation script)."""
    v = _expect(read_npy(path), (1, 227, 227, 3), path, "FFF")
    if offset not in (0, 1, 2, 3):
        raise ValueError(f"FFF crop offset must be in 0..3, got {offset}")
    crop = v[0, offset:offset + PUBLISHED_SIZE, offset:offset + PUBLISHED_SIZE, :]
    return _finish(crop.transpose(2, 0, 1)[::-1], path)


def load_nag_npy(path: os.PathLike | str) -> np.ndarray:
    """NAG: (224,224,3) RGB."""
    v = _expect(read_npy(path), (PUBLISHED_SIZE, PUBLISHED_SIZE, 3), path, "NAG")
    return _finish(v.transpose(2, 0, 1)[::-1], path)


def load_sfool_h5(path: os.PathLike | str) -> np.ndarray:
    """S.Fool (SV-UAP): dataset ``v`` (3,227,227); crop [:, 1:225, 1:225], no transpose."""
    v = _expect(read_h5_dataset(path, "v"), (3, 227, 227), path, "S.Fool")
    return _finish(v[:, 1:1 + PUBLISHED_SIZE, 1:1 + PUBLISHED_SIZE], path)


def load_gap_h5(path: os.PathLike | str) -> np.ndarray:
    """GAP: dataset ``v`` (1,3,300,300) in [-1,1], RGB; x16, reverse channels, crop [30:254]."""
    v = _expect(read_h5_dataset(path, "v"), (1, 3, 300, 300), path, "GAP")
    return _finish(16.0 * v[0, ::-1, 30:30 + PUBLISHED_SIZE, 30:30 + PUBLISHED_SIZE], path)


def load_guap_npy(path: os.PathLike | str) -> np.ndarray:
    """G-UAP: (1,224,224,3) RGB; transpose, reverse channels, x1.5."""
    v = _expect(read_npy(path), (1, PUBLISHED_SIZE, PUBLISHED_SIZE, 3), path, "G-UAP")
    return _finish(1.5 * v[0].transpose(2, 0, 1)[::-1], path)


def load_spgd_h5(path: os.PathLike | str) -> np.ndarray:
    """sPGD: dataset ``v`` (3,224,224), used as is."""
    v = _expect(read_h5_dataset(path, "v"), (3, PUBLISHED_SIZE, PUBLISHED_SIZE), path, "sPGD")
    return _finish(v, path)


def _attack_key(attack: str) -> str:
    key = attack.lower().replace("-", "").replace("_", "").replace(".", "").replace(" ", "")
    return {"svuap": "sfool", "singular": "sfool"}.get(key, key)


def load_published(attack: str, path: os.PathLike | str) -> np.ndarray:
    """A published perturbation file as the canonical (3,224,224) float32 BGR array."""
    key = _attack_key(attack)
    if key not in PUBLISHED_LOADERS:
        raise ToolkitError(f"unknown published format '{attack}'; valid: {', '.join(PUBLISHED_LOADERS)}")
    return PUBLISHED_LOADERS[key](path)


def load_mat(path: os.PathLike | str, variable: Optional[str] = None, layout: str = "WHC",
             rgb: bool = True) -> np.ndarray:
    """A perturbation from the original UAP code's ``.mat`` file (v5 or v7.3).

    :param layout: MATLAB's dimension order of the array (``WHC``: Caffe's MATLAB layout,
        width x height x channels, as the original UAP Caffe code stores ``v``).
    :param rgb: the channels are RGB (reversed to BGR here).
    """
    layout = layout.upper()
    if sorted(layout) != ["C", "H", "W"]:
        raise ValueError(f"layout must be a permutation of 'CHW', got {layout!r}")
    variables = read_mat_variables(path)
    if variable is None:
        candidates = [k for k, a in variables.items() if a.ndim == 3]
        if "v" in variables:
            candidates = ["v"]
        if len(candidates) != 1:
            raise ToolkitError(f"{path}: expected one 3-D variable (or 'v'), found {sorted(variables) or 'none'}; "
                               "name the variable")
        variable = candidates[0]
    if variable not in variables:
        raise ToolkitError(f"{path}: has no numeric variable '{variable}' (it has: {', '.join(variables) or 'none'})")
    arr = real_variable(variables, variable, path)
    if arr.ndim != 3 or arr.shape[layout.index("C")] != 3:
        raise ToolkitError(f"{path}: variable '{variable}' has shape {arr.shape}, expected 3 channels in layout {layout}")
    v = arr.transpose([layout.index(a) for a in "CHW"])
    return _finish(v[::-1] if rgb else v, path)


# ------------------------------------------------------------------ the registry
@dataclass(frozen=True)
class PerturbationFormat:
    """One file format: its loader, the file suffix it comes in, and its kind.

    :param kind: ``published`` (a format of the paper's ``Attack_samples/``), ``variant`` (a
        published file read another way, e.g. FFF cropped at offset 1 as the published demo does),
        ``toolkit`` (the toolkit's HDF5 file, single or stacked) or ``array`` (plain arrays).
    """

    name: str
    load: Callable[[os.PathLike | str], np.ndarray]
    suffix: str
    kind: str


def _load_toolkit(path: os.PathLike | str) -> np.ndarray:
    return load_perturbation(path)[0]


def _load_npy(path: os.PathLike | str) -> np.ndarray:
    return _finish(read_npy(path), path)


FORMATS: Dict[str, PerturbationFormat] = {f.name: f for f in (
    PerturbationFormat("uap", load_uap_h5, ".h5", "published"),
    PerturbationFormat("fff", load_fff_npy, ".npy", "published"),
    PerturbationFormat("fff1", lambda path: load_fff_npy(path, offset=1), ".npy", "variant"),
    PerturbationFormat("nag", load_nag_npy, ".npy", "published"),
    PerturbationFormat("sfool", load_sfool_h5, ".h5", "published"),
    PerturbationFormat("gap", load_gap_h5, ".h5", "published"),
    PerturbationFormat("guap", load_guap_npy, ".npy", "published"),
    PerturbationFormat("spgd", load_spgd_h5, ".h5", "published"),
    PerturbationFormat("toolkit", _load_toolkit, ".h5", "toolkit"),
    PerturbationFormat("npy", _load_npy, ".npy", "array"),
    PerturbationFormat("mat", lambda path: load_mat(path), ".mat", "array"),
)}
"""Format name -> ``PerturbationFormat``: every loader of the toolkit, in one place."""

PUBLISHED_LOADERS: Dict[str, Callable[[os.PathLike | str], np.ndarray]] = {
    name: f.load for name, f in FORMATS.items() if f.kind == "published"}
"""The published formats' loaders (a view of ``FORMATS``)."""


def is_toolkit_file(path: os.PathLike | str) -> bool:
    """Whether ``path`` is an HDF5 file holding the toolkit's ``perturbation`` dataset."""
    path = Path(path)
    if path.suffix not in (".h5", ".hdf5") or not path.is_file():
        return False
    import h5py
    try:
        with h5py.File(path, "r") as fh:
            return DATASET in fh
    except H5_ERRORS:
        return False


def detect_format(path: os.PathLike | str, default: str = "toolkit") -> str:
    """The format of a file a user brings: the toolkit's HDF5 file, else a plain ``.npy`` array
    where ``default`` does not itself come as ``.npy`` (FFF, NAG, G-UAP), else ``default``."""
    if default not in FORMATS:
        raise ValueError(f"perturbation format must be one of {', '.join(FORMATS)}, got '{default}'")
    path = Path(path)
    if is_toolkit_file(path):
        return "toolkit"
    if path.suffix == ".npy" and FORMATS[default].suffix != ".npy":
        return "npy"
    return default


def _read(path: os.PathLike | str, fmt: Optional[str]) -> Tuple[Path, np.ndarray]:
    path = Path(path)
    fmt = detect_format(path) if fmt is None else fmt
    if fmt not in FORMATS:
        raise ValueError(f"perturbation format must be one of {', '.join(FORMATS)}, got '{fmt}'")
    path = input_file(path, "perturbation file", "check the path")
    return path, FORMATS[fmt].load(path)


def load_any(path: os.PathLike | str, fmt: Optional[str] = None, expect: Optional[tuple] = None) -> np.ndarray:
    """One perturbation file as a float32 ``(C, H, W)`` array in pixel units (BGR).

    :param fmt: a name of ``FORMATS`` (default: ``detect_format``); a stack is an error here.
    :param expect: the network's input shape, checked here so Caffe never sees a wrong one.
    """
    path, v = _read(path, fmt)
    if v.ndim == 4 and v.shape[0] == 1:
        v = v[0]
    if v.ndim != 3:
        raise ToolkitError(f"{path}: expected one (C, H, W) perturbation, got shape {v.shape}")
    if expect is not None and tuple(v.shape) != tuple(expect):
        raise ToolkitError(f"{path}: perturbation shape {tuple(v.shape)} does not fit the network input {tuple(expect)}")
    return np.ascontiguousarray(v, dtype=np.float32)


def load_perturbations(paths: Sequence[os.PathLike | str], fmt: Optional[str] = None,
                       expect: Optional[tuple] = None) -> List[np.ndarray]:
    """Every perturbation of ``paths`` (single ``(C,H,W)`` or stacked ``(K,C,H,W)`` files), in order.

    :param fmt: the format of every file (default: ``detect_format`` of each: the toolkit's HDF5
        file or a plain ``.npy`` array).
    :param expect: the ``(C, H, W)`` every perturbation must have (the network's input, or the
        first file's), checked here so the message names the file.
    """
    out: List[np.ndarray] = []
    for path in paths:
        path, v = _read(path, fmt)
        if v.ndim not in (3, 4):
            raise ToolkitError(f"{path}: a perturbation must be (C,H,W) or (K,C,H,W), got shape {v.shape}")
        if expect is not None and tuple(v.shape[-3:]) != tuple(expect):
            raise ToolkitError(f"{path}: perturbation shape {tuple(v.shape[-3:])} does not fit {tuple(expect)} "
                               "(the network input, or the first file's)")
        out.extend([v] if v.ndim == 3 else list(v))
    return out
