//! Connections to the key store's Redis in each topology: one node (a standalone server, or
//! the master the sentinels name) or a Redis Cluster.
//!
//! # One node
//! One multiplexed connection, replaced when it fails: on a connection error, on `READONLY` /
//! `MASTERDOWN` / `LOADING` (a demoted or restarting master), and when it has answered nothing
//! for [`STALL`] (a hung server or a dead peer that never closed). A replacement is established
//! in a background task, so a caller's short deadline never cancels a connect in progress;
//! after a failed attempt callers fail fast until the next one is due (backoff 50 ms to
//! 500 ms), so a Redis that is down costs a Check nothing but the error.
//!
//! With Sentinel, the master is asked of the sentinels (in order, each within the connect
//! timeout) and checked with `ROLE` before use; a watcher asks them again every
//! [`SENTINEL_POLL`] and drops the connection when they name another master. Sentinel itself
//! disconnects clients of a master it demotes; the watcher also covers a demoted master that
//! still answers.
//!
//! # Cluster
//! The redis crate's cluster client: slot routing, redirections and reconnects are its own.
//! Every command the store sends touches a single key (or none), so no call is ever cross-slot.
//!
//! [`Redis::address`] tells the invalidation feed which node to subscribe to and when that
//! changes.

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use futures::FutureExt;
use futures::future::{BoxFuture, Shared};
use parking_lot::Mutex;
use redis::aio::MultiplexedConnection;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::{
    AsyncConnectionConfig, Client, Cmd, ConnectionAddr, ConnectionInfo, ErrorKind, FromRedisValue,
    IntoConnectionInfo, RedisError, RedisResult, ScriptInvocation, ServerErrorKind,
    TlsCertificates,
};
use tokio::sync::watch;

use crate::apikey::KeyStoreError;
use crate::apikey::config::{RedisStoreConfig, Topology};

/// A node connection that answered nothing for this long is replaced.
const STALL: Duration = Duration::from_secs(1);
/// How often the sentinels are asked whether the master moved.
pub(crate) const SENTINEL_POLL: Duration = Duration::from_millis(500);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
const BACKOFF_MAX: Duration = Duration::from_millis(500);

/// The key store's Redis, in whichever topology it is configured.
#[derive(Clone)]
pub(crate) enum Redis {
    Node(Arc<Node>),
    Cluster(Box<ClusterTarget>),
}

/// A Redis Cluster: the cluster client, and the seeds the feed subscribes through.
#[derive(Clone)]
pub(crate) struct ClusterTarget {
    conn: ClusterConnection,
    seeds: Arc<[ConnectionInfo]>,
    certs: Option<Arc<TlsCertificates>>,
}

/// What one store call runs its commands on.
pub(crate) struct Conn {
    inner: ConnInner,
    /// Which node connection this is (0 for a cluster).
    id: u64,
}

enum ConnInner {
    Node(MultiplexedConnection),
    Cluster(ClusterConnection),
}

impl Conn {
    pub(crate) async fn query<T: FromRedisValue>(&mut self, cmd: &Cmd) -> RedisResult<T> {
        match &mut self.inner {
            ConnInner::Node(c) => cmd.query_async(c).await,
            ConnInner::Cluster(c) => cmd.query_async(c).await,
        }
    }

    pub(crate) async fn invoke<T: FromRedisValue>(
        &mut self,
        script: &ScriptInvocation<'_>,
    ) -> RedisResult<T> {
        match &mut self.inner {
            ConnInner::Node(c) => script.invoke_async(c).await,
            ConnInner::Cluster(c) => script.invoke_async(c).await,
        }
    }

    /// Another handle on the same connection, for commands sent concurrently (pipelined).
    pub(crate) fn fork(&self) -> Conn {
        let inner = match &self.inner {
            ConnInner::Node(c) => ConnInner::Node(c.clone()),
            ConnInner::Cluster(c) => ConnInner::Cluster(c.clone()),
        };
        Conn { inner, id: self.id }
    }
}

impl Redis {
    /// Prepares the configured topology. Connects lazily, except that a bad config (an
    /// unreadable `ca_file`, a malformed URL) is an error here.
    pub(crate) fn new(cfg: &RedisStoreConfig) -> Result<Self, KeyStoreError> {
        let certs = match &cfg.ca_file {
            Some(p) => {
                let pem = std::fs::read(p)
                    .map_err(|e| KeyStoreError::Config(format!("ca_file {}: {e}", p.display())))?;
                Some(Arc::new(TlsCertificates {
                    client_tls: None,
                    root_cert: Some(pem),
                }))
            }
            None => None,
        };
        let data_node = |url: &str| -> Result<ConnectionInfo, KeyStoreError> {
            let mut info = url.into_connection_info().map_err(bad_url)?;
            let mut settings = info.redis_settings().clone();
            if let Some(u) = &cfg.username {
                settings = settings.set_username(u);
            }
            if let Some(p) = &cfg.password {
                settings = settings.set_password(p.expose());
            }
            info = info.set_redis_settings(settings);
            Ok(info)
        };
        let connect = AsyncConnectionConfig::new()
            .set_connection_timeout(Some(cfg.connect_timeout))
            .set_response_timeout(Some(cfg.timeout));
        Ok(match cfg.topology() {
            Topology::Standalone(url) => Redis::Node(Arc::new(Node::new(
                Locator::Fixed(data_node(url.expose())?),
                certs,
                connect,
                cfg.connect_timeout,
            ))),
            Topology::Sentinel { master, nodes } => {
                let sentinels = nodes
                    .iter()
                    .map(|u| u.expose().into_connection_info().map_err(bad_url))
                    .collect::<Result<Vec<_>, _>>()?;
                let tls = matches!(sentinels[0].addr(), ConnectionAddr::TcpTls { .. });
                // The master's address comes from the sentinels; everything else from here.
                let template = data_node(&format!(
                    "{}://sentinel-named-master",
                    if tls { "rediss" } else { "redis" }
                ))?;
                Redis::Node(Arc::new(Node::new(
                    Locator::Sentinel(SentinelSet {
                        master: master.to_string(),
                        nodes: sentinels.into(),
                        template,
                        cached: tokio::sync::Mutex::new(None),
                    }),
                    certs,
                    connect,
                    cfg.connect_timeout,
                )))
            }
            Topology::Cluster(nodes) => {
                let seeds = nodes
                    .iter()
                    .map(|u| data_node(u.expose()))
                    .collect::<Result<Vec<_>, _>>()?;
                let mut b = ClusterClientBuilder::new(seeds.clone())
                    .connection_timeout(cfg.connect_timeout)
                    .response_timeout(cfg.timeout);
                if let Some(c) = &certs {
                    b = b.certs(TlsCertificates::clone(c));
                }
                let client = b.build().map_err(bad_url)?;
                let config = redis::cluster::ClusterConfig::new()
                    .set_connection_timeout(cfg.connect_timeout)
                    .set_response_timeout(cfg.timeout);
                Redis::Cluster(Box::new(ClusterTarget {
                    conn: client.get_pending_async_connection_with_config(config),
                    seeds: seeds.into(),
                    certs,
                }))
            }
        })
    }

    /// A connection for one call (establishing one if needed).
    pub(crate) async fn conn(&self) -> Result<Conn, KeyStoreError> {
        match self {
            Redis::Node(n) => n.conn().await,
            Redis::Cluster(c) => Ok(Conn {
                inner: ConnInner::Cluster(c.conn.clone()),
                id: 0,
            }),
        }
    }

    /// Reports how a call on `conn` went, so that a broken node connection is replaced.
    pub(crate) fn settle<T>(&self, conn: &Conn, result: &RedisResult<T>) {
        if let Redis::Node(n) = self {
            match result {
                Ok(_) => n.answered(conn.id),
                Err(e) if needs_new_connection(e) => n.drop_conn(conn.id),
                // A reply (even an error reply) proves the connection alive.
                Err(_) => n.answered(conn.id),
            }
        }
    }

    /// A call ran out of time (on whichever connection is current).
    pub(crate) fn timed_out(&self) {
        if let Redis::Node(n) = self {
            n.timed_out(Instant::now());
        }
    }

    /// Where the invalidation feed should subscribe: the node in use (one-node topologies,
    /// establishing the connection first), or the `attempt`-th seed of a cluster. Returns a
    /// client for it and its address.
    pub(crate) async fn feed_target(
        &self,
        attempt: usize,
    ) -> Result<(Client, String), KeyStoreError> {
        match self {
            Redis::Node(n) => {
                n.conn().await?;
                let info = n
                    .current_info()
                    .ok_or_else(|| KeyStoreError::Unavailable("connection lost".into()))?;
                Ok((client_for(&info, n.certs.as_deref())?, address(&info)))
            }
            Redis::Cluster(c) => {
                let info = &c.seeds[attempt % c.seeds.len()];
                Ok((client_for(info, c.certs.as_deref())?, address(info)))
            }
        }
    }

    /// The address of the node in use (one-node topologies; `None` for a cluster), changing
    /// with every new connection.
    pub(crate) fn address(&self) -> Option<watch::Receiver<Option<String>>> {
        match self {
            Redis::Node(n) => Some(n.address.subscribe()),
            Redis::Cluster(_) => None,
        }
    }

    /// Starts the Sentinel watcher (a no-op for other topologies); it ends with `stop`.
    pub(crate) fn spawn_watcher(&self, stop: watch::Receiver<()>) {
        if let Redis::Node(n) = self
            && matches!(n.locator, Locator::Sentinel(_))
        {
            tokio::spawn(watch_sentinels(Arc::downgrade(n), stop));
        }
    }
}

fn bad_url(e: RedisError) -> KeyStoreError {
    // Never the URL itself: it may hold a password.
    KeyStoreError::Config(format!("redis: {:?}", e.kind()))
}

fn address(info: &ConnectionInfo) -> String {
    match info.addr() {
        ConnectionAddr::Tcp(h, p)
        | ConnectionAddr::TcpTls {
            host: h, port: p, ..
        } => {
            format!("{h}:{p}")
        }
        ConnectionAddr::Unix(p) => p.display().to_string(),
        other => format!("{other:?}"),
    }
}

fn client_for(
    info: &ConnectionInfo,
    certs: Option<&TlsCertificates>,
) -> Result<Client, KeyStoreError> {
    let client = match (certs, info.addr()) {
        (Some(c), ConnectionAddr::TcpTls { .. }) => Client::build_with_tls(info.clone(), c.clone()),
        _ => Client::open(info.clone()),
    };
    client.map_err(bad_url)
}

/// Errors after which the node connection cannot be trusted to serve the next call.
fn needs_new_connection(e: &RedisError) -> bool {
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_unrecoverable_error()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                ServerErrorKind::ReadOnly
                    | ServerErrorKind::MasterDown
                    | ServerErrorKind::BusyLoading
            )
        )
}

/// How a one-node topology finds its node.
enum Locator {
    Fixed(ConnectionInfo),
    Sentinel(SentinelSet),
}

/// The sentinels of one master.
struct SentinelSet {
    master: String,
    nodes: Arc<[ConnectionInfo]>,
    /// Credentials, database and TLS mode for the master, whose address the sentinels give.
    template: ConnectionInfo,
    /// The last sentinel that answered, and a connection to it.
    cached: tokio::sync::Mutex<Option<(usize, MultiplexedConnection)>>,
}

impl SentinelSet {
    /// The master's connection info, as the first sentinel that knows it says.
    async fn master(
        &self,
        certs: Option<&TlsCertificates>,
        timeout: Duration,
    ) -> Result<ConnectionInfo, KeyStoreError> {
        let mut cached = self.cached.lock().await;
        let start = cached.as_ref().map_or(0, |(i, _)| *i);
        let mut last = KeyStoreError::Unavailable("no sentinel answered".into());
        for k in 0..self.nodes.len() {
            let i = (start + k) % self.nodes.len();
            let mut conn = match cached.take() {
                Some((j, c)) if j == i => c,
                _ => match connect_sentinel(&self.nodes[i], certs, timeout).await {
                    Ok(c) => c,
                    Err(e) => {
                        last = e;
                        continue;
                    }
                },
            };
            let asked = tokio::time::timeout(
                timeout,
                redis::cmd("SENTINEL")
                    .arg("GET-MASTER-ADDR-BY-NAME")
                    .arg(&self.master)
                    .query_async::<Option<(String, u16)>>(&mut conn),
            )
            .await;
            match asked {
                Ok(Ok(Some((host, port)))) => {
                    *cached = Some((i, conn));
                    return Ok(self.at(host, port));
                }
                Ok(Ok(None)) => {
                    *cached = Some((i, conn));
                    last = KeyStoreError::Unavailable(format!(
                        "sentinels do not know master {:?}",
                        self.master
                    ));
                }
                Ok(Err(e)) => last = KeyStoreError::Redis(e),
                Err(_) => last = KeyStoreError::Timeout,
            }
        }
        Err(last)
    }

    fn at(&self, host: String, port: u16) -> ConnectionInfo {
        let addr = match self.template.addr() {
            ConnectionAddr::TcpTls {
                insecure,
                tls_params,
                ..
            } => ConnectionAddr::TcpTls {
                host,
                port,
                insecure: *insecure,
                tls_params: tls_params.clone(),
            },
            _ => ConnectionAddr::Tcp(host, port),
        };
        self.template.clone().set_addr(addr)
    }
}

async fn connect_sentinel(
    info: &ConnectionInfo,
    certs: Option<&TlsCertificates>,
    timeout: Duration,
) -> Result<MultiplexedConnection, KeyStoreError> {
    let config = AsyncConnectionConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(timeout));
    let client = client_for(info, certs)?;
    tokio::time::timeout(
        timeout,
        client.get_multiplexed_async_connection_with_config(&config),
    )
    .await
    .map_err(|_| KeyStoreError::Timeout)?
    .map_err(KeyStoreError::Redis)
}

type Pending = Shared<BoxFuture<'static, Result<(), String>>>;

/// The connection to one node.
pub(crate) struct Node {
    locator: Locator,
    certs: Option<Arc<TlsCertificates>>,
    config: AsyncConnectionConfig,
    connect_timeout: Duration,
    current: Mutex<Option<Current>>,
    /// The connect in progress, which every caller that needs a connection awaits.
    pending: Mutex<Option<Pending>>,
    /// After a failed connect: no new attempt before this instant, and the next backoff.
    retry: Mutex<(Option<Instant>, Duration)>,
    address: watch::Sender<Option<String>>,
    next_id: AtomicU64,
}

struct Current {
    conn: MultiplexedConnection,
    info: ConnectionInfo,
    id: u64,
    /// The first of the timeouts since the last answer.
    silent_since: Option<Instant>,
}

impl Node {
    fn new(
        locator: Locator,
        certs: Option<Arc<TlsCertificates>>,
        config: AsyncConnectionConfig,
        connect_timeout: Duration,
    ) -> Self {
        Self {
            locator,
            certs,
            config,
            connect_timeout,
            current: Mutex::new(None),
            pending: Mutex::new(None),
            retry: Mutex::new((None, BACKOFF_MIN)),
            address: watch::Sender::new(None),
            next_id: AtomicU64::new(1),
        }
    }

    fn current_conn(&self) -> Option<Conn> {
        self.current.lock().as_ref().map(|c| Conn {
            inner: ConnInner::Node(c.conn.clone()),
            id: c.id,
        })
    }

    fn current_info(&self) -> Option<ConnectionInfo> {
        self.current.lock().as_ref().map(|c| c.info.clone())
    }

    async fn conn(self: &Arc<Self>) -> Result<Conn, KeyStoreError> {
        if let Some(c) = self.current_conn() {
            return Ok(c);
        }
        let pending = {
            let mut pending = self.pending.lock();
            match &*pending {
                Some(p) => p.clone(),
                None => {
                    let retry_at = self.retry.lock().0;
                    if retry_at.is_some_and(|t| Instant::now() < t) {
                        return Err(KeyStoreError::Unavailable(
                            "redis unreachable; reconnecting".into(),
                        ));
                    }
                    let this = self.clone();
                    let task = tokio::spawn(async move { this.establish().await });
                    let p: Pending = async move { task.await.map_err(|e| e.to_string())? }
                        .boxed()
                        .shared();
                    *pending = Some(p.clone());
                    p
                }
            }
        };
        pending.await.map_err(KeyStoreError::Unavailable)?;
        self.current_conn()
            .ok_or_else(|| KeyStoreError::Unavailable("redis connection lost".into()))
    }

    /// Connects (in its own task: see the module doc) and installs the connection.
    async fn establish(self: Arc<Self>) -> Result<(), String> {
        let result = tokio::time::timeout(self.connect_timeout * 2, self.connect())
            .await
            .unwrap_or(Err(KeyStoreError::Timeout));
        let out = match result {
            Ok((conn, info)) => {
                let id = self.next_id.fetch_add(1, Ordering::Relaxed);
                let addr = address(&info);
                *self.current.lock() = Some(Current {
                    conn,
                    info,
                    id,
                    silent_since: None,
                });
                *self.retry.lock() = (None, BACKOFF_MIN);
                self.address.send_replace(Some(addr));
                Ok(())
            }
            Err(e) => {
                let mut retry = self.retry.lock();
                let backoff = retry.1;
                *retry = (
                    Some(Instant::now() + backoff),
                    (backoff * 2).min(BACKOFF_MAX),
                );
                Err(e.to_string())
            }
        };
        *self.pending.lock() = None;
        out
    }

    async fn connect(&self) -> Result<(MultiplexedConnection, ConnectionInfo), KeyStoreError> {
        let info = match &self.locator {
            Locator::Fixed(info) => info.clone(),
            Locator::Sentinel(s) => {
                s.master(self.certs.as_deref(), self.connect_timeout)
                    .await?
            }
        };
        let client = client_for(&info, self.certs.as_deref())?;
        let mut conn = client
            .get_multiplexed_async_connection_with_config(&self.config)
            .await?;
        if matches!(self.locator, Locator::Sentinel(_)) {
            // During a failover a sentinel may still name the old master: writes there
            // would be lost, so only a node that says it is master is used.
            let role: Vec<redis::Value> = redis::cmd("ROLE").query_async(&mut conn).await?;
            let is_master =
                matches!(role.first(), Some(redis::Value::BulkString(b)) if b == b"master");
            if !is_master {
                return Err(KeyStoreError::Unavailable(format!(
                    "the node the sentinels name ({}) is not master yet",
                    address(&info)
                )));
            }
        }
        Ok((conn, info))
    }

    fn answered(&self, id: u64) {
        if let Some(c) = self.current.lock().as_mut()
            && c.id == id
        {
            c.silent_since = None;
        }
    }

    fn timed_out(&self, now: Instant) {
        let mut current = self.current.lock();
        let Some(c) = current.as_mut() else { return };
        let since = *c.silent_since.get_or_insert(now);
        if now.saturating_duration_since(since) >= STALL {
            *current = None;
        }
    }

    fn drop_conn(&self, id: u64) {
        let mut current = self.current.lock();
        if current.as_ref().is_some_and(|c| c.id == id) {
            *current = None;
        }
    }
}

/// Drops the node connection whenever the sentinels name a master other than the one in use.
async fn watch_sentinels(node: std::sync::Weak<Node>, mut stop: watch::Receiver<()>) {
    let mut tick = tokio::time::interval(SENTINEL_POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tokio::select! {
            _ = tick.tick() => {}
            _ = stop.changed() => return,
        }
        let Some(node) = node.upgrade() else { return };
        let Locator::Sentinel(set) = &node.locator else {
            return;
        };
        let Some(in_use) = node.current_info().map(|i| address(&i)) else {
            continue;
        };
        match set
            .master(node.certs.as_deref(), node.connect_timeout)
            .await
        {
            Ok(info) if address(&info) != in_use => {
                tracing::info!(
                    from = %in_use,
                    to = %address(&info),
                    "the sentinels name a new key store master; reconnecting"
                );
                let mut current = node.current.lock();
                if current.as_ref().is_some_and(|c| address(&c.info) == in_use) {
                    *current = None;
                }
            }
            Ok(_) => {}
            // Sentinels unreachable: keep the node; its own errors will tell.
            Err(_) => {}
        }
    }
}
