"""The runtimes of a classifier (attacks.runtime): onnxruntime against Caffe, the top-1 check
and its tie tolerance, the runtime choice, and the one factory (defense.evaluate.runtime)."""
from __future__ import annotations

import numpy as np
import pytest

from attacks.classifier import CaffeClassifier
from attacks.runtime import TIE_TOLERANCE, OnnxClassifier, resolve_runtime
from defense.core import ToolkitError, save_blobs, write_net_param

pytest.importorskip("onnx")
pytest.importorskip("onnxruntime")

from defense.evaluate.runtime import classifier_for, onnx_classifier  # noqa: E402
from defense.generate import onnx_graph  # noqa: E402
from fru_nets import random_weights, tiny_net  # noqa: E402
from onnx_faults import negated_logits  # noqa: E402

MEAN = (104.0, 117.0, 123.0)


@pytest.fixture(scope="module")
def files(tmp_path_factory):
    folder = tmp_path_factory.mktemp("runtime")
    param = tiny_net()
    prototxt = write_net_param(folder / "deploy.prototxt", param)
    blobs = random_weights(param, seed=3)
    weights = save_blobs(folder / "tiny.caffemodel", blobs)
    return prototxt, weights, blobs


def _images(n: int, seed: int = 0) -> np.ndarray:
    return np.random.default_rng(seed).uniform(0, 255, (n, 3, 12, 12)).astype(np.float32)


def test_onnx_classifier_gives_caffes_logits_and_passes_the_check(files):
    prototxt, weights, _ = files
    x = _images(40)
    caffe_clf = classifier_for(prototxt, weights, MEAN, "caffe", batch_size=16)
    fast = classifier_for(prototxt, weights, MEAN, "onnx", sample=x[:20], batch_size=16)
    assert type(caffe_clf) is CaffeClassifier and isinstance(fast, OnnxClassifier)
    expected, got = caffe_clf.logits(x), fast.logits(x)
    assert got.shape == expected.shape == (40, 5)
    np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-4 * np.abs(expected).max())
    np.testing.assert_array_equal(fast.labels(x), caffe_clf.labels(x))
    check = fast.runtime_check
    assert (check["images"], check["top1_equal"], check["ties"]) == (20, 20, 0)
    assert 0.0 <= check["max_rel_logit_diff"] < 1e-4
    options = fast.session.get_session_options()  # no pool spinning beside Caffe's threads
    assert (options.intra_op_num_threads, options.get_session_config_entry("session.intra_op.allow_spinning")) == (0, "0")
    with pytest.raises(ToolkitError, match="gradients need the Caffe runtime"):
        fast.loss_gradient(x[:2], np.array([0, 1]))
    with pytest.raises(ToolkitError, match="the ONNX runtime computes only fc, not 'conv1'; use the Caffe runtime"):
        fast.blob_values(x[:2], ["conv1"])


def test_a_graph_cut_after_a_blob_gives_caffes_values_and_checks_them(files):
    """``blobs``: the graph ends at them (no classifier behind), their values are Caffe's, the input
    blob is the preprocessed images, and ``verify`` compares the values instead of a top-1."""
    prototxt, weights, _ = files
    x = _images(30)
    caffe_clf = CaffeClassifier.from_files(prototxt, weights, MEAN, batch_size=16)
    cut = onnx_classifier(caffe_clf, prototxt, blobs=["pool1"])
    assert [o.name for o in cut.session.get_outputs()] == ["pool1"]
    expected, got = caffe_clf.blob_values(x, ["data", "pool1"]), cut.blob_values(x, ["data", "pool1"])
    assert got["pool1"].shape == expected["pool1"].shape == (30, 8, 6, 6)
    np.testing.assert_array_equal(got["data"], expected["data"])
    np.testing.assert_allclose(got["pool1"], expected["pool1"], rtol=0, atol=1e-5 * np.abs(expected["pool1"]).max())
    check = cut.verify(x[:10])
    assert check["images"] == 10 and set(check) == {"images", "max_rel_blob_diff"}
    assert 0.0 <= check["max_rel_blob_diff"]["pool1"] < 1e-5
    with pytest.raises(ToolkitError, match="the ONNX runtime computes only pool1, not 'fc'"):
        cut.logits(x[:2])
    wrong = CaffeClassifier.from_files(prototxt, weights, MEAN)
    wrong.net.params["conv1"][0].data[...] *= 1.01
    cut.reference = wrong
    with pytest.raises(ToolkitError) as err:
        cut.verify(x[:10])
    assert str(err.value).startswith(f"{prototxt}: onnxruntime's 'pool1' differs from Caffe's by 0.0")
    assert str(err.value).endswith("relative (more than 0.0001); run with --runtime caffe")


def test_a_wrong_onnx_model_fails_the_check_in_one_line(files, monkeypatch):
    prototxt, weights, _ = files
    monkeypatch.setattr("defense.evaluate.runtime.onnx_model", negated_logits(onnx_graph.onnx_model))
    with pytest.raises(ToolkitError) as err:
        classifier_for(prototxt, weights, MEAN, "onnx", sample=_images(20))
    message = str(err.value)
    assert message.startswith(f"{prototxt}: onnxruntime's top-1 differs from Caffe's on 20 of 20 sample images "
                              "(image 0: Caffe ")
    assert message.endswith("run with --runtime caffe") and "\n" not in message


def _fixed_logits(files, bias) -> CaffeClassifier:
    """The tiny net in Caffe with a zero last layer: ``bias`` is every image's logits."""
    prototxt, weights, _ = files
    clf = CaffeClassifier.from_files(prototxt, weights, MEAN)
    clf.net.params["fc"][0].data[...] = 0
    clf.net.params["fc"][1].data[...] = bias
    return clf


@pytest.mark.parametrize("caffe_gap, error", [(0.0, False), (TIE_TOLERANCE / 2, False), (2 * TIE_TOLERANCE, True)])
def test_a_flipped_tie_is_no_mismatch_but_a_real_gap_is(files, caffe_gap, error):
    """Caffe's logits (1, 1 - gap, 0, 0, 0), onnxruntime's (1, 1.001, 0, 0, 0): its top-1 is class 1,
    a mismatch only where Caffe's class 0 leads class 1 by more than TIE_TOLERANCE."""
    prototxt = files[0]
    reference = _fixed_logits(files, (1.0, 1.0 - caffe_gap, 0, 0, 0))
    fast = onnx_classifier(_fixed_logits(files, (1.0, 1.001, 0, 0, 0)), prototxt)
    fast.reference = reference
    x = _images(4)
    assert (reference.labels(x) == 0).all() and (fast.labels(x) == 1).all()
    if error:
        with pytest.raises(ToolkitError, match="differs from Caffe's on 4 of 4 sample images"):
            fast.verify(x)
    else:
        assert fast.verify(x) == {"images": 4, "top1_equal": 0, "ties": 4,
                                  "max_rel_logit_diff": pytest.approx(0.001 + caffe_gap, rel=1e-3)}


def test_runtime_choice(monkeypatch):
    assert resolve_runtime("auto") == "onnx"
    assert resolve_runtime("auto", gpu=0) == "caffe"
    assert resolve_runtime("caffe") == "caffe" and resolve_runtime("onnx") == "onnx"
    with pytest.raises(ValueError, match="--runtime must be one of auto, caffe, onnx, got 'tensorrt'"):
        resolve_runtime("tensorrt")
    monkeypatch.setattr("attacks.runtime.onnxruntime_available", lambda: False)
    assert resolve_runtime("auto") == "caffe"
    with pytest.raises(ToolkitError, match="--runtime onnx needs the onnx and onnxruntime packages"):
        resolve_runtime("onnx")
