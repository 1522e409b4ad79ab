"""FRU generation: layout, identity at initialisation, folded vs explicit, presets, CLI."""
import re

import numpy as np
import pytest
from google.protobuf import text_format

from defense.core import ToolkitError, caffe, caffe_pb2, load_blobs, read_net_param, write_net_param
from defense.generate import build_fru, fru_solver_param, insert_frus, write_all
from defense.generate.__main__ import main
from defense.networks import build_baseline
from defense.presets import PUBLISHED_NETS, FruTarget, fru_names, get_preset
from defense.generate.surgery import init_fru_blobs
from fru_nets import forward, perturb_frus, random_weights, rel_err, shapes_of, tiny_net

IMAGENET = PUBLISHED_NETS
TINY_TARGETS = (FruTarget("conv1", 4, 3, short="conv1", prefix="dc1_"),
                FruTarget("conv2", 3, 2, short="conv2", prefix="dc2_"))


# ---------------------------------------------------------------- tiny nets
@pytest.mark.parametrize("mode", ["explicit", "folded"])
def test_tiny_identity_at_init(mode):
    base = tiny_net(bn=True)
    blobs = random_weights(base)
    fru = insert_frus(base, TINY_TARGETS, mode)
    init, perms = init_fru_blobs(base, blobs, TINY_TARGETS, mode, seed=3)
    assert rel_err(forward(base, blobs), forward(fru, init)) < 1e-4
    assert sorted(perms) == ["conv1", "conv2"]
    if mode == "folded":  # the permutation is really in the weights
        assert not np.array_equal(init["conv1"][0], blobs["conv1"][0])


def test_tiny_explicit_and_folded_agree_with_trained_frus():
    base = tiny_net(bn=True)
    blobs = random_weights(base)
    explicit, _ = init_fru_blobs(base, blobs, TINY_TARGETS, "explicit", seed=3)
    folded, _ = init_fru_blobs(base, blobs, TINY_TARGETS, "folded", seed=3)
    trained = perturb_frus(explicit, blobs, skip=("conv1_imap", "conv1_remap", "conv2_imap", "conv2_remap"))
    for name in trained:
        if name in folded and name not in blobs:
            folded[name] = trained[name]
    a = forward(insert_frus(base, TINY_TARGETS, "explicit"), trained)
    b = forward(insert_frus(base, TINY_TARGETS, "folded"), folded)
    assert rel_err(a, b) < 1e-4
    assert rel_err(a, forward(base, blobs)) > 1e-3  # the FRUs do change the output


def test_tiny_layout_follows_the_published_block():
    fru = insert_frus(tiny_net(), TINY_TARGETS[:1], "explicit")
    layers = [(layer.name, layer.type) for layer in fru.layer]
    start = layers.index(("conv1", "Convolution"))
    assert layers[start:start + 19] == [
        ("conv1", "Convolution"), ("conv1_imap", "Convolution"), ("split_conv1", "Slice")] + [
        item for k in (1, 2, 3) for item in ((f"dc1_conv{k}", "Convolution"), (f"dc1_bn{k}", "BatchNorm"),
                                             (f"dc1_scale{k}", "Scale"), (f"dc1_relu{k}", "ReLU"))] + [
        ("dc1_conv4", "Convolution"), ("dc1_merge", "Eltwise"), ("conv1_concat", "Concat"),
        ("conv1_remap", "Convolution")]
    by_name = {layer.name: layer for layer in fru.layer}
    assert list(by_name["conv1"].top) == ["conv1_inp"]
    assert list(by_name["conv1_remap"].top) == ["conv1"]  # consumers untouched
    assert list(by_name["split_conv1"].top) == ["topranked_conv1", "bottomranked_conv1"]
    assert all(not by_name[f"dc1_conv{k}"].convolution_param.bias_term for k in range(1, 5))
    assert by_name["dc1_bn1"].batch_norm_param.use_global_stats


def test_folded_refused_through_lrn():
    with pytest.raises(ToolkitError, match=r"cannot fold .*'conv1'.*'norm1' \(LRN\)"):
        insert_frus(tiny_net(lrn=True), TINY_TARGETS[:1], "folded")


def test_caffenet_folded_refused_with_clear_error():
    with pytest.raises(ToolkitError, match=r"cannot fold the channel permutation of 'conv1'.*'norm1' \(LRN\)"):
        insert_frus(build_baseline("CaffeNet"), get_preset("CaffeNet").targets, "folded")


def test_n_larger_than_c_rejected():
    with pytest.raises(ToolkitError, match=r"N=9 is larger than the 8 channels of 'conv1'"):
        insert_frus(tiny_net(), [FruTarget("conv1", 9, 2, short="conv1", prefix="x_")], "explicit")


def test_non_conv_target_rejected():
    with pytest.raises(ToolkitError, match="FRU target 'pool1' is a Pooling layer, not a Convolution"):
        insert_frus(tiny_net(), [FruTarget("pool1", 2, 2, short="pool1", prefix="x_")], "explicit")


# ---------------------------------------------------------------- train net, solver
def test_train_net_freezes_the_baseline_and_trains_the_frus(tmp_path):
    base = tiny_net(bn=True)
    build = build_fru(base, TINY_TARGETS, "explicit", batch_size=4)
    layers = {layer.name: layer for layer in build.train.layer}
    lr = {name: [(p.lr_mult, p.decay_mult) for p in layer.param] for name, layer in layers.items()}
    assert lr["conv1"] == [(0, 0)] and lr["conv2"] == [(0, 0), (0, 0)] and lr["fc"] == [(0, 0), (0, 0)]
    assert lr["conv1_bn"] == [(0, 0)] * 3 and layers["conv1_bn"].batch_norm_param.use_global_stats
    assert lr["conv1_imap"] == [(0, 0)] and lr["conv2_remap"] == [(0, 0)]
    assert lr["dc1_conv2"] == [(1, 1)] and lr["dc2_scale3"] == [(1, 0), (1, 0)]
    assert not layers["dc1_bn1"].batch_norm_param.use_global_stats
    assert layers["loss"].type == "SoftmaxWithLoss" and list(layers["loss"].bottom) == ["fc", "label"]
    assert layers["accuracy"].type == "Accuracy" and "prob" not in layers
    path = write_net_param(tmp_path / "train.prototxt", build.train)
    net = caffe.Net(str(path), caffe.TRAIN)
    assert net.blobs["data"].data.shape == (4, 3, 12, 12) and net.blobs["label"].data.shape == (4,)
    net.blobs["label"].data[...] = [0, 1, 2, 3]
    net.forward()
    assert np.isfinite(net.blobs["loss"].data).all()
    solver = fru_solver_param("train.prototxt", base_lr=0.05)
    assert isinstance(solver, caffe_pb2.SolverParameter) and solver.base_lr == pytest.approx(0.05)


# ---------------------------------------------------------------- published presets
def _published_tables(text):
    """{network: [(target, C, N, D)]} from fru_presets.md."""
    tables, current = {}, None
    for line in text.splitlines():
        head = re.match(r"### (\w+)", line)
        if head:
            current = head.group(1)
            tables[current] = []
        row = re.match(r"\| ([\w/]+)(?: \(short: \w+\))? \| (\d+) \| (\d+) \| (\d+) \|", line)
        if row and current:
            tables[current].append((row.group(1), *map(int, row.groups()[1:])))
    return tables


def test_presets_match_the_published_tables(reference):
    tables = _published_tables((reference / "published" / "fru_presets.md").read_text())
    assert set(IMAGENET) <= set(tables)
    for name in IMAGENET:
        preset = get_preset(name)
        assert [(t.layer, t.n, t.d) for t in preset.targets] == [(r[0], r[2], r[3]) for r in tables[name]], name


@pytest.mark.parametrize("name", IMAGENET)
def test_preset_param_count_names_and_shapes(name, reference):
    preset = get_preset(name)
    base = build_baseline(name)
    fru = insert_frus(base, preset.targets, preset.mode)
    shapes = shapes_of(fru)
    assert sum(int(np.prod(s)) for blobs in shapes.values() for s in blobs) == preset.params_fru
    tables = {row[0]: row[1] for row in _published_tables(
        (reference / "published" / "fru_presets.md").read_text())[name]}
    for t in preset.targets:
        names, n, d, c = fru_names(t), t.n, t.d, tables[t.layer]
        assert [shapes[x] for x in names.convs] == [[(d, n, 1, 1)], [(d, d, 3, 3)], [(d, d, 3, 3)], [(n, d, 1, 1)]]
        assert all(shapes[x] == [(d,), (d,), (1,)] for x in names.bns)
        assert all(shapes[x] == [(d,), (d,)] for x in names.scales)
        if preset.mode == "explicit":
            assert shapes[names.imap] == [(c, c, 1, 1)] and shapes[names.remap] == [(c, c, 1, 1)]
        else:
            assert names.imap not in shapes and names.remap not in shapes


def test_published_layer_names_spot_checks():
    names = {p: {layer.name for layer in insert_frus(build_baseline(p), get_preset(p).targets,
                                                     get_preset(p).mode).layer}
             for p in ("GoogLeNet", "VGG16", "ResNet152")}
    assert {"conv1_imap", "dc1_conv1", "inception_3a/3x3_imap", "inception_3a/3x3_conv1",
            "inception_5a/5x5_merge", "inception_4d/3x3_remap"} <= names["GoogLeNet"]
    assert {"conv1_2_imap", "dc1_conv3_conv1_2", "dc1_bn2_conv1_2", "dc1_merge_conv1_2", "dc5_scale3"} <= names["VGG16"]
    assert {"dc1_conv1", "res12_c2_dc1_bn2", "res48_c2_dc1_merge", "res4_conv2_concat"} <= names["ResNet152"]


@pytest.mark.slow
@pytest.mark.parametrize("name", IMAGENET)
def test_preset_identity_at_init(name):
    preset = get_preset(name)
    base = build_baseline(name)
    blobs = random_weights(base)
    fru = insert_frus(base, preset.targets, preset.mode)
    init, _ = init_fru_blobs(base, blobs, preset.targets, preset.mode, seed=0)
    assert rel_err(forward(base, blobs), forward(fru, init)) < 1e-4


@pytest.mark.slow
def test_resnet152_explicit_and_folded_agree():
    preset = get_preset("ResNet152")
    base = build_baseline("ResNet152")
    blobs = random_weights(base)
    explicit, _ = init_fru_blobs(base, blobs, preset.targets, "explicit", seed=0)
    folded, _ = init_fru_blobs(base, blobs, preset.targets, "folded", seed=0)
    perms = {fru_names(t).imap for t in preset.targets} | {fru_names(t).remap for t in preset.targets}
    trained = perturb_frus(explicit, blobs, skip=tuple(perms))
    folded.update({k: v for k, v in trained.items() if k in folded and k not in blobs})
    a = forward(insert_frus(base, preset.targets, "explicit"), trained)
    b = forward(insert_frus(base, preset.targets, "folded"), folded)
    assert rel_err(a, b) < 1e-4


def test_committed_prototxts_are_what_the_code_generates(tmp_path, root):
    written = write_all(tmp_path)
    assert len(written) >= 10
    for path in written:
        committed = root / "prototxt" / path.relative_to(tmp_path)
        assert committed.read_bytes() == path.read_bytes(), f"{committed} is stale; run python -m defense.generate --all"
    for preset in map(get_preset, IMAGENET):
        text = preset.deploy_fru.read_text()
        assert text.startswith("# Generated by: python -m defense.generate --all")
        param = read_net_param(preset.deploy_fru)
        assert param.layer[-1].type == "Softmax" and list(param.layer[-1].top) == ["prob"]


# ---------------------------------------------------------------- CLI
@pytest.fixture
def tiny_files(tmp_path):
    base = tiny_net(bn=True)
    proto = write_net_param(tmp_path / "tiny.prototxt", base)
    blobs = random_weights(base)
    from defense.generate import save_net_weights
    weights = save_net_weights(tmp_path / "tiny.caffemodel", base, blobs)
    return proto, weights, base, blobs


@pytest.mark.parametrize("mode", ["explicit", "folded"])
def test_cli_writes_deploy_train_solver_and_identity_init(tiny_files, tmp_path, mode):
    proto, weights, base, blobs = tiny_files
    out = tmp_path / "out"
    assert main(["--prototxt", str(proto), "--layers", "conv1,conv2", "--ratio", "0.5", "--depth-ratio", "0.5",
                 "--mode", mode, "--weights", str(weights), "--out", str(out)]) == 0
    deploy = read_net_param(out / "deploy_FRU.prototxt")
    init = load_blobs(out / "init.caffemodel")
    assert init["conv1_fru_conv1"][0].shape == (2, 4, 1, 1) and init["conv2_fru_conv4"][0].shape == (3, 2, 1, 1)
    assert rel_err(forward(base, blobs), forward(deploy, init)) < 1e-4
    solver = text_format.Parse((out / "solver.prototxt").read_text(), caffe_pb2.SolverParameter())
    assert solver.net == "train.prototxt"
    train = read_net_param(out / "train.prototxt")
    assert any(layer.type == "SoftmaxWithLoss" for layer in train.layer)
    assert (out / "deploy_FRU.prototxt").read_text().startswith("# Generated by: python -m defense.generate --prototxt")


def _cli_error(capsys, argv):
    code = main(argv)
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1 and err.startswith("error: ")
    return err


def test_cli_missing_prototxt(capsys, tmp_path):
    err = _cli_error(capsys, ["--prototxt", str(tmp_path / "nope.prototxt"), "--layers", "conv1", "--out", str(tmp_path)])
    assert "nope.prototxt: prototxt not found" in err


def test_cli_corrupt_prototxt(capsys, tmp_path):
    bad = tmp_path / "bad.prototxt"
    bad.write_text("layer { name: 'x' type: \n")
    assert "not a valid Caffe prototxt" in _cli_error(capsys, ["--prototxt", str(bad), "--layers", "x", "--out", str(tmp_path)])


def test_cli_unknown_layer(capsys, tiny_files, tmp_path):
    err = _cli_error(capsys, ["--prototxt", str(tiny_files[0]), "--layers", "conv9", "--out", str(tmp_path)])
    assert "no layer named 'conv9'" in err


def test_cli_non_conv_target(capsys, tiny_files, tmp_path):
    err = _cli_error(capsys, ["--prototxt", str(tiny_files[0]), "--layers", "relu1", "--out", str(tmp_path)])
    assert "FRU target 'relu1' is a ReLU layer, not a Convolution" in err


def test_cli_ratio_above_one(capsys, tiny_files, tmp_path):
    err = _cli_error(capsys, ["--prototxt", str(tiny_files[0]), "--layers", "conv1", "--ratio", "1.5",
                              "--out", str(tmp_path)])
    assert "ratio must be in (0, 1]" in err


def test_cli_folded_refused(capsys, tmp_path):
    proto = write_net_param(tmp_path / "lrn.prototxt", tiny_net(lrn=True))
    err = _cli_error(capsys, ["--prototxt", str(proto), "--layers", "conv1", "--mode", "folded", "--out", str(tmp_path)])
    assert "'norm1' (LRN)" in err


def test_cli_weights_that_do_not_fit(capsys, tiny_files, tmp_path):
    other = tiny_net(bn=False)
    from defense.generate import save_net_weights
    wrong = save_net_weights(tmp_path / "wrong.caffemodel", other, random_weights(other))
    err = _cli_error(capsys, ["--prototxt", str(tiny_files[0]), "--layers", "conv1", "--weights", str(wrong),
                              "--out", str(tmp_path / "o")])
    assert "wrong.caffemodel" in err and "conv1" in err


def test_cli_truncated_weights(capsys, tiny_files, tmp_path):
    cut = tmp_path / "cut.caffemodel"
    cut.write_bytes(tiny_files[1].read_bytes()[:100])
    err = _cli_error(capsys, ["--prototxt", str(tiny_files[0]), "--layers", "conv1", "--weights", str(cut),
                              "--out", str(tmp_path / "o")])
    assert "cut.caffemodel" in err


def test_cli_unknown_preset(capsys, tmp_path):
    assert "unknown network 'AlexNet'" in _cli_error(capsys, ["--preset", "AlexNet", "--out", str(tmp_path)])


def test_cli_preset_with_other_layers(tmp_path):
    out = tmp_path / "vgg16"
    assert main(["--preset", "VGG16", "--layers", "conv1_1,conv2_2", "--out", str(out)]) == 0
    names = {layer.name for layer in read_net_param(out / "deploy_FRU.prototxt").layer}
    assert {"conv1_1_imap", "dc1_conv1", "conv2_2_imap", "conv2_2_fru_conv4", "conv2_2_fru_merge"} <= names
    assert "dc5_conv1" not in names


def test_v1_prototxt_is_upgraded(reference):
    from defense.generate.graph import normalize
    base = normalize(read_net_param(reference / "published" / "baseline" / "deploy_vgg_f.prototxt"))
    fru = insert_frus(base, get_preset("VGG_F").targets, "explicit")
    shapes = shapes_of(fru)
    assert sum(int(np.prod(s)) for blobs in shapes.values() for s in blobs) == get_preset("VGG_F").params_fru
