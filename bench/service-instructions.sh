#!/usr/bin/env bash
# bench/service-instructions.sh: the instructions a service executes per ShouldRateLimit call,
# noop-grpc against tollgate-ratelimit (memory store, bench/config/ratelimit.yaml and its
# limits), each under valgrind's callgrind and driven by grpc-load as `bench/run.sh direct`
# drives it (32 in flight on one connection, the same two descriptors, one matching). A figure
# the machine's load does not move, unlike CPU time on a shared 2-core box. User space only:
# the kernel work of each wake-up, which tollgate-ratelimit's `grpc_threads` saves and the
# no-op's multi-threaded runtime does not, is in neither count.
#
#   bench/service-instructions.sh [--seconds N] [RATELIMIT_BINARY]
#
# RATELIMIT_BINARY defaults to target/release/tollgate-ratelimit (another build can be given,
# to compare two). Needs release binaries (bench/run.sh builds them) and valgrind.
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

SECONDS_RUN=10 BIN=target/release/tollgate-ratelimit
while [[ $# -gt 0 ]]; do
  case "$1" in
    --seconds) SECONDS_RUN=$2; shift 2 ;;
    -h | --help) sed -n '2,13p' "$0"; exit 0 ;;
    *) BIN=$1; shift ;;
  esac
done
REL=target/release
for b in "$REL/noop-grpc" "$REL/grpc-load" "$BIN"; do
  [[ -x $b ]] || { echo "missing $b (cargo build --release -p tollgate-bench -p tollgate-ratelimit)" >&2; exit 2; }
done
command -v callgrind_control >/dev/null || { echo "needs valgrind" >&2; exit 2; }

WORK=$(mktemp -d)
PIDS=()
cleanup() {
  for p in "${PIDS[@]}"; do kill "$p" 2>/dev/null || true; done
  rm -rf "$WORK"
}
trap cleanup EXIT
port() { python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])'; }

NOOP_PORT=$(port) GRPC_PORT=$(port) HTTP_PORT=$(port)
sed -e "s/127.0.0.1:18091/127.0.0.1:$GRPC_PORT/" -e "s/127.0.0.1:18092/127.0.0.1:$HTTP_PORT/" \
  -e "s#path: bench/config/limits#path: $PWD/bench/config/limits#" bench/config/ratelimit.yaml \
  >"$WORK/ratelimit.yaml"

load() { # load PORT SECONDS
  "$REL/grpc-load" --target "127.0.0.1:$1" --api ratelimit --concurrency 32 --connections 1 \
    --duration "$2s" --domain bench --descriptor generic_key=bench \
    --descriptor remote_address=127.0.0.1
}

measure() { # measure NAME PORT COMMAND...: instructions per call, after a 3 s warm-up
  local name=$1 port=$2 vp out calls ir dump
  shift 2
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.$name.%p" "$@" >"$WORK/$name.log" 2>&1 &
  vp=$!
  PIDS+=("$vp")
  for _ in $(seq 300); do (echo >"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break; sleep 0.5; done
  load "$port" 3 >/dev/null
  callgrind_control -z "$vp" >/dev/null 2>&1
  out=$(load "$port" "$SECONDS_RUN")
  callgrind_control -d "$vp" >/dev/null 2>&1
  kill "$vp" 2>/dev/null || true
  wait "$vp" 2>/dev/null || true
  calls=$(grep '^RESULT' <<<"$out" | grep -o ' calls=[0-9]*' | cut -d= -f2)
  [[ -n $calls && $calls -gt 0 ]] && grep -q '^RESULT.* errors=0 ' <<<"$out" ||
    { echo "$name: calls failed: $out" >&2; exit 1; }
  dump=$(ls -t "$WORK"/cg."$name".*.* | head -1)
  ir=$(awk '/^(summary|totals):/ { print $2; exit }' "$dump")
  printf '%-20s %8d %14d %10d\n' "$name" "$calls" "$ir" $((ir / calls))
}

echo "instructions per ShouldRateLimit call (callgrind, user space), grpc-load -c32 on one connection for ${SECONDS_RUN}s"
printf '%-20s %8s %14s %10s\n' service calls instructions per_call
measure noop-grpc "$NOOP_PORT" "$REL/noop-grpc" --addr "127.0.0.1:$NOOP_PORT"
measure tollgate-ratelimit "$GRPC_PORT" "$BIN" serve --config "$WORK/ratelimit.yaml"
