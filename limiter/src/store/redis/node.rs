//! Where the standalone connection goes and how it logs in: one fixed node (`url`), or the
//! master Redis Sentinel names (`sentinel_master` + `sentinel_nodes`, see [`super::sentinel`]).
//!
//! Logging in: `AUTH` and `SELECT` as configured, `ROLE` when the node came from the
//! sentinels (during a failover a sentinel may still name a demoted master, whose writes would
//! be lost), `CLIENT SETNAME` (best effort, for `CLIENT LIST`), and `TIME`, whose answer is the
//! connection's first sample of Redis' clock (see [`super::deadline`]).

use std::path::Path;
use std::pin::Pin;
use std::time::Instant;

use redis::{ConnectionAddr, ConnectionInfo};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tollgate_common::secret::Secret;

use super::super::StoreError;
use super::resp::{self, Value, parse};
use super::sentinel::Sentinels;

pub(super) trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

/// One node to connect to, with its credentials.
pub(super) struct Endpoint {
    addr: Addr,
    username: Option<String>,
    password: Option<Secret>,
    db: i64,
}

enum Addr {
    Tcp(String, u16),
    Tls {
        host: String,
        port: u16,
        connector: tokio_rustls::TlsConnector,
        name: ServerName<'static>,
    },
    Unix(std::path::PathBuf),
}

impl Endpoint {
    /// Reads what a connection needs from parsed connection info; `ca_file` replaces the
    /// system CAs for TLS.
    pub(super) fn new(info: &ConnectionInfo, ca_file: Option<&Path>) -> Result<Self, StoreError> {
        let settings = info.redis_settings();
        let addr = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Addr::Tcp(host.clone(), *port),
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                ..
            } => {
                let connector = tls_connector(ca_file, !insecure)?;
                Addr::tls(host.clone(), *port, connector)?
            }
            ConnectionAddr::Unix(path) => Addr::Unix(path.clone()),
            other => {
                return Err(StoreError::Config(format!(
                    "redis: unsupported address {other}"
                )));
            }
        };
        Ok(Self {
            addr,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(Secret::new),
            db: settings.db(),
        })
    }

    /// A node at `host:port` with the credentials of `template` (TLS when `tls` is given).
    pub(super) fn at(
        host: String,
        port: u16,
        tls: Option<&tokio_rustls::TlsConnector>,
        username: Option<String>,
        password: Option<Secret>,
    ) -> Result<Self, String> {
        let addr = match tls {
            Some(c) => Addr::tls(host, port, c.clone()).map_err(|e| e.to_string())?,
            None => Addr::Tcp(host, port),
        };
        Ok(Self {
            addr,
            username,
            password,
            db: 0,
        })
    }

    /// `host:port` (or the socket path): what log lines and errors name.
    pub(super) fn describe(&self) -> String {
        match &self.addr {
            Addr::Tcp(h, p)
            | Addr::Tls {
                host: h, port: p, ..
            } => format!("{h}:{p}"),
            Addr::Unix(p) => p.display().to_string(),
        }
    }

    /// Opens a connection and logs in (`AUTH`, `SELECT`); errors never carry the password.
    pub(super) async fn connect(&self) -> Result<Conn, String> {
        let at = self.describe();
        let failed = |e: std::io::Error| format!("connecting to {at}: {e}");
        let io: Pin<Box<dyn Io>> = match &self.addr {
            Addr::Tcp(host, port) => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(failed)?;
                s.set_nodelay(true).map_err(failed)?;
                Box::pin(s)
            }
            Addr::Tls {
                host,
                port,
                connector,
                name,
            } => {
                let s = tokio::net::TcpStream::connect((host.as_str(), *port))
                    .await
                    .map_err(failed)?;
                s.set_nodelay(true).map_err(failed)?;
                let tls = connector
                    .connect(name.clone(), s)
                    .await
                    .map_err(|e| format!("TLS handshake with {at}: {e}"))?;
                Box::pin(tls)
            }
            #[cfg(unix)]
            Addr::Unix(path) => Box::pin(
                tokio::net::UnixStream::connect(path)
                    .await
                    .map_err(failed)?,
            ),
            #[cfg(not(unix))]
            Addr::Unix(_) => return Err("unix sockets are not supported here".into()),
        };
        let mut conn = Conn {
            io,
            rbuf: Vec::with_capacity(16 * 1024),
            at,
        };
        if let Some(password) = &self.password {
            let user = self.username.as_deref();
            let reply = conn
                .exchange(|b| {
                    resp::array(b, if user.is_some() { 3 } else { 2 });
                    resp::bulk(b, b"AUTH");
                    if let Some(u) = user {
                        resp::bulk(b, u.as_bytes());
                    }
                    resp::bulk(b, password.expose().as_bytes());
                })
                .await?;
            conn.expect_ok(reply, "AUTH")?;
        }
        if self.db != 0 {
            let db = self.db;
            let reply = conn
                .exchange(|b| {
                    resp::array(b, 2);
                    resp::bulk(b, b"SELECT");
                    resp::int(b, db);
                })
                .await?;
            conn.expect_ok(reply, "SELECT")?;
        }
        Ok(conn)
    }
}

impl Addr {
    fn tls(
        host: String,
        port: u16,
        connector: tokio_rustls::TlsConnector,
    ) -> Result<Self, StoreError> {
        let name = ServerName::try_from(host.clone())
            .map_err(|e| StoreError::Config(format!("redis TLS: bad server name {host:?}: {e}")))?;
        Ok(Addr::Tls {
            host,
            port,
            connector,
            name,
        })
    }
}

/// A TLS connector trusting `ca_file` (or the system's CAs).
pub(super) fn tls_connector(
    ca_file: Option<&Path>,
    verify_hostname: bool,
) -> Result<tokio_rustls::TlsConnector, StoreError> {
    let config = tollgate_common::tls::client_config(ca_file, verify_hostname)
        .map_err(|e| StoreError::Config(format!("redis TLS: {e}")))?;
    Ok(tokio_rustls::TlsConnector::from(config))
}

/// Where the pipeline connects.
pub(super) enum Target {
    Node(Endpoint),
    Sentinel(Sentinels),
}

/// A logged-in connection and what was learnt while opening it.
pub(super) struct Opened {
    pub(super) conn: Conn,
    /// The node's address.
    pub(super) node: String,
    /// Redis' clock (µs) and when its answer was in hand.
    pub(super) clock: (i64, Instant),
}

impl Target {
    /// The node itself, or the master as the sentinels name it now.
    pub(super) fn describe(&self) -> String {
        match self {
            Target::Node(e) => e.describe(),
            Target::Sentinel(s) => format!("the master of {:?}", s.master_name()),
        }
    }

    /// Finds the node, connects, logs in (see the module docs).
    pub(super) async fn open(&self, name: &'static str) -> Result<Opened, String> {
        let found;
        let endpoint = match self {
            Target::Node(e) => e,
            Target::Sentinel(s) => {
                found = s.master().await?;
                &found
            }
        };
        let node = endpoint.describe();
        let mut conn = endpoint.connect().await?;
        if matches!(self, Target::Sentinel(_)) {
            let role = conn.exchange(|b| resp::command(b, &[b"ROLE"])).await?;
            let is_master = matches!(&role, Value::Array(items)
                if items.first().and_then(Value::text) == Some("master"));
            if !is_master {
                return Err(format!(
                    "the node the sentinels name ({node}) is not a master (yet)"
                ));
            }
        }
        // Proxies without CLIENT refuse this; that is fine.
        conn.exchange(|b| resp::command(b, &[b"CLIENT", b"SETNAME", name.as_bytes()]))
            .await?;
        let time = conn.exchange(|b| resp::command(b, &[b"TIME"])).await?;
        let received = Instant::now();
        let redis_us =
            clock_of(&time).ok_or_else(|| format!("{node} answered TIME with {}", time.kind()))?;
        Ok(Opened {
            conn,
            node,
            clock: (redis_us, received),
        })
    }
}

/// The µs since the epoch in a `TIME` reply (`[seconds, microseconds]`).
pub(super) fn clock_of(v: &Value) -> Option<i64> {
    let Value::Array(items) = v else { return None };
    let num = |i: usize| items.get(i)?.text()?.parse::<i64>().ok();
    Some(num(0)? * 1_000_000 + num(1)?)
}

/// A connection being set up (or asked one thing at a time, as the sentinel watcher does).
pub(super) struct Conn {
    pub(super) io: Pin<Box<dyn Io>>,
    pub(super) rbuf: Vec<u8>,
    at: String,
}

impl Conn {
    /// Sends what `encode` writes and reads one reply.
    pub(super) async fn exchange(
        &mut self,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Value, String> {
        let mut wbuf = Vec::new();
        encode(&mut wbuf);
        let at = &self.at;
        self.io
            .write_all(&wbuf)
            .await
            .map_err(|e| format!("{at}: writing: {e}"))?;
        loop {
            match parse(&self.rbuf) {
                Ok(Some((v, used))) => {
                    self.rbuf.drain(..used);
                    return Ok(v);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("bad reply from {at}: {e}")),
            }
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) => return Err(format!("{at} closed the connection")),
                Ok(_) => {}
                Err(e) => return Err(format!("{at}: reading: {e}")),
            }
        }
    }

    fn expect_ok(&self, reply: Value, what: &str) -> Result<(), String> {
        let at = &self.at;
        match reply {
            Value::Simple(s) if s == "OK" => Ok(()),
            Value::Error(e) => Err(format!("{at} refused {what}: {e}")),
            other => Err(format!("{at} answered {what} with {}", other.kind())),
        }
    }
}
