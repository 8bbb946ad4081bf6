{{/* Envoy config shared by the chart's gateway and the snippet for your own Envoy: the
     HTTP filters (to put first, before the router): the identity headers removed from every
     request, then ext_authz and ratelimit ... */}}
{{- define "tollgate.envoy.httpFilters" -}}
{{- $e := .Values.envoy }}
{{- $identity := include "tollgate.identityHeaders" . | fromJsonArray }}
# Every header tollgate-authz sets (authz.headers, claims included) is removed
# from every request on every route, whether the route calls ext_authz or not.
- name: envoy.filters.http.header_mutation
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.header_mutation.v3.HeaderMutation
    mutations:
      request_mutations:
        {{- range $identity }}
        - remove: {{ . | quote }}
        {{- end }}
{{- if $.Values.authz.enabled }}
- name: envoy.filters.http.ext_authz
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.ext_authz.v3.ExtAuthz
    transport_api_version: V3
    grpc_service:
      envoy_grpc: { cluster_name: tollgate_authz }
      timeout: {{ $e.extAuthz.timeout }}
    failure_mode_allow: {{ $e.extAuthz.failureModeAllow }}
    status_on_error: { code: ServiceUnavailable }
    # TRUST: the client certificate the gateway listener verified goes to tollgate-authz
    # (attributes.source.certificate) only when that listener asks for one
    # (envoy.clientCertificates): `identity: [mtls]` rules read it.
    include_peer_certificate: {{ $e.clientCertificates.enabled }}
{{- end }}
{{- if include "tollgate.inprocess" $ }}
{{- $r := $.Values.ratelimit }}
{{- if and (include "tollgate.redis.used" $) (include "tollgate.redis.passwordSecret" $) }}
{{- fail "envoy.mode is inprocess: the module reads no Redis password from a Secret; use a Redis without one, or redis.mode none" }}
{{- end }}
{{- if include "tollgate.singleCall" $ }}
{{- fail "envoy.mode inprocess and mode singleCall exclude each other: the module rate-limits in Envoy, single-call mode in tollgate-authz" }}
{{- end }}
{{- $store := include "tollgate.counterStore" (dict "root" $ "values" $e "component" "envoy") | fromJson }}
{{- $module := dict
  "failure_mode" $e.inprocess.failureMode
  "config" "/etc/envoy/tollgate-authz.yaml" }}
# Tollgate in-process: the dynamic module decides in Envoy's workers with the authz config
# beside this file (tollgate-authz.yaml: envoy.defaultRateLimits as its policy's rate_limits,
# the limits mounted from the limits ConfigMap, reloaded on change, and the store of the
# ratelimit section). Its stats are Envoy's: tollgate.* on /stats/prometheus.
- name: envoy.filters.http.dynamic_modules
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilter
    dynamic_module_config: { name: tollgate_envoy, metrics_namespace: tollgate }
    filter_name: tollgate
    filter_config:
      "@type": type.googleapis.com/google.protobuf.StringValue
      value: {{ toJson $module | quote }}
{{- else if include "tollgate.on" (dict "root" $ "component" "ratelimit") }}
- name: envoy.filters.http.ratelimit
  typed_config:
    "@type": type.googleapis.com/envoy.extensions.filters.http.ratelimit.v3.RateLimit
    domain: {{ $e.rateLimit.domain | quote }}
    request_type: external
    timeout: {{ $e.rateLimit.timeout }}
    failure_mode_deny: {{ $e.rateLimit.failureModeDeny }}
    rate_limited_status: { code: TooManyRequests }
    rate_limit_service:
      transport_api_version: V3
      grpc_service:
        envoy_grpc: { cluster_name: tollgate_ratelimit }
{{- end }}
{{- end }}

{{/* ... and the clusters of the two services: every ready pod from the headless Services,
     over HTTP/2, actively health-checked over the gRPC health service so that a pod leaves
     rotation as soon as it reports not-ready on SIGTERM. */}}
{{- define "tollgate.envoy.serviceClusters" -}}
{{- $e := .Values.envoy }}
{{- range $component := list "authz" "ratelimit" }}
{{- $v := index $.Values $component }}
{{- if include "tollgate.on" (dict "root" $ "component" $component) }}
- name: {{ printf "tollgate_%s" $component }}
  type: STRICT_DNS
  dns_lookup_family: V4_PREFERRED
  dns_refresh_rate: 5s
  connect_timeout: 0.25s
  typed_extension_protocol_options:
    envoy.extensions.upstreams.http.v3.HttpProtocolOptions:
      "@type": type.googleapis.com/envoy.extensions.upstreams.http.v3.HttpProtocolOptions
      explicit_http_config:
        http2_protocol_options:
          connection_keepalive: { interval: 30s, timeout: 5s }
  circuit_breakers:
    thresholds:
      - max_connections: 10000
        max_pending_requests: 10000
        max_requests: 10000
  {{- if $.Values.mtls.enabled }}
  {{- $name := printf "%s-headless.%s.svc.%s" (include "tollgate.component" (dict "root" $ "component" $component)) $.Release.Namespace $e.clusterDomain }}
  # mTLS: Envoy presents its client certificate and accepts only a server certificate naming
  # this Service. Both are read through file-based SDS, so a renewed Secret is picked up.
  transport_socket:
    name: envoy.transport_sockets.tls
    typed_config:
      "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
      sni: {{ $name }}
      common_tls_context:
        alpn_protocols: [h2]
        tls_certificate_sds_secret_configs:
          - name: tollgate_client
            sds_config:
              resource_api_version: V3
              path_config_source:
                path: /etc/envoy/tollgate-sds-client.yaml
                watched_directory: { path: /etc/envoy-tls }
        combined_validation_context:
          default_validation_context:
            match_typed_subject_alt_names:
              - san_type: DNS
                matcher: { exact: {{ $name }} }
          validation_context_sds_secret_config:
            name: tollgate_ca
            sds_config:
              resource_api_version: V3
              path_config_source:
                path: /etc/envoy/tollgate-sds-ca.yaml
                watched_directory: { path: /etc/envoy-tls }
  {{- end }}
  health_checks:
    - timeout: 0.5s
      interval: 1s
      no_traffic_interval: 5s
      unhealthy_threshold: 2
      healthy_threshold: 1
      grpc_health_check:
        service_name: {{ if eq $component "authz" }}envoy.service.auth.v3.Authorization{{ else }}envoy.service.ratelimit.v3.RateLimitService{{ end }}
  load_assignment:
    cluster_name: {{ printf "tollgate_%s" $component }}
    endpoints:
      - lb_endpoints:
          - endpoint:
              address:
                socket_address:
                  address: {{ printf "%s-headless.%s.svc.%s" (include "tollgate.component" (dict "root" $ "component" $component)) $.Release.Namespace $e.clusterDomain }}
                  port_value: {{ $v.ports.grpc }}
{{- end }}
{{- end }}
{{- end }}

{{/* The file-based SDS resources the clusters' TLS reads (mtls.enabled): Envoy's client
     certificate and the CA that signed the services' certificates, from the Secret mounted at
     /etc/envoy-tls. */}}
{{- define "tollgate.envoy.sdsClient" -}}
resources:
  - "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
    name: tollgate_client
    tls_certificate:
      certificate_chain: { filename: /etc/envoy-tls/tls.crt }
      private_key: { filename: /etc/envoy-tls/tls.key }
{{- end }}

{{- define "tollgate.envoy.sdsCa" -}}
resources:
  - "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
    name: tollgate_ca
    validation_context:
      trusted_ca: { filename: /etc/envoy-tls/ca.crt }
{{- end }}

{{/* The tollgate-authz config the in-process module loads (/etc/envoy/tollgate-authz.yaml):
     every request public, rate-limited by envoy.defaultRateLimits (Envoy's rate_limits
     actions, which the module's descriptor builder reads as they are) against the limits
     ConfigMap, with the ratelimit section's settings and the chart's counter store. */}}
{{- define "tollgate.envoy.moduleAuthz" -}}
{{- $e := .Values.envoy }}
{{- $r := .Values.ratelimit }}
{{- $store := include "tollgate.counterStore" (dict "root" $ "values" $e "component" "envoy") | fromJson }}
{{- $rule := dict "name" "all" "path" (dict "prefix" "/") "public" true }}
{{- /* As in single-call mode: the descriptors as they are, a key's own limit included (the
     module reads the same `key_limit` entries and `limit` override). */}}
{{- $limits := $e.defaultRateLimits }}
{{- $policy := dict "rules" (list $rule) "rate_limits" $limits }}
{{- $config := dict
  "policy" $policy
  "rate_limit" (dict
    "domain" $e.rateLimit.domain
    "store" $store
    "limits" (dict "path" "/etc/tollgate/limits")
    "failure_mode" $r.failureMode
    "default_algorithm" $r.defaultAlgorithm
    "shadow_mode" $r.shadowMode
    "headers" $r.headers) }}
{{- toYaml $config }}
{{- end }}

{{/* The gateway listener's TLS with client certificates (envoy.clientCertificates): its own
     certificate and the clients' CA, read through file-based SDS from their Secrets' mounts. */}}
{{- define "tollgate.envoy.clientTls" -}}
{{- $c := .Values.envoy.clientCertificates -}}
name: envoy.transport_sockets.tls
typed_config:
  "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.DownstreamTlsContext
  # TRUST: false lets a client without a certificate reach tollgate-authz (401 on `mtls`
  # rules); a certificate that is presented must chain to the clients' CA, or the handshake
  # fails: tollgate-authz only sees certificates this listener verified.
  require_client_certificate: {{ $c.require }}
  common_tls_context:
    tls_certificate_sds_secret_configs:
      - name: gateway_listener
        sds_config:
          resource_api_version: V3
          path_config_source:
            path: /etc/envoy/tollgate-sds-listener.yaml
            watched_directory: { path: /etc/envoy-listener-tls }
    validation_context_sds_secret_config:
      name: gateway_clients_ca
      sds_config:
        resource_api_version: V3
        path_config_source:
          path: /etc/envoy/tollgate-sds-clients-ca.yaml
          watched_directory: { path: /etc/envoy-clients-ca }
{{- end }}

{{- define "tollgate.envoy.sdsListener" -}}
resources:
  - "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
    name: gateway_listener
    tls_certificate:
      certificate_chain: { filename: /etc/envoy-listener-tls/tls.crt }
      private_key: { filename: /etc/envoy-listener-tls/tls.key }
{{- end }}

{{- define "tollgate.envoy.sdsClientsCa" -}}
resources:
  - "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.Secret
    name: gateway_clients_ca
    validation_context:
      trusted_ca: { filename: /etc/envoy-clients-ca/ca.crt }
{{- end }}
