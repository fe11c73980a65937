#!/usr/bin/env bash
# The README's main command: set up, build, and run the demo grid (configs/demo.yaml) end to
# end on the CPU with `spatiallock run`: an in-process coordinator on SQLite and one in-process
# worker pretrain a tiny base on synthetic shapes, train SpatialLock (PoI + PoG) on it, train
# the evaluation detector on real shapes, then generate, detect and score, and print the report.
# Its numbers are not meant to be meaningful: the demo shows every stage working. Running it
# again resumes (finished jobs are kept).
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --bin spatiallock
bin="$(readlink -f "${CARGO_TARGET_DIR:-target}")/release/spatiallock"  # where cargo built it
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
$bin doctor
echo
$bin plan configs/demo.yaml
echo
$bin run configs/demo.yaml --out runs
