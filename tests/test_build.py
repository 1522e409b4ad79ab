"""The Caffe build is real: layers the FRUs use run forward and backward and match numpy."""
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from defense.core import caffe, L, P, load_blobs, save_blobs, write_net_param
from defense.devices import cuda_device_count, cuda_runtime_path, gpu_available

GPU = gpu_available()

RNG = np.random.default_rng(0)


def _fru_like_net(batch: int = 2):
    """Conv -> BN -> Scale -> ReLU -> Slice -> Eltwise/Concat -> InnerProduct: every FRU layer type."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[batch, 3, 6, 6]))
    n.conv = L.Convolution(n.data, name="conv", num_output=4, kernel_size=3, pad=1, bias_term=True)
    n.bn = L.BatchNorm(n.conv, name="bn", use_global_stats=True)
    n.sc = L.Scale(n.bn, name="sc", bias_term=True)
    n.relu = L.ReLU(n.sc, name="relu")
    n.top, n.bottom = L.Slice(n.relu, name="slice", ntop=2, slice_param=dict(axis=1, slice_point=[2]))
    n.fru = L.Convolution(n.top, name="fru", num_output=2, kernel_size=1, bias_term=False)
    n.merge = L.Eltwise(n.top, n.fru, name="merge", operation=P.Eltwise.SUM)
    n.cat = L.Concat(n.merge, n.bottom, name="cat", axis=1)
    n.fc = L.InnerProduct(n.cat, name="fc", num_output=5)
    net = n.to_proto()
    net.force_backward = True
    return net


def _conv2d(x, w, b, pad):
    xp = np.pad(x, ((0, 0), (0, 0), (pad, pad), (pad, pad)))
    k = w.shape[-1]
    out = np.zeros((x.shape[0], w.shape[0], x.shape[2], x.shape[3]))
    for i in range(x.shape[2]):
        for j in range(x.shape[3]):
            patch = xp[:, :, i:i + k, j:j + k]
            out[:, :, i, j] = np.einsum("nchw,ochw->no", patch, w)
    return out + b[None, :, None, None]


def _numpy_forward(x, p):
    conv = _conv2d(x, p["conv"][0], p["conv"][1], 1)
    mean, var = p["bn"][0] / p["bn"][2][0], p["bn"][1] / p["bn"][2][0]
    bn = (conv - mean[None, :, None, None]) / np.sqrt(var[None, :, None, None] + 1e-5)
    sc = bn * p["sc"][0][None, :, None, None] + p["sc"][1][None, :, None, None]
    relu = np.maximum(sc, 0)
    top, bottom = relu[:, :2], relu[:, 2:]
    fru = np.einsum("nchw,oc->nohw", top, p["fru"][0][:, :, 0, 0])
    cat = np.concatenate([top + fru, bottom], axis=1)
    return cat.reshape(len(x), -1) @ p["fc"][0].T + p["fc"][1]


@pytest.fixture()
def fru_like(tmp_path):
    path = write_net_param(tmp_path / "net.prototxt", _fru_like_net())
    net = caffe.Net(str(path), caffe.TEST)
    for name, blobs in net.params.items():
        for b in blobs:
            b.data[...] = RNG.normal(size=b.data.shape)
    bn = net.params["bn"]
    bn[1].data[...] = RNG.uniform(0.5, 2.0, size=bn[1].data.shape)  # variance > 0
    bn[2].data[...] = 2.0  # BatchNorm's moving-average scale factor
    return net, path


def test_forward_matches_numpy(fru_like):
    net, _ = fru_like
    x = RNG.normal(size=(2, 3, 6, 6)).astype(np.float32)
    out = net.forward(data=x)["fc"].copy()
    params = {k: [b.data.astype(np.float64) for b in v] for k, v in net.params.items()}
    np.testing.assert_allclose(out, _numpy_forward(x.astype(np.float64), params), rtol=1e-4, atol=1e-4)


def test_input_gradient_matches_finite_differences(fru_like):
    net, _ = fru_like
    x = RNG.normal(size=(2, 3, 6, 6))
    params = {k: [b.data.astype(np.float64) for b in v] for k, v in net.params.items()}
    g_out = RNG.normal(size=(2, 5))
    net.forward(data=x.astype(np.float32))
    net.blobs["fc"].diff[...] = g_out
    grad = net.backward(start="fc")["data"].copy()

    def loss(xx):
        return float(np.sum(_numpy_forward(xx, params) * g_out))

    eps = 1e-5
    for idx in [(0, 0, 0, 0), (0, 1, 2, 3), (1, 2, 5, 5), (1, 0, 3, 1), (0, 2, 4, 2)]:
        xp, xm = x.copy(), x.copy()
        xp[idx] += eps
        xm[idx] -= eps
        numeric = (loss(xp) - loss(xm)) / (2 * eps)
        assert grad[idx] == pytest.approx(numeric, rel=1e-4, abs=1e-4)


class DoubleLayer(caffe.Layer):
    """A Python layer: y = 2x, dy/dx = 2."""

    def setup(self, bottom, top):
        if len(bottom) != 1:
            raise Exception("DoubleLayer takes one bottom")

    def reshape(self, bottom, top):
        top[0].reshape(*bottom[0].data.shape)

    def forward(self, bottom, top):
        top[0].data[...] = 2 * bottom[0].data

    def backward(self, top, propagate_down, bottom):
        bottom[0].diff[...] = 2 * top[0].diff


def _pool_relu_net(tmp_path, slope: float, pad: int = 1):
    """Input -> max pooling (3x3, stride 2; pad 1 cuts windows at the border, pad 0 keeps every
    window whole, the patch's unrolled path) -> ReLU, with gradients to the input: the two layers
    our branch-free CPU patch rewrites."""
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3, 7, 8]))
    n.pool = L.Pooling(n.data, pool=P.Pooling.MAX, kernel_size=3, stride=2, pad=pad)
    n.relu = L.ReLU(n.pool, negative_slope=slope)
    net = n.to_proto()
    net.force_backward = True
    return caffe.Net(str(write_net_param(tmp_path / f"pool_relu_{slope}_{pad}.prototxt", net)), caffe.TEST)


def _max_pool_reference(x, k=3, stride=2, pad=1):
    """Caffe's max pooling: windows clipped to the image, the first maximum (in row-major order)
    wins ties, NaN never wins, a window with nothing above -FLT_MAX gives -FLT_MAX at its first
    element; returns the output and each output's flat input index."""
    n, c, h, w = x.shape
    ph = int(np.ceil((h + 2 * pad - k) / stride)) + 1
    pw = int(np.ceil((w + 2 * pad - k) / stride)) + 1
    out, arg = np.full((n, c, ph, pw), -np.finfo(np.float32).max, np.float32), np.full((n, c, ph, pw), -1)
    for i in range(ph):
        for j in range(pw):
            h0, w0 = i * stride - pad, j * stride - pad
            rows = range(max(h0, 0), min(h0 + k, h))
            cols = range(max(w0, 0), min(w0 + k, w))
            arg[:, :, i, j] = rows[0] * w + cols[0]  # kept where nothing beats -FLT_MAX
            for r in rows:
                for q in cols:
                    better = x[:, :, r, q] > out[:, :, i, j]  # NaN compares False
                    out[:, :, i, j] = np.where(better, x[:, :, r, q], out[:, :, i, j])
                    arg[:, :, i, j] = np.where(better, r * w + q, arg[:, :, i, j])
    return out, arg


@pytest.mark.parametrize("pad", [1, 0])
@pytest.mark.parametrize("slope", [0.0, 0.1])
def test_max_pooling_and_relu_are_exact_with_ties_and_nan(tmp_path, slope, pad):
    """Bit-exact against numpy: ties (ReLU-like zeros, repeated values), NaN, -inf and -FLT_MAX
    (never the maximum), negative values; the backward pass routes each gradient to the first
    maximum and scales it by 1 or the slope."""
    net = _pool_relu_net(tmp_path, slope, pad)
    lowest = -np.finfo(np.float32).max
    x = RNG.choice(np.array([-2.0, -0.5, 0.0, 0.0, 0.25, 1.5, np.nan, -np.inf, lowest], np.float32),
                   size=(2, 3, 7, 8), p=[0.14, 0.14, 0.14, 0.14, 0.14, 0.14, 0.06, 0.06, 0.04])
    x[0, 0, 0, 1] = np.nan
    x[1, 1, :3, :3] = [[np.nan, -np.inf, lowest], [-np.inf, np.nan, np.nan], [lowest, -np.inf, np.nan]]
    x[1, 2, :3, :3] = [[-np.inf, -np.inf, -0.5], [np.nan, 1.5, 1.5], [1.5, -0.5, np.nan]]
    net.blobs["data"].data[...] = x
    net.forward()
    pooled, arg = _max_pool_reference(x, pad=pad)
    np.testing.assert_array_equal(net.blobs["pool"].data, pooled)
    relu = np.where(pooled > 0, pooled, pooled * np.float32(slope))
    np.testing.assert_array_equal(net.blobs["relu"].data, relu)
    top_diff = RNG.standard_normal(relu.shape).astype(np.float32)
    net.blobs["relu"].diff[...] = top_diff
    net.backward(start="relu")
    pool_diff = top_diff * np.where(pooled > 0, np.float32(1), np.float32(slope))
    np.testing.assert_array_equal(net.blobs["pool"].diff, pool_diff)
    expected = np.zeros_like(x)
    for idx in np.ndindex(arg.shape):
        b, c = idx[:2]
        expected[b, c].flat[arg[idx]] += pool_diff[idx]
    np.testing.assert_array_equal(net.blobs["data"].diff, expected)


def test_python_layer(tmp_path):
    n = caffe.NetSpec()
    n.data = L.Input(shape=dict(dim=[2, 3]))
    n.double = L.Python(n.data, name="double", python_param=dict(module="test_build", layer="DoubleLayer"))
    param = n.to_proto()
    param.force_backward = True
    path = write_net_param(tmp_path / "py.prototxt", param)
    sys.path.insert(0, str(Path(__file__).parent))
    net = caffe.Net(str(path), caffe.TEST)
    x = RNG.normal(size=(2, 3)).astype(np.float32)
    np.testing.assert_allclose(net.forward(data=x)["double"], 2 * x, rtol=1e-6)
    net.blobs["double"].diff[...] = 1.0
    np.testing.assert_allclose(net.backward()["data"], np.full((2, 3), 2.0), rtol=1e-6)


def test_caffemodel_round_trip(fru_like, tmp_path):
    net, path = fru_like
    x = RNG.normal(size=(2, 3, 6, 6)).astype(np.float32)
    expected = net.forward(data=x)["fc"].copy()
    net.save(str(tmp_path / "a.caffemodel"))
    again = caffe.Net(str(path), caffe.TEST, weights=str(tmp_path / "a.caffemodel"))
    np.testing.assert_array_equal(again.forward(data=x)["fc"], expected)
    # the toolkit's own writer gives a caffemodel that Caffe loads by name, bit for bit
    blobs = load_blobs(tmp_path / "a.caffemodel")
    assert sorted(blobs) == sorted(net.params)
    save_blobs(tmp_path / "b.caffemodel", blobs)
    third = caffe.Net(str(path), caffe.TEST, weights=str(tmp_path / "b.caffemodel"))
    np.testing.assert_array_equal(third.forward(data=x)["fc"], expected)


def test_glog_quiet_on_import(root):
    env = {k: v for k, v in os.environ.items() if k != "GLOG_minloglevel"}
    code = "import defense, caffe; print(caffe.__version__)"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root)
    assert res.returncode == 0, res.stderr
    assert res.stdout.strip() == "1.0.0"
    assert "Initializing" not in res.stderr and res.stderr.strip() == ""


@pytest.mark.parametrize("preset, expected", [(None, "4"), ("12", "12")])
def test_openblas_threads_park_unless_the_user_says_otherwise(root, preset, expected):
    """Set before Caffe's OpenBLAS loads (defense.core): spinning idle threads held the core the
    convolutions' image threads need."""
    env = {k: v for k, v in os.environ.items() if k != "OPENBLAS_THREAD_TIMEOUT"}
    if preset:
        env["OPENBLAS_THREAD_TIMEOUT"] = preset
    code = "import os, defense; print(os.environ['OPENBLAS_THREAD_TIMEOUT'])"
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=env, cwd=root)
    assert (res.returncode, res.stdout.strip()) == (0, expected), res.stderr


def test_pycaffe_comes_from_the_venv_without_pythonpath(root):
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "LD_LIBRARY_PATH")}
    res = subprocess.run([str(Path(sys.prefix) / "bin" / "python"), "-c", "import caffe, numpy; print(numpy.__version__)"],
                         capture_output=True, text=True, env=env, cwd="/")
    assert res.returncode == 0, res.stderr
    assert int(res.stdout.split(".")[0]) < 2


def test_all_nan_max_pooling_window_routes_its_gradient_inside_the_input(tmp_path):
    """Caffe kept the max-pooling mask at -1 for an all-NaN window and Backward wrote through it
    (heap corruption); patched, the gradient goes to the window's first element."""
    net = _pool_relu_net(tmp_path, 0.0)
    x = np.full((2, 3, 7, 8), np.nan, np.float32)
    x[1] = 1.0  # the second image is ordinary
    net.blobs["data"].data[...] = x
    net.forward()
    net.blobs["pool"].diff[...] = 1.0
    diff = net.backward(start="pool")["data"]
    first = np.zeros((7, 8), np.float32)
    for i in range(4):
        for j in range(5):  # window starts clipped to the image: rows 0,1,3,5 and columns 0,1,3,5,7
            first[max(2 * i - 1, 0), max(2 * j - 1, 0)] += 1.0
    np.testing.assert_array_equal(diff[0], np.broadcast_to(first, (3, 7, 8)))
    assert np.isfinite(diff[1]).all() and diff[1].sum() == pytest.approx(3 * 20)


def _setup_default_archs(root) -> str:
    text = (root / "caffe_build" / "setup.sh").read_text()
    return text.split('ARCHS="${CAFFE_CUDA_ARCH:-', 1)[1].split("}", 1)[0]


def test_dockerfile_runs_the_tested_setup_script(root):
    text = (root / "Dockerfile").read_text()
    assert text.splitlines()[[line.startswith("FROM") for line in text.splitlines()].index(True)] == "FROM debian:bookworm"
    run_lines = [line for line in text.splitlines() if "caffe_build/setup.sh" in line and not line.startswith("#")]
    assert len(run_lines) == 1 and "CAFFE_CUDA=pip" in run_lines[0], "build Caffe through setup.sh's pip toolchain"
    assert 'CAFFE_CUDA_ARCH="$CAFFE_CUDA_ARCH"' in run_lines[0]
    assert f'ARG CAFFE_CUDA_ARCH="{_setup_default_archs(root)}"' in text, "the image builds setup.sh's default list"
    assert "NVIDIA_VISIBLE_DEVICES=all" in text and "NVIDIA_DRIVER_CAPABILITIES=compute,utility" in text
    assert 'ENTRYPOINT [".venv-cuda/bin/python", "defense_example.py"]' in text
    assert "setup-cuda:\n\tCAFFE_CUDA=pip bash caffe_build/setup.sh" in (root / "Makefile").read_text()


def test_cuda_toolchain_is_pinned_and_hash_checked(root):
    lines = [line for line in (root / "caffe_build" / "cuda-13.0-requirements.txt").read_text().splitlines()
             if line and not line.startswith("#")]
    names = {line.split("==")[0] for line in lines}
    assert {"nvidia-cuda-nvcc", "nvidia-cuda-runtime", "nvidia-nvvm", "nvidia-cuda-crt", "nvidia-cuda-cccl",
            "nvidia-cublas", "nvidia-curand", "nvidia-nccl-cu13"} <= names
    assert all("==" in line and "--hash=sha256:" in line for line in lines)
    assert "nvidia-cuda-nvcc==13.0.88" in lines[0]


# ---------------------------------------------------------------- the CUDA build (make test-cuda)
CUDA_BUILD = cuda_device_count()[0] is not None
cuda_only = pytest.mark.skipif(not CUDA_BUILD, reason="this pycaffe is the CPU build; make test-cuda tests the CUDA one")


CUDA_PIP_BUILD = CUDA_BUILD and "/cuda/pip-" in (cuda_runtime_path() or "")


def _build_root() -> Path:
    return Path((Path(sys.prefix) / ".caffe_build").read_text().strip())


def _readelf(path: Path) -> str:
    return subprocess.run(["readelf", "-d", str(path)], capture_output=True, text=True, check=True).stdout


@cuda_only
def test_cuda_build_links_cuda_13_through_its_rpath():
    lib = _build_root() / "build" / "lib" / "libcaffe.so.1.0.0"
    dynamic = _readelf(lib)
    for needed in ("libcudart.so.13", "libcublas.so.13", "libcurand.so.10", "libnccl.so.2"):
        assert f"[{needed}]" in dynamic, needed
    env = {k: v for k, v in os.environ.items() if k != "LD_LIBRARY_PATH"}
    pycaffe = _build_root() / "src" / "python" / "caffe" / "_caffe.so"
    ldd = subprocess.run(["ldd", str(pycaffe)], capture_output=True, text=True, env=env, check=True).stdout
    assert "not found" not in ldd, ldd
    assert "libcudart.so.13 => " in ldd and "libnccl.so.2 => " in ldd
    assert caffe.has_nccl()


@cuda_only
def test_cuda_build_carries_the_requested_architectures():
    root = _build_root()
    cache = (root / "build" / "CMakeCache.txt").read_text()
    archs = cache.split("CUDA_ARCH_BIN:STRING=", 1)[1].splitlines()[0].split()
    toolkit = re.search(r"^CUDA_TOOLKIT_ROOT_DIR:[A-Z]+=(.*)$", cache, re.M).group(1)
    cuobjdump = str(Path(toolkit) / "bin" / "cuobjdump") if CUDA_PIP_BUILD else shutil.which("cuobjdump")
    if cuobjdump is None:
        pytest.skip("no cuobjdump on PATH to list the architectures")
    lib = str(root / "build" / "lib" / "libcaffe.so.1.0.0")
    elf = subprocess.run([cuobjdump, "--list-elf", lib], capture_output=True, text=True, check=True).stdout
    ptx = subprocess.run([cuobjdump, "--list-ptx", lib], capture_output=True, text=True, check=True).stdout
    assert {f"sm_{a}" for a in archs} == set(re.findall(r"\.(sm_\d+)\.cubin", elf))
    assert set(re.findall(r"\.(sm_\d+)\.ptx", ptx)) == {f"sm_{max(archs, key=int)}"}


@cuda_only
def test_cuda_build_matches_the_cpu_build_in_cpu_mode(root, tmp_path):
    """The FashionNet FRU net with its shipped weights, same input, through both builds: equal bit for bit."""
    other = root / ".venv" / "bin" / "python"
    if not other.exists():
        pytest.skip("no CPU build (.venv) beside this CUDA build to compare with")
    code = ("import sys, numpy as np; from defense.core import load_net; "
            "net = load_net('prototxt/FashionNet/deploy_fashionnet_FRU.prototxt', "
            "'weights/FashionNet/fashionnet_FRU.caffemodel'); "
            "x = np.random.default_rng(0).uniform(0, 255, net.blobs['data'].data.shape).astype(np.float32); "
            "np.save(sys.argv[1], net.forward(data=x)[net.outputs[0]])")
    outputs = []
    for python in (other, Path(sys.prefix) / "bin" / "python"):
        out = tmp_path / f"{len(outputs)}.npy"
        res = subprocess.run([str(python), "-c", code, str(out)], capture_output=True, text=True, cwd=root)
        assert res.returncode == 0 and res.stderr == "", res.stderr
        outputs.append(np.load(out))
    assert outputs[0].shape[1] == 10
    np.testing.assert_array_equal(outputs[0], outputs[1])


def test_no_gpu_means_no_noise_and_one_line_for_gpu_options(root, tmp_path):
    """Without a usable GPU nothing extra is printed, and --gpu N is one line and exit 2 (Caffe would
    abort); the CPU build names the CUDA build to make."""
    if GPU:
        pytest.skip("a GPU is present")
    env = {k: v for k, v in os.environ.items() if k != "GLOG_minloglevel"}
    quiet = subprocess.run([sys.executable, "-c", "import defense.core as c; c.set_mode(None, 1); "
                            "c.caffe.Net  # noqa"], capture_output=True, text=True, env=env, cwd=root)
    assert quiet.returncode == 0 and quiet.stderr == "", quiet.stderr
    cmd = [sys.executable, "defense_example.py", "--dnn", "FashionNet", "--attack", "UAP", "--defense", "True",
           "--out", str(tmp_path / "demo.png"), "--gpu", "0"]
    res = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=root)
    assert res.returncode == 2 and res.stdout == ""
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr
    if CUDA_BUILD:
        assert lines[0].startswith("error: --gpu 0: no usable GPU on this machine (")
    else:
        assert lines[0] == ("error: --gpu 0: this Caffe build is CPU-only; build the CUDA variant with "
                            "'make setup-cuda' and run ./.venv-cuda/bin/python")
    assert not (tmp_path / "demo.png").exists()
    train = subprocess.run([sys.executable, "-m", "defense.train", "--net", "FashionNet", "--dir", str(tmp_path),
                            "--perturbations", str(tmp_path / "p.npy"), "--out", str(tmp_path / "o.caffemodel"),
                            "--gpus", "0,1"], capture_output=True, text=True, env=env, cwd=root)
    assert train.returncode == 2 and len(train.stderr.strip().splitlines()) == 1, train.stderr
    assert train.stderr.startswith("error: --gpus 0,1: ")
    assert list(tmp_path.iterdir()) == []


@pytest.mark.gpu
@pytest.mark.skipif(not GPU, reason="needs a CUDA build of Caffe and a GPU")
def test_gpu_forward_matches_cpu(fru_like):
    net, _ = fru_like
    x = RNG.normal(size=(2, 3, 6, 6)).astype(np.float32)
    cpu = net.forward(data=x)["fc"].copy()
    caffe.set_device(0)
    caffe.set_mode_gpu()
    try:
        gpu = net.forward(data=x)["fc"].copy()
        net.blobs["fc"].diff[...] = 1.0
        grad_gpu = net.backward(start="fc")["data"].copy()
    finally:
        caffe.set_mode_cpu()
    net.forward(data=x)
    net.blobs["fc"].diff[...] = 1.0
    grad_cpu = net.backward(start="fc")["data"].copy()
    np.testing.assert_allclose(gpu, cpu, rtol=1e-4, atol=1e-4)
    np.testing.assert_allclose(grad_gpu, grad_cpu, rtol=1e-4, atol=1e-4)


def test_gpu_check_without_a_gpu_is_one_line_and_exit_2(root, tmp_path):
    if GPU:
        pytest.skip("a GPU is present: make gpu-check measures")
    res = subprocess.run(["bash", "caffe_build/gpu-check.sh", "--out", str(tmp_path / "g.json")], cwd=root,
                         capture_output=True, text=True)
    assert res.returncode == 2 and res.stdout == ""
    assert len(res.stderr.strip().splitlines()) == 1, res.stderr
    expected = "gpu-check: no GPU (" if (root / ".venv-cuda").exists() else "gpu-check: no CUDA build here"
    assert res.stderr.startswith(expected), res.stderr
    assert not (tmp_path / "g.json").exists()
