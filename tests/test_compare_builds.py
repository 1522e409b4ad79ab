"""caffe_build/compare_builds.py: one build against itself gives the same bytes and a ratio near
1 (what the tool reports when a patch must not change a bit)."""
from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import caffe

ROOT = Path(__file__).resolve().parent.parent


def test_a_build_against_itself_has_the_same_bytes():
    pycaffe = str(Path(caffe.__file__).resolve().parent.parent)
    net = f"{ROOT}/prototxt/FashionNet/deploy_fashionnet.prototxt:{ROOT}/weights/FashionNet/fashionnet.caffemodel"
    out = subprocess.run([sys.executable, str(ROOT / "caffe_build" / "compare_builds.py"), pycaffe, pycaffe, net,
                          "--rounds", "2", "--reps", "2"], capture_output=True, text=True, check=True,
                         cwd=ROOT, env={"PYTHONPATH": str(ROOT), "PATH": "/usr/bin:/bin"})
    row = json.loads(out.stdout.strip().splitlines()[-1])
    assert row["net"] == net and row["same_bytes"] is True
    assert len(row["ratios"]) == 2 and row["old_ms"] > 0 and row["new_ms"] > 0
