//! The Envoy dynamic module (`libtollgate_envoy.so`) as Envoy loads it: found by name on
//! `ENVOY_DYNAMIC_MODULES_SEARCH_PATH`, which tests point at the cargo target folder the module
//! was built into (`cargo build --workspace`, as `scripts/test.sh` does).

use std::ffi::OsStr;
use std::path::{Path, PathBuf};

use crate::envoy::{Backends, Envoy, validate_with_env};

/// The module's name in `dynamic_module_config.name`.
pub const MODULE_NAME: &str = "tollgate_envoy";

/// The folder cargo built the module into (the test binary's `target/<profile>`).
pub fn module_dir() -> PathBuf {
    let exe = std::env::current_exe().expect("current exe");
    let dir = exe
        .parent()
        .and_then(Path::parent)
        .expect("target/<profile>")
        .to_path_buf();
    let lib = dir.join(format!("lib{MODULE_NAME}.so"));
    assert!(
        lib.exists(),
        "{} is not built: run `cargo build --workspace` (scripts/test.sh does)",
        lib.display()
    );
    dir
}

/// The built module file.
pub fn module_path() -> PathBuf {
    module_dir().join(format!("lib{MODULE_NAME}.so"))
}

/// Starts Envoy on `config` (example port conventions, see [`Envoy::start_with`]) with the
/// module on its search path.
pub async fn start_envoy(config: &str, backends: Backends) -> anyhow::Result<Envoy> {
    start_envoy_with(config, backends, &[]).await
}

/// [`start_envoy`] with extra command-line arguments (e.g. `--concurrency 4`).
pub async fn start_envoy_with(
    config: &str,
    backends: Backends,
    extra_args: &[String],
) -> anyhow::Result<Envoy> {
    let dir = module_dir();
    let env = [("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", dir.as_os_str())];
    Envoy::start_with_env_args(config, backends, &env, extra_args).await
}

/// Runs `envoy --mode validate` on `config` with the module on the search path.
pub fn validate(config: &str) -> anyhow::Result<()> {
    let tmp = tempfile::tempdir()?;
    let path = tmp.path().join("envoy.yaml");
    std::fs::write(&path, config)?;
    let dir = module_dir();
    validate_with_env(
        &path,
        &[("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", OsStr::new(&dir))],
    )
}
