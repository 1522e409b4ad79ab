"""GPU against CPU, where a CUDA build of Caffe and a GPU are present (skipped with the reason
otherwise): every layer type of the six nets forward and backward, FRU training steps, UAP and
sPGD, and NCCL training on two GPUs. ``make gpu-check`` runs these on a GPU machine."""
from __future__ import annotations

import numpy as np
import pytest

from defense.core import caffe, load_blobs
from defense.devices import cuda_device_count, gpu_available
from defense.data import ArraySource
from defense.presets import get_preset
from defense.train import SolverWrapper, TrainOptions, train
from defense.generate.random_nets import NETS, blob_names_changed, generated_fru_dir, random_input, random_net

GPU = gpu_available()
pytestmark = [pytest.mark.gpu,
              pytest.mark.skipif(not GPU, reason="needs a CUDA build of Caffe (make setup-cuda) and a GPU")]


@pytest.fixture()
def on_gpu():
    """Switch this test to GPU 0 and back to the CPU afterwards."""
    def use(gpu: bool):
        if gpu:
            caffe.set_device(0)
            caffe.set_mode_gpu()
        else:
            caffe.set_mode_cpu()
    yield use
    caffe.set_mode_cpu()


def assert_close(gpu: np.ndarray, cpu: np.ndarray, what: str, tol: float = 1e-4) -> None:
    """Equal to ``tol`` relative to the blob's largest magnitude (float32 sums differ in order)."""
    scale = max(float(np.abs(cpu).max()), 1e-6)
    err = float(np.abs(gpu - cpu).max()) / scale
    assert err <= tol, f"{what}: GPU differs from CPU by {err:.2e} of its largest value"


def layer_by_layer(net, x):
    """Forward, then backward from a fixed output gradient, one layer at a time on the CPU, with
    what each layer read and wrote: ``[(index, bottoms, tops)]`` and ``[(index, top diffs, bottom
    diffs)]``. In-place layers read the blob as the layers before them left it."""
    names = list(net._layer_names)
    forward, backward = [], []
    net.blobs["data"].data[...] = x
    for i, name in enumerate(names):
        bottoms = {b: net.blobs[b].data.copy() for b in net.bottom_names[name]}
        net._forward(i, i)
        forward.append((i, bottoms, {t: net.blobs[t].data.copy() for t in net.top_names[name]}))
    out = net.outputs[0]
    net.blobs[out].diff[...] = np.random.default_rng(2).standard_normal(net.blobs[out].diff.shape)
    for i in reversed(range(len(names))):
        name = names[i]
        if not net.bottom_names[name]:
            continue
        top_diffs = {t: net.blobs[t].diff.copy() for t in net.top_names[name]}
        net._backward(i, i)
        backward.append((i, top_diffs, {b: net.blobs[b].diff.copy() for b in net.bottom_names[name]}))
    return forward, backward


@pytest.mark.parametrize("name", NETS)
@pytest.mark.parametrize("layout", ["baseline", "FRU"])
def test_every_layer_forward_and_backward_matches_cpu(name, layout, on_gpu):
    """Each layer on the GPU, fed what the same layer read on the CPU, writes what it wrote there.

    Layer by layer, not end to end: through a whole net, a max-pooling window whose two largest
    values differ only in their last bits sends its gradient to a different input on each device,
    and the input gradients of the CaffeNet and GoogLeNet baselines then differed by 1.5e-4 and
    1.5e-3 of their largest values on an H200 (2026-12-04) with every forward blob within 1.3e-6.
    The backward tolerance is 1e-3: the softmax's backward subtracts two nearly equal sums."""
    preset = get_preset(name)
    net = random_net(preset.deploy if layout == "baseline" else preset.deploy_fru, batch=2, backward=True)
    x = random_input(net)
    names = list(net._layer_names)
    on_gpu(False)
    forward, backward = layer_by_layer(net, x)
    on_gpu(True)
    for i, bottoms, tops in forward:
        for blob, value in bottoms.items():
            net.blobs[blob].data[...] = value
        net._forward(i, i)
        for blob, want in tops.items():
            assert_close(net.blobs[blob].data, want, f"{name} {layout} layer '{names[i]}' output '{blob}'")
    inputs = {i: bottoms for i, bottoms, _ in forward}
    for i, top_diffs, bottom_diffs in backward:
        for blob, value in inputs[i].items():  # the layer's own forward state (pooling masks, LRN scales)
            net.blobs[blob].data[...] = value
        net._forward(i, i)
        for blob, value in top_diffs.items():
            net.blobs[blob].diff[...] = value
        net._backward(i, i)
        for blob, want in bottom_diffs.items():
            assert_close(net.blobs[blob].diff, want, f"{name} {layout} layer '{names[i]}' gradient of '{blob}'",
                         tol=1e-3)


def _train_steps(folder, source, perturbations, iterations: int):
    wrapper = SolverWrapper(folder / "solver.prototxt", folder / "snapshots", get_preset("FashionNet").mean_bgr,
                            weights=folder / "init.caffemodel",
                            options=TrainOptions(max_iter=iterations, progress=False, seed=0), prefix="fru")
    return wrapper.run(source, perturbations)


def test_fru_training_on_gpu_changes_only_frus_and_matches_cpu(tmp_path, on_gpu):
    folder = generated_fru_dir("FashionNet", tmp_path, batch=16)
    rng = np.random.default_rng(0)
    source = ArraySource(rng.uniform(0, 255, (64, 1, 28, 28)), rng.integers(0, 10, 64))
    perts = [rng.uniform(-20, 20, (1, 28, 28)).astype(np.float32) for _ in range(4)]
    init = load_blobs(folder / "init.caffemodel")
    results = {}
    for device in ("cpu", "gpu"):
        on_gpu(device == "gpu")
        caffe.set_random_seed(0)
        results[device] = load_blobs(_train_steps(folder, source, perts, 3).caffemodel)
        (folder / "snapshots").rename(folder / f"snapshots_{device}")
    changed = blob_names_changed(init, results["gpu"])
    assert changed and all("fru" in name for name in changed), changed
    assert changed == blob_names_changed(init, results["cpu"])
    for name in changed:
        for i, (g, c) in enumerate(zip(results["gpu"][name], results["cpu"][name])):
            assert_close(g, c, f"{name} blob {i} after 3 iterations")


@pytest.mark.parametrize("attack", ["uap", "spgd"])
def test_universal_attacks_on_gpu_match_cpu(attack, on_gpu):
    from attacks import SPGD, UAP, CaffeClassifier

    preset = get_preset("FashionNet")
    clf = CaffeClassifier.from_files(preset.deploy, preset.weights(), preset=preset.name, batch_size=50)
    x = np.random.default_rng(0).uniform(0, 255, (200,) + clf.input_shape).astype(np.float32)
    out = {}
    for device in ("cpu", "gpu"):
        on_gpu(device == "gpu")
        if attack == "uap":
            method = UAP(clf, xi=20.0, max_passes=1, batch_size=50, verbose=False)
        else:
            method = SPGD(clf, xi=20.0, epochs=2, batch_size=50, verbose=False)
        out[device] = method.generate(x, np.random.default_rng(0))
    assert out["gpu"].fooling_rate == pytest.approx(out["cpu"].fooling_rate, abs=0.01)
    assert_close(out["gpu"].perturbation, out["cpu"].perturbation, f"{attack} perturbation", tol=1e-3)


@pytest.mark.skipif(GPU and (cuda_device_count()[0] or 0) < 2, reason="NCCL training needs two GPUs")
def test_nccl_training_on_two_gpus(tmp_path):
    folder = generated_fru_dir("FashionNet", tmp_path, batch=16)
    rng = np.random.default_rng(0)
    source = ArraySource(rng.uniform(0, 255, (64, 1, 28, 28)), rng.integers(0, 10, 64))
    perts = [rng.uniform(-20, 20, (1, 28, 28)).astype(np.float32) for _ in range(4)]
    out = train(folder / "solver.prototxt", source, perts, tmp_path / "fru.caffemodel",
                get_preset("FashionNet").mean_bgr, weights=folder / "init.caffemodel", gpus=[0, 1],
                options=TrainOptions(max_iter=4, progress=False, seed=0))
    changed = blob_names_changed(load_blobs(folder / "init.caffemodel"), load_blobs(out))
    assert changed and all("fru" in name for name in changed)
