"""Evaluation: metrics on a two-pixel toy problem with a hand-computed answer, reports, CLI."""
import json

import numpy as np
import pytest

from attacks.classifier import CaffeClassifier
from defense.core import L, caffe, net_param_text, run_cli, save_blobs
from defense.data import ArraySource
from defense.evaluate import Model, Preprocessor, draw_choices, evaluate, markdown_table, write_reports
from defense.evaluate.__main__ import main

# Two-pixel images [a, b]; the nets' logits are W @ [a, b], so the prediction is readable by eye.
IMAGES = np.array([[10, 0], [0, 10], [10, 0], [0, 10], [10, 0]], np.float32).reshape(5, 1, 1, 2)
LABELS = np.array([0, 1, 0, 1, 1])
V = np.array([0, 15], np.float32).reshape(1, 1, 2)  # pushes every image towards class 1
BASELINE_W = np.eye(2, dtype=np.float32)               # predicts argmax(a, b)
DEFENDED_W = np.diag([1.0, 0.5]).astype(np.float32)     # halves b: the perturbation no longer wins


def linear_net(tmp_path, name, weights, size=(1, 2), classes=2):
    n = caffe.NetSpec()
    n.data = L.Input(name="data", input_param=dict(shape=dict(dim=[5, 1, *size])))
    n.fc = L.InnerProduct(n.data, name="fc", num_output=classes)
    n.prob = L.Softmax(n.fc, name="prob")
    proto = tmp_path / f"{name}.prototxt"
    proto.write_text(net_param_text(n.to_proto()))
    model = save_blobs(tmp_path / f"{name}.caffemodel", {"fc": [weights, np.zeros(classes, np.float32)]})
    return proto, model


@pytest.fixture
def models(tmp_path):
    out = []
    for name, w in (("baseline", BASELINE_W), ("FRU", DEFENDED_W)):
        proto, weights = linear_net(tmp_path, name, w)
        out.append(Model(name, CaffeClassifier.from_files(proto, weights, (0.0,), batch_size=5)))
    return out


def test_restoration_accuracy_known_answer(models):
    # baseline clean preds 0,1,0,1,0 -> top-1 4/5; perturbed preds all 1 -> 3/5; 3 labels change.
    # defended clean preds 0,1,0,1,0 -> 4/5; perturbed unchanged -> 4/5; nothing changes.
    result = evaluate(models, ArraySource(IMAGES, LABELS), [V], seed=0, batch_size=2, progress=False)
    base, fru = result["models"]["baseline"], result["models"]["FRU"]
    assert (base["clean_top1"], base["perturbed_top1"], base["fooling_rate"]) == pytest.approx((0.8, 0.6, 0.6))
    assert (fru["clean_top1"], fru["perturbed_top1"], fru["fooling_rate"]) == pytest.approx((0.8, 0.8, 0.0))
    assert base["restoration_accuracy"] == pytest.approx((0.8 + 0.6) / (2 * 0.8))
    assert fru["restoration_accuracy"] == pytest.approx(1.0)
    assert result["restoration_denominator"] == pytest.approx(0.8)
    assert result["perturbation_counts"] == [5]


def test_published_denominator(models):
    result = evaluate(models, ArraySource(IMAGES, LABELS), [V], baseline_top1=0.5, progress=False)
    assert result["models"]["baseline"]["restoration_accuracy"] == pytest.approx(1.4)
    assert result["baseline_clean_top1_measured"] == pytest.approx(0.8)


def test_one_random_perturbation_per_image(models):
    zero = np.zeros_like(V)
    which = draw_choices(5, 2, seed=7)
    np.testing.assert_array_equal(which, draw_choices(5, 2, seed=7))
    result = evaluate(models[:1], ArraySource(IMAGES, LABELS), [V, zero], seed=7, progress=False)
    perturbed = (which == 0)
    clean_preds = np.array([0, 1, 0, 1, 0])
    preds = np.where(perturbed, 1, clean_preds)
    assert result["models"]["baseline"]["perturbed_top1"] == pytest.approx(np.mean(preds == LABELS))
    assert result["perturbation_counts"] == np.bincount(which, minlength=2).tolist()


class DropSecondPixel(Preprocessor):
    key = "drop"

    def _check_params(self):
        pass

    def _apply(self, x, classifier=None):
        out = x.copy()
        out[..., 1] = 0.0
        return out


def test_peer_preprocessor_runs_before_the_net(models):
    peer = Model("baseline+drop", models[0].classifier, DropSecondPixel())
    result = evaluate([models[0], peer], ArraySource(IMAGES, LABELS), [V], progress=False)
    row = result["models"]["baseline+drop"]
    # b is zeroed: every image predicts class 0 (ties go to 0), clean and perturbed
    assert (row["clean_top1"], row["perturbed_top1"], row["fooling_rate"]) == pytest.approx((0.4, 0.4, 0.0))
    assert row["preprocessor"] == "drop()"


def test_reports_are_written(models, tmp_path):
    result = evaluate(models, ArraySource(IMAGES, LABELS), [V], progress=False)
    paths = write_reports(result, tmp_path / "out", "toy")
    assert [p.name for p in paths] == ["toy.json", "toy.md", "toy.png"]
    assert json.loads(paths[0].read_text())["models"]["FRU"]["restoration_accuracy"] == pytest.approx(1.0)
    assert "| FRU | 0.8000 | 0.8000 | 0.0000 | 1.0000 |" in paths[1].read_text()
    assert paths[2].read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert markdown_table(result).count("\n") == 6


def test_evaluate_rejects_bad_input(models):
    src = ArraySource(IMAGES, LABELS)
    with pytest.raises(ValueError, match="evaluation needs at least one perturbation"):
        evaluate(models, src, [], progress=False)
    with pytest.raises(ValueError, match=r"perturbations have shape \(1, 1, 3\), the images \(1, 1, 2\)"):
        evaluate(models, src, [np.zeros((1, 1, 3))], progress=False)
    with pytest.raises(ValueError, match=r"baseline 'x' is not one of the models"):
        evaluate(models, src, [V], baseline="x", progress=False)


def test_cli_on_fashion_mnist(tmp_path, capsys):
    pytest.importorskip("defense.data").FashionMnist("test")
    rng = np.random.default_rng(0)
    base = linear_net(tmp_path, "b", rng.normal(0, 0.01, (10, 784)).astype(np.float32), (28, 28), 10)
    fru = linear_net(tmp_path, "f", rng.normal(0, 0.01, (10, 784)).astype(np.float32), (28, 28), 10)
    np.save(tmp_path / "v.npy", rng.uniform(-20, 20, (2, 1, 28, 28)).astype(np.float32))
    code = main(["--net", "FashionNet", "--perturbations", str(tmp_path / "v.npy"), "--limit", "30",
                 "--baseline-prototxt", str(base[0]), "--baseline-weights", str(base[1]),
                 "--defended-prototxt", str(fru[0]), "--defended-weights", str(fru[1]),
                 "--peers", "median,bits:4,pd:map=uniform,seed=1", "--out", str(tmp_path / "r")])
    assert code == 0
    result = json.loads((tmp_path / "r" / "evaluation.json").read_text())
    assert result["images"] == 30 and result["perturbations"] == 2 and result["network"] == "FashionNet"
    assert list(result["models"]) == ["baseline", "FRU", "baseline+median(3)", "baseline+bits(4)",
                                      "baseline+pd(deflections=auto, window=auto, sigma=0.04, map=uniform, seed=1)"]


def test_cli_missing_weights_is_one_line(tmp_path, capsys):
    proto, _ = linear_net(tmp_path, "b", np.zeros((10, 784), np.float32), (28, 28), 10)
    np.save(tmp_path / "v.npy", np.zeros((1, 28, 28), np.float32))
    code = run_cli(main, ["--net", "FashionNet", "--perturbations", str(tmp_path / "v.npy"), "--no-defended",
                          "--baseline-prototxt", str(proto), "--baseline-weights", str(tmp_path / "no.caffemodel")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and "no.caffemodel: caffemodel not found" in err


def test_bar_chart_gives_each_of_thirteen_series_its_own_colour(tmp_path):
    """The reproduction draws 13 columns; matplotlib's default cycle repeats after 10."""
    from PIL import Image

    from defense.evaluate.report import bar_chart

    path = bar_chart(tmp_path / "bars.png", ["case"], {f"model{i}": [1.0] for i in range(13)}, "t", (8, 3),
                     (0.0, 2.0), legend=dict(loc="upper left", fontsize=5))
    rgb = np.asarray(Image.open(path).convert("RGB")).reshape(-1, 3)
    colours, counts = np.unique(rgb, axis=0, return_counts=True)
    bars = colours[(counts > 5000) & (colours.min(axis=1) < 255)]  # a bar is ~8,000 pixels; white excluded
    assert len(bars) == 13
