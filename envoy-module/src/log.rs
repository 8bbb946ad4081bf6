//! `tracing` events from the module (and, later, the engines it runs) written into Envoy's own
//! log, under Envoy's `dynamic_modules` logger and at Envoy's current level, so an operator reads
//! one log. The FFI layer supplies the [`Sink`]; this module only formats.

use std::io;
use std::sync::OnceLock;

use tracing::{Level, Metadata};
use tracing_subscriber::fmt::MakeWriter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;
use tracing_subscriber::{Layer, filter};

/// Where formatted lines go.
#[derive(Clone, Copy)]
pub(crate) struct Sink {
    /// Writes one line at a level.
    pub(crate) write: fn(Level, &str),
    /// Whether Envoy would keep a line at this level (asked per event, so a level changed at
    /// runtime through Envoy's admin endpoint takes effect at once).
    pub(crate) enabled: fn(Level) -> bool,
}

static SINK: OnceLock<Sink> = OnceLock::new();

/// Routes this process's `tracing` events from the module into `sink`. Once per process; a
/// second call (or another global subscriber already set) leaves the first in place.
pub(crate) fn install(sink: Sink) {
    if SINK.set(sink).is_err() {
        return;
    }
    let layer = tracing_subscriber::fmt::layer()
        .with_writer(EnvoyWriter)
        .with_ansi(false)
        .without_time()
        .with_level(false)
        .with_target(true)
        .with_filter(filter::filter_fn(|meta| {
            SINK.get().is_some_and(|s| (s.enabled)(*meta.level()))
        }));
    let _ = tracing_subscriber::registry().with(layer).try_init();
}

/// Makes one [`Line`] per event, carrying the event's level.
struct EnvoyWriter;

impl<'a> MakeWriter<'a> for EnvoyWriter {
    type Writer = Line;

    fn make_writer(&'a self) -> Line {
        Line::new(Level::INFO)
    }

    fn make_writer_for(&'a self, meta: &Metadata<'_>) -> Line {
        Line::new(*meta.level())
    }
}

/// One formatted event, handed to Envoy when the formatter drops it.
struct Line {
    level: Level,
    buf: Vec<u8>,
}

impl Line {
    fn new(level: Level) -> Self {
        Line {
            level,
            buf: Vec::with_capacity(128),
        }
    }
}

impl io::Write for Line {
    fn write(&mut self, data: &[u8]) -> io::Result<usize> {
        self.buf.extend_from_slice(data);
        Ok(data.len())
    }

    fn flush(&mut self) -> io::Result<()> {
        Ok(())
    }
}

impl Drop for Line {
    fn drop(&mut self) {
        let text = String::from_utf8_lossy(&self.buf);
        let text = text.trim_end_matches('\n');
        if let (Some(sink), false) = (SINK.get(), text.is_empty()) {
            (sink.write)(self.level, text);
        }
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Mutex;

    use super::*;

    static LINES: Mutex<Vec<(Level, String)>> = Mutex::new(Vec::new());

    fn record(level: Level, line: &str) {
        LINES.lock().unwrap().push((level, line.to_string()));
    }

    #[test]
    fn events_reach_the_sink_as_single_lines_at_their_level_when_enabled() {
        install(Sink {
            write: record,
            enabled: |level| level <= Level::INFO,
        });
        tracing::warn!(key = "k1", "store unreachable");
        tracing::debug!("not kept at Envoy's level");
        let lines = LINES.lock().unwrap().clone();
        assert_eq!(lines.len(), 1, "{lines:?}");
        assert_eq!(lines[0].0, Level::WARN);
        assert!(lines[0].1.contains("store unreachable"), "{lines:?}");
        assert!(lines[0].1.contains("key=\"k1\""), "{lines:?}");
        assert!(!lines[0].1.ends_with('\n'));
    }
}
