//! Threads that run one single-threaded Tokio runtime for their whole life (the gRPC server's
//! connection threads). A resource that serves many calls can keep one instance per such
//! thread and drive it by a task on that thread's runtime, so that a call and what answers it
//! never cross threads (a cross-thread wake-up is a syscall and a context switch each way,
//! which costs more than the call).

//!
//! Such a thread also has coarse deadlines ([`timeout_at`]): Tokio's timer wakes its driver
//! (an eventfd write) whenever a timer is set earlier than the driver's next wake-up, which on
//! a busy connection thread is most calls; here one sleeper per thread serves every deadline,
//! at most [`GRAIN`] late.

use std::cell::{Cell, RefCell};
use std::collections::VecDeque;
use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Weak};
use std::task::{Context, Poll};
use std::time::{Duration, Instant};

use futures::task::AtomicWaker;

thread_local! {
    static DEDICATED: Cell<bool> = const { Cell::new(false) };
    static DEADLINES: RefCell<Deadlines> = const {
        RefCell::new(Deadlines { due: VecDeque::new(), armed: None })
    };
}

/// Marks the current thread as running a single-threaded runtime until the thread ends: a
/// task spawned from this thread runs on it, for as long as any call from this thread can.
/// Only the thread that owns such a runtime calls this, before serving from it.
pub fn mark_dedicated() {
    DEDICATED.set(true);
}

/// Whether the current thread was marked with [`mark_dedicated`].
pub fn is_dedicated() -> bool {
    DEDICATED.try_with(Cell::get).unwrap_or(false)
}

/// How late a deadline of [`timeout_at`] may fire on a dedicated thread: the sleeper wakes on
/// multiples of this, so a busy thread's sleeper wakes at most once per grain.
pub const GRAIN: Duration = Duration::from_millis(1);

/// `future`'s output, or [`Elapsed`] once `deadline` has passed: Tokio's `timeout_at` on other
/// threads; on a dedicated one, the thread's own coarse deadlines (at most [`GRAIN`] late).
pub fn timeout_at<F: Future>(deadline: Instant, future: F) -> TimeoutAt<F> {
    if is_dedicated() {
        TimeoutAt {
            inner: Inner::Coarse {
                future,
                deadline,
                slot: None,
            },
        }
    } else {
        TimeoutAt {
            inner: Inner::Tokio {
                timeout: tokio::time::timeout_at(deadline.into(), future),
            },
        }
    }
}

/// The deadline of [`timeout_at`] passed first.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Elapsed;

/// A registered deadline: fired by the sleeper, or dropped with its future.
#[derive(Default)]
struct Slot {
    fired: AtomicBool,
    waker: AtomicWaker,
}

/// A dedicated thread's deadlines, in order, and when its sleeper task wakes next (`None`: no
/// sleeper runs).
struct Deadlines {
    due: VecDeque<(Instant, Weak<Slot>)>,
    armed: Option<Instant>,
}

impl Deadlines {
    /// Adds a deadline; `Some(wake)` when a sleeper must be started for it (none runs, or the
    /// one running wakes later).
    fn add(&mut self, at: Instant, slot: &Arc<Slot>) -> Option<Instant> {
        // Deadlines whose futures are done leave the front, so that it is the next to fire.
        while self.due.front().is_some_and(|(_, s)| s.strong_count() == 0) {
            self.due.pop_front();
        }
        // One timeout for every call keeps them in order; another is put in its place.
        let at_or_after = self.due.partition_point(|(t, _)| *t <= at);
        self.due.insert(at_or_after, (at, Arc::downgrade(slot)));
        let wake = round_up(at);
        if self.armed.is_none_or(|armed| wake < armed) {
            self.armed = Some(wake);
            Some(wake)
        } else {
            None
        }
    }

    /// Fires what is due at `now` (and lets go of deadlines whose futures are done); the next
    /// deadline.
    fn fire(&mut self, now: Instant) -> Option<Instant> {
        while let Some((at, slot)) = self.due.front() {
            if *at > now && slot.strong_count() > 0 {
                return Some(*at);
            }
            if let Some(slot) = slot.upgrade() {
                slot.fired.store(true, Ordering::Release);
                slot.waker.wake();
            }
            self.due.pop_front();
        }
        None
    }
}

/// The thread's sleeper: wakes at `wake` (a grain after a deadline), fires what is due, and
/// sleeps until the grain after the next, until none is left. A sleeper started for an earlier
/// deadline takes over (`armed` names the one that carries on); the one it replaced stops when
/// it wakes.
async fn sleeper(mut wake: Instant) {
    loop {
        tokio::time::sleep_until(wake.into()).await;
        let next = DEADLINES.with_borrow_mut(|d| {
            let carries_on = d.armed == Some(wake);
            let next = d.fire(Instant::now()).map(round_up);
            if carries_on {
                d.armed = next;
                next
            } else {
                None
            }
        });
        match next {
            Some(at) => wake = at,
            None => return,
        }
    }
}

/// `at` rounded up to a multiple of [`GRAIN`] since the thread's first deadline.
fn round_up(at: Instant) -> Instant {
    thread_local! {
        static EPOCH: Instant = Instant::now();
    }
    let epoch = EPOCH.with(|e| *e);
    let since = at.saturating_duration_since(epoch).as_nanos();
    let grain = GRAIN.as_nanos();
    let rounded = since.div_ceil(grain) * grain;
    epoch + Duration::from_nanos(u64::try_from(rounded).unwrap_or(u64::MAX))
}

pin_project_lite::pin_project! {
    /// The future of [`timeout_at`].
    pub struct TimeoutAt<F> {
        #[pin]
        inner: Inner<F>,
    }
}

impl<F> std::fmt::Debug for TimeoutAt<F> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TimeoutAt").finish_non_exhaustive()
    }
}

pin_project_lite::pin_project! {
    #[project = InnerProj]
    enum Inner<F> {
        Coarse {
            #[pin]
            future: F,
            deadline: Instant,
            slot: Option<Arc<Slot>>,
        },
        Tokio {
            #[pin]
            timeout: tokio::time::Timeout<F>,
        },
    }
}

impl<F: Future> Future for TimeoutAt<F> {
    type Output = Result<F::Output, Elapsed>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let (future, deadline, slot) = match self.project().inner.project() {
            InnerProj::Tokio { timeout } => return timeout.poll(cx).map_err(|_| Elapsed),
            InnerProj::Coarse {
                future,
                deadline,
                slot,
            } => (future, deadline, slot),
        };
        if let Poll::Ready(out) = future.poll(cx) {
            return Poll::Ready(Ok(out));
        }
        match slot {
            Some(slot) => {
                slot.waker.register(cx.waker());
                if slot.fired.load(Ordering::Acquire) {
                    return Poll::Ready(Err(Elapsed));
                }
            }
            None => {
                if Instant::now() >= *deadline {
                    return Poll::Ready(Err(Elapsed));
                }
                let new = Arc::new(Slot::default());
                new.waker.register(cx.waker());
                if let Some(wake) = DEADLINES.with_borrow_mut(|d| d.add(*deadline, &new)) {
                    tokio::spawn(sleeper(wake));
                }
                *slot = Some(new);
            }
        }
        Poll::Pending
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_mark_is_per_thread() {
        assert!(!is_dedicated());
        std::thread::spawn(|| {
            mark_dedicated();
            assert!(is_dedicated());
        })
        .join()
        .unwrap();
        assert!(!is_dedicated());
    }

    fn dedicated_runtime() -> tokio::runtime::Runtime {
        mark_dedicated();
        tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap()
    }

    #[test]
    fn a_dedicated_thread_times_out_within_the_grain_and_not_before() {
        std::thread::spawn(|| {
            dedicated_runtime().block_on(async {
                let started = Instant::now();
                let deadline = started + Duration::from_millis(30);
                let out = timeout_at(deadline, std::future::pending::<()>()).await;
                assert_eq!(out, Err(Elapsed));
                let fired = Instant::now();
                assert!(fired >= deadline, "fired early");
                assert!(
                    fired < deadline + GRAIN + Duration::from_millis(200),
                    "fired {:?} late",
                    fired - deadline
                );
            });
        })
        .join()
        .unwrap();
    }

    #[test]
    fn a_future_done_in_time_is_answered_and_later_deadlines_still_fire() {
        std::thread::spawn(|| {
            dedicated_runtime().block_on(async {
                let now = Instant::now();
                // Out of order: the later deadline first, then an earlier one.
                let late = tokio::spawn(timeout_at(
                    now + Duration::from_millis(400),
                    std::future::pending::<()>(),
                ));
                let early = tokio::spawn(timeout_at(
                    now + Duration::from_millis(20),
                    std::future::pending::<()>(),
                ));
                let quick = timeout_at(now + Duration::from_secs(5), async { 7 }).await;
                assert_eq!(quick, Ok(7));
                let slow = timeout_at(
                    now + Duration::from_secs(5),
                    tokio::time::sleep(Duration::from_millis(5)),
                )
                .await;
                assert_eq!(slow, Ok(()));
                assert_eq!(early.await.unwrap(), Err(Elapsed));
                let early_at = Instant::now();
                assert!(
                    early_at - now < Duration::from_millis(300),
                    "the earlier deadline waited for the later"
                );
                assert_eq!(late.await.unwrap(), Err(Elapsed));
                assert!(Instant::now() - now >= Duration::from_millis(400));
                // Every deadline fired or left: the sleeper stopped.
                DEADLINES.with_borrow(|d| {
                    assert!(d.due.is_empty());
                    assert_eq!(d.armed, None);
                });
            });
        })
        .join()
        .unwrap();
    }

    #[test]
    fn other_threads_use_tokio_timers() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .unwrap();
        rt.block_on(async {
            let out = timeout_at(
                Instant::now() + Duration::from_millis(5),
                std::future::pending::<()>(),
            )
            .await;
            assert_eq!(out, Err(Elapsed));
            DEADLINES.with_borrow(|d| assert!(d.due.is_empty() && d.armed.is_none()));
        });
    }
}
