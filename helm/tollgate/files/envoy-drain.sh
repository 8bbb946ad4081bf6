#!/usr/bin/env bash
# Drains this pod's Envoy before Kubernetes stops it: the preStop hook of the chart's Envoy
# container (tests/tests/e2e/helm_drain.rs runs this file against a real Envoy).
#
#   envoy-drain.sh ADMIN_PORT DEREGISTER_SECONDS TIMEOUT_SECONDS [STAT_PREFIX]
#
# 1. POST /healthcheck/fail: /ready answers 503, so load balancers that check Envoy stop
#    choosing it, and from now on every response closes its connection (HTTP/1.1
#    `Connection: close`, HTTP/2 GOAWAY): clients reconnect, to another pod.
# 2. Keep serving for DEREGISTER_SECONDS while the pod leaves the Service's endpoints and
#    every kube-proxy and load balancer hears of it.
# 3. POST /drain_listeners?graceful&inboundonly: the gateway listener (traffic_direction
#    INBOUND) stops accepting after Envoy's --drain-time-s; the ops listener stays.
# 4. Wait until no request is in flight on the gateway (http.STAT_PREFIX.downstream_rq_active
#    is 0), but no longer than TIMEOUT_SECONDS after the start. Returning lets the kubelet
#    send SIGTERM, on which Envoy exits.
#
# Only bash is needed: the admin API is spoken over /dev/tcp. Every step is bounded, a step that
# fails does not stop the next ones, and the exit status is always 0 (a failed hook would only
# make the kubelet stop Envoy at once).
set -u

port=${1:?usage: envoy-drain.sh ADMIN_PORT DEREGISTER_SECONDS TIMEOUT_SECONDS [STAT_PREFIX]}
deregister=${2:?deregister seconds}
timeout=${3:?timeout seconds}
prefix=${4:-gateway}
start=$SECONDS

# One line into the container's log: by default PID 1's stdout, which is Envoy's in the
# container and collected by the kubelet (a hook's own output is not); ENVOY_DRAIN_LOG elsewhere.
log_to=${ENVOY_DRAIN_LOG:-/proc/1/fd/1}
log() {
  local line
  line="envoy-drain: $* (after $((SECONDS - start))s)"
  { printf '%s\n' "$line" >>"$log_to"; } 2>/dev/null || printf '%s\n' "$line" >&2
}

# admin METHOD PATH: prints the body of Envoy's answer; fails when the admin API is unreachable.
admin() {
  local fd line body=0
  exec {fd}<>"/dev/tcp/127.0.0.1/${port}" || return 1
  printf '%s %s HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: 0\r\nConnection: close\r\n\r\n' \
    "$1" "$2" >&"$fd"
  # Envoy closes the connection after its answer; the read timeout guards a hung admin.
  while IFS= read -r -t 2 -u "$fd" line; do
    line=${line%$'\r'}
    if ((body)); then
      printf '%s\n' "$line"
    elif [[ -z $line ]]; then
      body=1
    fi
  done
  exec {fd}>&-
}

left() { echo $((timeout - (SECONDS - start))); }

admin POST /healthcheck/fail >/dev/null || log "cannot reach the admin API on port ${port}"
log "health check failed; serving for up to ${deregister}s while the pod is deregistered"
wait=$deregister
((wait > $(left))) && wait=$(left)
((wait > 0)) && sleep "$wait"

admin POST '/drain_listeners?graceful&inboundonly' >/dev/null
log "listeners draining; waiting for requests in flight"
# in_flight: the gateway's active requests, or nothing when the admin API does not say.
in_flight() {
  local line stat="http.${prefix}.downstream_rq_active"
  while IFS= read -r line; do
    if [[ $line == "${stat}: "* ]]; then
      echo "${line#*: }"
    fi
  done < <(admin GET /stats?filter=downstream_rq_active)
}

while (($(left) > 0)); do
  active=$(in_flight)
  if [[ ${active:-} == 0 ]]; then
    log "no request in flight; stopping"
    exit 0
  fi
  sleep 0.2
done
log "still ${active:-?} request(s) in flight after ${timeout}s; stopping anyway"
exit 0
