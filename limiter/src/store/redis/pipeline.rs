//! One pipelined connection to a standalone Redis (or the master Sentinel names), driven by its
//! own task.
//!
//! Callers encode their command straight into the connection's output buffer (under a short
//! lock) and wait for their reply; the driver task writes everything queued since its last
//! write in one syscall, reads every reply that has arrived in one syscall, and hands them
//! out in order. Under load, one write and one read carry many calls, on both sides of the
//! socket: this is what keeps a call's CPU cost close to the in-memory store's.
//!
//! Rate-limit script calls are queued as their parts (keys and arguments), not encoded: at each
//! write the driver merges the script calls queued since the last one into one `EVALSHA` (at
//! most [`MERGE_REQUESTS`] calls and [`MERGE_KEYS`] keys each), and splits its reply into each
//! caller's own (`script.lua` says how). While one merged call is unanswered
//! ([`MERGED_IN_FLIGHT`]), the script calls queued meanwhile wait for its reply and then go
//! together: a call waits at most one Redis round trip for that, and the busier the connection,
//! the fewer commands, Lua invocations and wake-ups per call Redis has (about five calls per
//! script call at 32 in flight, against two with every queued batch written at once).
//!
//! # Held wakes
//! A host that queues many calls in one turn of its own event loop (an Envoy worker decoding
//! every request that arrived together) can hold the driver's wake-ups made on its thread
//! ([`hold_wakes`]) and release them at the end of the turn ([`release_wakes`]): the driver then
//! wakes once and writes the turn's calls as one merged script call, instead of waking for the
//! first, writing it alone, and merging the rest behind it. The host must release what it
//! held; until it does, the calls it queued wait.
//!
//! # Order, cancellation and the in-flight bound
//! Replies come back in the order commands were written; each waiting caller holds a place in
//! that queue, together with its in-flight permit. A caller that gives up before its command
//! was written loses its place: the command is dropped from the output and its permit freed.
//! A caller that gives up after its command was written leaves its place (and its permit)
//! behind until the reply comes and is dropped: a late reply never reaches the wrong caller,
//! and commands Redis has not answered count against `max_in_flight` until it does, so a hung
//! Redis cannot pile them up without bound. (Such a late command changes nothing when Redis
//! finally runs it: see [`super::deadline`].)
//!
//! # Failure and reconnecting
//! - I/O errors, a reply that is not RESP, a reply nobody asked for, or `READONLY` (a demoted
//!   master) close the connection: every waiting caller gets the reason at once, their
//!   permits are freed, and the driver reconnects immediately. A Sentinel watcher that sees
//!   the master move closes it too, but only once the commands already written are answered
//!   (a call failed while Redis still counts it would count a hit nobody was told about).
//! - A connection whose oldest waiting command has had no reply for `stall` (Redis hung,
//!   a network path gone silent) is treated the same way.
//! - A failed connect makes calls fail at once, with its reason, for a backoff (25 ms,
//!   doubling up to 1 s) after which the driver tries again by itself. Calls made while a
//!   connect is in progress wait for it (within their own timeout).

use std::cell::RefCell;
use std::collections::VecDeque;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use parking_lot::Mutex;
use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::sync::{Notify, OwnedSemaphorePermit, oneshot};
use tollgate_common::log_throttle::LogThrottle;

use super::super::StoreError;
use super::deadline::RedisClock;
use super::node::{Conn, Target};
use super::resp::{Value, parse};
use super::script::{self, Shape};

type Reply = Result<Value, String>;

/// Where the connection is.
enum Phase {
    /// Opening (or about to): calls queue and are sent once it is up.
    Connecting,
    /// Connected to this node.
    Up(String),
    /// The last connect failed: calls fail at once with the reason until the next attempt.
    Down { reason: String },
    /// The pipeline was dropped; the driver stops.
    Closed,
}

/// A caller's place in the queue.
struct Place {
    since: Instant,
    reply: oneshot::Sender<Reply>,
    _permit: Option<OwnedSemaphorePermit>,
}

/// A command queued and not yet written.
enum Queued {
    /// Encoded in `out`, ending here.
    Raw(usize),
    /// One request's script call, to be merged with the others queued beside it.
    Script(ScriptPart),
}

/// One request's share of a merged script call (see [`script::encode_merged`]).
pub(super) struct ScriptPart {
    /// Its keys, each a RESP bulk string (`shape.hits` of them).
    pub(super) keys: Vec<u8>,
    /// Its [`script::Call::request_args`].
    pub(super) args: Vec<u8>,
    pub(super) shape: Shape,
}

/// Who a written command's reply goes to.
enum Taker {
    One(Place),
    /// A merged script call: each request's part of the reply to its caller.
    Merged(Vec<(Place, Shape)>),
}

impl Taker {
    fn since(&self) -> Option<Instant> {
        match self {
            Taker::One(p) => Some(p.since),
            Taker::Merged(m) => m.first().map(|(p, _)| p.since),
        }
    }

    fn fail(self, reason: &str) {
        match self {
            Taker::One(p) => {
                let _ = p.reply.send(Err(reason.to_owned()));
            }
            Taker::Merged(m) => {
                for (p, _) in m {
                    let _ = p.reply.send(Err(reason.to_owned()));
                }
            }
        }
    }

    fn answer(self, v: Value) {
        match self {
            Taker::One(p) => {
                let _ = p.reply.send(Ok(v));
            }
            Taker::Merged(m) => match v {
                Value::Bulk(bytes) => match script::split(&bytes, m.iter().map(|(_, s)| *s)) {
                    Ok(parts) => {
                        for ((p, _), part) in m.into_iter().zip(parts) {
                            let _ = p.reply.send(Ok(Value::Bulk(part)));
                        }
                    }
                    Err(e) => Taker::Merged(m).fail(&e.to_string()),
                },
                // An error (NOSCRIPT, say) or an unexpected reply is every request's.
                other => {
                    for (p, _) in m {
                        let _ = p.reply.send(Ok(other.clone()));
                    }
                }
            },
        }
    }
}

/// Most requests, and most keys, one merged script call carries: Redis runs a call without
/// serving anyone else, so a call stays short.
const MERGE_REQUESTS: usize = 64;
const MERGE_KEYS: usize = 512;
/// Once this many merged script calls are written and not yet answered, the script calls
/// queued meanwhile wait for a reply and then go together (as one merged call, or more when
/// they exceed one's bounds).
const MERGED_IN_FLIGHT: usize = 1;

struct State {
    phase: Phase,
    /// Commands queued and not yet written; raw ones are encoded in `out`.
    out: Vec<u8>,
    unsent: VecDeque<(Queued, Place)>,
    /// Commands written and not yet answered, in wire order.
    waiting: VecDeque<Taker>,
    /// How many of them are merged script calls.
    merged_waiting: usize,
    /// Set to close the connection at the driver's next turn, with this reason.
    drop_reason: Option<String>,
}

pub(super) struct Shared {
    state: Mutex<State>,
    /// Set (and the driver woken) when output is queued or the pipeline closes.
    woken: AtomicBool,
    driver: AtomicWaker,
    clock: RedisClock,
    /// Signalled when a connection came up (with a sample of Redis' clock) or failed to.
    sampled: Notify,
}

impl Shared {
    fn wake_driver(&self) {
        self.woken.store(true, Ordering::Release);
        self.driver.wake();
    }

    /// Wakes the driver for output just queued, or holds the wake if this thread holds them.
    fn wake_driver_for_output(self: &Arc<Self>) {
        let held = HELD
            .try_with(|h| match h.borrow_mut().as_mut() {
                Some(held) => {
                    if !held.iter().any(|s| Arc::ptr_eq(s, self)) {
                        held.push(Arc::clone(self));
                    }
                    true
                }
                None => false,
            })
            .unwrap_or(false);
        if !held {
            self.wake_driver();
        }
    }

    /// Resolves once [`Shared::wake_driver`] was called since the last time it resolved.
    async fn woken(&self) {
        std::future::poll_fn(|cx| {
            if self.woken.swap(false, Ordering::AcqRel) {
                return Poll::Ready(());
            }
            self.driver.register(cx.waker());
            if self.woken.swap(false, Ordering::AcqRel) {
                Poll::Ready(())
            } else {
                Poll::Pending
            }
        })
        .await
    }

    /// Fails every waiting caller with `reason`; `then` is the new phase (unless closed).
    fn fail_all(&self, reason: &str, then: Phase) {
        let (unsent, waiting) = {
            let mut st = self.state.lock();
            st.out.clear();
            st.drop_reason = None;
            st.merged_waiting = 0;
            if !matches!(st.phase, Phase::Closed) {
                st.phase = then;
            }
            (
                std::mem::take(&mut st.unsent),
                std::mem::take(&mut st.waiting),
            )
        };
        for t in unsent
            .into_iter()
            .map(|(_, p)| Taker::One(p))
            .chain(waiting)
        {
            t.fail(reason);
        }
    }

    fn closed(&self) -> bool {
        matches!(self.state.lock().phase, Phase::Closed)
    }

    /// Closes the pipeline: its driver fails what waits and stops.
    fn close(&self) {
        self.state.lock().phase = Phase::Closed;
        self.wake_driver();
    }

    /// The node the connection is up to.
    pub(super) fn connected_to(&self) -> Option<String> {
        match &self.state.lock().phase {
            Phase::Up(node) => Some(node.clone()),
            _ => None,
        }
    }

    /// Closes the connection to `node` (if it is still the one in use) and reconnects.
    pub(super) fn reconnect(&self, node: &str, reason: String) {
        let mut st = self.state.lock();
        if matches!(&st.phase, Phase::Up(n) if n == node) {
            st.drop_reason = Some(reason);
            drop(st);
            self.wake_driver();
        }
    }
}

thread_local! {
    /// The drivers whose wake-up this thread holds (`None`: wakes go through at once).
    static HELD: RefCell<Option<Vec<Arc<Shared>>>> = const { RefCell::new(None) };
}

/// From now on, the driver wake-ups that calls made on this thread would cause are held until
/// [`release_wakes`] (see the module docs). Holding again while holding changes nothing.
pub fn hold_wakes() {
    let _ = HELD.try_with(|h| {
        h.borrow_mut().get_or_insert_with(Vec::new);
    });
}

/// Whether this thread holds a driver's wake-up that [`release_wakes`] must deliver.
pub fn holds_wakes() -> bool {
    HELD.try_with(|h| h.borrow().as_ref().is_some_and(|held| !held.is_empty()))
        .unwrap_or(false)
}

/// Wakes every driver whose wake-up this thread held, and stops holding.
pub fn release_wakes() {
    let held = HELD.try_with(|h| h.borrow_mut().take()).ok().flatten();
    for shared in held.into_iter().flatten() {
        shared.wake_driver();
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_secs(1);
/// Repeated connection losses log one line per interval, with a count.
const LOST_LOG_EVERY: Duration = Duration::from_secs(10);

/// A pipelined connection to one standalone Redis; dropping it stops its driver task.
pub(super) struct Pipeline {
    shared: Arc<Shared>,
}

impl Pipeline {
    /// Starts the driver task, which connects at once (and again whenever needed), and for
    /// Sentinel the watcher. Must be called within a Tokio runtime: the tasks run on it.
    /// `stall`: see the module docs.
    pub(super) fn start(
        target: Arc<Target>,
        name: &'static str,
        connect_timeout: Duration,
        stall: Duration,
    ) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                phase: Phase::Connecting,
                out: Vec::with_capacity(16 * 1024),
                unsent: VecDeque::new(),
                waiting: VecDeque::new(),
                merged_waiting: 0,
                drop_reason: None,
            }),
            woken: AtomicBool::new(false),
            driver: AtomicWaker::new(),
            clock: RedisClock::default(),
            sampled: Notify::new(),
        });
        if matches!(*target, Target::Sentinel(_)) {
            tokio::spawn(super::sentinel::watch(
                Arc::downgrade(&shared),
                target.clone(),
            ));
        }
        tokio::spawn(drive(shared.clone(), target, name, connect_timeout, stall));
        Self { shared }
    }

    /// The estimate of this connection's Redis clock.
    pub(super) fn clock(&self) -> &RedisClock {
        &self.shared.clock
    }

    /// Waits until there is a sample of Redis' clock (a connection was up), or fails with the
    /// reason the connection could not be opened.
    pub(super) async fn ready(&self) -> Result<(), StoreError> {
        loop {
            let notified = self.shared.sampled.notified();
            if self.shared.clock.has_sample() {
                return Ok(());
            }
            match &self.shared.state.lock().phase {
                Phase::Down { reason } => return Err(StoreError::Unavailable(reason.clone())),
                Phase::Closed => return Err(StoreError::Unavailable("redis: closed".into())),
                Phase::Connecting | Phase::Up(_) => {}
            }
            notified.await;
        }
    }

    /// Sends one command (what `encode` writes: one RESP array) and returns its reply. An
    /// error reply is a reply (`Ok(Value::Error)`); `Err` means no usable reply. `permit` is
    /// held until the command is answered or dropped unsent.
    pub(super) async fn request(
        &self,
        encode: impl FnOnce(&mut Vec<u8>),
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Value, StoreError> {
        self.send(
            |st| {
                encode(&mut st.out);
                Queued::Raw(st.out.len())
            },
            permit,
        )
        .await
    }

    /// Sends one request's script call, merged with the other script calls queued at the
    /// driver's next write into one `EVALSHA` (see `script.lua`), and returns the request's
    /// reply as a call of its own would have had it (or the whole call's error reply).
    pub(super) async fn script(
        &self,
        part: ScriptPart,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Value, StoreError> {
        self.send(|_| Queued::Script(part), permit).await
    }

    /// Queues what `queue` makes (unless the connection is down or closed), wakes the driver
    /// if the queue was empty (or holds the wake, see [`hold_wakes`]), and waits for the reply.
    async fn send(
        &self,
        queue: impl FnOnce(&mut State) -> Queued,
        permit: Option<OwnedSemaphorePermit>,
    ) -> Result<Value, StoreError> {
        let (tx, rx) = oneshot::channel();
        let wake = {
            let mut st = self.shared.state.lock();
            match &st.phase {
                Phase::Down { reason } => return Err(StoreError::Unavailable(reason.clone())),
                Phase::Closed => return Err(StoreError::Unavailable("redis: closed".into())),
                Phase::Connecting | Phase::Up(_) => {}
            }
            let was_empty = st.unsent.is_empty();
            let q = queue(&mut st);
            st.unsent.push_back((
                q,
                Place {
                    since: Instant::now(),
                    reply: tx,
                    _permit: permit,
                },
            ));
            was_empty
        };
        if wake {
            self.shared.wake_driver_for_output();
        }
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(reason)) => Err(StoreError::Unavailable(reason)),
            Err(_) => Err(StoreError::Unavailable("redis: connection lost".into())),
        }
    }
}

impl Pipeline {
    /// Whether the pipeline was closed (its owner dropped it, or a [`Closer`] closed it).
    pub(super) fn is_closed(&self) -> bool {
        self.shared.closed()
    }

    /// What closes this pipeline from elsewhere, as dropping it does.
    pub(super) fn closer(&self) -> Closer {
        Closer(Arc::downgrade(&self.shared))
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shared.close();
    }
}

/// Closes a pipeline owned elsewhere (and stops its driver), if it is still there.
pub(super) struct Closer(std::sync::Weak<Shared>);

impl Closer {
    pub(super) fn close(&self) {
        if let Some(shared) = self.0.upgrade() {
            shared.close();
        }
    }
}

/// The driver: connect, serve until the connection breaks, fail the waiting, repeat.
async fn drive(
    shared: Arc<Shared>,
    target: Arc<Target>,
    name: &'static str,
    connect_timeout: Duration,
    stall: Duration,
) {
    let lost = LogThrottle::new(LOST_LOG_EVERY);
    let mut delay = FIRST_BACKOFF;
    let mut last_node: Option<String> = None;
    loop {
        if shared.closed() {
            shared.fail_all("redis: closed", Phase::Closed);
            return;
        }
        let attempt = tokio::time::timeout(connect_timeout, target.open(name)).await;
        let reason = match attempt {
            Ok(Ok(opened)) => {
                delay = FIRST_BACKOFF;
                if last_node.as_deref() != Some(opened.node.as_str()) {
                    // Another node, another clock.
                    shared.clock.reset();
                }
                shared.clock.observe(opened.clock.0, opened.clock.1);
                shared.sampled.notify_waiters();
                {
                    let mut st = shared.state.lock();
                    if matches!(st.phase, Phase::Closed) {
                        continue;
                    }
                    st.phase = Phase::Up(opened.node.clone());
                }
                last_node = Some(opened.node.clone());
                let why = serve(&shared, opened.conn, stall).await;
                if !shared.closed()
                    && let Some(times) = lost.allow()
                {
                    tracing::warn!(redis = %opened.node, reason = %why, times, "redis connection lost; reconnecting");
                }
                // Reconnect at once; calls in the meantime wait for it.
                shared.fail_all(&why, Phase::Connecting);
                continue;
            }
            Ok(Err(reason)) => reason,
            Err(_) => format!(
                "connecting to {} timed out after {connect_timeout:?}",
                target.describe()
            ),
        };
        tracing::debug!(redis = %target.describe(), %reason, retry_in = ?delay, "redis connect failed");
        shared.fail_all(
            &reason,
            Phase::Down {
                reason: reason.clone(),
            },
        );
        shared.sampled.notify_waiters();
        // Calls fail fast meanwhile; dropping the pipeline ends the wait early.
        tokio::select! {
            _ = tokio::time::sleep(delay) => {}
            _ = shared.woken() => {}
        }
        delay = (delay * 2).min(MAX_BACKOFF);
        let mut st = shared.state.lock();
        if matches!(st.phase, Phase::Down { .. }) {
            st.phase = Phase::Connecting;
        }
    }
}

/// Moves the queued commands into `wbuf` and their callers into the waiting queue, leaving out
/// those whose caller has gone (so they are never written). Script calls queued together go
/// as one merged call (or more, of at most [`MERGE_REQUESTS`] requests and [`MERGE_KEYS`]
/// keys), written after the raw commands queued with them.
fn take_output(st: &mut State, wbuf: &mut Vec<u8>) {
    if st.unsent.is_empty() {
        return;
    }
    let now = Instant::now();
    let mut start = 0;
    let mut scripts: Vec<(ScriptPart, Place)> = Vec::new();
    let hold = st.merged_waiting >= MERGED_IN_FLIGHT;
    let mut held = VecDeque::new();
    for (q, mut p) in std::mem::take(&mut st.unsent) {
        let gone = p.reply.is_closed();
        p.since = now;
        match q {
            Queued::Raw(end) => {
                if !gone {
                    wbuf.extend_from_slice(&st.out[start..end]);
                    st.waiting.push_back(Taker::One(p));
                }
                start = end;
            }
            Queued::Script(part) if gone => drop(part),
            Queued::Script(part) if hold => held.push_back((Queued::Script(part), p)),
            Queued::Script(part) => scripts.push((part, p)),
        }
    }
    st.out.clear();
    st.unsent = held;
    let mut rest = scripts.into_iter().peekable();
    while rest.peek().is_some() {
        let mut batch = Vec::new();
        let mut keys = 0;
        while let Some((part, _)) = rest.peek() {
            if !batch.is_empty()
                && (batch.len() == MERGE_REQUESTS || keys + part.shape.hits > MERGE_KEYS)
            {
                break;
            }
            keys += part.shape.hits;
            batch.extend(rest.next());
        }
        script::encode_merged(
            wbuf,
            b"EVALSHA",
            script::SCRIPT_SHA.as_bytes(),
            batch.iter().map(|(s, _)| s),
        );
        st.waiting.push_back(Taker::Merged(
            batch.into_iter().map(|(s, p)| (p, s.shape)).collect(),
        ));
        st.merged_waiting += 1;
    }
}

/// Writes what callers queue and hands out replies, until the connection fails or the
/// pipeline closes; returns why.
async fn serve(shared: &Shared, mut conn: Conn, stall: Duration) -> String {
    let mut wbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut check = tokio::time::interval(stall / 2);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    // Set when the connection is to be closed on purpose (the master moved): nothing more is
    // written, and the replies of what was are read first. Dropping a written command's reply
    // would fail a call that Redis may still count.
    let mut closing: Option<String> = None;
    loop {
        {
            let mut st = shared.state.lock();
            if matches!(st.phase, Phase::Closed) {
                return "redis: closed".into();
            }
            if let Some(why) = st.drop_reason.take() {
                closing = Some(why);
            }
            if let Some(why) = &closing {
                if st.waiting.is_empty() {
                    return why.clone();
                }
            } else {
                take_output(&mut st, &mut wbuf);
            }
        }
        if !wbuf.is_empty() {
            // A peer that stops reading must not hold the driver (and every caller) forever.
            let write = conn.io.write_all(&wbuf);
            match tollgate_common::local_runtime::timeout_at(Instant::now() + stall, write).await {
                Ok(Ok(())) => {}
                Ok(Err(e)) => return format!("redis: writing: {e}"),
                Err(_) => return format!("redis: could not write for {stall:?}"),
            }
            wbuf.clear();
            if wbuf.capacity() > 1 << 20 {
                wbuf.shrink_to(16 * 1024);
            }
        }
        if conn.rbuf.capacity() - conn.rbuf.len() < 1024 {
            conn.rbuf.reserve(16 * 1024);
        }
        tokio::select! {
            biased;
            read = conn.io.read_buf(&mut conn.rbuf) => match read {
                Ok(0) => return "redis closed the connection".into(),
                Ok(_) => {
                    if let Err(why) = deliver(shared, &mut conn.rbuf) {
                        return why;
                    }
                }
                Err(e) => return format!("redis: reading: {e}"),
            },
            _ = shared.woken() => {
                // Let every other task that is ready now queue its command first, so one
                // write carries them all (a woken task would otherwise run right away).
                tokio::task::yield_now().await;
            }
            _ = check.tick() => {
                let st = shared.state.lock();
                if let Some(since) = st.waiting.front().and_then(Taker::since)
                    && since.elapsed() > stall
                {
                    return format!("redis: no reply for {stall:?}");
                }
            }
        }
    }
}

/// Hands every complete reply in `rbuf` to its caller, in order, and drops those bytes.
fn deliver(shared: &Shared, rbuf: &mut Vec<u8>) -> Result<(), String> {
    let mut used = 0;
    let mut replies = Vec::new();
    loop {
        match parse(&rbuf[used..]) {
            Ok(Some((v, n))) => {
                replies.push(v);
                used += n;
            }
            Ok(None) => break,
            Err(e) => return Err(format!("bad reply from redis: {e}")),
        }
    }
    rbuf.drain(..used);
    if replies.is_empty() {
        return Ok(());
    }
    let demoted = replies
        .iter()
        .any(|v| matches!(v, Value::Error(e) if e.starts_with("READONLY")));
    let takers: Vec<Taker> = {
        let mut st = shared.state.lock();
        if replies.len() > st.waiting.len() {
            return Err("redis sent a reply nobody asked for".into());
        }
        let takers: Vec<Taker> = st.waiting.drain(..replies.len()).collect();
        let merged = takers
            .iter()
            .filter(|t| matches!(t, Taker::Merged(_)))
            .count();
        st.merged_waiting -= merged;
        takers
    };
    for (t, v) in takers.into_iter().zip(replies) {
        t.answer(v);
    }
    if demoted {
        return Err("redis: the node is read-only (a demoted master)".into());
    }
    Ok(())
}
