#!/usr/bin/env bash
# The README's main command: build SpatialLock and run the embedded demo grid.
# Training, evaluation and `spatiallock run` arrive with their issues; until then the demo
# validates the demo grid and prints its trials and job DAG with `spatiallock plan`.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
cargo build --release --bin spatiallock
./target/release/spatiallock doctor
echo
./target/release/spatiallock plan configs/demo.yaml
echo
echo "demo: this is the plan of configs/demo.yaml. Running it (spatiallock run) comes with the"
echo "      training, evaluation and worker milestones; see README.md, 'Status'."
