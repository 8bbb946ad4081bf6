//! Command-line flags both binaries share: where the config comes from and its overrides, and
//! what `check-config` adds.

use std::fmt::Display;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;

use serde::de::DeserializeOwned;

use crate::config::{Defaults, IgnoredVar, Loaded, Sources, Validate, load_noting, process_env};

/// `--config`, `--set` and the listener address shortcuts.
#[derive(Debug, Clone, clap::Args)]
pub struct ConfigArgs {
    /// The YAML config file (defaults apply when omitted).
    #[arg(short, long, env = "TOLLGATE_CONFIG")]
    pub config: Option<PathBuf>,
    /// Override a config field: `--set server.drain_timeout=5s` (repeatable; applied last).
    #[arg(long = "set", value_name = "PATH=VALUE")]
    pub set: Vec<String>,
    /// Shortcut for `--set server.grpc_addr=ADDR`.
    #[arg(long)]
    pub grpc_addr: Option<SocketAddr>,
    /// Shortcut for `--set server.http_addr=ADDR`.
    #[arg(long)]
    pub http_addr: Option<SocketAddr>,
}

impl ConfigArgs {
    /// The sources to load: file, process environment (`TOLLGATE_*`), then flags.
    pub fn sources(&self) -> Sources {
        let mut sets = self.set.clone();
        if let Some(a) = self.grpc_addr {
            sets.push(format!("server.grpc_addr={a}"));
        }
        if let Some(a) = self.http_addr {
            sets.push(format!("server.http_addr={a}"));
        }
        Sources {
            file: self.config.clone(),
            env: process_env(),
            sets,
            skip_file_checks: false,
        }
    }
}

/// `check-config`'s flags: the config's, and whether to check the files it refers to.
#[derive(Debug, Clone, clap::Args)]
pub struct CheckArgs {
    #[command(flatten)]
    pub config: ConfigArgs,
    /// Do not check that files the config refers to exist and are readable (credentials,
    /// TLS material, CA bundles, limits): for checking a config, such as one rendered by
    /// Helm, away from the machine or pod where those files are mounted.
    #[arg(long)]
    pub no_file_checks: bool,
}

impl CheckArgs {
    /// The sources to check.
    pub fn sources(&self) -> Sources {
        Sources {
            skip_file_checks: self.no_file_checks,
            ..self.config.sources()
        }
    }
}

/// `check-config`: loads the config as `serve` would (every error at once), then runs `more`,
/// the service's checks of what the config refers to (given whether files are checked).
/// Prints each ignored variable as a warning, then the errors or `config ok`; exits 2 on any
/// error.
pub fn check_config<T, E>(
    args: &CheckArgs,
    more: impl FnOnce(&T, bool) -> Result<(), E>,
) -> ExitCode
where
    T: DeserializeOwned + Validate + Defaults,
    E: Display,
{
    let sources = args.sources();
    let loaded = load_noting::<T>(&sources);
    if let Ok(l) = &loaded {
        for v in &l.ignored {
            eprintln!("warning: ignoring environment variable {v}");
        }
    }
    let outcome = loaded
        .map_err(|e| e.to_string())
        .and_then(|l| more(&l.config, !sources.skip_file_checks).map_err(|e| e.to_string()));
    match outcome {
        Ok(()) if sources.skip_file_checks => {
            println!("config ok (files it refers to not checked)");
            ExitCode::SUCCESS
        }
        Ok(()) => {
            println!("config ok");
            ExitCode::SUCCESS
        }
        Err(e) => {
            eprintln!("{e}");
            ExitCode::from(2)
        }
    }
}

/// `serve`'s loading: the config, or its errors printed and exit code 2.
pub fn load_for_serve<T>(sources: &Sources) -> Result<Loaded<T>, ExitCode>
where
    T: DeserializeOwned + Validate + Defaults,
{
    load_noting::<T>(sources).map_err(|e| {
        eprintln!("{e}");
        ExitCode::from(2)
    })
}

/// Logs one warning per ignored variable; call once logging is set up.
pub fn warn_ignored(ignored: &[IgnoredVar]) {
    for v in ignored {
        tracing::warn!(variable = %v.name, reason = %v.reason, "ignoring an environment variable");
    }
}
