#!/usr/bin/env bash
# The docker-compose stack, built and run for real on this machine, end to end:
#   1. a Docker daemon (Debian's docker.io; started here without a bridge network when none runs),
#   2. a Debian base image from debootstrap (public registries are out of reach), stand-ins for
#      postgres/redis/prometheus made from Debian's packages, and our coordinator and worker
#      images from binaries compiled on this host (Dockerfile, BINARIES=prebuilt),
#   3. every shared library the binaries need present in their images (ldd), `doctor` in the
#      worker image,
#   4. docker-compose.yml brought up with docker/compose-check/compose.yml (host networking, local
#      images, a CPU worker), a tiny grid submitted from the host, the coordinator container
#      restarted while training runs, the grid succeeding on the worker container with no job
#      lost, the coordinator serving the evaluation's sample grid from the shared artifacts volume,
#      and the Prometheus container scraping the coordinator and the worker,
#   5. everything torn down (`down -v`, the images it built, and the daemon with its build cache
#      if it started it).
# Grafana has no Debian package: its provisioning and dashboard files are checked against the
# stack's service names, ports and mounts instead of being run.
#
# Exit status 0 when every check passed. Without root (to install and start Docker) it says why
# and exits 0, except under CI=true, where that is a failure; a daemon that root cannot start is a
# failure. Needs the ports 8080, 9090, 9101,
# 25432 and 26379 free. SPATIALLOCK_COMPOSE_PROFILE=release checks release binaries (default:
# the debug binaries the tests built).
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)

say() { echo "compose-check: $*" >&2; }
fail() { say "FAILED: $*"; exit 1; }
trap 'say "FAILED at line $LINENO: $BASH_COMMAND"' ERR
started=$(date +%s)

# --- 1. Docker --------------------------------------------------------------------------------
cannot() {
  if [ "${CI:-}" = true ]; then fail "$*"; fi
  say "skipped: $*"
  exit 0
}
need=()
command -v dockerd >/dev/null || need+=(docker.io)
command -v docker-compose >/dev/null || need+=(docker-compose)
command -v debootstrap >/dev/null || need+=(debootstrap)
if [ ${#need[@]} -gt 0 ]; then
  { [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null; } || cannot "${need[*]} missing and not root to install them"
  say "installing ${need[*]}"
  apt-get update -qq && DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${need[@]}" >&2
fi
# Debian's client matches Debian's daemon (20.10) and talks BuildKit without the buildx plugin.
docker=/usr/bin/docker
[ -x "$docker" ] || docker=$(command -v docker)
export DOCKER_BUILDKIT=1

work=$(mktemp -d /tmp/spatiallock-compose-check.XXXXXX)
our_dockerd=
project=spatiallock-compose-check
prefix=spatiallock-compose-check
compose=(docker-compose -p "$project" -f "$work/stack.yml")
cleanup() {
  local rc=$?
  set +e
  if [ -f "$work/stack.yml" ]; then
    if [ $rc -ne 0 ]; then
      say "logs of the stack (last 40 lines per service):"
      "${compose[@]}" logs --no-color --tail 40 >&2
    fi
    "${compose[@]}" down -v --remove-orphans >/dev/null 2>&1
  fi
  local images
  images=$("$docker" images --format '{{.Repository}}:{{.Tag}}' 2>/dev/null | grep "^$prefix/")
  [ -n "$images" ] && "$docker" rmi -f $images >/dev/null 2>&1
  if [ -n "$our_dockerd" ]; then
    # A daemon nobody else runs: its build cache (the 4 GB worker context) goes too.
    "$docker" builder prune -af >/dev/null 2>&1
    kill "$our_dockerd" 2>/dev/null
    for _ in $(seq 1 40); do kill -0 "$our_dockerd" 2>/dev/null || break; sleep 0.5; done
  fi
  rm -rf "$work"
  say "$([ $rc -eq 0 ] && echo passed || echo failed) in $(($(date +%s) - started)) s; nothing left behind"
  exit $rc
}
trap cleanup EXIT
trap 'exit 130' INT TERM

if ! "$docker" info >/dev/null 2>&1; then
  [ "$(id -u)" = 0 ] || cannot "no Docker daemon runs and starting one needs root"
  say "starting dockerd (no bridge network: every container uses the host's)"
  dockerd --bridge=none --iptables=false --ip-masq=false >"$work/dockerd.log" 2>&1 &
  our_dockerd=$!
  for _ in $(seq 1 60); do "$docker" info >/dev/null 2>&1 && break; sleep 0.5; done
  "$docker" info >/dev/null 2>&1 || { tail -n 20 "$work/dockerd.log" >&2; fail "dockerd did not start"; }
fi

port_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
for port in 8080 9090 9101 25432 26379; do
  port_open "$port" && fail "127.0.0.1:$port is taken; the stack's containers use the host's network and need it"
done

# --- 2. Images --------------------------------------------------------------------------------
profile=${SPATIALLOCK_COMPOSE_PROFILE:-debug}
say "building the binaries ($profile)"
# --all-targets: the feature set the test command built with, so after the tests this is a no-op.
if [ "$profile" = release ]; then cargo build --release --workspace --bins >&2; else cargo build --workspace --all-targets >&2; fi
bins="$(cd "$root" && readlink -f "${CARGO_TARGET_DIR:-target}")/$profile"
torch=$(readlink -f .libtorch)
[ -f "$torch/lib/libtorch_cuda.so" ] || fail "no CUDA libtorch at .libtorch (run scripts/setup.sh)"
context="$work/context"
mkdir -p "$context/bin" "$context/torch"
# Debug information stays on the host; hard links keep the 3.6 GB of libraries from being copied.
objcopy --strip-debug "$bins/spatiallock" "$context/bin/spatiallock"
objcopy --strip-debug "$bins/spatiallock-coordinator" "$context/bin/spatiallock-coordinator"
cp -al "$torch/lib" "$context/torch/lib" 2>/dev/null || cp -a "$torch/lib" "$context/torch/lib"
cp -al "$torch/../nvidia" "$context/nvidia" 2>/dev/null || cp -a "$torch/../nvidia" "$context/nvidia"
# The data files jobs read (the CLIP vocabulary, the FID Inception network): scripts/setup.sh's.
assets="${SPATIALLOCK_ASSETS:-${SPATIALLOCK_CACHE:-$HOME/.cache/spatiallock}/assets}"
[ -s "$assets/bpe_simple_vocab_16e6.txt.gz" ] || fail "no assets in $assets (run scripts/setup.sh)"
cp -al "$assets" "$context/assets" 2>/dev/null || cp -a "$assets" "$context/assets"

# The Debian base, made once per machine (~1 min) and kept outside the clone.
mirror=$({ grep -hoE '^(URIs:|deb) +https?://[^ ]+/debian/?( |$)' /etc/apt/sources.list.d/*.sources /etc/apt/sources.list 2>/dev/null || true; } \
  | awk '{print $2}' | head -n 1)
mirror=${mirror:-http://deb.debian.org/debian}
cache="${SPATIALLOCK_CACHE:-$HOME/.cache/spatiallock}/compose-check"
base_tar="$cache/debian-bookworm-minbase.tar"
if [ ! -f "$base_tar" ]; then
  say "debootstrap bookworm from $mirror (one time)"
  mkdir -p "$cache"
  debootstrap --variant=minbase bookworm "$work/rootfs" "$mirror" >"$work/debootstrap.log" 2>&1 \
    || { tail -n 20 "$work/debootstrap.log" >&2; fail "debootstrap failed"; }
  # As Debian's own images do: packages installed in a build never start services.
  printf '#!/bin/sh\nexit 101\n' >"$work/rootfs/usr/sbin/policy-rc.d"
  chmod +x "$work/rootfs/usr/sbin/policy-rc.d"
  rm -rf "$work/rootfs/var/cache/apt/archives/"*.deb
  tar -C "$work/rootfs" -cf "$base_tar.partial" . && mv "$base_tar.partial" "$base_tar"
  rm -rf "$work/rootfs"
fi
base="$prefix/debian:bookworm"
"$docker" import - "$base" <"$base_tar" >/dev/null

build() { # TARGET CONTEXT DOCKERFILE [--build-arg …]
  local target=$1 ctx=$2 file=$3
  shift 3
  say "image $prefix/$target:local"
  "$docker" build -q --network host --build-arg DEBIAN_IMAGE="$base" "$@" \
    -f "$file" --target "$target" -t "$prefix/$target:local" "$ctx" >/dev/null
}
for standin in postgres redis prometheus; do
  build "$standin" docker/compose-check docker/compose-check/Dockerfile.standins
done
build coordinator "$context" Dockerfile --build-arg BINARIES=prebuilt
build worker "$context" Dockerfile --build-arg BINARIES=prebuilt
rm -rf "$context"

# --- 3. Libraries -----------------------------------------------------------------------------
for image_bin in coordinator:/usr/local/bin/spatiallock-coordinator worker:/usr/local/bin/spatiallock; do
  image="$prefix/${image_bin%%:*}:local"
  libs=$("$docker" run --rm --network none --entrypoint ldd "$image" "${image_bin#*:}")
  if grep -q "not found" <<<"$libs"; then
    grep "not found" <<<"$libs" >&2
    fail "$image lacks shared libraries"
  fi
  say "$image: $(grep -c '=>' <<<"$libs") shared libraries, none missing"
done
"$docker" run --rm --network none --entrypoint ldd "$prefix/coordinator:local" /usr/local/bin/spatiallock-coordinator \
  | awk '{print $1}' | grep -E '^lib(torch|c10|cuda)' && fail "the coordinator image links libtorch"
doctor=$("$docker" run --rm --network none "$prefix/worker:local" doctor) || fail "doctor failed in the worker image"
grep -q "libtorch" <<<"$doctor" || fail "doctor did not name libtorch: $doctor"
say "worker image doctor: $(tr '\n' ';' <<<"$doctor" | cut -c1-200)"
sizes=$("$docker" images --format '{{.Repository}}:{{.Tag}} {{.Size}}' | grep "^$prefix/" | grep -v debian)
say "image sizes: $(tr '\n' ',' <<<"$sizes")"

# --- 4. The stack -----------------------------------------------------------------------------
export SPATIALLOCK_ADMIN_TOKEN="admin-$RANDOM$RANDOM" SPATIALLOCK_WORKER_TOKEN="worker-$RANDOM$RANDOM"
export COMPOSE_CHECK_DATA="$work/data"
mkdir -p "$COMPOSE_CHECK_DATA"
docker-compose -f docker-compose.yml -f docker/compose-check/compose.yml config >"$work/merged.yml"
# docker-compose 1.29 cannot unset a key from an override: drop the GPU reservation here.
/usr/bin/python3 - "$work/merged.yml" "$work/stack.yml" <<'PY'
import sys, yaml
stack = yaml.safe_load(open(sys.argv[1]))
stack["services"]["worker"].pop("deploy", None)
for service in stack["services"].values():
    service.pop("ports", None)  # host networking publishes nothing
yaml.safe_dump(stack, open(sys.argv[2], "w"), sort_keys=False)
PY
say "docker-compose up (postgres redis coordinator worker prometheus)"
"${compose[@]}" up -d --no-build postgres redis coordinator worker prometheus >&2

wait_http() { # URL SECONDS
  for _ in $(seq 1 $(($2 * 2))); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.5; done
  fail "$1 did not answer within $2 s"
}
wait_http http://127.0.0.1:8080/readyz 120
wait_http http://127.0.0.1:9101/metrics 60
wait_http http://127.0.0.1:9090/-/ready 60

cli=("$bins/spatiallock")
remote=(--coordinator http://127.0.0.1:8080 --token "$SPATIALLOCK_ADMIN_TOKEN")
experiment=$("${cli[@]}" submit docker/compose-check/grid.yaml "${remote[@]}" | awk '{print $1}')
say "submitted experiment $experiment"
job_field() { # JSON-PATH-EXPRESSION over `status --json`
  "${cli[@]}" status "$experiment" --json "${remote[@]}" | /usr/bin/python3 -c "import json,sys; s=json.load(sys.stdin); print($1)"
}
training_state='next((j["state"] for j in s["jobs"] if j["kind"] == "train"), "none")'
for _ in $(seq 1 600); do
  state=$(job_field "$training_state")
  case $state in
    running) break ;;
    succeeded) fail "training ended before the coordinator could be restarted during it" ;;
    failed | cancelled)
      "${cli[@]}" status "$experiment" "${remote[@]}" >&2
      fail "training $state before it ran" ;;
  esac
  sleep 0.5
done
[ "$state" = running ] || fail "training did not start within 5 min (state: $state)"
sleep 2
say "training runs: restarting the coordinator container"
"${compose[@]}" restart coordinator >&2
wait_http http://127.0.0.1:8080/readyz 120
for _ in $(seq 1 600); do
  state=$(job_field 's["experiment"]["state"]')
  case $state in succeeded | failed | cancelled) break ;; esac
  sleep 1
done
"${cli[@]}" status "$experiment" "${remote[@]}" >&2
[ "$state" = succeeded ] || fail "the experiment ended $state"
lost=$(job_field '[j["label"] for j in s["jobs"] if j["state"] != "succeeded" or j["attempt"] != 1]')
[ "$lost" = "[]" ] || fail "jobs not done in one attempt after the restart: $lost"
say "experiment $experiment succeeded on the worker container; every job in its first attempt"
# The coordinator container reads the workers' outputs (the artifacts volume, read-only): the
# web UI's sample grid of the evaluation.
evaluation=$(job_field 'next(j["id"] for j in s["jobs"] if j["kind"] == "evaluate")')
curl -fsS -H "Authorization: Bearer $SPATIALLOCK_ADMIN_TOKEN" -o "$work/samples.png" \
  "http://127.0.0.1:8080/v1/jobs/$evaluation/files/samples.png" || fail "the coordinator did not serve the evaluation's samples.png"
[ "$(head -c 8 "$work/samples.png" | od -An -tx1 | tr -d ' \n')" = 89504e470d0a1a0a ] || fail "samples.png is not a PNG"
say "the coordinator serves the evaluation's samples.png ($(stat -c %s "$work/samples.png") bytes) from the shared volume"

# Prometheus (the container, with dashboards/prometheus.yml) scraped both.
query() { curl -fsS --get --data-urlencode "query=$1" http://127.0.0.1:9090/api/v1/query; }
scraped() { # PROMQL → how many series it returns
  query "$1" | /usr/bin/python3 -c 'import json,sys; r=json.load(sys.stdin); print(len(r["data"]["result"]))'
}
# The worker's target comes from the coordinator's service discovery (refreshed every 30 s),
# then waits for the next 15 s scrape.
for _ in $(seq 1 120); do
  [ "$(scraped 'spatiallock_worker_attempts_total{job="spatiallock-worker"} > 0')" -gt 0 ] \
    && [ "$(scraped 'up{job="spatiallock-coordinator"} == 1')" = 1 ] && break
  sleep 1
done
for check in 'up{job="spatiallock-coordinator"} == 1' 'up{job="spatiallock-worker"} == 1' \
  'spatiallock_jobs{job="spatiallock-coordinator"}' 'spatiallock_worker_attempts_total{job="spatiallock-worker"} > 0' \
  'process_resident_memory_bytes{job="spatiallock-worker"}'; do
  n=$(scraped "$check")
  [ "$n" -gt 0 ] || fail "Prometheus has no series for $check"
  say "prometheus: $check → $n series"
done
# The alert rules (dashboards/alerts.yml, mounted beside the configuration) loaded and evaluate.
curl -fsS http://127.0.0.1:9090/api/v1/rules >"$work/rules.json"
/usr/bin/python3 - "$work/rules.json" <<'PY' || fail "the Prometheus container did not load or evaluate dashboards/alerts.yml"
import json, sys
rules = [r for g in json.load(open(sys.argv[1]))["data"]["groups"] for r in g["rules"]]
bad = [(r["name"], r.get("health"), r.get("lastError")) for r in rules if r.get("health") != "ok"]
assert rules, "no rules loaded"
assert not bad, f"rules not evaluating: {bad}"
print(f"compose-check: prometheus: {len(rules)} alert rules loaded, all evaluating", file=sys.stderr)
PY
# Every dashboard expression parses in this Prometheus (data for them is issue-18's live test).
/usr/bin/python3 - dashboards/spatiallock.json <<'PY' >"$work/exprs"
import json, sys
def walk(node):
    if isinstance(node, dict):
        if isinstance(node.get("expr"), str):
            print(node["expr"].replace("\n", " "))
        for v in node.values():
            walk(v)
    elif isinstance(node, list):
        for v in node:
            walk(v)
walk(json.load(open(sys.argv[1])))
PY
with_data=0
while IFS= read -r expr; do
  # $__rate_interval and friends are Grafana's: give them the values Grafana would.
  promql=$(sed -e 's/\$__rate_interval/1m/g; s/\$__interval/15s/g; s/\$__range/1h/g' <<<"$expr")
  query "$promql" >"$work/answer" || fail "Prometheus refused the dashboard expression: $expr"
  [ "$(/usr/bin/python3 -c 'import json,sys; print(len(json.load(open(sys.argv[1]))["data"]["result"]))' "$work/answer")" -gt 0 ] \
    && with_data=$((with_data + 1))
done <"$work/exprs"
say "dashboard: $(wc -l <"$work/exprs") expressions accepted by Prometheus, $with_data with data"

# Grafana, checked without running it: the provisioned datasource is the stack's Prometheus and
# the dashboard provider reads the folder docker-compose.yml mounts.
/usr/bin/python3 - "$work/merged.yml" <<'PY' || fail "Grafana's provisioning does not match the stack"
import json, sys, yaml
stack = yaml.safe_load(open(sys.argv[1]))["services"]
grafana = stack["grafana"]
mounts = {v.split(":")[1] if isinstance(v, str) else v["target"]: v for v in grafana["volumes"]}
base = "dashboards/grafana/provisioning"
assert "/etc/grafana/provisioning" in mounts, "provisioning is not mounted"
source = yaml.safe_load(open(f"{base}/datasources/prometheus.yml"))["datasources"][0]
assert source["url"] == "http://prometheus:9090", f"datasource url {source['url']} is not the prometheus service"
assert "prometheus" in stack, "no prometheus service"
provider = yaml.safe_load(open(f"{base}/dashboards/provider.yml"))["providers"][0]
assert provider["options"]["path"] in mounts, f"provider path {provider['options']['path']} is not mounted"
dashboard = json.load(open("dashboards/spatiallock.json"))
assert dashboard.get("panels"), "the dashboard has no panels"
print("grafana: datasource, provider and dashboard consistent with the stack", file=sys.stderr)
PY
