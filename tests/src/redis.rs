//! Real Redis (Debian `redis-server`): a standalone server or a 3-node Cluster, each on free
//! loopback ports with its own temp dir, killed on drop.

use std::process::Command;
use std::time::Duration;

use anyhow::{Context, bail};
use tempfile::TempDir;

use crate::paths::redis_server_bin;
use crate::process::{ChildProcess, free_port, wait_for};

/// A standalone Redis server.
#[derive(Debug)]
pub struct RedisServer {
    pub port: u16,
    process: ChildProcess,
    _dir: TempDir,
}

impl RedisServer {
    /// Starts a server without persistence; `extra` are further `--name value` arguments.
    pub async fn start_with(extra: &[&str]) -> anyhow::Result<RedisServer> {
        let dir = tempfile::tempdir()?;
        let port = free_port();
        let mut cmd = Command::new(redis_server_bin());
        cmd.args([
            "--port",
            &port.to_string(),
            "--bind",
            "127.0.0.1",
            "--save",
            "",
            "--appendonly",
            "no",
        ])
        .arg("--dir")
        .arg(dir.path())
        .args(extra);
        let process = ChildProcess::spawn("redis-server", cmd, &dir.path().join("redis.log"))?;
        let server = RedisServer {
            port,
            process,
            _dir: dir,
        };
        server.wait_ready().await?;
        Ok(server)
    }

    /// Starts a plain server.
    pub async fn start() -> anyhow::Result<RedisServer> {
        Self::start_with(&[]).await
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    async fn wait_ready(&self) -> anyhow::Result<()> {
        let url = self.url();
        tokio::time::timeout(
            Duration::from_secs(15),
            wait_for("redis PING", Duration::from_secs(15), || {
                let url = url.clone();
                async move { ping(&url).await.ok() }
            }),
        )
        .await
        .with_context(|| format!("redis did not answer:\n{}", self.process.log()))
    }

    /// Kills the server (to test the failure modes).
    pub fn kill(&mut self) {
        self.process.kill();
    }

    pub fn pid(&self) -> u32 {
        self.process.pid()
    }
}

async fn ping(url: &str) -> anyhow::Result<()> {
    let client = redis::Client::open(url)?;
    let mut conn = client.get_multiplexed_async_connection().await?;
    let pong: String = redis::cmd("PING").query_async(&mut conn).await?;
    if pong != "PONG" {
        bail!("unexpected PING answer {pong}");
    }
    Ok(())
}

/// A Redis Cluster of primaries only (no replicas), formed with `redis-cli --cluster create`.
#[derive(Debug)]
pub struct RedisCluster {
    pub nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` (≥ 3) cluster-enabled servers and joins them.
    pub async fn start(n: usize) -> anyhow::Result<RedisCluster> {
        let mut nodes = Vec::with_capacity(n);
        for _ in 0..n {
            nodes.push(
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-node-timeout",
                    "5000",
                ])
                .await?,
            );
        }
        let addrs: Vec<String> = nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port))
            .collect();
        let out = Command::new(redis_cli_bin())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .output()
            .context("running redis-cli --cluster create")?;
        if !out.status.success() {
            bail!(
                "cluster create failed: {}{}",
                String::from_utf8_lossy(&out.stdout),
                String::from_utf8_lossy(&out.stderr)
            );
        }
        let urls: Vec<String> = nodes.iter().map(RedisServer::url).collect();
        tokio::time::timeout(
            Duration::from_secs(30),
            wait_for(
                "cluster_state:ok on every node",
                Duration::from_secs(30),
                || {
                    let urls = urls.clone();
                    async move {
                        for url in &urls {
                            let client = redis::Client::open(url.as_str()).ok()?;
                            let mut conn = client.get_multiplexed_async_connection().await.ok()?;
                            let info: String = redis::cmd("CLUSTER")
                                .arg("INFO")
                                .query_async(&mut conn)
                                .await
                                .ok()?;
                            if !info.contains("cluster_state:ok") {
                                return None;
                            }
                        }
                        Some(())
                    }
                },
            ),
        )
        .await
        .context("cluster did not converge")?;
        Ok(RedisCluster { nodes })
    }

    /// The nodes' URLs (any of them seeds a cluster client).
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }
}

fn redis_cli_bin() -> std::path::PathBuf {
    let server = redis_server_bin();
    let sibling = server.with_file_name("redis-cli");
    if sibling.exists() {
        sibling
    } else {
        "redis-cli".into()
    }
}
