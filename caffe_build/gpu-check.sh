#!/usr/bin/env bash
# make gpu-check: the GPU tests and the GPU benchmark into gpu-check.json (caffe_build/gpu_check.py).
# Uses .venv-cuda where it works; otherwise the .gpu-bundle/ made by `make gpu-bundle` (a machine
# without Debian libraries or network). Without a GPU: one line, exit code 2.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
if [ -x .venv-cuda/bin/python ] && .venv-cuda/bin/python -c 'import caffe' 2>/dev/null; then
  PY=.venv-cuda/bin/python
elif [ -d .gpu-bundle ]; then
  # shellcheck source=gpu-env.sh
  source caffe_build/gpu-env.sh
  PY="$FRU_BUNDLE_PYTHON"
else
  echo "gpu-check: no CUDA build here: run 'make setup-cuda' (or carry a .gpu-bundle from 'make gpu-bundle')" >&2
  exit 2
fi
exec timeout 480 "$PY" caffe_build/gpu_check.py "$@"
