{{/* Names, labels and the values derived from several settings (Redis, images, secrets). */}}

{{- define "tollgate.name" -}}
{{- default .Chart.Name .Values.nameOverride | trunc 63 | trimSuffix "-" }}
{{- end }}

{{/* <release>-tollgate, or the release name alone when it already contains the chart name. */}}
{{- define "tollgate.fullname" -}}
{{- if .Values.fullnameOverride }}
{{- .Values.fullnameOverride | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- $name := default .Chart.Name .Values.nameOverride }}
{{- if contains $name .Release.Name }}
{{- .Release.Name | trunc 63 | trimSuffix "-" }}
{{- else }}
{{- printf "%s-%s" .Release.Name $name | trunc 63 | trimSuffix "-" }}
{{- end }}
{{- end }}
{{- end }}

{{/* A component's resource name: tollgate.component (dict "root" $ "component" "authz"). */}}
{{- define "tollgate.component" -}}
{{- printf "%s-%s" (include "tollgate.fullname" .root) .component | trunc 63 | trimSuffix "-" }}
{{- end }}

{{- define "tollgate.labels" -}}
helm.sh/chart: {{ printf "%s-%s" .root.Chart.Name .root.Chart.Version | replace "+" "_" | trunc 63 | trimSuffix "-" }}
{{ include "tollgate.selectorLabels" . }}
app.kubernetes.io/version: {{ .root.Chart.AppVersion | quote }}
app.kubernetes.io/managed-by: {{ .root.Release.Service }}
app.kubernetes.io/part-of: tollgate
{{- end }}

{{- define "tollgate.selectorLabels" -}}
app.kubernetes.io/name: {{ include "tollgate.name" .root }}
app.kubernetes.io/instance: {{ .root.Release.Name }}
app.kubernetes.io/component: {{ .component }}
{{- end }}

{{- define "tollgate.serviceAccountName" -}}
{{- if .Values.serviceAccount.create }}
{{- default (include "tollgate.fullname" .) .Values.serviceAccount.name }}
{{- else }}
{{- default "default" .Values.serviceAccount.name }}
{{- end }}
{{- end }}

{{- define "tollgate.image" -}}
{{- printf "%s:%s" .Values.image.repository (default .Chart.AppVersion .Values.image.tag) }}
{{- end }}

{{/* Whether the chart's Envoy decides in-process (the dynamic module): authz from authz.*
     and the rate limits, with no ext_authz or rate-limit call. */}}
{{- define "tollgate.inprocess" -}}
{{- if and .Values.envoy.enabled (eq (default "services" .Values.envoy.mode) "inprocess") }}true{{ end }}
{{- end }}

{{/* The in-cluster DNS name of a component's Service. */}}
{{- define "tollgate.serviceHost" -}}
{{- printf "%s.%s.svc" (include "tollgate.component" .) .root.Release.Namespace }}
{{- end }}

{{/* Whether authz keeps API keys in the embedded file (one pod, on a volume). */}}
{{- define "tollgate.authz.embeddedKeys" -}}
{{- if and .Values.authz.apiKeys.enabled (not (include "tollgate.redis.used" .)) }}true{{ end }}
{{- end }}

{{/* The claim holding the embedded key file, or nothing for an emptyDir. */}}
{{- define "tollgate.authz.keysClaim" -}}
{{- $e := .Values.authz.apiKeys.embedded }}
{{- if $e.existingClaim }}
{{- $e.existingClaim }}
{{- else if $e.persistence.enabled }}
{{- include "tollgate.component" (dict "root" . "component" "authz-keys") }}
{{- end }}
{{- end }}

{{/* Whether the services use Redis at all. */}}
{{- define "tollgate.redis.used" -}}
{{- if ne .Values.redis.mode "none" }}true{{ end }}
{{- end }}

{{/* Whether the in-chart Redis is deployed. */}}
{{- define "tollgate.redis.inChart" -}}
{{- if and (eq .Values.redis.mode "standalone") .Values.redis.inChart.enabled (not .Values.redis.url) }}true{{ end }}
{{- end }}

{{/* The standalone Redis URL (without password). */}}
{{- define "tollgate.redis.url" -}}
{{- if .Values.redis.url }}
{{- .Values.redis.url }}
{{- else if include "tollgate.redis.inChart" . }}
{{- printf "redis://%s:6379/0" (include "tollgate.serviceHost" (dict "root" . "component" "redis")) }}
{{- else if eq .Values.redis.mode "standalone" }}
{{- fail "redis.mode is standalone: set redis.url, or redis.inChart.enabled=true for a trial Redis" }}
{{- end }}
{{- end }}

{{/* A store section for redis.mode sentinel (both services read the same shape). */}}
{{- define "tollgate.redis.sentinel" -}}
{{- $s := .Values.redis.sentinel }}
{{- if or (not $s.master) (not $s.nodes) }}
{{- fail "redis.mode is sentinel: set redis.sentinel.master and list the sentinels in redis.sentinel.nodes" }}
{{- end }}
{{- toJson (dict "type" "redis" "sentinel_master" $s.master "sentinel_nodes" $s.nodes) }}
{{- end }}

{{/* The API key store's Redis section (without the password): the standalone URL, the
     Cluster's seed nodes, or with mode `cluster` a standalone `keyStoreUrl` when one is set. */}}
{{- define "tollgate.redis.keyStore" -}}
{{- if and (eq .Values.redis.mode "cluster") (not .Values.redis.keyStoreUrl) }}
{{- if not .Values.redis.clusterNodes }}
{{- fail "redis.mode is cluster: list the seed nodes in redis.clusterNodes" }}
{{- end }}
{{- toJson (dict "type" "redis" "cluster_nodes" .Values.redis.clusterNodes) }}
{{- else if eq .Values.redis.mode "cluster" }}
{{- toJson (dict "type" "redis" "url" .Values.redis.keyStoreUrl) }}
{{- else if eq .Values.redis.mode "sentinel" }}
{{- include "tollgate.redis.sentinel" . }}
{{- else }}
{{- toJson (dict "type" "redis" "url" (include "tollgate.redis.url" .)) }}
{{- end }}
{{- end }}

{{/* A duration value (`100ms`, `0.5s`, `2s`, `5m`) in whole milliseconds; `what` names the
     value in the error. tollgate.ms (dict "value" v "what" "authz.apiKeys.storeTimeout") */}}
{{- define "tollgate.ms" -}}
{{- $d := toString .value }}
{{- if regexMatch "^[0-9]+(\\.[0-9]+)?ms$" $d }}
{{- trimSuffix "ms" $d | float64 | int }}
{{- else if regexMatch "^[0-9]+(\\.[0-9]+)?s$" $d }}
{{- mulf (trimSuffix "s" $d | float64) 1000 | int }}
{{- else if regexMatch "^[0-9]+m$" $d }}
{{- mul (trimSuffix "m" $d | int) 60000 }}
{{- else }}
{{- fail (printf "%s: %q is not a duration the chart reads (e.g. 100ms, 0.5s, 2s)" .what $d) }}
{{- end }}
{{- end }}

{{/* Fails unless every deadline tollgate-authz keeps on a Check is below Envoy's ext_authz
     timeout: otherwise a slow key store or introspection endpoint gets clients Envoy's bare
     503 instead of tollgate's 503 with Retry-After. */}}
{{- define "tollgate.checkCheckDeadlines" -}}
{{- $envoy := include "tollgate.ms" (dict "value" .Values.envoy.extAuthz.timeout "what" "envoy.extAuthz.timeout") | int }}
{{- $deadlines := list }}
{{- if and .Values.authz.apiKeys.enabled (include "tollgate.redis.used" .) }}
{{- $deadlines = append $deadlines (list "authz.apiKeys.storeTimeout" .Values.authz.apiKeys.storeTimeout) }}
{{- end }}
{{- with .Values.authz.introspection }}
{{- $deadlines = append $deadlines (list "authz.introspection.timeout" (default "2s" .timeout)) }}
{{- end }}
{{- range $deadlines }}
{{- $ms := include "tollgate.ms" (dict "value" (index . 1) "what" (index . 0)) | int }}
{{- if ge $ms $envoy }}
{{- fail (printf "%s (%s) must be below envoy.extAuthz.timeout (%s): tollgate-authz must answer before Envoy gives up" (index . 0) (toString (index . 1)) (toString $.Values.envoy.extAuthz.timeout)) }}
{{- end }}
{{- end }}
{{- end }}

{{/* The Secret and key holding the Redis password, or nothing when there is none. */}}
{{- define "tollgate.redis.passwordSecret" -}}
{{- if .Values.redis.existingSecret }}
{{- .Values.redis.existingSecret }}
{{- else if or .Values.redis.password (include "tollgate.redis.inChart" .) }}
{{- include "tollgate.component" (dict "root" . "component" "redis") }}
{{- end }}
{{- end }}

{{- define "tollgate.redis.passwordKey" -}}
{{- if .Values.redis.existingSecret }}{{ .Values.redis.existingSecretPasswordKey }}{{ else }}password{{ end }}
{{- end }}

{{/* The admin credential's Secret name and key. */}}
{{- define "tollgate.admin.secret" -}}
{{- default (include "tollgate.component" (dict "root" . "component" "admin")) .Values.authz.admin.existingSecret }}
{{- end }}

{{- define "tollgate.admin.secretKey" -}}
{{- if .Values.authz.admin.existingSecret }}{{ .Values.authz.admin.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/* A value kept across upgrades: the existing Secret's key when the release already has it,
     else a fresh random one. tollgate.keptSecret (dict "root" $ "name" n "key" k "length" 40) */}}
{{- define "tollgate.keptSecret" -}}
{{- $existing := lookup "v1" "Secret" .root.Release.Namespace .name }}
{{- if and $existing (hasKey (default dict $existing.data) .key) }}
{{- index $existing.data .key }}
{{- else }}
{{- randAlphaNum (int .length) | b64enc }}
{{- end }}
{{- end }}

{{/* Fails when a pod would be killed before the service finished draining. */}}
{{- define "tollgate.checkGrace" -}}
{{- $v := .values }}
{{- $need := add $v.shutdownDelaySeconds $v.drainTimeoutSeconds }}
{{- if le (int $v.terminationGracePeriodSeconds) (int $need) }}
{{- fail (printf "%s.terminationGracePeriodSeconds (%d) must exceed shutdownDelaySeconds + drainTimeoutSeconds (%d), or Kubernetes kills the pod mid-drain" .component (int $v.terminationGracePeriodSeconds) (int $need)) }}
{{- end }}
{{- end }}

{{/* Pod-level settings shared by the Deployments. */}}
{{- define "tollgate.podScheduling" -}}
{{- with .nodeSelector }}
nodeSelector:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .tolerations }}
tolerations:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .affinity }}
affinity:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .topologySpreadConstraints }}
topologySpreadConstraints:
  {{- toYaml . | nindent 2 }}
{{- end }}
{{- with .priorityClassName }}
priorityClassName: {{ . }}
{{- end }}
{{- end }}

{{/* The `server:` section both services share: listeners, shutdown timing, debug endpoints,
     mTLS. The listeners bind every interface of the pod because Envoy, the kubelet and
     Prometheus reach them from other pods and nodes; who may is the NetworkPolicy's business
     (networkpolicy.yaml), and with mtls.enabled only a client certificate opens the gRPC one. */}}
{{- define "tollgate.serverConfig" -}}
{{- $v := .values }}
{{- $server := dict
  "grpc_addr" (printf "0.0.0.0:%d" (int $v.ports.grpc))
  "http_addr" (printf "0.0.0.0:%d" (int $v.ports.http))
  "shutdown_delay" (printf "%ds" (int $v.shutdownDelaySeconds))
  "drain_timeout" (printf "%ds" (int $v.drainTimeoutSeconds)) }}
{{- if .root.Values.debug.enabled }}
{{- $_ := set $server "debug" (dict "token_file" "/etc/tollgate/debug/token" "pprof" .root.Values.debug.pprof) }}
{{- end }}
{{- if .root.Values.mtls.enabled }}
{{- $_ := set $server "tls" (include "tollgate.mtlsServer" . | fromJson) }}
{{- end }}
{{- toJson $server }}
{{- end }}

{{/* The debug credential's Secret name and key. */}}
{{- define "tollgate.debug.secret" -}}
{{- default (include "tollgate.component" (dict "root" . "component" "debug")) .Values.debug.existingSecret }}
{{- end }}

{{- define "tollgate.debug.secretKey" -}}
{{- if .Values.debug.existingSecret }}{{ .Values.debug.existingSecretKey }}{{ else }}token{{ end }}
{{- end }}

{{/*
The tollgate-authz config file as JSON (docs/authz.md). The Deployment's checksum leaves its
`policy` out: the service hot-reloads the policy from the mounted ConfigMap, while every other
section is read at start and rolls the pods when it changes.
*/}}
{{- define "tollgate.authzConfig" -}}
{{- include "tollgate.authzConfigFor" (dict "root" . "module" false) }}
{{- end }}

{{/* The same file for the in-process module (envoy.mode inprocess, beside envoy.yaml): the
     same policy, issuers, introspection, API keys, token sources, mtls and identity headers
     from authz.*, and single-call mode's `rate_limit:` section counted in Envoy's pods. The
     module has no listener and logs into Envoy's log, so `server`, `admin` and `log` are left
     out. With authz.enabled=false it only rate-limits: every route public. */}}
{{- define "tollgate.moduleAuthzConfig" -}}
{{- include "tollgate.authzConfigFor" (dict "root" . "module" true) }}
{{- end }}

{{/* tollgate.authzConfigFor (dict "root" $ "module" bool): the one template of both. */}}
{{- define "tollgate.authzConfigFor" -}}
{{- $root := .root }}
{{- $module := .module }}
{{- $a := $root.Values.authz }}
{{- $e := $root.Values.envoy }}
{{- /* Who counts the limits from the policy's descriptors: authz in single-call mode, the
     module in Envoy (when ratelimit is enabled). */}}
{{- $counts := ternary $root.Values.ratelimit.enabled (include "tollgate.singleCall" $root | eq "true") $module }}
{{- $mode := ternary "envoy.mode inprocess" "mode singleCall" $module }}
{{- $policy := deepCopy $a.policy }}
{{- if and $module (not $a.enabled) }}
{{- $policy = dict "rules" (list (dict "name" "all" "path" (dict "prefix" "/") "public" true)) }}
{{- end }}
{{- if $counts }}
{{- if not (hasKey $policy "rate_limits") }}
{{- /* The descriptors Envoy's routes would have built, now built by the Check, as they are
     (a key's own limit included: the Check reads the same `key_limit` entries). */}}
{{- $_ := set $policy "rate_limits" $e.defaultRateLimits }}
{{- end }}
{{- range $e.routes }}
{{- if .rateLimits }}
{{- fail (printf "%s: route %s sets rateLimits, which only Envoy's ratelimit filter reads; put them on its policy rule (authz.policy.rules[].rate_limits)" $mode .name) }}
{{- end }}
{{- end }}
{{- end }}
{{- $c := dict "policy" $policy "headers" $a.headers }}
{{- if not $module }}
{{- $_ := set $c "server" (include "tollgate.serverConfig" (dict "root" $root "values" $a) | fromJson) }}
{{- $_ := set $c "log" $a.log }}
{{- end }}
{{- if $counts }}
{{- $_ := set $c "rate_limit" (include "tollgate.authzRateLimit" (dict "root" $root "module" $module) | fromJson) }}
{{- end }}
{{- if or $a.enabled (not $module) }}
{{- with $a.jwt }}{{ $_ := set $c "jwt" . }}{{ end }}
{{- with $a.introspection }}{{ $_ := set $c "introspection" . }}{{ end }}
{{- if $e.clientCertificates.enabled }}{{ $_ := set $c "mtls" $a.mtls }}{{ end }}
{{- if not $module }}
{{- include "tollgate.checkCheckDeadlines" $root }}
{{- end }}
{{- if $a.apiKeys.enabled }}
{{- $store := dict "type" "embedded" "path" "/var/lib/tollgate/keys.redb" }}
{{- if include "tollgate.redis.used" $root }}
{{- $store = include "tollgate.redis.keyStore" $root | fromJson }}
{{- $_ := set $store "timeout" $a.apiKeys.storeTimeout }}
{{- if $root.Values.redis.tls.caSecret }}
{{- $_ := set $store "ca_file" "/etc/tollgate/redis-ca/ca.crt" }}
{{- end }}
{{- else if $module }}
{{- fail "envoy.mode is inprocess with authz.apiKeys.enabled: the module serves no admin API and an embedded key file is one process's, so its keys must live in the Redis store tollgate-authz's admin API writes to (redis.mode standalone, sentinel or cluster), or set authz.apiKeys.enabled=false" }}
{{- else if and (gt (int $a.replicas) 1) (not $a.autoscaling.enabled) }}
{{- fail "redis.mode is none: API keys live in a file per pod, so authz.replicas must be 1 (or use Redis)" }}
{{- end }}
{{- if and $a.autoscaling.enabled (not (include "tollgate.redis.used" $root)) (not $module) }}
{{- fail "redis.mode is none: API keys live in a file per pod, so authz.autoscaling cannot be enabled (use Redis)" }}
{{- end }}
{{- $_ := set $c "api_keys" (dict "header" $a.apiKeys.header "store" $store "serve_stale" $a.apiKeys.serveStale) }}
{{- if and $a.admin.enabled (not $module) }}
{{- $_ := set $c "admin" (dict "addr" (printf "0.0.0.0:%d" (int $a.ports.admin)) "token_file" "/etc/tollgate/admin/token") }}
{{- end }}
{{- else if $a.admin.enabled }}
{{- fail "authz.admin.enabled needs authz.apiKeys.enabled: the admin API manages API keys" }}
{{- end }}
{{- $c = mergeOverwrite (deepCopy $c) (deepCopy $a.extraConfig) }}
{{- end }}
{{- if $module }}
{{- $c = omit $c "server" "log" "admin" "http_authz" }}
{{- end }}
{{- toJson $c }}
{{- end }}

{{/* Every header name tollgate-authz sets for the upstream (its `headers:` section, defaults,
     `authz.headers` and `authz.extraConfig.headers` as the service will read them), lower
     case, as a JSON list: the chart's Envoy strips all of them from client requests. */}}
{{- define "tollgate.identityHeaders" -}}
{{- $a := .Values.authz }}
{{- $h := mergeOverwrite (deepCopy (default dict $a.headers)) (deepCopy (default dict (default dict $a.extraConfig).headers)) }}
{{- $names := list }}
{{- range $field, $default := dict "subject" "x-tollgate-subject" "tenant" "x-tollgate-tenant" "plan" "x-tollgate-plan" "scopes" "x-tollgate-scopes" "method" "x-tollgate-auth-method" "key_id" "x-tollgate-key-id" }}
{{- $names = append $names (lower (default $default (index $h $field))) }}
{{- end }}
{{- range $claim, $name := (default dict $h.claims) }}
{{- $names = append $names (lower $name) }}
{{- end }}
{{- toJson ($names | uniq) }}
{{- end }}

{{/* The `tls:` of a service's gRPC listener under mtls.enabled: its server certificate and
     the CA that client certificates (Envoy's) must chain to, from the Secret at
     /etc/tollgate/tls. */}}
{{- define "tollgate.mtlsServer" -}}
{{- toJson (dict "cert_file" "/etc/tollgate/tls/tls.crt" "key_file" "/etc/tollgate/tls/tls.key" "client_ca_file" "/etc/tollgate/tls/ca.crt") }}
{{- end }}

{{/* The Secret holding a component's mTLS certificate (fails when mtls.enabled lacks it). */}}
{{- define "tollgate.mtlsSecret" -}}
{{- $key := printf "%sSecret" .component }}
{{- required (printf "mtls.enabled: set mtls.%s (a Secret with tls.crt, tls.key and ca.crt)" $key) (index .root.Values.mtls $key) }}
{{- end }}

{{/* "true" in single-call mode (`mode: singleCall`): tollgate-authz counts the rate limits
     itself, so there is no tollgate-ratelimit and no ratelimit filter. */}}
{{- define "tollgate.singleCall" -}}
{{- if eq (default "pair" .Values.mode) "singleCall" }}true{{ end }}
{{- end }}

{{/* "true" when a component (authz, ratelimit, envoy) runs as its own pods: enabled, and for
     ratelimit not replaced by single-call mode (`mode: singleCall`) or by the in-process module
     (`envoy.mode: inprocess`). Takes (dict "root" . "component" name). */}}
{{- define "tollgate.on" -}}
{{- $v := index .root.Values .component }}
{{- $replaced := and (eq .component "ratelimit") (or (include "tollgate.singleCall" .root) (include "tollgate.inprocess" .root)) }}
{{- if and $v.enabled (not $replaced) }}true{{ end }}
{{- end }}

{{/* The counter store (the limiter's `store:`) for the pods that count: tollgate-ratelimit's,
     or tollgate-authz's in single-call mode; `replicas`/`autoscaling` are theirs. */}}
{{- define "tollgate.counterStore" -}}
{{- $root := .root }}
{{- $store := dict "type" "memory" }}
{{- $mem := $root.Values.ratelimit.memoryStore }}
{{- if and $mem $mem.maxBytes }}
{{- $_ := set $store "max_bytes" (int64 $mem.maxBytes) }}
{{- else if and .values.resources .values.resources.limits .values.resources.limits.memory }}
{{- $_ := set $store "max_bytes" (include "tollgate.halfMemory" (dict "value" .values.resources.limits.memory "what" (printf "%s.resources.limits.memory" .component)) | int64) }}
{{- end }}
{{- if eq $root.Values.redis.mode "standalone" }}
{{- $store = dict "type" "redis" "url" (include "tollgate.redis.url" $root) }}
{{- else if eq $root.Values.redis.mode "sentinel" }}
{{- $store = include "tollgate.redis.sentinel" $root | fromJson }}
{{- else if eq $root.Values.redis.mode "cluster" }}
{{- if not $root.Values.redis.clusterNodes }}
{{- fail "redis.mode is cluster: list the seed nodes in redis.clusterNodes" }}
{{- end }}
{{- $store = dict "type" "redis" "cluster_nodes" $root.Values.redis.clusterNodes }}
{{- else if or (gt (int .values.replicas) 1) .values.autoscaling.enabled }}
{{- fail (printf "redis.mode is none: counters live in each pod's memory, so %s.replicas must be 1 without autoscaling (or use Redis)" .component) }}
{{- end }}
{{- if and $root.Values.redis.tls.caSecret (include "tollgate.redis.used" $root) }}
{{- $_ := set $store "ca_file" "/etc/tollgate/redis-ca/ca.crt" }}
{{- end }}
{{- toJson $store }}
{{- end }}

{{/* The `rate_limit:` section of tollgate-authz in single-call mode (module false) or of the
     in-process module (module true): the settings tollgate-ratelimit would have
     (ratelimit.*), the limits ConfigMap, and the domain Envoy's ratelimit filter would have
     sent (envoy.rateLimit.domain). The counters are the pods' that count: authz's, or
     Envoy's in-process (replicas/autoscaling theirs). */}}
{{- define "tollgate.authzRateLimit" -}}
{{- $root := .root }}
{{- $r := $root.Values.ratelimit }}
{{- $failure := $r.failureMode }}
{{- $pods := ternary "envoy" "authz" (eq .module true) }}
{{- $store := include "tollgate.counterStore" (dict "root" $root "values" (index $root.Values $pods) "component" $pods) | fromJson }}
{{- if .module }}
{{- /* In Envoy `error` stays: the module answers 503 when the store fails. */}}
{{- else if eq $failure "error" }}
{{- /* `error` hands the choice to Envoy in the pair; in one call, make Envoy's choice here. */}}
{{- $failure = ternary "deny" "allow" $root.Values.envoy.rateLimit.failureModeDeny }}
{{- end }}
{{- toJson (dict
  "domain" $root.Values.envoy.rateLimit.domain
  "store" $store
  "limits" (dict "path" "/etc/tollgate/limits")
  "failure_mode" $failure
  "default_algorithm" $r.defaultAlgorithm
  "shadow_mode" $r.shadowMode
  "headers" $r.headers) }}
{{- end }}

{{/* Half of a Kubernetes memory quantity, in bytes: the memory counter store's default
     `max_bytes`, so a flood of distinct keys is evicted from the store before the pod reaches
     its memory limit (the other half is the process itself, the allocator's slack and the
     over-limit cache). Integer quantities with a binary (Ki, Mi, Gi, Ti) or decimal (k, M, G,
     T) suffix, or plain bytes. tollgate.halfMemory (dict "value" "256Mi" "what" "...") */}}
{{- define "tollgate.halfMemory" -}}
{{- $q := toString .value -}}
{{- $units := dict "Ki" 1024 "Mi" 1048576 "Gi" 1073741824 "Ti" 1099511627776 "k" 1000 "M" 1000000 "G" 1000000000 "T" 1000000000000 -}}
{{- $digits := $q -}}
{{- $mult := 1 -}}
{{- range $suffix, $m := $units }}
{{- if hasSuffix $suffix $q }}
{{- $digits = trimSuffix $suffix $q }}
{{- $mult = $m }}
{{- end }}
{{- end }}
{{- if not (regexMatch "^[0-9]+$" $digits) }}
{{- fail (printf "%s: %q is not a whole memory quantity such as 256Mi; set ratelimit.memoryStore.maxBytes instead" .what $q) }}
{{- end }}
{{- div (mul (int64 $digits) $mult) 2 }}
{{- end }}
