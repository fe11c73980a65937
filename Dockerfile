# Images (built with BuildKit, which skips the stages a target does not need):
#   coordinator  the torch-free `spatiallock-coordinator` binary; no libtorch, no CUDA
#   worker       the `spatiallock` binary (workers and the CLI) with libtorch 2.11.0 and the CUDA
#                libraries from PyPI's torch wheel (as scripts/setup.sh installs it). The same
#                image runs GPU workers (`--devices cuda:0`, with a GPU reservation) and CPU
#                workers (`--devices cpu`): the binary links libtorch_cuda, so it needs the CUDA
#                runtime libraries even on a machine without a GPU (PyPI has no CPU-only torch).
#
#   DOCKER_BUILDKIT=1 docker build --target coordinator -t spatiallock-coordinator .
#   DOCKER_BUILDKIT=1 docker build --target worker -t spatiallock .
#
# The binaries are compiled in `rust:1.95-bookworm` by default. `--build-arg BINARIES=prebuilt`
# takes them instead from the build context, laid out as scripts/compose-check.sh stages it:
#   bin/spatiallock-coordinator, bin/spatiallock, torch/lib/, nvidia/, assets/
# (torch/lib and nvidia are site-packages/torch/lib and site-packages/nvidia of a torch==2.11.0
# install; assets/ is what scripts/setup-assets.sh installs).
# DEBIAN_IMAGE and RUST_IMAGE replace the public base images (the compose check uses a base
# made with debootstrap, because public registries are out of its reach).
ARG DEBIAN_IMAGE=debian:bookworm-slim
ARG RUST_IMAGE=rust:1.95-bookworm
ARG BINARIES=build

# --- binaries compiled from source ---
FROM ${RUST_IMAGE} AS build-coordinator
WORKDIR /src
COPY . .
RUN cargo build --release -p spatiallock-coordinator --bin spatiallock-coordinator \
    && mkdir -p /out/bin && cp target/release/spatiallock-coordinator /out/bin/

FROM ${RUST_IMAGE} AS build-worker
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv libgloo-dev \
    && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/torch-venv && /opt/torch-venv/bin/pip install --no-cache-dir torch==2.11.0
# An exported LIBTORCH wins over .cargo/config.toml.
ENV LIBTORCH=/opt/torch-venv/lib/python3.11/site-packages/torch
WORKDIR /src
COPY . .
RUN cargo build --release --bin spatiallock \
    && bash scripts/setup-assets.sh /opt/torch-venv/bin/python \
    && mkdir -p /out/bin /out/torch \
    && cp target/release/spatiallock /out/bin/ \
    && cp -a "$LIBTORCH/lib" /out/torch/lib \
    && cp -a "$LIBTORCH/../nvidia" /out/nvidia \
    && cp -a /root/.cache/spatiallock/assets /out/assets

# --- binaries built elsewhere (BINARIES=prebuilt; the context is the staged folder) ---
FROM scratch AS prebuilt-coordinator
COPY bin/spatiallock-coordinator /out/bin/

FROM scratch AS prebuilt-worker
COPY bin/spatiallock /out/bin/
COPY torch/lib /out/torch/lib
COPY nvidia /out/nvidia
COPY assets /out/assets

FROM ${BINARIES}-coordinator AS coordinator-binaries
FROM ${BINARIES}-worker AS worker-binaries

# --- runtime images ---
FROM ${DEBIAN_IMAGE} AS runtime
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && apt-get clean && rm -rf /var/lib/apt/lists/*

FROM runtime AS coordinator
COPY --from=coordinator-binaries /out/bin/spatiallock-coordinator /usr/local/bin/spatiallock-coordinator
ENTRYPOINT ["spatiallock-coordinator"]

FROM runtime AS worker
# torch/lib keeps its place beside nvidia/: libtorch_cuda.so finds the CUDA libraries through
# its RPATH ($ORIGIN/../../nvidia/*/lib). The binary's own RUNPATH names the build machine's
# libtorch, so LD_LIBRARY_PATH points it here.
COPY --from=worker-binaries /out/torch/lib /opt/torch/site-packages/torch/lib
COPY --from=worker-binaries /out/nvidia /opt/torch/site-packages/nvidia
COPY --from=worker-binaries /out/bin/spatiallock /usr/local/bin/spatiallock
# The CLIP vocabulary and the FID Inception network (scripts/setup-assets.sh).
COPY --from=worker-binaries /out/assets /opt/spatiallock/assets
ENV LD_LIBRARY_PATH=/opt/torch/site-packages/torch/lib \
    SPATIALLOCK_ASSETS=/opt/spatiallock/assets \
    NVIDIA_VISIBLE_DEVICES=all \
    NVIDIA_DRIVER_CAPABILITIES=compute,utility
# Relative paths in grids (data/…, models/…) resolve from here: docker-compose.yml mounts
# /data and /models.
WORKDIR /
ENTRYPOINT ["spatiallock"]
