//! A real Redis Sentinel deployment for tests: one master, one replica and three sentinels on
//! free loopback ports, with [`RedisSentinel::failover`] to move the master on demand.
//!
//! The sentinels are `redis-server --sentinel` with a config file of their own (a sentinel
//! rewrites it as it learns the topology). They are tuned for tests: a master is judged down
//! after one second, and a failover may be retried after a few.

use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use super::{READY_DEADLINE, RedisServer, free_port, poll, redis_cli_bin, redis_server_bin};

/// The name the sentinels monitor the master under.
const MASTER_NAME: &str = "tollgate-test";

/// Master, replica and three sentinels; everything is killed on drop.
#[derive(Debug)]
pub struct RedisSentinel {
    /// The two data nodes; which one is the master changes with each failover.
    nodes: Vec<RedisServer>,
    sentinels: Vec<SentinelNode>,
}

impl RedisSentinel {
    /// Starts the master, a replica of it and three sentinels, and waits until every sentinel
    /// knows the replica and the other two sentinels (so that a failover can start at once).
    pub fn start() -> Self {
        let master = RedisServer::start();
        let port = master.port().to_string();
        let replica = RedisServer::start_with(&["--replicaof", "127.0.0.1", &port]);
        poll("the replica's link to the master", READY_DEADLINE, || {
            replica
                .cli(&["INFO", "replication"])
                .is_ok_and(|i| i.contains("master_link_status:up"))
        });
        let sentinels: Vec<SentinelNode> = (0..3).map(|_| SentinelNode::start(&port)).collect();
        let this = Self {
            nodes: vec![master, replica],
            sentinels,
        };
        poll(
            "every sentinel to know the replica and its peers",
            READY_DEADLINE,
            || {
                this.sentinels.iter().all(|s| {
                    let m = s.master_info();
                    field(&m, "num-slaves") == Some("1")
                        && field(&m, "num-other-sentinels") == Some("2")
                })
            },
        );
        this
    }

    /// The name to give clients (`sentinel_master`).
    pub fn master_name(&self) -> &'static str {
        MASTER_NAME
    }

    /// `redis://127.0.0.1:<port>` of each sentinel (`sentinel_nodes`).
    pub fn sentinel_urls(&self) -> Vec<String> {
        self.sentinels
            .iter()
            .map(|s| format!("redis://127.0.0.1:{}", s.port))
            .collect()
    }

    /// The data nodes (master and replica, in start order).
    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// The node the first sentinel names as master.
    pub fn master(&self) -> &RedisServer {
        let port = self.sentinels[0].master_port();
        self.nodes
            .iter()
            .find(|n| Some(n.port()) == port)
            .expect("the sentinels name one of the data nodes as master")
    }

    /// The data node that is not the master.
    pub fn replica(&self) -> &RedisServer {
        let master = self.master().port();
        self.nodes.iter().find(|n| n.port() != master).unwrap()
    }

    /// `SENTINEL FAILOVER`: promotes the replica. Returns the new master's port once every
    /// sentinel names it, it says it is master, and the old master replicates from it.
    ///
    /// A sentinel reconfigures a demoted master that is still up only after several of its
    /// info periods (about 16 s); this helper sends the old master the same `REPLICAOF` at
    /// once, as a sentinel would, so that a test need not wait for it.
    pub fn failover(&self) -> u16 {
        let old = self.master().port();
        let new = self.replica().port();
        let out = self.sentinels[0].cli(&["SENTINEL", "FAILOVER", MASTER_NAME]);
        assert!(
            out.as_deref().is_ok_and(|o| o.trim() == "OK"),
            "SENTINEL FAILOVER: {out:?}"
        );
        poll(
            "every sentinel to name the new master",
            READY_DEADLINE,
            || {
                let named = self.sentinels.iter().all(|s| s.master_port() == Some(new));
                named
                    && self
                        .node(new)
                        .cli(&["ROLE"])
                        .is_ok_and(|r| r.starts_with("master"))
            },
        );
        let port = new.to_string();
        let demoted = self.node(old).cli(&["REPLICAOF", "127.0.0.1", &port]);
        assert!(demoted.is_ok(), "REPLICAOF on the old master: {demoted:?}");
        poll(
            "the old master to replicate the new one",
            READY_DEADLINE,
            || {
                self.node(old)
                    .cli(&["INFO", "replication"])
                    .is_ok_and(|i| i.contains("role:slave") && i.contains("master_link_status:up"))
            },
        );
        new
    }

    fn node(&self, port: u16) -> &RedisServer {
        self.nodes.iter().find(|n| n.port() == port).unwrap()
    }
}

fn field<'a>(info: &'a str, name: &str) -> Option<&'a str> {
    // `redis-cli` prints a map reply as alternating lines: name, value.
    let mut lines = info.lines();
    while let Some(l) = lines.next() {
        if l == name {
            return lines.next();
        }
    }
    None
}

/// One `redis-server --sentinel` process.
#[derive(Debug)]
struct SentinelNode {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
}

impl SentinelNode {
    fn start(master_port: &str) -> Self {
        let mut last = String::new();
        for _ in 0..3 {
            match Self::spawn(free_port(), master_port) {
                Ok(s) => return s,
                Err(e) => last = e,
            }
        }
        panic!("redis sentinel failed to start: {last}");
    }

    fn spawn(port: u16, master_port: &str) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("temp dir");
        let conf = dir.path().join("sentinel.conf");
        std::fs::write(
            &conf,
            format!(
                "port {port}\nbind 127.0.0.1\ndir {dir}\nlogfile {dir}/sentinel.log\n\
                 sentinel monitor {MASTER_NAME} 127.0.0.1 {master_port} 2\n\
                 sentinel down-after-milliseconds {MASTER_NAME} 1000\n\
                 sentinel failover-timeout {MASTER_NAME} 5000\n\
                 sentinel parallel-syncs {MASTER_NAME} 1\n",
                dir = dir.path().display()
            ),
        )
        .expect("write sentinel.conf");
        let child = Command::new(redis_server_bin())
            .arg(&conf)
            .arg("--sentinel")
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {:?} --sentinel: {e}", redis_server_bin()));
        let mut node = Self { child, port, dir };
        let end = std::time::Instant::now() + READY_DEADLINE;
        loop {
            if node.cli(&["PING"]).is_ok_and(|o| o.contains("PONG")) {
                return Ok(node);
            }
            if let Ok(Some(status)) = node.child.try_wait() {
                return Err(format!("exited with {status}: {}", node.log()));
            }
            if std::time::Instant::now() > end {
                return Err(format!("not ready: {}", node.log()));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out = Command::new(redis_cli_bin())
            .args(["-h", "127.0.0.1", "-p", &self.port.to_string()])
            .args(args)
            .stdin(Stdio::null())
            .output()
            .map_err(|e| format!("redis-cli: {e}"))?;
        if out.status.success() {
            Ok(String::from_utf8_lossy(&out.stdout).into_owned())
        } else {
            Err(String::from_utf8_lossy(&out.stderr).into_owned())
        }
    }

    fn master_info(&self) -> String {
        self.cli(&["SENTINEL", "MASTER", MASTER_NAME])
            .unwrap_or_default()
    }

    fn master_port(&self) -> Option<u16> {
        let out = self
            .cli(&["SENTINEL", "GET-MASTER-ADDR-BY-NAME", MASTER_NAME])
            .ok()?;
        out.lines().nth(1)?.trim().parse().ok()
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.log_path()).unwrap_or_default()
    }

    fn log_path(&self) -> PathBuf {
        self.dir.path().join("sentinel.log")
    }
}

impl Drop for SentinelNode {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        if std::thread::panicking() {
            eprintln!(
                "----- redis sentinel :{} log -----\n{}",
                self.port,
                self.log()
            );
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_failover_moves_the_master_and_keeps_the_data() {
        let s = RedisSentinel::start();
        let first = s.master().port();
        s.master().cli(&["SET", "k", "before"]).unwrap();
        poll("replication of k", READY_DEADLINE, || {
            s.replica()
                .cli(&["GET", "k"])
                .is_ok_and(|v| v.trim() == "before")
        });
        let new = s.failover();
        assert_ne!(new, first);
        assert_eq!(s.master().port(), new);
        assert_eq!(s.master().cli(&["GET", "k"]).unwrap().trim(), "before");
        // The old master now refuses writes: it is a replica.
        let refused = s.replica().cli(&["SET", "k", "x"]).unwrap_or_else(|e| e);
        assert!(refused.contains("READONLY"), "{refused}");
        assert_eq!(s.sentinel_urls().len(), 3);
    }
}
