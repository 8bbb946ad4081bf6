//! Hot reload of the limits: on any change in the limits directory (including a Kubernetes
//! ConfigMap's `..data` symlink swap) and on SIGHUP, every file is read again; good files replace
//! the engine's limits in one swap, bad files keep their last good version and are reported.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use arc_swap::ArcSwap;
use notify::{RecursiveMode, Watcher};
use serde::Serialize;
use tollgate_common::Shutdown;

use crate::engine::Engine;
use crate::limits::{FileError, FileStatus, LimitSummary, LimitsSource, Loader};
use crate::metrics;

/// Events closer together than this are one change (an editor's write + rename, a ConfigMap
/// swap's several renames).
const SETTLE: Duration = Duration::from_millis(100);

/// What `/config` shows: the limits in force and the state of every file.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    /// Incremented by every load.
    pub generation: u64,
    pub loaded_at: String,
    pub domains: Vec<DomainView>,
    pub files: Vec<FileStatus>,
    /// Problems in the files on disk now (the config in force skips or predates them).
    pub errors: Vec<FileError>,
}

#[derive(Debug, Clone, Serialize)]
pub struct DomainView {
    pub domain: String,
    pub file: PathBuf,
    pub limits: Vec<LimitSummary>,
}

/// Reloads the limits into an engine and keeps the view of the last load.
pub struct Reloader {
    loader: parking_lot::Mutex<Option<Loader>>,
    engine: Arc<Engine>,
    view: ArcSwap<ConfigView>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("generation", &self.view.load().generation)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader for `source` (none: no limits, nothing to reload). Does not load.
    pub fn new(
        source: Option<LimitsSource>,
        engine: Arc<Engine>,
        loader_algorithm: crate::algorithm::Algorithm,
    ) -> Self {
        let view = ConfigView {
            source: source.as_ref().map(|s| s.path.clone()),
            generation: 0,
            loaded_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            domains: Vec::new(),
            files: Vec::new(),
            errors: Vec::new(),
        };
        Self {
            loader: parking_lot::Mutex::new(source.map(|s| Loader::new(s, loader_algorithm))),
            engine,
            view: ArcSwap::from_pointee(view),
        }
    }

    /// Loads every file now and installs the result; returns the errors found (empty: all good).
    pub fn reload(&self) -> Vec<FileError> {
        let mut guard = self.loader.lock();
        let Some(loader) = guard.as_mut() else {
            return Vec::new();
        };
        let report = loader.load();
        let mut domains: Vec<DomainView> = report
            .limits
            .domains()
            .map(|d| DomainView {
                domain: d.name.to_string(),
                file: d.file.clone(),
                limits: d.summary().to_vec(),
            })
            .collect();
        domains.sort_by(|a, b| a.domain.cmp(&b.domain));
        metrics::config_loaded(report.errors.len(), domains.len());
        for e in &report.errors {
            tracing::error!(file = %e.file.display(), line = e.line, field = %e.field, reason = %e.reason, "bad limits file; keeping its last good version");
        }
        tracing::info!(
            domains = domains.len(),
            errors = report.errors.len(),
            "limits loaded"
        );
        self.engine.set_limits(report.limits);
        let previous = self.view.load();
        self.view.store(Arc::new(ConfigView {
            source: previous.source.clone(),
            generation: previous.generation + 1,
            loaded_at: humantime::format_rfc3339_seconds(SystemTime::now()).to_string(),
            domains,
            files: report.files,
            errors: report.errors.clone(),
        }));
        report.errors
    }

    /// The view of the last load.
    pub fn view(&self) -> Arc<ConfigView> {
        self.view.load_full()
    }

    fn watched_path(&self) -> Option<PathBuf> {
        self.loader.lock().as_ref().map(|l| l.source().path.clone())
    }
}

/// Reloads on file changes and SIGHUP until `shutdown`. Returns once watching has started.
pub fn spawn(
    reloader: Arc<Reloader>,
    shutdown: Shutdown,
) -> Result<tokio::task::JoinHandle<()>, notify::Error> {
    let (tx, mut rx) = tokio::sync::mpsc::unbounded_channel::<()>();
    let watcher = match reloader.watched_path() {
        Some(path) => {
            let tx = tx.clone();
            let mut w = notify::recommended_watcher(move |ev: notify::Result<notify::Event>| {
                if ev.is_ok_and(|e| !e.kind.is_access()) {
                    let _ = tx.send(());
                }
            })?;
            w.watch(&watch_target(&path), RecursiveMode::NonRecursive)?;
            Some(w)
        }
        None => None,
    };
    let mut hup = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::hangup()).ok();
    Ok(tokio::spawn(async move {
        // Dropping the watcher stops it; keep it alive for the task's life.
        let _watcher = watcher;
        loop {
            let hup_recv = async {
                match hup.as_mut() {
                    Some(h) => h.recv().await,
                    None => std::future::pending().await,
                }
            };
            tokio::select! {
                _ = shutdown.triggered() => return,
                Some(()) = rx.recv() => {
                    // Wait for the burst of events to settle, then load once.
                    while let Ok(Some(())) = tokio::time::timeout(SETTLE, rx.recv()).await {}
                }
                _ = hup_recv => tracing::info!("SIGHUP: reloading limits"),
            }
            let r = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || r.reload()).await;
        }
    }))
}

/// A directory is watched itself (ConfigMap swaps and file edits show as events in it); a single
/// file through its directory, so that an editor's replace-by-rename is seen too.
fn watch_target(path: &Path) -> PathBuf {
    if path.is_dir() {
        return path.to_path_buf();
    }
    match path.parent() {
        Some(p) if !p.as_os_str().is_empty() => p.to_path_buf(),
        _ => PathBuf::from("."),
    }
}
