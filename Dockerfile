# Two images: `coordinator` (the torch-free `spatiallock-coordinator` binary, no libtorch) and the
# default, the `spatiallock` binary with libtorch 2.11.0 (from PyPI's torch wheel, as
# scripts/setup.sh installs it) for workers and the CLI.
#   docker build --target coordinator -t spatiallock-coordinator .
#   docker build -t spatiallock .
FROM rust:1.95-bookworm AS build-coordinator
WORKDIR /src
COPY . .
RUN cargo build --release -p spatiallock-coordinator --bin spatiallock-coordinator

FROM debian:bookworm-slim AS coordinator
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build-coordinator /src/target/release/spatiallock-coordinator /usr/local/bin/spatiallock-coordinator
ENTRYPOINT ["spatiallock-coordinator"]

FROM rust:1.95-bookworm AS build
RUN apt-get update && apt-get install -y --no-install-recommends python3-venv && rm -rf /var/lib/apt/lists/*
RUN python3 -m venv /opt/torch && /opt/torch/bin/pip install --no-cache-dir torch==2.11.0
# An exported LIBTORCH wins over .cargo/config.toml; the binary's rpath points here.
ENV LIBTORCH=/opt/torch/lib/python3.11/site-packages/torch
WORKDIR /src
COPY . .
RUN cargo build --release --bin spatiallock

FROM debian:bookworm-slim
RUN apt-get update && apt-get install -y --no-install-recommends ca-certificates libgomp1 \
    && rm -rf /var/lib/apt/lists/*
COPY --from=build /opt/torch/lib/python3.11/site-packages/torch/lib /opt/torch/lib/python3.11/site-packages/torch/lib
COPY --from=build /src/target/release/spatiallock /usr/local/bin/spatiallock
ENTRYPOINT ["spatiallock"]
