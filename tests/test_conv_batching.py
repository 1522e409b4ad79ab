"""Batched convolution (caffe_build/patches/conv-batched-gemm.patch): Caffe's CPU convolution runs
one GEMM over several images. Forward and backward must equal the per-image path
(``CAFFE_CONV_BATCH=0``) within 1e-5 of each blob's largest value, for every kind of convolution,
with the images split into chunks by ``CAFFE_CONV_BATCH_MB`` or not.

Image threads (caffe_build/patches/cpu-conv-image-threads.patch): with two OpenBLAS threads the
chunks are split between the cores; the output and the input gradient must be the one-thread bytes,
the weight gradient equal within 1e-5."""
from __future__ import annotations

import re
from pathlib import Path

import numpy as np
import pytest

from defense.core import caffe, L, write_net_param
from defense.devices import blas_thread_count, gpu_available

GPU = gpu_available()
BATCH = 7  # odd, so that a cap of three images leaves a lone image in the last chunk
IN_CHANNELS = 4
SIZE = 13

# name -> Convolution parameters; all 2-D, each a different path through im2col and the GEMMs
VARIANTS = {
    "3x3 pad 1": dict(num_output=6, kernel_size=3, pad=1),
    "3x3 no bias": dict(num_output=6, kernel_size=3, pad=1, bias_term=False),
    "stride 2": dict(num_output=5, kernel_size=3, stride=2),
    "dilation 2": dict(num_output=6, kernel_size=3, pad=2, dilation=2),
    "groups 2": dict(num_output=6, kernel_size=3, pad=1, group=2),
    "groups 4 (depthwise)": dict(num_output=8, kernel_size=3, pad=1, group=4),
    "1x1": dict(num_output=6, kernel_size=1),
    "1x1 no bias, groups 2": dict(num_output=6, kernel_size=1, group=2, bias_term=False),
    "1x1 stride 2": dict(num_output=6, kernel_size=1, stride=2),
    "1x1 pad 1": dict(num_output=6, kernel_size=1, pad=1),
    "kernel 3x2, pad 2x0, stride 1x2": dict(num_output=6, kernel_h=3, kernel_w=2, pad_h=2, pad_w=0,
                                             stride_h=1, stride_w=2),
}


def _net(tmp_path: Path, conv: dict) -> caffe.Net:
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[BATCH, IN_CHANNELS, SIZE, SIZE]))
    n.conv = L.Convolution(n.data, name="conv", **conv)
    spec = n.to_proto()
    spec.force_backward = True
    net = caffe.Net(str(write_net_param(tmp_path / "conv.prototxt", spec)), caffe.TRAIN)
    rng = np.random.default_rng(1)
    for blob in net.params["conv"]:
        blob.data[...] = rng.normal(size=blob.data.shape)
    return net


def _run(net: caffe.Net, x: np.ndarray, top_diff: np.ndarray) -> dict[str, np.ndarray]:
    """Forward, then backward from ``top_diff``: the output, the input's gradient and the
    parameters' gradients (zeroed first: Caffe accumulates them)."""
    for blob in net.params["conv"]:
        blob.diff[...] = 0
    out = net.forward(data=x)["conv"].copy()
    net.blobs["conv"].diff[...] = top_diff
    net.backward()
    result = {"output": out, "input gradient": net.blobs["data"].diff.copy()}
    for i, blob in enumerate(net.params["conv"]):
        result[("weight", "bias")[i] + " gradient"] = blob.diff.copy()
    return result


def _relative_error(got: np.ndarray, want: np.ndarray) -> float:
    return float(np.abs(got - want).max()) / max(float(np.abs(want).max()), 1e-12)


def _numpy_conv(x: np.ndarray, w: np.ndarray, b, conv: dict) -> np.ndarray:
    """Direct float64 convolution with Caffe's meaning of pad, stride, dilation and group."""
    kh, kw = w.shape[2:]
    ph, pw = conv.get("pad_h", conv.get("pad", 0)), conv.get("pad_w", conv.get("pad", 0))
    sh, sw = conv.get("stride_h", conv.get("stride", 1)), conv.get("stride_w", conv.get("stride", 1))
    d = conv.get("dilation", 1)
    groups = conv.get("group", 1)
    xp = np.pad(x, ((0, 0), (0, 0), (ph, ph), (pw, pw)))
    oh = (xp.shape[2] - d * (kh - 1) - 1) // sh + 1
    ow = (xp.shape[3] - d * (kw - 1) - 1) // sw + 1
    cin, cout = x.shape[1] // groups, w.shape[0] // groups
    out = np.zeros((x.shape[0], w.shape[0], oh, ow))
    for g in range(groups):
        xg, wg = xp[:, g * cin:(g + 1) * cin], w[g * cout:(g + 1) * cout]
        for i in range(kh):
            for j in range(kw):
                patch = xg[:, :, i * d:i * d + sh * (oh - 1) + 1:sh, j * d:j * d + sw * (ow - 1) + 1:sw]
                out[:, g * cout:(g + 1) * cout] += np.einsum("nchw,oc->nohw", patch, wg[:, :, i, j])
    return out if b is None else out + b[None, :, None, None]


def test_the_loaded_caffe_is_patched():
    """Otherwise every comparison below would compare the per-image path with itself."""
    maps = Path("/proc/self/maps").read_text()
    libs = sorted(set(re.findall(r"(/\S*libcaffe\S*\.so\S*)", maps)))
    assert libs, "libcaffe is not loaded"
    assert any(b"CAFFE_CONV_BATCH_MB" in Path(lib).read_bytes() for lib in libs), libs


def _mib_for_three_images(net: caffe.Net) -> str:
    """A CAFFE_CONV_BATCH_MB that holds the columns and outputs of three images (float32), so
    that the batch of 7 runs in chunks of 3, 3 and 1."""
    weights, top = net.params["conv"][0].data.shape, net.blobs["conv"].data.shape
    per_image = 4 * (IN_CHANNELS * weights[2] * weights[3] + top[1]) * top[2] * top[3]
    return f"{3.5 * per_image / (1 << 20):.6f}"


def _inputs(net: caffe.Net, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """A random input and top diff of the net's shapes."""
    rng = np.random.default_rng(seed)
    return (rng.normal(size=net.blobs["data"].data.shape).astype(np.float32),
            rng.normal(size=net.blobs["conv"].data.shape).astype(np.float32))


def _on_one_and_two_threads(net: caffe.Net, x: np.ndarray, top_diff: np.ndarray) -> tuple[dict, dict]:
    """``_run`` with one OpenBLAS thread, then with two."""
    with blas_thread_count(1):
        one = _run(net, x, top_diff)
    with blas_thread_count(2):
        two = _run(net, x, top_diff)
    return one, two


def _per_image(tmp_path, monkeypatch, name, chunked: bool, seed: int):
    """Variant ``name``'s net, random input and top diff, and its CPU per-image result (batching
    off); the chunk cap is left set for three images when ``chunked``, batching switched back on."""
    net = _net(tmp_path, VARIANTS[name])
    x, top_diff = _inputs(net, seed)
    if chunked:
        monkeypatch.setenv("CAFFE_CONV_BATCH_MB", _mib_for_three_images(net))
    monkeypatch.setenv("CAFFE_CONV_BATCH", "0")
    per_image = _run(net, x, top_diff)
    monkeypatch.setenv("CAFFE_CONV_BATCH", "1")  # on: the CPU's default is off
    return net, x, top_diff, per_image


@pytest.mark.parametrize("chunked", [False, True], ids=["one chunk", "chunks of three"])
@pytest.mark.parametrize("name", VARIANTS)
def test_batched_equals_per_image(tmp_path, monkeypatch, name, chunked):
    net, x, top_diff, per_image_result = _per_image(tmp_path, monkeypatch, name, chunked, seed=2)
    batched = _run(net, x, top_diff)
    assert batched.keys() == per_image_result.keys()
    for what, want in per_image_result.items():
        assert batched[what].shape == want.shape
        err = _relative_error(batched[what], want)
        assert err <= 1e-5, f"{name}: batched {what} differs from per-image by {err:.2e}"
    w = net.params["conv"][0].data.astype(np.float64)
    b = net.params["conv"][1].data.astype(np.float64) if len(net.params["conv"]) > 1 else None
    reference = _numpy_conv(x.astype(np.float64), w, None, VARIANTS[name])
    with_bias = reference if b is None else reference + b[None, :, None, None]
    assert _relative_error(batched["output"], with_bias) <= 1e-5
    # The gradients through the adjoint identities of a linear map, in float64:
    # <dy, conv(x, w)> = <dx, x> = <dw, w>, and the bias gradient sums dy.
    dy = top_diff.astype(np.float64)
    inner = float(np.sum(dy * reference))
    assert float(np.sum(batched["input gradient"] * x.astype(np.float64))) == pytest.approx(inner, rel=1e-5)
    assert float(np.sum(batched["weight gradient"] * w)) == pytest.approx(inner, rel=1e-5)
    if b is not None:
        np.testing.assert_allclose(batched["bias gradient"], dy.sum(axis=(0, 2, 3)), rtol=1e-5, atol=1e-4)


def test_chunked_gradients_accumulate_over_the_chunks(tmp_path, monkeypatch):
    """The weight gradient sums over every image, whatever the chunking: equal to the sum of
    per-image gradients computed one image at a time."""
    conv = VARIANTS["groups 2"]
    net = _net(tmp_path, conv)
    x, top_diff = _inputs(net, 3)
    monkeypatch.setenv("CAFFE_CONV_BATCH_MB", _mib_for_three_images(net))
    monkeypatch.setenv("CAFFE_CONV_BATCH", "1")
    whole = _run(net, x, top_diff)["weight gradient"]
    single = np.zeros_like(whole, dtype=np.float64)
    for i in range(BATCH):
        xi, di = np.zeros_like(x), np.zeros_like(top_diff)
        xi[i], di[i] = x[i], top_diff[i]
        single += _run(net, xi, di)["weight gradient"]
    assert _relative_error(whole, single) <= 1e-5
    assert float(np.abs(whole).max()) > 1.0  # a real gradient, not zeros on both sides


@pytest.mark.parametrize("chunked", [False, True], ids=["batching off", "chunks of three"])
@pytest.mark.parametrize("name", VARIANTS)
def test_two_threads_give_the_one_thread_bytes(tmp_path, monkeypatch, name, chunked):
    """Batch 7 on two threads: parts of 3 and 4 images (batching off) or of 1 and 2 chunks."""
    net = _net(tmp_path, VARIANTS[name])
    x, top_diff = _inputs(net, 5)
    if chunked:
        monkeypatch.setenv("CAFFE_CONV_BATCH_MB", _mib_for_three_images(net))
    monkeypatch.setenv("CAFFE_CONV_BATCH", "1" if chunked else "0")
    one, two = _on_one_and_two_threads(net, x, top_diff)
    assert two.keys() == one.keys()
    for what, want in one.items():
        if what == "weight gradient":  # each core sums its own images
            assert _relative_error(two[what], want) <= 1e-5, f"{name}: {what}"
        else:
            assert two[what].tobytes() == want.tobytes(), f"{name}: {what} differs from one thread's"


def test_two_threads_split_the_images(tmp_path, monkeypatch):
    """The split happens: the two cores' weight-gradient sums, added afterwards, round otherwise than
    one running sum (these seeds; the bytes of every other result agree, see above)."""
    net = _net(tmp_path, VARIANTS["3x3 pad 1"])
    x, top_diff = _inputs(net, 5)
    monkeypatch.setenv("CAFFE_CONV_BATCH", "0")
    one, two = (result["weight gradient"] for result in _on_one_and_two_threads(net, x, top_diff))
    assert one.tobytes() != two.tobytes()
    assert _relative_error(two, one) <= 1e-5


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA build of Caffe (make setup-cuda) and a GPU")
@pytest.mark.parametrize("chunked", [False, True], ids=["one chunk", "chunks of three"])
@pytest.mark.parametrize("name", VARIANTS)
def test_gpu_batched_equals_cpu_per_image(tmp_path, monkeypatch, name, chunked):
    """The CUDA path (forward_gpu_batched, backward_gpu_batched) against the CPU's per-image path."""
    net, x, top_diff, cpu = _per_image(tmp_path, monkeypatch, name, chunked, seed=4)
    caffe.set_device(0)
    caffe.set_mode_gpu()
    try:
        gpu = _run(net, x, top_diff)
    finally:
        caffe.set_mode_cpu()
    for what, want in cpu.items():
        err = _relative_error(gpu[what], want)
        assert err <= 1e-5, f"{name}: GPU batched {what} differs from CPU per-image by {err:.2e}"
