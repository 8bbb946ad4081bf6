//! The one file watcher every reload uses (the limits, the authz policy, the listeners' TLS
//! certificates), with SIGHUP: one settle time, one way to watch, one signal listener.
//!
//! Files are watched through their directory, never by their own inode: an editor's
//! rename-over and a Kubernetes ConfigMap or Secret update (new files in a fresh `..<time>`
//! directory, then the `..data` symlink replaced) both replace what a watch on the file would
//! follow, while both show as events in the directory. A directory is watched itself.
//!
//! A burst of events (a write in several chunks, write + rename, the renames of a ConfigMap
//! swap) is one change: [`Watcher::changed`] returns once no event came for [`SETTLE`].
//!
//! SIGHUP is received by one listener for the whole process, on its own thread (it outlives
//! any one Tokio runtime), and fanned out to every [`Watcher`]: each one reports it.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;
use std::time::Duration;

use notify::{RecursiveMode, Watcher as _};
use tokio::sync::{mpsc, watch};

/// How long the file events of one change may keep coming.
pub const SETTLE: Duration = Duration::from_millis(200);

/// Why watching could not start.
#[derive(Debug, thiserror::Error)]
#[error("cannot watch {}: {reason}", path.display())]
pub struct WatchError {
    path: PathBuf,
    reason: String,
}

/// What a [`Watcher`] saw.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Change {
    /// Something changed in a watched directory (and then stayed quiet for [`SETTLE`]).
    Files,
    /// The process received SIGHUP.
    Signal,
}

/// Watches the directories of some paths, and SIGHUP. Dropping it stops the watch.
pub struct Watcher {
    events: mpsc::Receiver<()>,
    hangups: Option<watch::Receiver<u64>>,
    // Keeps the directory watches alive.
    _inner: Option<notify::RecommendedWatcher>,
}

impl std::fmt::Debug for Watcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Watcher")
            .field("files", &self._inner.is_some())
            .field("signal", &self.hangups.is_some())
            .finish()
    }
}

impl Watcher {
    /// Watches the directory of every path (a directory path itself) and listens for SIGHUP;
    /// both are set up before this returns. No path: SIGHUP only. A SIGHUP listener that
    /// cannot be installed is logged and leaves file changes; a directory that cannot be
    /// watched is an error.
    pub fn new<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Result<Self, WatchError> {
        // One slot: an event already waiting says all a later one would.
        let (tx, events) = mpsc::channel(1);
        let dirs = directories(paths);
        let inner = if dirs.is_empty() {
            None
        } else {
            let error = |path: &Path, e: notify::Error| WatchError {
                path: path.to_path_buf(),
                reason: e.to_string(),
            };
            let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                // Reading a file (our own reload among others) is no change.
                if ev.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.try_send(());
                }
            })
            .map_err(|e| error(&dirs[0], e))?;
            for d in &dirs {
                w.watch(d, RecursiveMode::NonRecursive)
                    .map_err(|e| error(d, e))?;
            }
            Some(w)
        };
        let hangups = match hangups() {
            Ok(rx) => Some(rx),
            Err(e) => {
                tracing::warn!(error = %e, "cannot listen for SIGHUP; reloads follow file changes only");
                None
            }
        };
        Ok(Self {
            events,
            hangups,
            _inner: inner,
        })
    }

    /// Waits for the next change: a burst of file events once it has settled, or a SIGHUP.
    pub async fn changed(&mut self) -> Change {
        let Self {
            events, hangups, ..
        } = self;
        let signal = async {
            // The listener never stops; without one, only files can change.
            let Some(rx) = hangups else {
                return std::future::pending().await;
            };
            if rx.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        };
        tokio::select! {
            Some(()) = events.recv() => {
                while let Ok(Some(())) = tokio::time::timeout(SETTLE, events.recv()).await {}
                Change::Files
            }
            () = signal => Change::Signal,
        }
    }
}

/// The directories to watch for `paths`, each once.
fn directories<P: AsRef<Path>>(paths: impl IntoIterator<Item = P>) -> Vec<PathBuf> {
    let mut dirs: Vec<PathBuf> = paths
        .into_iter()
        .map(|p| {
            let p = p.as_ref();
            if p.is_dir() {
                return p.to_path_buf();
            }
            match p.parent() {
                Some(d) if !d.as_os_str().is_empty() => d.to_path_buf(),
                _ => PathBuf::from("."),
            }
        })
        .collect();
    dirs.sort();
    dirs.dedup();
    dirs
}

/// A subscription to the process's SIGHUP count; the listener starts on first use and is
/// installed when this returns (so a SIGHUP sent afterwards never takes the default action of
/// ending the process).
fn hangups() -> Result<watch::Receiver<u64>, WatchError> {
    static LISTENER: OnceLock<Result<watch::Sender<u64>, String>> = OnceLock::new();
    LISTENER
        .get_or_init(listen_for_hangups)
        .as_ref()
        .map(watch::Sender::subscribe)
        .map_err(|reason| WatchError {
            path: PathBuf::from("SIGHUP"),
            reason: reason.clone(),
        })
}

fn listen_for_hangups() -> Result<watch::Sender<u64>, String> {
    let (tx, _) = watch::channel(0u64);
    let count = tx.clone();
    let (ready, installed) = std::sync::mpsc::channel::<Result<(), String>>();
    std::thread::Builder::new()
        .name("sighup".into())
        .spawn(move || {
            let runtime = match tokio::runtime::Builder::new_current_thread()
                .enable_all()
                .build()
            {
                Ok(r) => r,
                Err(e) => return drop(ready.send(Err(e.to_string()))),
            };
            runtime.block_on(async move {
                use tokio::signal::unix::{SignalKind, signal};
                let mut hup = match signal(SignalKind::hangup()) {
                    Ok(s) => s,
                    Err(e) => return drop(ready.send(Err(e.to_string()))),
                };
                let _ = ready.send(Ok(()));
                while hup.recv().await.is_some() {
                    count.send_modify(|n| *n += 1);
                }
            });
        })
        .map_err(|e| e.to_string())?;
    installed.recv().map_err(|e| e.to_string())??;
    Ok(tx)
}

#[cfg(test)]
mod tests;
