#!/usr/bin/env bash
# Soak of Tollgate in-process: Envoy 1.40 with the release module on the shipped example
# (deploy/envoy/envoy-module.yaml, two workers) under wrk for a while, the limits file
# rewritten every few seconds (each a reload, every other one a bad file that must be refused),
# with the counters in memory or (--redis) in a Redis this script starts. Fails if Envoy
# exits, if the module counts a failure, or if Envoy's resident memory grows by more
# than --max-growth percent between the end of the warm-up and the end of the run.
#
#   scripts/module-soak.sh [--seconds 60] [--redis] [--max-growth 20]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
SECONDS_TOTAL=60 REDIS=0 MAX_GROWTH=20
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) SECONDS_TOTAL=$2; shift 2 ;;
    --redis) REDIS=1; shift ;;
    --max-growth) MAX_GROWTH=$2; shift 2 ;;
    *) echo "usage: $0 [--seconds N] [--redis] [--max-growth PCT]" >&2; exit 2 ;;
  esac
done
command -v wrk >/dev/null || { echo "wrk not found (apt-get install -y wrk)" >&2; exit 1; }
# One package at a time: built together, their features unify and both rebuild.
cargo build --release -p tollgate-envoy >&2
cargo build --release -p tollgate-bench >&2
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listen=$(port) admin=$(port) upstream=$(port)
cp -r deploy/config/limits "$work/limits"
good=$(cat "$work/limits/gateway.yaml")
store="{type: memory}"
if [[ $REDIS == 1 ]]; then
  redis_port=$(port)
  redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
  pids+=($!)
  store="{type: redis, url: \"redis://127.0.0.1:$redis_port\"}"
fi
sed -e "s|port_value: 10000|port_value: $listen|" -e "s|port_value: 9901|port_value: $admin|" \
  -e "s|port_value: 8000|port_value: $upstream|" -e "s|address: 0.0.0.0|address: 127.0.0.1|" \
  -e "s|limits: {path: deploy/config/limits}|limits: {path: $work/limits}|" \
  -e "s|store: {type: memory}|store: $store|" deploy/envoy/envoy-module.yaml >"$work/envoy.yaml"
"$root/target/release/http-upstream" --addr "127.0.0.1:$upstream" >"$work/upstream.log" 2>&1 &
pids+=($!)
ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$root/target/release" .venv/bin/envoy -c "$work/envoy.yaml" \
  --concurrency 2 --disable-hot-restart --log-level warn >"$work/envoy.log" 2>&1 &
envoy=$!
pids+=($envoy)
for _ in $(seq 300); do curl -fsS -o /dev/null "http://127.0.0.1:$admin/ready" 2>/dev/null && break; sleep 0.1; done
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$envoy/status"; }

# Warm-up, then the measured run with reloads in the middle.
wrk -t2 -c32 -d5s "http://127.0.0.1:$listen/orders" >/dev/null
start_rss=$(rss)
wrk -t2 -c64 -d"${SECONDS_TOTAL}s" "http://127.0.0.1:$listen/orders" >"$work/wrk-orders.txt" 2>&1 &
w1=$!
wrk -t1 -c8 -d"${SECONDS_TOTAL}s" "http://127.0.0.1:$listen/limited" >"$work/wrk-limited.txt" 2>&1 &
w2=$!
reloads=0 peak=$start_rss
while kill -0 "$w1" 2>/dev/null; do
  sleep 2
  kill -0 "$envoy" || { echo "FAIL: Envoy exited"; tail -n 40 "$work/envoy.log"; exit 1; }
  if ((reloads % 2 == 0)); then
    printf '%s\n# reload %d\n' "$good" "$reloads" >"$work/limits/gateway.yaml"
  else
    printf 'domain: gateway\ndescriptors: [{key: route, rate_limit: {unit: fortnight}}]\n' >"$work/limits/gateway.yaml"
  fi
  reloads=$((reloads + 1))
  r=$(rss); ((r > peak)) && peak=$r
done
wait "$w1" "$w2" || true
end_rss=$(rss)
kill -0 "$envoy" || { echo "FAIL: Envoy exited"; exit 1; }
refused=$(grep -c "keeping its last good version" "$work/envoy.log" || true)
stats=$(curl -fsS "http://127.0.0.1:$admin/stats?filter=^tollgate\\.")
growth=$(awk -v a="$start_rss" -v b="$end_rss" 'BEGIN { printf "%.1f", (b - a) * 100 / a }')
echo "store: $store; ${SECONDS_TOTAL}s; limits rewritten $reloads times ($refused bad files refused)"
grep -E "Requests/sec|requests in|Non-2xx" "$work/wrk-orders.txt" "$work/wrk-limited.txt" | sed 's|.*/||'
echo "$stats"
echo "Envoy RSS: after warm-up ${start_rss} kB, peak ${peak} kB, end ${end_rss} kB (growth ${growth}%)"
failures=$(awk -F': ' '/^tollgate.failures/ { s += $2 } END { print s + 0 }' <<<"$stats")
((failures == 0)) || { echo "FAIL: $failures module failures"; exit 1; }
awk -v g="$growth" -v m="$MAX_GROWTH" 'BEGIN { exit !(g > m) }' && { echo "FAIL: memory grew ${growth}% (> ${MAX_GROWTH}%)"; exit 1; }
echo "OK"
