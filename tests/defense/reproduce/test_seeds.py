"""Replicas over seeds (issue 20): the Student-t intervals, verdicts from intervals, the
aggregate of per-seed summaries, the best-competitor row and the paper's claims table."""
import numpy as np
import pytest
from scipy import stats

from defense.reproduce.aggregate import aggregate_cases, aggregate_masking, aggregate_targets, build_aggregate
from defense.core import ToolkitError
from defense.reproduce.claims import (BEGIN, CLAIMS_DOCS, END, claims_markdown, claims_span, judge_claims,
                                      paper_claims, write_claims_into)
from defense.reproduce.config import COMPETITORS, ReproConfig
from defense.reproduce.report import best_competitor, competitor_row, ordered_models
from defense.reproduce.stats import format_interval, mean_interval, verdict


@pytest.mark.parametrize("values", [[0.91, 0.95, 0.93], [1.0, 2.0, 3.0, 4.0, 5.0], [0.5, 0.7],
                                    [0.961, 0.958, 0.949, 0.970, 0.955]])
def test_interval_matches_scipys_t_interval(values):
    got = mean_interval(values)
    low, high = stats.t.interval(0.95, len(values) - 1, loc=np.mean(values), scale=stats.sem(values))
    assert got["mean"] == pytest.approx(np.mean(values), abs=1e-12)
    assert (got["low"], got["high"]) == (pytest.approx(low, abs=1e-12), pytest.approx(high, abs=1e-12))
    assert got["half_width"] == pytest.approx((high - low) / 2, abs=1e-12)
    assert got["n"] == len(values) and got["values"] == values


def test_interval_numbers():
    # t_{0.975, 4} = 2.776445, s = sqrt(2.5), so the half-width is 2.776445 * 1.581139 / sqrt(5)
    got = mean_interval([1.0, 2.0, 3.0, 4.0, 5.0])
    assert (got["mean"], got["half_width"]) == (3.0, pytest.approx(1.963243, abs=1e-6))
    one = mean_interval([0.9])
    assert (one["mean"], one["low"], one["high"], one["half_width"], one["n"]) == (0.9, None, None, None, 1)
    flat = mean_interval([0.8, 0.8, 0.8])
    assert (flat["low"], flat["high"]) == (pytest.approx(0.8, abs=1e-12), pytest.approx(0.8, abs=1e-12))
    assert format_interval(got) == "3.000 ± 1.963" and format_interval(one) == "0.900 (1 seed)"
    with pytest.raises(ValueError, match="non-empty list"):
        mean_interval([])


def _interval(low, high):
    return {"mean": (low + high) / 2, "low": low, "high": high, "half_width": (high - low) / 2, "n": 3}


@pytest.mark.parametrize("low, high, op, threshold, expected", [
    (0.96, 0.98, ">=", 0.95, "met"), (0.95, 0.98, ">=", 0.95, "met"), (0.93, 0.97, ">=", 0.95, "inconclusive"),
    (0.90, 0.94, ">=", 0.95, "missed"), (0.0, 0.02, ">", 0.0, "inconclusive"), (0.0, 0.0, ">", 0.0, "missed"),
    (0.01, 0.02, ">", 0.0, "met"), (0.70, 0.74, "<=", 0.75, "met"), (0.74, 0.76, "<=", 0.75, "inconclusive"),
    (0.76, 0.80, "<=", 0.75, "missed")])
def test_verdict_is_decided_from_the_whole_interval(low, high, op, threshold, expected):
    assert verdict(_interval(low, high), op, threshold) == expected


def test_verdict_without_an_interval_is_inconclusive_and_words_can_change():
    assert verdict(mean_interval([0.99]), ">=", 0.5) == "inconclusive"
    words = ("reproduced", "not reproduced", "inconclusive")
    assert verdict(_interval(0.2, 0.3), ">", 0.1, words) == "reproduced"
    assert verdict(_interval(0.0, 0.05), ">", 0.1, words) == "not reproduced"
    with pytest.raises(ValueError, match="unknown comparison '=='"):
        verdict(_interval(0.0, 1.0), "==", 0.5)


# ---------------------------------------------------------------- constructed per-seed summaries
def _row(restoration, clean=0.9):
    return {"clean_top1": clean, "perturbed_top1": 2 * 0.9 * restoration - clean, "restoration": restoration,
            "fooling_rate": 0.1}


# the constructed summaries' competitor columns: a fixed subset of COMPETITORS, so that adding a
# competitor column (pd, ...) to the reproduction leaves these numbers as they are
REPLICA_COMPETITORS = ("median", "jpeg", "bits", "adv_finetune")


def _replica(seed, fru, base, comps, bottom, secondary, masking, extra=None):
    """One seed's summary: restoration per model on same-norm, unseen-spgd and the adaptive cases."""
    same = {"baseline": _row(base), "fru": _row(fru), "fru_bottom": _row(bottom), "fru_secondary": _row(secondary),
            **{c: _row(r) for c, r in zip(REPLICA_COMPETITORS, comps, strict=True)}, **(extra or {})}
    summary = {"config": {"seed": seed, "xi": 50.0}, "xi_l2": 721.7, "evaluation_images": 200,
               "restoration_formula": "f", "baseline": {"test_top1": 0.90 + seed / 100, "test_images": 500},
               "cases": {"same-norm": {"title": "fresh", "group": "same-norm", "models": same},
                         "unseen-spgd": {"title": "sPGD", "group": "unseen", "models": dict(same, fru=_row(fru - 0.25))},
                         "adaptive": {"title": "wb", "group": "adaptive", "models": dict(same)},
                         "adaptive-secondary": {"title": "wb2", "group": "adaptive", "models": dict(same)}},
               "ranking": {"masking": {"conv1": {"top_half_masked": masking[0], "bottom_half_masked": masking[1]}}},
               "targets": [{"target": "same-norm: FRU restoration >= 0.95", "value": fru, "op": ">=",
                            "threshold": 0.95, "met": fru >= 0.95, "over_seeds": True},
                           {"target": "reproduction under 20 minutes", "value": 100.0, "op": "<", "threshold": 1200,
                            "met": True, "over_seeds": False}]}
    for c in summary["cases"].values():
        c["best_competitor"] = competitor_row(c["models"])
    return summary


REPLICAS = [_replica(0, 0.96, 0.66, (0.70, 0.86, 0.83, 0.90), 0.95, 0.97, (0.99, 0.83)),
            _replica(1, 0.97, 0.64, (0.71, 0.84, 0.82, 0.88), 0.93, 0.97, (0.99, 0.85)),
            _replica(2, 0.95, 0.67, (0.69, 0.85, 0.80, 0.86), 0.96, 0.96, (0.98, 0.80))]


def test_every_cell_is_the_mean_and_t_interval_of_the_seeds():
    cases = aggregate_cases(REPLICAS)
    assert list(cases) == ["same-norm", "unseen-spgd", "adaptive", "adaptive-secondary"]
    for key, case in cases.items():
        assert case["seeds"] == 3 and case["title"] == REPLICAS[0]["cases"][key]["title"]
        for model, cells in case["models"].items():
            for metric, cell in cells.items():
                values = [r["cases"][key]["models"][model][metric] for r in REPLICAS]
                expected = stats.t.interval(0.95, 2, loc=np.mean(values), scale=stats.sem(values)) \
                    if np.std(values) > 0 else (np.mean(values), np.mean(values))
                assert cell["mean"] == pytest.approx(np.mean(values), abs=1e-12)
                assert (cell["low"], cell["high"]) == (pytest.approx(expected[0], abs=1e-9),
                                                       pytest.approx(expected[1], abs=1e-9))
    masking = aggregate_masking(REPLICAS)["conv1"]
    assert masking["top_half_masked"]["mean"] == pytest.approx(0.98666667, abs=1e-6)
    assert masking["bottom_half_masked"]["values"] == [0.83, 0.85, 0.80]


def test_the_best_competitor_has_the_highest_mean_and_the_margin_is_paired():
    cases = aggregate_cases(REPLICAS)
    best = cases["same-norm"]["best_competitor"]
    assert best["model"] == "adv_finetune"  # means 0.70, 0.85, 0.8167, 0.88
    assert best["restoration"]["mean"] == pytest.approx(0.88, abs=1e-12)
    margins = np.array([0.96 - 0.90, 0.97 - 0.88, 0.95 - 0.86])
    half = stats.t.ppf(0.975, 2) * margins.std(ddof=1) / np.sqrt(3)
    assert best["fru_margin"]["mean"] == pytest.approx(margins.mean(), abs=1e-12)
    assert best["fru_margin"]["half_width"] == pytest.approx(half, abs=1e-12)
    # one seed's row: that seed's own best
    assert REPLICAS[0]["cases"]["same-norm"]["best_competitor"] == {
        "model": "adv_finetune", "restoration": 0.90, "fru_margin": pytest.approx(0.06, abs=1e-12)}
    assert best_competitor({"baseline": 0.99, "fru": 0.98}) is None
    assert best_competitor({"median": 0.7, "jpeg": 0.7}) == "median"


def test_columns_come_from_the_summaries_not_a_fixed_list():
    extra = {"prn_test_column": _row(0.5)}
    replicas = [_replica(s, 0.96, 0.66, (0.7, 0.8, 0.8, 0.9), 0.95, 0.97, (0.99, 0.8), extra) for s in (0, 1)]
    cases = aggregate_cases(replicas)
    assert "prn_test_column" in cases["same-norm"]["models"]
    assert ordered_models(cases)[-1] == "prn_test_column"
    assert ordered_models(cases)[:2] == ["baseline", "fru"]
    # a column only some seeds hold is averaged over those
    replicas[1]["cases"]["same-norm"]["models"].pop("prn_test_column")
    assert aggregate_cases(replicas)["same-norm"]["models"]["prn_test_column"]["restoration"]["n"] == 1


def test_claims_are_paired_differences_with_verdicts():
    cases = aggregate_cases(REPLICAS)
    rows = judge_claims(paper_claims(cases, ["conv1"]), REPLICAS)
    by_stat = {r["statistic"].split(";")[0]: r for r in rows}
    assert [r["claim"].split(" (")[0] for r in rows] == [
        "FRUs beat the best competitor by more than 0.1 restoration", "FRUs restore same-norm",
        "FRUs generalise to the unseen attack unseen-spgd",
        "Top-ranked channels matter more than bottom-ranked: regenerating them",
        "Top-ranked channels matter more than bottom-ranked: masking them",
        "The secondary defence recovers white-box UAPs", "The secondary defence restores white-box UAPs computed "
        "through itself"]
    margin = by_stat["restoration(fru) - restoration(adv_finetune) on same-norm"]
    assert margin["difference"]["mean"] == pytest.approx(0.08, abs=1e-12)  # (0.06 + 0.09 + 0.09) / 3
    assert margin["verdict"] == "inconclusive"  # the interval, +-0.043, straddles 0.10
    same = by_stat["restoration(fru) - restoration(baseline) on same-norm"]
    assert same["difference"]["values"] == pytest.approx([0.30, 0.33, 0.28], abs=1e-12)
    assert same["verdict"] == "reproduced"
    unseen = by_stat["restoration(fru) - restoration(baseline) on unseen-spgd"]
    assert unseen["difference"]["values"] == pytest.approx([0.05, 0.08, 0.03], abs=1e-12)
    assert unseen["verdict"] == "not reproduced"  # 0.053 +- 0.062: high end 0.116 < 0.15
    regen = by_stat["restoration(fru) - restoration(fru_bottom) on same-norm"]
    assert regen["difference"]["values"] == pytest.approx([0.01, 0.04, -0.01], abs=1e-12)
    assert regen["verdict"] == "inconclusive"
    mask = by_stat["masked restoration(top half of conv1) - masked restoration(bottom half) on same-norm"]
    assert mask["difference"]["values"] == pytest.approx([0.16, 0.14, 0.18], abs=1e-12)
    assert mask["verdict"] == "reproduced"
    table = claims_markdown(rows).splitlines()
    assert len(table) == 2 + len(rows) and table[0].startswith("| claim (Fashion-MNIST) |")
    assert table[3].endswith("| >= 0.15 | reproduced |")


def test_targets_are_judged_from_the_interval_and_the_run_from_its_widest_interval_and_time():
    cases = aggregate_cases(REPLICAS)
    targets = aggregate_targets(REPLICAS, 6000.0, cases)
    assert [t["target"] for t in targets] == [
        "same-norm: FRU restoration >= 0.95", "every same-norm cell's 95% interval narrower than +-0.03",
        "whole 3-seed run under 90 minutes (5400 s, first stage start to last stage end)"]
    assert targets[0]["value"]["values"] == [0.96, 0.97, 0.95]
    assert targets[0]["verdict"] == "inconclusive"  # 0.96 +- 0.025
    # the widest same-norm interval: adv_finetune's perturbed top-1, 2 x 0.9 x restoration (0.90, 0.88, 0.86) - 0.9
    widest = max(c["half_width"] for cells in cases["same-norm"]["models"].values() for c in cells.values())
    assert targets[1]["value"] == widest == pytest.approx(
        1.8 * stats.t.ppf(0.975, 2) * np.std([0.90, 0.88, 0.86], ddof=1) / np.sqrt(3), abs=1e-12)
    assert targets[1]["verdict"] == "missed"
    assert targets[2]["verdict"] == "missed" and aggregate_targets(REPLICAS, 5400.0, cases)[2]["verdict"] == "met"


def test_the_aggregate_summary_names_seeds_and_relative_replica_folders():
    records = [{"seconds": 1.0, "started_at": 10.0, "ended_at": 20.0}, {"seconds": 1.0, "started_at": 12.0,
                                                                          "ended_at": 40.0}]
    summary = build_aggregate(ReproConfig(), REPLICAS, ["seed-0", "seed-1", "seed-2"], records, 0.0, (0, 0, 0), 2)
    assert summary["seeds"] == [0, 1, 2] and summary["wall_seconds_all_stages"] == 30.0
    assert summary["replicas"] == {"0": "seed-0/summary.json", "1": "seed-1/summary.json", "2": "seed-2/summary.json"}
    assert summary["baseline"]["test_top1"]["mean"] == pytest.approx(0.91, abs=1e-12)
    assert len(summary["claims"]) == 7 and summary["competitors"] == list(COMPETITORS)


def test_the_claims_table_is_written_between_the_markers_of_each_document(tmp_path, root):
    for doc in CLAIMS_DOCS:  # make reproduce checks these before it runs
        claims_span(root / doc)
    doc = tmp_path / "doc.md"
    doc.write_text(f"# title\n\n{BEGIN}\nold table\n{END}\n\nafter\n")
    table = claims_markdown(judge_claims(paper_claims(aggregate_cases(REPLICAS), ["conv1"]), REPLICAS))
    write_claims_into(doc, table)
    assert doc.read_text() == f"# title\n\n{BEGIN}\n{table}{END}\n\nafter\n"
    write_claims_into(doc, table)  # idempotent
    assert doc.read_text() == f"# title\n\n{BEGIN}\n{table}{END}\n\nafter\n"
    doc.write_text("no markers\n")
    with pytest.raises(ToolkitError, match="doc.md: no claims table markers"):
        write_claims_into(doc, table)
    assert doc.read_text() == "no markers\n"
