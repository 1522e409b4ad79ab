"""Projections, metrics, synthetic mixing and perturbation files: no network needed."""
import json
import pickle

import h5py
import numpy as np
import pytest
import scipy.io

from attacks import load_published, synthesize
from attacks.__main__ import main as cli_main
from attacks.metrics import bootstrap_ci, fooling_rate, restoration_accuracy, topk_accuracy
from attacks.perturbation_io import (PerturbationMeta, load_mat, load_perturbation, save_perturbation)
from attacks.projection import default_xi, lp_norm, parse_norm, project_lp
from defense.core import ToolkitError, run_cli

# ---------------------------------------------------------------- projections


def test_linf_projection_is_exact_clip():
    v = np.array([[-20.0, -10.0, -3.5], [0.0, 9.99, 42.0]], dtype=np.float32)
    np.testing.assert_array_equal(project_lp(v, 10.0, "inf"), np.array([[-10, -10, -3.5], [0, 9.99, 10]], np.float32))


def test_l2_projection_scales_onto_sphere_and_keeps_direction():
    rng = np.random.default_rng(0)
    v = rng.normal(size=(3, 8, 8)).astype(np.float32) * 100
    p = project_lp(v, 50.0, "2")
    assert lp_norm(p, 2) == pytest.approx(50.0, rel=1e-6)
    np.testing.assert_allclose(p * (lp_norm(v, 2) / 50.0), v, rtol=1e-5)
    inside = v * np.float32(10.0 / lp_norm(v, 2))
    np.testing.assert_array_equal(project_lp(inside, 50.0, "l2"), inside)


def test_projection_does_not_modify_input():
    v = np.full((3, 4, 4), 20.0, np.float32)
    project_lp(v, 10.0, "inf")
    project_lp(v, 10.0, "2")
    assert np.all(v == 20.0)


def test_norm_names_and_default_strengths():
    assert parse_norm(np.inf) == parse_norm("linf") == parse_norm("l_inf") == "inf"
    assert parse_norm(2) == parse_norm("l2") == "2"
    assert default_xi("inf", (3, 28, 28)) == 10.0
    assert default_xi("2", (3, 224, 224)) == 2000.0
    assert default_xi("2", (3, 112, 112)) == pytest.approx(1000.0)
    with pytest.raises(ValueError, match="norm must be 'inf' or '2'"):
        parse_norm("l1")
    with pytest.raises(ValueError, match="xi must be positive"):
        project_lp(np.zeros(3), 0.0, "inf")


# ---------------------------------------------------------------- metrics


def test_fooling_rate_and_accuracy_definitions():
    assert fooling_rate(np.array([0, 1, 2, 3]), np.array([0, 2, 2, 0])) == 0.5
    scores = np.array([[0.1, 0.5, 0.4], [0.8, 0.1, 0.1], [0.2, 0.3, 0.5]])
    labels = np.array([2, 0, 0])
    assert topk_accuracy(scores, labels, 1) == pytest.approx(1 / 3)
    assert topk_accuracy(scores, labels, 2) == pytest.approx(2 / 3)
    # CaffeNet, published baseline clean top-1 0.564
    assert restoration_accuracy(0.55, 0.50, 0.564) == pytest.approx(1.05 / 1.128)
    with pytest.raises(ValueError, match="label arrays must be 1-D and alike"):
        fooling_rate(np.zeros(3), np.zeros(4))
    with pytest.raises(ValueError, match="k must be in"):
        topk_accuracy(scores, labels, 5)
    with pytest.raises(ValueError, match="baseline clean top-1 must be positive"):
        restoration_accuracy(0.5, 0.5, 0.0)


def test_bootstrap_interval_is_seeded_and_brackets_mean():
    fooled = np.r_[np.ones(70), np.zeros(30)]
    lo, hi = bootstrap_ci(fooled, seed=3)
    assert (lo, hi) == bootstrap_ci(fooled, seed=3)
    assert lo < 0.7 < hi and hi - lo < 0.2 and lo > 0.55
    with pytest.raises(ValueError, match="confidence must be in"):
        bootstrap_ci(fooled, confidence=1.5)


# ---------------------------------------------------------------- synthetic


def _uap_set(rng, k=4):
    base = rng.normal(size=(k, 3, 16, 16)).astype(np.float32)
    return base * (np.array([900.0, 1000.0, 1100.0, 1200.0][:k]) / np.sqrt((base.reshape(k, -1) ** 2).sum(1)))[:, None, None, None].astype(np.float32)


@pytest.mark.parametrize("rule", ["convex", "additive"])
def test_synthetic_reaches_threshold_and_is_reproducible(rule):
    uaps = _uap_set(np.random.default_rng(0))
    a = synthesize(uaps, 20, np.random.default_rng(5), rule=rule)
    b = synthesize(uaps, 20, np.random.default_rng(5), rule=rule)
    np.testing.assert_array_equal(a.perturbations, b.perturbations)
    assert a.threshold == pytest.approx(900.0, rel=1e-5)
    norms = np.sqrt((a.perturbations.reshape(20, -1).astype(np.float64) ** 2).sum(1))
    assert np.all(norms >= a.threshold * (1 - 1e-6))
    assert a.perturbations.shape == (20, 3, 16, 16) and a.steps.min() >= 1
    c = synthesize(uaps, 20, np.random.default_rng(6), rule=rule)
    assert not np.array_equal(a.perturbations, c.perturbations)


def test_synthetic_rescales_when_convex_mixing_cannot_reach_threshold():
    e = np.zeros((2, 3, 4, 4), np.float32)
    e[0, 0, 0, 0] = e[1, 1, 0, 0] = 100.0  # orthogonal, equal norms: a convex mix stays below 100
    res = synthesize(e, 3, np.random.default_rng(0), max_steps=20)
    assert res.rescaled == 3
    assert np.allclose(np.sqrt((res.perturbations.reshape(3, -1) ** 2).sum(1)), 100.0, rtol=1e-6)
    with pytest.raises(ValueError, match="rule must be one of"):
        synthesize(e, 1, np.random.default_rng(0), rule="sum")
    with pytest.raises(ValueError, match="count must be a positive integer"):
        synthesize(e, 0, np.random.default_rng(0))


# ---------------------------------------------------------------- toolkit file


def test_perturbation_file_round_trip(tmp_path):
    v = np.random.default_rng(0).uniform(-10, 10, (3, 28, 28)).astype(np.float32)
    meta = PerturbationMeta(attack="uap", network="Tiny", input_size=(28, 28), norm="inf", xi=10.0,
                            fooling_rate=0.85, data="x.npy", seed=7, attack_params={"delta": 0.2})
    save_perturbation(tmp_path / "v.h5", v, meta)
    w, m = load_perturbation(tmp_path / "v.h5")
    np.testing.assert_array_equal(w, v)
    assert m == meta
    assert m.channel_order == "BGR" and m.added_before_mean is True


def test_perturbation_file_errors(tmp_path):
    with h5py.File(tmp_path / "bad.h5", "w") as f:
        f["other"] = np.zeros((3, 4, 4))
    with pytest.raises(ToolkitError, match=r"bad.h5: has no dataset 'perturbation'"):
        load_perturbation(tmp_path / "bad.h5")
    with pytest.raises(ToolkitError, match=r"must have shape \(C,H,W\) or \(K,C,H,W\) with C 1 or 3"):
        save_perturbation(tmp_path / "w.h5", np.zeros((4, 4)), PerturbationMeta())
    with pytest.raises(ToolkitError, match=r"with C 1 or 3, got \(2, 4, 4\)"):
        save_perturbation(tmp_path / "w.h5", np.zeros((2, 4, 4)), PerturbationMeta())
    with pytest.raises(ToolkitError, match="not found"):
        load_perturbation(tmp_path / "missing.h5")


# ---------------------------------------------------------------- published formats
PUBLISHED = [  # (attack, path under attack_samples, expected max |v|)
    ("uap", "UAP/CaffeNet/caffenet_adv_iter_1.h5", 10.0),
    ("uap", "UAP/CaffeNet/L_2/caffenet_l2_adv_iter_1.h5", 61.1245),
    ("uap", "UAP/CaffeNet/Linf_15/caffenet_adv_iter_L15_1.h5", 15.0),
    ("uap", "UAP/ResNet152/resnet152_adv_iter_1.h5", 16.0),
    ("fff", "FFF/perturbation_caffenet_mean.npy", 10.0),
    ("nag", "NAG/perturbation19.npy", 10.0),
    ("sfool", "SFool/alexnet_singular_uap_5_c3.h5", 10.0),
    ("gap", "GAP/res152_guided_GAP_epoch_10.h5", 16.0),
    ("guap", "GUAP/resnet152_with_data.npy", 15.0),
    ("spgd", "sPGD/spgd_resnet152.h5", 10.0),
]


@pytest.mark.parametrize("attack,rel,vmax", PUBLISHED, ids=[p[1].split("/")[-1] for p in PUBLISHED])
def test_published_sample_loads(reference, attack, rel, vmax):
    v = load_published(attack, reference / "attack_samples" / rel)
    assert v.shape == (3, 224, 224) and v.dtype == np.float32
    assert float(np.abs(v).max()) == pytest.approx(vmax, abs=1e-3)


def test_every_published_sample_is_listed(reference):
    files = {str(p.relative_to(reference / "attack_samples")) for p in (reference / "attack_samples").rglob("*")
             if p.suffix in (".h5", ".npy")}
    assert files <= {p[1] for p in PUBLISHED}


def test_published_transforms_follow_formats_md(reference):
    root = reference / "attack_samples"
    with h5py.File(root / "UAP/CaffeNet/caffenet_adv_iter_1.h5") as f:
        raw = f["v"][()]
    np.testing.assert_array_equal(load_published("UAP", root / "UAP/CaffeNet/caffenet_adv_iter_1.h5"),
                                  raw.transpose(0, 2, 1).astype(np.float32))
    nag = np.load(root / "NAG/perturbation19.npy")
    out = load_published("nag", root / "NAG/perturbation19.npy")
    assert out[0, 5, 7] == nag[5, 7, 2] and out[2, 5, 7] == nag[5, 7, 0]  # RGB -> BGR
    fff = np.load(root / "FFF/perturbation_caffenet_mean.npy")
    assert load_published("fff", root / "FFF/perturbation_caffenet_mean.npy")[0, 0, 0] == fff[0, 0, 0, 2]
    with h5py.File(root / "GAP/res152_guided_GAP_epoch_10.h5") as f:
        gap = f["v"][()]
    assert load_published("gap", root / "GAP/res152_guided_GAP_epoch_10.h5")[0, 0, 0] == pytest.approx(16 * gap[0, 2, 30, 30])


def test_published_wrong_shape_is_a_one_line_error(reference):
    path = reference / "attack_samples" / "FFF/perturbation_caffenet_mean.npy"
    with pytest.raises(ToolkitError, match=r"perturbation_caffenet_mean.npy: a NAG file holds an array of shape"):
        load_published("nag", path)
    with pytest.raises(ToolkitError, match="unknown published format 'xyz'"):
        load_published("xyz", path)


def test_pickled_npy_is_refused(tmp_path):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([{"a": 1}], dtype=object), allow_pickle=True)
    with pytest.raises(ToolkitError, match=r"evil.npy: holds pickled \(object\) data, which is never loaded"):
        load_published("nag", path)
    raw = tmp_path / "raw.npy"
    raw.write_bytes(pickle.dumps(np.zeros(3)))
    with pytest.raises(ToolkitError, match="raw.npy: "):
        load_published("nag", raw)


def test_missing_dataset_in_published_h5(tmp_path):
    with h5py.File(tmp_path / "u.h5", "w") as f:
        f["w"] = np.zeros((3, 224, 224))
    with pytest.raises(ToolkitError, match=r"u.h5: has no dataset 'v'"):
        load_published("uap", tmp_path / "u.h5")


def test_mat_v5_and_v73_give_the_same_perturbation(tmp_path):
    rng = np.random.default_rng(0)
    bgr = rng.uniform(-10, 10, (3, 6, 5)).astype(np.float32)      # C, H, W
    whc_rgb = bgr[::-1].transpose(2, 1, 0)                           # W, H, C in RGB
    scipy.io.savemat(tmp_path / "v5.mat", {"v": whc_rgb})
    with h5py.File(tmp_path / "v73.mat", "w") as f:                  # h5py sees MATLAB dims reversed
        f["v"] = whc_rgb.transpose()
    np.testing.assert_array_equal(load_mat(tmp_path / "v5.mat"), bgr)
    np.testing.assert_array_equal(load_mat(tmp_path / "v73.mat"), bgr)
    scipy.io.savemat(tmp_path / "bad.mat", {"v": np.zeros((5, 5, 4))})
    with pytest.raises(ToolkitError, match=r"bad.mat: variable 'v' has shape \(5, 5, 4\)"):
        load_mat(tmp_path / "bad.mat")


# ---------------------------------------------------------------- CLI (no network)


def test_cli_convert_published(reference, tmp_path, capsys):
    src = reference / "attack_samples" / "NAG/perturbation19.npy"
    out = tmp_path / "nag.h5"
    assert run_cli(cli_main, ["convert", "--format", "nag", "--input", str(src), "--out", str(out),
                              "--network", "CaffeNet"]) == 0
    v, meta = load_perturbation(out)
    np.testing.assert_array_equal(v, load_published("nag", src))
    assert meta.network == "CaffeNet" and meta.attack == "nag"
    report = json.loads((tmp_path / "nag.json").read_text())
    assert report["norms"]["linf"] == pytest.approx(10.0)


def test_cli_convert_pickled_file_exits_2(tmp_path, capsys):
    path = tmp_path / "evil.npy"
    np.save(path, np.array([None], dtype=object), allow_pickle=True)
    code = run_cli(cli_main, ["convert", "--format", "nag", "--input", str(path), "--out", str(tmp_path / "o.h5")])
    err = capsys.readouterr().err.strip()
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: ") and "evil.npy" in err and "pickled" in err
    assert not (tmp_path / "o.h5").exists()


def test_cli_synthetic(tmp_path):
    uaps = _uap_set(np.random.default_rng(1), k=3)
    inputs = []
    for i, u in enumerate(uaps):
        save_perturbation(tmp_path / f"u{i}.h5", u, PerturbationMeta(attack="uap"))
        inputs.append(str(tmp_path / f"u{i}.h5"))
    out = tmp_path / "syn.h5"
    assert run_cli(cli_main, ["synthetic", "--inputs", *inputs, "--count", "7", "--seed", "3", "--out", str(out)]) == 0
    v, meta = load_perturbation(out)
    assert v.shape == (7, 3, 16, 16) and meta.seed == 3 and meta.attack == "synthetic"
    np.testing.assert_array_equal(v, synthesize(uaps, 7, np.random.default_rng(3)).perturbations)


def test_grey_perturbation_round_trips(tmp_path):
    from attacks.perturbation_io import PerturbationMeta, load_perturbation, save_perturbation
    v = np.linspace(-5, 5, 28 * 28, dtype=np.float32).reshape(1, 28, 28)
    save_perturbation(tmp_path / "grey.h5", v, PerturbationMeta(attack="uap", network="FashionNet",
                                                                input_size=(28, 28), channel_order="grey"))
    back, meta = load_perturbation(tmp_path / "grey.h5")
    np.testing.assert_array_equal(back, v)
    assert meta.network == "FashionNet"


def test_fetch_cli_downloads_from_a_mirror(tmp_path, reference, downloads_on):
    """`python -m attacks fetch` verifies what it downloads (SHA-256 of the manifest) before renaming."""
    import functools
    import http.server
    import threading
    from attacks.__main__ import main

    src = reference / "attack_samples"
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(src))
    handler.log_message = lambda *a, **k: None
    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    try:
        url = f"http://127.0.0.1:{server.server_address[1]}"
        name = "UAP/CaffeNet/caffenet_adv_iter_1.h5"
        assert main(["fetch", name, "--dest", str(tmp_path / "dl"), "--base-url", url]) == 0
    finally:
        server.shutdown()
    got = tmp_path / "dl" / name
    assert got.read_bytes() == (src / name).read_bytes()
    assert not list((tmp_path / "dl").rglob("*.part"))


# ---------------------------------------------------------------- one registry, one loader
def test_every_format_is_in_one_registry():
    from attacks.perturbation_io import FORMATS, PUBLISHED_LOADERS
    assert set(PUBLISHED_LOADERS) == {"uap", "fff", "nag", "sfool", "gap", "guap", "spgd"}
    assert set(FORMATS) == set(PUBLISHED_LOADERS) | {"fff1", "toolkit", "npy", "mat"}
    assert all(PUBLISHED_LOADERS[k] is FORMATS[k].load for k in PUBLISHED_LOADERS)


def test_detect_format_and_load_any(tmp_path):
    from attacks.perturbation_io import detect_format, load_any, load_perturbations
    v = np.ones((2, 1, 4, 4), np.float32)
    h5 = save_perturbation(tmp_path / "v.h5", v, PerturbationMeta(attack="uap", input_size=(4, 4)))
    npy = tmp_path / "v.npy"
    np.save(npy, v[0])
    assert detect_format(h5, "uap") == "toolkit" and detect_format(npy, "uap") == "npy"
    assert detect_format(npy, "nag") == "nag" and detect_format(tmp_path / "x.h5", "uap") == "uap"
    assert [p.shape for p in load_perturbations([h5, npy])] == [(1, 4, 4)] * 3
    np.testing.assert_array_equal(load_any(npy, expect=(1, 4, 4)), v[0])
    with pytest.raises(ToolkitError, match=r"v.h5: expected one \(C, H, W\) perturbation, got shape \(2, 1, 4, 4\)"):
        load_any(h5)
    with pytest.raises(ToolkitError, match=r"v.npy: perturbation shape \(1, 4, 4\) does not fit the network input"):
        load_any(npy, expect=(3, 4, 4))
    with pytest.raises(ValueError, match="perturbation format must be one of"):
        load_any(npy, "png")


@pytest.mark.parametrize("key,value", [
    ("input_size", np.int64(224)),          # a number where a pair belongs (was: 'numpy.int64' object is not iterable)
    ("input_size", np.array([224, 224, 3])),
    ("attack_params", "[1, 2]"),            # JSON, but not an object
    ("extra", "{not json"),
    ("xi", "ten"),
    ("network", np.int64(3)),
])
def test_metadata_of_the_wrong_type_is_one_line_naming_the_attribute(tmp_path, key, value):
    path = save_perturbation(tmp_path / "v.h5", np.zeros((3, 8, 8), np.float32), PerturbationMeta(attack="uap"))
    with h5py.File(path, "a") as f:
        f.attrs[key] = value
    with pytest.raises(ToolkitError) as err:
        load_perturbation(path)
    assert str(err.value).startswith(f"{path}: attribute '{key}' has the wrong type (")
    assert str(err.value).endswith("); rewrite the file with 'python -m attacks convert'")
    v, meta = load_perturbation(save_perturbation(tmp_path / "ok.h5", np.ones((3, 8, 8), np.float32),
                                                  PerturbationMeta(attack="uap", input_size=(8, 8), xi=10.0)))
    assert meta.input_size == (8, 8) and meta.xi == 10.0 and meta.attack == "uap" and v.shape == (3, 8, 8)
