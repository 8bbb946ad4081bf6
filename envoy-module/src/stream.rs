//! One HTTP stream through the module: asks the filter for a verdict on the request headers and
//! applies it (mutations, a local reply, or a pause until a verdict that waits on I/O is ready),
//! adds response headers on the way back, and answers the failure mode when the filter panics.
//!
//! Envoy calls a stream's hooks on one worker thread, but some re-enter: a local reply sent from
//! the request-headers hook runs the response-headers hook before `send_response` returns. So
//! the state is in cells, and no borrow is held across a call into Envoy.
//!
//! A verdict that waits (a Redis counter, a key fetched from a JWKS) is a future polled on the
//! worker thread, never blocking it: its waker commits Envoy's scheduler, from whichever thread
//! the I/O completes on (the background runtime's), and Envoy's `scheduled` hook polls it again
//! on the worker. So a paused request costs one hand-off each way, and no background task.
//!
//! The requests a worker decodes in one turn of its event loop go to Redis together: while
//! a request-headers hook runs, the Redis driver's wake-ups are held (see the limiter's
//! `hold_wakes`), and the first stream that paused with a wake held commits [`RELEASE_EVENT`]
//! on its own scheduler. Envoy runs that event after the I/O events of the turn, so every
//! request of the turn has queued its call by then, and the driver wakes once for all of them
//! (one merged script call). If that stream is destroyed first, its drop releases them.

use std::borrow::Cow;
use std::cell::{Cell, RefCell};
use std::panic::{AssertUnwindSafe, catch_unwind};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, MutexGuard, PoisonError};
use std::task::{Context, Poll, Wake, Waker};
use std::time::Instant;

use crate::config::FilterConfig;
use crate::filter::{LocalReply, Mutations, Pending, Verdict};
use crate::host::{Counter, Histogram, Host, RequestView, Scheduler};
use crate::runtime;
use tollgate_limiter::store::redis::{hold_wakes, holds_wakes, release_wakes};

/// The scheduler event that releases the wake-ups held during a worker's turn (a verdict's
/// own events count from 1).
const RELEASE_EVENT: u64 = 0;

thread_local! {
    /// The stream on this worker thread that has committed [`RELEASE_EVENT`] (by its id).
    static RELEASER: Cell<Option<u64>> = const { Cell::new(None) };
}

/// Releases the held wake-ups if `stream` is the one that was to (it is resumed, answered or
/// destroyed before its release event ran).
fn release_if_releaser(stream: u64) {
    if RELEASER.get() == Some(stream) {
        RELEASER.set(None);
        release_wakes();
    }
}

/// What the request-headers hook tells Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Flow {
    Continue,
    /// Stop the filter chain: the request was answered, or waits for a background verdict.
    Stop,
}

/// What the request body and trailers hooks tell Envoy.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum BodyFlow {
    Continue,
    /// Hold the body (with Envoy's flow control) until the paused request is resumed.
    Hold,
}

/// The module's state for one stream.
pub(crate) struct Stream<S: Scheduler> {
    config: Arc<FilterConfig>,
    response_headers: RefCell<Vec<(Cow<'static, str>, String)>>,
    pending: RefCell<Option<Ticket<S>>>,
    replied: Cell<bool>,
    next_event: Cell<u64>,
    /// Tells streams apart as the [`RELEASER`].
    id: u64,
}

/// A verdict this stream waits for.
struct Ticket<S> {
    pending: Pending,
    wake: Arc<Resume<S>>,
    started: Instant,
}

/// The waiting future's waker: commits `event` through Envoy's scheduler. The stream releases
/// the scheduler (under the lock, so never during a commit) when the verdict is in or the
/// stream is destroyed; a wake after that finds none and cannot reach a stream that is gone.
struct Resume<S> {
    event: u64,
    scheduler: Mutex<Option<S>>,
}

impl<S: Scheduler> Wake for Resume<S> {
    fn wake(self: Arc<Self>) {
        self.wake_by_ref();
    }

    fn wake_by_ref(self: &Arc<Self>) {
        if let Some(scheduler) = lock(&self.scheduler).as_ref() {
            scheduler.commit(self.event);
        }
    }
}

fn lock<T>(m: &Mutex<T>) -> MutexGuard<'_, T> {
    // A panic while holding this lock cannot leave the handoff half-written in a way that
    // matters (each field is replaced whole), so a poisoned lock is used as it is.
    m.lock().unwrap_or_else(PoisonError::into_inner)
}

impl<S: Scheduler> Stream<S> {
    pub(crate) fn new(config: Arc<FilterConfig>) -> Self {
        Stream {
            config,
            response_headers: RefCell::new(Vec::new()),
            pending: RefCell::new(None),
            replied: Cell::new(false),
            next_event: Cell::new(1),
            id: {
                static NEXT: AtomicU64 = AtomicU64::new(0);
                NEXT.fetch_add(1, Ordering::Relaxed)
            },
        }
    }

    /// The request-headers hook: the decision, with the Redis driver's wake-ups held (see
    /// the module docs).
    pub(crate) fn request_headers<H: Host<Scheduler = S>>(&self, host: &mut H) -> Flow {
        hold_wakes();
        let flow = self.decide(host);
        if RELEASER.get().is_none() {
            // The first stream of the turn to hold a wake releases them all, at its event.
            let committed = holds_wakes()
                && self.pending.borrow().as_ref().is_some_and(|ticket| {
                    let scheduler = lock(&ticket.wake.scheduler);
                    scheduler
                        .as_ref()
                        .map(|s| s.commit(RELEASE_EVENT))
                        .is_some()
                });
            if committed {
                RELEASER.set(Some(self.id));
            } else {
                release_wakes();
            }
        }
        flow
    }

    fn decide<H: Host<Scheduler = S>>(&self, host: &mut H) -> Flow {
        let route = host.route();
        if route.as_ref().is_some_and(|r| r.disabled) {
            host.count(Counter::Requests, "disabled");
            let mutations = catch_unwind(AssertUnwindSafe(|| self.config.filter.on_disabled()));
            match mutations {
                Ok(m) => self.mutate(host, m),
                Err(_) => {
                    host.count(Counter::Failures, "decide");
                    return self.apply(host, self.config.failure_mode.verdict(), false);
                }
            }
            return Flow::Continue;
        }
        let decided = catch_unwind(AssertUnwindSafe(|| {
            let view = RequestView::new(&*host, route.as_deref());
            self.config.filter.on_request(&view)
        }));
        let verdict = decided.unwrap_or_else(|_| {
            host.count(Counter::Failures, "decide");
            self.config.failure_mode.verdict()
        });
        self.apply(host, verdict, false)
    }

    /// Answers the failure mode after a panic outside the filter (in this layer or the FFI's).
    pub(crate) fn fail<H: Host<Scheduler = S>>(&self, host: &mut H, resumed: bool) -> Flow {
        host.count(Counter::Failures, "hook");
        self.apply(host, self.config.failure_mode.verdict(), resumed)
    }

    /// The request body and trailers hooks: held while the request is paused.
    pub(crate) fn request_data(&self) -> BodyFlow {
        if self.pending.borrow().is_some() {
            BodyFlow::Hold
        } else {
            BodyFlow::Continue
        }
    }

    /// The response-headers hook: adds the headers the verdict asked for.
    pub(crate) fn response_headers<H: Host<Scheduler = S>>(&self, host: &mut H) {
        let headers = self.response_headers.take();
        for (name, value) in &headers {
            host.add_response_header(name, value);
        }
    }

    /// The scheduled hook: the waker of the future this stream waits for fired for `event`, or
    /// the end of the turn in which this stream held the driver's wake-ups.
    pub(crate) fn scheduled<H: Host<Scheduler = S>>(&self, host: &mut H, event: u64) {
        if event == RELEASE_EVENT {
            release_if_releaser(self.id);
            return;
        }
        let mut ticket = {
            let mut pending = self.pending.borrow_mut();
            match pending.take() {
                Some(t) if t.wake.event == event => t,
                other => {
                    *pending = other;
                    return;
                }
            }
        };
        let verdict = match self.poll(&mut ticket) {
            // Woken early (a future that waits more than once): it has registered again.
            Poll::Pending => {
                *self.pending.borrow_mut() = Some(ticket);
                return;
            }
            Poll::Ready(verdict) => verdict,
        };
        release_if_releaser(self.id);
        drop(lock(&ticket.wake.scheduler).take());
        let waited = u64::try_from(ticket.started.elapsed().as_micros()).unwrap_or(u64::MAX);
        host.record(Histogram::PendingMicros, waited);
        let verdict = verdict.unwrap_or_else(|()| {
            host.count(Counter::Failures, "resume");
            self.config.failure_mode.verdict()
        });
        self.apply(host, verdict, true);
    }

    /// Polls the waited-for verdict on this (worker) thread, with the background runtime as
    /// the current one, so its timers and I/O register there; `Err` when it panicked or the
    /// runtime is unavailable.
    fn poll(&self, ticket: &mut Ticket<S>) -> Poll<Result<Verdict, ()>> {
        let Ok(_runtime) = runtime::enter() else {
            return Poll::Ready(Err(()));
        };
        let waker = Waker::from(Arc::clone(&ticket.wake));
        let mut cx = Context::from_waker(&waker);
        match catch_unwind(AssertUnwindSafe(|| ticket.pending.0.as_mut().poll(&mut cx))) {
            Ok(Poll::Pending) => Poll::Pending,
            Ok(Poll::Ready(verdict)) => Poll::Ready(Ok(verdict)),
            Err(_) => Poll::Ready(Err(())),
        }
    }

    fn apply<H: Host<Scheduler = S>>(&self, host: &mut H, verdict: Verdict, resumed: bool) -> Flow {
        match verdict {
            Verdict::Continue(mutations) => {
                host.count(Counter::Requests, "continue");
                self.mutate(host, mutations);
                if resumed {
                    host.continue_decoding();
                }
                Flow::Continue
            }
            Verdict::Respond(reply) => {
                host.count(Counter::Requests, "respond");
                host.count(Counter::Replies, reply.details);
                self.reply(host, &reply);
                Flow::Stop
            }
            Verdict::Pending(pending) => {
                match self.pause(host, pending) {
                    Ok(None) => {
                        host.count(Counter::Paused, "pending");
                        Flow::Stop
                    }
                    // Ready at once: never paused.
                    Ok(Some(verdict)) => self.apply(host, verdict, resumed),
                    Err(()) => {
                        host.count(Counter::Failures, "background");
                        self.apply(host, self.config.failure_mode.verdict(), resumed)
                    }
                }
            }
        }
    }

    fn mutate<H: Host>(&self, host: &mut H, m: Mutations) {
        for name in &m.remove_headers {
            host.remove_header(name);
        }
        for (name, value) in &m.set_headers {
            host.set_header(name, value);
        }
        for (name, value) in &m.add_headers {
            host.add_header(name, value);
        }
        for entries in m.metadata.chunk_by(|a, b| a.namespace == b.namespace) {
            host.set_metadata(entries);
        }
        for (counter, label) in m.counts.iter() {
            host.count(counter, label);
        }
        let mut response_headers = self.response_headers.borrow_mut();
        match response_headers.is_empty() {
            // The usual case: the verdict's own list is kept, not copied.
            true => *response_headers = m.response_headers,
            false => response_headers.extend(m.response_headers),
        }
    }

    fn reply<H: Host>(&self, host: &mut H, reply: &LocalReply) {
        // A second reply on one stream (e.g. a failure after the first was sent) is dropped:
        // Envoy has already answered the client.
        if !self.replied.replace(true) {
            host.send_response(reply);
        }
    }

    /// Pauses the stream until `pending` is ready: polls it with a waker that resumes the
    /// stream through Envoy's scheduler. `Ok(Some(verdict))` when it was ready at once (or
    /// panicked: the failure mode), `Ok(None)` when paused.
    fn pause<H: Host<Scheduler = S>>(
        &self,
        host: &mut H,
        pending: Pending,
    ) -> Result<Option<Verdict>, ()> {
        let scheduler = host.scheduler().ok_or(())?;
        let event = self.next_event.replace(self.next_event.get() + 1);
        let mut ticket = Ticket {
            pending,
            wake: Arc::new(Resume {
                event,
                scheduler: Mutex::new(Some(scheduler)),
            }),
            started: Instant::now(),
        };
        match self.poll(&mut ticket) {
            Poll::Pending => {
                *self.pending.borrow_mut() = Some(ticket);
                Ok(None)
            }
            Poll::Ready(verdict) => {
                drop(lock(&ticket.wake.scheduler).take());
                Ok(Some(verdict.unwrap_or_else(|()| {
                    host.count(Counter::Failures, "resume");
                    self.config.failure_mode.verdict()
                })))
            }
        }
    }
}

impl<S: Scheduler> Drop for Stream<S> {
    fn drop(&mut self) {
        release_if_releaser(self.id);
        if let Some(ticket) = self.pending.get_mut().take() {
            // Release the scheduler before anything else: from here on a wake finds it gone
            // and cannot reach this (destroyed) stream. Dropping the future then cancels
            // what it waited for.
            drop(lock(&ticket.wake.scheduler).take());
            drop(ticket);
        }
    }
}

#[cfg(test)]
#[path = "stream_tests.rs"]
mod tests;
