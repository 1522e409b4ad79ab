#!/usr/bin/env bash
# Pack into .gpu-bundle/ what `make gpu-check` needs on a GPU machine that has neither this
# project's Debian libraries nor network (the lent H200: its own Python 3.12 with numpy 2, CUDA 13
# libraries in its PyTorch wheels, dpkg). Run after `CAFFE_CUDA_ARCH=90 make setup-cuda`:
#   BUILD      the build's cache name (gpu-check reports it)
#   lib/       libcaffe.so of .venv-cuda's build (only the architectures it was built for)
#   python/    pycaffe (caffe/ with _caffe.so)
#   debs/      Debian 12 .deb files of the runtime libraries libcaffe and pycaffe load, and of
#              Python 3.11 (interpreter, standard library, libpython): unpacked there with dpkg -x
#   wheels/    numpy 1.26 (its tests left out), protobuf, Pillow, tqdm, six, pytest for CPython 3.11
#              (unzipped there)
# CUDA's own libraries (cudart, cuBLAS, cuRAND, NCCL) do not travel: caffe_build/gpu-env.sh finds
# the CUDA 13 ones on the machine. The bundle stays under 64 MiB with the working tree.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$ROOT/.gpu-bundle"
VENV="$ROOT/.venv-cuda"
say() { printf '[gpu-bundle] %s\n' "$*"; }
[ -f "$VENV/.caffe_build" ] || { say "no CUDA build: run 'make setup-cuda' first"; exit 2; }
BUILD="$(cat "$VENV/.caffe_build")"
rm -rf "$OUT" && mkdir -p "$OUT"/{lib,python,debs,wheels}
basename "$BUILD" >"$OUT/BUILD"  # the build's cache name, which gpu-check reports

# Caffe itself, symlinks resolved
cp -L "$BUILD/build/lib/libcaffe.so.1.0.0" "$OUT/lib/"
cp -rL "$BUILD/src/python/caffe" "$OUT/python/"
rm -rf "$OUT/python/caffe/test" "$OUT/python/caffe/_caffe.cpp"
find "$OUT/python" -name __pycache__ -prune -exec rm -rf {} +

# Debian packages of every library they load, except the C/C++ runtime every Linux has, plus Python 3.11
owner() {  # the package of a library; dpkg records /lib/... or /usr/lib/... (merged /usr)
  local real; real=$(readlink -f "$1")
  { dpkg -S "$real" || dpkg -S "${real#/usr}"; } 2>/dev/null | head -n 1 | cut -d: -f1
}
pkgs="" missing=""
for lib in $(ldd "$BUILD/build/lib/libcaffe.so.1.0.0" "$BUILD/src/python/caffe/_caffe.so" | awk '/=> \//{print $3}' | sort -u); do
  case "$lib" in "$BUILD"/*|*/cuda/*) continue ;; esac  # Caffe itself travels as is; CUDA's are found there
  pkg=$(owner "$lib")
  if [ -n "$pkg" ]; then pkgs="$pkgs $pkg"; else missing="$missing $lib"; fi
done
[ -z "$missing" ] || { say "no Debian package owns:$missing"; exit 1; }
pkgs=$(printf '%s\n' $pkgs | grep -v -x -e libc6 -e libgcc-s1 -e libstdc++6)
pkgs="$pkgs python3.11-minimal libpython3.11-minimal libpython3.11-stdlib libpython3.11 libffi8 libssl3
  libbz2-1.0 liblzma5 libuuid1 libexpat1 zlib1g libcrypt1 libtinfo6 libsqlite3-0"
# the archive's current versions (security updates included); same sonames as those installed
(cd "$OUT/debs" && apt-get download -q $(printf '%s\n' $pkgs | sort -u) >/dev/null)
say "$(ls "$OUT/debs" | wc -l) Debian packages"

# Python packages for CPython 3.11, the versions of requirements.txt
pins=$(grep -E '^(numpy|protobuf|Pillow|tqdm|six|pytest)==' "$ROOT/requirements.txt")
more=$("$VENV/bin/python" -m pip freeze | grep -E '^(pluggy|iniconfig|packaging)==')
"$VENV/bin/python" -m pip download -q --no-deps --only-binary=:all: --python-version 3.11 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d "$OUT/wheels" $pins $more
# numpy's own tests and test-only module are 2 MB of the 64 MiB that may travel
"$VENV/bin/python" - "$OUT"/wheels/numpy-*.whl <<'EOF'
import os, sys, zipfile
src = sys.argv[1]
with zipfile.ZipFile(src) as old, zipfile.ZipFile(src + ".new", "w", zipfile.ZIP_DEFLATED, compresslevel=9) as new:
    for item in old.infolist():
        if "/tests/" not in item.filename and not item.filename.endswith(".pyi") and "/_simd." not in item.filename:
            new.writestr(item, old.read(item.filename))
os.replace(src + ".new", src)
EOF
say "wrote $OUT: $(du -sh "$OUT" | cut -f1) (carry it with the working tree; run 'make gpu-check' there)"
