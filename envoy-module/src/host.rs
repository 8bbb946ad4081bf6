//! What the stream layer needs from Envoy during one hook, as a trait: the FFI layer implements
//! it over Envoy's callbacks, the tests over a recording fake. Also the metrics the module
//! defines and the [`RequestView`] a filter reads the request through.

use std::cell::OnceCell;
use std::sync::Arc;

use crate::config::RouteSettings;
use crate::filter::{LocalReply, Metadata, Request, TlsPeer};

/// Envoy's side of one HTTP stream, for the duration of one event hook.
pub(crate) trait Host {
    type Scheduler: Scheduler;

    /// The first value of a request header.
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// Every value of a request header.
    fn header_values(&self, name: &str) -> Vec<&[u8]>;
    /// Every request header (name, value), in order; a header sent twice appears twice.
    fn headers(&self) -> Vec<(&[u8], &[u8])>;
    /// A string attribute of the request or connection, copied (Envoy may build an attribute
    /// in a scratch buffer that its next attribute read reuses). Empty values read as `None`.
    fn attribute(&self, attribute: Attribute) -> Option<String>;
    /// The route's per-route settings, if the route carries any.
    fn route(&self) -> Option<Arc<RouteSettings>>;

    fn remove_header(&mut self, name: &str);
    fn set_header(&mut self, name: &str, value: &str);
    fn add_header(&mut self, name: &str, value: &str);
    /// Adds a header to the response headers (only meaningful in the response-headers hook).
    fn add_response_header(&mut self, name: &str, value: &str);
    /// Sets dynamic metadata: `entries`, all under one namespace, in one call where the ABI
    /// allows (Envoy merges each call into the stream's metadata, and a call costs more than
    /// a field).
    fn set_metadata(&mut self, entries: &[Metadata]);
    /// Answers the client; Envoy stops the request's way to the upstream.
    fn send_response(&mut self, reply: &LocalReply);
    /// Resumes a request paused by an earlier hook.
    fn continue_decoding(&mut self);
    /// A handle that wakes this stream on its worker thread from any thread; `None` when Envoy
    /// cannot provide one.
    fn scheduler(&mut self) -> Option<Self::Scheduler>;

    /// Increments one of the module's counters by one.
    fn count(&mut self, counter: Counter, label: &'static str);
    /// Records a value in one of the module's histograms.
    fn record(&mut self, histogram: Histogram, value: u64);
}

/// Wakes a paused stream from a background thread. Dropping it releases Envoy's scheduler.
pub(crate) trait Scheduler: Send + 'static {
    /// Asks Envoy to run the stream's `scheduled` hook with `event` on its worker thread.
    fn commit(&self, event: u64);
}

/// The string attributes the module reads (a subset of Envoy's attribute ids).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Attribute {
    Path,
    Method,
    Host,
    SourceAddress,
    PeerSubject,
    PeerDnsSan,
    PeerUriSan,
    PeerSha256,
}

/// The module's counters, defined once per filter config.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Counter {
    /// Requests by final `verdict`: continue, respond, disabled (a paused request counts once,
    /// with the verdict it resumed with).
    Requests,
    /// Requests paused for a background verdict (`verdict` label: always `pending`).
    Paused,
    /// Module failures answered with the failure mode, by `stage`: decide, hook, resume,
    /// background.
    Failures,
    /// Local replies by `details` (the reply's response code details token, a constant).
    Replies,
    /// Requests let through that a rate limit applied to (`decision` label: always `ok`).
    /// Denials count as replies (`tollgate_rate_limited`).
    RateLimit,
    /// Authorization decisions of requests let through, by `reason` (tollgate-authz's
    /// reasons: allowed, public, route_disabled, ...). Denials count as replies
    /// (`tollgate_denied`, `tollgate_rate_limited`, `tollgate_unavailable`).
    Decisions,
}

/// The module's histograms.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Histogram {
    /// How long a paused request waited for its background verdict, in microseconds.
    PendingMicros,
}

impl Counter {
    pub(crate) const ALL: [Counter; 6] = [
        Counter::Requests,
        Counter::Paused,
        Counter::Failures,
        Counter::Replies,
        Counter::RateLimit,
        Counter::Decisions,
    ];

    /// The stat name and its one label (bounded values only, listed above).
    pub(crate) fn name_and_label(self) -> (&'static str, &'static str) {
        match self {
            Counter::Requests => ("requests", "verdict"),
            Counter::Paused => ("paused", "verdict"),
            Counter::Failures => ("failures", "stage"),
            Counter::Replies => ("replies", "details"),
            Counter::RateLimit => ("ratelimit", "decision"),
            Counter::Decisions => ("decisions", "reason"),
        }
    }
}

impl Histogram {
    pub(crate) const ALL: [Histogram; 1] = [Histogram::PendingMicros];

    pub(crate) fn name(self) -> &'static str {
        match self {
            Histogram::PendingMicros => "pending_us",
        }
    }
}

/// The request as a filter sees it: the host's reads plus the route's rule. Attributes are read
/// from Envoy once, on first use.
pub(crate) struct RequestView<'a, H> {
    host: &'a H,
    route: Option<&'a RouteSettings>,
    attributes: [OnceCell<Option<String>>; ATTRIBUTES.len()],
}

const ATTRIBUTES: [Attribute; 8] = [
    Attribute::Path,
    Attribute::Method,
    Attribute::Host,
    Attribute::SourceAddress,
    Attribute::PeerSubject,
    Attribute::PeerDnsSan,
    Attribute::PeerUriSan,
    Attribute::PeerSha256,
];

impl<'a, H: Host> RequestView<'a, H> {
    pub(crate) fn new(host: &'a H, route: Option<&'a RouteSettings>) -> Self {
        RequestView {
            host,
            route,
            attributes: Default::default(),
        }
    }

    fn attribute(&self, attribute: Attribute) -> Option<&str> {
        let slot = ATTRIBUTES.iter().position(|a| *a == attribute)?;
        self.attributes[slot]
            .get_or_init(|| self.host.attribute(attribute))
            .as_deref()
    }
}

impl<H: Host> Request for RequestView<'_, H> {
    fn header(&self, name: &str) -> Option<&[u8]> {
        self.host.header(name)
    }
    fn header_values(&self, name: &str) -> Vec<&[u8]> {
        self.host.header_values(name)
    }
    fn headers(&self) -> Vec<(&[u8], &[u8])> {
        self.host.headers()
    }
    fn path(&self) -> Option<&str> {
        self.attribute(Attribute::Path)
    }
    fn method(&self) -> Option<&str> {
        self.attribute(Attribute::Method)
    }
    fn host(&self) -> Option<&str> {
        self.attribute(Attribute::Host)
    }
    fn source_address(&self) -> Option<&str> {
        self.attribute(Attribute::SourceAddress)
    }
    fn tls_peer(&self) -> Option<TlsPeer<'_>> {
        // The digest is present exactly when the client presented a certificate.
        let sha256 = self.attribute(Attribute::PeerSha256)?;
        Some(TlsPeer {
            subject: self.attribute(Attribute::PeerSubject),
            dns_san: self.attribute(Attribute::PeerDnsSan),
            uri_san: self.attribute(Attribute::PeerUriSan),
            sha256: Some(sha256),
        })
    }
    fn route_rule(&self) -> Option<&str> {
        self.route.and_then(|r| r.rule.as_deref())
    }
    fn route_identity(&self) -> Option<&str> {
        self.route.and_then(|r| r.identity.as_deref())
    }
    fn route_scopes(&self) -> Option<&str> {
        self.route.and_then(|r| r.scopes.as_deref())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn metric_names_are_distinct() {
        let mut names: Vec<&str> = Counter::ALL.iter().map(|c| c.name_and_label().0).collect();
        names.extend(Histogram::ALL.iter().map(|h| h.name()));
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count);
        // The FFI layer indexes its id arrays by discriminant.
        for (i, c) in Counter::ALL.iter().enumerate() {
            assert_eq!(*c as usize, i);
        }
    }
}
