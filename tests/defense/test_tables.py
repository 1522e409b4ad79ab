"""The paper's tables as commands (defense.tables, defense.paper) on a fake ImageNet with a known answer."""
from __future__ import annotations

import json
import shutil
from pathlib import Path

import numpy as np
import pytest

from attacks.runtime import onnxruntime_available
from defense.core import run_cli
from defense.paper import TABLE2, TABLE4, TABLE5, table_cases
from defense.evaluate.conditions import draw_choices
from defense.tables import limit_positions, main, protocol_positions

from fake_imagenet import write_images, write_nets, write_same_norm, write_unseen_caffenet

CAFFENET_DENOM = 0.564
LABELS = np.array([0, 0, 1, 1, 2, 2])  # write_images: 2 per class, in index order


@pytest.fixture(scope="module")
def fake(tmp_path_factory):
    root = tmp_path_factory.mktemp("fake_imagenet")
    return {"root": root, "manifest": write_nets(root), "index": write_images(root)}


def _run(fake, tmp_path, table, perturbations, *extra):
    out = tmp_path / "out"
    code = main([table, "--net", "CaffeNet", "--index", str(fake["index"]), "--manifest", str(fake["manifest"]),
                 "--perturbations", str(perturbations), "--out", str(out), "--quiet", "--workers", "1", *extra])
    assert code == 0
    return out, json.loads((out / f"{table}_CaffeNet.json").read_text())


# ---------------------------------------------------------------- protocol data
def test_published_numbers_and_protocol():
    (case,) = table_cases("same-norm", "ResNet152")
    assert case.files == tuple(f"UAP/ResNet152/resnet152_adv_iter_{k}.h5" for k in range(1, 6))
    assert (case.per_class, case.seed, case.published.baseline, case.published.fru) == (50, 0, 0.670, 0.982)
    (cross,) = table_cases("cross-norm", "VGG_F")
    assert cross.files == tuple(f"UAP/VGG_F/L_2/vgg_f_l2_adv_iter_{k}.h5" for k in range(1, 4))
    assert cross.per_class == 20 and cross.published.fru is None
    stronger = table_cases("stronger", "CaffeNet")
    assert [c.published.fru for c in stronger] == [TABLE4[15].fru, TABLE4[20].fru, TABLE4[25].fru] == [0.952, 0.896, 0.854]
    assert stronger[2].files[-1] == "UAP/CaffeNet/Linf_25/caffenet_adv_iter_L25_4.h5" and stronger[0].seed == 1000
    sfool = {c.key: c for c in table_cases("unseen", "CaffeNet")}["SFool"]
    assert [r.label for r in sfool.runs] == ["conv3", "fc6"] and sfool.published.baseline == 0.815
    gap = {c.key: c for c in table_cases("unseen", "ResNet152")}["GAP"]
    assert gap.files == ("GAP/res152_guided_GAP_epoch_10.h5",) and gap.runs[0].fmt == "gap"
    assert TABLE2["GoogLeNet"].fru == 0.970 and TABLE5[("ResNet152", "sPGD")].baseline == 0.671


def test_every_protocol_file_is_in_the_published_manifest():
    from attacks.published import load_published_manifest
    names = {e.name for e in load_published_manifest()}
    for table, nets in (("same-norm", TABLE2), ("cross-norm", TABLE2), ("stronger", ["CaffeNet"]),
                        ("unseen", ["CaffeNet", "ResNet152"])):
        for net in nets:
            for case in table_cases(table, net):
                assert set(case.files) <= names, (table, net)


def test_table_rejects_a_network_it_does_not_report():
    from defense.core import ToolkitError
    with pytest.raises(ToolkitError, match="the stronger table reports CaffeNet, not VGG16"):
        table_cases("stronger", "VGG16")


def test_draws_match_the_published_per_image_randint():
    np.random.seed(0)
    published = [np.random.randint(1, 6) - 1 for _ in range(40)]
    np.testing.assert_array_equal(draw_choices(40, 5, 0), published)
    np.testing.assert_array_equal(draw_choices(7, 1, 0), np.zeros(7))


def test_protocol_and_limit_positions():
    labels = np.array([0, 0, 0, 1, 1, 2, 2, 2, 2])
    np.testing.assert_array_equal(protocol_positions(labels, 2), [0, 1, 3, 4, 5, 6])
    np.testing.assert_array_equal(limit_positions(6, 3), [0, 2, 4])
    np.testing.assert_array_equal(limit_positions(6, None), np.arange(6))


# ---------------------------------------------------------------- known answers
def test_same_norm_restoration_accuracy_is_exact(fake, tmp_path):
    pert = write_same_norm(tmp_path / "samples", fooling=range(1, 6))
    out, report = _run(fake, tmp_path, "same-norm", pert)
    (case,) = report["cases"]
    base, fru = case["results"]["baseline"], case["results"]["fru"]
    # baseline: all 6 clean right; perturbed, everything becomes class 0 -> 2 of 6 right
    assert (base["clean_top1"], base["perturbed_top1"], base["fooling_rate"]) == (1.0, pytest.approx(1 / 3), pytest.approx(2 / 3))
    assert base["restoration_accuracy_measured_denominator"] == pytest.approx((1 + 1 / 3) / 2, abs=1e-6)
    assert base["restoration_accuracy"] == pytest.approx((1 + 1 / 3) / (2 * CAFFENET_DENOM), abs=1e-6)
    assert (fru["clean_top1"], fru["perturbed_top1"], fru["fooling_rate"]) == (1.0, 1.0, 0.0)
    assert fru["restoration_accuracy"] == pytest.approx(2 / (2 * CAFFENET_DENOM), abs=1e-6)
    assert (base["published_restoration_accuracy"], fru["published_restoration_accuracy"]) == (0.596, 0.976)
    assert report["denominators"] == {"published": CAFFENET_DENOM, "measured": 1.0}
    assert report["clip"] is False and case["seed"] == 0 and report["images"] == 6
    assert case["runs"][0]["files"][0] == "UAP/CaffeNet/caffenet_adv_iter_1.h5"
    md = (out / "same-norm_CaffeNet.md").read_text()
    assert "| UAP l_inf (one of 5 per image) | FRU | 1.000 | 1.000 |" in md and "| 0.976 |" in md


def test_per_image_draw_decides_which_images_are_fooled(fake, tmp_path):
    pert = write_same_norm(tmp_path / "samples", fooling=(2,))  # only file 2 fools the baseline
    _, report = _run(fake, tmp_path, "same-norm", pert)
    drawn = np.random.RandomState(0).randint(1, 6, size=6)
    wrong = (drawn == 2) & (LABELS != 0)
    base = report["cases"][0]["results"]["baseline"]
    assert base["perturbed_top1"] == pytest.approx(1 - wrong.mean())
    assert base["fooling_rate"] == pytest.approx(wrong.mean())


def test_unseen_sfool_reports_the_mean_of_its_two_runs(fake, tmp_path):
    pert = write_unseen_caffenet(tmp_path / "samples")
    _, report = _run(fake, tmp_path, "unseen", pert)
    cases = {c["key"]: c for c in report["cases"]}
    assert cases["FFF"]["results"]["baseline"]["perturbed_top1"] == 1.0
    sfool = cases["SFool"]["results"]["baseline"]
    assert sfool["runs"]["SFool/conv3"]["perturbed_top1"] == pytest.approx(1 / 3)
    assert sfool["runs"]["SFool/fc6"]["perturbed_top1"] == 1.0
    assert sfool["perturbed_top1"] == pytest.approx(2 / 3)
    assert sfool["restoration_accuracy"] == pytest.approx((1 + 2 / 3) / (2 * CAFFENET_DENOM), abs=1e-6)
    assert sfool["published_restoration_accuracy"] == 0.815 and cases["SFool"]["seed"] == 1000


def test_limit_and_resume(fake, tmp_path, monkeypatch):
    pert = write_same_norm(tmp_path / "samples", fooling=range(1, 6))
    # Caffe: onnxruntime's check against Caffe would run a forward pass on resuming too
    out, report = _run(fake, tmp_path, "same-norm", pert, "--limit", "3", "--runtime", "caffe")
    assert report["images"] == 3 and report["limit"] == 3
    # positions 0, 2, 4 -> labels 0, 1, 2: the baseline keeps only the class-0 image
    assert report["cases"][0]["results"]["baseline"]["perturbed_top1"] == pytest.approx(1 / 3)
    assert (out / "same-norm_CaffeNet.state.npz").is_file()

    from attacks.classifier import CaffeClassifier

    def no_forward(*args, **kwargs):
        raise AssertionError("a finished run must resume from its state file")
    monkeypatch.setattr(CaffeClassifier, "logits", no_forward)
    _, again = _run(fake, tmp_path, "same-norm", pert, "--limit", "3", "--runtime", "caffe")
    assert again["cases"] == report["cases"]


@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime is not installed")
def test_runtimes_give_the_same_table_and_are_recorded(fake, tmp_path):
    pert = write_same_norm(tmp_path / "samples", fooling=range(1, 6))
    reports = {runtime: _run(fake, tmp_path / runtime, "same-norm", pert, "--runtime", runtime)[1]
               for runtime in ("caffe", "onnx", "auto")}
    assert reports["caffe"]["runtime"] == {"forward_passes": "caffe", "checks": {}}
    for runtime in ("onnx", "auto"):
        checks = reports[runtime]["runtime"]["checks"]
        assert reports[runtime]["runtime"]["forward_passes"] == "onnx" and set(checks) == {"baseline", "fru"}
        assert all(c["images"] == 6 == c["top1_equal"] for c in checks.values())
        assert reports[runtime]["cases"] == reports["caffe"]["cases"]
    assert "forward passes in onnx." in (tmp_path / "onnx" / "out" / "same-norm_CaffeNet.md").read_text()


@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime is not installed")
def test_a_wrong_onnx_model_stops_the_table_in_one_line(fake, tmp_path, monkeypatch, capsys):
    from defense.generate import onnx_graph
    from onnx_faults import negated_logits
    monkeypatch.setattr("defense.evaluate.runtime.onnx_model", negated_logits(onnx_graph.onnx_model))
    code = run_cli(main, ["same-norm", "--net", "CaffeNet", "--index", str(fake["index"]), "--manifest",
                          str(fake["manifest"]), "--perturbations", str(write_same_norm(tmp_path / "samples")),
                          "--out", str(tmp_path / "out"), "--quiet", "--workers", "1"])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: {fake['root'] / 'prototxt' / 'CaffeNet' / 'deploy_caffenet.prototxt'}: onnxruntime's "
                          "top-1 differs from Caffe's on ")
    assert not (tmp_path / "out" / "same-norm_CaffeNet.json").exists()


def test_cli_prints_the_table(fake, tmp_path, capsys):
    pert = write_same_norm(tmp_path / "samples")
    _run(fake, tmp_path, "same-norm", pert, "--limit", "2")
    printed = capsys.readouterr().out
    assert "## Table 2: same-norm test" in printed and "| published |" in printed and "same-norm_CaffeNet.json" in printed


def test_clip_is_recorded(fake, tmp_path):
    pert = write_same_norm(tmp_path / "samples", fooling=range(1, 6))
    _, report = _run(fake, tmp_path, "same-norm", pert, "--clip", "--limit", "3")
    assert report["clip"] is True and report["clipping"] == "[0, 255]"
    # clipped to [0, 255], the blue channel becomes a 255/0 checkerboard: after the baseline's
    # ReLU its mean is (255 - 103.9) / 2 = 75.5 < 113, so the baseline is no longer fooled
    assert report["cases"][0]["results"]["baseline"]["perturbed_top1"] == 1.0


def test_peers_join_the_table(fake, tmp_path):
    """``--peers``: the baseline behind pixel deflection and a median filter, one row each. PD
    clips the +-400 checkerboard to a valid image first (which alone undoes this attack, see
    test_clip_is_recorded); a 3x3 median keeps a checkerboard as it is."""
    pert = write_same_norm(tmp_path / "samples", fooling=range(1, 6))
    out, report = _run(fake, tmp_path, "same-norm", pert, "--limit", "3", "--peers", "pd:seed=1,median:3")
    results = report["cases"][0]["results"]
    assert list(results) == ["baseline", "fru", "pd", "median"]
    assert (results["pd"]["clean_top1"], results["pd"]["perturbed_top1"]) == (1.0, 1.0)
    assert results["median"]["perturbed_top1"] == pytest.approx(1 / 3)
    assert results["pd"]["published_restoration_accuracy"] is None
    assert report["models"]["pd"] == "baseline+pd(deflections=auto, window=auto, sigma=0.04, map=cam, seed=1)"
    assert "| baseline+pd | 1.000 | 1.000 |" in (out / "same-norm_CaffeNet.md").read_text()


# ---------------------------------------------------------------- errors
def test_missing_weights_exit_2_with_fetch_hint(fake, tmp_path, capsys):
    code = run_cli(main, ["same-norm", "--net", "CaffeNet", "--index", str(fake["index"]),
                          "--perturbations", str(write_same_norm(tmp_path / "samples")),
                          "--weights-dir", str(tmp_path / "none")])
    assert code == 2
    assert capsys.readouterr().err == (f"error: {tmp_path / 'none' / 'CaffeNet' / 'caffenet.caffemodel'}: baseline "
                                       "caffemodel of CaffeNet not found; fetch it with 'python -m weights fetch "
                                       "CaffeNet'\n")


def test_missing_perturbation_offline_names_its_address(fake, tmp_path, capsys):
    code = run_cli(main, ["same-norm", "--net", "CaffeNet", "--index", str(fake["index"]),
                          "--manifest", str(fake["manifest"]), "--perturbations", str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1
    assert err.startswith(f"error: UAP/CaffeNet/caffenet_adv_iter_1.h5: {tmp_path / 'empty/UAP/CaffeNet'}/"
                          "caffenet_adv_iter_1.h5 is missing and downloads are off (--offline or FRU_OFFLINE=1); "
                          "download https://raw.githubusercontent.com/tsborkar/Selective-feature-regeneration/")
    assert not (tmp_path / "empty").exists()


def test_missing_index_exit_2(fake, tmp_path, capsys):
    pert = write_same_norm(tmp_path / "samples")
    code = run_cli(main, ["same-norm", "--net", "CaffeNet", "--index", str(tmp_path / "val.jsonl"),
                          "--manifest", str(fake["manifest"]), "--perturbations", str(pert)])
    assert code == 2
    assert "val.jsonl: validation index not found; make one with 'python -m defense.imagenet prepare val" in \
        capsys.readouterr().err


def test_own_perturbation_file(fake, tmp_path):
    from attacks.perturbation_io import PerturbationMeta, save_perturbation
    from fake_imagenet import checkerboard
    own = save_perturbation(tmp_path / "mine.h5", checkerboard().astype(np.float32), PerturbationMeta(attack="uap"))
    _, report = _run(fake, tmp_path, "same-norm", tmp_path / "unused", "--own", str(own))
    (case,) = report["cases"]
    assert case["key"] == "own" and case["results"]["baseline"]["perturbed_top1"] == pytest.approx(1 / 3)
    assert case["results"]["fru"]["published_restoration_accuracy"] == 0.976


def test_protocol_formats_load_the_published_files(reference):
    """Every protocol file present in the reference samples loads as (3,224,224) with its published l_inf."""
    from attacks.perturbation_io import load_any as load_file
    samples = reference / "attack_samples"
    expected_linf = {"UAP/CaffeNet/caffenet_adv_iter_1.h5": 10, "UAP/ResNet152/resnet152_adv_iter_1.h5": 16,
                     "UAP/CaffeNet/Linf_15/caffenet_adv_iter_L15_1.h5": 15, "FFF/perturbation_caffenet_mean.npy": 10,
                     "NAG/perturbation19.npy": 10, "SFool/alexnet_singular_uap_5_c3.h5": 10,
                     "GAP/res152_guided_GAP_epoch_10.h5": 16, "GUAP/resnet152_with_data.npy": 15,
                     "sPGD/spgd_resnet152.h5": 10, "UAP/CaffeNet/L_2/caffenet_l2_adv_iter_1.h5": None}
    checked = 0
    for table, nets in (("same-norm", TABLE2), ("cross-norm", ["CaffeNet"]), ("stronger", ["CaffeNet"]),
                        ("unseen", ["CaffeNet", "ResNet152"])):
        for net in nets:
            for case in table_cases(table, net):
                for run in case.runs:
                    for name in run.files:
                        if name not in expected_linf or not (samples / name).is_file():
                            continue
                        v = load_file(samples / name, run.fmt, expect=(3, 224, 224))
                        if expected_linf[name] is None:
                            assert np.sqrt((v.astype(np.float64) ** 2).sum()) == pytest.approx(2000, rel=0.01)
                        else:
                            assert np.abs(v).max() == pytest.approx(expected_linf[name], abs=0.05), name
                        checked += 1
    assert checked == len(expected_linf)


def test_missing_perturbations_are_fetched_by_default(fake, tmp_path, server, reference, downloads_on, monkeypatch):
    """The published files come from the mirror, verified (iter_1 against the manifest's SHA-256,
    the others recorded in the lock file), and a second run needs no network."""
    served = write_same_norm(Path(server.root) / "same-norm")
    first = "UAP/CaffeNet/caffenet_adv_iter_1.h5"
    shutil.copyfile(reference / "attack_samples" / first, served / first)
    monkeypatch.setenv("FRU_WEIGHTS_MIRROR", f"{server.base_url}/same-norm")
    server.requests.clear()
    out, report = _run(fake, tmp_path, "same-norm", tmp_path / "dl")
    names = [f"UAP/CaffeNet/caffenet_adv_iter_{k}.h5" for k in range(1, 6)]
    assert sorted(name for name, _ in server.requests) == sorted(f"same-norm/{n}" for n in names)
    assert all((tmp_path / "dl" / n).read_bytes() == (served / n).read_bytes() for n in names)
    assert sorted(json.loads((tmp_path / "dl" / "downloads.lock.json").read_text())) == names[1:]
    monkeypatch.setenv("FRU_WEIGHTS_MIRROR", "http://127.0.0.1:9")
    server.requests.clear()
    _, again = _run(fake, tmp_path, "same-norm", tmp_path / "dl", "--no-resume", "--offline")
    assert server.requests == [] and again["cases"] == report["cases"]


def test_a_trained_competitor_joins_the_table_with_load(fake, tmp_path):
    """``--load NAME PROTOTXT WEIGHTS`` adds a row under the competitor's name (here the fake FRU
    net stands in for a trained HGD, so its row must equal the FRU's)."""
    pert = write_same_norm(tmp_path / "samples", fooling=range(1, 6))
    proto, weights = fake["root"] / "prototxt/CaffeNet/deploy_caffenet_FRU.prototxt", \
        fake["root"] / "weights/CaffeNet/caffenet_FRU.caffemodel"
    out, report = _run(fake, tmp_path, "same-norm", pert, "--load", "hgd", str(proto), str(weights))
    (case,) = report["cases"]
    hgd, fru = case["results"]["HGD"], case["results"]["fru"]
    assert (hgd["clean_top1"], hgd["perturbed_top1"], hgd["fooling_rate"]) == (1.0, 1.0, 0.0)
    assert hgd["restoration_accuracy"] == fru["restoration_accuracy"] and hgd["published_restoration_accuracy"] is None
    assert report["models"]["HGD"] == f"{proto} + {weights}"
    assert "| UAP l_inf (one of 5 per image) | HGD | 1.000 | 1.000 |" in (out / "same-norm_CaffeNet.md").read_text()
    with pytest.raises(SystemExit):
        main(["same-norm", "--load", "hgd", str(proto)])
    assert run_cli(main, ["same-norm", "--index", str(fake["index"]), "--load", "median", str(proto), str(weights),
                          "--out", str(tmp_path / "o")]) == 2
