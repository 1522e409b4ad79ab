"""defense_example.py: the published single-image command line over defense.demo."""
from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

from defense.core import run_cli
from defense.evaluate.demo import DemoOptions, class_names, run_demo
from defense.paper import DEMO
from defense.presets import get_preset

import defense_example
from fake_imagenet import checkerboard, class_image, write_nets, write_uap

ROOT = Path(__file__).resolve().parents[3]


def clipped_fooler() -> np.ndarray:
    """Fools the ReLU baseline on a class-1 image even after clipping, but not the linear "FRU" net.

    Blue goes to 255 on 4 pixels of 5 and to 0 on the fifth: the baseline's ReLU mean is
    0.8 x (255 - 103.9) = 121 > green's 113 (class 0); the linear mean 0.8 x 255 - 103.9 = 100 < 113.
    """
    v = np.zeros((3, 224, 224))
    v[0] = np.where(np.arange(224 * 224).reshape(224, 224) % 5 == 0, -30.0, 225.0)
    return v


@pytest.fixture()
def fake(tmp_path):
    manifest = write_nets(tmp_path)
    image = tmp_path / "class1.JPEG"
    Image.fromarray(class_image(1)).save(image, quality=95)
    samples = tmp_path / "samples"
    write_uap(samples / "UAP" / "CaffeNet" / "caffenet_adv_iter_1.h5", clipped_fooler())
    return {"root": tmp_path, "manifest": manifest, "image": image, "samples": samples}


def _args(fake, *extra):
    return ["--dnn", "CaffeNet", "--input", str(fake["image"]), "--attack", "UAP", "--defense", "True",
            "--manifest", str(fake["manifest"]), "--perturbations", str(fake["samples"]), *extra]


def test_demo_writes_the_figure_and_the_defence_restores_the_class(fake, tmp_path, capsys):
    out = tmp_path / "fig.png"
    assert run_cli(defense_example.main, _args(fake, "--out", str(out))) == 0
    printed = capsys.readouterr().out
    assert "baseline: top 1 prediction on the perturbed image: class 0," in printed
    assert "FRU: top 1 prediction on the perturbed image: class 1," in printed
    with Image.open(out) as png:
        assert png.format == "PNG" and png.size == (1000, 800)


def test_demo_clips_and_uses_class_names(fake):
    labels = fake["root"] / "labels.json"
    labels.write_text(json.dumps({str(i): [f"n{i:08d}", f"name{i}"] for i in range(1000)}))
    own = write_uap(fake["root"] / "checkerboard.h5", checkerboard())
    result = run_demo(DemoOptions(net="CaffeNet", input=str(fake["image"]), manifest=fake["manifest"],
                                  perturbation=own, labels=labels))
    assert result.perturbed.min() == 0.0 and result.perturbed.max() == 255.0   # clipped as published
    assert float(result.image[0].mean()) == pytest.approx(30, abs=2)
    assert [p[1] for p in result.predictions["FRU"].perturbed[:1]] == ["name1"]
    assert result.predictions["baseline"].clean[0][0] == 1


def test_baseline_taken_from_the_fru_caffemodel_when_absent(tmp_path):
    manifest = write_nets(tmp_path, baseline_weights=False)
    image = tmp_path / "c2.JPEG"
    Image.fromarray(class_image(2)).save(image, quality=95)
    write_uap(tmp_path / "s" / "UAP" / "CaffeNet" / "caffenet_adv_iter_1.h5", np.zeros((3, 224, 224)))
    result = run_demo(DemoOptions(net="CaffeNet", input=str(image), manifest=manifest, perturbations_dir=tmp_path / "s"))
    assert result.files["baseline"] == result.files["FRU"]
    assert result.predictions["baseline"].perturbed[0][0] == 2


def test_defense_false_shows_only_the_baseline(fake):
    result = run_demo(DemoOptions(net="CaffeNet", input=str(fake["image"]), defense=False, manifest=fake["manifest"],
                                  perturbations_dir=fake["samples"]))
    assert list(result.predictions) == ["baseline"]


def test_missing_published_perturbation_offline_names_its_address(fake, tmp_path, capsys):
    args = _args(fake)
    args[args.index("--perturbations") + 1] = str(tmp_path / "none")
    assert run_cli(defense_example.main, args) == 2
    assert capsys.readouterr().err == (
        f"error: UAP/CaffeNet/caffenet_adv_iter_1.h5: {tmp_path / 'none/UAP/CaffeNet/caffenet_adv_iter_1.h5'} is "
        "missing and downloads are off (--offline or FRU_OFFLINE=1); download https://raw.githubusercontent.com/"
        "tsborkar/Selective-feature-regeneration/bb22f206dca54b8fee34eaf089bd122e001f6c9a/Attack_samples/UAP/CaffeNet/"
        "caffenet_adv_iter_1.h5 and put it there\n")


def test_attack_without_a_file_for_the_network(capsys):
    assert run_cli(defense_example.main, ["--dnn", "FashionNet", "--attack", "FFF", "--load", __file__]) == 2
    assert "no FFF perturbation for FashionNet; available: UAP, sPGD, SFool, NAG, GAP" in capsys.readouterr().err


def test_imagenet_class_indices_without_labels(monkeypatch, tmp_path):
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("FRU_IMAGENET_LABELS", raising=False)
    assert class_names(get_preset("ResNet152"), None) is None
    assert class_names(get_preset("FashionNet"), None)[9] == "Ankle boot"


FASHION_DEMO = DEMO["FashionNet"]
FASHION_FILES = [ROOT / FASHION_DEMO.baseline[1], ROOT / FASHION_DEMO.fru[1], ROOT / FASHION_DEMO.attacks["UAP"][0]]


@pytest.mark.skipif(not all(p.is_file() for p in FASHION_FILES), reason="FashionNet demo files not shipped yet")
def test_fashionnet_demo_offline(tmp_path):
    out = tmp_path / "demo.png"
    assert run_cli(defense_example.main, ["--dnn", "FashionNet", "--attack", "UAP", "--defense", "True",
                                          "--input", "fashion:0", "--out", str(out)]) == 0
    with Image.open(out) as png:
        assert png.format == "PNG"


def test_a_competitor_joins_the_demo(tmp_path, root, capsys):
    """``--competitor hgd P W``: a generated HGD at initialisation is the baseline, so its panel
    and its printed top 5 are the baseline's."""
    from defense.generate.__main__ import main as generate_main
    assert generate_main(["--defense", "hgd", "--preset", "FashionNet", "--weights",
                          str(root / "weights/FashionNet/fashionnet.caffemodel"), "--out", str(tmp_path / "hgd")]) == 0
    capsys.readouterr()
    out = tmp_path / "demo.png"
    assert run_cli(defense_example.main, ["--dnn", "FashionNet", "--competitor", "hgd",
                                          str(tmp_path / "hgd/deploy_HGD.prototxt"),
                                          str(tmp_path / "hgd/init.caffemodel"), "--out", str(out)]) == 0
    lines = capsys.readouterr().out.splitlines()
    base = [ln.split(": ", 1)[1] for ln in lines if ln.startswith("baseline:")]
    hgd = [ln.split(": ", 1)[1] for ln in lines if ln.startswith("HGD:")]
    assert len(base) == 2 and hgd == base
    assert Image.open(out).size == (1000, 800)  # three panels below the images: baseline, FRU, HGD


@pytest.mark.skipif(not all(p.is_file() for p in FASHION_FILES), reason="FashionNet demo files not shipped yet")
def test_fashionnet_demo_with_pixel_deflection(tmp_path, capsys):
    """--peers: the baseline behind pixel deflection, printed and drawn beside the FRU net."""
    out = tmp_path / "demo.png"
    assert run_cli(defense_example.main, ["--dnn", "FashionNet", "--attack", "UAP", "--input", "fashion:8",
                                          "--peers", "pd:seed=1", "--out", str(out)]) == 0
    printed = capsys.readouterr().out
    assert "baseline+pd: top 1 prediction on the perturbed image: " in printed
    assert [line.split(":")[0] for line in printed.splitlines() if "top 1" in line] == ["baseline", "FRU", "baseline+pd"]
    result = run_demo(DemoOptions(net="FashionNet", input="fashion:8", peers=("pd:seed=1",)))
    assert list(result.predictions) == ["baseline", "FRU", "baseline+pd"]
    # measured: fashion:8 (a sandal) stays a shirt behind PD, as for the baseline (the FRUs restore it)
    assert [(m, p.clean[0][1], p.perturbed[0][1]) for m, p in result.predictions.items()] == [
        ("baseline", "Sandal", "Shirt"), ("FRU", "Sandal", "Sandal"), ("baseline+pd", "Sandal", "Shirt")]


@pytest.mark.skipif(not all(p.is_file() for p in FASHION_FILES), reason="FashionNet demo files not shipped yet")
def test_fashionnet_demo_image_is_the_first_the_shipped_uap_fools():
    """``paper.DEMO``'s rule: the first test image whose clipped perturbed version the baseline
    gets wrong (it gets the clean one right); fails when a new shipped run moves it."""
    from attacks.classifier import CaffeClassifier
    from defense.data import FashionMnist

    index = int(FASHION_DEMO.input.split(":")[1])
    x, y = FashionMnist("test").take(np.arange(index + 1))
    uap = np.load(ROOT / FASHION_DEMO.attacks["UAP"][0], allow_pickle=False)
    clf = CaffeClassifier.from_files(ROOT / FASHION_DEMO.baseline[0], ROOT / FASHION_DEMO.baseline[1],
                                     get_preset("FashionNet").mean_bgr)
    clean, perturbed = clf.labels(x), clf.labels(np.clip(x + uap, 0.0, 255.0))
    fooled = (clean == y) & (perturbed != y)
    assert np.flatnonzero(fooled).tolist() == [index]
