#!/usr/bin/env bash
# Runs Envoy 1.40 with the dynamic module under valgrind memcheck for a short, fixed request mix
# (continue, local reply, paused + resumed with and without a body, paused + denied, per-route
# disabled, a panic, 30 concurrent paused requests), then fails if any memcheck error or definite
# leak has a frame in the module. Stable Rust has no sanitizers for a cdylib loaded by a foreign
# binary, so this is the module's memory check. Errors whose frames are all inside Envoy's own
# (stripped) code are counted and reported but not judged.
#
#   scripts/module-memcheck.sh        builds the module (debug) and runs the check (20-60 s)
set -euo pipefail
cd "$(dirname "${BASH_SOURCE[0]}")/.."

command -v valgrind >/dev/null || { echo "module-memcheck: valgrind is not installed (apt-get install valgrind)" >&2; exit 2; }
cargo build -q -p tollgate-envoy
envoy="$(readlink -f .venv/bin/envoy)"
work="$(mktemp -d)"
pid=
cleanup() {
  if [[ -n $pid ]]; then kill "$pid" 2>/dev/null || true; fi
  rm -rf "$work"
}
trap cleanup EXIT

port_free() { python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])'; }
listener="$(port_free)"
admin="$(port_free)"

cat >"$work/envoy.yaml" <<EOF
admin:
  address: { socket_address: { address: 127.0.0.1, port_value: $admin } }
static_resources:
  listeners:
  - name: main
    address: { socket_address: { address: 127.0.0.1, port_value: $listener } }
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
              - match: { prefix: "/off" }
                direct_response: { status: 200, body: { inline_string: "off" } }
                typed_per_filter_config:
                  envoy.filters.http.dynamic_modules:
                    "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilterPerRoute
                    dynamic_module_config: { name: tollgate_envoy }
                    filter_name: probe
                    filter_config: { "@type": type.googleapis.com/google.protobuf.StringValue, value: "disabled: true" }
              - match: { prefix: "/" }
                direct_response: { status: 200, body: { inline_string: "ok" } }
          http_filters:
          - name: envoy.filters.http.dynamic_modules
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
              dynamic_module_config: { name: tollgate_envoy, metrics_namespace: tollgate }
              filter_name: probe
              filter_config:
                "@type": type.googleapis.com/google.protobuf.StringValue
                value: |
                  echo: true
                  deny: {header: x-deny, status: 403, body: "denied", headers: {x-why: probe}}
                  response_headers: {x-probe-response: "1"}
                  pending: {header: x-wait, delay: 20ms}
                  panic_header: x-panic
          - name: envoy.filters.http.router
            typed_config:
              "@type": type.googleapis.com/envoy.extensions.filters.http.router.v3.Router
EOF

ENVOY_DYNAMIC_MODULES_SEARCH_PATH="$PWD/target/debug" valgrind --tool=memcheck --error-limit=no \
  --num-callers=40 --leak-check=full --log-file="$work/memcheck.log" \
  "$envoy" -c "$work/envoy.yaml" --disable-hot-restart --concurrency 1 --log-level error \
  >"$work/envoy.out" 2>&1 &
pid=$!

for _ in $(seq 1 120); do
  curl -sf -o /dev/null "http://127.0.0.1:$admin/ready" && break
  kill -0 "$pid" 2>/dev/null || { cat "$work/envoy.out" >&2; exit 1; }
  sleep 1
done

url="http://127.0.0.1:$listener"
codes=()
for _ in $(seq 1 20); do
  codes+=("$(curl -s -o /dev/null -w '%{http_code}' "$url/x" -H 'x-probe-multi: a' -H 'x-probe-multi: b')")
  codes+=("$(curl -s -o /dev/null -w '%{http_code}' "$url/x" -H 'x-deny: 1')")
  codes+=("$(curl -s -o /dev/null -w '%{http_code}' "$url/x" -H 'x-wait: 1' -d body)")
  codes+=("$(curl -s -o /dev/null -w '%{http_code}' "$url/x" -H 'x-wait: deny')")
  codes+=("$(curl -s -o /dev/null -w '%{http_code}' "$url/off")")
done
codes+=("$(curl -s -o /dev/null -w '%{http_code}' "$url/x" -H 'x-panic: 1')")
for _ in $(seq 1 30); do curl -s -m 30 -o /dev/null "$url/x" -H 'x-wait: 1' & done
wait $(jobs -p | grep -v "^$pid$") 2>/dev/null || true
echo "module-memcheck: statuses: $(printf '%s\n' "${codes[@]}" | sort | uniq -c | tr '\n' ' ')"

kill -TERM "$pid"
wait "$pid" || true
pid=

python3 - "$work/memcheck.log" <<'EOF'
import re, sys
log = open(sys.argv[1]).read()
blocks = re.split(r"\n==\d+== \n", log)
errors = [b for b in blocks if re.search(r"== (Invalid|Conditional|Use of|Mismatched|Syscall|Source and)", b)]
leaks = [b for b in blocks if "are definitely lost" in b]
ours = [b for b in errors + leaks if "tollgate" in b]
print(f"module-memcheck: {len(errors)} error contexts and {len(leaks)} definite leaks in the process; "
      f"{len(ours)} with a frame in the module")
for b in ours:
    print(b)
sys.exit(1 if ours else 0)
EOF
