#!/usr/bin/env bash
# The prepared GPU check: one command that measures SpatialLock on a GPU machine beside diffusers'
# GLIGEN on the same machine in the same run, and writes the results as JSON plus a short log.
#
#   scripts/gpu-check.sh --prepare [DIR]     on the build machine: the release binary and the
#                                            diffusers wheels (CPython 3.12) into DIR
#                                            (default target/gpu-check: the stripped binary and ~38 MB of wheels) to bring along
#   scripts/gpu-check.sh [--bin BIN] [--wheels DIR] [--python PY] [--out DIR] [--cpu]
#
# On the GPU machine (default): the binary runs against that machine's own libtorch
# (scripts/with-torch.sh, found through PY's `import torch`; default /opt/torch/.venv/bin/python),
# and the wheels are installed with `pip --no-index` into a folder of their own, not into PY's
# environment. Measured:
#   - `spatiallock doctor`: the libtorch, CUDA runtime, cuDNN and NCCL that were loaded;
#   - the training step of the SD v1.4 architecture (configs/models/sd14.yaml, random weights,
#     4×64×64 latents, batch 8, 8 boxes, PoI at the paper's placement, PoG on) under bf16 autocast
#     and in fp32: s/step and device memory, beside diffusers' GLIGEN U-Net with the same inputs;
#   - sampling of one 512² image (50 DDIM steps, CFG 7.5, grounding on for the first 30% of the
#     steps, VAE decode), fp32 and bf16: s/image, beside diffusers.
# The NCCL all-reduce through our collective joins once data-parallel training has landed.
#
# --cpu runs the same steps on the CPU in a reduced mode (bench-tiny, batch 2, 4 DDIM steps, one
# timed iteration) with the set-up's libtorch venv as PY; the tests run it so this script cannot rot.
#
# Outputs in --out (default gpu-check-out/): gpu-check.json (everything), gpu-check.log (the
# tables), doctor.json and one JSON per measurement.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
say() { echo "gpu-check: $*" >&2; }

prepare() {
  local dir="${1:-$root/target/gpu-check}"
  mkdir -p "$dir/wheels"
  # With the NCCL process group, so CUDA ranks can train data-parallel on the GPU machine.
  (cd "$root" && bash scripts/setup.sh && eval "$(bash scripts/setup-nccl.sh)" \
    && cargo build --release --bin spatiallock --features nccl)
  cp "$(cd "$root" && readlink -f "${CARGO_TARGET_DIR:-target}")/release/spatiallock" "$dir/spatiallock"
  strip "$dir/spatiallock" 2>/dev/null || true
  local py
  py="$(bash "$root/scripts/setup-torch.sh")/bin/python"
  "$py" -m pip download --quiet --disable-pip-version-check --only-binary=:all: \
    --python-version 3.12 --implementation cp --platform manylinux_2_28_x86_64 \
    --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d "$dir/wheels" -r "$root/scripts/bench/requirements.txt" >&2
  say "prepared $dir ($(du -sh "$dir" | cut -f1)); on the GPU machine:"
  say "  bash scripts/gpu-check.sh --bin $dir/spatiallock --wheels $dir/wheels --out OUT"
}

bin="$(cd "$root" && readlink -f "${CARGO_TARGET_DIR:-target}")/release/spatiallock"
python=""
wheels=""
out="gpu-check-out"
cpu=0
while [ $# -gt 0 ]; do
  case "$1" in
    --prepare) shift; prepare "${1:-}"; exit 0 ;;
    --bin) bin="${2:?--bin needs a path}"; shift 2 ;;
    --python) python="${2:?--python needs a path}"; shift 2 ;;
    --wheels) wheels="${2:?--wheels needs a folder}"; shift 2 ;;
    --out) out="${2:?--out needs a folder}"; shift 2 ;;
    --cpu) cpu=1; shift ;;
    *) say "unknown argument $1 (see the head of this script)"; exit 2 ;;
  esac
done
if [ -z "$python" ]; then
  if [ "$cpu" = 1 ]; then
    python="$(bash "$root/scripts/setup-torch.sh")/bin/python"
  elif [ -x /opt/torch/.venv/bin/python ]; then
    python=/opt/torch/.venv/bin/python
  else
    python=python3
  fi
fi
[ -f "$bin" ] && [ -x "$bin" ] || { say "no spatiallock binary at $bin (build it, or give --bin)"; exit 2; }
bin="$(cd "$(dirname "$bin")" && pwd)/$(basename "$bin")"
# The reference scripts of this checkout, wherever the binary was built.
export SPATIALLOCK_SCRIPTS="$root/scripts"
mkdir -p "$out"
out="$(cd "$out" && pwd)"
log="$out/gpu-check.log"
: > "$log"
started=$(date +%s)

if [ -n "$wheels" ]; then
  site="$out/python-packages"
  say "installing the wheels of $wheels into $site"
  rm -rf "$site"
  if ! "$python" -m pip install --quiet --disable-pip-version-check --no-index --find-links "$wheels" \
      --target "$site" -r "$root/scripts/bench/requirements.txt" >&2; then
    say "pip could not install them; unpacking the wheels instead (they are built for CPython" \
        "3.12; this is $("$python" -c 'import sys; print(sys.version.split()[0])'))"
    "$python" - "$wheels" "$site" <<'PY'
import glob, sys, zipfile
for wheel in sorted(glob.glob(sys.argv[1] + "/*.whl")):
    zipfile.ZipFile(wheel).extractall(sys.argv[2])
PY
  fi
  export PYTHONPATH="$site${PYTHONPATH:+:$PYTHONPATH}"
fi
if ! "$python" -c 'import diffusers' 2>/dev/null; then
  say "$python cannot import diffusers: give --wheels (from --prepare), or install scripts/bench/requirements.txt"
  exit 2
fi

run_ours() { bash "$root/scripts/with-torch.sh" --python "$python" -- "$bin" "$@"; }

run_ours doctor | tee -a "$log"
run_ours doctor --json > "$out/doctor.json"

if [ "$cpu" = 1 ]; then
  device=cpu
  common=(--model bench-tiny --batch 2 --boxes 4 --iters 1)
  sampling=(--model bench-tiny --boxes 4 --steps 4 --iters 1)
else
  device=cuda
  common=(--model sd14 --size 64 --batch 8 --boxes 8 --iters 5)
  sampling=(--model sd14 --size 64 --boxes 8 --steps 50 --iters 3)
fi
# One measurement; a failure (out of memory, say) is recorded in its JSON and the log, and the
# others still run: the device time is too scarce to lose the rest to one.
failed=0
measure() {
  local name="$1"; shift
  echo | tee -a "$log"
  if ! run_ours bench "$@" --device "$device" --python "$python" --json "$out/$name.json" \
      > >(tee -a "$log") 2> "$out/$name.err"; then
    failed=$((failed + 1))
    say "$name failed: $(tail -n 3 "$out/$name.err")"
    "$python" -c 'import json, sys; json.dump({"failed": open(sys.argv[2]).read()[-4000:]}, open(sys.argv[1], "w"))' \
      "$out/$name.json" "$out/$name.err"
    echo "$name FAILED (see $name.err)" >> "$log"
  fi
}
measure train_bf16 train-step "${common[@]}" --precision bf16 --variants spatiallock-pog,spatiallock,gligen
measure train_fp32 train-step "${common[@]}" --precision fp32 --variants spatiallock-pog,spatiallock,gligen
measure sample_fp32 sample "${sampling[@]}" --grounding-fraction 0.3 --precision fp32 --variants spatiallock,gligen
measure sample_bf16 sample "${sampling[@]}" --grounding-fraction 0.3 --precision bf16 --variants spatiallock,gligen

elapsed=$(( $(date +%s) - started ))
"$python" - "$out" "$cpu" "$elapsed" "$failed" <<'PY'
import json, os, sys
out, cpu, elapsed, failed = sys.argv[1], sys.argv[2] == "1", int(sys.argv[3]), int(sys.argv[4])
result = {
    "mode": "cpu (reduced)" if cpu else "gpu",
    "seconds": elapsed,
    "failed_measurements": failed,
    "doctor": json.load(open(os.path.join(out, "doctor.json"))),
    "nccl_allreduce": "not measured: the NCCL collective arrives with data-parallel training",
}
for name in ("train_bf16", "train_fp32", "sample_fp32", "sample_bf16"):
    result[name] = json.load(open(os.path.join(out, name + ".json")))
with open(os.path.join(out, "gpu-check.json"), "w") as f:
    json.dump(result, f, indent=2)
PY
echo | tee -a "$log"
echo "gpu-check: done in ${elapsed} s, $failed measurement(s) failed; results in $out/gpu-check.json" | tee -a "$log"
[ "$failed" = 0 ]
