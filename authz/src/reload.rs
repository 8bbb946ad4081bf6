//! Hot reload of the policy: when the service was started from a config file, a change to that
//! file (seen through its directory, so an editor's rename-over and a Kubernetes ConfigMap's
//! `..data` symlink swap count) or SIGHUP reads the config again with the same environment and
//! `--set` overrides, and a valid new `policy` replaces the one in force. Anything wrong keeps
//! the last good policy. Only `policy` is applied: other sections that changed are reported as
//! needing a restart.

use std::path::Path;
use std::sync::Arc;

use metrics::{counter, describe_counter};
use serde_yaml::{Mapping, Value};
use tollgate_common::Shutdown;
use tollgate_common::config::{ConfigErrors, Errors, FieldError, Sources, load};
use tollgate_common::watch::{Change, WatchError, Watcher};

use crate::check::Authorizer;
use crate::config::Config;
use crate::identity::Method;
use crate::policy::{Policy, check_methods_configured};

/// Successful reloads (including those that found nothing new).
pub const RELOADS: &str = "tollgate_authz_config_reloads_total";
/// Reloads refused because the file could not be read, parsed, validated or compiled.
pub const RELOAD_ERRORS: &str = "tollgate_authz_config_reload_errors_total";

/// The one section a reload applies.
const RELOADED_SECTION: &str = "policy";

/// What a successful reload did.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Reloaded {
    /// Top-level sections whose text differs from the one the service started with; they keep
    /// their startup values until a restart.
    pub needs_restart: Vec<String>,
}

/// Reloads the policy of one running [`Authorizer`] from the sources it was started with.
pub struct Reloader {
    authorizer: Arc<Authorizer>,
    sources: Sources,
    /// The identity methods the running service has set up; a new policy may only use these.
    methods: Vec<Method>,
    /// The file's top-level sections as they were at startup.
    started: Mapping,
    /// The file's bytes at the last reload, so file events that change nothing are skipped.
    last_seen: parking_lot::Mutex<Option<Vec<u8>>>,
    /// One reload at a time (a signal and a file event may arrive together).
    serial: parking_lot::Mutex<()>,
}

impl std::fmt::Debug for Reloader {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Reloader")
            .field("file", &self.sources.file)
            .finish_non_exhaustive()
    }
}

impl Reloader {
    /// A reloader for the service built from `running`, which was loaded from `sources`.
    pub fn new(authorizer: Arc<Authorizer>, sources: Sources, running: &Config) -> Self {
        let text = sources.file.as_deref().and_then(|p| std::fs::read(p).ok());
        let started = text
            .as_deref()
            .map(|t| sections(&String::from_utf8_lossy(t)))
            .unwrap_or_default();
        Self {
            authorizer,
            sources,
            methods: running.methods(),
            started,
            last_seen: parking_lot::Mutex::new(text),
            serial: parking_lot::Mutex::new(()),
        }
    }

    /// The config file, when there is one to reload.
    pub fn file(&self) -> Option<&Path> {
        self.sources.file.as_deref()
    }

    /// Reads, validates and compiles the config now; on success the new policy is in force for
    /// the next Check. Every error is logged and returned, and the policy in force is kept.
    pub fn reload(&self) -> Result<Reloaded, ConfigErrors> {
        let _one = self.serial.lock();
        match self.try_reload() {
            Ok((policy, reloaded)) => {
                self.authorizer.replace_policy(policy);
                counter!(RELOADS).increment(1);
                let file = self.file().map(|p| p.display().to_string());
                tracing::info!(file = file.unwrap_or_default(), "policy reloaded");
                if !reloaded.needs_restart.is_empty() {
                    tracing::warn!(
                        sections = %reloaded.needs_restart.join(", "),
                        "changed config sections need a restart; not applied"
                    );
                }
                Ok(reloaded)
            }
            Err(errors) => {
                counter!(RELOAD_ERRORS).increment(1);
                for e in &errors.0 {
                    tracing::error!(error = %e, "config reload refused");
                }
                tracing::error!(
                    errors = errors.0.len(),
                    "config reload failed; keeping the last good policy"
                );
                Err(errors)
            }
        }
    }

    fn try_reload(&self) -> Result<(Policy, Reloaded), ConfigErrors> {
        let file = self.file();
        let text = match file {
            Some(path) => {
                let bytes = std::fs::read(path).map_err(|e| {
                    ConfigErrors::one(Some(path), "", format!("cannot read config file: {e}"))
                })?;
                *self.last_seen.lock() = Some(bytes.clone());
                let text = String::from_utf8_lossy(&bytes).into_owned();
                // At startup an empty file means "all defaults"; while running it is far more
                // likely a write caught half way, and would drop every rule.
                if text.trim().is_empty() {
                    return Err(ConfigErrors::one(
                        Some(path),
                        "",
                        "config file is empty; refusing to replace the policy with the defaults",
                    ));
                }
                Some(text)
            }
            None => None,
        };
        let config: Config = load(&self.sources)?;

        // The new config may configure a method the running service has not set up (that
        // section needs a restart): its rules must not count on it.
        let mut errors = Errors::for_file(file, text.as_deref());
        check_methods_configured(&config.policy, &self.methods, RELOADED_SECTION, &mut errors);
        errors.finish(())?;
        let policy = Policy::compile(&config.policy, &self.methods).map_err(|e| {
            ConfigErrors(vec![FieldError {
                file: file.map(Path::to_path_buf),
                line: None,
                field: RELOADED_SECTION.to_string(),
                reason: e.to_string(),
            }])
        })?;
        let now = text.as_deref().map(sections).unwrap_or_default();
        Ok((
            policy,
            Reloaded {
                needs_restart: changed_sections(&self.started, &now),
            },
        ))
    }

    /// Whether the file's bytes differ from those of the last reload (or cannot be read, which
    /// a reload should report).
    fn file_changed(&self) -> bool {
        let Some(path) = self.file() else {
            return false;
        };
        match std::fs::read(path) {
            Ok(now) => self.last_seen.lock().as_deref() != Some(now.as_slice()),
            Err(_) => true,
        }
    }
}

/// The top-level sections of a config file's text (none when it does not parse: `load` reports
/// that).
fn sections(text: &str) -> Mapping {
    match serde_yaml::from_str::<Value>(text) {
        Ok(Value::Mapping(m)) => m,
        _ => Mapping::new(),
    }
}

/// Names of the sections, other than `policy`, that differ between `before` and `after`
/// (added and removed ones included), sorted.
fn changed_sections(before: &Mapping, after: &Mapping) -> Vec<String> {
    let mut names: Vec<String> = before
        .keys()
        .chain(after.keys())
        .filter(|k| before.get(*k) != after.get(*k))
        .map(|k| match k {
            Value::String(s) => s.clone(),
            other => serde_yaml::to_string(other)
                .unwrap_or_default()
                .trim()
                .to_string(),
        })
        .filter(|k| k != RELOADED_SECTION)
        .collect();
    names.sort();
    names.dedup();
    names
}

/// Registers the reload series, at zero, so a dashboard sees a rate before the first reload.
pub fn describe() {
    describe_counter!(RELOADS, "Config reloads that replaced the policy");
    describe_counter!(
        RELOAD_ERRORS,
        "Config reloads refused (the last good policy was kept)"
    );
    counter!(RELOADS).increment(0);
    counter!(RELOAD_ERRORS).increment(0);
}

/// Reloads on changes to the config file and on SIGHUP until `shutdown`. Watching and the
/// signal handler are set up before this returns.
pub fn spawn(
    reloader: Arc<Reloader>,
    shutdown: Shutdown,
) -> Result<tokio::task::JoinHandle<()>, WatchError> {
    let mut watcher = Watcher::new(reloader.file())?;
    Ok(tokio::spawn(async move {
        loop {
            let forced = tokio::select! {
                _ = shutdown.triggered() => return,
                change = watcher.changed() => change == Change::Signal,
            };
            if forced {
                tracing::info!("SIGHUP: reloading the policy");
            }
            let r = reloader.clone();
            // Other files in the directory (a key store, logs) change often; only a change to
            // the config itself is worth a reload and its log lines.
            let _ = tokio::task::spawn_blocking(move || {
                if forced || r.file_changed() {
                    let _ = r.reload();
                }
            })
            .await;
        }
    }))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;
    use std::time::{Duration, Instant};

    use crate::check::{Decision, OwnedRequest};

    use super::*;

    const OPEN: &str = "log: {format: text}\npolicy:\n  rules:\n    - name: public\n      path: {prefix: /}\n      public: true\n";
    const CLOSED: &str = "log: {format: text}\npolicy:\n  rules:\n    - name: public\n      path: {prefix: /public}\n      public: true\n";

    struct Fixture {
        authorizer: Arc<Authorizer>,
        reloader: Arc<Reloader>,
        path: PathBuf,
        _dir: tempfile::TempDir,
    }

    async fn fixture(yaml: &str, sets: &[&str]) -> Fixture {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authz.yaml");
        std::fs::write(&path, yaml).unwrap();
        let sources = Sources {
            file: Some(path.clone()),
            sets: sets.iter().map(|s| s.to_string()).collect(),
            ..Default::default()
        };
        let config: Config = load(&sources).unwrap();
        let authorizer = crate::build(&config).await.unwrap().authorizer;
        let reloader = Arc::new(Reloader::new(authorizer.clone(), sources, &config));
        Fixture {
            authorizer,
            reloader,
            path,
            _dir: dir,
        }
    }

    /// The HTTP status Envoy would answer for `GET path`.
    async fn status(a: &Authorizer, path: &str) -> i32 {
        match a.check(&OwnedRequest::new("GET", path)).await {
            Decision::Allow(_) => 200,
            Decision::Deny(d) => i32::from(d.status),
        }
    }

    async fn eventually(what: &str, a: &Authorizer, path: &str, want: i32) {
        let deadline = Instant::now() + Duration::from_secs(10);
        while status(a, path).await != want {
            assert!(Instant::now() < deadline, "timed out waiting for {what}");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    }

    #[tokio::test]
    async fn a_good_file_replaces_the_policy_and_a_bad_one_keeps_it() {
        let f = fixture(OPEN, &[]).await;
        assert_eq!(status(&f.authorizer, "/hello").await, 200);

        std::fs::write(&f.path, CLOSED).unwrap();
        assert_eq!(
            f.reloader.reload(),
            Ok(Reloaded {
                needs_restart: vec![]
            })
        );
        assert_eq!(status(&f.authorizer, "/hello").await, 403);
        assert_eq!(status(&f.authorizer, "/public/x").await, 200);

        // An unknown field, a bad value and an empty file: each refused, the policy kept.
        std::fs::write(
            &f.path,
            format!("{CLOSED}    - name: x\n      colour: red\n"),
        )
        .unwrap();
        let errors = f.reloader.reload().unwrap_err();
        assert_eq!(errors.0.len(), 1);
        assert_eq!(errors.0[0].file.as_deref(), Some(f.path.as_path()));
        assert!(
            errors.0[0].field.starts_with("policy.rules[1]"),
            "{}",
            errors.0[0]
        );
        assert!(errors.0[0].reason.contains("colour"), "{}", errors.0[0]);
        std::fs::write(&f.path, "policy:\n  no_match: sometimes\n").unwrap();
        let errors = f.reloader.reload().unwrap_err();
        assert_eq!(
            (errors.0[0].field.as_str(), errors.0[0].line),
            ("policy.no_match", Some(2))
        );
        std::fs::write(&f.path, "\n").unwrap();
        let errors = f.reloader.reload().unwrap_err();
        assert!(errors.0[0].reason.contains("empty"), "{}", errors.0[0]);
        std::fs::remove_file(&f.path).unwrap();
        let errors = f.reloader.reload().unwrap_err();
        assert!(
            errors.0[0].reason.contains("cannot read"),
            "{}",
            errors.0[0]
        );
        assert_eq!(status(&f.authorizer, "/hello").await, 403);
        assert_eq!(status(&f.authorizer, "/public/x").await, 200);

        std::fs::write(&f.path, OPEN).unwrap();
        assert!(f.reloader.reload().is_ok());
        assert_eq!(status(&f.authorizer, "/hello").await, 200);
    }

    #[tokio::test]
    async fn overrides_apply_again_and_other_sections_wait_for_a_restart() {
        // The override makes every rule-less path public, in both versions of the file.
        let f = fixture(OPEN, &["policy.no_match=public"]).await;
        let changed = CLOSED
            .replace("format: text", "format: json")
            .replace("log:", "headers: {subject: x-who}\nlog:");
        std::fs::write(&f.path, changed).unwrap();
        let reloaded = f.reloader.reload().unwrap();
        assert_eq!(reloaded.needs_restart, ["headers", "log"]);
        assert_eq!(
            status(&f.authorizer, "/hello").await,
            200,
            "the --set override still applies"
        );
    }

    #[tokio::test]
    async fn rules_may_only_use_methods_the_running_service_has() {
        let f = fixture(OPEN, &[]).await;
        let dir = f.path.parent().unwrap().display().to_string();
        std::fs::write(
            &f.path,
            format!(
                "{CLOSED}    - name: keys\n      path: {{prefix: /k}}\n      identity:\n        - api_key\napi_keys:\n  store: {{type: embedded, path: {dir}/keys.redb}}\n"
            ),
        )
        .unwrap();
        let errors = f.reloader.reload().unwrap_err();
        assert_eq!(errors.0.len(), 1, "{errors}");
        assert_eq!(errors.0[0].field, "policy.rules[1].identity[0]");
        assert_eq!(errors.0[0].line, Some(10));
        assert_eq!(status(&f.authorizer, "/hello").await, 200, "kept");
    }

    #[test]
    fn changed_sections_ignore_policy_and_see_added_and_removed_ones() {
        let a = sections("server: {grpc_addr: 127.0.0.1:1}\npolicy: {}\nlog: {level: info}\n");
        let b = sections("policy: {no_match: public}\nlog: {level: info}\njwt: {issuers: []}\n");
        assert_eq!(changed_sections(&a, &b), ["jwt", "server"]);
        assert!(changed_sections(&a, &a).is_empty());
    }

    /// A new file renamed over the config, then a ConfigMap-style swap of the `..data` link the
    /// config points through.
    #[tokio::test]
    async fn the_watcher_sees_a_rename_over_and_a_configmap_swap() {
        use std::os::unix::fs::symlink;
        let dir = tempfile::tempdir().unwrap();
        let root = dir.path();
        std::fs::create_dir(root.join("..v1")).unwrap();
        std::fs::write(root.join("..v1/authz.yaml"), OPEN).unwrap();
        symlink("..v1", root.join("..data")).unwrap();
        symlink("..data/authz.yaml", root.join("authz.yaml")).unwrap();
        let sources = Sources {
            file: Some(root.join("authz.yaml")),
            ..Default::default()
        };
        let config: Config = load(&sources).unwrap();
        let authorizer = crate::build(&config).await.unwrap().authorizer;
        let reloader = Arc::new(Reloader::new(authorizer.clone(), sources, &config));
        let shutdown = Shutdown::new();
        let task = spawn(reloader, shutdown.clone()).unwrap();

        std::fs::create_dir(root.join("..v2")).unwrap();
        std::fs::write(root.join("..v2/authz.yaml"), CLOSED).unwrap();
        symlink("..v2", root.join("..data_tmp")).unwrap();
        std::fs::rename(root.join("..data_tmp"), root.join("..data")).unwrap();
        eventually("the swapped config", &authorizer, "/hello", 403).await;

        std::fs::write(root.join("next.yaml"), OPEN).unwrap();
        std::fs::rename(root.join("next.yaml"), root.join("authz.yaml")).unwrap();
        eventually("the renamed-over config", &authorizer, "/hello", 200).await;

        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }

    #[tokio::test]
    async fn sighup_reloads() {
        let f = fixture(OPEN, &[]).await;
        // Changed before the watcher starts: only the signal can make it visible.
        std::fs::write(&f.path, CLOSED).unwrap();
        let shutdown = Shutdown::new();
        let task = spawn(f.reloader.clone(), shutdown.clone()).unwrap();
        let status_hup = std::process::Command::new("kill")
            .args(["-HUP", &std::process::id().to_string()])
            .status()
            .unwrap();
        assert!(status_hup.success());
        eventually("the SIGHUP reload", &f.authorizer, "/hello", 403).await;
        shutdown.trigger();
        tokio::time::timeout(Duration::from_secs(5), task)
            .await
            .unwrap()
            .unwrap();
    }
}
