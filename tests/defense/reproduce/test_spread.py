"""defense.reproduce.spread: per-perturbation metrics of a replica and the seed-variance decomposition."""
from __future__ import annotations

import json

import numpy as np
import pytest

from defense.core import run_cli
from defense.evaluate.conditions import draw_choices
from defense.reproduce.spread import (case_perturbations, components, decompose, main, per_perturbation, seeds_to_decide,
                                      spread_report)
from defense.reproduce.stats import half_width, mean_interval


def fake_replica(folder, n=400, k=4, seed=3):
    """A replica whose baseline is fooled on every image of perturbation 0 and on none of the others,
    and whose 'fru' column keeps every clean label except on the images of perturbation 1."""
    rng = np.random.default_rng(seed)
    labels = rng.integers(0, 10, n)
    choice = draw_choices(n, k, 0)
    clean = labels.copy()
    clean[:40] = (labels[:40] + 1) % 10  # 40 clean errors: clean top-1 0.9
    base = clean.copy()
    base[choice == 0] = (clean[choice == 0] + 2) % 10
    fru = clean.copy()
    fru[choice == 1] = (clean[choice == 1] + 3) % 10
    evaluate = folder / "evaluate"
    evaluate.mkdir(parents=True)
    for model, perturbed in (("baseline", base), ("fru", fru)):
        np.savez(evaluate / f"predictions_{model}.npz", config=np.array("{}"), done=np.ones(4, bool), labels=labels,
                 **{f"{model}|clean|top1": clean, f"{model}|same-norm|top1": perturbed})
    (evaluate / "same-norm.json").write_text(json.dumps({"perturbations": k, "restoration_denominator": 0.9,
                                                          "models": {"baseline": {}, "fru": {}, "median": {}}}))
    (folder / "config.json").write_text(json.dumps({"eval_seed": 0}))
    return labels, clean, choice


def test_per_perturbation_metrics_of_a_replica(tmp_path):
    labels, clean, choice = fake_replica(tmp_path)
    rows = per_perturbation(tmp_path, "same-norm")
    assert sorted(rows) == ["baseline", "fru"]  # median has no prediction file
    counts = [int((choice == j).sum()) for j in range(4)]
    assert rows["baseline"]["images"] == counts and sum(counts) == 400
    assert rows["baseline"]["fooling_rate"] == [1.0, 0.0, 0.0, 0.0]
    assert rows["fru"]["fooling_rate"] == [0.0, 1.0, 0.0, 0.0]
    right = clean == labels
    for j in range(4):
        hits = right[choice == j].mean() if j != 0 else 0.0
        assert rows["baseline"]["restoration"][j] == pytest.approx((0.9 + hits) / 1.8, abs=1e-12)
    # the image-weighted mean of the per-perturbation restorations is the cell
    cell = (0.9 + np.mean(np.where(choice == 0, False, right))) / 1.8
    assert np.average(rows["baseline"]["restoration"], weights=counts) == pytest.approx(cell, abs=1e-12)


def test_components_remove_the_binomial_part():
    # four perturbations of 100 images each, hit rates 0.2, 0.4, 0.6, 0.8
    rates = np.array([0.2, 0.4, 0.6, 0.8])
    rows = {"fooling_rate": list(rates), "images": [100] * 4,
            "within_fooling_rate": list(rates * (1 - rates) * 100 / 99)}
    got = components(rows, "fooling_rate")
    within = np.mean(rates * (1 - rates) * 100 / 99)
    assert got["sigma_w2"] == pytest.approx(within, rel=1e-12)
    assert got["sigma_u2"] == pytest.approx(rates.var(ddof=1) - within / 100, rel=1e-12)
    flat = components({**rows, "fooling_rate": [0.5] * 4}, "fooling_rate")
    assert flat["sigma_u2"] == 0.0  # never negative


def test_the_half_width_is_the_aggregates_interval():
    values = [0.7525, 0.6954, 0.728, 0.6961, 0.7562]
    assert half_width(np.std(values, ddof=1), 5) == mean_interval(values)["half_width"]
    assert half_width(0.029, 5) == pytest.approx(0.03601, abs=1e-5)  # t_{0.975,4} = 2.7764


def test_decompose_predicts_the_half_width_for_more_seeds_and_perturbations():
    parts = {"sigma_u2": 0.0016, "sigma_w2": 0.2}
    runs = [[0.70, 0.74, 0.72, 0.76, 0.68], [0.71, 0.73, 0.69, 0.75, 0.72]]
    d = decompose(parts, runs, k=4, images=2000)
    pooled = (np.var(runs[0], ddof=1) + np.var(runs[1], ddof=1)) / 2
    sigma_b2 = pooled - 0.0016 / 4 - 0.2 / 2000
    assert d["dof"] == 8 and d["observed_sd"] == pytest.approx(np.sqrt(pooled), rel=1e-12)
    assert d["sigma_b"] == pytest.approx(np.sqrt(sigma_b2), rel=1e-12)
    assert d["share_of_perturbations"] == pytest.approx(0.0004 / pooled, rel=1e-12)
    assert d["half_width"]["K=5,k=4"] == pytest.approx(half_width(np.sqrt(pooled), 5), rel=1e-9)
    assert d["half_width"]["K=5,k=16"] == pytest.approx(half_width(np.sqrt(sigma_b2 + 0.0001 + 0.0001), 5), rel=1e-9)
    need = d["seeds_for_target"]["k=4"]
    assert half_width(np.sqrt(pooled), need) < 0.03 <= half_width(np.sqrt(pooled), need - 1)


def test_seeds_to_decide_a_claim_if_its_mean_and_sd_held():
    values = [0.16, 0.20, 0.14, 0.19, 0.15]  # mean 0.168, sd 0.0259
    claim = {"claim": "c", "op": ">=", "threshold": 0.15, "verdict": "inconclusive",
             "difference": {**mean_interval(values)}}
    (got,) = seeds_to_decide([claim])
    sd = np.std(values, ddof=1)
    assert got["sd"] == pytest.approx(sd, rel=1e-12) and got["mean"] == pytest.approx(0.168, abs=1e-12)
    K = got["seeds_to_decide"]
    assert half_width(sd, K) < 0.018 <= half_width(sd, K - 1) and K == 11
    on_threshold = {**claim, "difference": mean_interval([0.14, 0.16])}
    assert seeds_to_decide([on_threshold])[0]["seeds_to_decide"] is None


def test_each_case_counts_the_perturbations_of_its_sets(root):
    config = json.loads((root / "results/fashion/summary.json").read_text())["config"]
    counts = {case: case_perturbations(config, case) for case in ("same-norm", "cross-norm", "stronger-x2", "unseen-gap",
                                                                   "adaptive-secondary")}
    assert counts == {"same-norm": 4, "cross-norm": 3, "stronger-x2": 2, "unseen-gap": 2, "adaptive-secondary": 2}
    assert case_perturbations({**config, "test_uaps": 16}, "same-norm") == 16
    with pytest.raises(KeyError, match="no case 'stronger-x9'"):
        case_perturbations(config, "stronger-x9")


def test_report_and_command(tmp_path, capsys):
    fake_replica(tmp_path / "seed-0")
    summary = {"config": {"test_uaps": 4}, "evaluation_images": 2000, "cases": {"same-norm": {"models": {
        m: {"restoration": {"values": [0.7, 0.72, 0.74, 0.7, 0.71]}, "fooling_rate": {"values": [0.5, 0.6, 0.55, 0.6, 0.5]}}
        for m in ("baseline", "fru")}}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    report = spread_report(tmp_path / "seed-0", [tmp_path / "summary.json"])
    assert report["protocol_k"] == 4 and report["replica_perturbations"] == 4
    assert report["replica"] == {"seed": None, "test_uaps": None, "test_images": None, "eval_seed": 0}
    assert report["models"]["baseline"]["fooling_rate"]["per_perturbation"] == [1.0, 0.0, 0.0, 0.0]
    out = tmp_path / "spread" / "same-norm.json"
    assert run_cli(main, [str(tmp_path / "seed-0"), str(tmp_path / "summary.json"), "--out", str(out)]) == 0
    assert json.loads(out.read_text())["models"] == json.loads(json.dumps(report["models"]))
    table = out.with_suffix(".md").read_text()
    assert table == capsys.readouterr().out and table.count("\n") == 2 + 4
    one_seed = json.loads(json.dumps(summary))
    for row in one_seed["cases"]["same-norm"]["models"].values():
        row["restoration"]["values"] = [0.7]
    (tmp_path / "one.json").write_text(json.dumps(one_seed))
    code = run_cli(main, [str(tmp_path / "seed-0"), str(tmp_path / "one.json"), "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert code == 2 and err == f"error: {tmp_path / 'one.json'}: 'same-norm' has fewer than 2 seeds; the spread over " \
                                "seeds needs a K-seed run\n"
    code = run_cli(main, [str(tmp_path), str(tmp_path / "summary.json"), "--out", str(tmp_path / "x.json")])
    err = capsys.readouterr().err
    assert code == 2 and err.count("\n") == 1 and err.startswith(f"error: {tmp_path}: not an evaluated replica")
    assert not (tmp_path / "x.json").exists()


def test_the_committed_decomposition_is_its_table(root):
    """results/fashion-spread: the table is the JSON's, and the JSON's seed spread is that of the
    committed aggregates it names (their per-seed values, pooled)."""
    from defense.reproduce.spread import markdown
    report = json.loads((root / "results/fashion-spread/same-norm.json").read_text())
    assert (root / "results/fashion-spread/same-norm.md").read_text() == markdown(report)
    assert report["replica"]["test_uaps"] == 16 and report["protocol_k"] == 4
    runs = [json.loads((root / p).read_text())["cases"]["same-norm"]["models"] for p in report["aggregates"]]
    for model, metrics in report["models"].items():
        for metric, d in metrics.items():
            values = [r[model][metric]["values"] for r in runs]
            pooled = sum(np.var(v, ddof=1) * (len(v) - 1) for v in values) / sum(len(v) - 1 for v in values)
            assert d["observed_sd"] == pytest.approx(np.sqrt(pooled), rel=1e-12) and len(d["per_perturbation"]) == 16
