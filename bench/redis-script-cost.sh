#!/usr/bin/env bash
# bench/redis-script-cost.sh: Redis' own CPU per call of the rate-limit script, per algorithm,
# for the working tree's script and the one at a git revision (default: the last counter
# layout 1 script), in interleaved rounds. One hit per call (the common case: one descriptor
# matches), 1,000 keys, `redis-benchmark -c 32 -P 16` as a pipelined client. Also prints the
# floor on this machine: an EVALSHA that does nothing, and one that does a GET and a SET PX.
# With --instructions, Redis runs under valgrind's callgrind and the figure is the instructions
# it executes per call: slower, but the same on a busy machine as on a quiet one (user space
# only: the read/write syscalls are not in it), so small changes can be compared.
#
#   bench/redis-script-cost.sh [--rounds N] [--calls N] [--instructions] [REV]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS=3 CALLS=200000 REV=246a7a3 INSTR=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --calls) CALLS=$2; shift 2 ;;
    --instructions) INSTR=1; shift ;;
    -h | --help) sed -n '2,12p' "$0"; exit 0 ;;
    *) REV=$1; shift ;;
  esac
done

WORK=$(mktemp -d)
PORT=$(python3 -c 'import socket; s = socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
cleanup() {
  [[ -f $WORK/redis.pid ]] && kill "$(cat "$WORK/redis.pid")" 2>/dev/null || true
  rm -rf "$WORK"
}
trap cleanup EXIT

old_path=limiter/src/store/script.lua
git show "$REV:$old_path" >"$WORK/old.lua" 2>/dev/null || git show "$REV:limiter/src/store/redis/script.lua" >"$WORK/old.lua"
cp limiter/src/store/redis/script.lua "$WORK/new.lua"
# Layout 2 takes a deadline after now; layout 1 does not.
old_extra=() new_extra=(0)
grep -q deadline_us "$WORK/old.lua" && old_extra=(0)

if [[ $INSTR == 1 ]]; then
  command -v callgrind_control >/dev/null || { echo "--instructions needs valgrind" >&2; exit 2; }
  [[ $CALLS -le 20000 ]] || CALLS=5000
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" redis-server --port "$PORT" \
    --bind 127.0.0.1 --save "" --appendonly no >"$WORK/redis.log" 2>&1 &
  echo $! >"$WORK/redis.pid"
else
  redis-server --port "$PORT" --bind 127.0.0.1 --save "" --appendonly no --daemonize yes \
    --pidfile "$WORK/redis.pid" --logfile "$WORK/redis.log"
fi
cli() { redis-cli -p "$PORT" "$@"; }
for _ in $(seq 100); do cli PING >/dev/null 2>&1 && break; sleep 0.2; done
# The measure before and after a run: Redis' CPU seconds, or (callgrind) the instructions since
# the counters were zeroed, read from the dump the second call asks for.
cpu() {
  if [[ $INSTR == 0 ]]; then
    cli INFO cpu | awk -F: '/^used_cpu_(user|sys):/ { s += $2 } END { printf "%.6f", s }'
  elif [[ ${1:-} == start ]]; then
    callgrind_control -z "$(cat "$WORK/redis.pid")" >/dev/null && echo 0
  else
    callgrind_control -d "$(cat "$WORK/redis.pid")" >/dev/null
    local dump
    dump=$(ls -t "$WORK"/cg.*.* | head -1)
    awk '/^(summary|totals):/ { print $2 * 1e-9; exit }' "$dump"
    rm -f "$dump"
  fi
}
per_call() { awk -v a="$1" -v b="$2" -v n="$CALLS" 'BEGIN { printf "%.2f", (b - a) * 1e6 / n }'; }
median() { sort -g | awk '{ v[NR] = $1 } END { print (NR % 2) ? v[(NR + 1) / 2] : (v[NR / 2] + v[NR / 2 + 1]) / 2 }'; }

OLD=$(cli SCRIPT LOAD "$(cat "$WORK/old.lua")")
NEW=$(cli SCRIPT LOAD "$(cat "$WORK/new.lua")")
NOOP=$(cli SCRIPT LOAD 'return 1')
GETSET=$(cli SCRIPT LOAD "redis.call('GET', KEYS[1]) redis.call('SET', KEYS[1], string.rep('x', 17), 'PX', 60000) return 1")
NOW=1800000000000000

run() { # run NAME SHA ARGS...: one measurement, appended to results
  local name=$1 sha=$2 c0 c1
  shift 2
  cli FLUSHALL >/dev/null
  c0=$(cpu start)
  redis-benchmark -p "$PORT" -n "$CALLS" -c 32 -P 16 -r 1000 -q EVALSHA "$sha" 1 "tollgate:{bench|k=__rand_int__}" "$@" >/dev/null
  c1=$(cpu)
  printf '%s\t%s\n' "$name" "$(per_call "$c0" "$c1")" >>"$WORK/results.tsv"
}

echo "redis-benchmark -n $CALLS -c 32 -P 16 -r 1000, $ROUNDS interleaved rounds; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for ((r = 1; r <= ROUNDS; r++)); do
  run floor-noop "$NOOP"
  run floor-get+set "$GETSET"
  for alg in 0:sliding_window 1:fixed_window 2:token_bucket 3:gcra; do
    code=${alg%%:*} name=${alg#*:}
    args=("$code" 100000000 1000000 100000000 1 0)
    run "$name $REV" "$OLD" 0 "$NOW" "${old_extra[@]}" "${args[@]}"
    run "$name working-tree" "$NEW" 0 "$NOW" "${new_extra[@]}" "${args[@]}"
  done
done
echo
unit="Redis CPU per call, median of $ROUNDS rounds (us)"
[[ $INSTR == 0 ]] || unit="Redis instructions per call, median of $ROUNDS rounds (thousands)"
echo "$unit:"
cut -f1 "$WORK/results.tsv" | awk '!seen[$0]++' | while read -r name; do
  printf '  %-30s %6s\n' "$name" "$(awk -F'\t' -v n="$name" '$1 == n { print $2 }' "$WORK/results.tsv" | median)"
done
