//! The seam between Envoy and a decision: a [`Filter`] reads one request through [`Request`]
//! and answers a [`Verdict`]. Nothing here knows about Envoy's ABI, so decision logic is plain
//! Rust, unit-tested with [`testing::FakeRequest`], and the stream layer applies the verdict.

use std::borrow::Cow;
use std::collections::BTreeMap;
use std::fmt;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use serde::Deserialize;

use crate::host::Counter;

/// A decision that runs in Envoy's worker thread, once per request, on the request headers.
pub(crate) trait Filter: Send + Sync + 'static {
    /// Decides about one request. Must not block: work that waits on I/O returns
    /// [`Verdict::Pending`], a future polled on the worker whenever its I/O (on the module's
    /// background runtime) wakes it.
    fn on_request(&self, request: &dyn Request) -> Verdict;

    /// What a request gets on a route whose per-route config switches the filter off: a
    /// filter that sets trusted request headers strips the client's copies of them there too.
    fn on_disabled(&self) -> Mutations {
        Mutations::default()
    }
}

/// Read access to the request being decided, valid for the duration of [`Filter::on_request`].
///
/// Header names are matched case-insensitively by Envoy (they are stored lower case); values are
/// bytes, since HTTP does not promise UTF-8.
pub(crate) trait Request {
    /// The first value of a request header.
    fn header(&self, name: &str) -> Option<&[u8]>;
    /// Every value of a request header, in order.
    fn header_values(&self, name: &str) -> Vec<&[u8]>;
    /// Every request header (name, value), in order; a header sent twice appears twice.
    fn headers(&self) -> Vec<(&[u8], &[u8])>;
    /// `:path` with the query string.
    fn path(&self) -> Option<&str>;
    /// `:method`.
    fn method(&self) -> Option<&str>;
    /// `:authority` / `Host`.
    fn host(&self) -> Option<&str>;
    /// The downstream peer address as Envoy sees it (`ip:port`).
    fn source_address(&self) -> Option<&str>;
    /// The client certificate, when the downstream connection is TLS and the client sent one.
    fn tls_peer(&self) -> Option<TlsPeer<'_>>;
    /// The rule name the route's per-route config names, if any.
    fn route_rule(&self) -> Option<&str>;
    /// The identity methods the route's per-route config puts in place of the rule's
    /// (comma-separated, in order), if any.
    fn route_identity(&self) -> Option<&str> {
        None
    }
    /// The scopes the route's per-route config requires on top of the rule's (space-separated).
    fn route_scopes(&self) -> Option<&str> {
        None
    }
}

/// What Envoy reports about a downstream client certificate.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default)]
pub(crate) struct TlsPeer<'a> {
    /// The subject DN, e.g. `CN=client,O=Example`.
    pub(crate) subject: Option<&'a str>,
    /// The first DNS SAN.
    pub(crate) dns_san: Option<&'a str>,
    /// The first URI SAN (e.g. a SPIFFE id).
    pub(crate) uri_san: Option<&'a str>,
    /// The SHA-256 digest of the certificate, hex.
    pub(crate) sha256: Option<&'a str>,
}

/// What a filter answers about one request.
pub(crate) enum Verdict {
    /// Let the request through to the upstream after applying the mutations.
    Continue(Mutations),
    /// Answer the client directly; the request never reaches the upstream.
    Respond(LocalReply),
    /// The answer needs I/O: the request is paused, the future runs on the module's background
    /// runtime, and the verdict it yields is applied on the worker thread when it completes.
    Pending(Pending),
}

impl fmt::Debug for Verdict {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Verdict::Continue(m) => f.debug_tuple("Continue").field(m).finish(),
            Verdict::Respond(r) => f.debug_tuple("Respond").field(r).finish(),
            Verdict::Pending(_) => f.write_str("Pending(..)"),
        }
    }
}

/// A verdict that waits on I/O: a future the stream polls on its worker thread each time it is
/// woken (see `stream`).
pub(crate) struct Pending(pub(crate) Pin<Box<dyn Future<Output = Verdict> + Send + 'static>>);

impl Pending {
    pub(crate) fn new(future: impl Future<Output = Verdict> + Send + 'static) -> Self {
        Pending(Box::pin(future))
    }
}

/// The verdict of `future` now, if it has one without waiting (a memory store, a cached
/// answer), or [`Verdict::Pending`] with the same future, to be polled again when it can go on.
///
/// The one poll here runs on Envoy's worker inside the background runtime's context (its
/// timers and I/O driver), with a waker that does nothing: a future that is not ready has
/// registered nothing that resumes the stream yet, and the stream polls it again at once with
/// the waker that does (every future re-registers its waker on each poll).
pub(crate) fn now_or_pending(
    future: impl Future<Output = Verdict> + Send + 'static,
    failure_mode: FailureMode,
) -> Verdict {
    let mut future: Pin<Box<dyn Future<Output = Verdict> + Send>> = Box::pin(future);
    let Ok(_context) = crate::runtime::enter() else {
        return failure_mode.verdict();
    };
    let mut cx = Context::from_waker(futures::task::noop_waker_ref());
    match future.as_mut().poll(&mut cx) {
        Poll::Ready(verdict) => verdict,
        Poll::Pending => Verdict::Pending(Pending(future)),
    }
}

/// Changes applied to a request that continues to the upstream. Applied in field order:
/// removals first, so a filter can strip a client's copy of a header and set its own.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Mutations {
    /// Request headers removed (every value). Names are shared (most are fixed at config
    /// time), so a verdict copies none.
    pub(crate) remove_headers: Vec<Arc<str>>,
    /// Request headers set, replacing every existing value.
    pub(crate) set_headers: Vec<(Arc<str>, String)>,
    /// Request header values appended after any existing ones.
    pub(crate) add_headers: Vec<(Arc<str>, String)>,
    /// Headers added to the response the client receives (e.g. rate-limit headers).
    pub(crate) response_headers: Vec<(Cow<'static, str>, String)>,
    /// Dynamic metadata for later filters, access logs and the router.
    pub(crate) metadata: Vec<Metadata>,
    /// The module's counters this verdict increments (bounded labels only).
    pub(crate) counts: Counts,
}

/// The few counters one verdict increments, held inline: a verdict is built per request, and
/// a list of two is not worth an allocation.
#[derive(Debug, Default, Clone, PartialEq)]
pub(crate) struct Counts([Option<(Counter, &'static str)>; Counts::MAX]);

impl Counts {
    /// More than any verdict increments (a decision and a rate limit).
    const MAX: usize = 4;

    pub(crate) fn push(&mut self, counter: Counter, label: &'static str) {
        match self.0.iter_mut().find(|slot| slot.is_none()) {
            Some(slot) => *slot = Some((counter, label)),
            None => debug_assert!(false, "more than {} counts in a verdict", Counts::MAX),
        }
    }

    pub(crate) fn iter(&self) -> impl Iterator<Item = (Counter, &'static str)> + '_ {
        self.0.iter().flatten().copied()
    }

    #[cfg(test)]
    pub(crate) fn contains(&self, count: &(Counter, &str)) -> bool {
        self.iter().any(|c| c == *count)
    }
}

/// One dynamic metadata entry: `key` under `namespace`.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct Metadata {
    pub(crate) namespace: Cow<'static, str>,
    pub(crate) key: Cow<'static, str>,
    pub(crate) value: MetadataValue,
}

/// A dynamic metadata value (the shapes of `google.protobuf.Value`).
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum MetadataValue {
    String(String),
    Number(f64),
    Bool(bool),
    List(Vec<MetadataValue>),
    Struct(BTreeMap<String, MetadataValue>),
}

/// A response sent to the client instead of proxying the request.
#[derive(Debug, Clone, PartialEq)]
pub(crate) struct LocalReply {
    pub(crate) status: u16,
    pub(crate) headers: Vec<(String, String)>,
    pub(crate) body: String,
    /// Envoy's response code details (`%RESPONSE_CODE_DETAILS%`): a short token, no spaces.
    pub(crate) details: &'static str,
}

/// What a request gets when the module itself fails (a panic in a filter, a background runtime
/// that cannot start): deny with 503 by default, or let the request through.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Deserialize)]
#[serde(rename_all = "snake_case")]
pub(crate) enum FailureMode {
    #[default]
    Deny,
    Allow,
}

impl FailureMode {
    /// The verdict for a request the module failed to decide.
    pub(crate) fn verdict(self) -> Verdict {
        match self {
            FailureMode::Deny => Verdict::Respond(LocalReply {
                status: 503,
                headers: vec![("content-type".into(), "text/plain".into())],
                body: "service unavailable\n".into(),
                details: "tollgate_module_failure",
            }),
            FailureMode::Allow => Verdict::Continue(Mutations::default()),
        }
    }
}

/// Test doubles for filters: a request built from a header list.
#[cfg(test)]
pub(crate) mod testing {
    use super::*;

    /// A request with the given headers and attributes.
    #[derive(Debug, Default)]
    pub(crate) struct FakeRequest {
        pub(crate) headers: Vec<(String, Vec<u8>)>,
        pub(crate) path: Option<String>,
        pub(crate) method: Option<String>,
        pub(crate) host: Option<String>,
        pub(crate) source: Option<String>,
        pub(crate) peer_subject: Option<String>,
        pub(crate) peer_dns_san: Option<String>,
        pub(crate) peer_sha256: Option<String>,
        pub(crate) rule: Option<String>,
        pub(crate) identity: Option<String>,
        pub(crate) scopes: Option<String>,
    }

    impl FakeRequest {
        pub(crate) fn get(path: &str) -> Self {
            FakeRequest {
                path: Some(path.into()),
                method: Some("GET".into()),
                host: Some("example.test".into()),
                source: Some("127.0.0.1:4000".into()),
                ..Default::default()
            }
        }

        pub(crate) fn with(mut self, name: &str, value: &str) -> Self {
            self.headers.push((name.into(), value.as_bytes().to_vec()));
            self
        }
    }

    impl Request for FakeRequest {
        fn header(&self, name: &str) -> Option<&[u8]> {
            self.header_values(name).into_iter().next()
        }
        fn header_values(&self, name: &str) -> Vec<&[u8]> {
            self.headers
                .iter()
                .filter(|(k, _)| k.eq_ignore_ascii_case(name))
                .map(|(_, v)| v.as_slice())
                .collect()
        }
        fn headers(&self) -> Vec<(&[u8], &[u8])> {
            self.headers
                .iter()
                .map(|(k, v)| (k.as_bytes(), v.as_slice()))
                .collect()
        }
        fn path(&self) -> Option<&str> {
            self.path.as_deref()
        }
        fn method(&self) -> Option<&str> {
            self.method.as_deref()
        }
        fn host(&self) -> Option<&str> {
            self.host.as_deref()
        }
        fn source_address(&self) -> Option<&str> {
            self.source.as_deref()
        }
        fn tls_peer(&self) -> Option<TlsPeer<'_>> {
            self.peer_subject.as_deref().map(|s| TlsPeer {
                subject: Some(s),
                dns_san: self.peer_dns_san.as_deref(),
                sha256: self.peer_sha256.as_deref(),
                ..TlsPeer::default()
            })
        }
        fn route_rule(&self) -> Option<&str> {
            self.rule.as_deref()
        }
        fn route_identity(&self) -> Option<&str> {
            self.identity.as_deref()
        }
        fn route_scopes(&self) -> Option<&str> {
            self.scopes.as_deref()
        }
    }
}
