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

from .core import (caffe, caffe_pb2, load_net, number_list, param_shapes, parse_args, positive_int, run_cli, seed_int,
                   set_mode, set_net_blobs, write_text)
from .generate.export import blob_channels, fast_layout, find_fru_blocks, fold_batchnorm
from .generate.fru import insert_frus
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


def build_parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(prog="python -m defense.bench", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nets", default=",".join(DEFAULT_NETS), help="comma-separated presets (all five)")
    ap.add_argument("--batch", default="1,16", help="comma-separated batch sizes (1,16)")
    ap.add_argument("--reps", type=positive_int, default=5, help="timed repetitions per layout (5)")
    ap.add_argument("--seed", type=seed_int, default=0, help="seed of the random weights and input (0)")
    ap.add_argument("--out", type=output_file, default=DEFAULT_OUT, help=f"JSON results ({DEFAULT_OUT})")
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
        batches = number_list(args.batch, "--batch")
        if min(batches) < 1:
            raise ValueError(f"--batch must list positive integers, got '{args.batch}'")
        nets = [get_preset(n.strip()).name for n in args.nets.split(",") if n.strip()]
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
        meta = {"device": "cpu" if args.gpu is None else f"gpu{args.gpu}", "machine": platform.machine(),
                "processor": platform.processor(), "cpu_count": os.cpu_count(), "seed": args.seed,
                "reps": args.reps, "runtimes": runtimes, "statistic": "median (and min) of interleaved repetitions",
                "threads_env": {k: os.environ[k] for k in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS",
                                                           "MKL_NUM_THREADS") if k in os.environ}}
        write_text(args.out, json.dumps({"meta": meta, "results": results}, indent=2) + "\n")
        print(f"wrote {args.out}")
        return 0
    return run_cli(_main, argv)


if __name__ == "__main__":
    sys.exit(main())
