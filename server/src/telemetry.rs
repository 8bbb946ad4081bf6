//! Logs and metrics: JSON (or text) logs through `tracing`, the level changeable at runtime, and
//! one process-wide Prometheus recorder rendered by every service's `/metrics`.

use std::io::IsTerminal;
use std::sync::OnceLock;

use metrics_exporter_prometheus::{PrometheusBuilder, PrometheusHandle};
use serde::Deserialize;
use tracing_subscriber::EnvFilter;
use tracing_subscriber::Layer;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::reload;
use tracing_subscriber::util::SubscriberInitExt;

use tollgate_common::config::{Errors, Validate, join};

/// Log line format.
#[derive(Debug, Clone, Copy, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum LogFormat {
    #[default]
    Json,
    Text,
}

fn default_level() -> String {
    "info".into()
}

/// The `log:` section.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct LogConfig {
    #[serde(default)]
    pub format: LogFormat,
    /// A level (`info`) or an `EnvFilter` directive list (`info,tollgate_ratelimit=debug`).
    /// `TOLLGATE_LOG` overrides it.
    #[serde(default = "default_level")]
    pub level: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            format: LogFormat::Json,
            level: default_level(),
        }
    }
}

impl Validate for LogConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        if let Err(e) = EnvFilter::try_new(&self.level) {
            errors.push(join(at, "level"), format!("invalid level or filter: {e}"));
        }
    }
}

type FilterHandle = reload::Handle<EnvFilter, tracing_subscriber::Registry>;
static FILTER: OnceLock<FilterHandle> = OnceLock::new();

/// Installs the global logger once; later calls (tests starting several services) do nothing.
///
/// The log filter applies to log lines only: spans meant for OpenTelemetry (see
/// [`crate::trace`]) have their own filter, so `level: warn` does not switch tracing off. When
/// the `OTEL_*` environment asks for traces, call this inside the Tokio runtime.
pub fn init_logging(cfg: &LogConfig) {
    if FILTER.get().is_some() {
        return;
    }
    let level = std::env::var("TOLLGATE_LOG").unwrap_or_else(|_| cfg.level.clone());
    let filter = EnvFilter::try_new(&level).unwrap_or_else(|_| EnvFilter::new("info"));
    let (filter, handle) = reload::Layer::new(filter);
    let env = tollgate_common::config::process_env();
    // A bad OTEL_* setting turns tracing off, reported once logging works; it never stops
    // the service.
    let (settings, mut trace_error) = match crate::trace::TraceSettings::from_env(&env) {
        Ok(s) => (s, None),
        Err(e) => (None, Some(e)),
    };
    let result = match cfg.format {
        LogFormat::Json => {
            let registry = tracing_subscriber::registry().with(
                tracing_subscriber::fmt::layer()
                    .json()
                    .flatten_event(true)
                    // With tracing on, a line inside a traced call carries its span's fields,
                    // the trace id among them, to find the trace from the log and back.
                    .with_current_span(settings.is_some())
                    .with_span_list(false)
                    .with_filter(filter),
            );
            let otel = settings.as_ref().and_then(|s| {
                crate::trace::layer(s, &env)
                    .map_err(|e| trace_error = Some(e))
                    .ok()
            });
            registry.with(otel).try_init()
        }
        LogFormat::Text => {
            // Colour only for a terminal: in a file or a log collector the escape codes are noise.
            let ansi = std::io::stdout().is_terminal();
            let registry = tracing_subscriber::registry().with(
                tracing_subscriber::fmt::layer()
                    .with_ansi(ansi)
                    .with_filter(filter),
            );
            let otel = settings.as_ref().and_then(|s| {
                crate::trace::layer(s, &env)
                    .map_err(|e| trace_error = Some(e))
                    .ok()
            });
            registry.with(otel).try_init()
        }
    };
    if result.is_ok() {
        let _ = FILTER.set(handle);
        match (trace_error, &settings) {
            (Some(e), _) => tracing::error!(error = %e, "OpenTelemetry tracing is off"),
            (None, Some(s)) => {
                tracing::info!(transport = ?s.transport, "exporting OpenTelemetry traces")
            }
            (None, None) => {}
        }
    }
}

/// Changes the log filter of a running process.
pub fn set_log_level(directives: &str) -> Result<(), String> {
    let filter = EnvFilter::try_new(directives).map_err(|e| e.to_string())?;
    let handle = FILTER.get().ok_or("logging is not initialised")?;
    handle.reload(filter).map_err(|e| e.to_string())
}

/// Latency buckets in seconds, fit for sub-millisecond decisions (50 µs … 1 s).
pub const LATENCY_BUCKETS: &[f64] = &[
    0.00005, 0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0,
];

/// The process-wide Prometheus recorder, installed on first use.
pub fn prometheus() -> &'static PrometheusHandle {
    static HANDLE: OnceLock<PrometheusHandle> = OnceLock::new();
    HANDLE.get_or_init(|| {
        let builder = PrometheusBuilder::new()
            .set_buckets(LATENCY_BUCKETS)
            .expect("non-empty bucket list");
        let recorder = builder.build_recorder();
        let handle = recorder.handle();
        // Another recorder may already be installed (a test harness); ours still renders
        // whatever was recorded through it.
        let _ = metrics::set_global_recorder(recorder);
        let upkeep = handle.clone();
        std::thread::Builder::new()
            .name("metrics-upkeep".into())
            .spawn(move || {
                loop {
                    std::thread::sleep(std::time::Duration::from_secs(5));
                    upkeep.run_upkeep();
                }
            })
            .expect("spawn metrics upkeep thread");
        handle
    })
}
