"""GPU check for a machine with a GPU and no network (``make gpu-check``): the GPU tests, then a GPU
benchmark, into one JSON.

Benchmark sections (each timed after warm-up, wall clock, the output read back to the host):
- ``deploy``: images/s of the baseline and FRU deploy nets of the five presets at batch 1 and 64;
- ``train``: FRU training iterations/s (and images/s) on CaffeNet and ResNet152 at batch 64;
- ``uap``: one UAP pass over 1,000 images on CaffeNet;
- ``evaluation``: the evaluation pipeline on generated JPEGs (decode, the published preprocessing,
  baseline and FRU forward on clean and perturbed images), images/s.
Weights are random (well-scaled): the timings do not depend on them. Sections past the time budget
are recorded as skipped. Where no GPU answers, one line and exit code 2.
"""
from __future__ import annotations

import argparse
import json
import os
import platform
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence

ROOT = Path(__file__).resolve().parents[1]

import numpy as np  # noqa: E402

from defense.core import caffe, write_text  # noqa: E402
from defense.devices import cuda_device_count  # noqa: E402
from defense.presets import PUBLISHED_NETS, get_preset  # noqa: E402


def timed(step: Callable[[], object], min_reps: int = 3, min_seconds: float = 1.0, warmup: int = 2) -> float:
    """Seconds per call of ``step``: ``warmup`` calls, then at least ``min_reps`` and ``min_seconds``."""
    for _ in range(warmup):
        step()
    reps, start = 0, time.perf_counter()
    while reps < min_reps or time.perf_counter() - start < min_seconds:
        step()
        reps += 1
    return (time.perf_counter() - start) / reps


def bench_deploy(batches: Sequence[int] = (1, 64)) -> Dict[str, dict]:
    from defense.generate.random_nets import random_input, random_net

    out: Dict[str, dict] = {}
    for name in PUBLISHED_NETS:
        preset = get_preset(name)
        for layout, prototxt in (("baseline", preset.deploy), ("FRU", preset.deploy_fru)):
            for batch in batches:
                net = random_net(prototxt, batch)
                net.blobs["data"].data[...] = random_input(net)
                top = net.outputs[0]

                def step():
                    net.forward()
                    return net.blobs[top].data  # reading it back waits for the GPU

                seconds = timed(step)
                out[f"{name}/{layout}/batch{batch}"] = {"ms_per_batch": round(seconds * 1e3, 3),
                                                        "images_per_s": round(batch / seconds, 1)}
                print(f"  deploy {name:10s} {layout:8s} batch {batch:3d}: {batch / seconds:9.1f} img/s", flush=True)
    return out


def bench_train(names: Sequence[str] = ("CaffeNet", "ResNet152"), batch: int = 64, iterations: int = 10) -> Dict[str, dict]:
    from defense.generate.random_nets import generated_fru_dir

    from defense.data import ArraySource
    from defense.train import SolverWrapper, TrainOptions

    out: Dict[str, dict] = {}
    for name in names:
        preset = get_preset(name)
        with tempfile.TemporaryDirectory() as tmp:
            folder = generated_fru_dir(name, Path(tmp), batch=batch)
            rng = np.random.default_rng(0)
            size = preset.input_size
            source = ArraySource(rng.uniform(0, 255, (2 * batch, preset.channels, size, size)).astype(np.float32),
                                 rng.integers(0, preset.num_classes, 2 * batch))
            perts = [rng.uniform(-10, 10, (preset.channels, size, size)).astype(np.float32) for _ in range(4)]

            def run(n: int, tag: str) -> float:
                wrapper = SolverWrapper(folder / "solver.prototxt", Path(tmp) / tag, preset.mean_bgr,
                                        weights=folder / "init.caffemodel",
                                        options=TrainOptions(max_iter=n, progress=False, seed=0), prefix="fru")
                start = time.perf_counter()
                wrapper.run(source, perts)
                return time.perf_counter() - start

            short, long = run(2, "short"), run(2 + iterations, "long")  # the difference: `iterations` steps
            per_iter = (long - short) / iterations
            out[name] = {"batch": batch, "iterations_per_s": round(1 / per_iter, 2),
                         "images_per_s": round(batch / per_iter, 1)}
            print(f"  train  {name:10s} batch {batch}: {1 / per_iter:6.2f} it/s = {batch / per_iter:8.1f} img/s",
                  flush=True)
    return out


def bench_uap(images: int = 1000) -> dict:
    from defense.generate.random_nets import random_net

    from attacks import CaffeClassifier, make_attack

    preset = get_preset("CaffeNet")
    with tempfile.TemporaryDirectory() as tmp:
        weights = Path(tmp) / "w.caffemodel"
        random_net(preset.deploy, 1).save(str(weights))
        clf = CaffeClassifier.from_files(preset.deploy, weights, preset=preset.name, batch_size=50)
        rng = np.random.default_rng(0)
        x = rng.uniform(0, 255, (images,) + clf.input_shape).astype(np.float32)
        start = time.perf_counter()
        result = make_attack("uap", clf, xi=10.0, max_passes=1, batch_size=50, verbose=False).generate(x, rng)
        seconds = time.perf_counter() - start
    print(f"  uap    CaffeNet one pass over {images} images: {seconds:.1f} s", flush=True)
    return {"images": images, "seconds": round(seconds, 2), "images_per_s": round(images / seconds, 1),
            "fooling_rate": round(float(result.fooling_rate), 4)}


def bench_evaluation(images: int = 1000, workers: int = 0) -> dict:
    """``defense.evaluate`` on generated 500x375 JPEGs through ImageNetIndex, as Table 2 runs it."""
    from defense.generate.random_nets import random_net
    from PIL import Image

    from attacks import CaffeClassifier
    from defense.evaluate import Model, evaluate
    from defense.data.imagenet import ImageNetIndex, write_index

    preset = get_preset("CaffeNet")
    workers = workers or os.cpu_count() or 4
    with tempfile.TemporaryDirectory() as tmp:
        tmp = Path(tmp)
        rng = np.random.default_rng(0)
        yy, xx = np.mgrid[0:375, 0:500]
        items = []
        for i in range(images):  # smooth colour gradients: JPEG sizes like photographs', not like noise
            a, b, c = rng.uniform(0, 1, 3)
            img = np.stack([(a * xx + b * yy) % 256, (b * xx + c * yy) % 256, (c * xx + a * yy) % 256], -1)
            Image.fromarray(img.astype(np.uint8)).save(tmp / f"{i:05d}.JPEG", quality=90)
            items.append((f"{i:05d}.JPEG", int(rng.integers(0, 1000))))
        index = write_index(tmp / "index.json", items, tmp, {"split": "val"})
        models = []
        for layout, prototxt in (("baseline", preset.deploy), ("FRU", preset.deploy_fru)):
            weights = tmp / f"{layout}.caffemodel"
            random_net(prototxt, 1).save(str(weights))
            models.append(Model(layout, CaffeClassifier.from_files(prototxt, weights, preset=preset.name)))
        source = ImageNetIndex(index, preset, workers=workers)
        pert = [rng.uniform(-10, 10, source.image_shape).astype(np.float32)]
        start = time.perf_counter()
        evaluate(models, source, pert, batch_size=preset.eval_batch, baseline_top1=1.0, progress=False)
        seconds = time.perf_counter() - start
    print(f"  eval   CaffeNet {images} JPEGs, 2 models x clean/perturbed: {images / seconds:.1f} img/s", flush=True)
    return {"images": images, "decode_workers": workers, "seconds": round(seconds, 2),
            "images_per_s": round(images / seconds, 1)}


def run_tests(report_xml: Path) -> dict:
    """The GPU tests (tests/test_gpu.py, and the GPU tests of test_build.py and of test_conv_batching.py:
    the CUDA path of batched convolution) in a child process."""
    cmd = [sys.executable, "-m", "pytest", "-q", "-m", "gpu", "tests/test_gpu.py", "tests/test_build.py",
           "tests/test_conv_batching.py",
           f"--junitxml={report_xml}", "-p", "no:cacheprovider"]
    start = time.perf_counter()
    res = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True)
    if not report_xml.is_file():  # pytest itself failed (collection, a crash): no report to count
        print(res.stdout[-3000:], res.stderr[-3000:], flush=True)
        return {"exit_code": res.returncode, "seconds": round(time.perf_counter() - start, 1), "failed": ["pytest"],
                "tests": 0, "failures": 0, "errors": 1, "skipped": 0, "passed": 0}
    suite = ET.parse(report_xml).getroot()
    suite = suite if suite.tag == "testsuite" else suite.find("testsuite")
    counts = {k: int(suite.get(k, 0)) for k in ("tests", "failures", "errors", "skipped")}
    counts["passed"] = counts["tests"] - counts["failures"] - counts["errors"] - counts["skipped"]
    failed = [case.get("name") for case in suite.iter("testcase")
              if case.find("failure") is not None or case.find("error") is not None]
    counts["skipped_tests"] = [f"{case.get('name')}: {case.find('skipped').get('message', '')}"
                               for case in suite.iter("testcase") if case.find("skipped") is not None]
    print(res.stdout[-3000:], flush=True)
    return {"exit_code": res.returncode, "seconds": round(time.perf_counter() - start, 1), "failed": failed, **counts}


def gpu_name() -> Optional[str]:
    try:
        res = subprocess.run(["nvidia-smi", "--query-gpu=name,driver_version", "--format=csv,noheader"],
                             capture_output=True, text=True, timeout=30)
        return res.stdout.strip() or None
    except (OSError, subprocess.TimeoutExpired):
        return None


SECTIONS: Dict[str, Callable[[], dict]] = {"deploy": bench_deploy, "train": bench_train, "uap": bench_uap,
                                           "evaluation": bench_evaluation}


def use_gpu(gpu: int) -> None:
    caffe.set_device(gpu)
    caffe.set_mode_gpu()


MACHINE_SKIPS = ("NCCL training needs two GPUs",)
"""Skip reasons that describe the machine (one GPU), not a broken check."""


def problems(report: dict) -> List[str]:
    """Why a run on a machine with a GPU is not a passing check: a GPU test failed, errored or was
    skipped (a skip there means the check did not run what it claims), no GPU test ran, or a
    benchmark section raised. Empty when the check passed."""
    found = []
    tests = report.get("tests")
    if tests is not None:
        if tests.get("failures") or tests.get("errors"):
            found.append(f"GPU tests failed: {', '.join(tests.get('failed') or ['?'])}")
        listed = tests.get("skipped_tests", ["?"] * int(tests.get("skipped", 0)))
        skipped = [s for s in listed if not any(reason in s for reason in MACHINE_SKIPS)]
        if skipped:
            found.append(f"{len(skipped)} GPU test(s) skipped on a machine with a GPU: {'; '.join(skipped)}")
        if not tests.get("tests"):
            found.append("no GPU test ran")
    for name, section in report.get("bench", {}).items():
        if "error" in section:
            found.append(f"benchmark '{name}' raised {section['error']}")
    return found


def caffe_build_name() -> str:
    """The Caffe build's cache name (its key), never a path: reports are committed."""
    venv_record = Path(sys.prefix) / ".caffe_build"
    if venv_record.exists():
        return Path(venv_record.read_text().strip()).name
    bundle = os.environ.get("FRU_BUNDLE")  # set by gpu-env.sh; gpu-bundle.sh wrote BUILD there
    if bundle and (Path(bundle) / "BUILD").exists():
        return (Path(bundle) / "BUILD").read_text().strip()
    return "?"


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(prog="caffe_build/gpu_check.py", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--out", type=Path, default=ROOT / "gpu-check.json", help="report (gpu-check.json)")
    ap.add_argument("--budget", type=float, default=450, help="seconds after which sections are skipped (450)")
    ap.add_argument("--skip-tests", action="store_true", help="benchmark only")
    ap.add_argument("--gpu", type=int, default=0, help="device (0)")
    args = ap.parse_args(argv)
    count, reason = cuda_device_count()
    if not count:
        print(f"gpu-check: no GPU ({reason}); nothing was run", file=sys.stderr)
        return 2
    started = time.perf_counter()
    report: dict = {"gpu": gpu_name(), "devices": count, "machine": platform.machine(), "cpus": os.cpu_count(),
                    "python": platform.python_version(), "numpy": np.__version__,
                    "caffe_build": caffe_build_name(),
                    "date": time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime())}
    if not args.skip_tests:
        with tempfile.TemporaryDirectory() as tmp:
            report["tests"] = run_tests(Path(tmp) / "junit.xml")
    use_gpu(args.gpu)
    report["bench"] = {}
    for name, fn in SECTIONS.items():
        if time.perf_counter() - started > args.budget:
            report["bench"][name] = {"skipped": f"time budget of {args.budget:.0f} s spent"}
            continue
        try:
            report["bench"][name] = fn()
        except Exception as exc:  # one section failing must not lose the others' numbers
            report["bench"][name] = {"error": f"{type(exc).__name__}: {exc}"}
            print(f"  {name}: {type(exc).__name__}: {exc}", flush=True)
    report["seconds"] = round(time.perf_counter() - started, 1)
    write_text(args.out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {args.out} ({report['seconds']} s)")
    found = problems(report)
    for problem in found:
        print(f"gpu-check: {problem}", file=sys.stderr)
    return 1 if found else 0


if __name__ == "__main__":
    sys.exit(main())
