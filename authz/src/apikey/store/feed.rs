//! The invalidation feed: every replica subscribes to the store's `changes` channel and drops a
//! key from its cache when its id is published, so a change reaches every replica within a
//! second.
//!
//! While the subscription is down nothing is served from the cache (the store is asked), and
//! on (re)subscribing the whole cache is dropped: a message published meanwhile was never
//! heard, and dropping everything is exact whatever the topology did in between (a restart
//! with other data, a Sentinel failover that lost the last writes, a Cluster resharding),
//! where replaying a log of changes would not be. The price is one store read per key in use
//! after each reconnection.
//!
//! The subscription is pinged every [`PING_EVERY`], because a silently dead TCP connection
//! would otherwise look like a quiet channel; on one node it also follows the data
//! connection, so that after a failover it listens where the writes now go.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use tokio::sync::{oneshot, watch};
use tollgate_common::log_throttle::LogThrottle;

use super::redis_conn::Redis;
use crate::apikey::KeyStoreError;
use crate::apikey::cache::Caches;
use crate::apikey::outage::Outage;
use crate::metrics::KEY_FEED_UP as FEED_UP;

pub(crate) const PING_EVERY: Duration = Duration::from_millis(500);
const BACKOFF_MIN: Duration = Duration::from_millis(50);
/// Small, so that a Redis that is back is heard of well within a second.
const BACKOFF_MAX: Duration = Duration::from_millis(400);

/// What the feed task needs.
pub(crate) struct Feed {
    pub(crate) redis: Redis,
    pub(crate) channel: String,
    pub(crate) caches: Arc<Caches>,
    pub(crate) outage: Arc<Outage>,
    pub(crate) connect_timeout: Duration,
}

/// Why following the channel ended.
enum Ended {
    Stopped,
    Lost,
    /// The node in use changed (a failover): listen there instead.
    Moved(String),
}

impl Feed {
    /// Starts the task that applies the feed to the caches until `stop` closes. Resolves the
    /// returned channel once the first subscription is up (or failed; the task then ends).
    pub(crate) fn spawn(
        self,
        stop: watch::Receiver<()>,
    ) -> oneshot::Receiver<Result<(), KeyStoreError>> {
        let (ready_tx, ready_rx) = oneshot::channel();
        metrics::gauge!(FEED_UP).set(0.0);
        tokio::spawn(self.run(stop, ready_tx));
        ready_rx
    }

    async fn run(
        self,
        mut stop: watch::Receiver<()>,
        ready_tx: oneshot::Sender<Result<(), KeyStoreError>>,
    ) {
        let mut ready = Some(ready_tx);
        let mut backoff = BACKOFF_MIN;
        let retries = LogThrottle::new(Duration::from_secs(10));
        let mut lost_at: Option<Instant> = None;
        for attempt in 0usize.. {
            let subscribed = tokio::select! {
                r = self.subscribe(attempt) => r,
                _ = stop.changed() => return,
            };
            match subscribed {
                Ok((pubsub, addr)) => {
                    // Anything cached before this point may predate a change never heard of.
                    self.caches.feed_up();
                    self.outage.feed_up();
                    metrics::gauge!(FEED_UP).set(1.0);
                    backoff = BACKOFF_MIN;
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Ok(()));
                        tracing::debug!(channel = %self.channel, node = %addr, "key invalidation feed subscribed");
                    } else if let Some(t) = lost_at.take() {
                        let unreported = retries.take_pending();
                        tracing::info!(node = %addr, down_for = ?t.elapsed(), failed_attempts = unreported, "key invalidation feed back; cache dropped and rebuilt from the store");
                    }
                    let ended = self.follow(pubsub, &addr, &mut stop).await;
                    self.caches.feed_down(Instant::now());
                    metrics::gauge!(FEED_UP).set(0.0);
                    match ended {
                        Ended::Stopped => return,
                        Ended::Moved(to) => {
                            tracing::info!(from = %addr, %to, "key store moved; resubscribing the invalidation feed there");
                            lost_at.get_or_insert_with(Instant::now);
                            continue;
                        }
                        Ended::Lost => {
                            metrics::counter!(super::STORE_OP_ERRORS, "store" => "redis", "op" => "subscribe")
                                .increment(1);
                            tracing::warn!(node = %addr, "key invalidation feed lost; Checks ask the store until it is back");
                            lost_at.get_or_insert_with(Instant::now);
                        }
                    }
                }
                Err(e) => {
                    if let Some(tx) = ready.take() {
                        let _ = tx.send(Err(e));
                        return;
                    }
                    if let Some(occurrences) = retries.allow() {
                        tracing::warn!(error = %e, occurrences, "cannot subscribe to the key invalidation feed; retrying");
                    }
                }
            }
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = stop.changed() => return,
            }
            backoff = (backoff * 2).min(BACKOFF_MAX);
        }
    }

    async fn subscribe(
        &self,
        attempt: usize,
    ) -> Result<(redis::aio::PubSub, String), KeyStoreError> {
        let t = self.connect_timeout;
        let (client, addr) = tokio::time::timeout(t * 2, self.redis.feed_target(attempt))
            .await
            .map_err(|_| KeyStoreError::Timeout)??;
        let mut pubsub = tokio::time::timeout(t, client.get_async_pubsub())
            .await
            .map_err(|_| KeyStoreError::Timeout)??;
        tokio::time::timeout(t, pubsub.subscribe(&self.channel))
            .await
            .map_err(|_| KeyStoreError::Timeout)??;
        Ok((pubsub, addr))
    }

    /// Applies invalidation messages until the connection fails, the node in use changes, or
    /// `stop` closes.
    async fn follow(
        &self,
        pubsub: redis::aio::PubSub,
        addr: &str,
        stop: &mut watch::Receiver<()>,
    ) -> Ended {
        let (mut sink, mut stream) = pubsub.split();
        let mut ping = tokio::time::interval(PING_EVERY);
        ping.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut node = self.redis.address();
        if let Some(now) = node.as_mut().and_then(|rx| rx.borrow_and_update().clone())
            && now != addr
        {
            return Ended::Moved(now);
        }
        loop {
            let moved = async {
                match node.as_mut() {
                    Some(rx) => rx.changed().await.is_ok(),
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                msg = stream.next() => {
                    let Some(msg) = msg else { return Ended::Lost };
                    match msg.get_payload::<String>() {
                        Ok(id) => self.caches.invalidate(&id),
                        // Unreadable message: be safe and forget everything.
                        Err(_) => self.caches.clear(),
                    }
                }
                _ = ping.tick() => {
                    match tokio::time::timeout(PING_EVERY, sink.ping::<redis::Value>()).await {
                        Ok(Ok(_)) => {}
                        _ => return Ended::Lost,
                    }
                }
                changed = moved => {
                    if !changed {
                        return Ended::Lost;
                    }
                    let now = node.as_mut().and_then(|rx| rx.borrow_and_update().clone());
                    if let Some(now) = now && now != addr {
                        return Ended::Moved(now);
                    }
                }
                _ = stop.changed() => return Ended::Stopped,
            }
        }
    }
}
