//! Real Redis for tests: a standalone `redis-server`, a 3-node Redis Cluster, or a Sentinel
//! deployment (master, replica, three sentinels; [`RedisSentinel`]) on free loopback ports,
//! each in its own temp dir, killed on drop.
//!
//! For every crate's tests, through this crate's `testing` feature. The binaries are Debian's
//! `redis-server` / `redis-cli`, or `$TOLLGATE_REDIS_SERVER` (with `redis-cli` beside it).

use std::net::TcpListener;
use std::path::PathBuf;
use std::process::{Child, Command, Output, Stdio};
use std::time::{Duration, Instant};

mod sentinel;

pub use sentinel::RedisSentinel;

/// How long a server or cluster may take to become ready.
const READY_DEADLINE: Duration = Duration::from_secs(20);

/// The `redis-server` binary.
pub fn redis_server_bin() -> PathBuf {
    std::env::var_os("TOLLGATE_REDIS_SERVER")
        .map_or_else(|| PathBuf::from("redis-server"), PathBuf::from)
}

/// The `redis-cli` binary: beside `redis-server` when that is a path, else from `PATH`.
pub fn redis_cli_bin() -> PathBuf {
    let server = redis_server_bin();
    match server.parent() {
        Some(dir) if !dir.as_os_str().is_empty() => dir.join("redis-cli"),
        _ => PathBuf::from("redis-cli"),
    }
}

fn free_port() -> u16 {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .expect("bind 127.0.0.1:0")
        .port()
}

/// Polls `probe` every 20 ms until it is true; panics with `what` after `deadline`.
pub fn poll(what: &str, deadline: Duration, mut probe: impl FnMut() -> bool) {
    let end = Instant::now() + deadline;
    while !probe() {
        assert!(
            Instant::now() < end,
            "timed out after {deadline:?} waiting for {what}"
        );
        std::thread::sleep(Duration::from_millis(20));
    }
}

/// A `redis-server` child process.
#[derive(Debug)]
pub struct RedisServer {
    child: Child,
    port: u16,
    dir: tempfile::TempDir,
    /// TLS port and the directory of its certificates.
    tls: Option<(u16, tempfile::TempDir)>,
}

impl RedisServer {
    /// Starts a standalone server and waits until it answers `PING`.
    pub fn start() -> Self {
        Self::start_with(&[])
    }

    /// Starts a server with extra `redis-server` arguments (e.g. `--requirepass x`).
    pub fn start_with(extra: &[&str]) -> Self {
        let mut last = String::new();
        // A free port can be taken between probing and binding: try a few.
        for _ in 0..3 {
            match Self::spawn(free_port(), extra) {
                Ok(server) => return server,
                Err(e) => last = e,
            }
        }
        panic!("redis-server failed to start: {last}");
    }

    /// Starts a standalone server on `port` (e.g. to bring a killed one back).
    pub fn start_on(port: u16) -> Self {
        Self::spawn(port, &[]).unwrap_or_else(|e| panic!("redis-server on {port}: {e}"))
    }

    /// Starts a server that also listens with TLS on [`RedisServer::tls_port`], with a fresh
    /// CA (made with the `openssl` CLI) whose certificate is at [`RedisServer::ca_file`]; the
    /// server certificate names `127.0.0.1` and `localhost`.
    pub fn start_tls() -> Self {
        let certs = tempfile::tempdir().expect("temp dir");
        let d = certs.path();
        let openssl = |args: &[&str]| {
            let out = Command::new("openssl")
                .args(args)
                .current_dir(d)
                .output()
                .expect("openssl");
            assert!(
                out.status.success(),
                "openssl {args:?}: {}",
                String::from_utf8_lossy(&out.stderr)
            );
        };
        let ec = [
            "-newkey",
            "ec",
            "-pkeyopt",
            "ec_paramgen_curve:prime256v1",
            "-nodes",
        ];
        openssl(
            &[
                &["req", "-x509"][..],
                &ec,
                &[
                    "-keyout",
                    "ca.key",
                    "-out",
                    "ca.crt",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=tollgate test CA",
                ],
            ]
            .concat(),
        );
        openssl(
            &[
                &["req"][..],
                &ec,
                &[
                    "-keyout",
                    "server.key",
                    "-out",
                    "server.csr",
                    "-subj",
                    "/CN=127.0.0.1",
                ],
            ]
            .concat(),
        );
        std::fs::write(
            d.join("ext.cnf"),
            "subjectAltName=IP:127.0.0.1,DNS:localhost\nextendedKeyUsage=serverAuth\n",
        )
        .unwrap();
        openssl(&[
            "x509",
            "-req",
            "-in",
            "server.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-out",
            "server.crt",
            "-days",
            "2",
            "-extfile",
            "ext.cnf",
        ]);
        let tls_port = free_port().to_string();
        let file = |f: &str| d.join(f).to_string_lossy().into_owned();
        let (cert, key, ca) = (file("server.crt"), file("server.key"), file("ca.crt"));
        let mut server = Self::start_with(&[
            "--tls-port",
            &tls_port,
            "--tls-cert-file",
            &cert,
            "--tls-key-file",
            &key,
            "--tls-ca-cert-file",
            &ca,
            "--tls-auth-clients",
            "no",
        ]);
        server.tls = Some((tls_port.parse().unwrap(), certs));
        server
    }

    /// The TLS port of a server from [`RedisServer::start_tls`].
    pub fn tls_port(&self) -> Option<u16> {
        self.tls.as_ref().map(|(p, _)| *p)
    }

    /// The CA certificate of a server from [`RedisServer::start_tls`].
    pub fn ca_file(&self) -> Option<PathBuf> {
        self.tls.as_ref().map(|(_, d)| d.path().join("ca.crt"))
    }

    fn spawn(port: u16, extra: &[&str]) -> Result<Self, String> {
        let dir = tempfile::tempdir().expect("temp dir");
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
        .arg("--logfile")
        .arg(dir.path().join("redis.log"))
        .args(extra)
        .stdin(Stdio::null())
        .stdout(Stdio::null())
        .stderr(Stdio::null());
        let child = cmd
            .spawn()
            .unwrap_or_else(|e| panic!("spawning {:?}: {e}", redis_server_bin()));
        let mut server = Self {
            child,
            port,
            dir,
            tls: None,
        };
        let end = Instant::now() + READY_DEADLINE;
        loop {
            if server
                .cli(&["PING"])
                .is_ok_and(|o| o.contains("PONG") || o.contains("NOAUTH"))
            {
                return Ok(server);
            }
            if let Ok(Some(status)) = server.child.try_wait() {
                return Err(format!("exited with {status}: {}", server.log()));
            }
            if Instant::now() > end {
                return Err(format!(
                    "not ready after {READY_DEADLINE:?}: {}",
                    server.log()
                ));
            }
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    pub fn port(&self) -> u16 {
        self.port
    }

    /// `redis://127.0.0.1:<port>`.
    pub fn url(&self) -> String {
        format!("redis://127.0.0.1:{}", self.port)
    }

    /// The server's log so far.
    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("redis.log")).unwrap_or_default()
    }

    /// Runs `redis-cli -p <port> <args>` and returns its stdout.
    pub fn cli(&self, args: &[&str]) -> Result<String, String> {
        let out: Output = Command::new(redis_cli_bin())
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

    /// The number of calls of `command` (lower case, e.g. `evalsha`) since start or the last
    /// `CONFIG RESETSTAT`, from `INFO commandstats`.
    pub fn command_calls(&self, command: &str) -> u64 {
        let info = self.cli(&["INFO", "commandstats"]).unwrap_or_default();
        let prefix = format!("cmdstat_{command}:calls=");
        info.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .and_then(|rest| rest.split(',').next())
            .and_then(|n| n.parse().ok())
            .unwrap_or(0)
    }

    /// Stops the process with SIGSTOP: connections stay open and nothing answers, as with a
    /// hung Redis. [`RedisServer::thaw`] resumes it.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Resumes a frozen server (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, sig: &str) {
        let ok = Command::new("kill")
            .arg(sig)
            .arg(self.child.id().to_string())
            .status()
            .is_ok_and(|s| s.success());
        assert!(ok, "kill {sig} {}", self.child.id());
    }

    /// Kills the server now (to test outages).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

impl Drop for RedisServer {
    fn drop(&mut self) {
        // SIGKILL ends a frozen server too.
        self.kill();
        if std::thread::panicking() {
            eprintln!(
                "----- redis-server :{} log -----\n{}",
                self.port,
                self.log()
            );
        }
    }
}

/// A Redis Cluster of `redis-server --cluster-enabled yes` nodes, all masters.
#[derive(Debug)]
pub struct RedisCluster {
    nodes: Vec<RedisServer>,
}

impl RedisCluster {
    /// Starts `n` (at least 3) nodes, joins them with `redis-cli --cluster create`, and waits
    /// until every node reports `cluster_state:ok` with all slots assigned.
    pub fn start(n: usize) -> Self {
        assert!(n >= 3, "Redis Cluster needs at least 3 masters");
        let nodes: Vec<RedisServer> = (0..n)
            .map(|_| {
                RedisServer::start_with(&[
                    "--cluster-enabled",
                    "yes",
                    "--cluster-config-file",
                    "nodes.conf",
                    "--cluster-node-timeout",
                    "5000",
                ])
            })
            .collect();
        let addrs: Vec<String> = nodes
            .iter()
            .map(|s| format!("127.0.0.1:{}", s.port()))
            .collect();
        let out = Command::new(redis_cli_bin())
            .args(["--cluster", "create"])
            .args(&addrs)
            .args(["--cluster-replicas", "0", "--cluster-yes"])
            .stdin(Stdio::null())
            .output()
            .expect("redis-cli --cluster create");
        assert!(
            out.status.success(),
            "redis-cli --cluster create failed: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
        let cluster = Self { nodes };
        poll("cluster_state:ok on every node", READY_DEADLINE, || {
            cluster.nodes.iter().all(|s| {
                s.cli(&["CLUSTER", "INFO"]).is_ok_and(|i| {
                    i.contains("cluster_state:ok")
                        && i.contains("cluster_slots_assigned:16384")
                        && i.contains(&format!("cluster_known_nodes:{n}"))
                })
            })
        });
        cluster
    }

    pub fn nodes(&self) -> &[RedisServer] {
        &self.nodes
    }

    /// Seed URLs of every node.
    pub fn urls(&self) -> Vec<String> {
        self.nodes.iter().map(RedisServer::url).collect()
    }

    /// Sum of `command` calls over the nodes.
    pub fn command_calls(&self, command: &str) -> u64 {
        self.nodes.iter().map(|s| s.command_calls(command)).sum()
    }
}
