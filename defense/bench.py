"""CPU forward time of the deploy layouts, side by side: baseline, published FRU layout, fast layout.

Each network is built at each batch size in every layout (random weights, same input), the
layouts are timed in interleaved repetitions, in an order that rotates (so load changes hit
all alike and no layout always runs first); the median per image (and the minimum) is
reported with the ratio to the published layout (the median of the per-repetition ratios),
next to the ratio of multiply-accumulates (the FLOP-proportional bound, from the nets' blob
shapes) and the MAC ratio below which no layout can go that still computes the baseline and
every FRU conv (the published layout without its permutation convs). Where the baseline has
BatchNorm, the baseline with BatchNorm folded is timed too.

  python -m defense.bench --nets CaffeNet,VGG16 --batch 1,16 --reps 5
"""
from __future__ import annotations

import argparse
import functools
import json
import logging
import os
import platform
import statistics
import sys
import time
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

import numpy as np
from tqdm import tqdm

from attacks.classifier import CaffeClassifier, logits_blob_name
from attacks.uap import UAP

from .core import (caffe, caffe_pb2, load_net, number_list, param_shapes, parse_args, positive_int, run_cli, seed_int,
                   set_mode, set_net_blobs, write_text)
from .devices import blas_thread_count, blas_threads
from .generate.export import blob_channels, fast_layout, find_fru_blocks, fold_batchnorm
from .generate.fru import insert_frus, train_net
from .generate.onnx_graph import onnx_model, onnx_session
from .generate.surgery import init_fru_blobs, random_blobs
from .networks import build_baseline
from .outputs import output_file
from .presets import PUBLISHED_NETS, get_preset

log = logging.getLogger(__name__)

DEFAULT_NETS = PUBLISHED_NETS
DEFAULT_OUT = Path("results") / "bench_deploy.json"
ONNXRUNTIME = "onnxruntime"
RUNTIMES = ("caffe", ONNXRUNTIME)


def net_macs(net: "caffe.Net", only: Optional[Sequence[str]] = None) -> int:
    """Multiply-accumulates of one forward pass (Convolution and InnerProduct layers; those
    named in ``only``, where given)."""
    total = 0
    for name, layer in zip(net._layer_names, net.layers):
        if layer.type not in ("Convolution", "InnerProduct") or name not in net.params:
            continue
        if only is not None and name not in only:
            continue
        w = net.params[name][0].data
        top = net.blobs[net.top_names[name][0]].data
        total += int(top.size) * int(np.prod(w.shape[1:]))
    return total


def permutation_free_mac_ratio(param: "caffe_pb2.NetParameter", blobs, net: "caffe.Net") -> float:
    """1 - the share of an FRU net's MACs spent in its imap/remap permutation convs: the MAC
    ratio no layout that still computes the baseline and every FRU conv can go below."""
    perm_convs = [name for b in find_fru_blocks(param, blobs, blob_channels(net)) for name in (b.imap, b.remap) if name]
    return 1.0 - net_macs(net, perm_convs) / net_macs(net)


def paired_ratio(times: Sequence[float], reference: Sequence[float]) -> float:
    """Median over repetitions of ``times[i] / reference[i]``: each pair ran seconds apart, so
    the machine's speed changes (frequency, neighbours) cancel better than in a ratio of medians."""
    return statistics.median(t / r for t, r in zip(times, reference))


def with_batch(param: "caffe_pb2.NetParameter", batch: int) -> "caffe_pb2.NetParameter":
    out = caffe_pb2.NetParameter()
    out.CopyFrom(param)
    for layer in out.layer:
        if layer.type == "Input":
            for shape in layer.input_param.shape:
                shape.dim[0] = batch
    return out


def layouts(name: str, seed: int = 0) -> Dict[str, tuple]:
    """``{layout: (NetParameter, blobs)}`` for one preset, all at batch 1."""
    preset = get_preset(name)
    base = build_baseline(name)
    net = load_net(base)
    types = {n: net.layer_dict[n].type for n in net.params}
    base_blobs = random_blobs(param_shapes(net), types, np.random.default_rng(seed))
    fru = insert_frus(base, preset.targets, preset.mode, name)
    fru_blobs, _ = init_fru_blobs(base, base_blobs, preset.targets, preset.mode, seed, source=name)
    fast, fast_blobs, _ = fast_layout(fru, fru_blobs, blob_channels(load_net(fru)), name)
    out = {"baseline": (base, base_blobs)}
    if any(layer.type == "BatchNorm" for layer in base.layer):
        out["baseline_bn_folded"] = fold_batchnorm(base, base_blobs)
    out[f"fru_{preset.mode}"] = (fru, fru_blobs)
    out["fru_fast"] = (fast, fast_blobs)
    return out


def available_bytes() -> Optional[int]:
    """MemAvailable of /proc/meminfo (None where there is none)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def net_bytes(param: "caffe_pb2.NetParameter", batch: int, runtimes: Sequence[str] = ("caffe",)) -> int:
    """What a forward pass holds (from the net at batch 1): Caffe keeps every blob at ``batch`` and
    the parameters; onnxruntime (where timed too) the parameters again and, reusing its buffers, a
    few blobs at a time (counted as four of the largest)."""
    net = load_net(with_batch(param, 1))
    params = sum(p.data.size for ps in net.params.values() for p in ps)
    total = batch * sum(b.data.size for b in net.blobs.values()) + params
    if ONNXRUNTIME in runtimes:
        total += params + 4 * batch * max(b.data.size for b in net.blobs.values())
    return 4 * total


def bench_one(name: str, batch: int, reps: int, seed: int = 0, runtimes: Sequence[str] = ("caffe",),
              only: Optional[Sequence[str]] = None) -> Dict[str, object]:
    """One net at one batch size, all layouts (or those in ``only``, the published one always
    included as the reference) in every runtime, side by side; skipped (with the reason) when they
    would not fit in memory together (ResNet152 at batch 16 needs about 20 GiB)."""
    nets: Dict[str, "caffe.Net"] = {}
    runs: Dict[str, Callable[[], object]] = {}  # "layout" (Caffe) or "layout@onnxruntime" -> one forward pass
    rng = np.random.default_rng(seed)
    x = None
    all_layouts = layouts(name, seed)
    published = [k for k in all_layouts if k.startswith("fru_") and k != "fru_fast"][0]
    if only:
        unknown = sorted(set(only) - set(all_layouts))
        if unknown:
            raise ValueError(f"--layouts: {name} has no layout {unknown[0]}; it has {', '.join(all_layouts)}")
        all_layouts = {k: v for k, v in all_layouts.items() if k in only or k == published}
    need = sum(net_bytes(param, batch, runtimes) for param, _ in all_layouts.values())
    have = available_bytes()
    if have is not None and need > 0.8 * have:
        return {"net": name, "batch": batch, "skipped": f"the {len(all_layouts)} layouts side by side need about "
                f"{need / 2**30:.1f} GiB, {have / 2**30:.1f} GiB available; use a smaller --batch"}
    for layout, (param, blobs) in all_layouts.items():
        net = load_net(with_batch(param, batch))
        set_net_blobs(net, blobs)
        if x is None:
            x = (rng.standard_normal(net.blobs["data"].data.shape) * 50).astype(np.float32)
        net.blobs["data"].data[...] = x
        net.forward()  # warm-up
        nets[layout], runs[layout] = net, net.forward
        if ONNXRUNTIME in runtimes:
            session = onnx_session(onnx_model(net, param))
            feed = {session.get_inputs()[0].name: x}
            session.run(None, feed)  # warm-up
            runs[f"{layout}@{ONNXRUNTIME}"] = functools.partial(session.run, None, feed)
    times: Dict[str, List[float]] = {k: [] for k in runs}
    order = list(runs)
    for rep in tqdm(range(reps), desc=f"{name} batch {batch}", leave=False):
        for layout in order[rep % len(order):] + order[:rep % len(order)]:  # no layout always runs first
            start = time.perf_counter()
            runs[layout]()
            times[layout].append((time.perf_counter() - start) / batch)
    macs = {k: net_macs(nets[k.split("@")[0]]) // batch for k in runs}
    med = {k: statistics.median(v) for k, v in times.items()}
    best = {k: min(v) for k, v in times.items()}
    rows = {k: {"ms_per_image": 1e3 * med[k], "ms_per_image_min": 1e3 * best[k], "macs_per_image": macs[k],
                "time_ratio_vs_published": paired_ratio(times[k], times[published]),
                "time_ratio_vs_published_min": best[k] / best[published],
                "mac_ratio_vs_published": macs[k] / macs[published]} for k in runs}
    for k in all_layouts:  # the same layout in onnxruntime against Caffe, pair by pair
        if f"{k}@{ONNXRUNTIME}" in rows:
            rows[f"{k}@{ONNXRUNTIME}"]["speedup_vs_caffe"] = 1.0 / paired_ratio(times[f"{k}@{ONNXRUNTIME}"], times[k])
    out = {"net": name, "batch": batch, "reps": reps, "published_layout": published, "layouts": rows,
           "permutation_free_mac_ratio": permutation_free_mac_ratio(*all_layouts[published], nets[published])}
    if "fru_fast" in rows:
        fast = rows["fru_fast"]
        out["fast_time_over_mac_ratio"] = fast["time_ratio_vs_published"] / fast["mac_ratio_vs_published"]
    return out


# ---- Caffe's batched convolution against itself and onnxruntime (--compare conv-batching) ----

BATCHING_ENV = "CAFFE_CONV_BATCH"  # read by Caffe at each convolution (conv-batched-gemm.patch)
BATCHING_CONFIGS = {"FashionNet": (32, 256), "CaffeNet": (16,), "VGG16": (16,)}
BATCHING_KINDS = ("forward", "train", "uap")
# a UAP pass (a DeepFool per image, forward and backward passes) takes minutes on the ImageNet nets
DEFAULT_KINDS = {"FashionNet": BATCHING_KINDS}
DEFAULT_BATCHING_OUT = Path("results") / "bench" / "conv_batching.json"
UAP_DEEPFOOL = dict(num_classes=4, max_iter_df=3)  # one UAP pass, DeepFool kept short


def set_conv_batching(on: bool) -> None:
    """Turn Caffe's batched convolution on or off for the following passes of this process."""
    os.environ[BATCHING_ENV] = "1" if on else "0"


def _batching_nets(name: str, batch: int, kind: str, seed: int):
    """The nets one kind of run needs, built at ``batch`` with random weights: ``forward`` the
    published FRU deploy net; ``train`` its FRU training net (forward + backward); ``uap`` the
    baseline as a gradient classifier."""
    nets = layouts(name, seed)
    preset = get_preset(name)
    if kind == "uap":
        param, blobs = nets["baseline"]
        net = load_net(with_batch(param, batch), force_backward=True)
        set_net_blobs(net, blobs)
        return net, param, CaffeClassifier(net, preset.mean_bgr, "data", logits_blob_name(param), batch_size=batch)
    published = [k for k in nets if k.startswith("fru_") and k != "fru_fast"][0]
    param, blobs = nets[published]
    if kind == "train":
        net = load_net(train_net(param, preset.targets, batch, name), phase=caffe.TRAIN)
    else:
        net = load_net(with_batch(param, batch))
    set_net_blobs(net, blobs)
    return net, param, None


def _batching_runs(name: str, batch: int, kind: str, seed: int, onnx: bool) -> Dict[str, tuple]:
    """``{run: (callable, MACs per call or None)}`` for one kind: the Caffe run with batching on
    and off (the switch is set before each call) and, for ``forward``, onnxruntime with one thread
    and with its default threads."""
    net, param, classifier = _batching_nets(name, batch, kind, seed)
    rng = np.random.default_rng(seed)
    x = (rng.standard_normal(net.blobs["data"].data.shape) * 50).astype(np.float32)
    if kind == "uap":
        images = np.clip(x + 128, 0, 255)

        def step():
            attack = UAP(classifier, xi=10.0, max_passes=1, batch_size=batch, verbose=False, **UAP_DEEPFOOL)
            attack.generate(images, np.random.default_rng(seed))
        macs = None
    else:
        net.blobs["data"].data[...] = x
        if kind == "train":
            classes = net.blobs[net.bottom_names["loss"][0]].data.shape[1]
            net.blobs["label"].data[...] = rng.integers(0, classes, size=batch)

            def step():
                net.forward()
                net.backward()
            macs = 3 * net_macs(net)  # forward, then about twice that backward (weights and data)
        else:
            step, macs = net.forward, net_macs(net)

    def caffe_run(on: bool):
        def run():
            set_conv_batching(on)
            return step()
        return run

    def one_thread():
        with blas_thread_count(1):
            return caffe_run(False)()
    runs = {f"{kind} caffe batching on": (caffe_run(True), macs), f"{kind} caffe batching off": (caffe_run(False), macs),
            f"{kind} caffe batching off, 1 thread": (one_thread, macs)}
    if kind == "forward" and onnx:
        model = onnx_model(net, param)
        for label, threads in (("1 thread", 1), ("default threads", 0)):
            session = onnx_session(model, threads)
            feed = {session.get_inputs()[0].name: x}
            runs[f"forward onnxruntime {label}"] = (functools.partial(session.run, None, feed), macs)
    return runs


def _peak_rss_child(name: str, batch: int, kind: str, on: bool, seed: int, queue) -> None:
    """In a fresh process: build one kind's net, run it twice, report the peak RSS in bytes of
    the runs (Linux: the peak is reset once the net is built, so that the random weights of every
    layout, made to build it, do not count; elsewhere the process's peak)."""
    import ctypes
    import gc
    import resource
    set_conv_batching(on)
    caffe.set_mode_cpu()
    runs = _batching_runs(name, batch, kind, seed, onnx=False)
    run, _ = runs[f"{kind} caffe batching {'on' if on else 'off'}"]
    gc.collect()
    status = Path("/proc/self/status")
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)  # freed heap back to the system before the reset
        Path("/proc/self/clear_refs").write_text("5")  # resets VmHWM, the peak RSS
    except OSError:
        status = None
    run()
    run()
    if status is not None:
        peak_kib = next(int(line.split()[1]) for line in status.read_text().splitlines() if line.startswith("VmHWM:"))
    else:
        peak_kib = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    queue.put(peak_kib * 1024)


def peak_rss(name: str, batch: int, kind: str, on: bool, seed: int = 0) -> int:
    """Peak resident memory of one kind of run with batching on or off, each in its own process
    (a peak cannot be measured twice in one process)."""
    import multiprocessing
    ctx = multiprocessing.get_context("spawn")
    queue = ctx.Queue()
    child = ctx.Process(target=_peak_rss_child, args=(name, batch, kind, on, seed, queue))
    child.start()
    child.join()
    if child.exitcode != 0:
        raise RuntimeError(f"the peak-RSS child for {name} batch {batch} {kind} exited with {child.exitcode}")
    return int(queue.get(timeout=10))


def bench_batching(name: str, batch: int, reps: int, seed: int = 0, kinds: Sequence[str] = BATCHING_KINDS,
                   onnx: bool = True, rss: bool = True) -> Dict[str, object]:
    """One net at one batch size: for each kind of run (forward, FRU training step, one UAP pass),
    Caffe with batched convolution on and off (and onnxruntime for the forward pass), timed in
    interleaved repetitions in a rotating order; ms per call, GMAC/s, paired ratios, and the
    peak RSS of each Caffe run measured in its own process."""
    rows: Dict[str, Dict[str, object]] = {}
    ratios: Dict[str, float] = {}
    for kind in kinds:
        runs = _batching_runs(name, batch, kind, seed, onnx)
        for run, _ in runs.values():
            run()  # warm-up
        times: Dict[str, List[float]] = {k: [] for k in runs}
        cpu: Dict[str, List[float]] = {k: [] for k in runs}  # process CPU time, all threads
        order = list(runs)
        for rep in tqdm(range(reps), desc=f"{name} batch {batch} {kind}", leave=False):
            for label in order[rep % len(order):] + order[:rep % len(order)]:
                start, start_cpu = time.perf_counter(), time.process_time()
                runs[label][0]()
                times[label].append(time.perf_counter() - start)
                cpu[label].append(time.process_time() - start_cpu)
        for label, values in times.items():
            macs = runs[label][1]
            med = statistics.median(values)
            rows[label] = {"ms": 1e3 * med, "ms_min": 1e3 * min(values), "ms_all": [1e3 * t for t in values],
                           "cpu_ms": 1e3 * statistics.median(cpu[label]),
                           "gmac_per_s": None if macs is None else macs / med / 1e9}
        on, off = f"{kind} caffe batching on", f"{kind} caffe batching off"
        single = f"{off}, 1 thread"
        ratios[f"{kind}: speed-up of batching (off / on)"] = paired_ratio(times[off], times[on])
        ratios[f"{kind}: CPU time of batching off / on"] = paired_ratio(cpu[off], cpu[on])
        ratios[f"{kind}: speed-up of the threads (1 thread / default, batching off)"] = \
            paired_ratio(times[single], times[off])
        for label in (k for k in times if "onnxruntime" in k):
            for mode, short in ((on, "on"), (off, "off"), (single, "off 1 thread")):
                ratios[f"caffe {short} speed / onnxruntime {label.split('onnxruntime ')[1]} speed"] = \
                    paired_ratio(times[label], times[mode])
        del runs
        if rss:
            for mode, flag in ((on, True), (off, False)):
                rows[mode]["peak_rss_mib"] = peak_rss(name, batch, kind, flag, seed) / 2**20
            ratios[f"{kind}: peak RSS on / off"] = rows[on]["peak_rss_mib"] / rows[off]["peak_rss_mib"]
    return {"net": name, "batch": batch, "reps": reps, "threads": blas_threads(), "runs": rows, "ratios": ratios}


def run_batching(args) -> Dict[str, object]:
    """--compare conv-batching: every net at its batch sizes (BATCHING_CONFIGS, or --nets/--batch)."""
    nets = [get_preset(n.strip()).name for n in args.nets.split(",") if n.strip()] if args.nets else list(BATCHING_CONFIGS)
    onnx = True
    try:
        import onnxruntime  # noqa: F401
    except ImportError:
        onnx = False
        log.warning("onnxruntime is not installed: timing Caffe only")
    results = []
    for name in nets:
        batches = _batches(args.batch) if args.batch else BATCHING_CONFIGS.get(name, (16,))
        for batch in batches:
            kinds = _kinds(args.kinds) if args.kinds else DEFAULT_KINDS.get(name, ("forward", "train"))
            res = bench_batching(name, batch, args.reps, args.seed, kinds, onnx=onnx)
            results.append(res)
            print(f"{name} batch {batch}:")
            for label, row in res["runs"].items():
                gmacs = f"{row['gmac_per_s']:7.1f} GMAC/s" if row["gmac_per_s"] is not None else " " * 14
                rss = f"  peak RSS {row['peak_rss_mib']:7.0f} MiB" if "peak_rss_mib" in row else ""
                print(f"  {label:40s} {row['ms']:10.1f} ms {gmacs}{rss}")
            for label, value in res["ratios"].items():
                print(f"  {label}: {value:.3f}")
    return {"results": results, "onnxruntime": onnx}


def batching_tables(results: Sequence[Dict[str, object]]) -> str:
    """The Markdown tables of docs/benchmarks.md, from ``--compare conv-batching`` results (so every
    number there comes from the JSON file: tests/defense/test_bench.py compares them)."""
    def ms(r, label):
        row = r["runs"].get(label)
        return f"{row['ms']:.1f}" if row else "-"

    def ratio(r, label):
        value = r["ratios"].get(label)
        return f"{value:.2f}x" if value is not None else "-"

    def gmacs(r, label):
        row = r["runs"].get(label)
        return f"{row['gmac_per_s']:.1f}" if row and row.get("gmac_per_s") is not None else "-"

    def rss(r, label):
        row = r["runs"].get(label)
        return f"{row['peak_rss_mib']:.0f}" if row and "peak_rss_mib" in row else "-"
    on, off, ort1, ortn = ("forward caffe batching on", "forward caffe batching off", "forward onnxruntime 1 thread",
                           "forward onnxruntime default threads")
    lines = ["| net, batch | Caffe, batching on (ms) | off (ms) | speed-up of batching | onnxruntime, 1 thread (ms) "
             "| default threads (ms) | Caffe / onnxruntime speed, 1 thread | default threads | GMAC/s: Caffe on "
             "| onnxruntime 1 thread |", "|" + "---|" * 10]
    for r in results:
        lines.append(f"| {r['net']}, {r['batch']} | {ms(r, on)} | {ms(r, off)} "
                     f"| {ratio(r, 'forward: speed-up of batching (off / on)')} | {ms(r, ort1)} | {ms(r, ortn)} "
                     f"| {ratio(r, 'caffe on speed / onnxruntime 1 thread speed')} "
                     f"| {ratio(r, 'caffe on speed / onnxruntime default threads speed')} "
                     f"| {gmacs(r, on)} | {gmacs(r, ort1)} |")
    lines += ["", "| net, batch | FRU training step, on (ms) | off (ms) | speed-up | UAP pass, on (ms) | off (ms) "
              "| speed-up |", "|" + "---|" * 7]
    for r in results:
        lines.append(f"| {r['net']}, {r['batch']} | {ms(r, 'train caffe batching on')} "
                     f"| {ms(r, 'train caffe batching off')} | {ratio(r, 'train: speed-up of batching (off / on)')} "
                     f"| {ms(r, 'uap caffe batching on')} | {ms(r, 'uap caffe batching off')} "
                     f"| {ratio(r, 'uap: speed-up of batching (off / on)')} |")
    lines += ["", "| net, batch | peak RSS, forward on (MiB) | off (MiB) | on / off | training step on (MiB) "
              "| off (MiB) | on / off |", "|" + "---|" * 7]
    for r in results:
        lines.append(f"| {r['net']}, {r['batch']} | {rss(r, on)} | {rss(r, off)} "
                     f"| {ratio(r, 'forward: peak RSS on / off')} | {rss(r, 'train caffe batching on')} "
                     f"| {rss(r, 'train caffe batching off')} | {ratio(r, 'train: peak RSS on / off')} |")
    threaded = [r for r in results if "threads" in r]  # results written since cpu-conv-image-threads.patch
    if threaded:
        lines += ["", "| net, batch | Caffe threads | forward, 1 thread (ms) | default threads (ms) | speed-up "
                  "| training step, 1 thread (ms) | default threads (ms) | speed-up | UAP pass, 1 thread (ms) "
                  "| default threads (ms) | speed-up | Caffe / onnxruntime speed, 1 thread each "
                  "| default threads each |", "|" + "---|" * 13]
        for r in threaded:
            cells = [f"{r['net']}, {r['batch']}", str(r["threads"])]
            for kind in ("forward", "train", "uap"):
                cells += [ms(r, f"{kind} caffe batching off, 1 thread"), ms(r, f"{kind} caffe batching off"),
                          ratio(r, f"{kind}: speed-up of the threads (1 thread / default, batching off)")]
            cells += [ratio(r, "caffe off 1 thread speed / onnxruntime 1 thread speed"),
                      ratio(r, "caffe off speed / onnxruntime default threads speed")]
            lines.append("| " + " | ".join(cells) + " |")
    return "\n".join(lines) + "\n"


def _kinds(text: str) -> List[str]:
    kinds = [k.strip() for k in text.split(",") if k.strip()]
    if not kinds or any(k not in BATCHING_KINDS for k in kinds):
        raise ValueError(f"--kinds lists {', '.join(BATCHING_KINDS)}, got '{text}'")
    return kinds


def _batches(text: str) -> List[int]:
    batches = number_list(text, "--batch")
    if min(batches) < 1:
        raise ValueError(f"--batch must list positive integers, got '{text}'")
    return batches


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m defense.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--compare", default="layouts", choices=["layouts", "conv-batching"],
                    help="layouts: the deploy layouts side by side (default); conv-batching: Caffe's batched "
                         f"convolution on and off ({BATCHING_ENV}), onnxruntime, an FRU training step and a UAP pass")
    ap.add_argument("--nets", help="comma-separated presets (layouts: all five; conv-batching: "
                                   f"{', '.join(BATCHING_CONFIGS)})")
    ap.add_argument("--batch", help="comma-separated batch sizes (layouts: 1,16; conv-batching: "
                                    + "; ".join(f"{k} {','.join(map(str, v))}" for k, v in BATCHING_CONFIGS.items()) + ")")
    ap.add_argument("--reps", type=positive_int, default=5, help="timed repetitions per layout (5)")
    ap.add_argument("--seed", type=seed_int, default=0, help="seed of the random weights and input (0)")
    ap.add_argument("--kinds", help="conv-batching: comma-separated runs among forward, train, uap "
                                    "(default: all three on FashionNet, forward,train on the others)")
    ap.add_argument("--out", type=output_file,
                    help=f"JSON results (layouts: {DEFAULT_OUT}; conv-batching: {DEFAULT_BATCHING_OUT})")
    ap.add_argument("--layouts", help="comma-separated layouts to time (default all: baseline, [baseline_bn_folded,] "
                                      "the published fru_explicit or fru_folded, fru_fast); the published one always")
    ap.add_argument("--runtime", default="caffe",
                    help="comma-separated: caffe, onnxruntime (each layout exported to ONNX, timed beside Caffe's)")
    ap.add_argument("--gpu", type=int, default=None, help="GPU id (default: CPU)")
    return ap


def main(argv: Optional[Sequence[str]] = None) -> int:
    def _main(argv):
        args = parse_args(build_parser(), argv)
        if args.reps < 1:
            raise ValueError(f"--reps must be a positive integer, got {args.reps}")
        if args.compare == "conv-batching":
            return _main_batching(args)
        batches = _batches(args.batch or "1,16")
        nets = [get_preset(n.strip()).name for n in (args.nets or ",".join(DEFAULT_NETS)).split(",") if n.strip()]
        runtimes = [r.strip() for r in args.runtime.split(",") if r.strip()]
        if "caffe" not in runtimes or any(r not in RUNTIMES for r in runtimes):
            raise ValueError(f"--runtime lists {', '.join(RUNTIMES)} and includes caffe, got '{args.runtime}'")
        set_mode(args.gpu, args.seed)
        results = []
        for name in nets:
            for batch in batches:
                only = [k.strip() for k in args.layouts.split(",") if k.strip()] if args.layouts else None
                res = bench_one(name, batch, args.reps, args.seed, runtimes, only)
                results.append(res)
                if "skipped" in res:
                    print(f"{name} batch {batch}: skipped: {res['skipped']}")
                    continue
                pub = res["published_layout"]
                print(f"{name} batch {batch} (ms/image, ratio to {pub}; MAC ratio):")
                for layout, row in res["layouts"].items():
                    print(f"  {layout:20s} {row['ms_per_image']:9.2f} ms  x{row['time_ratio_vs_published']:.3f}"
                          f"  (min x{row['time_ratio_vs_published_min']:.3f};"
                          f"  MACs x{row['mac_ratio_vs_published']:.3f}, {row['macs_per_image'] / 1e9:.3f} G)"
                          + (f"  {row['speedup_vs_caffe']:.2f}x faster than Caffe" if "speedup_vs_caffe" in row else ""))
                if "fast_time_over_mac_ratio" in res:
                    print(f"  fast time ratio / MAC ratio: {res['fast_time_over_mac_ratio']:.3f}; MAC ratio of any layout"
                          f" without the permutation convs: >= {res['permutation_free_mac_ratio']:.3f}")
        out = args.out or DEFAULT_OUT
        write_text(out, json.dumps({"meta": _meta(args, runtimes), "results": results}, indent=2) + "\n")
        print(f"wrote {out}")
        return 0

    def _main_batching(args):
        _batches(args.batch or "1")  # checked before any work
        if args.kinds:
            _kinds(args.kinds)
        if args.gpu is not None:
            raise ValueError("--compare conv-batching times the CPU build; drop --gpu")
        set_mode(None, args.seed)
        res = run_batching(args)
        meta = _meta(args, ["caffe", ONNXRUNTIME] if res["onnxruntime"] else ["caffe"])
        meta.update(load_average=os.getloadavg(), uap_deepfool=UAP_DEEPFOOL,
                    statistic="median (and min) of interleaved repetitions in a rotating order; ratios: median "
                              "of per-repetition ratios; peak RSS: each Caffe run alone in a fresh process",
                    train_step_macs="3x the training net's forward MACs",
                    caffe_build=Path(caffe.__file__).parents[3].name)  # the build cache's key (caffe_build/setup)
        out = args.out or DEFAULT_BATCHING_OUT
        write_text(out, json.dumps({"meta": meta, "results": res["results"]}, indent=2) + "\n")
        print(batching_tables(res["results"]))
        print(f"wrote {out}")
        return 0
    return run_cli(_main, argv)


def _meta(args, runtimes: Sequence[str]) -> Dict[str, object]:
    return {"device": "cpu" if args.gpu is None else f"gpu{args.gpu}", "machine": platform.machine(),
            "processor": platform.processor(), "cpu_count": os.cpu_count(), "seed": args.seed,
            "reps": args.reps, "runtimes": list(runtimes), "statistic": "median (and min) of interleaved repetitions",
            "threads_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "OPENBLAS_THREAD_TIMEOUT",
                                                       "MKL_NUM_THREADS") if k in os.environ}}


if __name__ == "__main__":
    sys.exit(main())
