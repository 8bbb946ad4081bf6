//! Redis Sentinel for the counters: which node is the master now, and noticing when it moves.
//!
//! On every (re)connect the sentinels are asked in turn, starting with the last that answered,
//! each within the connect timeout (`SENTINEL GET-MASTER-ADDR-BY-NAME`); the node they name is
//! then checked with `ROLE` (see [`super::node`]). While connected, [`watch`] asks again every
//! [`POLL`] and drops the connection as soon as they name another master: a sentinel answers
//! with the promoted replica from the moment it is promoted, while the old master, if still up,
//! keeps accepting writes until it is reconfigured, and those writes are lost in the resync. A
//! demoted master that refuses writes (`READONLY`) is dropped by the pipeline itself.

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Weak};
use std::time::Duration;

use tollgate_common::secret::Secret;

use super::node::{Conn, Endpoint, Target};
use super::pipeline::Shared;
use super::resp::{self, Value};

/// How often a connected pipeline asks whether the master moved.
pub(super) const POLL: Duration = Duration::from_millis(100);

/// The sentinels of one master, and how to reach the master they name.
pub(super) struct Sentinels {
    master: String,
    nodes: Vec<Endpoint>,
    /// TLS to the master when the sentinels are `rediss://`.
    tls: Option<tokio_rustls::TlsConnector>,
    username: Option<String>,
    password: Option<Secret>,
    timeout: Duration,
    /// The sentinel that answered last.
    last: AtomicUsize,
}

impl Sentinels {
    pub(super) fn new(
        master: String,
        nodes: Vec<Endpoint>,
        tls: Option<tokio_rustls::TlsConnector>,
        username: Option<String>,
        password: Option<Secret>,
        timeout: Duration,
    ) -> Self {
        Self {
            master,
            nodes,
            tls,
            username,
            password,
            timeout,
            last: AtomicUsize::new(0),
        }
    }

    pub(super) fn master_name(&self) -> &str {
        &self.master
    }

    /// The master's endpoint, as the first sentinel that knows it says.
    pub(super) async fn master(&self) -> Result<Endpoint, String> {
        let (host, port) = self.ask_any().await?;
        Endpoint::at(
            host,
            port,
            self.tls.as_ref(),
            self.username.clone(),
            self.password.clone(),
        )
    }

    async fn ask_any(&self) -> Result<(String, u16), String> {
        let start = self.last.load(Ordering::Relaxed);
        let mut last = String::from("no sentinel configured");
        for k in 0..self.nodes.len() {
            let i = (start + k) % self.nodes.len();
            let asked = tokio::time::timeout(self.timeout, async {
                let mut conn = self.nodes[i].connect().await?;
                self.ask(&mut conn).await
            })
            .await;
            match asked {
                Ok(Ok(addr)) => {
                    self.last.store(i, Ordering::Relaxed);
                    return Ok(addr);
                }
                Ok(Err(e)) => last = e,
                Err(_) => {
                    last = format!(
                        "sentinel {} did not answer within {:?}",
                        self.nodes[i].describe(),
                        self.timeout
                    )
                }
            }
        }
        Err(last)
    }

    /// Asks one sentinel, on `conn`.
    async fn ask(&self, conn: &mut Conn) -> Result<(String, u16), String> {
        let reply = conn
            .exchange(|b| {
                resp::command(
                    b,
                    &[
                        b"SENTINEL",
                        b"GET-MASTER-ADDR-BY-NAME",
                        self.master.as_bytes(),
                    ],
                )
            })
            .await?;
        match &reply {
            Value::Array(items) if items.len() == 2 => {
                let host = items[0].text().map(str::to_owned);
                let port = items[1].text().and_then(|p| p.parse().ok());
                host.zip(port)
                    .ok_or_else(|| "a sentinel answered with a malformed address".into())
            }
            Value::Nil => Err(format!(
                "the sentinels do not know master {:?}",
                self.master
            )),
            Value::Error(e) => Err(format!("sentinel: {e}")),
            other => Err(format!("a sentinel answered with {}", other.kind())),
        }
    }
}

/// Drops the pipeline's connection whenever the sentinels name a master other than the node
/// it is connected to; ends with the pipeline.
pub(super) async fn watch(shared: Weak<Shared>, target: Arc<Target>) {
    let Target::Sentinel(sentinels) = &*target else {
        return;
    };
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conn: Option<Conn> = None;
    loop {
        tick.tick().await;
        let Some(node) = shared.upgrade().and_then(|s| s.connected_to()) else {
            if shared.strong_count() == 0 {
                return;
            }
            continue;
        };
        let asked = match conn.as_mut() {
            Some(c) => tokio::time::timeout(sentinels.timeout, sentinels.ask(c))
                .await
                .unwrap_or_else(|_| Err("sentinel timed out".into())),
            None => Err(String::new()),
        };
        let named = match asked {
            Ok(addr) => Some(addr),
            Err(_) => {
                conn = None;
                // A fresh connection to the sentinels, starting with the last that answered.
                let i = sentinels.last.load(Ordering::Relaxed) % sentinels.nodes.len().max(1);
                let fresh = tokio::time::timeout(sentinels.timeout, async {
                    let mut c = sentinels
                        .nodes
                        .get(i)
                        .ok_or("no sentinel")?
                        .connect()
                        .await?;
                    let addr = sentinels.ask(&mut c).await?;
                    Ok::<_, String>((c, addr))
                })
                .await;
                match fresh {
                    Ok(Ok((c, addr))) => {
                        conn = Some(c);
                        Some(addr)
                    }
                    _ => {
                        sentinels
                            .last
                            .store((i + 1) % sentinels.nodes.len().max(1), Ordering::Relaxed);
                        None
                    }
                }
            }
        };
        // Sentinels unreachable: keep the node; its own errors will tell.
        let Some((host, port)) = named else { continue };
        let named = format!("{host}:{port}");
        if named != node
            && let Some(s) = shared.upgrade()
        {
            tracing::info!(from = %node, to = %named, "the sentinels name a new counter store master; reconnecting");
            s.reconnect(&node, format!("the sentinels name a new master ({named})"));
        }
    }
}
