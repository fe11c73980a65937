#!/usr/bin/env bash
# Headers for building the NCCL process group (`cargo build --features nccl`): the torch wheel
# ships NCCL's and most of CUDA's headers (site-packages/nvidia/{nccl,cu13}/include) but not the
# CUDA runtime's `crt/` and CCCL headers that c10's CUDA headers include. Those come from PyPI's
# header-only wheels nvidia-cuda-crt and nvidia-cuda-cccl (unpacked, never installed or committed)
# into ~/.cache/spatiallock/cuda-headers.
#
# Prints the line to build with:
#   export SPATIALLOCK_CUDA_INCLUDE=...
#   cargo build --release --features nccl
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "setup-nccl: $*" >&2; }

torch_dir=$(readlink -f .libtorch 2>/dev/null || true)
if [ ! -f "$torch_dir/lib/libtorch_cuda.so" ]; then
  say "no CUDA libtorch at .libtorch: run \`bash scripts/setup.sh\` first"
  exit 1
fi
site=$(dirname "$torch_dir")
cuda_version=$("$site/../../../bin/python" -c 'import torch; print(torch.version.cuda)' 2>/dev/null || echo 13.0)
major=${cuda_version%%.*}
cache=${SPATIALLOCK_CACHE:-$HOME/.cache/spatiallock}/cuda-headers-$cuda_version
if [ ! -d "$cache/nvidia" ]; then
  say "fetching the CUDA $cuda_version header wheels (nvidia-cuda-crt, nvidia-cuda-cccl) into $cache"
  tmp=$(mktemp -d)
  trap 'rm -rf "$tmp"' EXIT
  python3 -m pip download --quiet --no-deps --dest "$tmp" \
    "nvidia-cuda-crt==$cuda_version.*" "nvidia-cuda-cccl==$cuda_version.*" >&2
  mkdir -p "$cache.partial"
  for w in "$tmp"/*.whl; do
    python3 -m zipfile -e "$w" "$cache.partial" >&2
  done
  rm -rf "$cache"
  mv "$cache.partial" "$cache"
fi
dirs=()
for d in "$site/nvidia/nccl/include" "$site/nvidia/cu$major/include" "$cache"/nvidia/*/include "$cache"/nvidia/cu*/include/cccl; do
  [ -d "$d" ] && dirs+=("$d")
done
if [ ${#dirs[@]} -eq 0 ]; then
  say "no header folders found under $site/nvidia or $cache"
  exit 1
fi
joined=$(IFS=:; echo "${dirs[*]}")
echo "export SPATIALLOCK_CUDA_INCLUDE=$joined"
