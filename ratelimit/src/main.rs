//! The `tollgate-ratelimit` binary: `serve` and `check-config` (see `tollgate_ratelimit::cli`).

// The binary shares its package's dependencies; the lint is for the library's.
#![allow(unused_crate_dependencies)]

/// mimalloc, not the C library's allocator: serving a gRPC call makes many small, short-lived
/// allocations (h2 frames, tonic's buffers, the request and the answer), and with mimalloc
/// they cost about an eighth fewer instructions per call (bench/README.md, "The allocator").
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

#[tokio::main]
async fn main() -> std::process::ExitCode {
    tollgate_ratelimit::cli::main().await
}
