"""defense.bench: MAC counting, the side-by-side timing record, and the memory guard."""
import pytest

from defense import bench
from defense.core import load_net
from defense.devices import blas_threads
from defense.networks import fashionnet
from defense.presets import get_preset


def test_net_macs_counts_conv_and_fc_multiply_accumulates():
    net = load_net(bench.with_batch(fashionnet.build(get_preset("FashionNet")), 1))
    expected = 0
    for name in net.params:
        layer = net.layer_dict[name]
        if layer.type in ("Convolution", "InnerProduct"):
            top = net.blobs[net.top_names[name][0]].data
            w = net.params[name][0].data
            expected += top.size * w[0].size  # each output value: one dot product over a filter
    assert bench.net_macs(net) == expected > 0


def test_bench_one_times_every_layout_and_reports_mac_ratios():
    res = bench.bench_one("FashionNet", batch=2, reps=1)
    rows = res["layouts"]
    assert list(rows) == ["baseline", "fru_explicit", "fru_fast"]
    assert rows["fru_explicit"]["time_ratio_vs_published"] == 1.0 == rows["fru_explicit"]["mac_ratio_vs_published"]
    assert rows["baseline"]["macs_per_image"] < rows["fru_fast"]["macs_per_image"] < rows["fru_explicit"]["macs_per_image"]
    assert all(r["ms_per_image"] > 0 for r in rows.values())
    # the permutation convs' share, counted independently by name
    net = load_net(bench.with_batch(bench.layouts("FashionNet")["fru_explicit"][0], 1))
    perm = [n for n in net.params if n.endswith(("_imap", "_remap"))]
    assert len(perm) == 6
    expected = 1 - bench.net_macs(net, perm) / bench.net_macs(net)
    assert res["permutation_free_mac_ratio"] == pytest.approx(expected, rel=1e-12)
    assert rows["fru_fast"]["mac_ratio_vs_published"] > expected > rows["baseline"]["mac_ratio_vs_published"]


def test_paired_ratio_is_the_median_of_per_repetition_ratios():
    # a slow second repetition doubles both times: the pairs still say 0.5
    assert bench.paired_ratio([1.0, 2.0, 0.6], [2.0, 4.0, 1.0]) == pytest.approx(0.5)
    assert bench.paired_ratio([3.0], [2.0]) == pytest.approx(1.5)


def test_bench_one_skips_a_batch_that_would_not_fit_in_memory(monkeypatch):
    monkeypatch.setattr(bench, "available_bytes", lambda: 10 * 2**20)
    res = bench.bench_one("FashionNet", batch=4096, reps=1)
    assert "layouts" not in res and "use a smaller --batch" in res["skipped"]
    assert bench.net_bytes(fashionnet.build(get_preset("FashionNet")), 2) > 0


def test_onnxruntime_is_timed_beside_caffe_for_the_chosen_layouts(tmp_path):
    pytest.importorskip("onnxruntime")
    res = bench.bench_one("FashionNet", batch=2, reps=2, runtimes=("caffe", bench.ONNXRUNTIME), only=["fru_fast"])
    rows = res["layouts"]
    assert list(rows) == ["fru_explicit", "fru_explicit@onnxruntime", "fru_fast", "fru_fast@onnxruntime"]
    assert "speedup_vs_caffe" not in rows["fru_fast"] and rows["fru_fast@onnxruntime"]["speedup_vs_caffe"] > 0
    assert rows["fru_fast@onnxruntime"]["macs_per_image"] == rows["fru_fast"]["macs_per_image"]
    assert "baseline" not in rows and res["fast_time_over_mac_ratio"] > 0
    with pytest.raises(ValueError, match="FashionNet has no layout fru_folded"):
        bench.bench_one("FashionNet", batch=1, reps=1, only=["fru_folded"])
    assert bench.main(["--nets", "FashionNet", "--runtime", "caffe,tensorrt", "--out", str(tmp_path / "b.json")]) == 2
    assert not (tmp_path / "b.json").exists()


def test_conv_batching_times_every_run_and_reports_ratios_and_peak_rss(monkeypatch):
    """--compare conv-batching at a tiny size: each kind of run with Caffe's batching on and off,
    the paired ratios, GMAC/s from the nets' MACs, and a peak RSS from a child process."""
    monkeypatch.delenv(bench.BATCHING_ENV, raising=False)
    res = bench.bench_batching("FashionNet", batch=2, reps=2, kinds=("forward", "train"), onnx=False, rss=False)
    runs = res["runs"]
    assert list(runs) == ["forward caffe batching on", "forward caffe batching off",
                          "forward caffe batching off, 1 thread", "train caffe batching on",
                          "train caffe batching off", "train caffe batching off, 1 thread"]
    assert all(len(r["ms_all"]) == 2 and r["ms"] > 0 for r in runs.values())
    forward_macs = bench.net_macs(load_net(bench.with_batch(bench.layouts("FashionNet")["fru_explicit"][0], 2)))
    row = runs["forward caffe batching on"]
    assert row["gmac_per_s"] == pytest.approx(forward_macs / (row["ms"] / 1e3) / 1e9, rel=1e-9)
    assert set(res["ratios"]) == {f"{kind}: {what}" for kind in ("forward", "train")
                                  for what in ("speed-up of batching (off / on)", "CPU time of batching off / on",
                                               "speed-up of the threads (1 thread / default, batching off)")}
    assert res["threads"] == blas_threads() >= 1
    assert all(r["cpu_ms"] > 0 for r in runs.values())
    assert all(v > 0 for v in res["ratios"].values())
    import os
    assert os.environ[bench.BATCHING_ENV] in ("0", "1")  # the switch was set before each call
    rss = bench.peak_rss("FashionNet", 2, "forward", on=True)
    assert 50 * 2**20 < rss < 4 * 2**30


def test_conv_batching_uap_pass_and_onnxruntime_rows():
    pytest.importorskip("onnxruntime")
    res = bench.bench_batching("FashionNet", batch=2, reps=1, kinds=("forward", "uap"), rss=False)
    runs = res["runs"]
    assert {"forward onnxruntime 1 thread", "forward onnxruntime default threads", "uap caffe batching on",
            "uap caffe batching off"} <= set(runs)
    assert runs["uap caffe batching on"]["gmac_per_s"] is None  # a UAP pass has no fixed MAC count
    assert res["ratios"]["caffe on speed / onnxruntime 1 thread speed"] > 0
    assert res["ratios"]["caffe off 1 thread speed / onnxruntime 1 thread speed"] > 0
    table = bench.batching_tables([res]).splitlines()
    assert table[-1].startswith(f"| FashionNet, 2 | {res['threads']} | {runs['forward caffe batching off, 1 thread']['ms']:.1f} |")
    assert table[-1].count("|") == 14



def test_docs_batching_tables_come_from_the_committed_json(root):
    """Every number of docs/benchmarks.md's conv-batching section is rendered from results/bench/."""
    import json
    doc = (root / "docs" / "benchmarks.md").read_text()
    for path in sorted((root / "results" / "bench").glob("conv_batching*.json")):
        results = json.loads(path.read_text())["results"]
        assert results
        assert bench.batching_tables(results) in doc, f"docs/benchmarks.md does not show the tables of {path.name}"
