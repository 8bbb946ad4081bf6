#!/usr/bin/env bash
# bench/redis-script-cost.sh: Redis' own CPU per call of the rate-limit script, per algorithm,
# for the working tree's script and the one at a git revision (default: the last script that
# took its arguments as separate strings), in interleaved rounds. One hit per call (the common
# case: one descriptor matches) on one of 1,000 existing keys, with a deadline as the service
# sends one. The calls are generated as RESP (the packed argument is binary, which
# redis-benchmark cannot send) and fed by `redis-cli --pipe`. The working tree's script is also
# run with 4 requests per call, as the service's connection merges the calls queued together
# (figures stay per request), on 4 of the 1,000 keys and on one busy key. Also prints the floor
# on this machine: an EVALSHA that does nothing (with one short argument), one that reads TIME,
# and one that reads TIME, GETs and SETs PX.
# With --instructions, Redis runs under valgrind's callgrind and the figure is the instructions
# it executes per call: slower, but the same on a busy machine as on a quiet one (user space
# only: the read/write syscalls are not in it), so small changes can be compared; Redis then
# runs its timer at 1 Hz, since valgrind's slowness would otherwise inflate the timer's share.
#
#   bench/redis-script-cost.sh [--rounds N] [--calls N] [--instructions] [REV]
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

ROUNDS=3 CALLS=200000 REV=11e2380 INSTR=0
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --calls) CALLS=$2; shift 2 ;;
    --instructions) INSTR=1; shift ;;
    -h | --help) sed -n '2,17p' "$0"; exit 0 ;;
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

git show "$REV:limiter/src/store/redis/script.lua" >"$WORK/old.lua" 2>/dev/null ||
  git show "$REV:limiter/src/store/script.lua" >"$WORK/old.lua"
cp limiter/src/store/redis/script.lua "$WORK/new.lua"
# How a script takes its arguments: one packed string, or strings (with a deadline from
# counter layout 2 on).
format() {
  if grep -q "'<HBHdd'" "$1"; then echo merged
  elif grep -q "'<HBHdss'" "$1"; then echo merged-strings
  elif grep -q 'local P = ARGV\[1\]' "$1"; then echo packed
  elif grep -q deadline_us "$1"; then echo strings
  else echo strings-nodeadline; fi
}

[[ $INSTR == 0 ]] || { [[ $CALLS -le 20000 ]] || CALLS=5000; }
if [[ $INSTR == 1 ]]; then
  command -v callgrind_control >/dev/null || { echo "--instructions needs valgrind" >&2; exit 2; }
  valgrind --tool=callgrind --callgrind-out-file="$WORK/cg.%p" redis-server --port "$PORT" \
    --bind 127.0.0.1 --save "" --appendonly no --hz 1 >"$WORK/redis.log" 2>&1 &
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
    callgrind_control -z "$(cat "$WORK/redis.pid")" >/dev/null 2>&1 && echo 0
  else
    callgrind_control -d "$(cat "$WORK/redis.pid")" >/dev/null 2>&1
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
TIME=$(cli SCRIPT LOAD "local t = redis.call('TIME') return t[1]")
GETSET=$(cli SCRIPT LOAD "local t = redis.call('TIME') redis.call('GET', KEYS[1]) redis.call('SET', KEYS[1], string.rep('x', 17), 'PX', 60000) return t[1]")

# calls FILE SHA FORMAT ALGORITHM [PER] [KEYS]: CALLS requests as RESP script calls, one hit
# each on one of KEYS keys (default 1,000; limit and capacity 10^8 per minute: every hit is
# admitted), now fixed, deadline far: a window's hit lands in its counter's newest sub-window, as
# nearly every hit of a busy key does. PER (merged formats only, default 1): requests per script
# call, as the connection's driver merges the calls queued together; with KEYS 1 they are one
# busy key's.
calls() {
  python3 - "$CALLS" "$2" "$3" "$4" "${5:-1}" "${6:-1000}" >"$1" <<'PY'
import random, struct, sys
calls, sha, fmt, alg = int(sys.argv[1]), sys.argv[2].encode(), sys.argv[3], int(sys.argv[4])
per, nkeys = int(sys.argv[5]), int(sys.argv[6])
now, limit, window = 1800000000000000, 100000000, 60000000
step = {0: 6000000, 1: 0, 2: 1, 3: 1}[alg]  # algorithm::sliding_bucket_us, Rule::meter_tick_us
hit = struct.pack("<BBddddd", alg, 0, limit, window, limit, 1, step)
if fmt == "merged":
    args = [struct.pack("<H", per) + per * (struct.pack("<BHdd", 0, 1, now, 4e15) + hit)]
elif fmt == "merged-strings":
    args = [struct.pack("<H", per) + per * (struct.pack("<BHd", 0, 1, now) + b"4000000000\0000\0" + hit)]
elif fmt == "packed":
    args = [struct.pack("<Bd", 0, now) + b"4000000000\0000\0"
            + struct.pack("<BBddddd", alg, 0, limit, window, limit, 1, step)]
elif fmt == "strings":
    args = [b"%d" % v for v in (0, now, 4000000000000000, alg, limit, window, limit, 1, 0)]
elif fmt == "strings-nodeadline":
    args = [b"%d" % v for v in (0, now, alg, limit, window, limit, 1, 0)]
else:
    args = [b"x"]
rand = random.Random(7)
out = []
key = lambda: b"tollgate:{bench|k=%012d}:v2:%d:60000000:100000000" % (rand.randrange(nkeys), alg)
for _ in range(calls // per):
    parts = [b"EVALSHA", sha, b"%d" % per] + [key() for _ in range(per)] + args
    out.append(b"*%d\r\n" % len(parts) + b"".join(b"$%d\r\n%s\r\n" % (len(p), p) for p in parts))
sys.stdout.buffer.write(b"".join(out))
PY
}

run() { # run NAME FILE: one measurement (after an unmeasured pass that creates the keys)
  local name=$1 file=$2 c0 c1 out
  cli FLUSHALL >/dev/null
  cli --pipe <"$file" >/dev/null 2>&1
  c0=$(cpu start)
  out=$(cli --pipe <"$file" 2>&1) || true
  c1=$(cpu)
  grep -q 'errors: 0,' <<<"$out" || { echo "$name: $out" >&2; exit 1; }
  printf '%s\t%s\n' "$name" "$(per_call "$c0" "$c1")" >>"$WORK/results.tsv"
}

calls "$WORK/noop" "$NOOP" none 0
calls "$WORK/time" "$TIME" none 0
calls "$WORK/getset" "$GETSET" none 0
for code in 0 1 2 3; do
  calls "$WORK/old.$code" "$OLD" "$(format "$WORK/old.lua")" "$code"
  calls "$WORK/new.$code" "$NEW" "$(format "$WORK/new.lua")" "$code"
  if [[ $(format "$WORK/new.lua") == merged* ]]; then
    calls "$WORK/new4.$code" "$NEW" "$(format "$WORK/new.lua")" "$code" 4
    calls "$WORK/new4k1.$code" "$NEW" "$(format "$WORK/new.lua")" "$code" 4 1
  fi
done

echo "$CALLS calls per run through redis-cli --pipe, 1,000 keys, $ROUNDS interleaved rounds; $(nproc) cores, load $(cut -d' ' -f1-3 /proc/loadavg)"
for ((r = 1; r <= ROUNDS; r++)); do
  run floor-noop "$WORK/noop"
  run floor-time "$WORK/time"
  run floor-time+get+set "$WORK/getset"
  for alg in 0:sliding_window 1:fixed_window 2:token_bucket 3:gcra; do
    code=${alg%%:*} name=${alg#*:}
    run "$name $REV" "$WORK/old.$code"
    run "$name working-tree" "$WORK/new.$code"
    [[ ! -f $WORK/new4.$code ]] || run "$name working-tree, 4 merged" "$WORK/new4.$code"
    [[ ! -f $WORK/new4k1.$code ]] || run "$name working-tree, 4 merged, 1 key" "$WORK/new4k1.$code"
  done
done
echo
unit="Redis CPU per call, median of $ROUNDS rounds (us)"
[[ $INSTR == 0 ]] || unit="Redis instructions per call, median of $ROUNDS rounds (thousands)"
echo "$unit:"
cut -f1 "$WORK/results.tsv" | awk '!seen[$0]++' | while read -r name; do
  printf '  %-30s %6s\n' "$name" "$(awk -F'\t' -v n="$name" '$1 == n { print $2 }' "$WORK/results.tsv" | median)"
done
