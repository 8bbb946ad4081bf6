//! OpenTelemetry traces: off unless the standard `OTEL_*` environment variables ask for them,
//! exported over OTLP, and joined to the trace Envoy started (W3C `traceparent`, B3).
//!
//! The spans themselves are made with `tollgate_common::trace` (also by crates with no server
//! in them); this module exports them and starts the server span of each gRPC call. When
//! tracing is off nothing here runs on the request path.
//!
//! Switches (the OpenTelemetry SDK's own, so operators configure Tollgate like anything else):
//! - on when `OTEL_EXPORTER_OTLP_ENDPOINT` or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT` is set or
//!   `OTEL_TRACES_EXPORTER=otlp`; off with `OTEL_SDK_DISABLED=true` or `OTEL_TRACES_EXPORTER=none`;
//! - `OTEL_EXPORTER_OTLP_[TRACES_]PROTOCOL`: `http/protobuf` (the default), `http/json` or `grpc`;
//! - `OTEL_SERVICE_NAME`, `OTEL_RESOURCE_ATTRIBUTES`, `OTEL_TRACES_SAMPLER[_ARG]`,
//!   `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_EXPORTER_OTLP_TIMEOUT`, `OTEL_BSP_*`: read by the SDK.

use std::sync::OnceLock;
use std::time::Duration;

use opentelemetry::trace::{
    SpanContext, SpanId, TraceContextExt, TraceFlags, TraceId, TraceState, TracerProvider as _,
};
use opentelemetry_otlp::{Protocol, WithExportConfig, WithHttpConfig};
use opentelemetry_sdk::Resource;
use opentelemetry_sdk::trace::SdkTracerProvider;
use tracing_subscriber::Layer;
use tracing_subscriber::registry::LookupSpan;

use tollgate_common::config::Env;
use tollgate_common::trace::{TARGET, enabled, span};

static PROVIDER: OnceLock<SdkTracerProvider> = OnceLock::new();

/// How spans leave the process.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Transport {
    HttpProtobuf,
    HttpJson,
    Grpc,
}

/// What the environment asks for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct TraceSettings {
    pub transport: Transport,
    /// `service.name` when neither `OTEL_SERVICE_NAME` nor `OTEL_RESOURCE_ATTRIBUTES` sets one.
    pub default_service_name: String,
}

/// Why tracing could not be set up as asked.
#[derive(Debug, thiserror::Error)]
pub enum TraceError {
    #[error("unsupported OTLP protocol {0:?} (use http/protobuf, http/json or grpc)")]
    Protocol(String),
    #[error("unsupported OTEL_TRACES_EXPORTER {0:?} (use otlp or none)")]
    Exporter(String),
    #[error("OTLP exporter: {0}")]
    Build(String),
}

fn truthy(v: Option<&String>) -> bool {
    v.is_some_and(|v| v.trim().eq_ignore_ascii_case("true"))
}

impl TraceSettings {
    /// `Ok(None)` when tracing is off (the default).
    pub fn from_env(env: &Env) -> Result<Option<Self>, TraceError> {
        if truthy(env.get("OTEL_SDK_DISABLED")) {
            return Ok(None);
        }
        let exporter = env.get("OTEL_TRACES_EXPORTER").map(|s| s.trim());
        let endpoint = [
            "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT",
            "OTEL_EXPORTER_OTLP_ENDPOINT",
        ]
        .iter()
        .any(|k| env.get(*k).is_some_and(|v| !v.trim().is_empty()));
        match exporter {
            Some("none") => return Ok(None),
            Some("otlp") => {}
            Some(other) if !other.is_empty() => return Err(TraceError::Exporter(other.into())),
            _ if !endpoint => return Ok(None),
            _ => {}
        }
        let protocol = env
            .get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
            .or_else(|| env.get("OTEL_EXPORTER_OTLP_PROTOCOL"))
            .map(|s| s.trim().to_string());
        let transport = match protocol.as_deref() {
            None | Some("") | Some("http/protobuf") => Transport::HttpProtobuf,
            Some("http/json") => Transport::HttpJson,
            Some("grpc") => Transport::Grpc,
            Some(other) => return Err(TraceError::Protocol(other.into())),
        };
        let default_service_name = std::env::current_exe()
            .ok()
            .and_then(|p| p.file_stem().map(|s| s.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "tollgate".into());
        Ok(Some(Self {
            transport,
            default_service_name,
        }))
    }
}

/// Builds the exporter and the `tracing` layer feeding it, and turns [`enabled`] on. Needs a
/// Tokio runtime (the exporters run their I/O on it).
pub(crate) fn layer<S>(
    settings: &TraceSettings,
    env: &Env,
) -> Result<Box<dyn Layer<S> + Send + Sync>, TraceError>
where
    S: tracing::Subscriber + for<'a> LookupSpan<'a> + Send + Sync,
{
    let provider = match PROVIDER.get() {
        Some(p) => p.clone(),
        None => {
            let p = provider(settings, env)?;
            PROVIDER.get_or_init(|| p).clone()
        }
    };
    let tracer = provider.tracer("tollgate");
    let layer = tracing_opentelemetry::layer()
        .with_tracer(tracer)
        .with_tracked_inactivity(false)
        .with_threads(false)
        .with_location(false);
    // Only our own spans, and no events: a log line never becomes a span event (no second
    // path by which a value could leave the process).
    let filter = tracing_subscriber::filter::filter_fn(|m| m.is_span() && m.target() == TARGET);
    tollgate_common::trace::set_exporting();
    Ok(Box::new(layer.with_filter(filter)))
}

fn provider(settings: &TraceSettings, env: &Env) -> Result<SdkTracerProvider, TraceError> {
    use opentelemetry_otlp::SpanExporter;
    let build = |e: opentelemetry_otlp::ExporterBuildError| TraceError::Build(e.to_string());
    let exporter = match settings.transport {
        Transport::Grpc => SpanExporter::builder()
            .with_tonic()
            .build()
            .map_err(build)?,
        Transport::HttpProtobuf | Transport::HttpJson => {
            let protocol = if settings.transport == Transport::HttpJson {
                Protocol::HttpJson
            } else {
                Protocol::HttpBinary
            };
            let handle = tokio::runtime::Handle::try_current()
                .map_err(|_| TraceError::Build("no Tokio runtime to send spans from".into()))?;
            let client = reqwest::Client::builder()
                .timeout(Duration::from_secs(10))
                .build()
                .map_err(|e| TraceError::Build(e.to_string()))?;
            SpanExporter::builder()
                .with_http()
                .with_protocol(protocol)
                .with_http_client(OnRuntime { client, handle })
                .build()
                .map_err(build)?
        }
    };
    let named = env.contains_key("OTEL_SERVICE_NAME")
        || env
            .get("OTEL_RESOURCE_ATTRIBUTES")
            .is_some_and(|a| a.contains("service.name="));
    let mut resource = Resource::builder();
    if !named {
        resource = resource.with_service_name(settings.default_service_name.clone());
    }
    Ok(SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build())
}

/// The OTLP/HTTP client: the SDK exports from its own thread, while the process's HTTP client
/// (reqwest) needs the Tokio runtime, so each export is handed to the runtime and awaited.
#[derive(Debug)]
struct OnRuntime {
    client: reqwest::Client,
    handle: tokio::runtime::Handle,
}

#[async_trait::async_trait]
impl opentelemetry_http::HttpClient for OnRuntime {
    async fn send_bytes(
        &self,
        request: http::Request<bytes::Bytes>,
    ) -> Result<http::Response<bytes::Bytes>, opentelemetry_http::HttpError> {
        let client = self.client.clone();
        let (parts, body) = request.into_parts();
        let task = self.handle.spawn(async move {
            let mut req = client.request(parts.method, parts.uri.to_string());
            for (k, v) in &parts.headers {
                req = req.header(k, v);
            }
            let resp = req.body(body).send().await?;
            let status = resp.status();
            let headers = resp.headers().clone();
            let body = resp.bytes().await?;
            Ok::<_, reqwest::Error>((status, headers, body))
        });
        let (status, headers, body) = task.await??;
        let mut out = http::Response::new(body);
        *out.status_mut() = status;
        *out.headers_mut() = headers;
        Ok(out)
    }
}

/// Exports the spans still buffered (before the process exits). Blocks until done: call it
/// from a blocking context (`spawn_blocking`), since the export runs on the Tokio runtime.
pub fn flush() {
    if let Some(p) = PROVIDER.get() {
        let _ = p.force_flush();
    }
}

/// The server span of a gRPC call from Envoy, continuing the trace in the call's metadata
/// (Envoy's own span for the call) or else in `fallback` (e.g. the HTTP headers of a
/// CheckRequest, the client's trace). Disabled when tracing is off; reads nothing then.
pub fn server_span<'a>(
    name: &'static str,
    metadata: &tonic::metadata::MetadataMap,
    fallback: impl Fn(&str) -> Option<&'a str>,
) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    let span = span(name, "server");
    let parent = remote_parent(|k| metadata.get(k).and_then(|v| v.to_str().ok()))
        .or_else(|| remote_parent(fallback));
    use tracing_opentelemetry::OpenTelemetrySpanExt;
    if let Some(parent) = parent {
        let cx = opentelemetry::Context::new().with_remote_span_context(parent);
        let _ = span.set_parent(cx);
    }
    let trace_id = span.context().span().span_context().trace_id();
    if trace_id != TraceId::INVALID {
        span.record("trace_id", tracing::field::display(trace_id));
    }
    span
}

/// The trace context in a set of headers: W3C `traceparent` (+ `tracestate`), else B3 single
/// (`b3`), else B3 multi (`x-b3-traceid`, `x-b3-spanid`, `x-b3-sampled`, `x-b3-flags`).
/// `get` looks up a lower-case header name.
pub fn remote_parent<'a>(get: impl Fn(&str) -> Option<&'a str>) -> Option<SpanContext> {
    if let Some(tp) = get("traceparent") {
        let state = get("tracestate")
            .and_then(|s| s.parse::<TraceState>().ok())
            .unwrap_or_default();
        return traceparent(tp, state);
    }
    if let Some(b3) = get("b3") {
        return b3_single(b3);
    }
    let trace = get("x-b3-traceid")?;
    let span = get("x-b3-spanid")?;
    let sampled = match (get("x-b3-flags"), get("x-b3-sampled")) {
        (Some("1"), _) => true,
        (_, Some(s)) => s == "1" || s.eq_ignore_ascii_case("true"),
        // No decision from upstream: ours (the sampler) decides; treat as sampled.
        _ => true,
    };
    context(trace, span, sampled, TraceState::default())
}

fn hex(s: &str, len: usize) -> bool {
    s.len() == len
        && s.bytes()
            .all(|b| b.is_ascii_digit() || (b'a'..=b'f').contains(&b))
}

fn traceparent(v: &str, state: TraceState) -> Option<SpanContext> {
    let mut parts = v.trim().split('-');
    let version = parts.next()?;
    let (trace, span, flags) = (parts.next()?, parts.next()?, parts.next()?);
    // Version ff is forbidden; version 00 has exactly four fields (later ones may add more).
    if !hex(version, 2) || version == "ff" || (version == "00" && parts.next().is_some()) {
        return None;
    }
    if !hex(flags, 2) {
        return None;
    }
    let sampled = u8::from_str_radix(flags, 16).ok()? & 1 == 1;
    context(trace, span, sampled, state)
}

fn b3_single(v: &str) -> Option<SpanContext> {
    let mut parts = v.trim().split('-');
    let trace = parts.next()?;
    let span = parts.next()?;
    let sampled = match parts.next() {
        None => true,
        Some("1") | Some("d") => true,
        Some("0") => false,
        Some(_) => return None,
    };
    context(trace, span, sampled, TraceState::default())
}

fn context(trace: &str, span: &str, sampled: bool, state: TraceState) -> Option<SpanContext> {
    // B3 allows 64-bit trace ids; OpenTelemetry's are 128-bit, left-padded with zeros.
    let trace = match trace.len() {
        16 if hex(trace, 16) => format!("{:0>32}", trace),
        32 if hex(trace, 32) => trace.to_string(),
        _ => return None,
    };
    if !hex(span, 16) {
        return None;
    }
    let trace_id = TraceId::from_hex(&trace).ok()?;
    let span_id = SpanId::from_hex(span).ok()?;
    if trace_id == TraceId::INVALID || span_id == SpanId::INVALID {
        return None;
    }
    let flags = if sampled {
        TraceFlags::SAMPLED
    } else {
        TraceFlags::default()
    };
    Some(SpanContext::new(trace_id, span_id, flags, true, state))
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Env {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    fn headers<'a>(pairs: &'a [(&'a str, &'a str)]) -> impl Fn(&str) -> Option<&'a str> {
        let map: BTreeMap<&str, &str> = pairs.iter().copied().collect();
        move |k| map.get(k).copied()
    }

    #[test]
    fn off_by_default_and_on_by_the_standard_variables() {
        assert_eq!(TraceSettings::from_env(&env(&[])).unwrap(), None);
        let on = TraceSettings::from_env(&env(&[("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c:4318")]))
            .unwrap()
            .unwrap();
        assert_eq!(on.transport, Transport::HttpProtobuf);
        let grpc = TraceSettings::from_env(&env(&[
            ("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "http://c:4317"),
            ("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc"),
        ]))
        .unwrap()
        .unwrap();
        assert_eq!(grpc.transport, Transport::Grpc);
        assert!(
            TraceSettings::from_env(&env(&[("OTEL_TRACES_EXPORTER", "otlp")]))
                .unwrap()
                .is_some()
        );
        for off in [
            [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_SDK_DISABLED", "true"),
            ],
            [
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_TRACES_EXPORTER", "none"),
            ],
        ] {
            assert_eq!(TraceSettings::from_env(&env(&off)).unwrap(), None);
        }
        assert!(matches!(
            TraceSettings::from_env(&env(&[("OTEL_TRACES_EXPORTER", "zipkin")])),
            Err(TraceError::Exporter(_))
        ));
        assert!(matches!(
            TraceSettings::from_env(&env(&[
                ("OTEL_EXPORTER_OTLP_ENDPOINT", "http://c"),
                ("OTEL_EXPORTER_OTLP_PROTOCOL", "thrift")
            ])),
            Err(TraceError::Protocol(_))
        ));
    }

    #[test]
    fn reads_w3c_traceparent() {
        let cx = remote_parent(headers(&[
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
            ("tracestate", "vendor=x"),
        ]))
        .unwrap();
        assert_eq!(
            cx.trace_id().to_string(),
            "4bf92f3577b34da6a3ce929d0e0e4736"
        );
        assert_eq!(cx.span_id().to_string(), "00f067aa0ba902b7");
        assert!(cx.is_sampled() && cx.is_remote());
        assert_eq!(cx.trace_state().get("vendor"), Some("x"));
        let unsampled = remote_parent(headers(&[(
            "traceparent",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-00",
        )]))
        .unwrap();
        assert!(!unsampled.is_sampled());
    }

    #[test]
    fn rejects_malformed_traceparents() {
        for bad in [
            "00-00000000000000000000000000000000-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-0000000000000000-01",
            "ff-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            "00-4BF92F3577B34DA6A3CE929D0E0E4736-00f067aa0ba902b7-01",
            "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01-extra",
            "00-4bf92f3577b34da6a3ce929d0e0e47-00f067aa0ba902b7-01",
            "garbage",
        ] {
            assert!(
                remote_parent(headers(&[("traceparent", bad)])).is_none(),
                "{bad}"
            );
        }
    }

    #[test]
    fn reads_b3_single_and_multi() {
        let single = remote_parent(headers(&[(
            "b3",
            "80f198ee56343ba864fe8b2a57d3eff7-e457b5a2e4d86bd1-1-05e3ac9a4f6e3b90",
        )]))
        .unwrap();
        assert_eq!(
            single.trace_id().to_string(),
            "80f198ee56343ba864fe8b2a57d3eff7"
        );
        assert_eq!(single.span_id().to_string(), "e457b5a2e4d86bd1");
        assert!(single.is_sampled());
        let short =
            remote_parent(headers(&[("b3", "64fe8b2a57d3eff7-e457b5a2e4d86bd1-0")])).unwrap();
        assert_eq!(
            short.trace_id().to_string(),
            "000000000000000064fe8b2a57d3eff7"
        );
        assert!(!short.is_sampled());
        assert!(remote_parent(headers(&[("b3", "0")])).is_none());

        let multi = remote_parent(headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            ("x-b3-sampled", "1"),
        ]))
        .unwrap();
        assert_eq!(
            multi.trace_id().to_string(),
            "463ac35c9f6413ad48485a3953bb6124"
        );
        assert_eq!(multi.span_id().to_string(), "a2fb4a1d1a96d312");
        // traceparent wins when both are present.
        let both = remote_parent(headers(&[
            ("x-b3-traceid", "463ac35c9f6413ad48485a3953bb6124"),
            ("x-b3-spanid", "a2fb4a1d1a96d312"),
            (
                "traceparent",
                "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
            ),
        ]))
        .unwrap();
        assert_eq!(both.span_id().to_string(), "00f067aa0ba902b7");
    }

    #[test]
    fn disabled_spans_cost_nothing_and_read_nothing() {
        assert!(!enabled());
        let md = tonic::metadata::MetadataMap::new();
        let read = std::cell::Cell::new(false);
        let s = server_span("Check", &md, |_| {
            read.set(true);
            None
        });
        assert!(s.is_none());
        assert!(!read.get());
    }
}
