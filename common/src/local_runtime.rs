//! Threads that run one single-threaded Tokio runtime for their whole life (the gRPC server's
//! connection threads). A resource that serves many calls can keep one instance per such
//! thread and drive it by a task on that thread's runtime, so that a call and what answers it
//! never cross threads (a cross-thread wake-up is a syscall and a context switch each way,
//! which costs more than the call).

use std::cell::Cell;

thread_local! {
    static DEDICATED: Cell<bool> = const { Cell::new(false) };
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
}
