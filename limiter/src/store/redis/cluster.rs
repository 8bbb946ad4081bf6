//! Redis Cluster through the redis crate's cluster client (slot routing, redirections and
//! reconnects are its own), with what the store adds per master: a circuit breaker and an
//! estimate of its clock.
//!
//! # What "atomic" means across slots
//! Redis runs a script on one slot only, so hits are grouped by slot and the groups are sent
//! in parallel (one round trip each, concurrently). Within a group all-or-nothing holds
//! exactly. Across groups, each group commits on its own; if another group rejects the
//! request, the committed groups are sent a compensating refund (the script's mode 1, same
//! `now`). Between commit and refund the refunded quota is briefly unavailable to other
//! requests: this can only reject, never admit, more than the limit.
//!
//! # Nodes
//! Which master serves which slot comes from `CLUSTER SLOTS`, asked at the first call, every
//! [`REFRESH`] and whenever a slot's master is unknown; each master's clock is sampled with
//! `TIME` when it first appears. The map only attributes calls to nodes (for their breaker
//! and clock): routing stays the client's, so a stale map during a resharding only credits a
//! node with another's outcome until the next refresh. A call whose slots belong to a master
//! whose breaker is open fails fast as a whole.

use std::sync::{Arc, Weak};
use std::time::{Duration, Instant};

use futures::future::join_all;
use parking_lot::Mutex;
use redis::aio::ConnectionLike;
use redis::cluster::ClusterClientBuilder;
use redis::cluster_async::ClusterConnection;
use redis::cluster_routing::{RoutingInfo, SingleNodeRoutingInfo};
use redis::{ErrorKind, RedisError, ServerErrorKind, TlsCertificates};
use tollgate_common::secret::Secret;

use super::super::{Hit, Outcome, StoreError};
use super::breaker::{self, Breaker, BreakerConfig};
use super::deadline::RedisClock;
use super::script::{self, Call, Mode, SCRIPT, SCRIPT_SHA};
use super::{RedisConfig, key_slot};

/// How often the slot map is asked for again.
const REFRESH: Duration = Duration::from_secs(5);
/// Least time between two refreshes asked for by calls.
const MIN_REFRESH: Duration = Duration::from_millis(500);
const SLOTS: usize = 16384;

/// One master, as the store sees it.
#[derive(Debug)]
struct Node {
    breaker: Breaker,
    clock: RedisClock,
}

struct Map {
    /// The master of each slot, as an index into `nodes`.
    slots: Box<[Option<u16>]>,
    nodes: Vec<(String, Arc<Node>)>,
    fetched: Option<Instant>,
}

pub(super) struct Cluster {
    conn: ClusterConnection,
    map: Mutex<Map>,
    /// One refresh at a time.
    refreshing: tokio::sync::Mutex<()>,
    breaker: BreakerConfig,
    timeout: Duration,
}

impl Cluster {
    pub(super) fn connect(cfg: &RedisConfig) -> Result<Arc<Self>, StoreError> {
        let nodes: Vec<&str> = cfg.cluster_nodes.iter().map(Secret::expose).collect();
        let mut b = ClusterClientBuilder::new(nodes)
            .connection_timeout(cfg.connect_timeout)
            .response_timeout(cfg.timeout);
        if let Some(u) = &cfg.username {
            b = b.username(u);
        }
        if let Some(p) = &cfg.password {
            b = b.password(p.expose());
        }
        if let Some(p) = &cfg.ca_file {
            let pem = std::fs::read(p)
                .map_err(|e| StoreError::Config(format!("{}: {e}", p.display())))?;
            b = b.certs(TlsCertificates {
                client_tls: None,
                root_cert: Some(pem),
            });
        }
        let client = b.build().map_err(super::config_error)?;
        let config = redis::cluster::ClusterConfig::new()
            .set_connection_timeout(cfg.connect_timeout)
            .set_response_timeout(cfg.timeout);
        let this = Arc::new(Self {
            conn: client.get_pending_async_connection_with_config(config),
            map: Mutex::new(Map {
                slots: vec![None; SLOTS].into_boxed_slice(),
                nodes: Vec::new(),
                fetched: None,
            }),
            refreshing: tokio::sync::Mutex::new(()),
            breaker: cfg.breaker,
            timeout: cfg.timeout,
        });
        tokio::spawn(refresh_every(Arc::downgrade(&this)));
        Ok(this)
    }

    /// The breaker states of the masters known, for tests.
    #[cfg(test)]
    pub(super) fn breaker_states(&self) -> Vec<&'static str> {
        self.map
            .lock()
            .nodes
            .iter()
            .map(|(_, n)| n.breaker.state())
            .collect()
    }

    fn node_of(&self, slot: u16) -> Option<Arc<Node>> {
        let map = self.map.lock();
        let i = map.slots[slot as usize]?;
        map.nodes.get(i as usize).map(|(_, n)| n.clone())
    }

    /// Asks for the slot map (unless another call just did) and samples new masters' clocks.
    async fn refresh(&self, forced: bool) -> Result<(), StoreError> {
        let _one = self.refreshing.lock().await;
        let recent = self
            .map
            .lock()
            .fetched
            .is_some_and(|t| t.elapsed() < if forced { MIN_REFRESH } else { REFRESH / 2 });
        if recent {
            return Ok(());
        }
        let mut conn = self.conn.clone();
        let slots = tokio::time::timeout(
            self.timeout * 4,
            conn.route_command(
                redis::cmd("CLUSTER").arg("SLOTS").clone(),
                RoutingInfo::SingleNode(SingleNodeRoutingInfo::Random),
            ),
        )
        .await
        .map_err(|_| StoreError::Timeout)?
        .map_err(store_error)?;
        let ranges = parse_slots(&slots)
            .ok_or_else(|| StoreError::Unavailable("unexpected CLUSTER SLOTS reply".into()))?;
        let unsampled = self.install(ranges);
        let samples = join_all(unsampled.into_iter().map(|(addr, node)| {
            let mut conn = self.conn.clone();
            async move {
                let (host, port) = addr.rsplit_once(':')?;
                let routing = RoutingInfo::SingleNode(SingleNodeRoutingInfo::ByAddress {
                    host: host.to_owned(),
                    port: port.parse().ok()?,
                });
                let time = tokio::time::timeout(
                    self.timeout,
                    conn.route_command(redis::cmd("TIME"), routing),
                )
                .await
                .ok()?
                .ok()?;
                let (secs, micros): (i64, i64) = redis::from_redis_value(time).ok()?;
                node.clock
                    .observe(secs * 1_000_000 + micros, Instant::now());
                Some(())
            }
        }))
        .await;
        drop(samples);
        Ok(())
    }

    /// Installs a new slot map, keeping the nodes already known; returns the masters whose
    /// clock has no sample yet.
    fn install(&self, ranges: Vec<(u16, u16, String)>) -> Vec<(String, Arc<Node>)> {
        let mut map = self.map.lock();
        let mut nodes: Vec<(String, Arc<Node>)> = Vec::new();
        let mut slots = vec![None; SLOTS].into_boxed_slice();
        for (start, end, addr) in ranges {
            let i = match nodes.iter().position(|(a, _)| *a == addr) {
                Some(i) => i,
                None => {
                    let node = map
                        .nodes
                        .iter()
                        .find(|(a, _)| *a == addr)
                        .map(|(_, n)| n.clone())
                        .unwrap_or_else(|| {
                            Arc::new(Node {
                                breaker: Breaker::new(addr.clone(), self.breaker),
                                clock: RedisClock::default(),
                            })
                        });
                    nodes.push((addr, node));
                    nodes.len() - 1
                }
            };
            for s in start..=end.min(SLOTS as u16 - 1) {
                slots[s as usize] = Some(i as u16);
            }
        }
        map.slots = slots;
        map.nodes = nodes;
        map.fetched = Some(Instant::now());
        map.nodes
            .iter()
            .filter(|(_, n)| !n.clock.has_sample())
            .cloned()
            .collect()
    }

    /// The node of every slot group, refreshing the map once if one is unknown or unsampled.
    async fn nodes_of(&self, groups: &[(u16, Vec<usize>)]) -> Result<Vec<Arc<Node>>, StoreError> {
        for attempt in 0..2 {
            let found: Option<Vec<Arc<Node>>> = groups
                .iter()
                .map(|(slot, _)| self.node_of(*slot).filter(|n| n.clock.has_sample()))
                .collect();
            if let Some(nodes) = found {
                return Ok(nodes);
            }
            if attempt == 0 {
                self.refresh(true).await?;
            }
        }
        Err(StoreError::Unavailable(
            "redis cluster: a slot's master is unknown or has not answered TIME".into(),
        ))
    }

    /// All hits of one request (see the module docs); the caller gives up at `give_up`.
    pub(super) async fn run(
        &self,
        hits: &[Hit<'_>],
        keys: &[String],
        now_us: u64,
        give_up: Instant,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut groups: Vec<(u16, Vec<usize>)> = Vec::new();
        for (i, k) in keys.iter().enumerate() {
            let slot = key_slot(k.as_bytes());
            match groups.iter_mut().find(|(s, _)| *s == slot) {
                Some((_, g)) => g.push(i),
                None => groups.push((slot, vec![i])),
            }
        }
        let nodes = tokio::time::timeout_at(give_up.into(), self.nodes_of(&groups))
            .await
            .map_err(|_| StoreError::Timeout)??;
        // One ticket per distinct master, in first-seen order.
        let mut distinct: Vec<&Arc<Node>> = Vec::new();
        for n in &nodes {
            if !distinct.iter().any(|d| Arc::ptr_eq(d, n)) {
                distinct.push(n);
            }
        }
        let tickets = distinct
            .iter()
            .map(|n| n.breaker.admit())
            .collect::<Result<Vec<_>, _>>()?;
        let replies = join_all(groups.iter().zip(&nodes).map(|((_, idx), node)| {
            let mut c = self.conn.clone();
            async move {
                let deadline = node
                    .clock
                    .deadline(give_up, self.timeout)
                    .ok_or_else(|| StoreError::Unavailable("no clock sample".into()))?;
                let call = Call {
                    hits,
                    keys,
                    sel: idx.iter().copied(),
                    mode: Mode::Hit,
                    now_us,
                    deadline_us: deadline,
                };
                let r = tokio::time::timeout_at(give_up.into(), send(&mut c, &call))
                    .await
                    .unwrap_or(Err(StoreError::Timeout));
                match r {
                    Ok(reply) => {
                        node.clock.observe(reply.redis_us, Instant::now());
                        reply.outcomes.ok_or(StoreError::Timeout)
                    }
                    Err(e) => Err(e),
                }
            }
        }))
        .await;
        for (ticket, node) in tickets.into_iter().zip(&distinct) {
            let mine = nodes
                .iter()
                .zip(&replies)
                .filter(|(n, _)| Arc::ptr_eq(n, node))
                .map(|(_, r)| breaker::Outcome::of(r));
            let outcome = mine
                .reduce(|a, b| match (a, b) {
                    (breaker::Outcome::Failed, _) | (_, breaker::Outcome::Failed) => {
                        breaker::Outcome::Failed
                    }
                    (breaker::Outcome::Answered, _) | (_, breaker::Outcome::Answered) => {
                        breaker::Outcome::Answered
                    }
                    _ => breaker::Outcome::Neither,
                })
                .unwrap_or(breaker::Outcome::Neither);
            ticket.settle(outcome);
        }
        self.settle(hits, keys, now_us, &groups, replies).await
    }

    /// Combines the groups' answers; after a rejection (or a failed group) refunds the
    /// groups that counted.
    async fn settle(
        &self,
        hits: &[Hit<'_>],
        keys: &[String],
        now_us: u64,
        groups: &[(u16, Vec<usize>)],
        replies: Vec<Result<Vec<Outcome>, StoreError>>,
    ) -> Result<Vec<Outcome>, StoreError> {
        let mut out = vec![None; hits.len()];
        let mut committed = Vec::new();
        let mut rejected = false;
        let mut first_err = None;
        for ((_, idx), reply) in groups.iter().zip(replies) {
            match reply {
                Ok(outcomes) => {
                    let group_rejected = idx
                        .iter()
                        .zip(&outcomes)
                        .any(|(&i, o)| !o.admitted && !hits[i].shadow);
                    rejected |= group_rejected;
                    if !group_rejected {
                        committed.push(idx);
                    }
                    for (&i, o) in idx.iter().zip(outcomes) {
                        out[i] = Some(o);
                    }
                }
                Err(e) => {
                    // That group counted nothing (its deadline passed, or it failed): the
                    // request fails, and the others are undone.
                    rejected = true;
                    first_err.get_or_insert(e);
                }
            }
        }
        if rejected {
            self.refund(hits, keys, now_us, &committed, &mut out).await;
        }
        if let Some(e) = first_err {
            return Err(e);
        }
        Ok(out
            .into_iter()
            .map(|o| o.expect("every group answered"))
            .collect())
    }

    async fn refund(
        &self,
        hits: &[Hit<'_>],
        keys: &[String],
        now_us: u64,
        committed: &[&Vec<usize>],
        out: &mut [Option<Outcome>],
    ) {
        let undo: Vec<Vec<usize>> = committed
            .iter()
            .map(|idx| {
                idx.iter()
                    .copied()
                    .filter(|&i| hits[i].cost > 0 && out[i].is_some_and(|o| o.admitted))
                    .collect()
            })
            .filter(|v: &Vec<usize>| !v.is_empty())
            .collect();
        let refunds = join_all(undo.iter().map(|idx| {
            let mut c = self.conn.clone();
            let call = Call {
                hits,
                keys,
                sel: idx.iter().copied(),
                mode: Mode::Refund,
                now_us,
                // A refund undoes what was counted, however late it runs.
                deadline_us: 0,
            };
            async move { tokio::time::timeout(self.timeout, send(&mut c, &call)).await }
        }))
        .await;
        for r in refunds {
            let failed = match r {
                Ok(Ok(_)) => continue,
                Ok(Err(e)) => e,
                Err(_) => StoreError::Timeout,
            };
            static REFUND_FAILED: tollgate_common::log_throttle::LogThrottle =
                tollgate_common::log_throttle::LogThrottle::new(Duration::from_secs(10));
            if let Some(times) = REFUND_FAILED.allow() {
                tracing::warn!(error = %failed, times, "refund after a cross-slot rejection failed; quota stays counted until it expires");
            }
        }
        for i in undo.iter().flatten() {
            if let Some(o) = out[*i].as_mut() {
                o.remaining = (o.remaining + hits[*i].cost).min(hits[*i].rule.capacity());
            }
        }
    }
}

/// One script call through the cluster client: `EVALSHA`, and `EVAL` once on `NOSCRIPT`.
async fn send<C, S>(conn: &mut C, call: &Call<'_, S>) -> Result<script::Reply, StoreError>
where
    C: ConnectionLike + Send,
    S: Iterator<Item = usize> + Clone,
{
    let argv = call.argv()?;
    let build = |verb: &str, body: &str| {
        let mut cmd = redis::cmd(verb);
        cmd.arg(body).arg(call.len());
        for k in call.keys() {
            cmd.arg(k);
        }
        cmd.arg(&argv);
        cmd
    };
    let reply: Result<Vec<u8>, RedisError> = build("EVALSHA", &SCRIPT_SHA).query_async(conn).await;
    let reply = match reply {
        Err(e) if e.kind() == ErrorKind::Server(ServerErrorKind::NoScript) => {
            build("EVAL", SCRIPT).query_async(conn).await
        }
        r => r,
    };
    let mut one = script::split(&reply.map_err(store_error)?, std::iter::once(call.shape()))?;
    let values = script::values(&one.remove(0))?;
    script::reply(&values, call.len(), call.mode)
}

fn store_error(e: RedisError) -> StoreError {
    if e.is_timeout() {
        StoreError::Timeout
    } else {
        StoreError::Unavailable(e.to_string())
    }
}

/// `CLUSTER SLOTS` as (first slot, last slot, master `host:port`).
fn parse_slots(v: &redis::Value) -> Option<Vec<(u16, u16, String)>> {
    let redis::Value::Array(ranges) = v else {
        return None;
    };
    ranges
        .iter()
        .map(|r| {
            let redis::Value::Array(items) = r else {
                return None;
            };
            let int = |v: &redis::Value| match v {
                redis::Value::Int(i) => u16::try_from(*i).ok(),
                _ => None,
            };
            let (start, end) = (int(items.first()?)?, int(items.get(1)?)?);
            let redis::Value::Array(master) = items.get(2)? else {
                return None;
            };
            let host: String = redis::from_redis_value_ref(master.first()?).ok()?;
            let port = match master.get(1)? {
                redis::Value::Int(p) => *p,
                _ => return None,
            };
            Some((start, end, format!("{host}:{port}")))
        })
        .collect()
}

/// Refreshes the slot map in the background until the store is dropped.
async fn refresh_every(cluster: Weak<Cluster>) {
    let mut tick = tokio::time::interval(REFRESH);
    tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        tick.tick().await;
        let Some(c) = cluster.upgrade() else { return };
        if let Err(e) = c.refresh(false).await {
            tracing::debug!(error = %e, "redis cluster: slot map refresh failed");
        }
    }
}
