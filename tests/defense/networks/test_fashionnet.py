"""FashionNet builder: layer names, shapes, preset consistency, and the shipped weights' accuracy."""
import numpy as np
import pytest

from defense.core import caffe, load_net, param_shapes, write_net_param
from defense.networks import fashionnet
from defense.presets import get_preset

PRESET = get_preset("FashionNet")


def test_deploy_net_shapes_and_names(tmp_path):
    net = load_net(write_net_param(tmp_path / "d.prototxt", fashionnet.build(PRESET, 2)))
    assert net.blobs["data"].data.shape == (2, 1, 28, 28)
    assert net.blobs["prob"].data.shape == (2, 10)
    assert [b for b in net.blobs if b.endswith("_inp")] == ["conv1_inp", "conv2_inp", "conv3_inp"]
    assert list(net.params) == ["conv1", "conv2", "conv3", "fc4", "fc5"]


def test_preset_targets_follow_the_default_rule():
    widths = dict(fashionnet.conv_channels())
    assert [t.layer for t in PRESET.targets] == list(widths)
    for t in PRESET.targets:
        assert (t.n, t.d) == (widths[t.layer] // 2, widths[t.layer] // 2)
    assert (PRESET.input_size, PRESET.channels, PRESET.num_classes) == (28, 1, 10)


def test_train_net_shares_parameter_names(tmp_path):
    train = load_net(write_net_param(tmp_path / "t.prototxt", fashionnet.build_train(PRESET, 3)), phase=caffe.TRAIN)
    deploy = load_net(write_net_param(tmp_path / "d.prototxt", fashionnet.build(PRESET, 3)))
    assert param_shapes(train) == param_shapes(deploy)
    assert train.blobs["label"].data.shape == (3,) and train.blobs["loss"].data.shape == ()


def test_init_blobs_are_seeded_and_scaled(tmp_path):
    shapes = param_shapes(load_net(write_net_param(tmp_path / "d.prototxt", fashionnet.build(PRESET, 1))))
    a = fashionnet.init_blobs(shapes, np.random.default_rng(0), input_std=90.0)
    b = fashionnet.init_blobs(shapes, np.random.default_rng(0), input_std=90.0)
    np.testing.assert_array_equal(a["conv2"][0], b["conv2"][0])
    assert a["conv1"][0].std() == pytest.approx(np.sqrt(2 / 25) / 90, rel=0.15)
    assert a["fc5"][0].std() == pytest.approx(0.01, rel=0.15) and not a["fc4"][1].any()


@pytest.mark.slow
def test_shipped_weights_accuracy():
    from defense.train.baseline import DEFAULT_OUTPUT, accuracy
    from defense.data import FashionMnist
    if not DEFAULT_OUTPUT.is_file():
        pytest.skip("weights/FashionNet/fashionnet.caffemodel not trained yet (python -m defense.train_baseline)")
    top1 = accuracy(DEFAULT_OUTPUT, FashionMnist("test").subset(np.arange(1000)), 100)
    assert top1 >= 0.88
