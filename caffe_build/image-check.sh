#!/usr/bin/env bash
# Build the Docker image from the Dockerfile with podman (no Docker engine needed) and run --help
# and the offline FashionNet demo in it: CPU mode inside the CUDA image. Not part of CI (too long).
#
# The base image debian:bookworm is made from Debian's archive with mmdebstrap (no registry
# needed). pip inside the build uses this machine's pip settings (index, certificate, timeout),
# passed as a read-only /etc/pip.conf; none of it goes into the Dockerfile or the image.
#
# Environment: CAFFE_CUDA_ARCH (default 90: one architecture keeps the build short),
#              IMAGE (default fru-toolkit:check), FRU_CACHE (work folder under it: image/),
#              MIRROR_DIR: a folder laid out as a FRU_WEIGHTS_MIRROR (README); when set, the
#              published command for MIRROR_NET (default GoogLeNet) runs in the image from it,
#              then again with the mirror gone, from the /data volume.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
WORK="${FRU_CACHE:-$HOME/.cache/fru-toolkit}/image"
IMAGE="${IMAGE:-fru-toolkit:check}"
ARCH="${CAFFE_CUDA_ARCH:-90}"
PODMAN=(podman --runtime runc)  # crun refuses this kind of machine's hybrid cgroups
RUN=(--network host --ulimit nofile=1024:1024 --ulimit nproc=1024:1024)
mkdir -p "$WORK/out"
say() { printf '[image-check] %s\n' "$*"; }

missing=""
for tool in podman mmdebstrap runc; do command -v "$tool" >/dev/null || missing="$missing $tool"; done
if [ -n "$missing" ]; then
  [ "$(id -u)" = 0 ] || { say "missing:$missing; install them (apt-get install$missing)"; exit 2; }
  say "installing$missing"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends $missing >/dev/null
fi

if ! "${PODMAN[@]}" image exists debian:bookworm; then
  say "base image debian:bookworm from Debian's archive (mmdebstrap --variant=minbase)"
  mmdebstrap --quiet --variant=minbase bookworm "$WORK/rootfs.tar"
  "${PODMAN[@]}" import "$WORK/rootfs.tar" debian:bookworm >/dev/null
  rm -f "$WORK/rootfs.tar"
fi

# This machine's pip settings, for pip inside the build only.
python3 - "$WORK/pip.conf" <<'EOF'
import os, subprocess, sys
conf = {}
out = subprocess.run([sys.executable, "-m", "pip", "config", "list"], capture_output=True, text=True).stdout
for line in out.splitlines():  # e.g. global.cert='/etc/ssl/certs/ca-certificates.crt' or :env:.timeout='180'
    key, _, value = line.partition("=")
    name = key.split(".", 1)[-1]
    value = value.strip("'")
    if name != "cert" and all(v.startswith(("/", "file:")) for v in value.split()):
        continue  # this machine's local files (wheel folders, constraints) do not exist in the build
    conf[name] = value
with open(sys.argv[1], "w") as f:
    f.write("[global]\n" + "".join(f"{k} = {v}\n" for k, v in sorted(conf.items())))
EOF
VOLUMES=(-v "$WORK/pip.conf:/etc/pip.conf:ro")
cert=$(sed -n 's/^cert = //p' "$WORK/pip.conf")
if [ -n "$cert" ] && [ -f "$cert" ]; then  # beside, not over, the image's own certificate store
  sed -i 's#^cert = .*#cert = /run/pip-ca.crt#' "$WORK/pip.conf"
  VOLUMES+=(-v "$cert:/run/pip-ca.crt:ro")
fi

say "building $IMAGE with CAFFE_CUDA_ARCH=$ARCH (log: $WORK/build.log)"
start=$(date +%s)
if ! "${PODMAN[@]}" build --network host "${VOLUMES[@]}" --build-arg CAFFE_CUDA_ARCH="$ARCH" \
     -t "$IMAGE" "$ROOT" >"$WORK/build.log" 2>&1; then
  tail -n 30 "$WORK/build.log"; say "FAILED: image build"; exit 1
fi
build_s=$(( $(date +%s) - start ))
size=$("${PODMAN[@]}" image inspect --format '{{.Size}}' "$IMAGE")
say "built in ${build_s} s; image size $(( size / 1000000 )) MB"

"${PODMAN[@]}" run --rm "${RUN[@]}" "$IMAGE" --help | head -n 3
rm -f "$WORK/out/demo.png"
"${PODMAN[@]}" run --rm "${RUN[@]}" -v "$WORK/out:/out" "$IMAGE" \
  --dnn FashionNet --attack UAP --defense True --out /out/demo.png
[ -s "$WORK/out/demo.png" ] || { say "FAILED: the demo wrote no figure"; exit 1; }
if [ -n "${MIRROR_DIR:-}" ]; then
  net="${MIRROR_NET:-GoogLeNet}"
  port=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
  python3 -m http.server "$port" --bind 127.0.0.1 --directory "$MIRROR_DIR" >/dev/null 2>&1 &
  server=$!
  trap 'kill $server 2>/dev/null || true' EXIT
  sleep 1
  rm -rf "$WORK/data" && mkdir -p "$WORK/data"
  published=(--dnn "$net" --attack UAP --defense True)
  say "published command for $net from the mirror $MIRROR_DIR"
  "${PODMAN[@]}" run --rm "${RUN[@]}" -v "$WORK/data:/data" -e FRU_WEIGHTS_MIRROR="http://127.0.0.1:$port" \
    "$IMAGE" "${published[@]}" | tee "$WORK/out/published-1.txt"
  kill "$server"
  say "again with the mirror gone (cache in /data only)"
  "${PODMAN[@]}" run --rm "${RUN[@]}" -v "$WORK/data:/data" -e FRU_WEIGHTS_MIRROR="http://127.0.0.1:9" \
    "$IMAGE" "${published[@]}" | tee "$WORK/out/published-2.txt"
  cmp -s "$WORK/out/published-1.txt" "$WORK/out/published-2.txt" || { say "FAILED: the cached run differs"; exit 1; }
fi
say "ok: demo figure $WORK/out/demo.png; build ${build_s} s, image $(( size / 1000000 )) MB"
