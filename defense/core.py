"""Shared plumbing: a quiet pycaffe import, the toolkit's error type, validated file I/O.

pycaffe aborts the whole process on a failed C++ CHECK, so every file is parsed and
checked here, in Python, before Caffe sees it. Writers are atomic (temporary file in the
same folder, then rename) so an interrupted run never leaves a half-written output.
"""
from __future__ import annotations

import argparse
import contextlib
import gzip
import io
import math
import os
import struct
import sys
import tempfile
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Sequence, Tuple

# Caffe's glog prints every layer it builds at INFO level; keep it quiet unless asked.
os.environ.setdefault("GLOG_minloglevel", "2")
# OpenBLAS's idle threads park at once, not spin ~0.1 s on a core Caffe's conv threads need (docs/benchmarks.md)
os.environ.setdefault("OPENBLAS_THREAD_TIMEOUT", "4")

import numpy as np  # noqa: E402

try:  # noqa: E402
    import caffe
    from caffe import layers as L  # noqa: F401  (re-exported for net builders)
    from caffe import params as P  # noqa: F401
    from caffe.proto import caffe_pb2
except ImportError as exc:  # pragma: no cover - only without a Caffe build
    raise ImportError(
        f"pycaffe is not importable ({exc}); run 'make setup' and use ./.venv/bin/python"
    ) from exc
from google.protobuf import text_format  # noqa: E402
from google.protobuf.message import DecodeError  # noqa: E402

from .devices import cuda_device_count  # noqa: E402

Blobs = Dict[str, List[np.ndarray]]
"""Layer name -> its parameter blobs, in Caffe's order (weights, bias, ...)."""


class ToolkitError(Exception):
    """A user-facing problem (bad file, bad option): printed as one line, exit code 2."""


# ---------------------------------------------------------------- atomic writes
@contextlib.contextmanager
def atomic_path(path: os.PathLike | str) -> Iterator[Path]:
    """Yield a temporary path beside ``path``; rename it onto ``path`` only on success."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".part", dir=path.parent)
    os.close(fd)
    umask = os.umask(0)
    os.umask(umask)
    os.chmod(tmp, 0o666 & ~umask)  # mkstemp's 0600 would make outputs private to the writer
    try:
        yield Path(tmp)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)


def write_text(path: os.PathLike | str, text: str) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_text(text)
    return Path(path)


def write_bytes(path: os.PathLike | str, data: bytes) -> Path:
    with atomic_path(path) as tmp:
        tmp.write_bytes(data)
    return Path(path)


# ---------------------------------------------------------------- input files
def input_file(path: os.PathLike | str, what: str, fix: str = "check the path") -> Path:
    """The one checked way an input file is reached: it exists, is a file, and this process may
    read it (tried by opening it: modes do not stop root, a dropped CAP_DAC_OVERRIDE does).

    :param what: how the message names the file; ``fix``: what to do when it is missing.
    """
    path = Path(path)
    if not path.is_file():
        if path.is_dir():
            raise ToolkitError(f"{path}: is a folder, not a {what}; {fix}")
        raise ToolkitError(f"{path}: {what} not found; {fix}")
    try:
        open(path, "rb").close()
    except OSError as exc:
        raise ToolkitError(f"{path}: {what} cannot be read ({exc.strerror or exc}); "
                           "make it readable to this user") from None
    return path


# ---------------------------------------------------------------- prototxt
def read_net_param(path: os.PathLike | str) -> "caffe_pb2.NetParameter":
    """Parse a text prototxt, raising ToolkitError (not a C++ abort) when it is bad."""
    path = input_file(path, "prototxt")
    try:
        return text_format.Parse(path.read_text(encoding="utf-8"), caffe_pb2.NetParameter())
    except (text_format.ParseError, UnicodeDecodeError) as exc:
        msg = str(exc).splitlines()[0]
        raise ToolkitError(f"{path}: not a valid Caffe prototxt ({msg}); fix or regenerate it") from None


def net_param_text(net: "caffe_pb2.NetParameter", header: str = "") -> str:
    body = text_format.MessageToString(net)
    comments = "".join(f"# {line}\n" for line in header.splitlines()) if header else ""
    return comments + body


def write_net_param(path: os.PathLike | str, net: "caffe_pb2.NetParameter", header: str = "") -> Path:
    return write_text(path, net_param_text(net, header))


# ---------------------------------------------------------------- caffemodel
def read_binary_proto(path: os.PathLike | str, message, kind: str, missing_fix: str, corrupt_fix: str):
    """Parse a binary protobuf file (caffemodel, solverstate) into ``message``, or one-line ToolkitError."""
    path = input_file(path, kind, missing_fix)
    try:
        message.ParseFromString(path.read_bytes())
    except DecodeError:
        raise ToolkitError(f"{path}: not a valid {kind} (truncated or corrupt); {corrupt_fix}") from None
    return message


def read_caffemodel(path: os.PathLike | str) -> "caffe_pb2.NetParameter":
    net = read_binary_proto(path, caffe_pb2.NetParameter(), "caffemodel",
                            "check the path or fetch the weights", "download it again")
    if not net.layer and not net.layers:
        raise ToolkitError(f"{path}: caffemodel holds no layers; download it again")
    return net


def _layers(net: "caffe_pb2.NetParameter") -> list:
    """Layers of a caffemodel in either format (current ``layer`` or pre-2015 ``layers``)."""
    return list(net.layer) + list(net.layers)


def _blob_array(blob: "caffe_pb2.BlobProto") -> np.ndarray:
    shape = _stored_shape(blob)
    data = np.asarray(blob.double_data if len(blob.double_data) else blob.data, dtype=np.float32)
    if data.size != int(np.prod(shape)):
        raise ValueError("blob size does not match its shape")
    return data.reshape(shape)


def load_blobs(path: os.PathLike | str) -> Blobs:
    """Read a caffemodel into ``{layer name: [blob arrays]}`` without building a Net."""
    net = read_caffemodel(path)
    out: Blobs = {}
    try:
        for layer in _layers(net):
            if layer.blobs:
                out[layer.name] = [_blob_array(b) for b in layer.blobs]
    except ValueError:
        raise ToolkitError(f"{path}: caffemodel has a blob whose data does not match its shape; download it again") from None
    return out


def save_blobs(path: os.PathLike | str, blobs: Blobs, layer_types: Optional[Dict[str, str]] = None) -> Path:
    """Write ``{layer name: [arrays]}`` as a caffemodel that Caffe loads by layer name."""
    net = caffe_pb2.NetParameter()
    for name, arrays in blobs.items():
        layer = net.layer.add(name=name)
        if layer_types and name in layer_types:
            layer.type = layer_types[name]
        for arr in arrays:
            b = layer.blobs.add()
            b.shape.dim.extend(int(d) for d in np.shape(arr))
            b.data.extend(np.asarray(arr, dtype=np.float32).ravel().tolist())
    return write_bytes(path, net.SerializeToString())


def net_blobs(net: "caffe.Net") -> Blobs:
    """Copies of a live Net's parameters (views die at the next forward/backward)."""
    return {name: [b.data.copy() for b in blobs] for name, blobs in net.params.items()}


def set_net_blobs(net: "caffe.Net", blobs: Blobs, strict: bool = True) -> None:
    for name, arrays in blobs.items():
        if name not in net.params:
            if strict:
                raise ToolkitError(f"weights name layer '{name}', which the network does not have")
            continue
        targets = net.params[name]
        if len(targets) != len(arrays):
            raise ToolkitError(f"layer '{name}': weights have {len(arrays)} blobs, the network {len(targets)}")
        for t, a in zip(targets, arrays):
            if t.data.size != np.size(a):
                raise ToolkitError(
                    f"layer '{name}': weight shape {tuple(np.shape(a))} does not fit the network's {t.data.shape}")
            t.data[...] = np.asarray(a, dtype=np.float32).reshape(t.data.shape)


# ---------------------------------------------------------------- array sizes, IDX (MNIST format)
MAX_ARRAY_BYTES = 8 * 2 ** 30  # one array read from a file; a header (a few bytes) may declare terabytes


def check_array_bytes(shape: Sequence[int], itemsize: int, source: os.PathLike | str) -> None:
    """Refuse a declared ``shape`` of ``itemsize``-byte elements that needs over ``MAX_ARRAY_BYTES``."""
    size = math.prod(int(d) for d in shape) * int(itemsize)
    if size > MAX_ARRAY_BYTES:
        raise ToolkitError(f"{source}: declares an array of shape {tuple(int(d) for d in shape)} ({size / 2 ** 30:.3g} GiB), "
                           f"over the toolkit's limit of {MAX_ARRAY_BYTES // 2 ** 30} GiB for one array; check the file")


_IDX_UBYTE = 0x08  # IDX type code for unsigned bytes


def read_idx(path: os.PathLike | str, ndim: int, fix: str) -> np.ndarray:
    """Read a gzipped IDX file of unsigned bytes with ``ndim`` dimensions, validating its header.

    :param fix: the command that repairs a missing or corrupt file, quoted in the error.
    """
    path = input_file(path, "file", f"install it with '{fix}'")
    header = 4 + 4 * ndim
    try:
        with gzip.open(path, "rb") as fh:  # the header first: its shape bounds what is read after it
            head = fh.read(header)
            if len(head) < header:
                raise ToolkitError(f"{path}: truncated IDX header; reinstall it with '{fix}'")
            zero, dtype_code, dims = struct.unpack(">HBB", head[:4])
            if zero != 0 or dtype_code != _IDX_UBYTE or dims != ndim:
                raise ToolkitError(f"{path}: bad IDX magic number 0x{head[:4].hex()} (expected 0x0000"
                                   f"{_IDX_UBYTE:02x}{ndim:02x}); reinstall it with '{fix}'")
            shape = struct.unpack(f">{ndim}I", head[4:])
            check_array_bytes(shape, 1, path)
            size = math.prod(shape)
            raw = fh.read(size + 1)  # one byte more than declared tells a longer file
    except (OSError, EOFError, gzip.BadGzipFile) as exc:
        raise ToolkitError(f"{path}: not a readable gzip file ({exc}); reinstall it with '{fix}'") from None
    if len(raw) != size:
        raise ToolkitError(f"{path}: IDX data has {len(raw)}{'+' if len(raw) > size else ''} bytes but its header "
                           f"says {size}; reinstall it with '{fix}'")
    return np.frombuffer(raw, dtype=np.uint8).reshape(shape)


# ---------------------------------------------------------------- weights fit
Shapes = Dict[str, List[Tuple[int, ...]]]
"""Layer name -> the shapes of its parameter blobs."""

FIT_FIX = "use the caffemodel that belongs to this prototxt"


def param_shapes(net: "caffe.Net") -> Shapes:
    return {name: [tuple(b.data.shape) for b in blobs] for name, blobs in net.params.items()}


def _stored_shape(blob: "caffe_pb2.BlobProto") -> Tuple[int, ...]:
    if blob.HasField("shape"):
        return tuple(int(d) for d in blob.shape.dim)
    return (blob.num, blob.channels, blob.height, blob.width)  # legacy 4-D blob


def caffemodel_shapes(path: "os.PathLike | str | caffe_pb2.NetParameter", label: Optional[str] = None) -> Shapes:
    """``{layer: [blob shapes]}`` of a caffemodel (a file, or one already parsed), read without
    converting its data; a blob whose stored values do not fill its shape is a ToolkitError.

    Layers without blobs are kept (as ``[]``): Caffe's ``copy_from`` aborts on a layer whose name
    matches a parameter layer of the net but that holds no blobs, so the fit check must see it."""
    model = path if isinstance(path, caffe_pb2.NetParameter) else read_caffemodel(path)
    label = label or str(path)
    shapes: Shapes = {}
    for layer in _layers(model):
        shapes[layer.name] = []
        for blob in layer.blobs:
            shape, stored = _stored_shape(blob), len(blob.double_data) or len(blob.data)
            if stored != int(np.prod(shape)):
                raise ToolkitError(f"{label}: layer '{layer.name}' holds {stored} values for shape {shape} "
                                   "(corrupt file); download it again")
            shapes[layer.name].append(shape)
    return shapes


def same_shape(stored: Tuple[int, ...], wanted: Tuple[int, ...]) -> bool:
    """Caffe's rule (``Blob::ShapeEquals``): equal, or a legacy 4-D blob whose leading 1s pad ``wanted``."""
    if tuple(stored) == tuple(wanted):
        return True
    return len(stored) == 4 and len(wanted) < 4 and tuple(stored) == (1,) * (4 - len(wanted)) + tuple(wanted)


def weights_misfit(stored: Shapes, wanted: Shapes, require_all: bool = False) -> Optional[Tuple[str, List[str]]]:
    """Why a caffemodel (``stored``) does not fit a net (``wanted``): ``("missing", layers)`` or
    ``("shape", [layer])``; None when it fits.

    :param require_all: every parameter layer of the net must be in the caffemodel (else only the
        layers both share by name are checked, as ``caffe.Net.copy_from`` does).
    """
    missing = [name for name in wanted if name not in stored]
    if require_all and missing:
        return "missing", missing
    for name, want in wanted.items():
        got = stored.get(name)
        if got is not None and (len(got) != len(want) or not all(same_shape(g, w) for g, w in zip(got, want))):
            return "shape", [name]
    return None


def check_weights_fit(weights: os.PathLike | str, wanted: Shapes, prototxt: os.PathLike | str,
                      require_all: bool = False, label: Optional[str] = None, subject: str = "the caffemodel",
                      fix: str = FIT_FIX, stored: Optional[Shapes] = None) -> None:
    """The one check that a caffemodel fits a net (see ``weights_misfit``); a one-line ToolkitError if not.

    :param label: how the message names the file (default: its path); ``subject``: how the sentence
        names it; ``fix``: what the user should do; ``stored``: its shapes, if already read.
    """
    stored = caffemodel_shapes(weights, label) if stored is None else stored
    misfit = weights_misfit(stored, wanted, require_all)
    if misfit is None:
        return
    kind, names = misfit
    if kind == "missing":
        more = f" (+{len(names) - 3} more)" if len(names) > 3 else ""
        raise ToolkitError(f"{label or weights}: {subject} lacks layer(s) {', '.join(names[:3])}{more} "
                           f"that {prototxt} needs; {fix}")
    name = names[0]
    raise ToolkitError(f"{label or weights}: layer '{name}' of {subject} has blob shapes {stored[name]} but "
                       f"{prototxt} needs {wanted[name]}; {fix}")


def check_finite_params(net: "caffe.Net", weights: os.PathLike | str) -> None:
    """Refuse weights holding NaN or infinity, which no trained net has and which turn every
    activation downstream into NaN (and, before the max-pooling patch, corrupted the heap)."""
    for name, blobs in net.params.items():
        for i, blob in enumerate(blobs):
            if not np.isfinite(blob.data).all():
                raise ToolkitError(f"{weights}: layer '{name}' blob {i} holds NaN or infinite values; "
                                   "use a caffemodel that training did not break")


def copy_weights(net: "caffe.Net", weights: os.PathLike | str, prototxt: os.PathLike | str,
                 require_all: bool = False) -> None:
    """The one way a caffemodel goes into a live net: fit checked first, values checked after."""
    check_weights_fit(weights, param_shapes(net), prototxt, require_all=require_all)
    net.copy_from(str(weights))
    check_finite_params(net, weights)


# ---------------------------------------------------------------- solver
def solver_param(net: "str | caffe_pb2.NetParameter | None" = None, *, solver_type: str = "SGD",
                 solver_mode: Optional[str] = None, **fields) -> "caffe_pb2.SolverParameter":
    """The one ``SolverParameter`` builder (FRU training, the FashionNet baseline, the toy nets).

    Only the fields given (not None, not empty) are set, so a written solver file names nothing
    it does not use.

    :param net: the train net's file name, or the net itself (inlined as ``net_param``).
    :param solver_mode: ``CPU`` or ``GPU`` (read by Caffe's command-line tool, not by pycaffe).
    :param fields: any other ``SolverParameter`` field (``base_lr``, ``max_iter``, ``stepvalue`` ...).
    """
    for name in ("base_lr", "max_iter", "stepsize"):
        if fields.get(name) is not None and fields[name] <= 0:
            raise ValueError(f"{name} must be positive, got {fields[name]}")
    for name in ("base_lr", "max_iter"):
        if fields.get(name) is None:
            raise ValueError(f"{name} is needed")
    if fields.get("snapshot") is not None and fields["snapshot"] < 0:
        raise ValueError(f"snapshot must be 0 or positive, got {fields['snapshot']}")
    fields = {k: v for k, v in fields.items() if v is not None and not (isinstance(v, (list, tuple)) and not v)}
    fields["type"] = solver_type
    if solver_mode is not None:
        fields["solver_mode"] = getattr(caffe_pb2.SolverParameter, solver_mode)
    if isinstance(net, caffe_pb2.NetParameter):
        fields["net_param"] = net
    elif net is not None:
        fields["net"] = net
    return caffe_pb2.SolverParameter(**fields)


def subtract_mean(x: np.ndarray, mean: Sequence[float]) -> np.ndarray:
    """Pixel-unit images (N, C, H, W) -> network input (per-channel mean removed)."""
    mean = np.asarray(mean, dtype=np.float32)
    if mean.shape != (x.shape[1],):
        raise ValueError(f"mean has {mean.size} values but the images have {x.shape[1]} channels")
    return x - mean[None, :, None, None]


def step_solver(solver: "caffe.Solver", inputs: Dict[str, np.ndarray]) -> None:
    """The one way Python feeds and steps a Caffe solver (``SolverWrapper``, the toy net, the
    generative attacks): each array into the train net's Input blob of its name, one iteration."""
    for name, value in inputs.items():
        solver.net.blobs[name].data[...] = value
    solver.step(1)


# ---------------------------------------------------------------- net loading
def load_net(net: os.PathLike | str | "caffe_pb2.NetParameter", weights: os.PathLike | str | None = None,
             phase: int | None = None, force_backward: bool = False,
             source: os.PathLike | str | None = None, require_all: bool = False) -> "caffe.Net":
    """The one net loader: a caffe.Net from a prototxt path or a NetParameter, after validating
    the net and the weights in Python (no C++ abort on bad input).

    :param source: how errors name a NetParameter (default: the path, or ``<net>``).
    :param require_all: ``weights`` must hold every parameter layer (a net used as it is, not one
        whose new layers are about to be trained).
    """
    if isinstance(net, caffe_pb2.NetParameter):
        param, source = net, source or "<net>"
    else:
        param, source = read_net_param(net), source or net
    if weights is not None:
        read_caffemodel(weights)
    if force_backward and not param.force_backward:
        param = _copy(param)
        param.force_backward = True
    validate_net_param(param, source)
    phase = caffe.TEST if phase is None else phase
    text = net_param_text(param)
    check_net_builds(text, phase, source)
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.prototxt"
        path.write_text(text)
        loaded = caffe.Net(str(path), phase)
    if weights is not None:
        copy_weights(loaded, weights, source, require_all=require_all)
    return loaded


_BUILT: set = set()
"""(sha256 of a net's text, phase) that a child process built without a Caffe abort."""

_BUILD_CHECK = "import sys, caffe; caffe.Net(sys.argv[1], int(sys.argv[2]))"


def check_net_builds(text: str, phase: int, source: os.PathLike | str = "<net>") -> None:
    """Build the net once in a short-lived child process before this process does.

    Only Caffe knows all the definitions it rejects (a kernel larger than its input, num_output 0,
    a duplicate top, no kernel_size, ...), and it rejects them by aborting the process: in the child,
    that becomes one ToolkitError quoting Caffe's reason and naming the layer. Each net is checked
    once per process."""
    import hashlib
    import subprocess

    key = (hashlib.sha256(text.encode()).hexdigest(), int(phase))
    if key in _BUILT:
        return
    with tempfile.TemporaryDirectory() as tmp:
        path = Path(tmp) / "net.prototxt"
        path.write_text(text)
        env = dict(os.environ, GLOG_minloglevel="0", GLOG_logtostderr="1")  # INFO names the layer being set up
        res = subprocess.run([sys.executable, "-c", _BUILD_CHECK, str(path), str(int(phase))],
                             capture_output=True, text=True, env=env)
    if res.returncode != 0:
        lines = res.stderr.splitlines()
        fatal = [ln.split("] ", 1)[1] for ln in lines if ln.startswith("F") and "] " in ln]
        layers = [ln.rsplit(" ", 1)[-1] for ln in lines if "] Creating layer " in ln or "] Setting up " in ln]
        reason = fatal[-1] if fatal else (lines[-1] if lines else f"exit status {res.returncode}")
        where = f" at layer '{layers[-1]}'" if layers else ""
        raise ToolkitError(f"{source}: Caffe cannot build this net{where}: {reason}")
    _BUILT.add(key)


def _copy(param: "caffe_pb2.NetParameter") -> "caffe_pb2.NetParameter":
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    return out


def validate_net_param(param: "caffe_pb2.NetParameter", source: os.PathLike | str = "<net>") -> None:
    """Catch in Python the mistakes on which Caffe's C++ CHECKs would abort the process."""
    if param.layers:  # pre-2015 V1 format: Caffe upgrades it itself; V1 nets are not checked further
        return
    known = set(caffe.layer_type_list())
    blobs = set(param.input)
    for layer in param.layer:
        if layer.type not in known:
            raise ToolkitError(f"{source}: layer '{layer.name}' has unknown type '{layer.type}'")
        for bottom in layer.bottom:
            if bottom not in blobs:
                raise ToolkitError(f"{source}: layer '{layer.name}' reads blob '{bottom}', which no earlier layer makes")
        blobs.update(layer.top)


def check_gpus(gpus: Sequence[int], option: str = "--gpu") -> None:
    """Refuse device numbers this build or machine cannot serve, before Caffe CHECKs (and aborts) on them."""
    count, reason = cuda_device_count()
    shown = ",".join(str(g) for g in gpus)
    if count is None:
        raise ToolkitError(f"{option} {shown}: this Caffe build is CPU-only; build the CUDA variant with "
                           "'make setup-cuda' and run ./.venv-cuda/bin/python")
    if count == 0:
        raise ToolkitError(f"{option} {shown}: no usable GPU on this machine ({reason}); leave out {option} to run on the CPU")
    missing = [g for g in gpus if not 0 <= g < count]
    if missing:
        raise ToolkitError(f"{option} {shown}: there is no GPU {missing[0]} (this machine has {count}: "
                           f"0 to {count - 1})")


def set_mode(gpu: Optional[int] = None, seed: Optional[int] = None) -> None:
    """CPU, or GPU ``gpu`` (checked first); called once, by entry points."""
    if gpu is None or gpu < 0:
        caffe.set_mode_cpu()
    else:
        check_gpus([int(gpu)])
        caffe.set_device(int(gpu))
        caffe.set_mode_gpu()
    if seed is not None:
        caffe.set_random_seed(int(seed))


# ---------------------------------------------------------------- entry points
def positive_int(text: str) -> int:
    """argparse type: an integer >= 1 (a batch size, a count, a limit)."""
    try:
        value = int(text)
    except ValueError:
        value = 0
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be a positive integer, got '{text}'")
    return value


def seed_int(text: str) -> int:
    """argparse type: a seed numpy and Caffe both accept, 0 <= seed < 2**32."""
    try:
        value = int(text)
    except ValueError:
        value = -1
    if not 0 <= value < 2 ** 32:
        raise argparse.ArgumentTypeError(f"must be an integer from 0 to 4294967295, got '{text}'")
    return value


def number_list(text: str, option: str, kind: type = int) -> List:
    """Comma-separated numbers given to ``option`` (``0,1``, ``104,117,123``); a bad one is a
    one-line error naming the option (not Python's "invalid literal for int()")."""
    try:
        values = [kind(item) for item in text.split(",") if item.strip()]
    except ValueError:
        values = None
    if not values or not all(math.isfinite(v) for v in values):
        noun = "integers" if kind is int else "numbers"
        raise ToolkitError(f"{option} takes {noun} separated by commas, got '{text}'")
    return values


def _parsers(parser: argparse.ArgumentParser, args: Optional[argparse.Namespace] = None) -> Iterator:
    """The parser and its sub-command parsers (given ``args``: only the sub-commands chosen)."""
    yield parser
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            subs = action.choices.values() if args is None else [action.choices.get(getattr(args, action.dest, None))]
            for sub in filter(None, subs):
                yield from _parsers(sub, args)


def _outputs(parser: argparse.ArgumentParser) -> list:
    """Its output options: those whose type has ``check_output`` (``defense.outputs.OutputPath``)."""
    return [a for a in parser._actions if hasattr(a.type, "check_output")]


def parse_args(parser, argv: Optional[Sequence[str]] = None):
    """``parser.parse_args(argv)`` with argparse's errors as one line (its usage text dropped),
    then every declared output option checked (``defense.outputs``: not an input, writable, the
    right kind), before the command does anything; its ``--help`` states the output rule."""
    for p in _parsers(parser):
        if _outputs(p) and _outputs(p)[0].type.help not in (p.epilog or ""):
            p.epilog = "\n\n".join(filter(None, [p.epilog, _outputs(p)[0].type.help]))
    captured = io.StringIO()
    try:
        with contextlib.redirect_stderr(captured):
            args = parser.parse_args(argv)
    except SystemExit as exc:
        lines = [line for line in captured.getvalue().splitlines() if line.strip()]
        if exc.code == 2 and lines:
            print(lines[-1], file=sys.stderr)
        else:
            sys.stderr.write(captured.getvalue())
        raise
    sys.stderr.write(captured.getvalue())
    for p in _parsers(parser, args):  # Python 3.11's argparse drops the value of '--opt=--', leaving []
        for a in p._actions:
            if a.option_strings and a.nargs is None and getattr(args, a.dest, None) == [] and a.default != []:
                print(f"{p.prog}: error: argument {'/'.join(a.option_strings)}: expected one argument", file=sys.stderr)
                raise SystemExit(2)
    outputs = [a for p in _parsers(parser, args) for a in _outputs(p)]
    for action in outputs:
        if getattr(args, action.dest, None) is not None:
            action.type.check_output(args, action, {a.dest for a in outputs})
    return args


def run_cli(fn: Callable[[Optional[Sequence[str]]], int], argv: Optional[Sequence[str]] = None) -> int:
    """Run an entry point: ToolkitError and ValueError become one line on stderr, exit code 2."""
    try:
        return fn(argv)
    except (ToolkitError, ValueError) as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        return 130
