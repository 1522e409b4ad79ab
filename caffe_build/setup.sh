#!/usr/bin/env bash
# One-command set-up of the toolkit: Debian packages, BVLC Caffe + pycaffe built from
# source into a cache outside the checkout, and .venv in which `import caffe` works.
#
# Idempotent: every step checks whether its work is already done. The Caffe build is
# keyed by source, patches, build options and Python, so a second run reuses it.
#
# Environment (all optional):
#   CAFFE_SRC          BVLC Caffe source directory or tarball to build instead of Debian's
#   CAFFE_CUDA         off (default): CPU-only build behind .venv
#                      pip: CUDA 13.0 toolchain from PyPI (cuda-13.0-requirements.txt, hash-checked,
#                           installed into the cache), NCCL on; behind .venv-cuda (make setup-cuda)
#                      on: the nvcc on PATH (CUDA 11.8 or newer); behind .venv-cuda
#                      auto: on when nvcc is on PATH, else off
#   CAFFE_CUDA_ARCH    CUDA architectures (default "75 80 86 89 90"); PTX for the newest of them
#   FRU_CACHE          cache root (default ~/.cache/fru-toolkit)
#   PYTHON             interpreter for the venv (default python3)
#   SKIP_APT=1         do not install Debian packages (they must be present)
set -Eeuo pipefail  # -E: the ERR trap also fires inside functions (quiet)

ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
RECIPE="$ROOT/caffe_build"
CACHE="${FRU_CACHE:-$HOME/.cache/fru-toolkit}"
CUDA_MODE="${CAFFE_CUDA:-off}"
if [ "$CUDA_MODE" = auto ]; then
  if command -v nvcc >/dev/null; then CUDA_MODE=on; else CUDA_MODE=off; fi
fi
case "$CUDA_MODE" in
  off) VENV="$ROOT/.venv" ;;
  on|pip) VENV="$ROOT/.venv-cuda" ;;  # the CPU .venv stays as it is
  *) echo "[setup] CAFFE_CUDA=$CUDA_MODE: expected off, on, pip or auto" >&2; exit 2 ;;
esac
PYTHON="${PYTHON:-python3}"
JOBS="$(nproc 2>/dev/null || echo 2)"
LOGS="$CACHE/logs"
mkdir -p "$CACHE/downloads" "$CACHE/caffe" "$LOGS"

DEBIAN_VERSION="1.0.0+git20180821.99bd997"
ORIG="caffe_${DEBIAN_VERSION}.orig.tar.gz"
ORIG_SHA256="e0eb3f06794f7402c77b7dec8e8480273ee1a1bb192e9122b621a69d4147ad0c"
DEBTAR="caffe_${DEBIAN_VERSION}-8.debian.tar.xz"
DEBTAR_SHA256="07cf073227494a6b07234e40cb5df91db566616593eef9baafdc4d06ad159f21"
POOL="${DEBIAN_POOL:-http://deb.debian.org/debian/pool/main/c/caffe}"
UPSTREAM_COMMIT="99bd99795dcdf0b1d3086a8d67ab1782a8a08383"

APT_PACKAGES="build-essential cmake curl ca-certificates patch python3-dev python3-venv
  libboost-system-dev libboost-thread-dev libboost-filesystem-dev libboost-python-dev
  libprotobuf-dev protobuf-compiler libgoogle-glog-dev libgflags-dev libhdf5-dev
  libopenblas-dev dataset-fashion-mnist"

# ---- helpers -------------------------------------------------------------------------
STEP=""
LOG=""
say() { printf '[setup] %s\n' "$*"; }
fail() {
  printf '[setup] FAILED at step "%s"%s\n' "$STEP" "${LOG:+; log: $LOG}" >&2
  if [ -n "$LOG" ] && [ -f "$LOG" ]; then tail -n 25 "$LOG" | sed 's/^/    /' >&2; fi
  exit 1
}
trap fail ERR
begin() { STEP="$1"; LOG="$LOGS/$2.log"; : >"$LOG"; say "$1"; }
quiet() { "$@" >>"$LOG" 2>&1; }
sha256_of() { sha256sum "$1" | cut -d' ' -f1; }

say "variant: CAFFE_CUDA=$CUDA_MODE, environment $(basename "$VENV")"

# ---- 1. Debian packages --------------------------------------------------------------
begin "Debian packages" apt
# shellcheck disable=SC2086
missing=$(dpkg-query -W -f='${Package} ${db:Status-Status}\n' $APT_PACKAGES 2>/dev/null \
  | awk '$2=="installed"{print $1}' | sort | comm -13 - <(printf '%s\n' $APT_PACKAGES | sort) || true)
if [ -z "$missing" ]; then
  say "  all present"
elif [ "${SKIP_APT:-0}" = 1 ]; then
  say "  missing and SKIP_APT=1: $(echo $missing)"; false
elif [ "$(id -u)" != 0 ]; then
  say "  missing: $(echo $missing); run 'sudo make setup' or install them yourself"; false
else
  say "  installing: $(echo $missing)"
  quiet apt-get update
  # shellcheck disable=SC2086
  DEBIAN_FRONTEND=noninteractive quiet apt-get install -y --no-install-recommends $missing
fi

# ---- 2. virtual environment ----------------------------------------------------------
begin "Python virtual environment ($(basename "$VENV"))" venv
[ -x "$VENV/bin/python" ] || quiet "$PYTHON" -m venv "$VENV"
REQ_STAMP="$VENV/.requirements.sha256"
if [ "$(cat "$REQ_STAMP" 2>/dev/null)" != "$(sha256_of "$ROOT/requirements.txt")" ]; then
  say "  installing pinned requirements"
  quiet "$VENV/bin/python" -m pip install -q --upgrade pip
  quiet "$VENV/bin/python" -m pip install -q -r "$ROOT/requirements.txt"
  sha256_of "$ROOT/requirements.txt" >"$REQ_STAMP"
else
  say "  requirements up to date"
fi
PY_TAG=$("$VENV/bin/python" -c 'import sys, numpy; print("%d.%d-np%s" % (sys.version_info[:2] + (numpy.__version__.split(".")[0],)))')
PY_VERSION=$("$VENV/bin/python" -c 'import sys; print("%d.%d" % sys.version_info[:2])')

# ---- 3. Caffe source -----------------------------------------------------------------
begin "Caffe source" source
fetch() {  # fetch NAME SHA256: into the download cache, verified
  local dest="$CACHE/downloads/$1"
  if [ ! -f "$dest" ] || [ "$(sha256_of "$dest")" != "$2" ]; then
    say "  downloading $1"
    quiet curl -fsSL --retry 3 -o "$dest.part" "$POOL/$1" || return 1
    if [ "$(sha256_of "$dest.part")" != "$2" ]; then
      rm -f "$dest.part"; echo "SHA-256 mismatch for $1" >>"$LOG"; return 1
    fi
    mv "$dest.part" "$dest"
  fi
}
if [ -n "${CAFFE_SRC:-}" ]; then
  [ -e "$CAFFE_SRC" ] || { echo "CAFFE_SRC=$CAFFE_SRC does not exist" >>"$LOG"; false; }
  if [ -d "$CAFFE_SRC" ]; then
    SRC_ID="dir-$(cd "$CAFFE_SRC" && find . -type f ! -path './.git/*' ! -path './build/*' -print0 \
      | sort -z | xargs -0 sha256sum | sha256sum | cut -c1-16)"
  else
    SRC_ID="tar-$(sha256_of "$CAFFE_SRC" | cut -c1-16)"
  fi
  DEBIAN_PATCHES=0
  say "  using CAFFE_SRC=$CAFFE_SRC"
elif fetch "$ORIG" "$ORIG_SHA256" && fetch "$DEBTAR" "$DEBTAR_SHA256"; then
  SRC_ID="debian-${DEBIAN_VERSION}-8"
  DEBIAN_PATCHES=1
  say "  Debian source package caffe ${DEBIAN_VERSION}-8 (SHA-256 verified)"
else
  say "  Debian's archive is out of reach; trying BVLC/caffe at $UPSTREAM_COMMIT from GitHub"
  up="$CACHE/downloads/caffe-$UPSTREAM_COMMIT.tar.gz"
  [ -f "$up" ] || { quiet curl -fsSL --retry 3 -o "$up.part" \
    "https://github.com/BVLC/caffe/archive/$UPSTREAM_COMMIT.tar.gz" && mv "$up.part" "$up"; }
  CAFFE_SRC="$up"; SRC_ID="github-$UPSTREAM_COMMIT"; DEBIAN_PATCHES=0
fi

# ---- 4. CUDA toolchain from PyPI (CAFFE_CUDA=pip) ---------------------------------------
if [ "$CUDA_MODE" = pip ]; then
  begin "CUDA 13.0 toolchain from PyPI" cuda
  CUDA_REQ="$RECIPE/cuda-13.0-requirements.txt"
  CUDA_PIP="$CACHE/cuda/pip-$(sha256_of "$CUDA_REQ" | cut -c1-16)"
  CUDA_ROOT="$CUDA_PIP/root"
  if [ -f "$CUDA_PIP/.complete" ]; then
    say "  cached at $CUDA_PIP"
  else
    rm -rf "$CUDA_PIP"
    say "  installing the pinned wheels (hash-checked, about 1.3 GB) into $CUDA_PIP"
    quiet "$VENV/bin/python" -m pip install -q --no-deps --only-binary=:all: --require-hashes \
      --target "$CUDA_PIP/pkgs" -r "$CUDA_REQ"
    # A CUDA root as FindCUDA expects it: the wheels' bin/include/nvvm, and lib64/ with the
    # shared libraries under their versioned and unversioned names (static cudart left out).
    cu="$CUDA_PIP/pkgs/nvidia/cu13"
    mkdir -p "$CUDA_ROOT/lib64"
    for d in bin include nvvm; do ln -s "$cu/$d" "$CUDA_ROOT/$d"; done
    for lib in "$cu"/lib/lib*.so.* "$CUDA_PIP/pkgs/nvidia/nccl/lib"/libnccl.so.*; do
      ln -s "$lib" "$CUDA_ROOT/lib64/"
      base="$(basename "$lib")"; ln -sf "$base" "$CUDA_ROOT/lib64/${base%%.so.*}.so"
    done
    touch "$CUDA_PIP/.complete"
  fi
  export PATH="$CUDA_ROOT/bin:$PATH"
fi

# ---- 5. build options and cache key --------------------------------------------------
CMAKE_OPTS=(-DCMAKE_BUILD_TYPE=Release -DBUILD_python=ON -DBUILD_python_layer=ON
  -DBUILD_docs=OFF -DBUILD_matlab=OFF -DUSE_OPENCV=OFF -DUSE_LMDB=OFF -DUSE_LEVELDB=OFF
  -DBLAS=Open -Dpython_version="$PY_VERSION")
if [ "$CUDA_MODE" != off ]; then
  command -v nvcc >/dev/null || { begin "CUDA toolkit" cuda; echo "CAFFE_CUDA=$CUDA_MODE but nvcc is not on PATH" >>"$LOG"; false; }
  ARCHS="${CAFFE_CUDA_ARCH:-75 80 86 89 90}"
  NEWEST=$(printf '%s\n' $ARCHS | sort -n | tail -n 1)
  CMAKE_OPTS+=(-DCPU_ONLY=OFF -DUSE_CUDNN=OFF -DCUDA_ARCH_NAME=Manual -DCUDA_ARCH_BIN="$ARCHS"
    -DCUDA_ARCH_PTX="$NEWEST" -DCUDA_USE_STATIC_CUDA_RUNTIME=OFF)
  if [ "$CUDA_MODE" = pip ]; then
    # RPATH to the cache's CUDA libraries: nothing needs LD_LIBRARY_PATH
    CMAKE_OPTS+=(-DCUDA_TOOLKIT_ROOT_DIR="$CUDA_ROOT" -DUSE_NCCL=ON
      -DNCCL_INCLUDE_DIR="$CUDA_PIP/pkgs/nvidia/nccl/include" -DNCCL_LIBRARIES="$CUDA_ROOT/lib64/libnccl.so"
      -DCMAKE_BUILD_RPATH="$CUDA_ROOT/lib64")
  else
    NCCL=OFF
    if ls /usr/include/nccl.h /usr/local/cuda/include/nccl.h >/dev/null 2>&1; then NCCL=ON; fi
    CMAKE_OPTS+=(-DUSE_NCCL="$NCCL")
  fi
  VARIANT="cuda$(nvcc --version | sed -n 's/.*release \([0-9.]*\).*/\1/p')"
else
  CMAKE_OPTS+=(-DCPU_ONLY=ON)
  VARIANT=cpu
fi
KEY=$( { echo "$SRC_ID"; echo "$DEBIAN_PATCHES"; echo "${CMAKE_OPTS[*]}"; echo "$PY_TAG";
         for p in $(cat "$RECIPE/patches/series"); do cat "$RECIPE/patches/$p"; done; } \
       | sha256sum | cut -c1-16)
BUILD_ROOT="$CACHE/caffe/$VARIANT-py$PY_TAG-$KEY"
PYCAFFE="$BUILD_ROOT/src/python"

# ---- 6. build ------------------------------------------------------------------------
begin "Caffe build ($VARIANT, key $KEY)" build
if [ -f "$BUILD_ROOT/.complete" ]; then
  say "  cached at $BUILD_ROOT"
else
  rm -rf "$BUILD_ROOT"; mkdir -p "$BUILD_ROOT/src" "$BUILD_ROOT/build"
  say "  unpacking and patching into $BUILD_ROOT"
  if [ "$DEBIAN_PATCHES" = 1 ]; then
    quiet tar xzf "$CACHE/downloads/$ORIG" -C "$BUILD_ROOT/src"
    quiet tar xJf "$CACHE/downloads/$DEBTAR" -C "$BUILD_ROOT"
    for p in $(grep -v '^#' "$BUILD_ROOT/debian/patches/series"); do
      echo "== debian/$p" >>"$LOG"
      quiet patch -d "$BUILD_ROOT/src" -p1 --forward -i "$BUILD_ROOT/debian/patches/$p"
    done
  elif [ -d "$CAFFE_SRC" ]; then
    quiet cp -a "$CAFFE_SRC/." "$BUILD_ROOT/src/"
  else
    quiet tar xzf "$CAFFE_SRC" -C "$BUILD_ROOT/src" --strip-components="$(tar tzf "$CAFFE_SRC" \
      | head -1 | grep -q '^\./\?CMakeLists.txt$' && echo 0 || echo 1)"
  fi
  for p in $(cat "$RECIPE/patches/series"); do
    echo "== project/$p" >>"$LOG"
    quiet patch -d "$BUILD_ROOT/src" -p1 --forward -i "$RECIPE/patches/$p"
  done
  say "  configuring (log: $LOGS/build.log)"
  quiet cmake -S "$BUILD_ROOT/src" -B "$BUILD_ROOT/build" "${CMAKE_OPTS[@]}" \
    -DPYTHON_EXECUTABLE="$VENV/bin/python"
  say "  compiling libcaffe and pycaffe with $JOBS jobs (a few minutes on 2 cores)"
  start=$(date +%s)
  quiet make -C "$BUILD_ROOT/build" -j"$JOBS" caffe pycaffe
  say "  built in $(( $(date +%s) - start )) s"
  touch "$BUILD_ROOT/.complete"
fi

# ---- 6b. Caffe's own gtest suites -------------------------------------------------------
# The suites of caffe_build/gtest-suites.txt (the layers the patches touch), built by Caffe's own
# CMake target against the library above and cached beside it, keyed by the list; `make test`
# runs them (tests/test_caffe_gtest.py).
begin "Caffe gtest suites" gtest
SUITES=$(sed 's/#.*//' "$RECIPE/gtest-suites.txt" | tr -s ' \t' '\n' | grep . | paste -sd, -)
GTEST_DIR="$BUILD_ROOT/gtest-$(printf '%s' "$SUITES" | sha256sum | cut -c1-16)"
if [ -f "$GTEST_DIR/.complete" ]; then
  say "  cached at $GTEST_DIR"
else
  say "  building ${SUITES//,/, } (log: $LOG)"
  exec 9>"$BUILD_ROOT/.gtest.lock"
  flock 9  # one reconfiguration of the shared build folder at a time
  if [ ! -f "$GTEST_DIR/.complete" ]; then
    quiet cmake -DBUILD_only_tests="$SUITES" "$BUILD_ROOT/build"
    quiet make -C "$BUILD_ROOT/build" -j"$JOBS" test.testbin
    rm -rf "$GTEST_DIR"; mkdir -p "$GTEST_DIR"
    cp "$BUILD_ROOT/build/test/test.testbin" "$GTEST_DIR/"
    echo "${SUITES//,/ }" >"$GTEST_DIR/suites"
    touch "$GTEST_DIR/.complete"
  fi
  exec 9>&-
fi

# ---- 7. toolkit in the venv -----------------------------------------------------------
begin "toolkit install into $(basename "$VENV")" install
SITE=$("$VENV/bin/python" -c 'import sysconfig; print(sysconfig.get_paths()["purelib"])')
echo "$PYCAFFE" >"$SITE/pycaffe.pth"
PROJ_STAMP="$VENV/.project.sha256"
if [ "$(cat "$PROJ_STAMP" 2>/dev/null)" != "$(sha256_of "$ROOT/pyproject.toml")" ]; then
  quiet "$VENV/bin/python" -m pip install -q --no-deps --no-build-isolation -e "$ROOT"
  sha256_of "$ROOT/pyproject.toml" >"$PROJ_STAMP"
fi
echo "$BUILD_ROOT" >"$VENV/.caffe_build"
echo "$GTEST_DIR" >"$VENV/.caffe_gtest"

# ---- 8. check ------------------------------------------------------------------------
begin "check: import caffe" check
quiet env GLOG_minloglevel=2 "$VENV/bin/python" -c \
  'import caffe; print("caffe", caffe.__version__, "from", caffe.__file__)'
say "ready: $(tail -n 1 "$LOG")"
say "  variant $VARIANT; build cache $BUILD_ROOT"
trap - ERR
