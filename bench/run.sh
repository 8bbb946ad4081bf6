#!/usr/bin/env bash
# bench/run.sh: measures Tollgate's two gRPC services against Envoy's own filters and a no-op
# gRPC service, either through Envoy (`envoy` mode, wrk as the client) or directly (`direct`
# mode, grpc-load as the client). See bench/README.md for what each figure means.
#
# Everything it generates (Envoy configs, keys, logs) lives in one temp dir, removed on exit
# unless --keep is given. Every process it starts is killed on exit.
set -euo pipefail

usage() {
  cat <<'EOF'
usage: bench/run.sh envoy  [--rounds N] [--duration SECS] [--connections C] [--threads T] [options]
       bench/run.sh direct [--rounds N] [--duration SECS] [--concurrency N] [--grpc-connections C] [options]

  --rounds N            interleaved rounds per variant (default 5)
  --duration SECS       seconds per measured run (default 10)
  --warmup SECS         unmeasured run per variant before round 1 (default 2)
  --connections C       envoy: wrk connections (default 32)
  --threads T           envoy: wrk threads (default 2)
  --concurrency N       direct: grpc-load calls in flight (default 32)
  --grpc-connections C  direct: grpc-load HTTP/2 connections (default 1, like one Envoy worker)
  --identity public|jwt|api_key
                        what tollgate-authz's Check authenticates (default jwt): the bearer JWT
                        every request carries (served from its verified-token cache after the
                        first call), an API key sent as x-api-key, or nothing (every path public)
  --redis               tollgate-ratelimit counts in a Redis this script starts (Debian redis-server)
                        instead of memory; direct mode then also prints Redis' own CPU and its
                        commands per call (from INFO commandstats)
  --stand-in            run noop-grpc in place of the two Tollgate binaries (checks the harness
                        itself while the services are unavailable; results are labelled)
  --variants A,B,...    run only these variants (envoy: plain native native-headers noop tollgate noop1 single
                        authz-grpc authz-http inprocess modfloor; direct: noop-check tollgate-check
                        noop-ratelimit tollgate-ratelimit tollgate-ratelimit-<algorithm> single-check)
  --no-build            do not run cargo build
  --keep                keep the temp dir (configs, logs) and print its path
EOF
}

MODE=${1:-}
case "$MODE" in
  envoy | direct) shift ;;
  -h | --help) usage; exit 0 ;;
  *) usage >&2; exit 2 ;;
esac

ROUNDS=5 DURATION=10 WARMUP=2 CONNECTIONS=32 WRK_THREADS=2 CONCURRENCY=32 GRPC_CONNECTIONS=1
STAND_IN=0 BUILD=1 KEEP=0 REDIS=0 IDENTITY=jwt ONLY=
while [[ $# -gt 0 ]]; do
  case "$1" in
    --rounds) ROUNDS=$2; shift 2 ;;
    --duration) DURATION=$2; shift 2 ;;
    --warmup) WARMUP=$2; shift 2 ;;
    --connections) CONNECTIONS=$2; shift 2 ;;
    --threads) WRK_THREADS=$2; shift 2 ;;
    --concurrency) CONCURRENCY=$2; shift 2 ;;
    --grpc-connections) GRPC_CONNECTIONS=$2; shift 2 ;;
    --stand-in) STAND_IN=1; shift ;;
    --redis) REDIS=1; shift ;;
    --identity) IDENTITY=$2; shift 2 ;;
    --variants) ONLY=$2; shift 2 ;;
    --no-build) BUILD=0; shift ;;
    --keep) KEEP=1; shift ;;
    -h | --help) usage; exit 0 ;;
    *) echo "unknown option: $1" >&2; usage >&2; exit 2 ;;
  esac
done
case "$IDENTITY" in
  public | jwt | api_key) ;;
  *) echo "--identity must be public, jwt or api_key, not: $IDENTITY" >&2; exit 2 ;;
esac
for n in "$ROUNDS" "$DURATION" "$WARMUP" "$CONNECTIONS" "$WRK_THREADS" "$CONCURRENCY" "$GRPC_CONNECTIONS"; do
  [[ $n =~ ^[0-9]+$ ]] || { echo "not a whole number: $n" >&2; exit 2; }
done

ROOT=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
cd "$ROOT"
ENVOY=${ENVOY:-$ROOT/.venv/bin/envoy}
REL=$ROOT/target/release
AUTHZ_BIN=${TOLLGATE_AUTHZ_BIN:-$REL/tollgate-authz}
RATELIMIT_BIN=${TOLLGATE_RATELIMIT_BIN:-$REL/tollgate-ratelimit}
HZ=$(getconf CLK_TCK)
WORK=$(mktemp -d "${TMPDIR:-/tmp}/tollgate-bench.XXXXXX")
RESULTS=$WORK/results.tsv
: >"$RESULTS"

# die MESSAGE: aborts, keeping the temp dir so its logs and configs can be read.
die() {
  echo "ERROR: $*" >&2
  KEEP=1
  exit 1
}

# ---------------------------------------------------------------- processes

declare -A PID=() LOG=() CMD=()
STARTED=()

cleanup() {
  local name alive deadline=$((SECONDS + 2))
  for name in "${STARTED[@]}"; do
    kill "${PID[$name]}" 2>/dev/null || true
  done
  # The services drain for a few seconds after SIGTERM; nothing is in flight any more, so after a
  # short grace the rest is killed.
  while :; do
    alive=()
    for name in "${STARTED[@]}"; do
      kill -0 "${PID[$name]}" 2>/dev/null && alive+=("$name")
    done
    ((${#alive[@]} > 0 && SECONDS < deadline)) || break
    sleep 0.05
  done
  for name in "${alive[@]}"; do
    kill -KILL "${PID[$name]}" 2>/dev/null || true
  done
  for name in "${STARTED[@]}"; do
    wait "${PID[$name]}" 2>/dev/null || true
  done
  if [[ $KEEP == 1 ]]; then
    echo "kept: $WORK" >&2
  else
    rm -rf "$WORK"
  fi
}
trap cleanup EXIT
trap 'exit 130' INT TERM

# start NAME CMD...: runs CMD in the background, output to $WORK/NAME.log.
start() {
  local name=$1
  shift
  LOG[$name]=$WORK/$name.log
  CMD[$name]="$*"
  "$@" >"${LOG[$name]}" 2>&1 &
  PID[$name]=$!
  STARTED+=("$name")
}

show_log() {
  echo "----- $1 log (${LOG[$1]}), last 40 lines -----" >&2
  tail -n 40 "${LOG[$1]}" >&2 || true
  echo "-----" >&2
}

# wait_ready NAME SECS CHECK...: polls CHECK until it succeeds; fails (showing NAME's log) if the
# process exits or the deadline passes.
wait_ready() {
  local name=$1 secs=$2
  shift 2
  local deadline=$((SECONDS + secs))
  until "$@" >/dev/null 2>&1; do
    if ! kill -0 "${PID[$name]}" 2>/dev/null; then
      local rc=0
      wait "${PID[$name]}" || rc=$?
      show_log "$name"
      die "$name ($(basename "${CMD[$name]%% *}")) exited with status $rc before becoming ready; command: ${CMD[$name]}"
    fi
    if ((SECONDS >= deadline)); then
      show_log "$name"
      die "$name not ready after ${secs}s"
    fi
    sleep 0.05
  done
}

tcp_open() { (exec 3<>"/dev/tcp/127.0.0.1/$1") 2>/dev/null; }
http_ok() { curl -fsS -o /dev/null --max-time 1 "$1"; }

# free_ports N: N distinct free loopback ports, asked of the kernel in one go so none repeats.
free_ports() {
  python3 - "$1" <<'EOF'
import socket, sys
socks = []
for _ in range(int(sys.argv[1])):
    s = socket.socket()
    s.bind(("127.0.0.1", 0))
    socks.append(s)
print(" ".join(str(s.getsockname()[1]) for s in socks))
EOF
}

# cpu_ticks PID: user+system clock ticks of the whole process (all threads) so far.
cpu_ticks() {
  local line rest
  read -r line <"/proc/$1/stat"
  rest=${line##*) } # the command name may contain spaces and parentheses
  local -a f
  read -r -a f <<<"$rest"
  # f[0] is field 3 (state): utime is field 14, stime field 15.
  echo $((f[11] + f[12]))
}

# ---------------------------------------------------------------- numbers

# median: of the numbers on stdin (mean of the two middle ones for an even count).
median() {
  sort -g | awk '{ v[NR] = $1 } END {
    if (NR == 0) { print "nan"; exit }
    if (NR % 2) print v[(NR + 1) / 2]; else print (v[NR / 2] + v[NR / 2 + 1]) / 2 }'
}

# col VARIANT FIELD: median of FIELD (1-based, in results.tsv) over the rounds of VARIANT.
col() { awk -F'\t' -v v="$1" -v f="$2" '$1 == v { print $f }' "$RESULTS" | median; }

ratio() { awk -v a="$1" -v b="$2" 'BEGIN { if (b == 0 || a == "nan" || b == "nan") print "n/a"; else printf "%.2f", a / b }'; }

# per_req TICKS COUNT: microseconds of CPU per request.
per_req() { awk -v t="$1" -v n="$2" -v hz="$HZ" 'BEGIN { if (n == 0) print "nan"; else printf "%.1f", t * 1e6 / hz / n }'; }

num1() { awk -v x="$1" 'BEGIN { if (x == "nan") print "-"; else printf "%.1f", x }'; }

fmt_ms() { awk -v us="$1" 'BEGIN { if (us == "nan") print "n/a"; else printf "%.2fms", us / 1000 }'; }

# ---------------------------------------------------------------- build

if [[ $BUILD == 1 ]]; then
  pkgs=(-p tollgate-bench)
  [[ $STAND_IN == 1 ]] || pkgs+=(-p tollgate-authz -p tollgate-ratelimit)
  # The module only for variants (i) and (j).
  [[ $MODE != envoy || (-n $ONLY && ,$ONLY, != *,inprocess,* && ,$ONLY, != *,modfloor,*) ]] ||
    pkgs+=(-p tollgate-envoy)
  echo "building: cargo build --release ${pkgs[*]}" >&2
  if ! cargo build --release "${pkgs[@]}" >&2; then
    die "cargo build failed (use --stand-in to check the harness with noop-grpc in Tollgate's place)"
  fi
  # The in-process cost figures, uncached RS256 among them, printed at the end of direct mode.
  if [[ $MODE == direct && $IDENTITY == jwt && $STAND_IN == 0 ]]; then
    echo "building: cargo build --release -p tollgate-authz --example check_cost" >&2
    cargo build --release -p tollgate-authz --example check_cost >&2 || die "cargo build of the check_cost example failed"
  fi
fi
for b in noop-grpc grpc-load http-upstream; do
  [[ -x $REL/$b ]] || die "missing $REL/$b (build with: cargo build --release -p tollgate-bench)"
done

# ---------------------------------------------------------------- shared setup

# pick_variants ARRAY: keeps those of ARRAY's names that --variants lists (all of them without
# it), in their own order; a name in --variants that is not among them aborts the run.
pick_variants() {
  local -n names=$1
  [[ -n $ONLY ]] || return 0
  local want v kept=()
  for want in ${ONLY//,/ }; do
    [[ " ${names[*]} " == *" $want "* ]] || die "--variants: no variant '$want' in this run (there are: ${names[*]})"
  done
  for v in "${names[@]}"; do
    [[ ",$ONLY," != *",$v,"* ]] || kept+=("$v")
  done
  ((${#kept[@]} > 0)) || die "--variants: nothing to run"
  names=("${kept[@]}")
}

# A JWT signed with a fresh RSA key; Envoy's jwt_authn validates it against an inline JWKS. The
# same header goes to every variant so the client's work is identical.
b64url() { base64 -w0 | tr '+/' '-_' | tr -d '='; }
make_jwt() {
  openssl genpkey -algorithm RSA -pkeyopt rsa_keygen_bits:2048 -out "$WORK/jwt.key" 2>/dev/null
  local n now header payload signing sig
  n=$(openssl rsa -in "$WORK/jwt.key" -noout -modulus | cut -d= -f2 | xxd -r -p | b64url)
  JWK='{"kty":"RSA","alg":"RS256","use":"sig","kid":"bench","n":"'$n'","e":"AQAB"}'
  JWKS='{"keys":['$JWK']}'
  now=$(date +%s)
  header=$(printf '{"alg":"RS256","typ":"JWT","kid":"bench"}' | b64url)
  payload=$(printf '{"iss":"https://issuer.bench.local","sub":"bench-user","aud":"bench","iat":%d,"exp":%d}' \
    "$now" $((now + 86400)) | b64url)
  signing=$header.$payload
  sig=$(printf '%s' "$signing" | openssl dgst -sha256 -sign "$WORK/jwt.key" -binary | b64url)
  JWT=$signing.$sig
}
make_jwt

# start_tollgate: starts the two Tollgate services (or two noop-grpc stand-ins), named authz and
# ratelimit, on free ports, and sets AUTHZ_PORT / RL_PORT to their gRPC ports.
# With --identity api_key it also creates the key and sets API_KEY to its secret.
AUTHZ_PORT='' RL_PORT='' API_KEY=''
start_tollgate() {
  read -r AUTHZ_PORT authz_http RL_PORT rl_http admin_port AUTHZ_CHECK_PORT <<<"$(free_ports 6)"
  if [[ $STAND_IN == 1 ]]; then
    [[ $IDENTITY != api_key ]] || API_KEY=tgk_stand-in
    start authz "$REL/noop-grpc" --addr "127.0.0.1:$AUTHZ_PORT"
    start ratelimit "$REL/noop-grpc" --addr "127.0.0.1:$RL_PORT"
    wait_ready authz 20 tcp_open "$AUTHZ_PORT"
    wait_ready ratelimit 20 tcp_open "$RL_PORT"
    read -r SINGLE_PORT single_http <<<"$(free_ports 2)"
    start single "$REL/noop-grpc" --addr "127.0.0.1:$SINGLE_PORT"
    wait_ready single 20 tcp_open "$SINGLE_PORT"
    return
  fi
  local bin
  for bin in "$AUTHZ_BIN" "$RATELIMIT_BIN"; do
    [[ -x $bin ]] || die "Tollgate variant: $bin does not exist (build it, or use --stand-in)"
  done
  mkdir -p "$WORK/config"
  cp -r "$ROOT/bench/config/limits" "$WORK/config/limits"
  local authz_src=$ROOT/bench/config/authz.yaml
  [[ $IDENTITY == public ]] || authz_src=$ROOT/bench/config/authz-$IDENTITY.yaml
  [[ $IDENTITY != api_key ]] || printf 'bench-admin-token-%s\n' "$(openssl rand -hex 16)" >"$WORK/admin-token"
  sed -e "s|grpc_addr:.*|grpc_addr: 127.0.0.1:$AUTHZ_PORT|" \
    -e "s|http_addr:.*|http_addr: 127.0.0.1:$authz_http|" \
    -e "s|@JWK@|$JWK|" \
    -e "s|@KEYS_DB@|$WORK/keys.redb|" \
    -e "s|@ADMIN_ADDR@|127.0.0.1:$admin_port|" \
    -e "s|@ADMIN_TOKEN_FILE@|$WORK/admin-token|" \
    "$authz_src" >"$WORK/config/authz.yaml"
  # The same service also answers Envoy's HTTP ext_authz, for the (g)/(h) comparison.
  printf 'http_authz:\n  addr: 127.0.0.1:%s\n  path_prefix: /check\n' "$AUTHZ_CHECK_PORT" >>"$WORK/config/authz.yaml"
  local store="type: memory"
  if [[ $REDIS == 1 ]]; then
    read -r REDIS_PORT <<<"$(free_ports 1)"
    start redis redis-server --port "$REDIS_PORT" --bind 127.0.0.1 --save "" --appendonly no --dir "$WORK"
    wait_ready redis 20 tcp_open "$REDIS_PORT"
    store="type: redis\n  url: redis://127.0.0.1:$REDIS_PORT"
  fi
  sed -e "s|grpc_addr:.*|grpc_addr: 127.0.0.1:$RL_PORT|" \
    -e "s|http_addr:.*|http_addr: 127.0.0.1:$rl_http|" \
    -e "s|path: bench/config/limits|path: $WORK/config/limits|" \
    -e "s|type: memory|$store|" \
    "$ROOT/bench/config/ratelimit.yaml" >"$WORK/config/ratelimit.yaml"
  start authz "$AUTHZ_BIN" serve --config "$WORK/config/authz.yaml"
  start ratelimit "$RATELIMIT_BIN" serve --config "$WORK/config/ratelimit.yaml"
  wait_ready authz 30 http_ok "http://127.0.0.1:$authz_http/readyz"
  wait_ready ratelimit 30 http_ok "http://127.0.0.1:$rl_http/readyz"
  start_single_call "$store"
  if [[ $IDENTITY == api_key ]]; then
    "$AUTHZ_BIN" keys create --admin-url "http://127.0.0.1:$admin_port" --token-file "$WORK/admin-token" \
      --name bench --owner bench --json >"$WORK/key.json" 2>"$WORK/key.err" ||
      { cat "$WORK/key.err" >&2; show_log authz; die "tollgate-authz keys create failed"; }
    API_KEY=$(python3 -c 'import json, sys; print(json.load(sys.stdin)["secret"])' <"$WORK/key.json") ||
      die "no secret in the output of keys create: $(head -c 300 "$WORK/key.json")"
  fi
}

# start_single_call STORE: a second tollgate-authz, named single, in single-call mode: the same
# policy and identity as authz, plus the rate limits tollgate-ratelimit counts (the same limits
# file and counter store, and the descriptors the two-call variant's route sends), on
# SINGLE_PORT. Not with --identity api_key (both would open one embedded key store).
SINGLE_PORT='' single_http=''
start_single_call() {
  [[ $IDENTITY != api_key ]] || return 0
  read -r SINGLE_PORT single_http <<<"$(free_ports 2)"
  # Without the pair's HTTP ext_authz listener (its port is the first authz's).
  sed -e "s|grpc_addr:.*|grpc_addr: 127.0.0.1:$SINGLE_PORT|" \
    -e "s|http_addr:.*|http_addr: 127.0.0.1:$single_http|" \
    -e '/^http_authz:$/,/^  path_prefix:/d' \
    -e 's|^policy:$|policy:\n  rate_limits:\n    - actions: [{generic_key: {descriptor_value: bench}}]\n    - actions: [{remote_address: {}}]|' \
    "$WORK/config/authz.yaml" >"$WORK/config/authz-single.yaml"
  # STORE is `type: memory` or `type: redis\n  url: ...`, as written for ratelimit.yaml.
  printf 'rate_limit:\n  domain: bench\n  store:\n    %b\n  limits: {path: %s}\n' \
    "${1//\\n  /\\n    }" "$WORK/config/limits" >>"$WORK/config/authz-single.yaml"
  start single "$AUTHZ_BIN" serve --config "$WORK/config/authz-single.yaml"
  wait_ready single 30 http_ok "http://127.0.0.1:$single_http/readyz"
}

# authz_allowed [HTTP_PORT]: Checks tollgate-authz has allowed so far with the --identity method (jwt or
# api_key), from its /metrics ("none" when the series is absent): the proof that Check really
# authenticated.
authz_allowed() {
  local method=$IDENTITY
  curl -fsS --max-time 5 "http://127.0.0.1:${1:-$authz_http}/metrics" |
    awk -v m="method=\"$method\"" '/^tollgate_authz_checks_total[{ ]/ && index($0, "decision=\"allow\"") && index($0, m) {
      s += $NF; n++ } END { if (n) printf "%d\n", s; else print "none" }'
}
if [[ $STAND_IN == 1 ]]; then
  TG_LABEL="stand-in"
else
  TG_LABEL="tollgate"
fi
# Whether each run must show tollgate-authz's allowed checks for the --identity method growing.
AUTH_PROOF=0
[[ $STAND_IN == 1 || $IDENTITY == public ]] || AUTH_PROOF=1
# check_auth_proof A0 A1 CALLS WHAT: prints the growth per call, "N.NN"; fails (with a message)
# below 0.9. Called in $(...), so the caller exits on failure.
check_auth_proof() {
  [[ $2 != none ]] ||
    die "tollgate-authz's /metrics has no allowed $IDENTITY checks (tollgate_authz_checks_total): did Check authenticate?"
  # Before the first Check (--warmup 0) the series does not exist yet: it starts at 0.
  local before=$1 p
  [[ $before != none ]] || before=0
  p=$(awk -v d=$(($2 - before)) -v n="$3" 'BEGIN { printf "%.2f", d / n }')
  if awk -v p="$p" 'BEGIN { exit !(p < 0.9) }'; then
    die "$4: tollgate-authz allowed $(($2 - before)) $IDENTITY checks for $3 requests: Check did not authenticate them"
  fi
  echo "$p"
}
# The headers every client sends (the same to every variant, so the client's work is identical);
# with --identity api_key the key goes along with the bearer token, which a rule asking only for
# api_key ignores.
HEADERS=("authorization: Bearer $JWT")

# ================================================================ envoy mode

# authz_cluster PORT: the `authz` cluster (HTTP/2) of an Envoy config.
authz_cluster() {
  cat <<EOF
  - name: authz
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: authz
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $1}}}}]}]
EOF
}

# module_filter FILTER_NAME VALUE: the dynamic module's HTTP filter FILTER_NAME, its
# filter_config the string VALUE (YAML: a quoted scalar, or a block starting with "|").
module_filter() {
  cat <<EOF
          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: {name: tollgate_envoy, metrics_namespace: tollgate}
              filter_name: $1
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: $2
EOF
}

# envoy_config VARIANT LISTEN_PORT ADMIN_PORT [AUTHZ_PORT RL_PORT]
envoy_config() {
  local variant=$1 listen=$2 admin=$3 authz=${4:-} rl=${5:-}
  local filters="" rate_limits="" clusters=""
  case "$variant" in
    native | native-headers)
      # native-headers (b'): the same two filters producing what the module's answer carries
      # besides the verdict: the subject and the method upstream (jwt_authn's claim_to_headers,
      # a route header), rate-limit headers on the client's response (local_ratelimit's
      # X-RateLimit-* three, where the module sends the IETF two).
      local claims="" xrl=""
      if [[ $variant == native-headers ]]; then
        claims="
                  claim_to_headers: [{header_name: x-tollgate-subject, claim_name: sub}]"
        xrl="
              enable_x_ratelimit_headers: DRAFT_VERSION_03"
        rate_limits="                request_headers_to_add: [{header: {key: x-tollgate-auth-method, value: jwt}}]"
      fi
      filters=$(
        cat <<EOF
          - name: envoy.filters.http.jwt_authn
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.jwt_authn.v3.JwtAuthentication
              providers:
                bench:
                  issuer: https://issuer.bench.local
                  audiences: [bench]
                  forward: true$claims
                  local_jwks:
                    inline_string: '$JWKS'
                  jwt_cache_config:
                    jwt_cache_size: 1000
              rules:
              - match: {prefix: /}
                requires: {provider_name: bench}
          - name: envoy.filters.http.local_ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.local_ratelimit.v3.LocalRateLimit
              stat_prefix: bench_local$xrl
              token_bucket:
                max_tokens: 1000000000
                tokens_per_fill: 1000000000
                fill_interval: 1s
              filter_enabled:
                runtime_key: bench_local_enabled
                default_value: {numerator: 100, denominator: HUNDRED}
              filter_enforced:
                runtime_key: bench_local_enforced
                default_value: {numerator: 100, denominator: HUNDRED}
EOF
      )
      ;;
    noop | tollgate)
      filters=$(
        cat <<EOF
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              grpc_service:
                envoy_grpc: {cluster_name: authz}
                timeout: 1s
          - name: envoy.filters.http.ratelimit
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
              domain: bench
              failure_mode_deny: true
              timeout: 1s
              rate_limit_service:
                transport_api_version: V3
                grpc_service:
                  envoy_grpc: {cluster_name: ratelimit}
EOF
      )
      # Actions that always produce a descriptor: an action whose input is missing (say, a
      # request_headers action for an absent header) silently skips the call.
      rate_limits=$(
        cat <<'EOF'
                  rate_limits:
                  - actions: [{generic_key: {descriptor_value: bench}}]
                  - actions: [{remote_address: {}}]
EOF
      )
      clusters=$(authz_cluster "$authz")$'\n'$(
        cat <<EOF
  - name: ratelimit
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        explicit_http_config: {http2_protocol_options: {}}
    load_assignment:
      cluster_name: ratelimit
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $rl}}}}]}]
EOF
      )
      ;;
    noop1 | single | authz-grpc)
      # One ext_authz call and nothing else: single-call Tollgate authenticates and limits in
      # it; authz-grpc is the plain tollgate-authz over the same gRPC flavour.
      filters=$(
        cat <<EOF
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              grpc_service:
                envoy_grpc: {cluster_name: authz}
                timeout: 1s
EOF
      )
      clusters=$(authz_cluster "$authz")
      ;;
    authz-http)
      # As deploy/envoy/envoy-http-authz.yaml: HTTP/1.1 to the check listener, the headers a
      # decision reads, the identity headers back.
      filters=$(
        cat <<EOF
          - name: envoy.filters.http.ext_authz
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
              transport_api_version: V3
              failure_mode_allow: false
              http_service:
                server_uri: {uri: "http://authz", cluster: authz, timeout: 1s}
                path_prefix: /check
                authorization_request:
                  allowed_headers:
                    patterns: [{exact: x-api-key}, {exact: x-request-id}]
                  headers_to_add:
                  - {key: x-tollgate-source-address, value: "%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%"}
                authorization_response:
                  allowed_upstream_headers:
                    patterns: [{exact: x-tollgate-subject}, {exact: x-tollgate-tenant}, {exact: x-tollgate-plan},
                      {exact: x-tollgate-scopes}, {exact: x-tollgate-auth-method}, {exact: x-tollgate-key-id}]
                  allowed_client_headers:
                    patterns: [{exact: www-authenticate}, {exact: content-type}, {exact: cache-control}]
                  dynamic_metadata_from_headers:
                    patterns: [{prefix: x-tollgate-metadata-}]
EOF
      )
      clusters=$(
        cat <<EOF
  - name: authz
    type: STATIC
    connect_timeout: 1s
    typed_extension_protocol_options:
      envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
        "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
        common_http_protocol_options: {idle_timeout: 5s}
        explicit_http_config: {http_protocol_options: {}}
    load_assignment:
      cluster_name: authz
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $authz}}}}]}]
EOF
      )
      ;;
    inprocess)
      # Tollgate in-process: the module's tollgate filter on a tollgate-authz config (written
      # by write_inprocess_config): the same identity as the authz variants, the same
      # descriptors, limits and counter store as single-call (f).
      filters=$(module_filter tollgate "|
                  failure_mode: deny
                  config: $WORK/config/authz-inprocess.yaml")
      ;;
    modfloor)
      # The module's floor: its probe filter with nothing to do (every hook called, one
      # counter, no header or metadata touched), what any dynamic module costs before deciding
      # anything.
      filters=$(module_filter probe '"metadata: false"')
      ;;
  esac
  cat <<EOF
admin:
  address: {socket_address: {address: 127.0.0.1, port_value: $admin}}
static_resources:
  listeners:
  - name: ingress
    address: {socket_address: {address: 127.0.0.1, port_value: $listen}}
    filter_chains:
    - filters:
      - name: envoy.filters.network.http_connection_manager
        typed_config:
          "@type": type.googleapis.com/envoy.extensions.filters.network.http_connection_manager.v3.HttpConnectionManager
          stat_prefix: ingress
          route_config:
            virtual_hosts:
            - name: all
              domains: ["*"]
              routes:
              - match: {prefix: /}
                route:
                  cluster: upstream
$rate_limits
          http_filters:
$filters
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
  clusters:
  - name: upstream
    type: STATIC
    connect_timeout: 1s
    load_assignment:
      cluster_name: upstream
      endpoints: [{lb_endpoints: [{endpoint: {address: {socket_address: {address: 127.0.0.1, port_value: $UPSTREAM_PORT}}}}]}]
$clusters
EOF
}

# Counters that prove each variant really did its work: each must grow by 0.9 per request or more.
declare -A CHECKS=(
  [plain]=""
  [native]="http.ingress.jwt_authn.allowed bench_local.http_local_rate_limit.ok"
  [native-headers]="http.ingress.jwt_authn.allowed bench_local.http_local_rate_limit.ok"
  [noop]="http.ingress.ext_authz.ok cluster.upstream.ratelimit.ok"
  [tollgate]="http.ingress.ext_authz.ok cluster.upstream.ratelimit.ok"
  [noop1]="http.ingress.ext_authz.ok"
  [single]="http.ingress.ext_authz.ok"
  [authz-grpc]="http.ingress.ext_authz.ok"
  [authz-http]="http.ingress.ext_authz.ok"
  [inprocess]="tollgate.ratelimit.decision.ok"
  [modfloor]=""
)

# stats_snapshot ADMIN_PORT: the counters of interest; counter FILE NAME: one value (0 if absent).
stats_snapshot() {
  curl -fsS --max-time 5 -G --data-urlencode 'filter=^(http\.ingress|cluster\.upstream|bench_local|tollgate)\.' \
    "http://127.0.0.1:$1/stats"
}
counter() { awk -v n="$2:" '$1 == n { print $2; found = 1 } END { if (!found) print 0 }' "$1"; }

# tg_decisions: limit decisions tollgate-ratelimit has made so far, from its /metrics ("none" when
# the series is absent): through Envoy, the proof that Tollgate matched and counted its limit.
tg_decisions() {
  curl -fsS --max-time 5 "http://127.0.0.1:${1:-$rl_http}/metrics" |
    awk '/^tollgate_ratelimit_decisions_total[{ ]/ { s += $NF; n++ } END { if (n) printf "%d\n", s; else print "none" }'
}

# wrk_run VARIANT SECS OUT: wrk through VARIANT's Envoy.
wrk_run() {
  wrk -t"$WRK_THREADS" -c"$CONNECTIONS" -d"$2"s --latency \
    "${WRK_HEADERS[@]}" -H "accept: application/json" \
    "http://127.0.0.1:${LISTEN[$1]}/api/v1/orders/42?expand=items" >"$3" 2>&1
}

# wrk_fields FILE: prints "rps requests p50_us p99_us non2xx socket_errors".
wrk_fields() {
  awk '
    function us(v) {
      if (v ~ /us$/) return v + 0
      if (v ~ /ms$/) return v * 1000
      if (v ~ /m$/) return v * 60e6
      if (v ~ /s$/) return v * 1e6
      return v
    }
    /Requests\/sec:/ { rps = $2 }
    / requests in / { reqs = $1 }
    $1 == "50%" { p50 = us($2) }
    $1 == "99%" { p99 = us($2) }
    /Non-2xx or 3xx responses:/ { non2xx = $NF }
    /Socket errors:/ { gsub(",", ""); serr = $4 + $6 + $8 + $10 }
    END { printf "%s %s %s %s %d %d\n", rps, reqs, p50, p99, non2xx, serr }' "$1"
}

# write_inprocess_config: $WORK/config/authz-inprocess.yaml, the tollgate-authz config variant (i)'s
# module loads: bench/config's file for --identity (the key set, the policy), the descriptors
# single-call (f) builds (generic_key=bench, remote_address) and its rate_limit section on the
# same limits and counter store. With api_key the module opens a copy of the key store the
# bench key was just created in (an embedded store has one owner: the authz variants' service).
write_inprocess_config() {
  local src=$ROOT/bench/config/authz.yaml store="type: memory"
  [[ $IDENTITY == public ]] || src=$ROOT/bench/config/authz-$IDENTITY.yaml
  # TOLLGATE_BENCH_STORE_TIMEOUT: the module's Redis call deadline (default the store's 50ms).
  # On a machine shared with builds redis-server can be starved past 50 ms: the module then
  # answers 503 (failure_mode error) and the run aborts on non-2xx; a longer deadline keeps
  # the run measuring throughput. The script says when it is set.
  [[ $REDIS == 0 ]] || store="type: redis\n    url: redis://127.0.0.1:$REDIS_PORT"
  if [[ $REDIS == 1 && -n ${TOLLGATE_BENCH_STORE_TIMEOUT:-} ]]; then
    store+="\n    timeout: $TOLLGATE_BENCH_STORE_TIMEOUT"
    echo "NOTE (i): the module's Redis store.timeout is $TOLLGATE_BENCH_STORE_TIMEOUT (TOLLGATE_BENCH_STORE_TIMEOUT)"
  fi
  if [[ $IDENTITY == api_key && $STAND_IN == 0 ]]; then
    cp "$WORK/keys.redb" "$WORK/module-keys.redb"
  fi
  sed -e '/^server:/,/^[a-z]/{/^server:/d;/^  /d}' -e '/^admin:/,$d' \
    -e "s|@JWK@|$JWK|" -e "s|@KEYS_DB@|$WORK/module-keys.redb|" \
    -e 's|^policy:$|policy:\n  rate_limits:\n    - actions: [{generic_key: {descriptor_value: bench}}]\n    - actions: [{remote_address: {}}]|' \
    "$src" >"$WORK/config/authz-inprocess.yaml"
  printf 'rate_limit:\n  domain: bench\n  store:\n    %b\n  limits: {path: %s}\n' \
    "$store" "$WORK/config/limits" >>"$WORK/config/authz-inprocess.yaml"
  # Variant (i) authenticates in the module: its allowed decisions grow by one a request too.
  [[ $IDENTITY == public ]] || CHECKS[inprocess]+=" tollgate.decisions.reason.allowed"
}

run_envoy_mode() {
  command -v wrk >/dev/null || die "wrk not found (apt-get install -y wrk)"
  [[ -x $ENVOY ]] || die "Envoy not found at $ENVOY (run scripts/setup.sh, or set ENVOY=/path/to/envoy)"

  VARIANTS=(plain native native-headers noop tollgate noop1)
  # tollgate-authz alone, over each ext_authz flavour (noop-grpc speaks no HTTP ext_authz).
  [[ $STAND_IN == 1 ]] || VARIANTS+=(authz-grpc authz-http)
  VARIANTS+=(inprocess modfloor)
  declare -gA LABEL=(
    [plain]="(a) plain proxy"
    [native]="(b) jwt_authn + local_ratelimit"
    [native-headers]="(b') (b) + Tollgate's headers"
    [noop]="(c) ext_authz+ratelimit: noop-grpc"
    [tollgate]="(d) ext_authz+ratelimit: $TG_LABEL"
    [noop1]="(e) ext_authz only: noop-grpc"
    [single]="(f) single-call: $TG_LABEL"
    [authz-grpc]="(g) ext_authz gRPC: tollgate-authz"
    [authz-http]="(h) ext_authz HTTP: tollgate-authz"
    [inprocess]="(i) in-process: $TG_LABEL module"
    [modfloor]="(j) in-process floor: the module, no-op"
  )
  # Processes whose CPU each variant is charged with (beyond its own Envoy); the single-call
  # authz is reported in the authz column.
  declare -gA PROCS=([plain]="upstream" [native]="upstream" [native-headers]="upstream" [noop]="upstream noop" [tollgate]="upstream authz ratelimit"
    [noop1]="upstream noop" [single]="upstream single" [authz-grpc]="upstream authz" [authz-http]="upstream authz"
    [inprocess]="upstream" [modfloor]="upstream")
  # Where Envoy finds the module (variant i).
  export ENVOY_DYNAMIC_MODULES_SEARCH_PATH=$REL
  declare -gA LISTEN=() ADMIN=()

  read -r UPSTREAM_PORT NOOP_PORT <<<"$(free_ports 2)"
  start upstream "$REL/http-upstream" --addr "127.0.0.1:$UPSTREAM_PORT"
  # NOOP_CHECK_ANSWER=single: the no-op answers Check with single-call Tollgate's allowed shape.
  start noop "$REL/noop-grpc" --addr "127.0.0.1:$NOOP_PORT" --check-answer "${NOOP_CHECK_ANSWER:-empty}"
  wait_ready upstream 20 tcp_open "$UPSTREAM_PORT"
  wait_ready noop 20 tcp_open "$NOOP_PORT"
  start_tollgate
  [[ -z $SINGLE_PORT ]] || VARIANTS+=(single)
  pick_variants VARIANTS
  # Variant (i) reads the limits itself (also with --stand-in, which copies none).
  mkdir -p "$WORK/config"
  [[ -d $WORK/config/limits ]] || cp -r "$ROOT/bench/config/limits" "$WORK/config/limits"
  write_inprocess_config
  [[ $IDENTITY != api_key ]] || HEADERS+=("x-api-key: $API_KEY")
  local -a wrk_headers=()
  local h
  for h in "${HEADERS[@]}"; do wrk_headers+=(-H "$h"); done
  WRK_HEADERS=("${wrk_headers[@]}")

  local v
  for v in "${VARIANTS[@]}"; do
    read -r "LISTEN[$v]" "ADMIN[$v]" <<<"$(free_ports 2)"
    case $v in
      noop) envoy_config "$v" "${LISTEN[$v]}" "${ADMIN[$v]}" "$NOOP_PORT" "$NOOP_PORT" ;;
      tollgate) envoy_config "$v" "${LISTEN[$v]}" "${ADMIN[$v]}" "$AUTHZ_PORT" "$RL_PORT" ;;
      noop1) envoy_config "$v" "${LISTEN[$v]}" "${ADMIN[$v]}" "$NOOP_PORT" ;;
      single) envoy_config "$v" "${LISTEN[$v]}" "${ADMIN[$v]}" "$SINGLE_PORT" ;;
      authz-grpc) envoy_config "$v" "${LISTEN[$v]}" "${ADMIN[$v]}" "$AUTHZ_PORT" ;;
      authz-http) envoy_config "$v" "${LISTEN[$v]}" "${ADMIN[$v]}" "$AUTHZ_CHECK_PORT" ;;
      *) envoy_config "$v" "${LISTEN[$v]}" "${ADMIN[$v]}" ;;
    esac >"$WORK/envoy-$v.yaml"
    start "envoy-$v" "$ENVOY" -c "$WORK/envoy-$v.yaml" --concurrency 1 --disable-hot-restart \
      --log-level warn
  done
  for v in "${VARIANTS[@]}"; do
    wait_ready "envoy-$v" 60 http_ok "http://127.0.0.1:${ADMIN[$v]}/ready"
    # One request by hand: a 401/403/429 here means the variant is misconfigured.
    local code
    code=$(curl -sS -o "$WORK/probe-$v.body" -w '%{http_code}' --max-time 5 \
      "${WRK_HEADERS[@]}" "http://127.0.0.1:${LISTEN[$v]}/api/v1/orders/42") || true
    if [[ $code != 200 ]]; then
      show_log "envoy-$v"
      die "variant ${LABEL[$v]}: probe request answered $code: $(head -c 300 "$WORK/probe-$v.body")"
    fi
  done

  echo "Envoy $("$ENVOY" --version 2>/dev/null | awk 'NF { print $NF }' | cut -d/ -f2) --concurrency 1;" \
    "wrk -t$WRK_THREADS -c$CONNECTIONS -d${DURATION}s; $ROUNDS interleaved rounds; $(nproc) cores; CLK_TCK=$HZ;" \
    "identity $IDENTITY"
  [[ $STAND_IN == 0 ]] || echo "NOTE --stand-in: variant (d) runs two noop-grpc processes in place of Tollgate's services"
  if ((WARMUP > 0)); then
    for v in "${VARIANTS[@]}"; do
      wrk_run "$v" "$WARMUP" "$WORK/warmup-$v.txt"
    done
  fi

  local r p name t0 t1 d0='' d1='' a0='' a1='' rps reqs p50 p99 non2xx serr line c checks
  declare -A before=() after=()
  for ((r = 1; r <= ROUNDS; r++)); do
    for v in "${VARIANTS[@]}"; do
      stats_snapshot "${ADMIN[$v]}" >"$WORK/stats-before.txt"
      [[ $v != tollgate || $STAND_IN == 1 ]] || d0=$(tg_decisions)
      [[ $v != single || $STAND_IN == 1 ]] || d0=$(tg_decisions "$single_http")
      [[ ${PROCS[$v]} != *authz* || $AUTH_PROOF == 0 ]] || a0=$(authz_allowed) || die "cannot read tollgate-authz's /metrics"
      [[ $v != single || $AUTH_PROOF == 0 ]] || a0=$(authz_allowed "$single_http") || die "cannot read the single-call tollgate-authz's /metrics"
      for name in "envoy-$v" ${PROCS[$v]}; do before[$name]=$(cpu_ticks "${PID[$name]}"); done
      wrk_run "$v" "$DURATION" "$WORK/wrk-$v-$r.txt"
      for name in "envoy-$v" ${PROCS[$v]}; do after[$name]=$(cpu_ticks "${PID[$name]}"); done
      stats_snapshot "${ADMIN[$v]}" >"$WORK/stats-after.txt"
      [[ $v != tollgate || $STAND_IN == 1 ]] || d1=$(tg_decisions)
      [[ $v != single || $STAND_IN == 1 ]] || d1=$(tg_decisions "$single_http")
      [[ ${PROCS[$v]} != *authz* || $AUTH_PROOF == 0 ]] || a1=$(authz_allowed) || die "cannot read tollgate-authz's /metrics"
      [[ $v != single || $AUTH_PROOF == 0 ]] || a1=$(authz_allowed "$single_http") || die "cannot read the single-call tollgate-authz's /metrics"

      read -r rps reqs p50 p99 non2xx serr <<<"$(wrk_fields "$WORK/wrk-$v-$r.txt")"
      [[ -n $reqs && $reqs -gt 0 ]] || { cat "$WORK/wrk-$v-$r.txt" >&2; die "wrk made no request (${LABEL[$v]})"; }
      if ((non2xx > 0 || serr > 0)); then
        cat "$WORK/wrk-$v-$r.txt" >&2
        die "${LABEL[$v]}: $non2xx non-2xx responses, $serr socket errors"
      fi
      line=$(printf 'round %d/%d  %-38s %9.0f req/s  p50 %s  p99 %s' "$r" "$ROUNDS" "${LABEL[$v]}" "$rps" \
        "$(fmt_ms "$p50")" "$(fmt_ms "$p99")")
      # Results row: variant round rps p50 p99 then cpu/req of envoy, upstream, svc1, svc2.
      local row="$v	$r	$rps	$p50	$p99" total=0
      line+="  cpu us/req:"
      local authz_col=authz
      [[ $v != single ]] || authz_col=single
      for name in "envoy-$v" upstream noop "$authz_col" ratelimit; do
        if [[ $name == "envoy-$v" || " ${PROCS[$v]} " == *" $name "* ]]; then
          p=$(per_req $((after[$name] - before[$name])) "$reqs")
          line+=" ${name%%-*} $p"
          total=$(awk -v a="$total" -v b="$p" 'BEGIN { print a + b }')
        else
          p=nan
        fi
        row+="	$p"
      done
      row+="	$total"
      checks=""
      for c in ${CHECKS[$v]}; do
        t0=$(counter "$WORK/stats-before.txt" "$c")
        t1=$(counter "$WORK/stats-after.txt" "$c")
        p=$(awk -v d=$((t1 - t0)) -v n="$reqs" 'BEGIN { printf "%.2f", d / n }')
        checks+=" ${c#*.}=$p/req"
        if awk -v p="$p" 'BEGIN { exit !(p < 0.9) }'; then
          echo "$line" >&2
          die "${LABEL[$v]}: counter $c grew by $((t1 - t0)) for $reqs requests: the calls did not happen"
        fi
      done
      if [[ ($v == tollgate || $v == single) && $STAND_IN == 0 ]]; then
        if [[ $d0 == none || $d1 == none ]]; then
          checks+=" tollgate_decisions=n/a"
        else
          p=$(awk -v d=$((d1 - d0)) -v n="$reqs" 'BEGIN { printf "%.2f", d / n }')
          checks+=" tollgate_decisions=$p/req"
          if awk -v p="$p" 'BEGIN { exit !(p < 0.9) }'; then
            echo "$line" >&2
            die "${LABEL[$v]}: $((d1 - d0)) limit decisions for $reqs requests: its limit did not match"
          fi
        fi
      fi
      if [[ (${PROCS[$v]} == *authz* || $v == single) && $AUTH_PROOF == 1 ]]; then
        p=$(check_auth_proof "$a0" "$a1" "$reqs" "${LABEL[$v]}") || { echo "$line" >&2; KEEP=1; exit 1; }
        checks+=" tollgate_allowed_$IDENTITY=$p/req"
      fi
      [[ -z $checks ]] || line+="  [${checks# }]"
      echo "$line"
      echo "$row" >>"$RESULTS"
    done
  done

  echo
  echo "Medians over $ROUNDS rounds (CPU is microseconds per proxied request, all threads of each process)"
  printf '%-38s %8s %8s %8s | %-28s\n' "" "" "" "" "CPU us per request"
  printf '%-38s %8s %8s %8s | %6s %6s %6s %6s %6s %6s\n' variant req/s p50 p99 envoy upstrm noop authz rlimit total
  for v in "${VARIANTS[@]}"; do
    printf '%-38s %8.0f %8s %8s |' "${LABEL[$v]}" "$(col "$v" 3)" "$(fmt_ms "$(col "$v" 4)")" "$(fmt_ms "$(col "$v" 5)")"
    for f in 6 7 8 9 10 11; do printf ' %6s' "$(num1 "$(col "$v" $f)")"; done
    echo
  done
  local tg_svc noop_svc
  tg_svc=$(num1 "$(awk -F'\t' '$1 == "tollgate" { print $9 + $10 }' "$RESULTS" | median)")
  noop_svc=$(num1 "$(col noop 8)")
  echo
  echo "Tollgate / no-op, (d) / (c):"
  printf '  %-26s %s\n' "throughput" "$(ratio "$(col tollgate 3)" "$(col noop 3)")" \
    "p50 / p99 latency" "$(ratio "$(col tollgate 4)" "$(col noop 4)") / $(ratio "$(col tollgate 5)" "$(col noop 5)")" \
    "Envoy CPU per request" "$(ratio "$(col tollgate 6)" "$(col noop 6)")" \
    "service CPU per request" "$(ratio "$tg_svc" "$noop_svc")  (authz+ratelimit $tg_svc us, noop-grpc $noop_svc us)" \
    "total CPU per request" "$(ratio "$(col tollgate 11)" "$(col noop 11)")"
  if [[ " ${VARIANTS[*]} " == *" single "* ]]; then
    local single_svc noop1_svc
    single_svc=$(num1 "$(col single 9)")
    noop1_svc=$(num1 "$(col noop1 8)")
    echo "Single call, (f) / one-call no-op (e), and (f) / two-call Tollgate (d):"
    printf '  %-26s %s\n' "throughput (f)/(e)" "$(ratio "$(col single 3)" "$(col noop1 3)")" \
      "throughput (f)/(d)" "$(ratio "$(col single 3)" "$(col tollgate 3)")" \
      "p50 latency (f)/(e)" "$(ratio "$(col single 4)" "$(col noop1 4)")" \
      "service CPU per request" "$(ratio "$single_svc" "$noop1_svc")  (single-call authz $single_svc us, noop-grpc $noop1_svc us)" \
      "total CPU per request" "(f)/(e) $(ratio "$(col single 11)" "$(col noop1 11)"), (f)/(d) $(ratio "$(col single 11)" "$(col tollgate 11)")"
  fi
  if [[ " ${VARIANTS[*]} " == *" inprocess "* ]]; then
    echo "In-process (i) / native (b), and / native with the same headers (b'):"
    printf '  %-26s %s\n' "throughput" "(i)/(b) $(ratio "$(col inprocess 3)" "$(col native 3)"), (i)/(b') $(ratio "$(col inprocess 3)" "$(col native-headers 3)")" \
      "Envoy CPU per request" "(i)/(b) $(ratio "$(col inprocess 6)" "$(col native 6)"), (i)/(b') $(ratio "$(col inprocess 6)" "$(col native-headers 6)")"
  fi
  echo "Each variant / plain proxy:"
  printf '  %-38s %6s %6s %6s %6s %6s\n' "" req/s p50 p99 envoy total
  for v in "${VARIANTS[@]:1}"; do
    printf '  %-38s %6s %6s %6s %6s %6s\n' "${LABEL[$v]}" "$(ratio "$(col "$v" 3)" "$(col plain 3)")" \
      "$(ratio "$(col "$v" 4)" "$(col plain 4)")" "$(ratio "$(col "$v" 5)" "$(col plain 5)")" \
      "$(ratio "$(col "$v" 6)" "$(col plain 6)")" "$(ratio "$(col "$v" 11)" "$(col plain 11)")"
  done
  if [[ $STAND_IN == 0 ]]; then
    echo "tollgate-authz over HTTP ext_authz / over gRPC, (h) / (g):"
    printf '  %-26s %s\n' "throughput" "$(ratio "$(col authz-http 3)" "$(col authz-grpc 3)")" \
      "p50 / p99 latency" "$(ratio "$(col authz-http 4)" "$(col authz-grpc 4)") / $(ratio "$(col authz-http 5)" "$(col authz-grpc 5)")" \
      "Envoy CPU per request" "$(ratio "$(col authz-http 6)" "$(col authz-grpc 6)")" \
      "authz CPU per request" "$(ratio "$(col authz-http 9)" "$(col authz-grpc 9)")" \
      "total CPU per request" "$(ratio "$(col authz-http 11)" "$(col authz-grpc 11)")"
  fi
}

# ================================================================ direct mode

run_direct_mode() {
  read -r NOOP_PORT <<<"$(free_ports 1)"
  start noop "$REL/noop-grpc" --addr "127.0.0.1:$NOOP_PORT"
  wait_ready noop 20 tcp_open "$NOOP_PORT"
  start_tollgate
  [[ $IDENTITY != api_key ]] || HEADERS+=("x-api-key: $API_KEY")
  local -a header_args=()
  local h
  for h in "${HEADERS[@]}"; do header_args+=(--header "${h%%: *}=${h#*: }"); done

  # target name -> (port, process) for each API.
  declare -A PORT=([noop-check]=$NOOP_PORT [noop-ratelimit]=$NOOP_PORT
    [tollgate-check]=$AUTHZ_PORT [tollgate-ratelimit]=$RL_PORT [single-check]=$SINGLE_PORT)
  declare -A PROC=([noop-check]=noop [noop-ratelimit]=noop [tollgate-check]=authz [tollgate-ratelimit]=ratelimit
    [single-check]=single)

  load() { # load KEY SECS OUT
    local api=${1#*-} generic=bench
    if [[ $api == ratelimit-* ]]; then # tollgate-ratelimit-<algorithm>: that algorithm's limit
      generic=bench-${api#ratelimit-}
      api=ratelimit
    fi
    "$REL/grpc-load" --target "127.0.0.1:${PORT[$1]}" --api "$api" --concurrency "$CONCURRENCY" \
      --connections "$GRPC_CONNECTIONS" --duration "${2}s" \
      "${header_args[@]}" --header "x-forwarded-for=10.1.2.3" \
      --domain bench --descriptor "generic_key=$generic" --descriptor remote_address=127.0.0.1 >"$3" 2>&1 ||
      { cat "$3" >&2; die "grpc-load against $1 failed"; }
  }
  field() { grep '^RESULT' "$1" | tr ' ' '\n' | awk -F= -v k="$2" '$1 == k { print $2 }'; }

  local keys=(noop-check tollgate-check noop-ratelimit tollgate-ratelimit)
  # With Redis, the other algorithms too (the first, sliding_window, is the default limit's).
  local alg
  if [[ $REDIS == 1 && $STAND_IN == 0 ]]; then
    for alg in fixed_window token_bucket gcra; do
      keys+=("tollgate-ratelimit-$alg")
      PORT[tollgate-ratelimit-$alg]=$RL_PORT
      PROC[tollgate-ratelimit-$alg]=ratelimit
    done
  fi
  # single-check: Check on the single-call tollgate-authz, the embedded limit counted in it.
  [[ -z $SINGLE_PORT ]] || keys+=(single-check)
  pick_variants keys
  echo "grpc-load --concurrency $CONCURRENCY --connections $GRPC_CONNECTIONS -d ${DURATION}s; $ROUNDS interleaved rounds;" \
    "$(nproc) cores; CLK_TCK=$HZ; identity $IDENTITY"
  [[ $STAND_IN == 0 ]] || echo "NOTE --stand-in: the tollgate-* targets are two noop-grpc processes, not Tollgate's services"
  local k r t0 t1 a0 a1 d0=0 d1=0 calls errors denied limited rps p50 p99 cpu auth_note
  if ((WARMUP > 0)); then
    for k in "${keys[@]}"; do load "$k" "$WARMUP" "$WORK/warmup-$k.txt"; done
  fi
  # Redis' script calls so far (EVALSHA + EVAL), from INFO commandstats.
  redis_calls() {
    redis-cli -p "$REDIS_PORT" INFO commandstats |
      awk -F'[=,:]' '/^cmdstat_(evalsha|eval):/ { n += $3 } END { print n + 0 }'
  }
  local rt0 rt1 rc0 rc1 redis_note
  for ((r = 1; r <= ROUNDS; r++)); do
    for k in "${keys[@]}"; do
      redis_note=""
      if [[ $REDIS == 1 && $k == tollgate-ratelimit* ]]; then
        rt0=$(cpu_ticks "${PID[redis]}")
        rc0=$(redis_calls)
      fi
      auth_note=""
      [[ $k != tollgate-check || $AUTH_PROOF == 0 ]] || a0=$(authz_allowed) || die "cannot read tollgate-authz's /metrics"
      [[ $k != single-check || $STAND_IN == 1 ]] || d0=$(tg_decisions "$single_http")
      t0=$(cpu_ticks "${PID[${PROC[$k]}]}")
      load "$k" "$DURATION" "$WORK/load-$k-$r.txt"
      t1=$(cpu_ticks "${PID[${PROC[$k]}]}")
      [[ $k != tollgate-check || $AUTH_PROOF == 0 ]] || a1=$(authz_allowed) || die "cannot read tollgate-authz's /metrics"
      [[ $k != single-check || $STAND_IN == 1 ]] || d1=$(tg_decisions "$single_http")
      calls=$(field "$WORK/load-$k-$r.txt" calls)
      errors=$(field "$WORK/load-$k-$r.txt" errors)
      denied=$(field "$WORK/load-$k-$r.txt" denied)
      rps=$(field "$WORK/load-$k-$r.txt" rps)
      p50=$(field "$WORK/load-$k-$r.txt" p50_us)
      p99=$(field "$WORK/load-$k-$r.txt" p99_us)
      if ((errors > 0 || denied > 0)); then
        cat "$WORK/load-$k-$r.txt" >&2
        die "$k: $errors errors, $denied denials (the benchmark expects every call to be allowed)"
      fi
      limited=$(field "$WORK/load-$k-$r.txt" limited)
      # Tollgate must match its configured limit on every call, or it would be allowing for free.
      if [[ $k == tollgate-ratelimit* && $STAND_IN == 0 && $limited != "$calls" ]]; then
        cat "$WORK/load-$k-$r.txt" >&2
        die "$k: a limit matched on only $limited of $calls calls (check bench/config/limits)"
      fi
      cpu=$(per_req $((t1 - t0)) "$calls")
      # The single-call Check must count its limit on every call, or it measures nothing.
      if [[ $k == single-check && $STAND_IN == 0 ]] && (((d1 - d0) < calls * 9 / 10)); then
        die "$k: $((d1 - d0)) limit decisions for $calls calls: the embedded limit did not match"
      fi
      if [[ $k == tollgate-check && $AUTH_PROOF == 1 ]]; then
        auth_note=$(check_auth_proof "$a0" "$a1" "$calls" "$k") || { KEEP=1; exit 1; }
        auth_note="  [allowed $IDENTITY ${auth_note}/call]"
      fi
      if [[ $REDIS == 1 && $k == tollgate-ratelimit* ]]; then
        rt1=$(cpu_ticks "${PID[redis]}")
        rc1=$(redis_calls)
        redis_note="  redis cpu $(per_req $((rt1 - rt0)) "$calls") us/call, $(awk -v a=$((rc1 - rc0)) -v c="$calls" 'BEGIN { printf "%.3f", a / c }') script calls/call"
        printf '%s\t%s\t%s\t%s\t%s\n' "$k" "$r" "$(per_req $((rt1 - rt0)) "$calls")" "$((rc1 - rc0))" "$calls" >>"$WORK/redis.tsv"
      fi
      printf 'round %d/%d  %-20s %9.0f calls/s  p50 %s  p99 %s  service cpu %6s us/call%s%s\n' \
        "$r" "$ROUNDS" "$k" "$rps" "$(fmt_ms "$p50")" "$(fmt_ms "$p99")" "$cpu" \
        "$([[ $k == *-ratelimit ]] && awk -v l="$limited" -v c="$calls" 'BEGIN { printf "  [limit matched %.2f/call]", l / c }')" \
        "$redis_note$auth_note"
      printf '%s\t%s\t%s\t%s\t%s\t%s\n' "$k" "$r" "$rps" "$p50" "$p99" "$cpu" >>"$RESULTS"
    done
  done

  echo
  echo "Medians over $ROUNDS rounds (service CPU: all threads of the service process, per call)"
  printf '%-31s %10s %9s %9s %14s\n' target calls/s p50 p99 "cpu us/call"
  for k in "${keys[@]}"; do
    printf '%-31s %10.0f %9s %9s %14s\n' "$k" "$(col "$k" 3)" "$(fmt_ms "$(col "$k" 4)")" \
      "$(fmt_ms "$(col "$k" 5)")" "$(num1 "$(col "$k" 6)")"
  done
  echo
  echo "Tollgate / no-op (calls/s, CPU per call):"
  for api in check ratelimit; do
    printf '  %-10s calls/s %s   cpu/call %s\n' "$api" "$(ratio "$(col "tollgate-$api" 3)" "$(col "noop-$api" 3)")" \
      "$(ratio "$(col "tollgate-$api" 6)" "$(col "noop-$api" 6)")"
  done
  if [[ " ${keys[*]} " == *" single-check "* ]]; then
    printf '  %-10s calls/s %s   cpu/call %s   (single-call Check, embedded limit, / no-op Check)\n' "single" \
      "$(ratio "$(col single-check 3)" "$(col noop-check 3)")" "$(ratio "$(col single-check 6)" "$(col noop-check 6)")"
  fi
  if [[ $REDIS == 1 ]]; then
    local redis_cpu cmds
    redis_cpu=$(awk -F'\t' '$1 == "tollgate-ratelimit" { print $3 }' "$WORK/redis.tsv" | median)
    cmds=$(awk -F'\t' '$1 == "tollgate-ratelimit" { a += $4; c += $5 } END { printf "%.3f", a / c }' "$WORK/redis.tsv")
    echo "Redis store: Redis' own CPU $(num1 "$redis_cpu") us/call (median), $cmds script calls per ShouldRateLimit call;"
    echo "  Redis' CPU per call by the matched limit's algorithm (medians; two descriptors, one matching):"
    for k in "${keys[@]}"; do
      [[ $k == tollgate-ratelimit* ]] || continue
      alg=${k#tollgate-ratelimit-}
      [[ $k != tollgate-ratelimit ]] || alg=sliding_window
      printf '    %-15s %6s us/call\n' "$alg" "$(num1 "$(awk -F'\t' -v k="$k" '$1 == k { print $3 }' "$WORK/redis.tsv" | median)")"
    done
    echo "  tollgate-ratelimit CPU / no-op CPU: $(ratio "$(col tollgate-ratelimit 6)" "$(col noop-ratelimit 6)") (Redis' CPU not included)"
  fi
  if [[ $IDENTITY == jwt && $STAND_IN == 0 ]]; then
    # Above, one token repeats, so every Check after the first is a cache hit. A token seen for
    # the first time costs an RS256 verification, which only the in-process example measures.
    echo
    echo "In-process cost of one Check, no gRPC (authz/examples/check_cost.rs; one core, wall time):"
    if [[ -x $REL/examples/check_cost ]]; then
      "$REL/examples/check_cost" 2>&1 | sed 's/^/  /' || die "the check_cost example failed"
    else
      echo "  skipped: $REL/examples/check_cost is not built (cargo build --release -p tollgate-authz --example check_cost)"
    fi
  fi
}

case "$MODE" in
  envoy) run_envoy_mode ;;
  direct) run_direct_mode ;;
esac
