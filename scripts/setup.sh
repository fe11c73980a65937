#!/usr/bin/env bash
# One-time (and idempotent) set-up for building SpatialLock on a fresh machine:
#   - a C/C++ compiler (torch-sys and the model crate compile small C++ shims),
#   - gloo's headers (Debian's libgloo-dev) for the c10d shim,
#   - libtorch 2.11.0 from PyPI in ~/.cache/spatiallock (shared by every clone),
#   - the `.libtorch` link that .cargo/config.toml points tch at,
#   - data files shipped in PyPI wheels (the CLIP vocabulary) in ~/.cache/spatiallock/assets.
# Set LIBTORCH=/path/to/libtorch to use an existing libtorch 2.11.x instead of the cached one.
set -euo pipefail
cd "$(dirname "$0")/.."

say() { echo "setup: $*" >&2; }

need_apt=()
command -v cc >/dev/null || need_apt+=(gcc)
command -v c++ >/dev/null || need_apt+=(g++)
command -v python3 >/dev/null || need_apt+=(python3 python3-venv)
python3 -c 'import venv, ensurepip' 2>/dev/null || need_apt+=(python3-venv)
# gloo's headers for PyTorch's distributed engine (the wheel has c10d's but not gloo's; libtorch
# carries gloo's code, so only the headers are used).
[ -n "${GLOO_INCLUDE:-}" ] || [ -f /usr/include/gloo/config.h ] || need_apt+=(libgloo-dev)
if [ ${#need_apt[@]} -gt 0 ]; then
  if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; then
    say "installing ${need_apt[*]}"
    apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq "${need_apt[@]}" >&2
  else
    say "missing ${need_apt[*]}: install them (as root: apt-get install ${need_apt[*]}) and run this again"
    exit 1
  fi
fi
if ! command -v cargo >/dev/null; then
  say "cargo not found: install Rust (https://rustup.rs) and run this again"
  exit 1
fi

python=python3
if [ -n "${LIBTORCH:-}" ]; then
  torch_dir="$LIBTORCH"
  say "using LIBTORCH=$torch_dir"
else
  venv=$(bash scripts/setup-torch.sh)
  torch_dir=$(ls -d "$venv"/lib/python3*/site-packages/torch | head -n 1)
  python="$venv/bin/python"
fi
if [ ! -f "$torch_dir/lib/libtorch_cpu.so" ]; then
  say "$torch_dir does not look like libtorch (no lib/libtorch_cpu.so)"
  exit 1
fi
ln -sfn "$torch_dir" .libtorch
say "libtorch: $(readlink .libtorch)"
bash scripts/setup-assets.sh "$python"
