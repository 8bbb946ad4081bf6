//! Hot reload of the limits: on any change in the limits directory (including a Kubernetes
//! ConfigMap's `..data` symlink swap) and on SIGHUP, seen through `tollgate_common::watch`,
//! every file is read again; good files replace the engine's limits in one swap, bad files keep
//! their last good version and are reported. The `/config` view is plain data ([`ConfigView`])
//! for the host to serve.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::SystemTime;

use arc_swap::ArcSwap;
use serde::Serialize;
use tollgate_common::Shutdown;
use tollgate_common::watch::{Change, WatchError, Watcher};

use crate::engine::Engine;
use crate::limits::{FileError, FileStatus, LimitSummary, LimitsSource, Loader};
use crate::metrics;

/// What `/config` shows: the limits in force and the state of every file.
#[derive(Debug, Clone, Serialize)]
pub struct ConfigView {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub source: Option<PathBuf>,
    /// Incremented by every load.
    pub generation: u64,
    pub loaded_at: String,
    /// The engine settings in force (from the service config, not reloaded).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub settings: Option<Settings>,
    pub domains: Vec<DomainView>,
    pub files: Vec<FileStatus>,
    /// Problems in the files on disk now (the config in force skips or predates them).
    pub errors: Vec<FileError>,
}

/// The service settings `/config` shows next to the limits.
#[derive(Debug, Clone, Serialize)]
pub struct Settings {
    pub failure_mode: crate::engine::FailureMode,
    pub default_algorithm: crate::algorithm::Algorithm,
    pub shadow_mode: bool,
    /// `memory` or `redis`.
    pub store: &'static str,
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
    metrics: metrics::LoadMetrics,
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
            settings: None,
            domains: Vec::new(),
            files: Vec::new(),
            errors: Vec::new(),
        };
        Self {
            loader: parking_lot::Mutex::new(source.map(|s| Loader::new(s, loader_algorithm))),
            engine,
            view: ArcSwap::from_pointee(view),
            metrics: metrics::LoadMetrics::new(),
        }
    }

    /// Shows `settings` on `/config`.
    pub fn with_settings(self, settings: Settings) -> Self {
        let mut view = (*self.view.load_full()).clone();
        view.settings = Some(settings);
        self.view.store(Arc::new(view));
        self
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
        self.metrics.loaded(report.errors.len(), domains.len());
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
            settings: previous.settings.clone(),
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
) -> Result<tokio::task::JoinHandle<()>, WatchError> {
    let mut watcher = Watcher::new(reloader.watched_path())?;
    Ok(tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = shutdown.triggered() => return,
                change = watcher.changed() => if change == Change::Signal {
                    tracing::info!("SIGHUP: reloading limits");
                },
            }
            let r = reloader.clone();
            let _ = tokio::task::spawn_blocking(move || r.reload()).await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;
    use crate::algorithm::Algorithm;
    use crate::engine::EngineOptions;
    use crate::limits::Limits;
    use crate::store::{MemoryOptions, MemoryStore};
    use tollgate_common::clock::SystemClock;

    fn engine() -> Arc<Engine> {
        Arc::new(Engine::new(
            Limits::empty(),
            Arc::new(MemoryStore::new(&MemoryOptions::default())),
            Arc::new(SystemClock),
            EngineOptions::default(),
        ))
    }

    fn domain(name: &str, rpu: u32) -> String {
        format!(
            "domain: {name}\ndescriptors:\n  - key: k\n    rate_limit: {{unit: minute, requests_per_unit: {rpu}}}\n"
        )
    }

    /// The requests_per_unit of `domain`'s limit on `k`, as the engine sees it now.
    fn limit_of(engine: &Engine, domain: &str) -> Option<u32> {
        let limits = engine.limits();
        let d = limits.domain(domain)?;
        let found = d.find(
            &crate::descriptor::Descriptor::new([("k", "v")]),
            &mut crate::key::KeyBuilder::new(domain),
        );
        found.first().map(|l| l.requests_per_unit)
    }

    async fn eventually(what: &str, mut f: impl FnMut() -> bool) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while !f() {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[test]
    fn bad_file_keeps_its_last_good_version_and_is_reported() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.yaml"), domain("a", 1)).unwrap();
        std::fs::write(dir.path().join("b.yml"), domain("b", 2)).unwrap();
        std::fs::write(dir.path().join("notes.txt"), "not a limits file").unwrap();
        let e = engine();
        let r = Reloader::new(
            Some(LimitsSource {
                path: dir.path().into(),
            }),
            e.clone(),
            Algorithm::SlidingWindow,
        );
        assert!(r.reload().is_empty());
        assert_eq!((limit_of(&e, "a"), limit_of(&e, "b")), (Some(1), Some(2)));

        std::fs::write(
            dir.path().join("a.yaml"),
            "domain: a\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: fortnight\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("b.yml"), domain("b", 3)).unwrap();
        let errors = r.reload();
        assert_eq!(errors.len(), 1);
        assert_eq!(errors[0].file, dir.path().join("a.yaml"));
        assert_eq!(errors[0].line, Some(5));
        assert_eq!(errors[0].field, "descriptors[0].rate_limit.unit");
        assert_eq!(
            (limit_of(&e, "a"), limit_of(&e, "b")),
            (Some(1), Some(3)),
            "a kept, b updated"
        );
        let view = r.view();
        assert_eq!(view.generation, 2);
        assert_eq!(view.errors, errors);
        let a = view
            .files
            .iter()
            .find(|f| f.file.ends_with("a.yaml"))
            .unwrap();
        assert!(a.stale && !a.ok);
        assert_eq!(
            view.domains
                .iter()
                .map(|d| d.domain.as_str())
                .collect::<Vec<_>>(),
            ["a", "b"]
        );
        let json = serde_json::to_value(&*view).unwrap();
        assert_eq!(json["errors"][0]["line"], 5);

        std::fs::write(dir.path().join("a.yaml"), domain("a", 4)).unwrap();
        assert!(r.reload().is_empty());
        assert_eq!(limit_of(&e, "a"), Some(4));
        std::fs::remove_file(dir.path().join("a.yaml")).unwrap();
        assert!(r.reload().is_empty());
        assert_eq!(limit_of(&e, "a"), None, "a removed file removes its domain");
    }

    #[test]
    fn a_domain_defined_twice_is_kept_from_the_first_file() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("1.yaml"), domain("x", 1)).unwrap();
        std::fs::write(dir.path().join("2.yaml"), domain("x", 2)).unwrap();
        let e = engine();
        let r = Reloader::new(
            Some(LimitsSource {
                path: dir.path().into(),
            }),
            e.clone(),
            Algorithm::SlidingWindow,
        );
        let errors = r.reload();
        assert_eq!(errors.len(), 1);
        assert!(
            errors[0].reason.starts_with("duplicate domain 'x'"),
            "{}",
            errors[0].reason
        );
        assert_eq!(
            (errors[0].file.file_name().unwrap().to_str(), errors[0].line),
            (Some("2.yaml"), Some(1))
        );
        assert_eq!(limit_of(&e, "x"), Some(1));
    }

    #[test]
    fn a_single_file_and_a_missing_path() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("limits.yaml");
        std::fs::write(&f, domain("one", 5)).unwrap();
        let e = engine();
        let r = Reloader::new(
            Some(LimitsSource { path: f.clone() }),
            e.clone(),
            Algorithm::SlidingWindow,
        );
        assert!(r.reload().is_empty());
        assert_eq!(limit_of(&e, "one"), Some(5));
        std::fs::remove_file(&f).unwrap();
        let errors = r.reload();
        assert!(
            errors[0].reason.starts_with("cannot read limits"),
            "{}",
            errors[0].reason
        );
        assert_eq!(
            limit_of(&e, "one"),
            Some(5),
            "a vanished path keeps the limits in force"
        );
    }

    /// What the kubelet does to a ConfigMap volume: new files in a fresh hidden directory, then
    /// the `..data` symlink is atomically replaced; the visible files are links through it.
    #[tokio::test]
    async fn configmap_symlink_swap_and_edits_are_picked_up_by_the_watcher() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("..v1")).unwrap();
        std::fs::write(root.join("..v1/web.yaml"), domain("web", 1)).unwrap();
        symlink("..v1", root.join("..data")).unwrap();
        symlink("..data/web.yaml", root.join("web.yaml")).unwrap();

        let e = engine();
        let r = Arc::new(Reloader::new(
            Some(LimitsSource { path: root.into() }),
            e.clone(),
            Algorithm::SlidingWindow,
        ));
        assert!(r.reload().is_empty());
        assert_eq!(limit_of(&e, "web"), Some(1));
        let shutdown = Shutdown::new();
        let task = spawn(r.clone(), shutdown.clone()).unwrap();

        std::fs::create_dir(root.join("..v2")).unwrap();
        std::fs::write(root.join("..v2/web.yaml"), domain("web", 2)).unwrap();
        symlink("..v2", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        std::fs::remove_dir_all(root.join("..v1")).unwrap();
        eventually("the swapped config", || limit_of(&e, "web") == Some(2)).await;

        // A bad swap keeps the last good domain and shows the error.
        std::fs::create_dir(root.join("..v3")).unwrap();
        std::fs::write(root.join("..v3/web.yaml"), "domain: web\ndescriptors: [").unwrap();
        symlink("..v3", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        eventually("the error on /config", || !r.view().errors.is_empty()).await;
        assert_eq!(limit_of(&e, "web"), Some(2));

        // A plain new file in the directory.
        std::fs::write(root.join("api.yaml"), domain("api", 9)).unwrap();
        eventually("the new file", || limit_of(&e, "api") == Some(9)).await;

        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn sighup_reloads() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("h.yaml"), domain("h", 1)).unwrap();
        let e = engine();
        let r = Arc::new(Reloader::new(
            Some(LimitsSource {
                path: dir.path().into(),
            }),
            e.clone(),
            Algorithm::SlidingWindow,
        ));
        assert!(r.reload().is_empty());
        // Changed before the watcher starts: only the signal can make it visible.
        std::fs::write(dir.path().join("h.yaml"), domain("h", 2)).unwrap();
        let shutdown = Shutdown::new();
        let task = spawn(r.clone(), shutdown.clone()).unwrap();
        let status = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
        eventually("the SIGHUP reload", || limit_of(&e, "h") == Some(2)).await;
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
