//! The chart's pods across upgrades and shutdowns, rendered by Helm and run with the real
//! binaries: the embedded key store on a kept claim with an upgrade that stops the old pod
//! first (and what a second process on the key file does), the chart's Envoy drain hook run
//! against a real Envoy, and the Check deadlines the chart keeps below Envoy's.

use std::net::SocketAddr;
use std::process::Command;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::Router;
use axum::extract::{Query, State};
use serde::Deserialize;
use serde_json::{Value as Json, json};
use serde_yaml::Value as Yaml;
use tokio::sync::{Notify, mpsc};
use tollgate_tests::envoy::Envoy;
use tollgate_tests::process::{ChildProcess, free_addr, free_port, wait_for};
use tollgate_tests::stack::wait_ready;

use super::helm::{EnvoyPorts, Rendered, check_config, listen_args, loopback_envoy, render};

fn render_ok(sets: &[&str]) -> Rendered {
    render(&[], sets, &[]).unwrap_or_else(|e| panic!("{sets:?}: {e}"))
}

const EMBEDDED: [&str; 3] = [
    "redis.mode=none",
    "authz.replicas=1",
    "ratelimit.replicas=1",
];

#[test]
fn the_embedded_key_store_is_kept_on_a_claim_and_upgrades_stop_the_old_pod_first() {
    let r = render_ok(&EMBEDDED);
    let claim = r.find("PersistentVolumeClaim", "edge-tollgate-authz-keys");
    // Uninstalling the release does not delete the keys.
    assert_eq!(
        claim["metadata"]["annotations"]["helm.sh/resource-policy"],
        "keep"
    );
    assert_eq!(claim["spec"]["accessModes"][0], "ReadWriteOnce");
    let authz = r.find("Deployment", "edge-tollgate-authz");
    let spec = &authz["spec"];
    // One process may hold the key file, and the volume attaches to one node: an upgrade
    // that starts the new pod before stopping the old one would never finish.
    assert_eq!(spec["strategy"]["type"], "Recreate");
    assert!(spec["strategy"].get("rollingUpdate").is_none());
    assert_eq!(spec["replicas"], 1);
    let volume = |r: &Rendered| -> Yaml {
        let d = r.find("Deployment", "edge-tollgate-authz");
        d["spec"]["template"]["spec"]["volumes"]
            .as_sequence()
            .unwrap()
            .iter()
            .find(|v| v["name"] == "keys")
            .cloned()
            .expect("a keys volume")
    };
    assert_eq!(
        volume(&r)["persistentVolumeClaim"]["claimName"],
        "edge-tollgate-authz-keys"
    );
    let config: Yaml = serde_yaml::from_str(
        &std::fs::read_to_string(r.file("edge-tollgate-authz", "authz.yaml")).unwrap(),
    )
    .unwrap();
    assert_eq!(config["api_keys"]["store"]["type"], "embedded");
    assert!(
        config["api_keys"]["store"]["path"]
            .as_str()
            .unwrap()
            .starts_with("/var/lib/tollgate/")
    );

    // An existing claim replaces the chart's; no claim at all is an explicit choice.
    let own = render_ok(
        &[
            &EMBEDDED[..],
            &["authz.apiKeys.embedded.existingClaim=keys"],
        ]
        .concat(),
    );
    assert_eq!(volume(&own)["persistentVolumeClaim"]["claimName"], "keys");
    assert!(
        !own.resources()
            .iter()
            .any(|r| r.starts_with("PersistentVolumeClaim/"))
    );
    let own = own.find("Deployment", "edge-tollgate-authz");
    assert_eq!(own["spec"]["strategy"]["type"], "Recreate");
    let scratch = render_ok(
        &[
            &EMBEDDED[..],
            &["authz.apiKeys.embedded.persistence.enabled=false"],
        ]
        .concat(),
    );
    assert!(volume(&scratch).get("emptyDir").is_some());

    // With Redis the pods hold no file: rolling updates with a surge pod, no claim.
    let shared = render_ok(&[]);
    let d = shared.find("Deployment", "edge-tollgate-authz");
    assert_eq!(d["spec"]["strategy"]["type"], "RollingUpdate");
    assert_eq!(d["spec"]["strategy"]["rollingUpdate"]["maxSurge"], 1);
    assert!(
        !shared
            .resources()
            .iter()
            .any(|r| r.starts_with("PersistentVolumeClaim/"))
    );
}

/// The rendered authz workload as one pod: started with the workspace binary on free ports.
struct Pod {
    process: ChildProcess,
    http: SocketAddr,
    admin: SocketAddr,
    _dir: tempfile::TempDir,
}

fn start_pod(r: &Rendered) -> Pod {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http, admin) = (free_addr(), free_addr(), free_addr());
    let mut args = listen_args(grpc, http);
    args.extend([
        "--set".into(),
        format!("admin.addr={admin}"),
        "--set".into(),
        "server.shutdown_delay=0s".into(),
    ]);
    let process = r
        .workload("edge-tollgate-authz/authz")
        .spawn(dir.path(), &[], &args);
    Pod {
        process,
        http,
        admin,
        _dir: dir,
    }
}

/// Sends SIGTERM, as the kubelet does, and waits for the process to exit.
async fn stop(pod: &mut Pod) {
    let pid = pod.process.pid().to_string();
    assert!(
        Command::new("kill")
            .args(["-TERM", &pid])
            .status()
            .unwrap()
            .success()
    );
    wait_for("the pod to exit", Duration::from_secs(30), || {
        let exited = pod.process.exited();
        async move { exited.map(|_| ()) }
    })
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_second_process_on_the_key_file_fails_clearly_and_keys_survive_a_recreate() {
    let r = render_ok(&EMBEDDED);
    let w = r.workload("edge-tollgate-authz/authz");
    let token = std::fs::read_to_string(w.localise("/etc/tollgate/admin/token")).unwrap();
    let token = token.trim_end().to_string();
    let http = reqwest::Client::new();

    let mut first = start_pod(&r);
    wait_ready(first.http).await;
    let body = json!({"name": "kept", "owner": "team-a"});
    let created =
        tollgate_tests::stack::create_key(&format!("http://{}", first.admin), &token, &body).await;
    let id = created["key"]["id"].as_str().unwrap().to_string();

    // A second pod on the same volume (what a surge pod of a rolling update would be): it
    // stops at once with the reason, and the first keeps serving.
    let mut second = start_pod(&r);
    let status = wait_for(
        "the second process to exit",
        Duration::from_secs(20),
        || {
            let exited = second.process.exited();
            async move { exited }
        },
    )
    .await;
    assert!(!status.success());
    let log = second.process.log();
    assert!(
        log.contains("keys.redb") && log.contains("another process holds it"),
        "{log}"
    );
    assert_eq!(
        reqwest::get(format!("http://{}/readyz", first.http))
            .await
            .unwrap()
            .status(),
        200
    );

    // Recreate: the old pod stops, then the new one opens the file and has every key.
    stop(&mut first).await;
    let third = start_pod(&r);
    wait_ready(third.http).await;
    let kept = http
        .get(format!("http://{}/v1/keys/{id}", third.admin))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(kept.status(), 200);
    let kept: Json = kept.json().await.unwrap();
    assert_eq!(kept["name"], "kept");
}

#[test]
fn every_check_deadline_of_the_release_is_below_envoys_ext_authz_timeout() {
    let r = render_ok(&[]);
    let envoy: Yaml = serde_yaml::from_str(
        &std::fs::read_to_string(r.file("edge-tollgate-envoy", "envoy.yaml")).unwrap(),
    )
    .unwrap();
    let filters =
        envoy["static_resources"]["listeners"][0]["filter_chains"][0]["filters"][0]["typed_config"]
            ["http_filters"]
            .as_sequence()
            .unwrap();
    let ext_authz = filters
        .iter()
        .find(|f| f["name"] == "envoy.filters.http.ext_authz")
        .unwrap();
    let envoy_timeout = seconds(
        ext_authz["typed_config"]["grpc_service"]["timeout"]
            .as_str()
            .unwrap(),
    );
    let authz: Yaml = serde_yaml::from_str(
        &std::fs::read_to_string(r.file("edge-tollgate-authz", "authz.yaml")).unwrap(),
    )
    .unwrap();
    let store_timeout = seconds(authz["api_keys"]["store"]["timeout"].as_str().unwrap());
    assert!(
        store_timeout * 2.0 <= envoy_timeout,
        "key store {store_timeout}s vs Envoy {envoy_timeout}s"
    );
    // Values that would let Envoy give up first are refused, naming both.
    for (set, want) in [
        (
            "authz.apiKeys.storeTimeout=500ms",
            "authz.apiKeys.storeTimeout (500ms) must be below envoy.extAuthz.timeout (0.5s)",
        ),
        (
            "authz.introspection.endpoint=https://id.example.com/introspect",
            "authz.introspection.timeout (2s) must be below envoy.extAuthz.timeout (0.5s)",
        ),
    ] {
        let err = render(&[], &[set], &[]).err().expect(set);
        assert!(err.contains(want), "{set}: {err}");
    }
    // Envoy's own grace: the pod outlives its drain.
    let err = render(&[], &["envoy.terminationGracePeriodSeconds=20"], &[])
        .err()
        .unwrap();
    assert!(
        err.contains(
            "envoy.terminationGracePeriodSeconds (20) must exceed envoy.drain.timeoutSeconds (20)"
        ),
        "{err}"
    );
}

#[test]
fn api_keys_live_on_the_counters_redis_cluster_unless_a_key_store_url_is_given() {
    let cluster = [
        "redis.mode=cluster",
        "redis.clusterNodes={redis://redis-0.redis:6379,redis://redis-1.redis:6379}",
        "redis.password=s3cret",
    ];
    let store = |r: &Rendered| -> Yaml {
        let text = std::fs::read_to_string(r.file("edge-tollgate-authz", "authz.yaml")).unwrap();
        serde_yaml::from_str::<Yaml>(&text).unwrap()["api_keys"]["store"].clone()
    };
    let r = render_ok(&cluster);
    let s = store(&r);
    assert_eq!(s["cluster_nodes"][1], "redis://redis-1.redis:6379");
    assert!(s.get("url").is_none());
    // The password reaches the key store as its own field, from the Secret.
    let w = r.workload("edge-tollgate-authz/authz");
    assert_eq!(w.env["TOLLGATE_API_KEYS__STORE__PASSWORD"], "s3cret");
    let out = check_config(&r, "edge-tollgate-authz/authz");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    let own = render_ok(
        &[
            &cluster[..],
            &["redis.keyStoreUrl=redis://keys.data.svc:6379/0"],
        ]
        .concat(),
    );
    let s = store(&own);
    assert_eq!(s["url"], "redis://keys.data.svc:6379/0");
    assert!(s.get("cluster_nodes").is_none());
}

/// `0.5s` / `100ms` in seconds.
fn seconds(d: &str) -> f64 {
    match d.strip_suffix("ms") {
        Some(ms) => ms.parse::<f64>().unwrap() / 1000.0,
        None => d.strip_suffix('s').unwrap().parse().unwrap(),
    }
}

/// An upstream that answers `?hold=release` requests when released, `?hold=never` never, and
/// tells when one arrived.
#[derive(Clone)]
struct Slow {
    arrived: mpsc::UnboundedSender<()>,
    release: Arc<Notify>,
}

#[derive(Deserialize)]
struct Hold {
    hold: Option<String>,
}

async fn slow(State(s): State<Slow>, Query(q): Query<Hold>) -> &'static str {
    match q.hold.as_deref() {
        Some("release") => {
            let released = s.release.notified();
            let _ = s.arrived.send(());
            released.await;
        }
        Some(_) => {
            let _ = s.arrived.send(());
            std::future::pending::<()>().await;
        }
        None => {}
    }
    "ok"
}

/// The chart's Envoy (its rendered config, arguments and drain hook) on loopback, with every
/// upstream at `upstream`.
struct Gateway {
    /// Kept for its lifetime: Envoy stops when the gateway is dropped.
    _envoy: Envoy,
    ports: EnvoyPorts,
    hook: Vec<String>,
}

async fn gateway(r: &Rendered, upstream: u16) -> Gateway {
    let ports = EnvoyPorts {
        listener: free_port(),
        ops: free_port(),
        admin: free_port(),
        authz: free_port(),
        ratelimit: free_port(),
        upstream,
    };
    let config = std::fs::read_to_string(r.file("edge-tollgate-envoy", "envoy.yaml")).unwrap();
    let d = r.find("Deployment", "edge-tollgate-envoy");
    let c = &d["spec"]["template"]["spec"]["containers"][0];
    let strings = |v: &Yaml| -> Vec<String> {
        v.as_sequence()
            .unwrap()
            .iter()
            .map(|a| a.as_str().unwrap().to_string())
            .collect()
    };
    // The drain flags as rendered; the config file and concurrency are the harness's own.
    let args = strings(&c["args"]);
    let at = args.iter().position(|a| a == "--drain-time-s").unwrap();
    let drain_flags = args[at..at + 4].to_vec();
    assert_eq!(drain_flags[2], "--drain-strategy");
    let envoy = Envoy::start_raw_with(
        &loopback_envoy(&config, &ports),
        ports.listener,
        ports.admin,
        &drain_flags,
    )
    .await
    .unwrap();
    let hook = strings(&c["lifecycle"]["preStop"]["exec"]["command"]);
    Gateway {
        _envoy: envoy,
        ports,
        hook,
    }
}

impl Gateway {
    /// Runs the rendered preStop command with the script from the rendered ConfigMap, this
    /// Envoy's admin port, and the given deregistration wait and timeout.
    fn drain(
        &self,
        r: &Rendered,
        deregister: u64,
        timeout: u64,
        log: &std::path::Path,
    ) -> ChildProcess {
        assert_eq!(self.hook[0], "/bin/bash");
        assert_eq!(self.hook[1], "/etc/envoy/drain.sh");
        let mut cmd = Command::new("bash");
        cmd.arg(r.file("edge-tollgate-envoy", "drain.sh"))
            .arg(self.ports.admin.to_string())
            .arg(deregister.to_string())
            .arg(timeout.to_string())
            .arg(&self.hook[5])
            .env("ENVOY_DRAIN_LOG", log);
        ChildProcess::spawn("envoy-drain", cmd, &log.with_extension("out")).unwrap()
    }

    fn url(&self, path: &str) -> String {
        format!("http://127.0.0.1:{}{path}", self.ports.listener)
    }

    async fn ready_status(&self) -> u16 {
        reqwest::get(format!("http://127.0.0.1:{}/ready", self.ports.ops))
            .await
            .map_or(0, |r| r.status().as_u16())
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_chart_drains_envoy_fails_health_then_waits_for_requests_in_flight() {
    let r = render_ok(&[]);
    let (arrived_tx, mut arrived) = mpsc::unbounded_channel();
    let release = Arc::new(Notify::new());
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let upstream = listener.local_addr().unwrap().port();
    let app = Router::new().fallback(slow).with_state(Slow {
        arrived: arrived_tx,
        release: release.clone(),
    });
    tokio::spawn(async move { axum::serve(listener, app).await });
    let logs = tempfile::tempdir().unwrap();

    // Two gateways: one whose request in flight finishes, one whose never does.
    let (finishing, stuck) = tokio::join!(gateway(&r, upstream), gateway(&r, upstream));
    let http = reqwest::Client::new();
    // The health route needs neither authz nor the rate limiter.
    let in_flight = tokio::spawn(http.get(finishing.url("/healthz?hold=release")).send());
    arrived.recv().await.unwrap();
    let forever = tokio::spawn(http.get(stuck.url("/healthz?hold=never")).send());
    arrived.recv().await.unwrap();
    assert_eq!(finishing.ready_status().await, 200);

    let started = Instant::now();
    let mut hook = finishing.drain(&r, 1, 20, &logs.path().join("finishing.log"));
    let mut stuck_hook = stuck.drain(&r, 1, 4, &logs.path().join("stuck.log"));
    // 1. The health check fails at once (the kubelet and load balancers stop choosing it)...
    wait_for("/ready to fail", Duration::from_secs(2), || async {
        (finishing.ready_status().await == 503).then_some(())
    })
    .await;
    // ...while Envoy still serves, telling each client to close its connection.
    let during = http.get(finishing.url("/healthz")).send().await.unwrap();
    assert_eq!(during.status(), 200);
    assert_eq!(
        during
            .headers()
            .get("connection")
            .map(|v| v.to_str().unwrap()),
        Some("close")
    );
    // 2. After the deregistration wait the listener drains and then stops accepting; the
    // hook keeps waiting, since a request is still in flight.
    wait_for(
        "the gateway listener to close",
        Duration::from_secs(10),
        || async {
            tokio::net::TcpStream::connect(("127.0.0.1", finishing.ports.listener))
                .await
                .is_err()
                .then_some(())
        },
    )
    .await;
    assert!(
        hook.exited().is_none(),
        "the hook returned with a request in flight"
    );
    // 3. The request completes, and the hook returns promptly.
    release.notify_one();
    let done = in_flight.await.unwrap().unwrap();
    assert_eq!(done.status(), 200);
    let released = Instant::now();
    let status = wait_for("the hook to return", Duration::from_secs(3), || {
        let exited = hook.exited();
        async move { exited }
    })
    .await;
    assert!(status.success());
    assert!(released.elapsed() < Duration::from_secs(2));
    let log = std::fs::read_to_string(logs.path().join("finishing.log")).unwrap();
    assert!(log.contains("no request in flight"), "{log}");

    // The other gateway's request never ends: its hook gives up at its timeout, not before.
    let status = wait_for("the stuck hook to give up", Duration::from_secs(10), || {
        let exited = stuck_hook.exited();
        async move { exited }
    })
    .await;
    assert!(status.success());
    let took = started.elapsed();
    assert!(
        took >= Duration::from_secs(3) && took < Duration::from_secs(9),
        "{took:?}"
    );
    let log = std::fs::read_to_string(logs.path().join("stuck.log")).unwrap();
    assert!(log.contains("still 1 request(s) in flight"), "{log}");
    forever.abort();
}
