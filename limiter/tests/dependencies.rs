//! The engine builds without any RPC, HTTP server or Envoy crate: every shape (the RLS service,
//! ext_authz in one call, an Envoy dynamic module) embeds it as it is. Checked on the resolved
//! dependency graph, so a crate pulled in through another one is caught too.

// The test binary shares its package's dependencies; the lint is for the library's.
#![allow(unused_crate_dependencies)]

use std::process::Command;

/// Crates (and their `-` families: `tonic-prost`, `hyper-util`) the engine must not depend on.
const FORBIDDEN: &[&str] = &[
    "tonic",
    "axum",
    "hyper",
    "envoy-types",
    "tollgate-proto",
    "tollgate-server",
];

#[test]
fn the_engine_depends_on_no_rpc_http_server_or_envoy_crate() {
    let out = Command::new(env!("CARGO"))
        .args([
            "tree",
            "-e",
            "normal",
            "-p",
            "tollgate-limiter",
            "--prefix",
            "none",
        ])
        .args(["--locked", "--offline"])
        .current_dir(env!("CARGO_MANIFEST_DIR"))
        .output()
        .expect("run cargo tree");
    let text = String::from_utf8_lossy(&out.stdout);
    assert!(
        out.status.success() && text.starts_with("tollgate-limiter "),
        "cargo tree failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let mut found: Vec<&str> = text
        .lines()
        .filter_map(|l| l.split_whitespace().next())
        .filter(|name| {
            FORBIDDEN
                .iter()
                .any(|f| name == f || name.starts_with(&format!("{f}-")))
        })
        .collect();
    found.sort();
    found.dedup();
    assert!(
        found.is_empty(),
        "tollgate-limiter depends on {found:?}:\n{text}"
    );
}
