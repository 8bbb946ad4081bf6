//! The two listeners every Tollgate service runs: gRPC (the Envoy API + gRPC health) and an HTTP
//! side listener (`/healthz`, `/readyz`, `/metrics`, plus service routes), both optionally TLS,
//! with graceful shutdown: report not-ready, wait `shutdown_delay`, drain for at most
//! `drain_timeout`, stop.
//!
//! Binding is separate from serving so that tests can bind port 0 and learn the addresses, and so
//! that a config is fully validated before any port is taken.

use std::net::SocketAddr;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::{Context, Poll};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use serde::Deserialize;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::{TcpListener, TcpStream};
use tokio_stream::wrappers::ReceiverStream;

use crate::telemetry;
use crate::tls::{ReloadingAcceptor, TlsConfig};
use tollgate_common::Shutdown;
use tollgate_common::config::{Errors, Validate, join};
use tollgate_common::tls::TlsError;

// Loopback by default: the gRPC APIs have no authentication of their own (anyone who reaches
// ShouldRateLimit can spend another caller's quota), so reaching them from elsewhere is an
// explicit choice (an address in the config, mTLS, a NetworkPolicy).
fn default_grpc() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8081))
}
fn default_http() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 8080))
}
fn default_shutdown_delay() -> Duration {
    Duration::from_secs(5)
}
fn default_drain() -> Duration {
    Duration::from_secs(20)
}
fn default_http_max_connections() -> usize {
    256
}
fn default_http_header_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The `server:` section shared by both services.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct ServerConfig {
    /// Where Envoy reaches the gRPC service.
    #[serde(default = "default_grpc")]
    pub grpc_addr: SocketAddr,
    /// The side listener: health, readiness, metrics, service routes.
    #[serde(default = "default_http")]
    pub http_addr: SocketAddr,
    /// TLS (and mTLS with `client_ca_file`) on the gRPC listener.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// TLS on the side listener (usually without a client CA, so probes can reach it).
    #[serde(default)]
    pub http_tls: Option<TlsConfig>,
    /// After SIGTERM, how long to keep serving while reporting not-ready, so load balancers
    /// (Kubernetes endpoints, Envoy's health checks) stop sending new work first.
    #[serde(default = "default_shutdown_delay", with = "humantime_serde")]
    pub shutdown_delay: Duration,
    /// Then how long in-flight requests may take to finish before the process stops anyway.
    #[serde(default = "default_drain", with = "humantime_serde")]
    pub drain_timeout: Duration,
    /// Upper bound of concurrent HTTP/2 streams per gRPC connection.
    #[serde(default)]
    pub max_concurrent_streams: Option<u32>,
    /// Serve gRPC connections on this many threads of their own, each a single-threaded
    /// runtime serving every call of the connections handed to it (round robin). Absent: on
    /// the process's shared runtime, each call a task any worker may pick up.
    #[serde(default)]
    pub grpc_threads: Option<usize>,
    /// Operator endpoints on the side listener (`PUT /loglevel`, CPU profiles), behind a
    /// bearer credential; absent means they are not served.
    #[serde(default)]
    pub debug: Option<crate::debug::DebugConfig>,
    /// Most connections the side listener holds open (also at most a quarter of the
    /// file-descriptor limit); past it a new one closes the oldest idle one.
    #[serde(default = "default_http_max_connections")]
    pub http_max_connections: usize,
    /// How long a side-listener client may take to send a request's headers.
    #[serde(default = "default_http_header_timeout", with = "humantime_serde")]
    pub http_header_timeout: Duration,
}

impl Default for ServerConfig {
    fn default() -> Self {
        Self::with_ports(default_grpc().port(), default_http().port())
    }
}

impl ServerConfig {
    /// Defaults with the given ports on loopback.
    pub fn with_ports(grpc: u16, http: u16) -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], grpc)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], http)),
            tls: None,
            http_tls: None,
            shutdown_delay: default_shutdown_delay(),
            drain_timeout: default_drain(),
            max_concurrent_streams: None,
            grpc_threads: None,
            debug: None,
            http_max_connections: default_http_max_connections(),
            http_header_timeout: default_http_header_timeout(),
        }
    }

    /// A service's own ports as config-loading defaults (see [`crate::config::Defaults`]),
    /// so that a `server:` section that sets only some fields keeps this service's ports.
    pub fn default_ports(grpc: u16, http: u16) -> serde_yaml::Value {
        let d = Self::with_ports(grpc, http);
        let mut server = serde_yaml::Mapping::new();
        server.insert("grpc_addr".into(), d.grpc_addr.to_string().into());
        server.insert("http_addr".into(), d.http_addr.to_string().into());
        let mut root = serde_yaml::Mapping::new();
        root.insert("server".into(), server.into());
        root.into()
    }

    /// Loopback port 0 for both listeners, no delays: what in-process tests want.
    pub fn ephemeral() -> Self {
        Self {
            grpc_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            http_addr: SocketAddr::from(([127, 0, 0, 1], 0)),
            shutdown_delay: Duration::ZERO,
            drain_timeout: Duration::from_secs(5),
            ..Self::default()
        }
    }
}

impl Validate for ServerConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        if self.grpc_addr == self.http_addr && self.grpc_addr.port() != 0 {
            errors.push(join(at, "http_addr"), "must differ from grpc_addr");
        }
        if let Some(tls) = &self.tls {
            tls.validate(&join(at, "tls"), errors);
        }
        if let Some(tls) = &self.http_tls {
            tls.validate(&join(at, "http_tls"), errors);
        }
        if self.grpc_threads == Some(0) {
            errors.push(join(at, "grpc_threads"), "must be at least 1");
        }
        if self.max_concurrent_streams == Some(0) {
            errors.push(join(at, "max_concurrent_streams"), "must be at least 1");
        }
        if let Some(d) = &self.debug {
            d.validate(&join(at, "debug"), errors);
        }
        if self.http_max_connections == 0 {
            errors.push(join(at, "http_max_connections"), "must be at least 1");
        }
        if self.http_header_timeout.is_zero() {
            errors.push(join(at, "http_header_timeout"), "must be greater than 0");
        }
    }
}

/// Why a server could not start or stopped with an error.
#[derive(Debug, thiserror::Error)]
pub enum ServeError {
    #[error("cannot bind {what} listener on {addr}: {source}")]
    Bind {
        what: &'static str,
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] TlsError),
    #[error("gRPC server failed: {0}")]
    Grpc(#[from] tonic::transport::Error),
    #[error(transparent)]
    Debug(#[from] crate::debug::DebugError),
    #[error("cannot start the gRPC threads: {0}")]
    Threads(std::io::Error),
}

/// What a service hands to [`Bound::serve`].
#[derive(Debug)]
pub struct Services {
    /// The gRPC health service name that reports this service's readiness, e.g.
    /// `envoy.service.ratelimit.v3.RateLimitService`.
    pub name: &'static str,
    /// The Envoy API service(s).
    pub grpc: tonic::service::Routes,
    /// Extra side-listener routes (e.g. `/config`).
    pub http: Router,
}

/// Whether the service should receive traffic; shared by `/readyz` and the gRPC health service.
#[derive(Debug, Clone, Default)]
pub struct Readiness(Arc<AtomicBool>);

impl Readiness {
    pub fn set(&self, ready: bool) {
        self.0.store(ready, Ordering::SeqCst);
    }
    pub fn get(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// Both listeners, bound and not yet serving.
#[derive(Debug)]
pub struct Bound {
    pub grpc_addr: SocketAddr,
    pub http_addr: SocketAddr,
    grpc: TcpListener,
    http: TcpListener,
    grpc_tls: Option<ReloadingAcceptor>,
    http_tls: Option<ReloadingAcceptor>,
    cfg: ServerConfig,
    debug: Option<Router>,
    /// Readiness of this server; a service may also flip it (e.g. while its store is down).
    pub readiness: Readiness,
}

const H2: &[&[u8]] = &[b"h2"];
const H1_H2: &[&[u8]] = &[b"h2", b"http/1.1"];

/// Binds both listeners (port 0 picks a free port) and loads TLS material.
pub async fn bind(cfg: &ServerConfig) -> Result<Bound, ServeError> {
    let debug = cfg
        .debug
        .as_ref()
        .map(|d| crate::debug::router(d, &tollgate_common::config::process_env()))
        .transpose()?;
    let grpc_tls = cfg
        .tls
        .as_ref()
        .map(|t| ReloadingAcceptor::new(t, H2))
        .transpose()?;
    let http_tls = cfg
        .http_tls
        .as_ref()
        .map(|t| ReloadingAcceptor::new(t, H1_H2))
        .transpose()?;
    let grpc = TcpListener::bind(cfg.grpc_addr)
        .await
        .map_err(|source| ServeError::Bind {
            what: "gRPC",
            addr: cfg.grpc_addr,
            source,
        })?;
    let http = TcpListener::bind(cfg.http_addr)
        .await
        .map_err(|source| ServeError::Bind {
            what: "HTTP",
            addr: cfg.http_addr,
            source,
        })?;
    Ok(Bound {
        grpc_addr: grpc.local_addr().expect("bound socket has an address"),
        http_addr: http.local_addr().expect("bound socket has an address"),
        grpc,
        http,
        grpc_tls,
        http_tls,
        cfg: cfg.clone(),
        debug,
        readiness: Readiness::default(),
    })
}

impl Bound {
    /// Serves until `shutdown` triggers, then reports not-ready, waits `shutdown_delay`, and
    /// drains in-flight calls for at most `drain_timeout`.
    pub async fn serve(self, services: Services, shutdown: Shutdown) -> Result<(), ServeError> {
        let Bound {
            grpc_addr,
            http_addr,
            grpc,
            http,
            grpc_tls,
            http_tls,
            cfg,
            debug,
            readiness,
        } = self;
        let (health, health_service) = tonic_health::server::health_reporter();
        let name = services.name;

        // Not ready → delay → stop accepting: both listeners stop on `drain`.
        let drain = Shutdown::new();
        {
            let (shutdown, drain, readiness, health) = (
                shutdown.clone(),
                drain.clone(),
                readiness.clone(),
                health.clone(),
            );
            let delay = cfg.shutdown_delay;
            tokio::spawn(async move {
                shutdown.triggered().await;
                readiness.set(false);
                health
                    .set_service_status(name, tonic_health::ServingStatus::NotServing)
                    .await;
                health
                    .set_service_status("", tonic_health::ServingStatus::NotServing)
                    .await;
                tracing::info!(delay = ?delay, "not ready; draining after the delay");
                tokio::time::sleep(delay).await;
                drain.trigger();
            });
        }

        let mut builder = tonic::transport::Server::builder()
            .tcp_nodelay(true)
            .http2_keepalive_interval(Some(Duration::from_secs(30)))
            .http2_keepalive_timeout(Some(Duration::from_secs(10)));
        if let Some(n) = cfg.max_concurrent_streams {
            builder = builder.max_concurrent_streams(n);
        }
        let routes = services.grpc.add_service(health_service);
        let grpc_task = match cfg.grpc_threads {
            None => {
                let grpc_incoming = incoming(grpc, grpc_tls, drain.clone(), "grpc");
                let grpc_drain = drain.clone();
                tokio::spawn(async move {
                    builder
                        .add_routes(routes)
                        .serve_with_incoming_shutdown(grpc_incoming, async move {
                            grpc_drain.triggered().await
                        })
                        .await
                })
            }
            Some(threads) => {
                let mut workers = crate::workers::Workers::start(
                    threads,
                    &builder,
                    &routes,
                    grpc_tls.as_ref(),
                    &drain,
                )
                .map_err(ServeError::Threads)?;
                let grpc_done = workers.finished();
                let accepting = tokio::spawn(accept_grpc(grpc, workers, drain.clone()));
                tokio::spawn(async move {
                    let served = grpc_done.await;
                    let _ = accepting.await;
                    served
                })
            }
        };

        let mut router = side_router(readiness.clone()).merge(services.http);
        if let Some(debug) = debug {
            router = router.merge(debug);
        }
        let limits = crate::conns::HttpLimits {
            listener: "side",
            max_connections: cfg.http_max_connections,
            header_timeout: cfg.http_header_timeout,
        };
        let http_conns = incoming(http, http_tls, drain.clone(), "side");
        let http_task = tokio::spawn(crate::conns::serve_http(http_conns, router, limits));

        health
            .set_service_status(name, tonic_health::ServingStatus::Serving)
            .await;
        health
            .set_service_status("", tonic_health::ServingStatus::Serving)
            .await;
        readiness.set(true);
        tracing::info!(grpc = %grpc_addr, http = %http_addr, service = name, "serving");

        drain.triggered().await;
        let deadline = cfg.drain_timeout;
        let drained = tokio::time::timeout(deadline, async {
            let g = grpc_task.await;
            let _ = http_task.await;
            g
        })
        .await;
        match drained {
            Ok(Ok(Ok(()))) => {
                // Off the runtime's threads: the export itself runs on this runtime.
                let _ = tokio::task::spawn_blocking(crate::trace::flush).await;
                tracing::info!("drained; stopped");
                Ok(())
            }
            Ok(Ok(Err(e))) => Err(ServeError::Grpc(e)),
            Ok(Err(join)) => {
                tracing::error!(error = %join, "gRPC server task failed");
                Ok(())
            }
            Err(_) => {
                tracing::warn!(timeout = ?deadline, "drain timed out; stopping with calls in flight");
                Ok(())
            }
        }
    }
}

fn side_router(readiness: Readiness) -> Router {
    Router::new()
        .route("/healthz", get(|| async { "ok\n" }))
        .route(
            "/readyz",
            get(move || {
                let ready = readiness.get();
                async move {
                    if ready {
                        (StatusCode::OK, "ready\n")
                    } else {
                        (StatusCode::SERVICE_UNAVAILABLE, "not ready\n")
                    }
                }
            }),
        )
        .route("/metrics", get(metrics))
}

async fn metrics() -> impl IntoResponse {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        telemetry::prometheus().render(),
    )
}

/// A connection, plain or TLS.
#[derive(Debug)]
pub enum Conn {
    Plain(TcpStream),
    Tls(Box<tokio_rustls::server::TlsStream<TcpStream>>),
}

/// Peer information of a [`Conn`], available to gRPC handlers through request extensions.
#[derive(Debug, Clone)]
pub struct ConnInfo {
    pub remote_addr: Option<SocketAddr>,
    /// Whether the peer presented a verified client certificate.
    pub client_cert: bool,
}

impl tonic::transport::server::Connected for Conn {
    type ConnectInfo = ConnInfo;
    fn connect_info(&self) -> ConnInfo {
        match self {
            Conn::Plain(s) => ConnInfo {
                remote_addr: s.peer_addr().ok(),
                client_cert: false,
            },
            Conn::Tls(s) => {
                let (tcp, session) = s.get_ref();
                ConnInfo {
                    remote_addr: tcp.peer_addr().ok(),
                    client_cert: session.peer_certificates().is_some_and(|c| !c.is_empty()),
                }
            }
        }
    }
}

impl AsyncRead for Conn {
    fn poll_read(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_read(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_read(cx, buf),
        }
    }
}

impl AsyncWrite for Conn {
    fn poll_write(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write(cx, buf),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write(cx, buf),
        }
    }
    fn poll_flush(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_flush(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_flush(cx),
        }
    }
    fn poll_shutdown(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_shutdown(cx),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_shutdown(cx),
        }
    }
    fn poll_write_vectored(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[std::io::IoSlice<'_>],
    ) -> Poll<std::io::Result<usize>> {
        match self.get_mut() {
            Conn::Plain(s) => Pin::new(s).poll_write_vectored(cx, bufs),
            Conn::Tls(s) => Pin::new(s.as_mut()).poll_write_vectored(cx, bufs),
        }
    }
    /// `false`, though both kinds could write vectored: it is what decides how HTTP/2 (h2)
    /// writes small frames. Told `true`, h2 keeps a DATA payload over 256 bytes out of its
    /// write buffer, to hand it to one vectored write, and flushes before buffering the next
    /// frame: every answer (a Check's is 300-600 bytes) then costs a `writev` of its own, even
    /// when a dozen are ready in the same turn. Told `false`, it copies payloads up to 1 KiB
    /// into the buffer, so the answers of a turn leave in one write. HTTP/1 likewise
    /// flattens a response into one buffer.
    fn is_write_vectored(&self) -> bool {
        false
    }
}

/// Accepts gRPC connections until `stop` and hands each to a gRPC thread.
async fn accept_grpc(listener: TcpListener, workers: crate::workers::Workers, stop: Shutdown) {
    let mut errors = crate::conns::AcceptErrors::new("grpc");
    loop {
        let accepted = tokio::select! {
            _ = stop.triggered() => break,
            a = listener.accept() => a,
        };
        let stream = match accepted {
            Ok((s, _)) => s,
            Err(e) => {
                // Out of file descriptors and similar: back off instead of spinning.
                errors.failed(&e).await;
                continue;
            }
        };
        errors.succeeded();
        let _ = stream.set_nodelay(true);
        if !workers.hand(stream).await {
            break;
        }
    }
}

const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);

/// Accepted connections as a stream; TLS handshakes run in their own tasks so a slow client
/// cannot hold up the accept loop. The stream ends when `stop` triggers. `what` names the
/// listener in logs.
pub(crate) fn incoming(
    listener: TcpListener,
    tls: Option<ReloadingAcceptor>,
    stop: Shutdown,
    what: &'static str,
) -> ReceiverStream<std::io::Result<Conn>> {
    let (tx, rx) = tokio::sync::mpsc::channel(64);
    tokio::spawn(async move {
        let mut errors = crate::conns::AcceptErrors::new(what);
        loop {
            let accepted = tokio::select! {
                _ = stop.triggered() => break,
                a = listener.accept() => a,
            };
            let (stream, peer) = match accepted {
                Ok(a) => a,
                Err(e) => {
                    // Out of file descriptors and similar: back off instead of spinning.
                    errors.failed(&e).await;
                    continue;
                }
            };
            errors.succeeded();
            let _ = stream.set_nodelay(true);
            if !hand_over(stream, Some(peer), tls.as_ref(), &tx).await {
                break;
            }
        }
    });
    ReceiverStream::new(rx)
}

/// Sends an accepted connection to the server that serves `tx`: as it is, or once its TLS
/// handshake is done, in a task of its own so that a slow client holds up no other connection.
/// `false` when the server is gone.
pub(crate) async fn hand_over(
    stream: TcpStream,
    peer: Option<std::net::SocketAddr>,
    tls: Option<&ReloadingAcceptor>,
    tx: &tokio::sync::mpsc::Sender<std::io::Result<Conn>>,
) -> bool {
    let Some(acceptor) = tls else {
        return tx.send(Ok(Conn::Plain(stream))).await.is_ok();
    };
    let acceptor = acceptor.acceptor();
    let tx = tx.clone();
    tokio::spawn(async move {
        match tokio::time::timeout(HANDSHAKE_TIMEOUT, acceptor.accept(stream)).await {
            Ok(Ok(s)) => {
                let _ = tx.send(Ok(Conn::Tls(Box::new(s)))).await;
            }
            Ok(Err(e)) => tracing::debug!(?peer, error = %e, "TLS handshake failed"),
            Err(_) => tracing::debug!(?peer, "TLS handshake timed out"),
        }
    });
    true
}

#[cfg(test)]
mod tests {
    use super::*;

    /// h2 decides from this whether a Check's answer is copied into its write buffer (and
    /// leaves with the other answers of the turn in one write) or flushed alone.
    #[tokio::test]
    async fn connections_are_not_vectored_so_small_answers_share_a_write() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let (client, accepted) = tokio::join!(TcpStream::connect(addr), listener.accept());
        let (server, _) = accepted.unwrap();
        assert!(
            server.is_write_vectored(),
            "tokio's TcpStream writes vectored"
        );
        assert!(!Conn::Plain(server).is_write_vectored());
        drop(client);
    }
}
