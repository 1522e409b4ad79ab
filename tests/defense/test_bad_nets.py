"""Net definitions Caffe rejects by aborting the process: every command gets one line naming the
file, the layer and Caffe's reason, exit code 2, and writes nothing (the net is built in a child
process first, ``defense.core.check_net_builds``)."""
from __future__ import annotations

import subprocess
import sys

import pytest

HEAD = 'name: "bad"\nlayer { name: "data" type: "Input" top: "data" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } } }\n'
TAIL = ('layer { name: "fc" type: "InnerProduct" bottom: "conv" top: "fc" inner_product_param { num_output: 3 } }\n'
        'layer { name: "prob" type: "Softmax" bottom: "fc" top: "prob" }\n')
CONV = 'layer {{ name: "conv" type: "Convolution" bottom: "data" top: "conv" convolution_param {{ {} }} }}\n'

CASES = {  # name: (prototxt, the layer named, Caffe's reason)
    "kernel larger than its input": (HEAD + CONV.format("num_output: 4 kernel_size: 11") + TAIL, "conv",
                                     "Check failed: shape[i] >= 0"),
    "num_output 0": (HEAD + CONV.format("num_output: 0 kernel_size: 3") + TAIL, "conv",
                     "Check failed: num_output_ > 0"),
    "no kernel_size": (HEAD + CONV.format("num_output: 4") + TAIL, "conv", "kernel_size must be specified"),
    "duplicate top": (HEAD + CONV.format("num_output: 4 kernel_size: 3")
                      + 'layer { name: "again" type: "ReLU" bottom: "data" top: "conv" }\n' + TAIL, "again",
                      "Top blob 'conv' produced by multiple sources"),
    "Input without a shape": (HEAD.replace(" input_param { shape { dim: 1 dim: 1 dim: 8 dim: 8 } }", "")
                              + CONV.format("num_output: 4 kernel_size: 3") + TAIL, "conv", "Check failed"),
}


def _run(args, cwd):
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, cwd=cwd)


@pytest.mark.parametrize("case", sorted(CASES))
@pytest.mark.parametrize("command", ["export", "generate"])
def test_a_net_caffe_rejects_is_one_line_and_exit_2(case, command, tmp_path, root):
    text, layer, reason = CASES[case]
    prototxt = tmp_path / "bad.prototxt"
    prototxt.write_text(text)
    out = tmp_path / "out"
    if command == "export":
        args = ["-m", "defense.export", "--format", "onnx", "--prototxt", str(prototxt), "--weights",
                str(root / "weights" / "FashionNet" / "fashionnet.caffemodel"), "--out", str(out)]
    else:
        args = ["-m", "defense.generate", "--prototxt", str(prototxt), "--layers", "conv", "--out", str(out)]
    res = _run(args, root)
    assert res.returncode == 2, res.stderr[-2000:]
    lines = res.stderr.strip().splitlines()
    assert len(lines) == 1, res.stderr[-2000:]
    assert lines[0].startswith(f"error: {prototxt}: Caffe cannot build this net at layer '{layer}': "), lines[0]
    assert reason in lines[0]
    assert not out.exists() and prototxt.read_text() == text


@pytest.mark.parametrize("value", [float("nan"), float("inf")])
def test_weights_holding_nan_or_inf_are_refused_naming_the_layer(value, tmp_path, root):
    import numpy as np

    from defense.core import load_blobs, save_blobs
    from defense.presets import get_preset

    preset = get_preset("FashionNet")
    blobs = load_blobs(preset.weights())
    blobs["conv2"][0].flat[5] = value
    bad = save_blobs(tmp_path / "bad.caffemodel", blobs)
    before = bad.read_bytes()
    out = tmp_path / "m.onnx"
    res = _run(["-m", "defense.export", "--format", "onnx", "--prototxt", str(preset.deploy), "--weights", str(bad),
                "--out", str(out)], root)
    assert res.returncode == 2
    assert res.stderr.strip() == (f"error: {bad}: layer 'conv2' blob 0 holds NaN or infinite values; "
                                  "use a caffemodel that training did not break")
    assert not out.exists() and bad.read_bytes() == before
    assert np.isfinite(load_blobs(preset.weights())["conv2"][0]).all()
