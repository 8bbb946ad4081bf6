#!/usr/bin/env bash
# `scripts/demo.sh inprocess`: Envoy with Tollgate in-process (the `tollgate_envoy` dynamic
# module on deploy/envoy/envoy-module.yaml, loading deploy/config/authz-inprocess.yaml) in front
# of the demo echo upstream. The authz policy and API keys in the module, rate limits from
# deploy/config/limits, counters in memory, no service to run. Ctrl-C stops everything.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD

echo "demo: building the module and the upstream (cargo's progress below)…"
cargo build -p tollgate-envoy -p tollgate-tests --bin echo-upstream

logs="$root/.tollgate/logs"
mkdir -p "$logs"
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

bin="$root/target/debug"
"$bin/echo-upstream" 127.0.0.1:8000 >"$logs/echo-upstream.log" 2>&1 &
pids+=($!)
# The example's paths (its authz config, limits and key store) are relative to Envoy's working
# directory: the project root.
ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$bin" .venv/bin/envoy -c deploy/envoy/envoy-module.yaml \
  --concurrency 2 --disable-hot-restart --log-level warn >"$logs/envoy.log" 2>&1 &
pids+=($!)
deadline=$((SECONDS + 60))
until curl -fsS -o /dev/null http://127.0.0.1:9901/ready 2>/dev/null; do
  if ((SECONDS > deadline)); then
    echo "demo: envoy did not become ready; its log ($logs/envoy.log):" >&2
    tail -n 40 "$logs/envoy.log" >&2
    exit 1
  fi
  sleep 0.2
done

cat <<MSG

Tollgate is running in-process (Envoy 1.40 + libtollgate_envoy.so).
  gateway (Envoy)        http://127.0.0.1:10000
  Envoy admin            http://127.0.0.1:9901   module stats: http://127.0.0.1:9901/stats?filter=^tollgate
  logs                   $logs/

Try:
  # rate limited: /limited allows 5 requests a minute; the 6th gets 429 with RateLimit headers
  for i in 1 2 3 4 5 6; do curl -s -o /dev/null -w '%{http_code}\n' http://127.0.0.1:10000/limited; done
  curl -i http://127.0.0.1:10000/limited
  # change deploy/config/limits/gateway.yaml: the module reloads it without a restart
  # the policy: /api needs a credential (401 with its WWW-Authenticate challenge)
  curl -i http://127.0.0.1:10000/api/orders

Press Ctrl-C to stop.
MSG

wait -n "${pids[@]}" || true
echo "demo: a process exited unexpectedly; see $logs/" >&2
exit 1
