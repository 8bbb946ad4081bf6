//! Spans for export, without the exporter: the on/off switch and the helpers that create and
//! annotate spans. Domain crates (the rate-limit engine's Redis store, authz's identity
//! providers) mark their calls with these; `tollgate-server` sets up the OpenTelemetry exporter
//! that turns them into traces and switches them on.
//!
//! When tracing is off nothing here runs on the request path: callers ask [`enabled`] (one
//! relaxed atomic load) before reading any header or creating any span.

use std::sync::atomic::{AtomicBool, Ordering};

/// The `tracing` target of every span meant for export; the exporter's filter takes only these.
pub const TARGET: &str = "tollgate::trace";

static ENABLED: AtomicBool = AtomicBool::new(false);

/// Whether spans are exported. Check it before doing any tracing work on a hot path.
#[inline]
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// Switches span creation on, once an exporter is listening for [`TARGET`]'s spans.
pub fn set_exporting() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// A span for export, or a disabled span when tracing is off. `name` becomes the span's name,
/// `kind` its OpenTelemetry kind (`server`, `client`, `internal`).
#[inline]
pub fn span(name: &'static str, kind: &'static str) -> tracing::Span {
    if !enabled() {
        return tracing::Span::none();
    }
    tracing::info_span!(
        target: TARGET,
        "span",
        otel.name = name,
        otel.kind = kind,
        otel.status_code = tracing::field::Empty,
        tollgate.decision = tracing::field::Empty,
        tollgate.reason = tracing::field::Empty,
        trace_id = tracing::field::Empty,
    )
}

/// Records a decision and its reason on the current span (attributes `tollgate.decision`,
/// `tollgate.reason`; bounded values only).
pub fn record_outcome(decision: &'static str, reason: &'static str) {
    if enabled() {
        let span = tracing::Span::current();
        span.record("tollgate.decision", decision);
        span.record("tollgate.reason", reason);
    }
}

/// Marks a span as failed (OpenTelemetry status `ERROR`).
pub fn fail(span: &tracing::Span) {
    if enabled() {
        span.record("otel.status_code", "ERROR");
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn disabled_spans_cost_nothing() {
        assert!(!enabled());
        assert!(span("x", "internal").is_none());
    }
}
