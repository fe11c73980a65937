#!/usr/bin/env bash
# Runs a command — typically the `spatiallock` binary — against a libtorch other than the one it
# was built with, e.g. a GPU machine's own PyTorch install (the release binary carries no
# libtorch). That libtorch's lib/ goes first on LD_LIBRARY_PATH, which wins over the binary's
# RUNPATH; libtorch_cuda then finds the CUDA, cuDNN and NCCL libraries beside it through its own
# relative RUNPATH. It must be the major.minor release the binary was built against (2.11 today):
# `spatiallock doctor` prints which libtorch and CUDA libraries were loaded, and fails on a mismatch.
#
# Usage: scripts/with-torch.sh [--python PY | --libtorch DIR] [--] COMMAND [ARGS...]
#   --python PY     a Python whose `import torch` finds the libtorch (default: $SPATIALLOCK_TORCH_PYTHON,
#                   else /opt/torch/.venv/bin/python when present, else python3)
#   --libtorch DIR  a libtorch folder holding lib/libtorch_cpu.so (a wheel's site-packages/torch,
#                   or an unpacked libtorch zip); wins over --python
set -euo pipefail
say() { echo "with-torch: $*" >&2; }
python="${SPATIALLOCK_TORCH_PYTHON:-}"
libtorch=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python) python="${2:?--python needs a path}"; shift 2 ;;
    --libtorch) libtorch="${2:?--libtorch needs a folder}"; shift 2 ;;
    --) shift; break ;;
    *) break ;;
  esac
done
if [ $# -eq 0 ]; then
  say "no command given (usage: scripts/with-torch.sh [--python PY | --libtorch DIR] -- COMMAND ...)"
  exit 2
fi
if [ -z "$libtorch" ]; then
  if [ -z "$python" ]; then
    if [ -x /opt/torch/.venv/bin/python ]; then python=/opt/torch/.venv/bin/python; else python=python3; fi
  fi
  if ! libtorch=$("$python" -c 'import os, torch; print(os.path.dirname(torch.__file__))' 2>/dev/null); then
    say "$python cannot import torch: give --python with a Python that has torch, or --libtorch DIR"
    exit 2
  fi
fi
if [ ! -f "$libtorch/lib/libtorch_cpu.so" ]; then
  say "$libtorch is not a libtorch folder (no lib/libtorch_cpu.so)"
  exit 2
fi
export LD_LIBRARY_PATH="$libtorch/lib${LD_LIBRARY_PATH:+:$LD_LIBRARY_PATH}"
exec "$@"
