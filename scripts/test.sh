#!/usr/bin/env bash
# The README's test command: set-up (libtorch, services) and every test of the workspace.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
bash scripts/services.sh
# Headless Chromium and chromedriver for the web UI's browser test (tests/ui_browser.rs).
bash scripts/setup-browser.sh
# The diffusers reference that scripts/gpu-check.sh --cpu measures beside ours (tests/gpu_check.rs).
bash scripts/fixtures/setup-python.sh scripts/bench/requirements.txt >/dev/null
# schemathesis, which coordinator/tests/fuzz.rs runs against a live coordinator's /openapi.json.
SPATIALLOCK_FUZZ_PYTHON="$(bash scripts/fixtures/setup-python.sh scripts/fuzz/requirements.txt)"
export SPATIALLOCK_FUZZ_PYTHON
# TensorBoard, whose reader tests/cli_client.rs runs on `spatiallock metrics --format tensorboard`.
SPATIALLOCK_TENSORBOARD_PYTHON="$(bash scripts/fixtures/setup-python.sh scripts/tensorboard/requirements.txt)"
export SPATIALLOCK_TENSORBOARD_PYTHON
# libtorch's default of 2 intra-op threads collapses on 2-core machines under load; tests also
# call tch::set_num_threads(1) themselves.
export OMP_NUM_THREADS=1
cargo test --workspace --all-targets "$@"
# The docker-compose stack with real containers (installs and starts Docker when it can; about
# 5 min). SPATIALLOCK_COMPOSE_CHECK=0 leaves it out, e.g. while iterating on one test.
if [ "${SPATIALLOCK_COMPOSE_CHECK:-1}" != 0 ]; then
  bash scripts/compose-check.sh
fi
