//! The module's background runtime: a tokio runtime of one thread, created on first use
//! and kept for the life of the process, where the module's I/O runs (Redis connections, JWKS
//! and introspection requests, the file watcher) and its timers fire. Envoy's worker threads
//! never block on it: a paused request's future, polled on the worker, registers its waker
//! here and is woken through Envoy's scheduler.

use std::future::Future;
use std::sync::OnceLock;

use tokio::runtime::{Builder, Runtime};
use tokio::task::AbortHandle;

/// One background thread, however many cores: what runs there is I/O and timers (a Redis
/// connection's driver writing a turn's calls and reading their replies, JWKS and
/// introspection clients, the file watcher), and the verdicts themselves are polled on Envoy's
/// workers. A second thread only adds wake-ups: with Redis counters through one worker, two
/// threads made about twice the context switches per request of one, and cost Envoy more CPU
/// (bench/README.md). Config reloads and file reads run on tokio's blocking pool, not here.
const THREADS: usize = 1;

static RUNTIME: OnceLock<Result<Runtime, String>> = OnceLock::new();

/// The background runtime could not be started.
#[derive(Debug, thiserror::Error)]
#[error("background runtime unavailable: {0}")]
pub(crate) struct RuntimeUnavailable(String);

fn runtime() -> Result<&'static Runtime, RuntimeUnavailable> {
    RUNTIME
        .get_or_init(|| {
            Builder::new_multi_thread()
                .worker_threads(THREADS)
                .thread_name("tollgate-bg")
                .enable_all()
                .build()
                .map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| RuntimeUnavailable(e.clone()))
}

/// Runs `future` on the background runtime; the handle cancels it.
pub(crate) fn spawn(
    future: impl Future<Output = ()> + Send + 'static,
) -> Result<AbortHandle, RuntimeUnavailable> {
    Ok(runtime()?.spawn(future).abort_handle())
}

/// Runs `future` to completion on the background runtime, blocking the calling thread. Only
/// for config time (Envoy's main thread building a filter config), never on a worker.
pub(crate) fn block_on<T>(future: impl Future<Output = T>) -> Result<T, RuntimeUnavailable> {
    Ok(runtime()?.block_on(future))
}

/// Makes the background runtime the current one for this thread until the guard drops, so a
/// future polled here (once, on a worker, without waiting) finds its timers and I/O driver.
pub(crate) fn enter() -> Result<tokio::runtime::EnterGuard<'static>, RuntimeUnavailable> {
    Ok(runtime()?.enter())
}
