//! The `tollgate-ratelimit` binary: `serve` and `check-config` (see `tollgate_ratelimit::cli`).

// The binary shares its package's dependencies; the lint is for the library's.
#![allow(unused_crate_dependencies)]

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tollgate_ratelimit::cli::main().await
}
