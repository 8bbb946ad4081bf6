//! A standalone Redis' pipelines: the one every caller can use, driven on the runtime the
//! store was built on, and one more per dedicated server thread
//! ([`tollgate_common::local_runtime`]), driven on that thread's own runtime.
//!
//! Why: a call made on a gRPC connection thread and answered through the shared pipeline
//! crosses threads twice (the caller wakes the driver on the shared runtime, the driver wakes
//! the caller with the reply), each a syscall and a context switch, which cost more than the
//! rest of the call. A thread's own pipeline is queued, written, read and answered on that
//! thread; its calls still merge into one script call per write, as the shared pipeline's do.
//! The price is one more Redis connection per dedicated thread and replica.

use std::cell::RefCell;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use parking_lot::Mutex;

use super::node::Target;
use super::pipeline::{Closer, Pipeline};

thread_local! {
    /// This thread's own pipelines, by the id of the [`Pipelines`] they belong to.
    static OWN: RefCell<Vec<(u64, Arc<Pipeline>)>> = const { RefCell::new(Vec::new()) };
}

/// The shared pipeline and how to open a thread's own.
pub(super) struct Pipelines {
    shared: Pipeline,
    /// `None`: every caller uses the shared one (a Sentinel-managed master: one watcher).
    own: Option<Box<Own>>,
}

struct Own {
    id: u64,
    target: Arc<Target>,
    name: &'static str,
    connect_timeout: Duration,
    stall: Duration,
    /// Every thread's pipeline of this store, closed when the store is dropped.
    opened: Mutex<Vec<Closer>>,
}

impl Pipelines {
    /// Starts the shared pipeline; `per_thread` also gives each dedicated thread its own.
    pub(super) fn start(
        target: Target,
        name: &'static str,
        connect_timeout: Duration,
        stall: Duration,
        per_thread: bool,
    ) -> Self {
        static NEXT: AtomicU64 = AtomicU64::new(0);
        let target = Arc::new(target);
        let shared = Pipeline::start(target.clone(), name, connect_timeout, stall);
        let own = per_thread.then(|| {
            Box::new(Own {
                id: NEXT.fetch_add(1, Ordering::Relaxed),
                target,
                name,
                connect_timeout,
                stall,
                opened: Mutex::new(Vec::new()),
            })
        });
        Pipelines { shared, own }
    }

    /// The pipeline for a call made on this thread (its own, opened on first use, on a
    /// dedicated thread).
    pub(super) fn pick(&self) -> Picked<'_> {
        match &self.own {
            Some(own) if tollgate_common::local_runtime::is_dedicated() => Picked::Own(own.pick()),
            _ => Picked::Shared(&self.shared),
        }
    }
}

/// The pipeline [`Pipelines::pick`] chose: the shared one borrowed (no reference count
/// touched by every thread's calls), or the thread's own.
pub(super) enum Picked<'a> {
    Shared(&'a Pipeline),
    Own(Arc<Pipeline>),
}

impl std::ops::Deref for Picked<'_> {
    type Target = Pipeline;

    fn deref(&self) -> &Pipeline {
        match self {
            Picked::Shared(p) => p,
            Picked::Own(p) => p,
        }
    }
}

impl Own {
    fn pick(&self) -> Arc<Pipeline> {
        OWN.with_borrow_mut(|own| {
            if let Some((_, p)) = own.iter().find(|(id, _)| *id == self.id) {
                return p.clone();
            }
            // A store replaced by a reload closed its pipelines: let them go.
            own.retain(|(_, p)| !p.is_closed());
            let p = Arc::new(Pipeline::start(
                self.target.clone(),
                self.name,
                self.connect_timeout,
                self.stall,
            ));
            self.opened.lock().push(p.closer());
            own.push((self.id, p.clone()));
            p
        })
    }
}

impl Drop for Own {
    fn drop(&mut self) {
        for closer in self.opened.get_mut().drain(..) {
            closer.close();
        }
    }
}
