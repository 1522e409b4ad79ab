# Sourced by gpu-check.sh: unpack .gpu-bundle/ (see gpu-bundle.sh) under /tmp and set the
# environment of its Python 3.11, with CUDA 13's libraries taken from this machine.
# Sets FRU_BUNDLE_PYTHON; exits 2 with one line when something it needs is missing.
_bundle="$ROOT/.gpu-bundle"
_unpacked="${FRU_BUNDLE_DIR:-/tmp/fru-gpu-bundle}"
if [ ! -x "$_unpacked/root/usr/bin/python3.11" ]; then
  command -v dpkg >/dev/null || { echo "gpu-check: dpkg is needed to unpack .gpu-bundle/debs" >&2; exit 2; }
  mkdir -p "$_unpacked/root" "$_unpacked/site"
  for _deb in "$_bundle"/debs/*.deb; do dpkg -x "$_deb" "$_unpacked/root"; done
fi
_cuda=""
for _lib in libcudart.so.13 libcublas.so.13 libcublasLt.so.13 libcurand.so.10 libnccl.so.2; do
  _found=$(find ${FRU_CUDA_LIBS:-} /opt /usr/local /usr/lib /usr/lib64 -name "$_lib" -print -quit 2>/dev/null || true)
  [ -n "$_found" ] || { echo "gpu-check: CUDA library $_lib not found on this machine (set FRU_CUDA_LIBS=DIR)" >&2; exit 2; }
  _cuda="$_cuda:$(dirname "$_found")"
done
_multiarch="$_unpacked/root/usr/lib/x86_64-linux-gnu"
export LD_LIBRARY_PATH="$_bundle/lib:$_multiarch:$_multiarch/openblas-pthread:$_unpacked/root/lib/x86_64-linux-gnu$_cuda${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
export PYTHONHOME="$_unpacked/root/usr"
export PYTHONPATH="$_unpacked/site:$_bundle/python:$ROOT"
export PYTHONNOUSERSITE=1
export FRU_BUNDLE="$_bundle"
FRU_BUNDLE_PYTHON="$_unpacked/root/usr/bin/python3.11"
if [ ! -f "$_unpacked/site/.complete" ]; then
  for _whl in "$_bundle"/wheels/*.whl; do "$FRU_BUNDLE_PYTHON" -m zipfile -e "$_whl" "$_unpacked/site"; done
  touch "$_unpacked/site/.complete"
fi
