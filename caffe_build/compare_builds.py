"""Time two Caffe builds side by side: what a patch in patches/ buys.

    python caffe_build/compare_builds.py OLD_PYCAFFE NEW_PYCAFFE NET [NET ...] [--rounds 5] [--reps 8]

OLD_PYCAFFE and NEW_PYCAFFE are the ``src/python`` folders of two builds in the cache
(``~/.cache/fru-toolkit/caffe/<variant>-<key>/src/python``). A NET is a train prototxt (one
training step: forward and backward, seeded random inputs, Caffe TRAIN phase) or
``DEPLOY:WEIGHTS`` (the attacks' gradient net, ``attacks.classifier.load_gradient_net``, at
batch 50: forward and input gradient). Each round times ``--reps`` steps in one subprocess per
build, one OpenBLAS thread each, the builds' order alternating; it prints the median times, the
median of the per-round ratios new/old, and ``same_bytes``: whether every blob's data and diff
after the first step hashed the same in every run of both builds.
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
from pathlib import Path

from defense.bench import paired_ratio

ROOT = Path(__file__).resolve().parent.parent
CHILD = r'''
import hashlib, sys, time, numpy as np
sys.path.insert(0, sys.argv[3])
import caffe
caffe.set_mode_cpu()
caffe.set_random_seed(0)  # Dropout's masks: the same in every run, so the bytes compare
if ":" in sys.argv[1]:
    from attacks.classifier import load_gradient_net
    net = load_gradient_net(*sys.argv[1].split(":"))
    net.blobs["data"].reshape(50, *net.blobs["data"].data.shape[1:])
    net.reshape()
else:
    net = caffe.Net(sys.argv[1], caffe.TRAIN)
rng = np.random.default_rng(0)
for name in net.inputs:
    blob = net.blobs[name]
    blob.data[...] = rng.integers(0, 10, blob.data.shape) if name == "label" else rng.normal(0, 40, blob.data.shape)
for blobs in net.params.values():
    for p in blobs:
        if p.data.ndim > 1 and not p.data.any():  # zero-initialised layers (FD's 1x1 convs) get weights
            p.data[...] = rng.normal(0, 0.01, p.data.shape)
last = list(net.blobs)[-1]
def step():
    net.forward()
    net.blobs[last].diff[...] = 1.0
    net.backward()
step()
digest = hashlib.sha256()
for blob in list(net.blobs.values()) + [p for blobs in net.params.values() for p in blobs]:
    digest.update(blob.data.tobytes()); digest.update(blob.diff.tobytes())
times = []
for _ in range(int(sys.argv[2])):
    t = time.perf_counter(); step(); times.append(time.perf_counter() - t)
print(digest.hexdigest(), sorted(times)[len(times) // 2])
'''


def time_net(pycaffe: str, net: str, reps: int) -> tuple:
    """(SHA-256 of every blob's data and diff after the first step, median seconds of a step)."""
    env = dict(os.environ, OPENBLAS_NUM_THREADS="1", GLOG_minloglevel="2", PYTHONPATH=pycaffe)
    out = subprocess.run([sys.executable, "-c", CHILD, net, str(reps), str(ROOT)], env=env,
                         capture_output=True, text=True, check=True)
    digest, seconds = out.stdout.split()[-2:]
    return digest, float(seconds)


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("old")
    parser.add_argument("new")
    parser.add_argument("nets", nargs="+")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--reps", type=int, default=8, help="timed steps per subprocess (default 8)")
    args = parser.parse_args(argv)
    for net in args.nets:
        times, digests = {"old": [], "new": []}, {"old": set(), "new": set()}
        for r in range(args.rounds):
            for which in (("old", "new") if r % 2 == 0 else ("new", "old")):
                digest, seconds = time_net(getattr(args, which), net, args.reps)
                times[which].append(seconds)
                digests[which].add(digest)
        print(json.dumps({"net": net, "old_ms": round(1000 * statistics.median(times["old"]), 1),
                          "new_ms": round(1000 * statistics.median(times["new"]), 1),
                          "new_over_old": round(paired_ratio(times["new"], times["old"]), 3),
                          "ratios": [round(n / o, 3) for n, o in zip(times["new"], times["old"])],
                          "same_bytes": len(digests["old"] | digests["new"]) == 1}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
