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
