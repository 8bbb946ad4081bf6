//! One pipelined connection to a standalone Redis, driven by its own task.
//!
//! Callers encode their command straight into the connection's output buffer (under a short
//! lock) and wait for their reply; the driver task writes everything queued since its last
//! write in one syscall, reads every reply that has arrived in one syscall, and hands them
//! out in order. Under load, one write and one read carry many calls, on both sides of the
//! socket: this is what keeps a call's CPU cost close to the in-memory store's.
//!
//! # Order and cancellation
//! Replies come back in the order commands were queued; each waiting caller holds a place in
//! that queue. A caller that gives up (its timeout) leaves its place behind and the reply is
//! read and dropped, so a late reply can never reach the wrong caller.
//!
//! # Failure and reconnecting
//! - I/O errors, a reply that is not RESP, or a reply nobody asked for close the connection:
//!   every waiting caller gets the reason at once and the driver reconnects immediately.
//! - A connection whose oldest waiting command has had no reply for `stall` (Redis hung,
//!   a network path gone silent) is treated the same way, so a dead peer never piles up
//!   waiters without bound.
//! - A failed connect makes calls fail at once, with its reason, for a backoff (25 ms,
//!   doubling up to 1 s) after which the driver tries again by itself. Calls made while a
//!   connect is in progress wait for it (within their own timeout).

use std::collections::VecDeque;
use std::io::Write as _;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::task::Poll;
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;
use parking_lot::Mutex;
use redis::{ConnectionAddr, ConnectionInfo};
use rustls_pki_types::ServerName;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use tokio::sync::oneshot;
use tollgate_common::secret::Secret;

use super::StoreError;

/// One RESP2 reply.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Value {
    Nil,
    Int(i64),
    Simple(String),
    Bulk(Vec<u8>),
    Array(Vec<Value>),
    /// An error reply (`-ERR ...`): a complete answer, so the connection stays usable.
    Error(String),
}

/// Where and how to connect, from a `redis://`, `rediss://` or `redis+unix://` URL.
pub(super) struct Target {
    addr: Addr,
    /// Set with `CLIENT SETNAME` on every connection, for `CLIENT LIST` (best effort).
    name: &'static str,
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

impl Target {
    /// Reads what the pipeline needs from parsed connection info; `ca_file` replaces the system
    /// CAs for TLS.
    pub(super) fn new(
        info: &ConnectionInfo,
        ca_file: Option<&Path>,
        name: &'static str,
    ) -> Result<Self, StoreError> {
        let settings = info.redis_settings();
        let addr = match info.addr() {
            ConnectionAddr::Tcp(host, port) => Addr::Tcp(host.clone(), *port),
            ConnectionAddr::TcpTls {
                host,
                port,
                insecure,
                ..
            } => {
                let config = tollgate_common::tls::client_config(ca_file, !insecure)
                    .map_err(|e| StoreError::Config(format!("redis TLS: {e}")))?;
                let name = ServerName::try_from(host.clone()).map_err(|e| {
                    StoreError::Config(format!("redis TLS: bad server name {host:?}: {e}"))
                })?;
                Addr::Tls {
                    host: host.clone(),
                    port: *port,
                    connector: tokio_rustls::TlsConnector::from(config),
                    name,
                }
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
            name,
            username: settings.username().map(str::to_owned),
            password: settings.password().map(Secret::new),
            db: settings.db(),
        })
    }

    fn describe(&self) -> String {
        match &self.addr {
            Addr::Tcp(h, p)
            | Addr::Tls {
                host: h, port: p, ..
            } => format!("{h}:{p}"),
            Addr::Unix(p) => p.display().to_string(),
        }
    }
}

trait Io: AsyncRead + AsyncWrite + Send + Unpin {}
impl<T: AsyncRead + AsyncWrite + Send + Unpin> Io for T {}

type Reply = Result<Value, String>;

/// Where the connection is.
enum Phase {
    /// Opening (or about to): calls queue and are sent once it is up.
    Connecting,
    Up,
    /// The last connect failed: calls fail at once with the reason until the next attempt.
    Down {
        reason: String,
    },
    /// The pipeline was dropped; the driver stops.
    Closed,
}

struct State {
    phase: Phase,
    /// Commands queued and not yet written.
    out: Vec<u8>,
    /// One place per command queued or written and not yet answered, in wire order, with
    /// when it was queued.
    waiting: VecDeque<(Instant, oneshot::Sender<Reply>)>,
}

struct Shared {
    state: Mutex<State>,
    /// Set (and the driver woken) when output is queued or the pipeline closes.
    woken: AtomicBool,
    driver: AtomicWaker,
}

impl Shared {
    fn wake_driver(&self) {
        self.woken.store(true, Ordering::Release);
        self.driver.wake();
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
        let waiting = {
            let mut st = self.state.lock();
            st.out.clear();
            if !matches!(st.phase, Phase::Closed) {
                st.phase = then;
            }
            std::mem::take(&mut st.waiting)
        };
        for (_, w) in waiting {
            let _ = w.send(Err(reason.to_owned()));
        }
    }

    fn closed(&self) -> bool {
        matches!(self.state.lock().phase, Phase::Closed)
    }
}

const FIRST_BACKOFF: Duration = Duration::from_millis(25);
const MAX_BACKOFF: Duration = Duration::from_secs(1);

/// A pipelined connection to one standalone Redis; dropping it stops its driver task.
pub(super) struct Pipeline {
    shared: Arc<Shared>,
}

impl Pipeline {
    /// Starts the driver task, which connects at once (and again whenever needed). Must be
    /// called within a Tokio runtime. `stall`: see the module docs.
    pub(super) fn start(target: Target, connect_timeout: Duration, stall: Duration) -> Self {
        let shared = Arc::new(Shared {
            state: Mutex::new(State {
                phase: Phase::Connecting,
                out: Vec::with_capacity(16 * 1024),
                waiting: VecDeque::new(),
            }),
            woken: AtomicBool::new(false),
            driver: AtomicWaker::new(),
        });
        tokio::spawn(drive(shared.clone(), target, connect_timeout, stall));
        Self { shared }
    }

    /// Sends one command (what `encode` writes: one RESP array) and returns its reply. An
    /// error reply is a reply (`Ok(Value::Error)`); `Err` means no usable reply.
    pub(super) async fn request(
        &self,
        encode: impl FnOnce(&mut Vec<u8>),
    ) -> Result<Value, StoreError> {
        let (tx, rx) = oneshot::channel();
        let wake = {
            let mut st = self.shared.state.lock();
            match &st.phase {
                Phase::Down { reason, .. } => return Err(StoreError::Unavailable(reason.clone())),
                Phase::Closed => return Err(StoreError::Unavailable("redis: closed".into())),
                Phase::Connecting | Phase::Up => {}
            }
            let was_empty = st.out.is_empty();
            encode(&mut st.out);
            st.waiting.push_back((Instant::now(), tx));
            was_empty
        };
        if wake {
            self.shared.wake_driver();
        }
        match rx.await {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(reason)) => Err(StoreError::Unavailable(reason)),
            Err(_) => Err(StoreError::Unavailable("redis: connection lost".into())),
        }
    }
}

impl Drop for Pipeline {
    fn drop(&mut self) {
        self.shared.state.lock().phase = Phase::Closed;
        self.shared.wake_driver();
    }
}

/// The driver: connect, serve until the connection breaks, fail the waiting, repeat.
async fn drive(shared: Arc<Shared>, target: Target, connect_timeout: Duration, stall: Duration) {
    let mut delay = FIRST_BACKOFF;
    loop {
        if shared.closed() {
            shared.fail_all("redis: closed", Phase::Closed);
            return;
        }
        let attempt = tokio::time::timeout(connect_timeout, open(&target)).await;
        let reason = match attempt {
            Ok(Ok(conn)) => {
                delay = FIRST_BACKOFF;
                {
                    let mut st = shared.state.lock();
                    if matches!(st.phase, Phase::Closed) {
                        continue;
                    }
                    st.phase = Phase::Up;
                    // Time spent connecting is not time waiting for Redis to answer.
                    let now = Instant::now();
                    for (since, _) in st.waiting.iter_mut() {
                        *since = now;
                    }
                }
                let why = serve(&shared, conn, stall).await;
                if !shared.closed() {
                    tracing::warn!(redis = %target.describe(), reason = %why, "redis connection lost; reconnecting");
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

/// Writes what callers queue and hands out replies, until the connection fails or the
/// pipeline closes; returns why.
async fn serve(shared: &Shared, mut conn: Conn, stall: Duration) -> String {
    let mut wbuf: Vec<u8> = Vec::with_capacity(16 * 1024);
    let mut check = tokio::time::interval(stall / 2);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        {
            let mut st = shared.state.lock();
            if matches!(st.phase, Phase::Closed) {
                return "redis: closed".into();
            }
            std::mem::swap(&mut st.out, &mut wbuf);
        }
        if !wbuf.is_empty() {
            // A peer that stops reading must not hold the driver (and every caller) forever.
            match tokio::time::timeout(stall, conn.io.write_all(&wbuf)).await {
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
                if let Some((since, _)) = st.waiting.front()
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
    let takers: Vec<_> = {
        let mut st = shared.state.lock();
        if replies.len() > st.waiting.len() {
            return Err("redis sent a reply nobody asked for".into());
        }
        st.waiting.drain(..replies.len()).collect()
    };
    for ((_, w), v) in takers.into_iter().zip(replies) {
        let _ = w.send(Ok(v));
    }
    Ok(())
}

struct Conn {
    io: Pin<Box<dyn Io>>,
    rbuf: Vec<u8>,
}

impl Conn {
    /// Sends what `encode` writes and reads one reply (only while logging in, before the
    /// connection is shared).
    async fn exchange(&mut self, encode: impl FnOnce(&mut Vec<u8>)) -> Result<Value, String> {
        let mut wbuf = Vec::new();
        encode(&mut wbuf);
        self.io
            .write_all(&wbuf)
            .await
            .map_err(|e| format!("redis: writing: {e}"))?;
        loop {
            match parse(&self.rbuf) {
                Ok(Some((v, used))) => {
                    self.rbuf.drain(..used);
                    return Ok(v);
                }
                Ok(None) => {}
                Err(e) => return Err(format!("bad reply from redis: {e}")),
            }
            match self.io.read_buf(&mut self.rbuf).await {
                Ok(0) => return Err("redis closed the connection".into()),
                Ok(_) => {}
                Err(e) => return Err(format!("redis: reading: {e}")),
            }
        }
    }
}

/// Opens a connection and logs in; the error says why, never with the password.
async fn open(target: &Target) -> Result<Conn, String> {
    let at = target.describe();
    let failed = |e: std::io::Error| format!("connecting to {at}: {e}");
    let io: Pin<Box<dyn Io>> = match &target.addr {
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
    };
    if let Some(password) = &target.password {
        let user = target.username.as_deref();
        let reply = login_step(&mut conn, &at, |b| {
            let n = if user.is_some() { 3 } else { 2 };
            array(b, n);
            bulk(b, b"AUTH");
            if let Some(u) = user {
                bulk(b, u.as_bytes());
            }
            bulk(b, password.expose().as_bytes());
        })
        .await?;
        expect_ok(reply, &at, "AUTH")?;
    }
    if target.db != 0 {
        let db = target.db;
        let reply = login_step(&mut conn, &at, |b| {
            array(b, 2);
            bulk(b, b"SELECT");
            int(b, db);
        })
        .await?;
        expect_ok(reply, &at, "SELECT")?;
    }
    // Proxies without CLIENT refuse this; that is fine.
    let name = target.name;
    login_step(&mut conn, &at, |b| {
        array(b, 3);
        bulk(b, b"CLIENT");
        bulk(b, b"SETNAME");
        bulk(b, name.as_bytes());
    })
    .await?;
    Ok(conn)
}

async fn login_step(
    conn: &mut Conn,
    at: &str,
    encode: impl FnOnce(&mut Vec<u8>),
) -> Result<Value, String> {
    conn.exchange(encode)
        .await
        .map_err(|why| format!("logging in to {at}: {why}"))
}

fn expect_ok(reply: Value, at: &str, what: &str) -> Result<(), String> {
    match reply {
        Value::Simple(s) if s == "OK" => Ok(()),
        Value::Error(e) => Err(format!("{at} refused {what}: {e}")),
        other => Err(format!("{at} answered {what} with {other:?}")),
    }
}

/// Writes a RESP array header of `n` elements.
pub(super) fn array(buf: &mut Vec<u8>, n: usize) {
    let _ = write!(buf, "*{n}\r\n");
}

/// Writes one bulk string.
pub(super) fn bulk(buf: &mut Vec<u8>, bytes: &[u8]) {
    let _ = write!(buf, "${}\r\n", bytes.len());
    buf.extend_from_slice(bytes);
    buf.extend_from_slice(b"\r\n");
}

/// Writes an integer as a bulk string (how commands carry numbers).
pub(super) fn int(buf: &mut Vec<u8>, v: impl itoa::Integer) {
    let mut digits = itoa::Buffer::new();
    bulk(buf, digits.format(v).as_bytes());
}

/// Most nesting and element counts accepted in a reply: far beyond any script reply, small
/// enough that garbage cannot make the parser allocate without bound.
const MAX_DEPTH: usize = 8;
const MAX_LEN: i64 = 1 << 24;

/// Parses one RESP2 value from the start of `buf`: `Ok(None)` when more bytes are needed,
/// otherwise the value and the bytes it used.
pub(super) fn parse(buf: &[u8]) -> Result<Option<(Value, usize)>, String> {
    parse_at(buf, 0, 0)
}

fn parse_at(buf: &[u8], at: usize, depth: usize) -> Result<Option<(Value, usize)>, String> {
    if depth > MAX_DEPTH {
        return Err("reply nested too deeply".into());
    }
    let Some(end) = find_crlf(buf, at) else {
        return Ok(None);
    };
    if end == at {
        return Err("empty line".into());
    }
    let line = &buf[at + 1..end];
    let next = end + 2;
    let text = || String::from_utf8_lossy(line).into_owned();
    let number = || -> Result<i64, String> {
        std::str::from_utf8(line)
            .ok()
            .and_then(|s| s.parse().ok())
            .ok_or_else(|| format!("not a number: {:?}", String::from_utf8_lossy(line)))
    };
    Ok(Some(match buf[at] {
        b'+' => (Value::Simple(text()), next),
        b'-' => (Value::Error(text()), next),
        b':' => (Value::Int(number()?), next),
        b'$' => {
            let len = number()?;
            if len == -1 {
                return Ok(Some((Value::Nil, next)));
            }
            if !(0..=MAX_LEN * 32).contains(&len) {
                return Err(format!("bad bulk length {len}"));
            }
            let stop = next + len as usize;
            if buf.len() < stop + 2 {
                return Ok(None);
            }
            if &buf[stop..stop + 2] != b"\r\n" {
                return Err("bulk string not terminated".into());
            }
            (Value::Bulk(buf[next..stop].to_vec()), stop + 2)
        }
        b'*' => {
            let len = number()?;
            if len == -1 {
                return Ok(Some((Value::Nil, next)));
            }
            if !(0..=MAX_LEN).contains(&len) {
                return Err(format!("bad array length {len}"));
            }
            let mut items = Vec::with_capacity((len as usize).min(64));
            let mut pos = next;
            for _ in 0..len {
                match parse_at(buf, pos, depth + 1)? {
                    Some((v, p)) => {
                        items.push(v);
                        pos = p;
                    }
                    None => return Ok(None),
                }
            }
            (Value::Array(items), pos)
        }
        other => return Err(format!("unknown type byte {other:#04x}")),
    }))
}

fn find_crlf(buf: &[u8], from: usize) -> Option<usize> {
    buf.get(from..)?
        .windows(2)
        .position(|w| w == b"\r\n")
        .map(|p| from + p)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn whole(bytes: &[u8]) -> Value {
        let (v, used) = parse(bytes).unwrap().unwrap();
        assert_eq!(used, bytes.len());
        v
    }

    #[test]
    fn parses_every_reply_kind() {
        assert_eq!(whole(b"+OK\r\n"), Value::Simple("OK".into()));
        assert_eq!(
            whole(b"-NOSCRIPT No matching script\r\n"),
            Value::Error("NOSCRIPT No matching script".into())
        );
        assert_eq!(whole(b":-42\r\n"), Value::Int(-42));
        assert_eq!(whole(b"$3\r\na\r\n\r\n"), Value::Bulk(b"a\r\n".to_vec()));
        assert_eq!(whole(b"$-1\r\n"), Value::Nil);
        assert_eq!(whole(b"*-1\r\n"), Value::Nil);
        assert_eq!(
            whole(b"*3\r\n:1\r\n*1\r\n$0\r\n\r\n:3\r\n"),
            Value::Array(vec![
                Value::Int(1),
                Value::Array(vec![Value::Bulk(Vec::new())]),
                Value::Int(3)
            ])
        );
    }

    #[test]
    fn waits_for_every_byte_of_a_reply() {
        let full = b"*2\r\n:10\r\n$5\r\nhello\r\n";
        for cut in 0..full.len() {
            assert_eq!(parse(&full[..cut]).unwrap(), None, "cut at {cut}");
        }
        assert!(parse(full).unwrap().is_some());
    }

    #[test]
    fn rejects_what_is_not_resp() {
        for bad in [
            &b"HTTP/1.1 400\r\n"[..],
            b":12x\r\n",
            b"$-5\r\n",
            b"*99999999999\r\n",
            b"$1\r\nab\r\n",
            b"\r\n",
        ] {
            assert!(parse(bad).is_err(), "{:?}", String::from_utf8_lossy(bad));
        }
        let deep = "*1\r\n".repeat(MAX_DEPTH + 2) + ":1\r\n";
        assert!(parse(deep.as_bytes()).is_err());
    }

    #[test]
    fn encodes_commands_as_resp_arrays() {
        let mut b = Vec::new();
        array(&mut b, 3);
        bulk(&mut b, b"SELECT");
        int(&mut b, 3u8);
        int(&mut b, -7i64);
        assert_eq!(b, b"*3\r\n$6\r\nSELECT\r\n$1\r\n3\r\n$2\r\n-7\r\n");
    }
}
