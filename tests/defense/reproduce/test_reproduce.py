"""The Fashion-MNIST reproduction (defense.reproduce): a --quick run end to end, resuming,
per-stage invalidation, the ranking helpers and the target checks."""
import json
import os
import re
import shutil
import subprocess
import sys

import numpy as np
import pytest

from defense.reproduce.config import (COMPETITORS, L2_PER_LINF, METRICS, NET, REQUIRED_MODELS, ReproConfig,
                                      attack_sets, eval_cases, stage_of, train_subsets)
from defense.reproduce.pipeline import STAGE_NAMES, STAGES
from attacks.runtime import TIE_TOLERANCE, onnxruntime_available
from defense.reproduce.report import check_targets, critical_path, finish_order, ship, stages_wall_seconds
from defense.reproduce.claims import CLAIMS_DOCS, claims_markdown, claims_span
from defense.reproduce.runner import RUNTIME_CHECK_IMAGES, Context
from defense.reproduce.stages import (_bottom_ranked, evaluation_conditions, evaluation_images, evaluation_model_names,
                                      evaluation_models, fru_targets, masked_restoration, training_perturbations)
from defense.paper import demo_defaults
from defense.presets import get_preset, fru_names
from defense.generate.ranking import permutation_from_matrix, rank_channels

QUICK = ReproConfig.quick()


def _cli(*args, cwd, env=None):
    return subprocess.run([sys.executable, "-m", "defense.reproduce", *args], cwd=cwd, capture_output=True,
                          text=True, timeout=900, env=env)


@pytest.fixture(scope="module")
def quick_seeds(tmp_path_factory, root):
    """A 2-seed --quick reproduction (both replicas' stages in one pool of two workers)."""
    out = tmp_path_factory.mktemp("repro") / "fashion"
    res = _cli("--quick", "--quiet", "--seeds", "2", "--out", str(out), "--jobs", "2", cwd=root)
    assert res.returncode == 0, res.stderr[-2000:]
    return out


@pytest.fixture(scope="module")
def quick_run(quick_seeds):
    """The first replica (seed 0) of the 2-seed run, and its own summary."""
    out = quick_seeds / "seed-0"
    return out, json.loads((out / "summary.json").read_text())


@pytest.mark.slow
def test_quick_run_reports_every_case_model_and_metric(quick_run):
    out, summary = quick_run
    assert list(summary["cases"]) == [c.key for c in eval_cases(QUICK)]
    assert list(summary["cases"]) == ["same-norm", "cross-norm", "stronger-x2", "unseen-spgd", "unseen-gduap",
                                      "unseen-svuap", "unseen-gap", "unseen-nag", "adaptive", "adaptive-secondary"]
    for key, case in summary["cases"].items():
        base_clean = case["models"]["baseline"]["clean_top1"]
        assert case["images"] == QUICK.test_images
        for model in REQUIRED_MODELS + ("fru_secondary", "fru_bottom"):
            row = case["models"][model]
            assert set(METRICS) <= set(row), (key, model)
            for metric in ("clean_top1", "perturbed_top1", "fooling_rate"):
                assert 0.0 <= row[metric] <= 1.0
            # restoration = (clean + perturbed) / (2 x baseline clean): above 1 where a model (the
            # quick run's weak baseline too) is right on more perturbed than clean images
            assert row["restoration"] == pytest.approx((row["clean_top1"] + row["perturbed_top1"]) / (2 * base_clean),
                                                       abs=1e-12)
            assert 0.0 <= row["restoration"] <= 1.0 / base_clean
    assert summary["config"] == json.loads((out / "config.json").read_text())
    assert summary["xi_l2"] == pytest.approx(QUICK.xi * L2_PER_LINF, abs=0.01)
    assert set(summary["timings"]) == set(STAGE_NAMES)
    assert {t["target"] for t in summary["targets"]} >= {"baseline test top-1 >= 0.90",
                                                         "same-norm: FRU restoration >= 0.95"}
    for name in ("results.md", "restoration.png", "feature_map.png", "config.json"):
        assert (out / name).stat().st_size > 100, name
    assert "| same-norm: fresh l_inf UAPs" in (out / "results.md").read_text()


@pytest.mark.slow
def test_quick_run_records_its_runtime_checks_and_schedule(quick_run):
    """By default (auto) forward passes run in onnxruntime, every evaluated model checked first."""
    out, summary = quick_run
    runtime = summary["runtime"]
    assert runtime["forward_passes"] == ("onnx" if onnxruntime_available() else "caffe")
    assert runtime["gradients"] == "caffe"
    if runtime["forward_passes"] == "onnx":
        # every net evaluated in onnxruntime, the trained competitors too, and PRN alone for its detector
        assert set(runtime["checks"]) == {"baseline", "fru", "fru_secondary", "fru_bottom", "adv_finetune",
                                          "prn", "hgd", "fd", "prn+prn/out"}
        rectifier = runtime["checks"].pop("prn+prn/out")
        assert rectifier["images"] == RUNTIME_CHECK_IMAGES and set(rectifier) == {"images", "max_rel_blob_diff"}
        assert 0.0 <= rectifier["max_rel_blob_diff"]["prn/out"] < 1e-4
        for check in runtime["checks"].values():
            assert check["images"] == RUNTIME_CHECK_IMAGES == check["top1_equal"] + check["ties"]
            assert 0.0 <= check["max_rel_logit_diff"] < 1e-4
    for name in STAGE_NAMES:
        t = summary["timings"][name]
        assert 0.0 <= t["start"] <= t["end"]
        assert t["end"] - t["start"] == pytest.approx(t["seconds"], abs=0.2) and t["cpu_seconds"] > 0
    # starts count from the shared pool's first stage (another replica's may come first), so the
    # replica's own span is what its wall time measures
    timings = [summary["timings"][name] for name in STAGE_NAMES]
    assert (max(t["end"] for t in timings) - min(t["start"] for t in timings)
            == pytest.approx(summary["wall_seconds_all_stages"], abs=0.2))
    path = summary["schedule"]["critical_path"]
    # it ends at a stage that nothing waits for: the evaluation, or masking when the tiny quick
    # run's evaluation ends first (masking has the shortest chain, so it is taken last)
    leaves = {s.name for s in STAGES} - {u for s in STAGES for u in s.upstream}
    assert leaves == {"evaluate", "masking"} and path[0] == "baseline" and path[-1] in leaves
    # consecutive stages of the path may overlap by critical_path's 1 s slack each
    assert summary["schedule"]["critical_path_seconds"] <= summary["wall_seconds_all_stages"] + 1.0 * len(path) + 0.1
    assert 0.0 < summary["schedule"]["cpu_utilisation"] <= 1.0
    assert "Critical path" in (out / "results.md").read_text()


def _blocked_onnx(folder):
    """A PYTHONPATH entry on which importing onnx or onnxruntime fails (in every process)."""
    folder.mkdir()
    for name in ("onnx", "onnxruntime"):
        (folder / f"{name}.py").write_text(f"raise ImportError('{name} is blocked by the test')\n")
    return {**os.environ, "PYTHONPATH": str(folder)}


def _predictions(folder):
    out = {}
    for path in sorted(folder.glob("predictions*.npz")):
        with np.load(path, allow_pickle=False) as data:
            out.update({k: data[k] for k in data.files if k.endswith("|top1")})
    return out


@pytest.mark.slow
@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime is not installed")
def test_caffe_runtime_uses_no_onnxruntime_and_gives_the_same_predictions(quick_run, tmp_path, root):
    """``--runtime caffe`` with onnx and onnxruntime unimportable: the forward stages (xi calibration,
    evaluation) are redone in Caffe; the same perturbations, and the same top-1 for every image,
    model and condition, but where Caffe's own top two logits tie (within TIE_TOLERANCE)."""
    out, first = quick_run
    copy = tmp_path / "fashion"
    shutil.copytree(out.parent, copy)
    res = _cli("--quick", "--quiet", "--seeds", "1", "--out", str(copy), "--jobs", "2", "--runtime", "caffe", cwd=root,
               env=_blocked_onnx(tmp_path / "blocked"))
    assert res.returncode == 0, res.stderr[-2000:]
    assert json.loads((copy / "summary.json").read_text())["runtime"]["forward_passes"] == "caffe"
    copy = copy / out.name
    again = json.loads((copy / "summary.json").read_text())
    assert again["runtime"] == {"forward_passes": "caffe", "gradients": "caffe", "checks": {},
                                "note": "No onnxruntime model was used."}
    assert {name for name, t in again["timings"].items() if not t["resumed"]} == {"test_attacks", "masking",
                                                                                 "evaluate"}
    for npy in sorted((out / "test_attacks").rglob("*.npy")):
        assert npy.read_bytes() == (copy / npy.relative_to(out)).read_bytes(), npy
    onnx_preds, caffe_preds = _predictions(out / "evaluate"), _predictions(copy / "evaluate")
    # every classified model (12: the FRUs, peers and competitors; prn_detector is derived from prn and
    # baseline, not stored) under clean + every case (10)
    assert set(onnx_preds) == set(caffe_preds)
    assert len(onnx_preds) == (len(evaluation_model_names(QUICK)) - 1) * (1 + len(eval_cases(QUICK))) == 12 * 11
    assert not any(key.startswith("prn_detector|") for key in onnx_preds)
    ctx = Context(QUICK, copy, progress=False)
    x, _ = evaluation_images(ctx)
    conditions = {c.name: c for c in evaluation_conditions(ctx, len(x))}
    models = evaluation_models(ctx)
    flips = 0
    for key, expected in caffe_preds.items():
        model, condition, _ = key.split("|")
        for i in np.flatnonzero(onnx_preds[key] != expected):
            c = conditions[condition]
            xi = x[i:i + 1] if c.perturbations is None else x[i:i + 1] + c.perturbations[c.choice[i]]
            z = models[model].logits(xi, 1)[0]
            assert (z[expected[i]] - z[onnx_preds[key][i]]) / np.abs(z).max() <= TIE_TOLERANCE, (key, i)
            flips += 1
    if flips == 0:  # the same results, but PRN's detector: its flags may flip within float rounding of the SVM's 0
        def without_detector(cases):
            return {k: {**{f: v for f, v in c.items() if v != "prn_detector" and f != "best_competitor"
                           or f == "best_competitor" and v.get("model") != "prn_detector"},
                        "models": {m: r for m, r in c["models"].items() if m != "prn_detector"}}
                    for k, c in cases.items()}
        assert without_detector(again["cases"]) == without_detector(first["cases"])


@pytest.mark.slow
@pytest.mark.skipif(not onnxruntime_available(), reason="onnxruntime is not installed")
def test_a_wrong_onnx_model_stops_the_run_in_one_line(quick_run, tmp_path, monkeypatch, capsys):
    from defense.core import run_cli
    from defense.generate import onnx_graph
    from defense.reproduce.__main__ import main
    from onnx_faults import negated_logits

    out, _ = quick_run
    copy = tmp_path / "fashion"
    shutil.copytree(out.parent, copy)
    monkeypatch.setattr("defense.evaluate.runtime.onnx_model", negated_logits(onnx_graph.onnx_model))
    code = run_cli(main, ["--quick", "--quiet", "--seeds", "1", "--out", str(copy), "--jobs", "1",
                          "--set", "test_images=150"])
    copy = copy / out.name
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1, err
    assert err.startswith(f"error: {copy / 'baseline' / 'deploy.prototxt'}: onnxruntime's top-1 differs from "
                          "Caffe's on ")
    assert f" of {RUNTIME_CHECK_IMAGES} sample images (image " in err and err.endswith("run with --runtime caffe\n")


@pytest.mark.slow
def test_quick_run_writes_models_and_bounded_perturbations(quick_run):
    out, summary = quick_run
    for path in (out / "baseline" / "fashionnet.caffemodel", out / "train_fru" / "fashionnet_FRU.caffemodel",
                 out / "ranking" / "fashionnet_FRU_bottom.caffemodel",
                 out / "secondary" / "fashionnet_FRU_secondary.caffemodel",
                 out / "peers" / "fashionnet_adv_finetune.caffemodel", out / "train_fd" / "fashionnet_FD.caffemodel"):
        assert path.stat().st_size > 100_000, path
    budget = summary["training_budget"]  # FD: the FRUs' budget, the whole net learning
    assert budget["fd"]["iterations"] == budget["fru"]["iterations"] == QUICK.fru_iters
    assert budget["fd"]["batch"] == budget["fru"]["batch"] == QUICK.fru_batch
    assert (budget["fd"]["solver"], budget["fd"]["lr"]) == ("Adam", pytest.approx(1e-4))
    assert budget["fd"]["trainable_parameters"] > budget["fru"]["trainable_parameters"] > 0
    for s in attack_sets(QUICK):
        files = sorted((out / stage_of(s.name) / s.name).glob("*.npy"))
        assert len(files) == s.count, s.name
        for f in files:
            v = np.load(f, allow_pickle=False)
            assert v.shape == (1, 28, 28) and v.dtype == np.float32
            norm = np.abs(v).max() if s.norm == "inf" else np.sqrt((v.astype(np.float64) ** 2).sum())
            assert norm <= s.xi * (1 + 1e-5), (s.name, norm)
    assert len(list((out / "train_attacks" / "synthetic").glob("*.npy"))) == QUICK.synthetic
    masking = summary["ranking"]["masking"]
    assert set(masking) == {"conv1", "conv2", "conv3"}
    assert all(0.0 <= r["top_half_masked"] <= 1.0 / summary["ranking"]["clean_top1"] for r in masking.values())


@pytest.mark.slow
def test_masking_every_channel_gives_back_clean_accuracy(quick_run):
    out, _ = quick_run
    ctx = Context(QUICK, out, progress=False)
    x, y = evaluation_images(ctx)
    x, y = x[:50], y[:50]
    perts = np.stack(ctx.perturbations("same-norm"))
    which = np.zeros(len(y), dtype=np.int64)
    clean = float(np.mean(ctx.classifier("baseline").labels(x) == y))
    for target in fru_targets(ctx):
        channels = np.arange(2 * target.n)
        assert masked_restoration(ctx, target, channels, x, y, perts, which, clean) == pytest.approx(1.0, abs=1e-12)
    perturbed = float(np.mean(ctx.classifier("baseline").labels(x, perturbation=perts[0]) == y))
    none = masked_restoration(ctx, fru_targets(ctx)[0], np.arange(0), x, y, perts, which, clean)
    assert none == pytest.approx((clean + perturbed) / (2 * clean), abs=1e-12)


@pytest.mark.slow
def test_rerun_resumes_and_a_changed_field_redoes_only_downstream_stages(quick_seeds, quick_run, root):
    out, first = quick_run
    assert first["machine"]["jobs"] == 2  # the fixture ran stages side by side in two workers
    starts = {name: json.loads((out / name / "stage.json").read_text()) for name in STAGE_NAMES}
    for stage in STAGES:  # no stage started before its upstream stages ended
        for up in stage.upstream:
            assert starts[stage.name]["started_at"] >= starts[up]["ended_at"], (stage.name, up)
    aggregate = json.loads((quick_seeds / "summary.json").read_text())
    res = _cli("--quick", "--quiet", "--seeds", "2", "--out", str(quick_seeds), "--jobs", "1", cwd=root)
    assert res.returncode == 0, res.stderr[-2000:]
    again = json.loads((out / "summary.json").read_text())
    assert all(t["resumed"] for t in again["timings"].values())
    assert again["cases"] == first["cases"]
    assert json.loads((quick_seeds / "summary.json").read_text())["cases"] == aggregate["cases"]
    res = _cli("--quick", "--quiet", "--seeds", "2", "--out", str(quick_seeds), "--set", "test_images=150", cwd=root)
    assert res.returncode == 0, res.stderr[-2000:]
    for seed in (0, 1):
        changed = json.loads((quick_seeds / f"seed-{seed}" / "summary.json").read_text())
        redone = {name for name, t in changed["timings"].items() if not t["resumed"]}
        assert redone == {"masking", "evaluate"}
        assert changed["cases"]["same-norm"]["images"] == 150


def test_bottom_ranked_weights_reverse_each_targets_ranking():
    preset = get_preset("FashionNet")
    rng = np.random.default_rng(0)
    base = {t.layer: [rng.normal(size=(2 * t.n, 4, 3, 3)).astype(np.float32)] for t in preset.targets}
    out = _bottom_ranked({"keep": [np.ones(1)]}, base, preset.targets)
    assert "keep" in out
    for t in preset.targets:
        names = fru_names(t)
        perm = permutation_from_matrix(out[names.imap][0])
        np.testing.assert_array_equal(perm, rank_channels(base[t.layer][0])[::-1])
        np.testing.assert_array_equal(permutation_from_matrix(out[names.remap][0])[perm], np.arange(2 * t.n))


def test_training_subsets_are_disjoint_and_cover_every_image_attack():
    cfg = ReproConfig()
    subsets = train_subsets(cfg, 60000)
    needed = [(s.name, k) for s in attack_sets(cfg) if s.uses_images for k in range(s.count)]
    assert sorted(subsets) == sorted(needed + [("calibration", 0)])
    everything = np.concatenate(list(subsets.values()))
    assert everything.size == (len(needed) + 1) * cfg.uap_images == np.unique(everything).size
    with pytest.raises(ValueError, match="need more than the 1000 training images"):
        train_subsets(cfg, 1000)


def test_train_extra_joins_the_training_set_moves_no_other_subset_and_is_reported_as_seen(tmp_path):
    cfg = ReproConfig()
    seen = ReproConfig(train_extra=("spgd",))
    base, extra = train_subsets(cfg, 60000), train_subsets(seen, 60000)
    assert set(extra) - set(base) == {("train-spgd", k) for k in range(seen.train_extra_per_attack)}
    assert all(np.array_equal(base[k], extra[k]) for k in base)  # calibration included
    everything = np.concatenate(list(extra.values()))
    assert np.unique(everything).size == everything.size
    cases = {c.key: c for c in eval_cases(seen)}
    assert cases["unseen-spgd"].group == "seen" and "SEEN" in cases["unseen-spgd"].title
    assert cases["unseen-gduap"].group == "unseen"
    ctx = Context(seen, tmp_path)
    for name, count in (("train", 2), ("synthetic", 1), ("train-spgd", 3)):
        folder = tmp_path / stage_of(name) / name
        folder.mkdir(parents=True)
        for k in range(count):
            np.save(folder / f"{k:02d}.npy", np.full((1, 28, 28), len(name) + k, np.float32))
    got = [float(p.flat[0]) for p in training_perturbations(ctx)]
    assert got == [5, 6, 9, 10, 11, 12]
    with pytest.raises(ValueError, match="unknown train_extra attack 'pgd'"):
        ReproConfig(train_extra=("pgd",))


def test_targets_are_checked_against_the_issue_thresholds():
    def row(clean, pert, rest, fr):
        return {"clean_top1": clean, "perturbed_top1": pert, "restoration": rest, "fooling_rate": fr}
    models = {"baseline": row(0.9, 0.3, 0.667, 0.6), "fru": row(0.895, 0.85, 0.969, 0.1),
              "median": row(0.88, 0.5, 0.77, 0.4), "jpeg": row(0.9, 0.4, 0.72, 0.5), "bits": row(0.9, 0.3, 0.67, 0.6)}
    summary = {"baseline": {"test_top1": 0.9023, "test_images": 10000},
               "cases": {"same-norm": {"group": "same-norm", "models": models},
                         "unseen-spgd": {"group": "unseen", "models": dict(models, fru=row(0.895, 0.6, 0.83, 0.3))},
                         # in the FRU training set (train_extra): no unseen-attack target is claimed for it
                         "unseen-gduap": {"group": "seen", "models": dict(models, fru=row(0.895, 0.8, 0.94, 0.1))}},
               "ranking": {"masking": {"conv1": {"top_half_masked": 0.9, "bottom_half_masked": 0.8}}}}
    met = {t["target"]: t["met"] for t in check_targets(summary)}
    assert met == {"baseline test top-1 >= 0.90": True, "same-norm: baseline fooling rate >= 0.5": True,
                   "same-norm: baseline restoration <= 0.75": True, "same-norm: FRU restoration >= 0.95": True,
                   "FRU clean top-1 within 0.01 of the baseline's": True,
                   "unseen-spgd: FRU restoration >= 0.85": False, "unseen-spgd: FRU - baseline restoration >= 0.15": True,
                   "ranking: masking top half beats bottom half (conv1)": True,
                   "same-norm: FRU restoration above every image-domain peer": True,
                   "unseen-spgd: FRU restoration above every image-domain peer": True}


def test_unknown_config_key_is_an_error(root):
    res = _cli("--quick", "--out", "unused", "--set", "fru_iterations=5", cwd=root)
    assert res.returncode == 2
    assert "error: unknown config key 'fru_iterations'; valid: seed," in res.stderr
    assert "Traceback" not in res.stderr


def test_config_values_are_validated():
    with pytest.raises(ValueError, match="cannot read 'abc' as int"):
        ReproConfig().with_overrides(["fru_iters=abc"])
    with pytest.raises(ValueError, match="fru_iters must be a positive integer, got 0"):
        ReproConfig().with_overrides(["fru_iters=0"])
    with pytest.raises(ValueError, match="unknown unseen attack 'cw'; valid: spgd, gduap, fff, svuap, gap, nag"):
        ReproConfig(unseen=("spgd", "cw"))
    with pytest.raises(ValueError, match="nag_diversity must be 0 or positive, got -1"):
        ReproConfig().with_overrides(["nag_diversity=-1"])
    with pytest.raises(ValueError, match="--set takes key=value"):
        ReproConfig().with_overrides(["fru_iters"])
    cfg = ReproConfig().with_overrides(["stronger=1.5,3", "test_images=none", "xi=40"])
    assert (cfg.stronger, cfg.test_images, cfg.xi) == ((1.5, 3.0), None, 40.0)


@pytest.mark.slow
def test_ship_copies_models_with_records_naming_where_they_lie(quick_run, tmp_path):
    out, _ = quick_run
    ctx = Context(QUICK, out, progress=False)
    written = ship(ctx, tmp_path)
    demo = demo_defaults(NET)
    for rel, src in ((demo.baseline[1], ctx.baseline_weights), (demo.fru[1], ctx.weights("fru"))):
        assert (tmp_path / rel).read_bytes() == src.read_bytes()
        record = json.loads((tmp_path / rel).with_suffix(".json").read_text())
        source = json.loads(src.with_suffix(".json").read_text())
        assert record == ({**source, "weights": rel} if "weights" in source else source)
    assert tmp_path / demo.baseline[1] in written and len(written) == len(set(written))


@pytest.mark.slow
def test_a_run_without_some_competitors_evaluates_the_rest_and_keeps_every_other_stage(quick_seeds, tmp_path, root):
    copy = tmp_path / "fashion"
    shutil.copytree(quick_seeds, copy)
    test_images = json.loads((quick_seeds / "config.json").read_text())["test_images"]  # another test may rerun it
    res = _cli("--quick", "--quiet", "--seeds", "2", "--out", str(copy), "--jobs", "2", "--set",
               "trained_competitors=hgd", "--set", f"test_images={test_images}", cwd=root)
    assert res.returncode == 0, res.stderr[-2000:]
    for seed in (0, 1):
        before = json.loads((quick_seeds / f"seed-{seed}" / "summary.json").read_text())
        after = json.loads((copy / f"seed-{seed}" / "summary.json").read_text())
        assert after["config"]["trained_competitors"] == ["hgd"]
        for stage in set(before["stage_keys"]) - {"evaluate", "train_prn", "train_fd"}:
            assert after["stage_keys"][stage] == before["stage_keys"][stage], stage
        assert "train_prn" not in after["stage_keys"] and after["stage_keys"]["evaluate"] != before["stage_keys"]["evaluate"]
        for key, case in after["cases"].items():
            gone = {"prn", "prn_detector", "fd"}
            assert set(case["models"]) == set(before["cases"][key]["models"]) - gone, key
            for model, row in case["models"].items():  # the same predictions for every model kept
                assert row == before["cases"][key]["models"][model], (key, model)
    aggregate = json.loads((copy / "summary.json").read_text())
    assert not {"prn", "fd"} & set(aggregate["cases"]["same-norm"]["models"])


def test_stages_wall_time_spans_overlapping_stages():
    records = [{"seconds": 10.0, "started_at": 100.0, "ended_at": 110.0},
               {"seconds": 8.0, "started_at": 101.0, "ended_at": 109.0},
               {"seconds": 5.0, "started_at": 110.0, "ended_at": 115.0}]
    assert stages_wall_seconds(records) == 15.0
    assert stages_wall_seconds([{"seconds": 10.0}, {"seconds": 5.0}]) == 15.0  # records of older runs


def test_committed_results_carry_no_machine_paths(root):
    """Results and shipped records name files relative to the repository, never a machine's folders."""
    committed = sorted((root / "results").rglob("*.json")) + sorted((root / "weights").rglob("*.json"))
    assert committed
    for path in committed:
        strings = re.findall(r'"((?:[^"\\]|\\.)*)"', path.read_text())
        absolute = [s for s in strings if s.startswith("/") or re.match(r"^[A-Za-z]:\\", s)]
        assert not absolute, (path, absolute[:3])


def test_committed_claims_tables_are_the_committed_runs(root):
    """README, docs/reproduction.md and results/fashion/claims.md show the claims of the committed
    aggregate (results/fashion/summary.json), as the run wrote them: K >= 5 seeds, every claim
    judged, no table left by hand."""
    summary = json.loads((root / "results" / "fashion" / "summary.json").read_text())
    assert len(summary["seeds"]) >= 5
    table = claims_markdown(summary["claims"])
    assert (root / "results" / "fashion" / "claims.md").read_text() == table
    for doc in CLAIMS_DOCS:
        text, start, stop = claims_span(root / doc)
        assert text[start:stop] == "\n" + table, doc
    assert {c["verdict"] for c in summary["claims"]} <= {"reproduced", "not reproduced", "inconclusive"}


def test_docs_result_tables_are_copied_from_the_committed_run(root):
    """Every table of docs/reproduction.md's Results section stands verbatim in the committed
    results/fashion/results.md, so no number there is typed by hand or left from an older run."""
    doc = (root / "docs" / "reproduction.md").read_text()
    section = doc[doc.index("\n## Results\n"):]
    section = section[:section.index("\n## ", 1)]
    tables = [m.group(0) for m in re.finditer(r"(?m)(^\|.*\|\n)+", section)]
    assert tables
    results = (root / "results" / "fashion" / "results.md").read_text()
    for table in tables:
        assert table in results, table.splitlines()[0]


def test_critical_path_follows_what_each_stage_waited_for():
    records = {"a": {"started_at": 0.0, "ended_at": 10.0}, "b": {"started_at": 10.0, "ended_at": 50.0},
               "c": {"started_at": 10.2, "ended_at": 20.0}, "d": {"started_at": 20.1, "ended_at": 30.0},
               "e": {"started_at": 50.3, "ended_at": 60.0}}
    assert critical_path(records) == ["a", "b", "e"]  # e waited for b (its inputs or its worker)
    records["e"]["started_at"] = 30.5
    assert critical_path(records) == ["a", "c", "d", "e"]
    assert critical_path({"a": {"seconds": 1.0}}) == []  # records of older runs


def test_timings_follow_the_order_the_stages_ended():
    records = {"b": {"ended_at": 20.0}, "a": {"ended_at": 10.0}, "c": {"ended_at": 30.0}}
    assert [name for name, _ in finish_order(records)] == ["a", "b", "c"]
    assert [name for name, _ in finish_order({"b": {}, "a": {"ended_at": 1.0}})] == ["b", "a"]  # older records


@pytest.mark.slow
def test_two_seed_run_writes_the_aggregate_the_error_bar_figure_and_the_claims(quick_seeds, tmp_path):
    from PIL import Image
    from scipy import stats

    from defense.reproduce.claims import claims_markdown
    from defense.reproduce.report import restoration_figure

    out = quick_seeds
    summary = json.loads((out / "summary.json").read_text())
    replicas = [json.loads((out / f"seed-{s}" / "summary.json").read_text()) for s in (0, 1)]
    assert summary["seeds"] == [0, 1] and [r["config"]["seed"] for r in replicas] == [0, 1]
    assert summary["replicas"] == {"0": "seed-0/summary.json", "1": "seed-1/summary.json"}
    assert replicas[0]["cases"] != replicas[1]["cases"]  # independent replicas, not copies
    for name in ("results.md", "restoration.png", "feature_map.png"):  # per-seed tables and figures kept
        assert (out / "seed-1" / name).stat().st_size > 100, name
    assert list(summary["cases"]) == list(replicas[0]["cases"])
    for key, case in summary["cases"].items():
        assert set(case["models"]) == set(replicas[0]["cases"][key]["models"])
        for model, cells in case["models"].items():
            # PRN gated by its detector also reports the detector's rates, aggregated alike
            extra = {"detection_rate", "false_alarm_rate"} if model == "prn_detector" else set()
            assert set(cells) == set(METRICS) | extra
            for metric, cell in cells.items():
                values = np.array([r["cases"][key]["models"][model][metric] for r in replicas])
                half = stats.t.ppf(0.975, 1) * values.std(ddof=1) / np.sqrt(2)
                assert cell["values"] == list(values) and cell["n"] == 2
                assert cell["mean"] == pytest.approx(values.mean(), abs=1e-12)
                assert (cell["low"], cell["high"]) == (pytest.approx(values.mean() - half, abs=1e-12),
                                                       pytest.approx(values.mean() + half, abs=1e-12))
        best = case["best_competitor"]
        assert best["model"] == max(COMPETITORS, key=lambda c: case["models"][c]["restoration"]["mean"])
        rows = [r["cases"][key]["models"] for r in replicas]
        margins = [m["fru"]["restoration"] - m[best["model"]]["restoration"] for m in rows]
        assert best["fru_margin"]["mean"] == pytest.approx(np.mean(margins), abs=1e-12)
    # claims: 1 competitor margin + same-norm, cross-norm, 1 stronger, 5 unseen (NAG and GAP included) + regeneration
    # + 3 masking + 2 secondary
    assert len(summary["claims"]) == 15
    assert {"unseen-gap", "unseen-nag"} <= {c["statistic"].rsplit(" on ", 1)[-1] for c in summary["claims"]}
    assert all(c["verdict"] in ("reproduced", "not reproduced", "inconclusive") for c in summary["claims"])
    assert (out / "claims.md").read_text() == claims_markdown(summary["claims"])
    results = (out / "results.md").read_text()
    assert results.startswith("# Fashion-MNIST reproduction (FashionNet), 2 seeds")
    assert claims_markdown(summary["claims"]) in results and "## Best competitor per case" in results
    assert {t["verdict"] for t in summary["targets"]} <= {"met", "missed", "inconclusive"}
    # the figure: error bars drawn over the bars of the means
    figure = np.asarray(Image.open(out / "restoration.png").convert("L"))
    means = {k: {m: c["restoration"]["mean"] for m, c in case["models"].items()} for k, case in summary["cases"].items()}
    plain = np.asarray(Image.open(restoration_figure(means, tmp_path / "plain.png", subtitle=
                                                     " (mean and 95% interval, 2 seeds)")).convert("L"))
    assert figure.shape == plain.shape and figure.shape[1] > 1000
    assert (figure != plain).mean() > 0.001


@pytest.mark.slow
def test_a_shipped_run_writes_seed_0s_demo_files_and_the_claims_table_into_the_docs(quick_seeds, tmp_path, root):
    from defense.reproduce.claims import BEGIN, CLAIMS_DOCS, END, claims_markdown
    from defense.reproduce.pipeline import ship_run

    summary = json.loads((quick_seeds / "summary.json").read_text())
    for doc in CLAIMS_DOCS:
        (tmp_path / doc).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / doc).write_text(f"intro\n{BEGIN}\nplaceholder\n{END}\nrest\n")
    shipped = ship_run(Context(QUICK, quick_seeds / "seed-0", progress=False), summary["claims"], tmp_path)
    assert set(CLAIMS_DOCS) <= set(shipped) and demo_defaults(NET).fru[1] in shipped
    assert all(not p.startswith("/") for p in shipped)
    for doc in CLAIMS_DOCS:
        assert (tmp_path / doc).read_text() == f"intro\n{BEGIN}\n{claims_markdown(summary['claims'])}{END}\nrest\n"
    assert (tmp_path / demo_defaults(NET).fru[1]).read_bytes() == (
        quick_seeds / "seed-0" / "train_fru" / "fashionnet_FRU.caffemodel").read_bytes()


def test_pd_is_a_column_and_set_peers_keeps_its_options_together():
    assert ReproConfig().peers[-1] == "pd"
    cfg = ReproConfig().with_overrides(["peers=median:3,pd:deflections=3,window=1"])
    assert cfg.peers == ("median:3", "pd:deflections=3,window=1")
    with pytest.raises(ValueError, match="peers: peer defence 'pd:window=0': window must be a positive integer"):
        ReproConfig().with_overrides(["peers=pd:window=0"])
