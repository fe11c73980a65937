#!/usr/bin/env bash
# The README's test command: set-up (libtorch, services) and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
# libtorch's default of 2 intra-op threads collapses on 2-core machines under load; tests also
# call tch::set_num_threads(1) themselves.
export OMP_NUM_THREADS=1
cargo test --workspace --all-targets "$@"
