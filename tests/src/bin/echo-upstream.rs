//! The demo upstream: answers every request with JSON describing what it received, so the
//! identity headers tollgate-authz adds are visible. `echo-upstream [ADDR]` (default 127.0.0.1:8000).

// The binary shares its package's dependencies; the lint is for the library's.
#![allow(unused_crate_dependencies)]

use std::net::SocketAddr;

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    let addr: SocketAddr = std::env::args()
        .nth(1)
        .as_deref()
        .unwrap_or("127.0.0.1:8000")
        .parse()?;
    let server = tollgate_tests::echo::EchoUpstream::start_on(addr).await?;
    eprintln!("echo upstream listening on http://{}", server.addr);
    server.wait().await;
    Ok(())
}
