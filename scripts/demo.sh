#!/usr/bin/env bash
# The README's main command: set up, build, and run the demo grid (configs/demo.yaml) end to
# end on the CPU: pretrain a tiny base on synthetic shapes, train SpatialLock (PoI + PoG) on it,
# train the evaluation detector on real shapes, then generate, detect and score. Its numbers are
# not meant to be meaningful: the demo shows every stage working. (The one-command orchestrated
# `spatiallock run` arrives with the coordinator and worker.)
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --bin spatiallock
bin=./target/release/spatiallock
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
$bin doctor
echo
$bin plan configs/demo.yaml
echo
$bin train configs/demo.yaml --out runs
echo
$bin evaluate configs/demo.yaml --out runs
echo
echo "demo: outputs are under runs/demo/ (metrics.jsonl, checkpoints, results.json, samples.png)."
echo "      These numbers come from a few minutes of CPU training and are not meaningful."
