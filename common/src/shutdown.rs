//! A cloneable shutdown signal: triggered once (by SIGTERM/SIGINT or a test), observed by every
//! listener so the service can report not-ready, drain, then stop.

use std::sync::Arc;

use tokio::sync::watch;

/// The shutdown signal. Cheap to clone; every clone sees the same trigger.
#[derive(Debug, Clone)]
pub struct Shutdown {
    tx: Arc<watch::Sender<bool>>,
    rx: watch::Receiver<bool>,
}

impl Default for Shutdown {
    fn default() -> Self {
        Self::new()
    }
}

impl Shutdown {
    pub fn new() -> Self {
        let (tx, rx) = watch::channel(false);
        Self {
            tx: Arc::new(tx),
            rx,
        }
    }

    /// Starts the shutdown; idempotent.
    pub fn trigger(&self) {
        self.tx.send_replace(true);
    }

    pub fn is_triggered(&self) -> bool {
        *self.rx.borrow()
    }

    /// Resolves once the shutdown has been triggered.
    pub async fn triggered(&self) {
        let mut rx = self.rx.clone();
        // An error means every sender is gone, which cannot happen while `self` holds one.
        let _ = rx.wait_for(|t| *t).await;
    }
}

/// A shutdown triggered by SIGTERM or SIGINT (Ctrl-C).
pub fn shutdown_on_signals() -> Shutdown {
    let shutdown = Shutdown::new();
    let s = shutdown.clone();
    tokio::spawn(async move {
        use tokio::signal::unix::{SignalKind, signal};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::error!("cannot install signal handlers; SIGTERM will kill the process");
            return;
        };
        let which = tokio::select! {
            _ = term.recv() => "SIGTERM",
            _ = int.recv() => "SIGINT",
        };
        tracing::info!(signal = which, "shutdown requested");
        s.trigger();
    });
    shutdown
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn every_clone_sees_the_trigger() {
        let a = Shutdown::new();
        let b = a.clone();
        assert!(!b.is_triggered());
        let waiter = tokio::spawn(async move { b.triggered().await });
        a.trigger();
        waiter.await.unwrap();
        assert!(a.is_triggered());
    }
}
