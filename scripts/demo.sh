#!/usr/bin/env bash
# Runs the gateway on this machine: Envoy (deploy/envoy/envoy.yaml) in front of a demo echo
# upstream, with tollgate-authz and tollgate-ratelimit wired in, on the embedded defaults
# (counters in memory, API keys in an on-disk store under .tollgate/; no Redis needed).
# `scripts/demo.sh single-call` runs the single-call shape instead: Envoy on
# deploy/envoy/single-call.yaml and tollgate-authz alone, counting the limits itself.
# Installs what is missing first. Ctrl-C stops everything.
#
# `scripts/demo.sh inprocess` runs Tollgate in-process instead: Envoy loads the dynamic module
# (deploy/envoy/envoy-module.yaml) and rate-limits in its own workers, with no service.
set -euo pipefail
shape=${1:-pair}
case $shape in
  pair | single-call) ;;
  *)
    echo "usage: scripts/demo.sh [pair|single-call]" >&2
    exit 2
    ;;
esac
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
shape=${1:-pair}
case "$shape" in
  pair | inprocess) ;;
  *) echo "usage: scripts/demo.sh [inprocess]" >&2; exit 2 ;;
esac

scripts/setup.sh
if [[ $shape == inprocess ]]; then
  exec scripts/demo-inprocess.sh
fi
echo "demo: building the binaries (cargo's progress below; the first build takes a few minutes)…"
cargo build -p tollgate-authz -p tollgate-ratelimit -p tollgate-tests --bin tollgate-authz \
  --bin tollgate-ratelimit --bin echo-upstream

state="$root/.tollgate"
logs="$state/logs"
mkdir -p "$logs"
chmod 700 "$state"
# The admin API's credential: generated once, kept in a file only the owner can read.
if [[ ! -s "$state/admin-token" ]]; then
  (umask 077 && head -c 32 /dev/urandom | base64 | tr -d '/+=\n' >"$state/admin-token")
fi

pids=()
cleanup() {
  trap - INT TERM EXIT
  echo
  echo "demo: stopping…"
  for pid in "${pids[@]}"; do kill -TERM "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
}
trap cleanup EXIT
trap 'cleanup; exit 0' INT TERM

start() { # name, command...
  local name=$1
  shift
  "$@" >"$logs/$name.log" 2>&1 &
  pids+=($!)
}

wait_http() { # name, url
  local name=$1 url=$2 deadline=$((SECONDS + 60))
  until curl -fsS -o /dev/null "$url" 2>/dev/null; do
    if ((SECONDS > deadline)); then
      echo "demo: $name did not become ready; its log ($logs/$name.log):" >&2
      tail -n 40 "$logs/$name.log" >&2
      exit 1
    fi
    sleep 0.2
  done
}

bin="$root/target/debug"
start echo-upstream "$bin/echo-upstream" 127.0.0.1:8000
authz_sets=(--set "admin.token_file=$state/admin-token" --set "api_keys.store.path=$state/keys.redb")
if [[ $shape == pair ]]; then
  start ratelimit "$bin/tollgate-ratelimit" serve --config deploy/config/ratelimit.yaml
  start authz "$bin/tollgate-authz" serve --config deploy/config/authz.yaml "${authz_sets[@]}" \
    --set "admin.ratelimit_metrics_url=http://127.0.0.1:8082/metrics" \
    --set "admin.ratelimit_config_url=http://127.0.0.1:8082/config"
  wait_http ratelimit http://127.0.0.1:8082/readyz
  envoy_config=deploy/envoy/envoy.yaml
  limiter="tollgate-ratelimit     gRPC 127.0.0.1:8081   metrics http://127.0.0.1:8082/metrics   limits http://127.0.0.1:8082/config"
else
  start authz "$bin/tollgate-authz" serve --config deploy/config/authz-single-call.yaml "${authz_sets[@]}"
  envoy_config=deploy/envoy/single-call.yaml
  limiter="rate limits            counted by tollgate-authz (single-call mode, deploy/config/limits/)"
fi
wait_http authz http://127.0.0.1:9002/readyz
start envoy .venv/bin/envoy -c "$envoy_config" --concurrency 1 --disable-hot-restart --log-level warn
wait_http envoy http://127.0.0.1:9901/ready

cat <<MSG

Tollgate is running ($shape: $envoy_config).
  gateway (Envoy)        http://127.0.0.1:10000
  Envoy admin            http://127.0.0.1:9901
  tollgate-authz         gRPC 127.0.0.1:9001   metrics http://127.0.0.1:9002/metrics
  $limiter
  web console            http://127.0.0.1:9092/console/   (log in with the credential in $state/admin-token)
  logs                   $logs/

Try:
  # allowed: a public path reaches the upstream, which echoes what it received
  curl -i http://127.0.0.1:10000/hello
  # denied: /api needs a credential (401 with WWW-Authenticate)
  curl -i http://127.0.0.1:10000/api/orders
  # rate limited: /limited allows 5 requests a minute; the 6th gets 429 with RateLimit headers
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:10000/limited; done

  # API keys: create one on the silver plan (3 requests a minute), then call /api with it; the
  # upstream sees x-tollgate-subject/-plan/-scopes, and the 4th call within a minute gets 429
  export TOLLGATE_ADMIN_TOKEN_FILE=$state/admin-token
  $bin/tollgate-authz keys create --name demo --owner alice --plan silver --scope read
  curl -i http://127.0.0.1:10000/api/orders -H "x-api-key: <the key printed above>"
  $bin/tollgate-authz keys list

Press Ctrl-C to stop.
MSG

# Stop when any process exits, so a crash is not hidden.
wait -n "${pids[@]}" || true
echo "demo: a process exited unexpectedly; see $logs/" >&2
exit 1
