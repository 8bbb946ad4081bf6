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

/// The in-process example's authz config (`deploy/config/authz-inprocess.yaml`) as a test runs
/// it: its key store in `dir`, its limits the shipped ones by absolute path (Envoy's working
/// directory is the test's), then `edit` applied.
pub fn example_authz(dir: &Path, edit: impl FnOnce(String) -> String) -> String {
    let text = std::fs::read_to_string(crate::paths::project_root().join(EXAMPLE_AUTHZ))
        .expect("the in-process authz example is readable");
    let store = "path: .tollgate/module-keys.redb";
    let limits = "limits: { path: deploy/config/limits }";
    assert!(
        text.contains(store) && text.contains(limits),
        "the example moved"
    );
    let root = crate::paths::project_root();
    let text = text
        .replace(
            store,
            &format!("path: {}", dir.join("module-keys.redb").display()),
        )
        .replace(
            limits,
            &format!(
                "limits: {{ path: {} }}",
                root.join("deploy/config/limits").display()
            ),
        );
    edit(text)
}

/// The shipped in-process Envoy config (`deploy/envoy/envoy-module.yaml`) loading the authz
/// config `authz` (a file) instead of the example's.
pub fn example_envoy(authz: &Path) -> String {
    let text = crate::envoy::example_file("envoy-module.yaml");
    let shipped = format!("config: {EXAMPLE_AUTHZ}");
    assert!(text.contains(&shipped), "the example moved");
    text.replace(&shipped, &format!("config: {}", authz.display()))
}

/// [`example_authz`] written to `dir/authz.yaml`, and the Envoy config that loads it.
pub fn example_in(dir: &Path, edit: impl FnOnce(String) -> String) -> String {
    let path = dir.join("authz.yaml");
    std::fs::write(&path, example_authz(dir, edit)).expect("writing the authz config");
    example_envoy(&path)
}

/// The authz config the shipped in-process example loads.
pub const EXAMPLE_AUTHZ: &str = "deploy/config/authz-inprocess.yaml";
