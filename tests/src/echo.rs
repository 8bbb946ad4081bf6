//! The echo upstream: answers every request with a JSON body describing what it received
//! (method, path, headers), so tests can see exactly what Envoy forwarded.

use std::collections::BTreeMap;
use std::net::SocketAddr;

use axum::Router;
use axum::body::Body;
use axum::http::Request;
use axum::response::IntoResponse;
use serde::{Deserialize, Serialize};
use tokio::task::JoinHandle;

/// What the upstream received, as it answers it.
#[derive(Debug, Clone, Serialize, Deserialize, PartialEq)]
pub struct Echo {
    pub method: String,
    pub path: String,
    /// Header name (lower case) → values in arrival order.
    pub headers: BTreeMap<String, Vec<String>>,
}

impl Echo {
    /// The first value of a header.
    pub fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

/// A running echo upstream; stops when dropped.
#[derive(Debug)]
pub struct EchoUpstream {
    pub addr: SocketAddr,
    task: JoinHandle<()>,
}

impl EchoUpstream {
    /// Starts on a free loopback port.
    pub async fn start() -> EchoUpstream {
        Self::start_on(SocketAddr::from(([127, 0, 0, 1], 0)))
            .await
            .expect("bind echo upstream")
    }

    /// Starts on `addr`.
    pub async fn start_on(addr: SocketAddr) -> std::io::Result<EchoUpstream> {
        let listener = tokio::net::TcpListener::bind(addr).await?;
        let addr = listener.local_addr()?;
        let app = Router::new().fallback(echo);
        let task = tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Ok(EchoUpstream { addr, task })
    }

    /// Waits until the server stops (never, unless its task fails).
    pub async fn wait(mut self) {
        let _ = (&mut self.task).await;
    }

    pub fn port(&self) -> u16 {
        self.addr.port()
    }
}

impl Drop for EchoUpstream {
    fn drop(&mut self) {
        self.task.abort();
    }
}

async fn echo(req: Request<Body>) -> impl IntoResponse {
    let mut headers: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for (k, v) in req.headers() {
        headers
            .entry(k.as_str().to_string())
            .or_default()
            .push(String::from_utf8_lossy(v.as_bytes()).into_owned());
    }
    let body = Echo {
        method: req.method().to_string(),
        path: req
            .uri()
            .path_and_query()
            .map(|p| p.to_string())
            .unwrap_or_default(),
        headers,
    };
    axum::Json(body)
}
