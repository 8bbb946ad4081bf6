#!/usr/bin/env bash
# bench/envoy-instructions.sh: the instructions Envoy executes per proxied request, for the
# variants of `bench/run.sh envoy` (the same configs: run.sh writes them), each Envoy under
# valgrind's callgrind. Instruction counts do not move with the machine's load the way req/s
# and CPU time do on a shared 2-core box, so a change of a few percent in the module's cost is
# visible. User space only (the socket syscalls are in no variant's count, and are the same
# for all of them); one worker; a few thousand requests after a warm-up, counted by Envoy's
# own downstream_rq_2xx. Caveat: valgrind hides the SHA extensions from the CPU check, so
# SHA-256 (the JWT cache key, the API key hash) runs its portable code and counts several
# times what it costs natively (about 27k instructions per request for a 600-byte JWT).
#
#   bench/envoy-instructions.sh [--identity jwt|api_key] [--seconds N] [--redis] [--dumps DIR] [VARIANT...]
#   bench/envoy-instructions.sh --answers A,B,... [--seconds N]
#   bench/envoy-instructions.sh --modules DIR_A,DIR_B [--rounds N] [--redis] [VARIANT]
#
# Variants: those with no service behind Envoy (plain native modfloor inprocess, the default).
# Needs release binaries (bench/run.sh builds them; this script does not) and valgrind.
# --dumps DIR keeps each variant's callgrind output there (DIR/VARIANT.callgrind, for
# callgrind_annotate). --answers prices the parts of an ext_authz answer: variant (e) (one
# ext_authz call) once per answer A, with noop-grpc answering `--check-answer A` (empty, single,
# single-no-metadata, ...: see `noop-grpc --help`).
# With --modules, two builds of the module (each DIR holds a libtollgate_envoy.so) are compared
# instead, without valgrind, in interleaved rounds of wrk -c32 for the --seconds: per request,
# Envoy's CPU (user and system, every thread, so the kernel's share of the hand-offs too), its
# context switches (voluntary and not) and, with --redis, Redis' CPU and script calls. Variant:
# inprocess.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."
ROOT=$PWD

IDENTITY=jwt SECONDS_=10 REDIS=() VARIANTS=() MODULES="" ROUNDS=3 DUMPS="" ANSWERS=""
while [[ $# -gt 0 ]]; do
  case "$1" in
    --identity) IDENTITY=$2; shift 2 ;;
    --seconds) SECONDS_=$2; shift 2 ;;
    --redis) REDIS=(--redis); shift ;;
    --modules) MODULES=$2; shift 2 ;;
    --rounds) ROUNDS=$2; shift 2 ;;
    --dumps) DUMPS=$2; mkdir -p "$DUMPS"; shift 2 ;;
    --answers) ANSWERS=$2; shift 2 ;;
    -h | --help) sed -n '2,26p' "$0"; exit 0 ;;
    *) VARIANTS+=("$1"); shift ;;
  esac
done
if [[ -n $MODULES ]]; then
  ((${#VARIANTS[@]} > 0)) || VARIANTS=(inprocess)
  for d in ${MODULES//,/ }; do
    [[ -f $d/libtollgate_envoy.so ]] || { echo "no libtollgate_envoy.so in $d" >&2; exit 2; }
  done
elif [[ -n $ANSWERS ]]; then
  VARIANTS=(noop1)
  command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install -y valgrind)" >&2; exit 2; }
else
  ((${#VARIANTS[@]} > 0)) || VARIANTS=(plain native modfloor inprocess)
  command -v valgrind >/dev/null || { echo "needs valgrind (apt-get install -y valgrind)" >&2; exit 2; }
fi
ENVOY=${ENVOY:-$ROOT/.venv/bin/envoy}
[[ -x $ENVOY ]] || { echo "Envoy not found at $ENVOY (run scripts/setup.sh)" >&2; exit 2; }

# run.sh writes every config (and the JWT key, the API key) and keeps them; one short round.
list=$(IFS=,; echo "${VARIANTS[*]}")
kept=$("$ROOT/bench/run.sh" envoy --no-build --identity "$IDENTITY" "${REDIS[@]}" --rounds 1 \
  --duration 1 --warmup 0 --variants "$list" --keep 2>&1 | awk '/^kept: / { print $2 }')
[[ -d $kept ]] || { echo "bench/run.sh did not keep its configs" >&2; exit 1; }
pids=()
cleanup() {
  local p
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$kept"
}
trap cleanup EXIT

# The same client headers as run.sh: a fresh JWT signed with the kept key, and the key.
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
now=$(date +%s)
header=$(printf '{"alg":"RS256","typ":"JWT","kid":"bench"}' | b64url)
payload=$(printf '{"iss":"https://issuer.bench.local","sub":"bench-user","aud":"bench","iat":%d,"exp":%d}' \
  "$now" $((now + 86400)) | b64url)
sig=$(printf '%s' "$header.$payload" | openssl dgst -sha256 -sign "$kept/jwt.key" -binary | b64url)
hdrs=(-H "authorization: Bearer $header.$payload.$sig" -H "accept: application/json")
if [[ $IDENTITY == api_key ]]; then
  hdrs+=(-H "x-api-key: $(python3 -c 'import json, sys; print(json.load(open(sys.argv[1]))["secret"])' "$kept/key.json")")
fi

port() { grep -o 'port_value: [0-9]*' "$1" | sed -n "$2p" | awk '{ print $2 }'; }
up=$(grep -A1 'cluster_name: upstream' "$kept/envoy-${VARIANTS[0]}.yaml" | grep -o 'port_value: [0-9]*' | awk '{ print $2 }')
"$ROOT/target/release/http-upstream" --addr "127.0.0.1:$up" >"$kept/cg-upstream.log" 2>&1 &
pids+=($!)
[[ -z ${REDIS[*]} ]] || {
  rport=$(grep -ho 'redis://127.0.0.1:[0-9]*' "$kept"/config/*.yaml | head -1 | sed 's/.*://')
  redis-server --port "$rport" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --pidfile "$kept/cg-redis.pid" --logfile "$kept/cg-redis.log"
  for _ in $(seq 50); do redis-cli -p "$rport" PING >/dev/null 2>&1 && break; sleep 0.1; done
  pids+=("$(cat "$kept/cg-redis.pid")")
}
export ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$ROOT/target/release
rq() { curl -fsS "http://127.0.0.1:$1/stats?filter=^http.ingress.downstream_rq_2xx$" | awk '{ print $2 }'; }

if [[ -n $MODULES ]]; then
  ticks() { awk '{ s += $14 + $15 } END { print s }' /proc/"$1"/task/*/stat; }
  switches() { awk '/ctxt_switches/ { s += $2 } END { print s }' /proc/"$1"/task/*/status; }
  scripts() {
    redis-cli -p "$rport" INFO commandstats | awk -F'[=,:]' '/^cmdstat_evalsha:/ { print $3 }'
  }
  hz=$(getconf CLK_TCK)
  v=${VARIANTS[0]} cfg=$kept/envoy-${VARIANTS[0]}.yaml
  admin=$(port "$cfg" 1) listen=$(port "$cfg" 2)
  url=http://127.0.0.1:$listen/api/v1/orders/42
  echo "Per request, $v, identity $IDENTITY${REDIS:+, Redis counters}; wrk -t2 -c32 for ${SECONDS_}s, $ROUNDS interleaved rounds"
  for ((r = 1; r <= ROUNDS; r++)); do
    for d in ${MODULES//,/ }; do
      ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$d "$ENVOY" -c "$cfg" --concurrency 1 \
        --disable-hot-restart --log-level warn >"$kept/ab.log" 2>&1 &
      vp=$!
      pids+=("$vp")
      for _ in $(seq 600); do curl -fs "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 && break; sleep 0.2; done
      wrk -t2 -c32 -d3s "${hdrs[@]}" "$url" >/dev/null
      rp=0 rt0=0 rt1=0 e0=0 e1=0
      [[ -z ${REDIS[*]} ]] || { rp=$(cat "$kept/cg-redis.pid"); rt0=$(ticks "$rp"); e0=$(scripts); }
      r0=$(rq "$admin") t0=$(ticks "$vp") c0=$(switches "$vp")
      wrk -t2 -c32 -d"${SECONDS_}s" "${hdrs[@]}" "$url" >/dev/null
      r1=$(rq "$admin") t1=$(ticks "$vp") c1=$(switches "$vp")
      [[ -z ${REDIS[*]} ]] || { rt1=$(ticks "$rp"); e1=$(scripts); }
      kill "$vp"
      wait "$vp" 2>/dev/null || true
      awk -v r="$r" -v d="$d" -v n=$((r1 - r0)) -v s="$SECONDS_" -v t=$((t1 - t0)) -v c=$((c1 - c0)) \
        -v rt=$((rt1 - rt0)) -v e=$((e1 - e0)) -v hz="$hz" 'BEGIN {
          printf "round %d  %-28s %6.0f req/s  envoy %6.1f us/req  %5.2f switches/req", r, d, n / s,
            t * 1e6 / hz / n, c / n
          if (rt > 0) printf "  redis %5.1f us/req, %.2f script calls/req", rt * 1e6 / hz / n, e / n
          printf "\n" }'
    done
  done
  exit 0
fi

echo "Envoy user-space instructions per request (callgrind), identity $IDENTITY${REDIS:+, Redis counters}; wrk -c4 for ${SECONDS_}s per variant"
printf '%-26s %10s %14s %12s\n' variant requests instructions per_request
base=""
runs=("${VARIANTS[@]}")
[[ -z $ANSWERS ]] || runs=(${ANSWERS//,/ })
for run in "${runs[@]}"; do
  v=$run np=""
  if [[ -n $ANSWERS ]]; then
    v=noop1
    authz=$(grep -A1 'cluster_name: authz' "$kept/envoy-noop1.yaml" | grep -o 'port_value: [0-9]*' | awk '{ print $2 }')
    "$ROOT/target/release/noop-grpc" --addr "127.0.0.1:$authz" --check-answer "$run" >"$kept/cg-noop.log" 2>&1 &
    np=$!
    pids+=("$np")
  fi
  cfg=$kept/envoy-$v.yaml
  admin=$(port "$cfg" 1) listen=$(port "$cfg" 2)
  valgrind --tool=callgrind --callgrind-out-file="$kept/cg-$v.out" "$ENVOY" -c "$cfg" \
    --concurrency 1 --disable-hot-restart --log-level warn >"$kept/cg-$v.log" 2>&1 &
  vp=$!
  pids+=("$vp")
  for _ in $(seq 600); do curl -fs "http://127.0.0.1:$admin/ready" >/dev/null 2>&1 && break; sleep 0.5; done
  url=http://127.0.0.1:$listen/api/v1/orders/42
  wrk -t1 -c4 -d5s "${hdrs[@]}" "$url" >/dev/null
  r0=$(rq "$admin")
  callgrind_control -z "$vp" >/dev/null 2>&1
  wrk -t1 -c4 -d"${SECONDS_}s" "${hdrs[@]}" "$url" >"$kept/cg-$v.wrk"
  callgrind_control -d "$vp" >/dev/null 2>&1
  r1=$(rq "$admin")
  kill "$vp"
  wait "$vp" 2>/dev/null || true
  [[ -z $np ]] || { kill "$np"; wait "$np" 2>/dev/null || true; }
  dump=$(ls -t "$kept/cg-$v.out".* | head -1)
  ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
  [[ -z $DUMPS ]] || cp "$dump" "$DUMPS/$run.callgrind"
  rm -f "$kept/cg-$v.out".*
  n=$((r1 - r0))
  ((n > 0)) || { echo "$v: no request answered 2xx (see $kept/cg-$v.log)" >&2; exit 1; }
  per=$((ir / n))
  [[ -n $base ]] || base=$per
  printf '%-26s %10d %14d %12d  (%.2fx %s)\n' "$run" "$n" "$ir" "$per" \
    "$(awk -v a="$per" -v b="$base" 'BEGIN { print a / b }')" "${runs[0]}"
done
