//! Real Envoy (1.40.0 from the project virtualenv), started per test from a config file whose
//! ports are rewritten to free ones; the config is checked with `envoy --mode validate` first.

use std::collections::BTreeMap;
use std::ffi::OsStr;
use std::path::Path;
use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::paths::{envoy_bin, project_root};
use crate::process::{ChildProcess, free_port, wait_for};

/// The ports the example config (`deploy/envoy/envoy.yaml`) uses, which tests rewrite.
pub mod example_ports {
    pub const LISTENER: u16 = 10000;
    pub const ADMIN: u16 = 9901;
    pub const UPSTREAM: u16 = 8000;
    pub const AUTHZ: u16 = 9001;
    pub const RATELIMIT: u16 = 8081;
    /// `deploy/envoy/envoy-http-authz.yaml` only: tollgate-authz's HTTP ext_authz listener.
    pub const AUTHZ_HTTP: u16 = 9003;
    /// `deploy/envoy/envoy-http-authz.yaml` only: tollgate-authz's side listener (/readyz).
    pub const AUTHZ_SIDE: u16 = 9002;
}

/// The example config shipped in `deploy/envoy/envoy.yaml`.
pub fn example_config() -> String {
    example_file("envoy.yaml")
}

/// `deploy/envoy/<name>`.
pub fn example_file(name: &str) -> String {
    std::fs::read_to_string(project_root().join("deploy/envoy").join(name))
        .unwrap_or_else(|e| panic!("deploy/envoy/{name}: {e}"))
}

/// The HTTP ext_authz example, `deploy/envoy/envoy-http-authz.yaml`.
pub fn example_http_authz_config() -> String {
    std::fs::read_to_string(project_root().join("deploy/envoy/envoy-http-authz.yaml"))
        .expect("deploy/envoy/envoy-http-authz.yaml is readable")
}

/// Rewrites every `port_value: FROM` in `config` to `port_value: TO` for each pair.
pub fn rewrite_ports(config: &str, ports: &BTreeMap<u16, u16>) -> String {
    let mut out = String::with_capacity(config.len());
    for line in config.split_inclusive('\n') {
        let mut line = line.to_string();
        for (from, to) in ports {
            let needle = format!("port_value: {from}");
            if let Some(pos) = line.find(&needle) {
                let end = pos + needle.len();
                // Only whole numbers: `port_value: 80` must not match `port_value: 8000`.
                if !line[end..].starts_with(|c: char| c.is_ascii_digit()) {
                    line.replace_range(pos..end, &format!("port_value: {to}"));
                    break;
                }
            }
        }
        out.push_str(&line);
    }
    out
}

/// A running Envoy.
#[derive(Debug)]
pub struct Envoy {
    /// The port clients call (the gateway listener).
    pub port: u16,
    /// The admin port.
    pub admin_port: u16,
    process: ChildProcess,
    _dir: TempDir,
}

/// Addresses Envoy's clusters should point at, for [`Envoy::start_example`].
#[derive(Debug, Clone, Copy)]
pub struct Backends {
    pub upstream: u16,
    pub authz: u16,
    pub ratelimit: u16,
}

impl Envoy {
    /// Starts Envoy on `deploy/envoy/envoy.yaml` with its clusters pointing at `backends`.
    pub async fn start_example(backends: Backends) -> anyhow::Result<Envoy> {
        Self::start_with(&example_config(), backends).await
    }

    /// Starts Envoy on a config written in the example's port conventions.
    pub async fn start_with(config: &str, backends: Backends) -> anyhow::Result<Envoy> {
        Self::start_with_env(config, backends, &[]).await
    }

    /// As [`Envoy::start_with`], with extra environment variables for Envoy.
    pub async fn start_with_env(
        config: &str,
        backends: Backends,
        env: &[(&str, &OsStr)],
    ) -> anyhow::Result<Envoy> {
        Self::start_with_env_args(config, backends, env, &[]).await
    }

    /// As [`Envoy::start_with_env`], with extra command-line arguments (`--concurrency N`
    /// replaces the default of one worker).
    ///
    /// The listener and admin ports are picked free, then released for Envoy to bind, so
    /// another process (a test's outgoing connection, say) can take one in between: Envoy then
    /// exits with "Address already in use", and it is started again on other ports.
    pub async fn start_with_env_args(
        config: &str,
        backends: Backends,
        env: &[(&str, &OsStr)],
        extra_args: &[String],
    ) -> anyhow::Result<Envoy> {
        let mut attempts = 0;
        loop {
            let listener = free_port();
            let admin = free_port();
            let ports: BTreeMap<u16, u16> = [
                (example_ports::LISTENER, listener),
                (example_ports::ADMIN, admin),
                (example_ports::UPSTREAM, backends.upstream),
                (example_ports::AUTHZ, backends.authz),
                (example_ports::RATELIMIT, backends.ratelimit),
            ]
            .into();
            let rewritten =
                rewrite_ports(config, &ports).replace("address: 0.0.0.0", "address: 127.0.0.1");
            match Self::start_raw_full(&rewritten, listener, admin, env, extra_args).await {
                Err(e) if attempts < 3 && format!("{e:#}").contains("Address already in use") => {
                    attempts += 1;
                }
                r => return r,
            }
        }
    }

    /// Starts Envoy on a complete config whose listener and admin ports are already chosen.
    pub async fn start_raw(config: &str, port: u16, admin_port: u16) -> anyhow::Result<Envoy> {
        Self::start_raw_full(config, port, admin_port, &[], &[]).await
    }

    /// As [`Envoy::start_raw`], with extra environment variables for Envoy (and its validation
    /// run), e.g. `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`.
    pub async fn start_raw_with_env(
        config: &str,
        port: u16,
        admin_port: u16,
        env: &[(&str, &OsStr)],
    ) -> anyhow::Result<Envoy> {
        Self::start_raw_full(config, port, admin_port, env, &[]).await
    }

    /// [`Envoy::start_raw`] with extra command-line arguments (e.g. a Deployment's drain flags).
    pub async fn start_raw_with(
        config: &str,
        port: u16,
        admin_port: u16,
        extra_args: &[String],
    ) -> anyhow::Result<Envoy> {
        Self::start_raw_full(config, port, admin_port, &[], extra_args).await
    }

    /// [`Envoy::start_raw`] with extra environment variables and command-line arguments.
    pub async fn start_raw_full(
        config: &str,
        port: u16,
        admin_port: u16,
        env: &[(&str, &OsStr)],
        extra_args: &[String],
    ) -> anyhow::Result<Envoy> {
        let dir = tempfile::tempdir()?;
        let path = dir.path().join("envoy.yaml");
        std::fs::write(&path, config)?;
        validate_with_env(&path, env)?;
        let mut cmd = Command::new(envoy_bin());
        cmd.envs(env.iter().copied());
        cmd.arg("-c")
            .arg(&path)
            .args(if extra_args.iter().any(|a| a == "--concurrency") {
                &[][..]
            } else {
                &["--concurrency", "1"][..]
            })
            .args([
                "--disable-hot-restart",
                "--log-level",
                "warn",
                // Envoy writes its log file in batches (every 10 s by default); tests that read
                // the log poll for a line, which should not have to wait that long.
                "--file-flush-interval-msec",
                "100",
            ])
            .args(extra_args)
            .arg("--log-path")
            .arg(dir.path().join("envoy.log"))
            .current_dir(dir.path());
        let mut process = ChildProcess::spawn("envoy", cmd, &dir.path().join("envoy.out"))?;
        let client = reqwest::Client::new();
        let ready_url = format!("http://127.0.0.1:{admin_port}/ready");
        let started = tokio::time::timeout(
            Duration::from_secs(30),
            wait_for("envoy /ready", Duration::from_secs(30), || {
                let client = client.clone();
                let url = ready_url.clone();
                let exited = process.exited();
                async move {
                    if let Some(status) = exited {
                        return Some(Err(status));
                    }
                    match client.get(&url).send().await {
                        Ok(r) if r.status().is_success() => Some(Ok(())),
                        _ => None,
                    }
                }
            }),
        )
        .await
        .context("envoy did not become ready")?;
        if let Err(status) = started {
            let log = std::fs::read_to_string(dir.path().join("envoy.log")).unwrap_or_default();
            bail!("envoy exited with {status}:\n{}\n{log}", process.log());
        }
        Ok(Envoy {
            port,
            admin_port,
            process,
            _dir: dir,
        })
    }

    /// `http://127.0.0.1:<port>` + `path`.
    pub fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{}", self.port, path)
    }

    /// Reads one counter or gauge from the admin `/stats` (0 when absent).
    pub async fn stat(&self, name: &str) -> u64 {
        let url = format!(
            "http://127.0.0.1:{}/stats?filter=^{}$",
            self.admin_port,
            regex_escape(name)
        );
        let text = reqwest::get(url).await.ok().map(|r| r.text());
        let text = match text {
            Some(t) => t.await.unwrap_or_default(),
            None => return 0,
        };
        text.lines()
            .find_map(|l| {
                l.strip_prefix(&format!("{name}: "))
                    .and_then(|v| v.trim().parse().ok())
            })
            .unwrap_or(0)
    }

    /// Envoy's own log so far.
    pub fn log(&self) -> String {
        let file = std::fs::read_to_string(self._dir.path().join("envoy.log")).unwrap_or_default();
        format!("{}{}", self.process.log(), file)
    }
}

impl Drop for Envoy {
    fn drop(&mut self) {
        if std::thread::panicking() {
            let file =
                std::fs::read_to_string(self._dir.path().join("envoy.log")).unwrap_or_default();
            eprintln!("----- envoy log -----\n{file}");
        }
    }
}

fn regex_escape(s: &str) -> String {
    s.chars()
        .flat_map(|c| {
            if ".+*?()[]{}|^$\\".contains(c) {
                vec!['\\', c]
            } else {
                vec![c]
            }
        })
        .collect()
}

/// Runs `envoy --mode validate` on a config file; the error carries Envoy's explanation.
pub fn validate(path: &Path) -> anyhow::Result<()> {
    validate_with_env(path, &[])
}

/// As [`validate`], with extra environment variables for Envoy.
pub fn validate_with_env(path: &Path, env: &[(&str, &OsStr)]) -> anyhow::Result<()> {
    let out = Command::new(envoy_bin())
        .envs(env.iter().copied())
        .args([
            "--mode",
            "validate",
            "--disable-hot-restart",
            "--log-level",
            "error",
            "-c",
        ])
        .arg(path)
        .output()
        .with_context(|| format!("running {} (run scripts/setup.sh)", envoy_bin().display()))?;
    if !out.status.success() {
        bail!(
            "envoy rejected {}:\n{}{}",
            path.display(),
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rewrites_whole_port_numbers_only() {
        let cfg = "a: { port_value: 80 }\nb: { port_value: 8000 }\n";
        let out = rewrite_ports(cfg, &[(80, 1), (8000, 2)].into());
        assert_eq!(out, "a: { port_value: 1 }\nb: { port_value: 2 }\n");
    }
}
