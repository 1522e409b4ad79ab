"""FD (feature denoising blocks), the ``internal`` entry of the competitor registry: the non-local
block against numpy, identity at initialisation, the affinity rule, the train net, the generator's files."""
import numpy as np
import pytest

from defense.core import ToolkitError, load_blobs, load_net, read_net_param, set_net_blobs
from defense.generate.__main__ import main
from defense.generate.build import init_competitor_blobs
from defense.generate.competitors import build_fd, get_competitor, trainable_parameters
from defense.generate.fd import EMBED_STD, fd_names, plan_fd
from defense.networks import build_baseline
from defense.presets import get_preset
from fru_nets import forward, random_weights, rel_err, tiny_net


def nlm_reference(x: np.ndarray, affinity: str, theta=None, phi=None) -> np.ndarray:
    """Non-local means of (N, C, H, W) features as the paper writes it, one position at a time."""
    n, c, h, w = x.shape
    flat = x.reshape(n, c, h * w).astype(np.float64)
    out = np.zeros_like(flat)
    for b in range(n):
        if affinity == "gaussian":
            t = theta[0].reshape(theta[0].shape[0], c) @ flat[b] + theta[1][:, None]
            p = phi[0].reshape(phi[0].shape[0], c) @ flat[b] + phi[1][:, None]
            for i in range(h * w):
                logits = t[:, i] @ p / np.sqrt(t.shape[0])
                weights = np.exp(logits - logits.max())
                out[b, :, i] = flat[b] @ (weights / weights.sum())
        else:
            for i in range(h * w):
                out[b, :, i] = flat[b] @ (flat[b, :, i] @ flat[b]) / (h * w)
    return out.reshape(n, c, h, w)


def block_output(affinity: str, seed: int = 0):
    """Random weights everywhere (the blocks' too); returns (raw conv1 output, block output, blobs)."""
    base = tiny_net()
    build = build_fd(base, 2, layers=["conv1"], affinity=affinity)
    blobs = random_weights(build.deploy, seed)
    net = load_net(build.deploy)
    set_net_blobs(net, blobs)
    net.blobs["data"].data[...] = np.random.default_rng(seed).standard_normal(net.blobs["data"].data.shape) * 0.5
    names = fd_names("conv1")
    net.forward(end=names.merge)  # before relu1 rewrites the block's output in place
    return net.blobs[names.raw].data.copy(), net.blobs["conv1"].data.copy(), blobs


@pytest.mark.parametrize("affinity", ["gaussian", "dot"])
def test_block_matches_numpy_reference(affinity):
    raw, out, blobs = block_output(affinity)
    names = fd_names("conv1")
    kwargs = dict(theta=blobs[names.theta], phi=blobs[names.phi]) if affinity == "gaussian" else {}
    denoised = nlm_reference(raw, affinity, **kwargs)
    w, b = blobs[names.conv]
    expected = raw + np.einsum("oc,nchw->nohw", w.reshape(w.shape[0], -1), denoised) + b[None, :, None, None]
    assert out.shape == (1, 8, 12, 12)
    assert rel_err(expected, out) < 1e-4
    assert rel_err(raw, out) > 1e-2  # the block does change the features


def test_zero_initialised_fd_net_gives_the_baseline_logits():
    base = tiny_net(bn=True)
    blobs = random_weights(base)
    build = build_fd(base, layers=["conv1", "conv2"], affinity="gaussian")
    init = init_competitor_blobs(build, blobs, seed=1)
    assert np.array_equal(forward(base, blobs), forward(build.deploy, init))
    theta = init[fd_names("conv1").theta][0]
    assert theta.shape == (4, 8, 1, 1) and 0.5 * EMBED_STD < theta.std() < 2 * EMBED_STD
    assert not init[fd_names("conv1").conv][0].any()


def test_layout_and_consumers():
    build = build_fd(tiny_net(), layers=["conv1"], affinity="gaussian")
    assert build.output_blob == "conv1"  # the last block's output
    layers = {layer.name: layer for layer in build.deploy.layer}
    names = fd_names("conv1")
    assert list(layers["conv1"].top) == [names.raw]
    assert list(layers[names.merge].top) == ["conv1"]  # relu1 reads the block's output
    assert list(layers["relu1"].bottom) == ["conv1"]
    assert layers[names.affinity].type == "BatchMatMul" and layers[names.affinity].batch_mat_mul_param.transpose_a
    assert layers[names.weights].softmax_param.axis == 2
    assert layers[names.scaled].power_param.scale == pytest.approx(1 / np.sqrt(4))
    assert list(layers[names.mean_map].reshape_param.shape.dim) == [0, 0, 12, 12]


def test_auto_affinity_follows_the_positions():
    plan = {t.layer: t for t in plan_fd(build_baseline("VGG16"), [t.layer for t in get_preset("VGG16").targets])}
    assert (plan["conv1_1"].height, plan["conv1_1"].width, plan["conv1_1"].channels) == (224, 224, 24)
    assert plan["conv1_1"].affinity == "dot" and plan["conv1_1"].embed == 0
    assert plan["conv2_1"].affinity == "dot" and plan["conv2_1"].positions == 112 * 112
    assert plan["conv3_1"].affinity == "gaussian" and plan["conv3_1"].embed == 54  # 56 x 56: the last Gaussian size
    assert plan["conv5_1"].affinity == "gaussian" and plan["conv5_1"].positions == 14 * 14


@pytest.mark.parametrize("layers, message", [
    (["relu1"], r"<net>: FD target 'relu1' is a ReLU layer, not a Convolution"),
    (["conv1", "conv1"], r"layer 'conv1' is listed twice as an FD target"),
    (["nope"], r"nope"),
    ([], r"<net>: FD needs its target layers \(--layers, or a preset's FRU targets\)"),
])
def test_bad_targets(layers, message):
    with pytest.raises(ToolkitError, match=message):
        build_fd(tiny_net(), layers=layers)


def test_unknown_affinity():
    with pytest.raises(ValueError, match="affinity must be one of gaussian, dot, auto, got 'cosine'"):
        build_fd(tiny_net(), layers=["conv1"], affinity="cosine")


def test_registry_entry_trains_everything_but_batchnorm_statistics():
    fd = get_competitor("fd")
    assert (fd.kind, fd.file_name, dict(fd.solver)) == ("internal", "deploy_FD.prototxt",
                                                        {"solver_type": "Adam", "base_lr": 1e-4})
    build = fd.build(tiny_net(bn=True), 4, layers=["conv1"], affinity="gaussian")
    layers = {layer.name: layer for layer in build.train.layer}
    assert build.roles == {"conv1": "conv", "conv1_scale": "scale", "conv2": "conv", "fc": "conv",
                           "conv1_fd_theta": "conv", "conv1_fd_phi": "conv", "conv1_fd_conv": "conv"}
    for name, role in build.roles.items():  # every parameter layer learns, Scales without decay
        assert [(p.lr_mult, p.decay_mult) for p in layers[name].param] == (
            [(1.0, 0.0)] * 2 if role == "scale" else [(1.0, 1.0)] * len(layers[name].param)), name
    assert [p.lr_mult for p in layers["conv1_bn"].param] == [0.0] * 3  # the stored statistics stay
    assert layers["conv1_bn"].batch_norm_param.use_global_stats
    assert layers["data"].input_param.shape[0].dim[0] == 4
    assert layers["loss"].type == "SoftmaxWithLoss"
    # conv1 8*3*9 (no bias), conv1_scale 8+8, conv2 6*8*9+6, fc 5*6*6*6+5; blocks theta, phi 4*8+4, conv 8*8+8
    blobs = init_competitor_blobs(build, random_weights(tiny_net(bn=True)))
    shapes = {name: [b.shape for b in arrays] for name, arrays in blobs.items()}
    assert trainable_parameters(build, shapes) == 3 * 8 * 9 + 8 * 6 * 9 + 6 + 6 * 6 * 6 * 5 + 5 + 16 + 144


def test_every_preset_has_a_committed_fd_deploy(root):
    for name in ("CaffeNet", "VGG_F", "GoogLeNet", "VGG16", "ResNet152", "FashionNet"):
        preset = get_preset(name)
        param = read_net_param(preset.deploy_fd)
        blocks = [layer for layer in param.layer if layer.name.endswith("_fd_merge")]
        assert len(blocks) == len(preset.targets), name
        assert param.layer[-1].type == "Softmax"


def test_generate_cli_fd_files_and_identity(tmp_path, root):
    weights = root / "weights/FashionNet/fashionnet.caffemodel"
    out = tmp_path / "fd"
    assert main(["--defense", "fd", "--preset", "FashionNet", "--weights", str(weights), "--out", str(out)]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["deploy_FD.prototxt", "init.caffemodel", "solver.prototxt",
                                                      "train.prototxt"]
    base = build_baseline("FashionNet")
    deploy = read_net_param(out / "deploy_FD.prototxt")
    init = load_blobs(out / "init.caffemodel")
    assert rel_err(forward(base, load_blobs(weights)), forward(deploy, init)) == 0.0
    assert (out / "deploy_FD.prototxt").read_text().startswith("# Generated by: python -m defense.generate --defense fd")
    solver = (out / "solver.prototxt").read_text()
    assert 'net: "train.prototxt"' in solver and 'type: "Adam"' in solver and "base_lr: 0.0001" in solver


def test_generate_cli_affinity_needs_fd(tmp_path, capsys):
    assert main(["--preset", "FashionNet", "--affinity", "dot", "--out", str(tmp_path / "x")]) == 2
    assert capsys.readouterr().err.strip() == "error: --affinity applies to --defense fd only"
    assert not (tmp_path / "x").exists()


@pytest.mark.parametrize("affinity", ["gaussian", "dot"])
def test_onnx_export_matches_caffe(affinity):
    pytest.importorskip("onnxruntime")
    from defense.generate.onnx_graph import compare_with_caffe, logits_blobs, onnx_model

    build = build_fd(build_baseline("FashionNet"), layers=[t.layer for t in get_preset("FashionNet").targets],
                     affinity=affinity)
    net = load_net(build.deploy)
    set_net_blobs(net, random_weights(build.deploy))
    model = onnx_model(net, build.deploy, logits_blobs(net))
    assert sum(node.op_type == "MatMul" for node in model.graph.node) == 2 * 3
    assert compare_with_caffe(net, model, batch=3) < 1e-4
