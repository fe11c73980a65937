#!/usr/bin/env bash
# Installs libtorch 2.11.0 (the version tch 0.24 binds) from PyPI into a cache outside the clone,
# once; later clones and CI reuse it. Prints the venv path on stdout.
set -euo pipefail
TORCH_VERSION=2.11.0
CACHE="${SPATIALLOCK_CACHE:-$HOME/.cache/spatiallock}"
VENV="$CACHE/torch-$TORCH_VERSION"
marker="$VENV/.complete"
if [ ! -f "$marker" ]; then
  echo "setup-torch: installing torch==$TORCH_VERSION into $VENV (one time, ~5 GB)" >&2
  mkdir -p "$CACHE"
  rm -rf "$VENV"
  python3 -m venv "$VENV" >&2
  "$VENV/bin/pip" install --quiet --upgrade pip >&2
  "$VENV/bin/pip" install --quiet "torch==$TORCH_VERSION" >&2
  touch "$marker"
fi
echo "$VENV"
