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
        {{- if and (include "tollgate.inprocess" $) $e.clientCertificates.enabled }}
        # TRUST: in-process, the module reads the client certificate the gateway listener
        # verified from this header (Envoy's module ABI does not hand it over), set here from
        # the connection; the client's own copy is dropped first. The module believes it only
        # when its fingerprint is the connection's, and removes it before the upstream.
        - remove: x-tollgate-peer-certificate
        - append:
            header: { key: x-tollgate-peer-certificate, value: "%DOWNSTREAM_PEER_CERT%" }
            append_action: OVERWRITE_IF_EXISTS_OR_ADD
        {{- end }}
{{- if and $.Values.authz.enabled (not (include "tollgate.inprocess" $)) }}
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
{{- if include "tollgate.singleCall" $ }}
{{- fail "envoy.mode inprocess and mode singleCall exclude each other: the module decides and rate-limits in Envoy, single-call mode in tollgate-authz" }}
{{- end }}
{{- $module := dict
  "failure_mode" $e.inprocess.failureMode
  "dynamic_metadata" $e.inprocess.dynamicMetadata
  "config" "/etc/envoy/tollgate-authz.yaml" }}
# Tollgate in-process: the dynamic module decides in Envoy's workers, with no ext_authz or
# rate-limit call, from the authz config beside this file (tollgate-authz.yaml: rendered from
# authz.* by the same template as tollgate-authz's own, with single-call mode's rate_limit
# section: the limits ConfigMap mounted and reloaded on change, the counter store of redis.*).
# Its stats are Envoy's: tollgate.* on /stats/prometheus.
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
{{- /* In-process the module decides: Envoy calls neither service. */}}
{{- if and (include "tollgate.on" (dict "root" $ "component" $component)) (not (include "tollgate.inprocess" $)) }}
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

{{/* The per-route config of the in-process module for one route of envoy.routes (with the
     root as `root`), as a JSON object, or nothing when the route needs none: `disabled` on a
     route that skips authz (authz.enabled false: the decision and its limits are skipped, the
     identity headers still removed), or with authz.enabled=false on a route with
     `rateLimits: []`; else the route's `rule`, `identity`, `scopes` (the pair's
     context_extensions). */}}
{{- define "tollgate.envoy.moduleRoute" -}}
{{- $authz := default dict .route.authz }}
{{- $settings := dict }}
{{- if .root.Values.authz.enabled }}
{{- if and (hasKey $authz "enabled") (not $authz.enabled) }}
{{- $settings = dict "disabled" true }}
{{- else }}
{{- if and (hasKey .route "rateLimits") (kindIs "slice" .route.rateLimits) (empty .route.rateLimits) }}
{{- fail (printf "envoy.mode inprocess: route %s has rateLimits: [] but runs authz, and the module skips both or neither on a route; give it a policy rule without limits (authz.rule, with rate_limits: [] on that rule) or authz.enabled: false" .route.name) }}
{{- end }}
{{- with $authz.rule }}{{ $_ := set $settings "rule" . }}{{ end }}
{{- with $authz.identity }}{{ $_ := set $settings "identity" . }}{{ end }}
{{- with $authz.scopes }}{{ $_ := set $settings "scopes" . }}{{ end }}
{{- end }}
{{- else if and (hasKey .route "rateLimits") (kindIs "slice" .route.rateLimits) (empty .route.rateLimits) }}
{{- $settings = dict "disabled" true }}
{{- end }}
{{- if $settings }}{{ toJson $settings }}{{ end }}
{{- end }}

{{/* The module's per-route filter config carrying `settings` (a JSON object). */}}
{{- define "tollgate.envoy.modulePerRoute" -}}
envoy.filters.http.dynamic_modules:
  "@type": type.googleapis.com/envoy.extensions.filters.http.dynamic_modules.v3.DynamicModuleFilterPerRoute
  dynamic_module_config: { name: tollgate_envoy }
  filter_name: tollgate
  filter_config:
    "@type": type.googleapis.com/google.protobuf.StringValue
    value: {{ . | quote }}
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
