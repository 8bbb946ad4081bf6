//! Guards that keep a service reachable while clients hold connections open: the HTTP
//! listeners (the side listener, the admin API) admit at most `max_connections` connections,
//! and admit a new one past that by closing the oldest connection with no request in flight
//! (a probe or a scrape still gets through a slowloris flood); a connection must send its first
//! request's headers within `header_timeout`, and HTTP/1 every later request's too; a failed
//! accept (out of file descriptors) backs off and is logged once per interval with a count;
//! and the process raises its soft file-descriptor limit to the hard one at start, so the
//! listeners share a budget as large as the system allows.
//!
//! The cap is also held to a quarter of the file-descriptor limit, so that what one HTTP
//! listener may hold always leaves room for the gRPC listener.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::time::{Duration, Instant};

use axum::Router;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto::Builder;
use parking_lot::Mutex;
use tokio::sync::Notify;
use tokio_stream::{Stream, StreamExt};
use tower::ServiceExt;

use crate::listeners::Conn;
use tollgate_common::Shutdown;

/// Connections shed by an HTTP listener, by listener and reason (`evicted`, `refused`,
/// `header_timeout`).
pub const SHED: &str = "tollgate_http_connections_shed_total";

/// How often repeated accept failures are logged.
const ACCEPT_LOG_INTERVAL: Duration = Duration::from_secs(10);
const ACCEPT_BACKOFF_MIN: Duration = Duration::from_millis(10);
const ACCEPT_BACKOFF_MAX: Duration = Duration::from_secs(1);

/// The bounds of one HTTP listener.
#[derive(Debug, Clone, Copy)]
pub struct HttpLimits {
    /// `side`, `admin` or `http_authz`: the metric label and log field.
    pub listener: &'static str,
    pub max_connections: usize,
    pub header_timeout: Duration,
}

impl HttpLimits {
    /// `max_connections`, held to a quarter of the process's file-descriptor limit (at least 8).
    fn effective_max(&self) -> usize {
        match fd_limit() {
            Some(n) => self.max_connections.min(((n / 4) as usize).max(8)),
            None => self.max_connections,
        }
    }
}

/// The soft limit on open file descriptors, if there is one.
pub fn fd_limit() -> Option<u64> {
    rustix::process::getrlimit(rustix::process::Resource::Nofile).current
}

/// Raises the soft file-descriptor limit to the hard limit and logs the limit in force.
pub fn raise_fd_limit() {
    use rustix::process::{Resource, Rlimit, getrlimit, setrlimit};
    let Rlimit { current, maximum } = getrlimit(Resource::Nofile);
    if current != maximum {
        let raised = Rlimit {
            current: maximum,
            maximum,
        };
        if let Err(e) = setrlimit(Resource::Nofile, raised) {
            tracing::warn!(soft = ?current, hard = ?maximum, error = %e, "could not raise the file descriptor limit");
        }
    }
    let now = getrlimit(Resource::Nofile).current;
    tracing::info!(
        limit = now.map_or_else(|| "unlimited".to_string(), |n| n.to_string()),
        "open file descriptor limit"
    );
}

/// Backs off after failed accepts and logs them once per interval, with how many failed.
pub(crate) struct AcceptErrors {
    listener: &'static str,
    backoff: Duration,
    unlogged: u64,
    logged_at: Option<Instant>,
}

impl AcceptErrors {
    pub(crate) fn new(listener: &'static str) -> Self {
        Self {
            listener,
            backoff: ACCEPT_BACKOFF_MIN,
            unlogged: 0,
            logged_at: None,
        }
    }

    /// An accept failed: maybe log, then wait before the next.
    pub(crate) async fn failed(&mut self, e: &std::io::Error) {
        self.unlogged += 1;
        if self
            .logged_at
            .is_none_or(|t| t.elapsed() >= ACCEPT_LOG_INTERVAL)
        {
            tracing::warn!(listener = self.listener, error = %e, failures = self.unlogged, interval = ?ACCEPT_LOG_INTERVAL, "accept failed; backing off");
            self.unlogged = 0;
            self.logged_at = Some(Instant::now());
        }
        tokio::time::sleep(self.backoff).await;
        self.backoff = (self.backoff * 2).min(ACCEPT_BACKOFF_MAX);
    }

    pub(crate) fn succeeded(&mut self) {
        self.backoff = ACCEPT_BACKOFF_MIN;
    }
}

/// One admitted connection.
struct Slot {
    in_flight: AtomicUsize,
    requested: AtomicBool,
    close: Notify,
}

/// The admitted connections, oldest first.
struct Slots {
    max: usize,
    next: AtomicU64,
    open: Mutex<BTreeMap<u64, Arc<Slot>>>,
}

impl Slots {
    /// Admits a connection, closing the oldest idle one when full; `None` when every admitted
    /// connection has a request in flight.
    fn admit(&self, listener: &'static str) -> Option<(u64, Arc<Slot>)> {
        let mut open = self.open.lock();
        if open.len() >= self.max {
            let idle = open
                .iter()
                .find(|(_, s)| s.in_flight.load(Ordering::Acquire) == 0)
                .map(|(id, _)| *id);
            match idle.and_then(|id| open.remove(&id)) {
                Some(victim) => {
                    victim.close.notify_one();
                    shed(listener, "evicted");
                }
                None => {
                    shed(listener, "refused");
                    return None;
                }
            }
        }
        let id = self.next.fetch_add(1, Ordering::Relaxed);
        let slot = Arc::new(Slot {
            in_flight: AtomicUsize::new(0),
            requested: AtomicBool::new(false),
            close: Notify::new(),
        });
        open.insert(id, slot.clone());
        Some((id, slot))
    }

    fn release(&self, id: u64) {
        self.open.lock().remove(&id);
    }
}

fn shed(listener: &'static str, reason: &'static str) {
    metrics::counter!(SHED, "listener" => listener, "reason" => reason).increment(1);
}

/// Counts a request in flight on its connection for as long as it lives.
struct InFlight(Arc<Slot>);

impl InFlight {
    fn new(slot: &Arc<Slot>) -> Self {
        slot.requested.store(true, Ordering::Release);
        slot.in_flight.fetch_add(1, Ordering::AcqRel);
        Self(slot.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.in_flight.fetch_sub(1, Ordering::AcqRel);
    }
}

/// Serves `router` on the connections of `conns` within `limits` until the stream ends, then
/// lets open requests finish.
pub(crate) async fn serve_http(
    mut conns: impl Stream<Item = std::io::Result<Conn>> + Unpin,
    router: Router,
    limits: HttpLimits,
) {
    let slots = Arc::new(Slots {
        max: limits.effective_max(),
        next: AtomicU64::new(0),
        open: Mutex::new(BTreeMap::new()),
    });
    tracing::debug!(listener = limits.listener, max_connections = slots.max, header_timeout = ?limits.header_timeout, "HTTP listener bounds");
    let graceful = hyper_util::server::graceful::GracefulShutdown::new();
    let mut builder = Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_timeout);
    while let Some(conn) = conns.next().await {
        let Ok(conn) = conn else { continue };
        let Some((id, slot)) = slots.admit(limits.listener) else {
            continue;
        };
        let svc = counting(router.clone(), slot.clone());
        let fut = builder
            .serve_connection_with_upgrades(TokioIo::new(conn), svc)
            .into_owned();
        let fut = graceful.watch(fut);
        tokio::spawn(watch(fut, slot, id, slots.clone(), limits));
    }
    // The stream ended because the listener is stopping: let open requests finish.
    graceful.shutdown().await;
}

/// `router` as a connection's service that counts its requests in flight on `slot`.
fn counting(
    router: Router,
    slot: Arc<Slot>,
) -> impl hyper::service::Service<
    http::Request<hyper::body::Incoming>,
    Response = axum::response::Response,
    Error = Infallible,
    Future = impl Future<Output = Result<axum::response::Response, Infallible>> + Send,
> + Clone {
    hyper::service::service_fn(move |req| {
        let guard = InFlight::new(&slot);
        let call = router.clone().oneshot(req);
        async move {
            let response = call.await;
            drop(guard);
            Ok::<_, Infallible>(response.unwrap_or_else(|e| match e {}))
        }
    })
}

/// Runs one connection until it ends, is evicted, or sends no request within the header
/// timeout; then frees its slot.
async fn watch(conn: impl Future, slot: Arc<Slot>, id: u64, slots: Arc<Slots>, limits: HttpLimits) {
    tokio::pin!(conn);
    let deadline = tokio::time::sleep(limits.header_timeout);
    tokio::pin!(deadline);
    let mut waiting = true;
    loop {
        tokio::select! {
            _ = &mut conn => break,
            // Evicted: dropping the connection closes it.
            _ = slot.close.notified() => break,
            _ = &mut deadline, if waiting => {
                waiting = false;
                if !slot.requested.load(Ordering::Acquire) {
                    shed(limits.listener, "header_timeout");
                    break;
                }
            }
        }
    }
    slots.release(id);
}

/// Serves `router` on a plain listener within `limits` until `stop` triggers (the admin API).
pub fn serve_plain(
    listener: tokio::net::TcpListener,
    router: Router,
    limits: HttpLimits,
    stop: Shutdown,
) -> impl Future<Output = ()> + Send + 'static {
    serve_listener(listener, None, router, limits, stop)
}

/// [`serve_plain`], with TLS when `tls` is given (handshakes bounded as on the side listener).
pub fn serve_listener(
    listener: tokio::net::TcpListener,
    tls: Option<crate::tls::ReloadingAcceptor>,
    router: Router,
    limits: HttpLimits,
    stop: Shutdown,
) -> impl Future<Output = ()> + Send + 'static {
    let conns = crate::listeners::incoming(listener, tls, stop, limits.listener);
    serve_http(conns, router, limits)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_full_listener_evicts_its_oldest_idle_connection_or_refuses() {
        let slots = Slots {
            max: 2,
            next: AtomicU64::new(0),
            open: Mutex::new(BTreeMap::new()),
        };
        let (a, sa) = slots.admit("side").unwrap();
        let (_b, sb) = slots.admit("side").unwrap();
        let busy_b = InFlight::new(&sb);
        // Full: `a` is the oldest idle one.
        let (_c, sc) = slots.admit("side").unwrap();
        assert!(!slots.open.lock().contains_key(&a));
        let _busy_c = InFlight::new(&sc);
        // Full and every connection busy: refused.
        assert!(slots.admit("side").is_none());
        drop(busy_b);
        assert!(slots.admit("side").is_some());
        drop(sa);
    }
}
