#!/usr/bin/env bash
# Soak of Tollgate in-process: Envoy 1.40 with the release module on the shipped example
# (deploy/envoy/envoy-module.yaml loading deploy/config/authz-inprocess.yaml, two workers) under
# wrk for a while, with many credentials: --tokens JWTs (distinct subjects, signed by a key this
# script makes, verified in the module) and --keys API keys (created through the admin API of a
# tollgate-authz that shares the module's Redis key store), rotated request by request, plus
# anonymous traffic on the rate-limited /limited. In the middle, every few seconds, the limits
# file and the authz config are rewritten (each a reload, every other one a bad file that must
# be refused). Counters in memory or (--redis) in the same Redis. Fails if Envoy exits, if the
# module counts a failure, or if Envoy's resident memory grows by more than --max-growth
# percent between the end of the warm-up and the end of the run.
#
#   scripts/module-soak.sh [--seconds 60] [--redis] [--max-growth 20] [--tokens 200] [--keys 50]
#                          [--no-build]   (use the release binaries already in target/release)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
root=$PWD
SECONDS_TOTAL=60 REDIS=0 MAX_GROWTH=20 TOKENS=200 KEYS=50 BUILD=1
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) SECONDS_TOTAL=$2; shift 2 ;;
    --redis) REDIS=1; shift ;;
    --max-growth) MAX_GROWTH=$2; shift 2 ;;
    --tokens) TOKENS=$2; shift 2 ;;
    --keys) KEYS=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    *) echo "usage: $0 [--seconds N] [--redis] [--max-growth PCT] [--tokens N] [--keys N] [--no-build]" >&2; exit 2 ;;
  esac
done
for tool in wrk redis-server openssl xxd; do
  command -v "$tool" >/dev/null || { echo "$tool not found" >&2; exit 1; }
done
if [[ $BUILD == 1 ]]; then
  # As bench/run.sh builds them (together), so one serves both.
  cargo build --release -p tollgate-bench -p tollgate-authz -p tollgate-ratelimit -p tollgate-envoy >&2
fi
rel=$root/target/release
work=$(mktemp -d)
pids=()
cleanup() {
  for pid in "${pids[@]}"; do kill "$pid" 2>/dev/null || true; done
  wait 2>/dev/null || true
  rm -rf "$work"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
wait_http() { for _ in $(seq 300); do curl -fsS -o /dev/null "$1" 2>/dev/null && return 0; sleep 0.1; done; echo "FAIL: $1 never answered" >&2; exit 1; }
listen=$(port) admin=$(port) upstream=$(port) redis_port=$(port) authz_grpc=$(port) authz_http=$(port) authz_admin=$(port)
cp -r deploy/config/limits "$work/limits"
# The shipped per-address limit (100 a second) would answer nearly every request of wrk's one
# address from the over-limit cache, before any credential is verified or any counter reaches
# Redis: raised here, so that the credentials and the counter store carry the load.
sed -i '/key: remote_address/,/algorithm:/ s/requests_per_unit: 100$/requests_per_unit: 1000000/' "$work/limits/gateway.yaml"
grep -q 'requests_per_unit: 1000000' "$work/limits/gateway.yaml" || { echo "the shipped per-address limit moved" >&2; exit 1; }
good_limits=$(cat "$work/limits/gateway.yaml")

# Redis: the key store shared by the module and the admin service, and with --redis the counters.
redis-server --port "$redis_port" --bind 127.0.0.1 --save "" --appendonly no --dir "$work" >"$work/redis.log" 2>&1 &
pids+=($!)
redis_url="redis://127.0.0.1:$redis_port"
for _ in $(seq 100); do redis-cli -p "$redis_port" ping >/dev/null 2>&1 && break; sleep 0.1; done

# The JWT issuer: a fresh RSA key, inline in the authz config; TOKENS tokens, one subject each.
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$work/jwt.key" 2>/dev/null
n=$(openssl rsa -in "$work/jwt.key" -noout -modulus | cut -d= -f2 | xxd -r -p | b64url)
jwk='{"kty":"RSA","alg":"RS256","use":"sig","kid":"soak","n":"'$n'","e":"AQAB"}'
now=$(date +%s)
header=$(printf '{"alg":"RS256","typ":"JWT","kid":"soak"}' | b64url)
: >"$work/credentials"
for i in $(seq "$TOKENS"); do
  payload=$(printf '{"iss":"https://issuer.soak.local","sub":"soak-user-%d","aud":"soak","iat":%d,"exp":%d}' \
    "$i" "$now" $((now + 86400)) | b64url)
  sig=$(printf '%s.%s' "$header" "$payload" | openssl dgst -sha256 -sign "$work/jwt.key" -binary | b64url)
  printf 'authorization\tBearer %s.%s.%s\n' "$header" "$payload" "$sig" >>"$work/credentials"
done

# The admin service (its own policy unused): KEYS keys through `tollgate-authz keys create`.
printf 'bench-soak-admin-%s\n' "$(openssl rand -hex 16)" >"$work/admin-token"
cat >"$work/admin.yaml" <<EOF
server: {grpc_addr: "127.0.0.1:$authz_grpc", http_addr: "127.0.0.1:$authz_http"}
log: {format: text, level: warn}
api_keys:
  store: {type: redis, url: "$redis_url"}
admin: {addr: "127.0.0.1:$authz_admin", token_file: "$work/admin-token"}
EOF
"$rel/tollgate-authz" serve --config "$work/admin.yaml" >"$work/authz.log" 2>&1 &
pids+=($!)
wait_http "http://127.0.0.1:$authz_http/readyz"
for i in $(seq "$KEYS"); do
  plan=gold
  ((i % 2)) || plan=silver
  # A loaded machine can starve Redis past the key store's deadline (503): tried three times.
  for attempt in 1 2 3; do
    "$rel/tollgate-authz" keys create --admin-url "http://127.0.0.1:$authz_admin" --token-file "$work/admin-token" \
      --name "soak-$i" --owner "soak-key-$i" --plan "$plan" --json >"$work/key.json" && break
    ((attempt < 3)) || { echo "FAIL: cannot create key soak-$i" >&2; exit 1; }
    sleep 0.5
  done
  python3 -c 'import json, sys; print("x-api-key\t" + json.load(sys.stdin)["secret"])' <"$work/key.json" >>"$work/credentials"
done

# The module's authz config: the shipped example with the soak's key store, issuer, limits and
# counter store.
counters="{ type: memory }"
[[ $REDIS == 0 ]] || counters="{ type: redis, url: \"$redis_url\" }"
sed -e "s|    type: embedded|    type: redis|" -e "s|    path: .tollgate/module-keys.redb|    url: \"$redis_url\"|" \
  -e "s|limits: { path: deploy/config/limits }|limits: { path: $work/limits }|" \
  -e "s|store: { type: memory }|store: $counters|" deploy/config/authz-inprocess.yaml >"$work/authz-good.yaml"
cat >>"$work/authz-good.yaml" <<EOF
jwt:
  issuers:
    - issuer: https://issuer.soak.local
      audiences: [soak]
      algorithms: [RS256]
      keys: [$jwk]
EOF
cp "$work/authz-good.yaml" "$work/authz.yaml"
sed -e "s|port_value: 10000|port_value: $listen|" -e "s|port_value: 9901|port_value: $admin|" \
  -e "s|port_value: 8000|port_value: $upstream|" -e "s|address: 0.0.0.0|address: 127.0.0.1|" \
  -e "s|config: deploy/config/authz-inprocess.yaml|config: $work/authz.yaml|" \
  deploy/envoy/envoy-module.yaml >"$work/envoy.yaml"
"$rel/http-upstream" --addr "127.0.0.1:$upstream" >"$work/upstream.log" 2>&1 &
pids+=($!)
ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$rel" .venv/bin/envoy -c "$work/envoy.yaml" \
  --concurrency 2 --disable-hot-restart --log-level warn >"$work/envoy.log" 2>&1 &
envoy=$!
pids+=($envoy)
wait_http "http://127.0.0.1:$admin/ready"
rss() { awk '/^VmRSS:/ { print $2 }' "/proc/$envoy/status"; }

# Every request carries the next credential of the list (tab-separated header and value).
cat >"$work/rotate.lua" <<'EOF'
local creds, i = {}, 0
function init(args)
  for line in io.lines(args[1]) do
    local name, value = line:match("^([^\t]+)\t(.*)$")
    creds[#creds + 1] = { [name] = value }
  end
  i = math.random(#creds)
end
function request()
  i = i % #creds + 1
  return wrk.format("GET", "/api/orders", creds[i])
end
EOF
api=(-s "$work/rotate.lua" "http://127.0.0.1:$listen/api/orders" -- "$work/credentials")

# Warm-up, then the measured run with reloads in the middle.
wrk -t2 -c32 -d5s "${api[@]}" >/dev/null
start_rss=$(rss)
wrk -t2 -c64 -d"${SECONDS_TOTAL}s" --latency "${api[@]}" >"$work/wrk-api.txt" 2>&1 &
w1=$!
wrk -t1 -c8 -d"${SECONDS_TOTAL}s" "http://127.0.0.1:$listen/limited" >"$work/wrk-limited.txt" 2>&1 &
w2=$!
reloads=0 peak=$start_rss
while kill -0 "$w1" 2>/dev/null; do
  sleep 2
  kill -0 "$envoy" || { echo "FAIL: Envoy exited"; tail -n 40 "$work/envoy.log"; exit 1; }
  if ((reloads % 2 == 0)); then
    printf '%s\n# reload %d\n' "$good_limits" "$reloads" >"$work/limits/gateway.yaml"
    { cat "$work/authz-good.yaml"; printf '# reload %d\n' "$reloads"; } >"$work/authz.yaml"
  else
    printf 'domain: gateway\ndescriptors: [{key: route, rate_limit: {unit: fortnight}}]\n' >"$work/limits/gateway.yaml"
    sed 's|^  rules:$|  rulez:|' "$work/authz-good.yaml" >"$work/authz.yaml"
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
echo "counters: $counters; keys in Redis; ${SECONDS_TOTAL}s; $TOKENS JWTs and $KEYS API keys rotated"
echo "limits and authz config rewritten $reloads times each ($refused bad limits files refused)"
grep -E "Requests/sec|requests in|Non-2xx|Socket errors" "$work/wrk-api.txt" "$work/wrk-limited.txt" | sed "s|^$work/||"
echo "$stats"
echo "Envoy RSS: after warm-up ${start_rss} kB, peak ${peak} kB, end ${end_rss} kB (growth ${growth}%)"
failures=$(awk -F': ' '/^tollgate.failures/ { s += $2 } END { print s + 0 }' <<<"$stats")
((failures == 0)) || { echo "FAIL: $failures module failures"; exit 1; }
allowed=$(awk -F': ' '$1 == "tollgate.decisions.reason.allowed" { print $2 }' <<<"$stats")
((${allowed:-0} > 0)) || { echo "FAIL: no request was authenticated"; exit 1; }
awk -v g="$growth" -v m="$MAX_GROWTH" 'BEGIN { exit !(g > m) }' && { echo "FAIL: memory grew ${growth}% (> ${MAX_GROWTH}%)"; exit 1; }
echo "OK"
