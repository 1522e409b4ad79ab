"""defense.core: the one net loader, the one weights-fit check and the one solver builder."""
import numpy as np
import pytest

from defense.core import (L, ToolkitError, caffe, caffemodel_shapes, check_weights_fit, load_net, param_shapes,
                          same_shape, save_blobs, solver_param, weights_misfit)


def _net(classes=3):
    n = caffe.NetSpec()
    n.data = L.Input(name="data", input_param=dict(shape=dict(dim=[1, 4])))
    n.fc = L.InnerProduct(n.data, name="fc", num_output=classes)
    n.prob = L.Softmax(n.fc, name="prob")
    return n.to_proto()


def test_load_net_takes_a_netparameter_and_its_weights(tmp_path):
    w = np.arange(12, dtype=np.float32).reshape(3, 4)
    model = save_blobs(tmp_path / "m.caffemodel", {"fc": [w, np.zeros(3, np.float32)]})
    net = load_net(_net(), model)
    np.testing.assert_array_equal(net.params["fc"][0].data, w)


def test_weights_of_another_net_are_a_one_line_error(tmp_path):
    model = save_blobs(tmp_path / "m.caffemodel", {"fc": [np.zeros((5, 4), np.float32), np.zeros(5, np.float32)]})
    with pytest.raises(ToolkitError, match=r"m.caffemodel: layer 'fc' of the caffemodel has blob shapes "
                                           r"\[\(5, 4\), \(5,\)\] but <net> needs \[\(3, 4\), \(3,\)\]; use the caffemodel"):
        load_net(_net(), model)


def test_require_all_names_the_missing_layers(tmp_path):
    model = save_blobs(tmp_path / "m.caffemodel", {"other": [np.zeros(1, np.float32)]})
    wanted = param_shapes(load_net(_net()))
    assert weights_misfit(caffemodel_shapes(model), wanted) is None  # copy_from would ignore the layer
    assert weights_misfit(caffemodel_shapes(model), wanted, require_all=True) == ("missing", ["fc"])
    with pytest.raises(ToolkitError, match=r"the download lacks layer\(s\) fc that net.prototxt needs; fetch again"):
        check_weights_fit(model, wanted, "net.prototxt", require_all=True, subject="the download", fix="fetch again")


def test_legacy_4d_blobs_fit_as_caffe_reads_them():
    assert same_shape((1, 1, 3, 4), (3, 4)) and same_shape((3, 4), (3, 4))
    assert not same_shape((1, 1, 4, 3), (3, 4)) and not same_shape((12,), (3, 4))


def test_solver_param_sets_only_the_fields_given(tmp_path):
    solver = solver_param("train.prototxt", base_lr=0.1, max_iter=10, stepsize=None, stepvalue=[])
    assert {f.name for f, _ in solver.ListFields()} == {"net", "base_lr", "max_iter", "type"}
    inline = solver_param(_net(), solver_type="Adam", base_lr=0.1, max_iter=10, solver_mode="CPU")
    assert inline.net_param.layer[1].name == "fc" and inline.type == "Adam" and inline.solver_mode == 0


@pytest.mark.parametrize("fields, message", [
    (dict(max_iter=10), "base_lr is needed"),
    (dict(base_lr=0.0, max_iter=10), "base_lr must be positive, got 0.0"),
    (dict(base_lr=0.1, max_iter=10, stepsize=0), "stepsize must be positive, got 0"),
    (dict(base_lr=0.1, max_iter=10, snapshot=-1), "snapshot must be 0 or positive, got -1"),
])
def test_solver_param_validates_its_fields(fields, message):
    with pytest.raises(ValueError, match=message):
        solver_param("train.prototxt", **fields)
