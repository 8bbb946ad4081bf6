//! Traces joined across the gateway: Envoy with its OpenTelemetry tracer and both services
//! export OTLP to a receiver in the test; the Check and ShouldRateLimit spans must continue
//! the client's trace with Envoy's own span for the call as their parent, and the Redis call
//! must be a child of ShouldRateLimit, the introspection call a child of Check.

use std::time::Duration;

use tollgate_tests::echo::EchoUpstream;
use tollgate_tests::envoy::{Backends, Envoy, example_config};
use tollgate_tests::oidc::{APP_SILVER, INTROSPECTOR, OidcProvider};
use tollgate_tests::paths::project_root;
use tollgate_tests::process::wait_for;
use tollgate_tests::redis::RedisServer;

use crate::observability::{OtlpReceiver, Service, Span};

const CHECK: &str = "envoy.service.auth.v3.Authorization/Check";
const SHOULD: &str = "envoy.service.ratelimit.v3.RateLimitService/ShouldRateLimit";

/// The example Envoy config with the OpenTelemetry tracer exporting to `otlp` over OTLP/HTTP,
/// flushing every span at once.
pub(crate) fn traced_envoy_config(otlp: std::net::SocketAddr) -> String {
    let provider = format!(
        r#"
name: envoy.tracers.opentelemetry
typed_config:
  "@type": type.googleapis.com/envoy.config.trace.v3.OpenTelemetryConfig
  service_name: envoy
  http_service:
    http_uri:
      uri: http://{otlp}/v1/traces
      cluster: collector
      timeout: 2s
"#
    );
    with_tracer(&provider, otlp, "opentelemetry")
}

/// The example Envoy config with the Zipkin tracer (B3 propagation) reporting to `collector`.
fn zipkin_envoy_config(collector: std::net::SocketAddr) -> String {
    let provider = r#"
name: envoy.tracers.zipkin
typed_config:
  "@type": type.googleapis.com/envoy.config.trace.v3.ZipkinConfig
  collector_cluster: collector
  collector_endpoint: /api/v2/spans
  collector_endpoint_version: HTTP_JSON
  shared_span_context: false
  trace_id_128bit: true
"#;
    with_tracer(provider, collector, "zipkin")
}

fn with_tracer(provider: &str, collector: std::net::SocketAddr, runtime: &str) -> String {
    let mut doc: serde_yaml::Value = serde_yaml::from_str(&example_config()).unwrap();
    let hcm = &mut doc["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"];
    hcm["tracing"] = serde_yaml::from_str("random_sampling: { value: 100 }").unwrap();
    hcm["tracing"]["provider"] = serde_yaml::from_str(provider).unwrap();
    let cluster: serde_yaml::Value = serde_yaml::from_str(&format!(
        r#"
name: collector
type: STATIC
connect_timeout: 1s
load_assignment:
  cluster_name: collector
  endpoints:
  - lb_endpoints:
    - endpoint:
        address:
          socket_address: {{ address: 127.0.0.1, port_value: {} }}
"#,
        collector.port()
    ))
    .unwrap();
    doc["static_resources"]["clusters"]
        .as_sequence_mut()
        .unwrap()
        .push(cluster);
    doc["layered_runtime"] = serde_yaml::from_str(&format!(
        r#"
layers:
- name: static
  static_layer:
    tracing.{runtime}.flush_interval_ms: 100
    tracing.{runtime}.min_flush_spans: 1
"#
    ))
    .unwrap();
    serde_yaml::to_string(&doc).unwrap()
}

fn authz_config(oidc: &OidcProvider) -> String {
    format!(
        r#"
log: {{ format: json, level: info }}
policy:
  no_match: deny
  rules:
    - name: public
      path: {{ prefix: /public }}
      public: true
    - name: api
      path: {{ prefix: / }}
      identity: [introspection]
introspection:
  endpoint: {endpoint}
  client_id: {id}
  client_secret: {secret}
  issuer: {issuer}
"#,
        endpoint = oidc.introspection_endpoint(),
        id = INTROSPECTOR.id,
        secret = INTROSPECTOR.secret,
        issuer = oidc.issuer(),
    )
}

fn ratelimit_config(redis: &str) -> String {
    format!(
        "log: {{ format: json, level: info }}\nstore: {{ type: redis, url: \"{redis}\" }}\nlimits: {{ path: {} }}\n",
        project_root().join("deploy/config/limits").display()
    )
}

#[tokio::test]
async fn check_and_should_rate_limit_spans_continue_envoys_trace() {
    let otlp = OtlpReceiver::start().await.unwrap();
    let redis = RedisServer::start();
    let oidc = OidcProvider::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", otlp.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_string()),
    ];
    let authz = Service::start("tollgate-authz", &authz_config(&oidc), &env, dir.path())
        .await
        .unwrap();
    let ratelimit = Service::start(
        "tollgate-ratelimit",
        &ratelimit_config(&redis.url()),
        &env,
        dir.path(),
    )
    .await
    .unwrap();
    let echo = EchoUpstream::start().await;
    let envoy = Envoy::start_with(
        &traced_envoy_config(otlp.addr),
        Backends {
            upstream: echo.port(),
            authz: authz.grpc_port(),
            ratelimit: ratelimit.grpc_port(),
        },
    )
    .await
    .unwrap();

    // The client starts the trace; Envoy continues it and so must the services.
    let trace_id = "4bf92f3577b34da6a3ce929d0e0e4736";
    let client_span = "00f067aa0ba902b7";
    let resp = reqwest::Client::new()
        .get(envoy.url("/public/anything"))
        .header("traceparent", format!("00-{trace_id}-{client_span}-01"))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());

    let find = |spans: &[Span], name: &str| -> Option<Span> {
        spans
            .iter()
            .find(|s| s.name == name && s.trace_id == trace_id)
            .cloned()
    };
    let (check, should, redis_span, spans) =
        wait_for("the services' spans", Duration::from_secs(30), || {
            let spans = otlp.spans();
            async move {
                let check = find(&spans, CHECK)?;
                let should = find(&spans, SHOULD)?;
                let redis_span = find(&spans, "redis")?;
                // Envoy's spans for the two calls (their parents of ours) arrive too.
                let ids = [&check.parent_span_id, &should.parent_span_id];
                if !ids.iter().all(|id| {
                    spans
                        .iter()
                        .any(|s| &&s.span_id == id && s.service == "envoy")
                }) {
                    return None;
                }
                Some((check, should, redis_span, spans))
            }
        })
        .await;

    let envoy_span = |id: &str| {
        spans
            .iter()
            .find(|s| s.span_id == id)
            .unwrap_or_else(|| panic!("no span {id} in {spans:#?}"))
            .clone()
    };
    for (ours, service) in [(&check, "tollgate-authz"), (&should, "tollgate-ratelimit")] {
        assert_eq!(ours.service, service, "{ours:?}");
        assert_eq!(ours.kind, 2, "a server span: {ours:?}");
        // The parent is Envoy's own span for the gRPC call, not the client's span.
        let parent = envoy_span(&ours.parent_span_id);
        assert_eq!(parent.service, "envoy");
        assert_eq!(parent.trace_id, trace_id);
        assert_ne!(ours.parent_span_id, client_span);
    }
    assert_eq!(check.attribute("tollgate.decision"), Some("allow"));
    assert_eq!(check.attribute("tollgate.reason"), Some("public"));
    assert_eq!(should.attribute("tollgate.decision"), Some("ok"));
    assert_eq!(redis_span.service, "tollgate-ratelimit");
    assert_eq!(redis_span.parent_span_id, should.span_id);
    assert_eq!(redis_span.kind, 3, "a client span: {redis_span:?}");
    // The trace reaches back to the client's span through Envoy's server span.
    assert!(
        spans
            .iter()
            .any(|s| s.service == "envoy" && s.parent_span_id == client_span),
        "{spans:#?}"
    );

    // An opaque token: the introspection call is a child of that request's Check span.
    let opaque = oidc
        .client_credentials(APP_SILVER.id, APP_SILVER.secret, "read", None)
        .await
        .unwrap();
    let second_trace = "0af7651916cd43dd8448eb211c80319c";
    let resp = reqwest::Client::new()
        .get(envoy.url("/orders"))
        .bearer_auth(&opaque)
        .header(
            "traceparent",
            format!("00-{second_trace}-b7ad6b7169203331-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200, "{}", resp.text().await.unwrap());
    let (check, introspection) =
        wait_for("the introspection span", Duration::from_secs(30), || {
            let spans = otlp.spans();
            async move {
                let in_trace = |name: &str| {
                    spans
                        .iter()
                        .find(|s| s.name == name && s.trace_id == second_trace)
                        .cloned()
                };
                Some((in_trace(CHECK)?, in_trace("introspection")?))
            }
        })
        .await;
    assert_eq!(introspection.parent_span_id, check.span_id);
    assert_eq!(introspection.kind, 3, "a client span: {introspection:?}");
    assert_eq!(check.attribute("tollgate.decision"), Some("allow"));
    assert_eq!(check.attribute("tollgate.reason"), Some("allowed"));

    // A log line written inside a traced call names the trace.
    let third_trace = "5b8aa5a2d2c872e8321cf37308d69df2";
    let resp = reqwest::Client::new()
        .get(envoy.url("/orders"))
        .header(
            "traceparent",
            format!("00-{third_trace}-051581bf3cb55c13-01"),
        )
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    wait_for(
        "the denial line with its trace id",
        Duration::from_secs(10),
        || {
            let log = authz.log();
            async move {
                log.lines()
                    .filter_map(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                    .any(|l| l["message"] == "denied" && l["span"]["trace_id"] == third_trace)
                    .then_some(())
            }
        },
    )
    .await;
    drop(envoy);
}

#[tokio::test]
async fn b3_context_from_envoys_zipkin_tracer_is_continued() {
    let collector = OtlpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.endpoint()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_string()),
    ];
    let authz = Service::start(
        "tollgate-authz",
        "log: { format: json, level: info }\npolicy:\n  rules:\n    - name: public\n      path: { prefix: / }\n      public: true\n",
        &env,
        dir.path(),
    )
    .await
    .unwrap();
    let ratelimit = Service::start(
        "tollgate-ratelimit",
        &format!(
            "log: {{ format: json, level: info }}\nlimits: {{ path: {} }}\n",
            project_root().join("deploy/config/limits").display()
        ),
        &env,
        dir.path(),
    )
    .await
    .unwrap();
    let echo = EchoUpstream::start().await;
    let envoy = Envoy::start_with(
        &zipkin_envoy_config(collector.addr),
        Backends {
            upstream: echo.port(),
            authz: authz.grpc_port(),
            ratelimit: ratelimit.grpc_port(),
        },
    )
    .await
    .unwrap();

    let trace_id = "463ac35c9f6413ad48485a3953bb6124";
    let client_span = "a2fb4a1d1a96d312";
    let resp = reqwest::Client::new()
        .get(envoy.url("/public"))
        .header("x-b3-traceid", trace_id)
        .header("x-b3-spanid", client_span)
        .header("x-b3-sampled", "1")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);

    let (ours, spans) = wait_for("spans joined over B3", Duration::from_secs(30), || {
        let spans = collector.spans();
        async move {
            let ours: Vec<Span> = [CHECK, SHOULD]
                .iter()
                .filter_map(|n| {
                    spans
                        .iter()
                        .find(|s| &s.name == n && s.trace_id == trace_id)
                        .cloned()
                })
                .collect();
            let parents_seen = ours
                .iter()
                .all(|o| spans.iter().any(|s| s.span_id == o.parent_span_id));
            (ours.len() == 2 && parents_seen).then_some((ours, spans))
        }
    })
    .await;
    // Each parent is Envoy's egress span for that very call (Zipkin names it so).
    for (span, call) in ours.iter().zip([
        "envoy.service.auth.v3.Authorization.Check egress",
        "envoy.service.ratelimit.v3.RateLimitService.ShouldRateLimit egress",
    ]) {
        assert_ne!(span.parent_span_id, client_span, "{span:?}");
        let parent = spans
            .iter()
            .find(|s| s.span_id == span.parent_span_id)
            .unwrap();
        assert_eq!(parent.trace_id, trace_id);
        assert!(parent.name.ends_with(call), "{parent:?}");
    }
    drop(envoy);
}

/// Without Envoy: OTLP over gRPC, and the W3C context a gRPC caller puts in the metadata.
#[tokio::test]
async fn otlp_grpc_export_and_context_in_grpc_metadata() {
    use tollgate_proto::ratelimit::{RateLimitRequest, RateLimitServiceClient, descriptor};

    let collector = OtlpReceiver::start().await.unwrap();
    let dir = tempfile::tempdir().unwrap();
    let env = [
        ("OTEL_EXPORTER_OTLP_ENDPOINT", collector.grpc_endpoint()),
        ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc".to_string()),
        ("OTEL_SERVICE_NAME", "rl-under-test".to_string()),
        ("OTEL_BSP_SCHEDULE_DELAY", "50".to_string()),
    ];
    let ratelimit = Service::start(
        "tollgate-ratelimit",
        &format!(
            "log: {{ format: json, level: info }}\nlimits: {{ path: {} }}\n",
            project_root().join("deploy/config/limits").display()
        ),
        &env,
        dir.path(),
    )
    .await
    .unwrap();
    let mut client = RateLimitServiceClient::connect(format!("http://{}", ratelimit.grpc))
        .await
        .unwrap();
    let mut req = tonic::Request::new(RateLimitRequest {
        domain: "gateway".into(),
        descriptors: vec![descriptor([("route", "limited")])],
        hits_addend: 0,
    });
    req.metadata_mut().insert(
        "traceparent",
        "00-11112222333344445555666677778888-99990000aaaabbbb-01"
            .parse()
            .unwrap(),
    );
    client.should_rate_limit(req).await.unwrap();

    let span = wait_for("the span over OTLP/gRPC", Duration::from_secs(30), || {
        let spans = collector.spans();
        async move { spans.into_iter().find(|s| s.name == SHOULD) }
    })
    .await;
    assert_eq!(span.service, "rl-under-test");
    assert_eq!(span.trace_id, "11112222333344445555666677778888");
    assert_eq!(span.parent_span_id, "99990000aaaabbbb");
}
