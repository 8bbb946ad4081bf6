//! Redis Sentinel for the counters: which node is the master now, and noticing when it moves.
//!
//! On every (re)connect the sentinels are asked in turn, starting with the last that answered,
//! each within the connect timeout (`SENTINEL MASTER`); the node they name is then checked
//! with `ROLE` (see [`super::node`]). While connected, [`watch`] asks every sentinel again each
//! [`POLL`] and drops the connection as soon as one names another master or leads a failover:
//! from the moment a replica is promoted until the sentinels announce it, the old master, if
//! still up, keeps accepting writes that the new one never sees (lost counts would admit more
//! than the limit). Meanwhile calls fail and the failure mode answers. A demoted master that
//! refuses writes (`READONLY`) is dropped by the pipeline itself.

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

    /// The master's endpoint, as the first sentinel that knows it says; refused while that
    /// sentinel is failing it over (writes to the old master then would be lost).
    pub(super) async fn master(&self) -> Result<Endpoint, String> {
        let Named {
            host,
            port,
            failing_over,
        } = self.ask_any().await?;
        if failing_over {
            return Err(format!("the sentinels are failing over {:?}", self.master));
        }
        Endpoint::at(
            host,
            port,
            self.tls.as_ref(),
            self.username.clone(),
            self.password.clone(),
        )
    }

    async fn ask_any(&self) -> Result<Named, String> {
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

    /// Asks one sentinel, on `conn` (`SENTINEL MASTER`): the master's address, and whether
    /// this sentinel is moving it right now (only the sentinel leading a failover knows).
    async fn ask(&self, conn: &mut Conn) -> Result<Named, String> {
        let reply = conn
            .exchange(|b| resp::command(b, &[b"SENTINEL", b"MASTER", self.master.as_bytes()]))
            .await?;
        let items = match &reply {
            Value::Array(items) => items,
            Value::Error(e) if e.contains("No such master") => {
                return Err(format!(
                    "the sentinels do not know master {:?}",
                    self.master
                ));
            }
            Value::Error(e) => return Err(format!("sentinel: {e}")),
            other => return Err(format!("a sentinel answered with {}", other.kind())),
        };
        let field = |name: &str| {
            items
                .chunks_exact(2)
                .find(|kv| kv[0].text() == Some(name))
                .and_then(|kv| kv[1].text())
        };
        let host = field("ip").map(str::to_owned);
        let port = field("port").and_then(|p| p.parse().ok());
        let (Some(host), Some(port)) = (host, port) else {
            return Err("a sentinel answered with a malformed address".into());
        };
        let failing_over = field("flags").is_some_and(|f| f.contains("failover_in_progress"));
        Ok(Named {
            host,
            port,
            failing_over,
        })
    }
}

/// What one sentinel says of the master.
struct Named {
    host: String,
    port: u16,
    /// A failover is under way: a replica may already be promoted while the old master still
    /// takes writes that the promoted one will never see.
    failing_over: bool,
}

/// Drops the pipeline's connection whenever a sentinel names a master other than the node it
/// is connected to, or leads a failover of it; ends with the pipeline.
///
/// Every sentinel is asked each [`POLL`]: only the one leading a failover knows of it before
/// the new master is announced, and that is the moment the old master's writes start being
/// lost. The sentinel that reported the failover is asked first on reconnecting, so the store
/// stays off the old master (calls fail, the failure mode answers) until the new one is named.
pub(super) async fn watch(shared: Weak<Shared>, target: Arc<Target>) {
    let Target::Sentinel(sentinels) = &*target else {
        return;
    };
    let mut tick = tokio::time::interval(POLL);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    let mut conns: Vec<Option<Conn>> = sentinels.nodes.iter().map(|_| None).collect();
    loop {
        tick.tick().await;
        let Some(node) = shared.upgrade().and_then(|s| s.connected_to()) else {
            if shared.strong_count() == 0 {
                return;
            }
            continue;
        };
        for (i, slot) in conns.iter_mut().enumerate() {
            let Some(named) = ask_one(sentinels, i, slot).await else {
                continue;
            };
            let at = format!("{}:{}", named.host, named.port);
            let why = if named.failing_over {
                format!(
                    "sentinel {} is failing over the master",
                    sentinels.nodes[i].describe()
                )
            } else if at != node {
                format!("the sentinels name a new master ({at})")
            } else {
                continue;
            };
            sentinels.last.store(i, Ordering::Relaxed);
            if let Some(s) = shared.upgrade() {
                tracing::info!(from = %node, reason = %why, "counter store master moving; reconnecting");
                s.reconnect(&node, why);
            }
            break;
        }
    }
}

/// Asks sentinel `i` on its kept connection (opening one when needed); `None` when it does
/// not answer (its connection is then dropped).
async fn ask_one(sentinels: &Sentinels, i: usize, conn: &mut Option<Conn>) -> Option<Named> {
    let asked = tokio::time::timeout(sentinels.timeout, async {
        if conn.is_none() {
            *conn = Some(sentinels.nodes[i].connect().await?);
        }
        let c = conn.as_mut().expect("connected above");
        sentinels.ask(c).await
    })
    .await;
    match asked {
        Ok(Ok(named)) => Some(named),
        _ => {
            *conn = None;
            None
        }
    }
}
