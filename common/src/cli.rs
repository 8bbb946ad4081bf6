//! Command-line flags both binaries share: where the config comes from and its overrides.

use std::net::SocketAddr;
use std::path::PathBuf;

use crate::config::{Sources, process_env};

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
        }
    }
}
