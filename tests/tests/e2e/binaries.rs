//! The binaries as operators run them: `check-config` reports every error with file, line,
//! field and reason and exits non-zero; `serve` validates before binding anything; SIGTERM
//! drains and exits cleanly. Also: TLS certificates reloaded when their files change.

use std::process::Command;
use std::time::Duration;

use tollgate_tests::paths::{project_root, workspace_bin};
use tollgate_tests::process::{ChildProcess, free_port, wait_for};

#[test]
fn check_config_accepts_the_shipped_examples() {
    for (bin, config) in [
        ("tollgate-ratelimit", "ratelimit.yaml"),
        ("tollgate-authz", "authz.yaml"),
    ] {
        let out = Command::new(workspace_bin(bin))
            .args(["check-config", "--config"])
            .arg(format!("deploy/config/{config}"))
            .current_dir(project_root())
            .output()
            .unwrap();
        assert!(
            out.status.success(),
            "{bin}: {}{}",
            String::from_utf8_lossy(&out.stdout),
            String::from_utf8_lossy(&out.stderr)
        );
    }
}

#[test]
fn check_config_reports_every_error_with_file_line_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("ratelimit.yaml");
    std::fs::write(
        &cfg,
        "server:\n  grpc_addr: 127.0.0.1:7000\n  http_addr: 127.0.0.1:7000\nlog:\n  level: \"info,=[\"\nnear_limit_ratio: 3\n",
    )
    .unwrap();
    let out = Command::new(workspace_bin("tollgate-ratelimit"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    let file = cfg.display().to_string();
    assert!(
        err.contains(&format!(
            "{file}:3: server.http_addr: must differ from grpc_addr"
        )),
        "{err}"
    );
    assert!(err.contains(&format!("{file}:5: log.level:")), "{err}");
    assert!(
        err.contains(&format!("{file}:6: near_limit_ratio:")),
        "{err}"
    );

    // A typo is named with its path and line.
    std::fs::write(&cfg, "server:\n  grpc_adr: 127.0.0.1:7000\n").unwrap();
    let out = Command::new(workspace_bin("tollgate-authz"))
        .args(["check-config", "--config"])
        .arg(&cfg)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains(&format!(
            "{file}:2: server.grpc_adr: unknown field `grpc_adr`"
        )),
        "{err}"
    );
}

#[test]
fn serve_refuses_a_bad_config_before_binding_any_port() {
    let port = free_port();
    let out = Command::new(workspace_bin("tollgate-ratelimit"))
        .args([
            "serve",
            "--set",
            "near_limit_ratio=7",
            "--set",
            "store.type=memory",
        ])
        .arg("--grpc-addr")
        .arg(format!("127.0.0.1:{port}"))
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("near_limit_ratio"));
    // Environment overrides are validated the same way.
    let out = Command::new(workspace_bin("tollgate-ratelimit"))
        .args(["check-config"])
        .env("TOLLGATE_NEAR_LIMIT_RATIO", "9")
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("near_limit_ratio: must be in"));
}

#[tokio::test]
async fn sigterm_reports_not_ready_drains_and_exits_zero() {
    let dir = tempfile::tempdir().unwrap();
    let (grpc, http) = (free_port(), free_port());
    let mut cmd = Command::new(workspace_bin("tollgate-ratelimit"));
    cmd.args(["serve", "--config", "deploy/config/ratelimit.yaml"])
        .args([
            "--grpc-addr",
            &format!("127.0.0.1:{grpc}"),
            "--http-addr",
            &format!("127.0.0.1:{http}"),
        ])
        .args(["--set", "server.shutdown_delay=1s"])
        .current_dir(project_root());
    let mut child =
        ChildProcess::spawn("tollgate-ratelimit", cmd, &dir.path().join("rl.log")).unwrap();
    let readyz = format!("http://127.0.0.1:{http}/readyz");
    let status =
        |url: String| async move { reqwest::get(&url).await.ok().map(|r| r.status().as_u16()) };
    wait_for("ready", Duration::from_secs(20), || {
        let s = status(readyz.clone());
        async move { (s.await == Some(200)).then_some(()) }
    })
    .await;
    let kill = Command::new("kill")
        .args(["-TERM", &child.pid().to_string()])
        .status()
        .unwrap();
    assert!(kill.success());
    wait_for(
        "not ready during the shutdown delay",
        Duration::from_secs(5),
        || {
            let s = status(readyz.clone());
            async move { (s.await == Some(503)).then_some(()) }
        },
    )
    .await;
    let exit = wait_for("exit", Duration::from_secs(15), || {
        let e = child.exited();
        async move { e }
    })
    .await;
    assert!(exit.success(), "{exit:?}\n{}", child.log());
}

/// The side listener over TLS; replacing the certificate files (as cert-manager or a Secret
/// update does) switches the served certificate without a restart.
#[tokio::test]
async fn tls_certificates_are_reloaded_when_their_files_change() {
    let dir = tempfile::tempdir().unwrap();
    let first = tollgate_tests::pki::generate(&dir.path().join("one").tap_mkdir(), "first-ca");
    let second = tollgate_tests::pki::generate(&dir.path().join("two").tap_mkdir(), "second-ca");
    let live = dir.path().join("live").tap_mkdir();
    std::fs::copy(&first.server_cert, live.join("tls.crt")).unwrap();
    std::fs::copy(&first.server_key, live.join("tls.key")).unwrap();
    let (grpc, http) = (free_port(), free_port());
    let cfg = tollgate_tests::stack::load_config::<tollgate_ratelimit::Config>(
        &tollgate_tests::stack::example("ratelimit.yaml"),
        &[
            format!(
                "limits.path={}",
                tollgate_tests::stack::example("limits").display()
            ),
            format!("server.grpc_addr=127.0.0.1:{grpc}"),
            format!("server.http_addr=127.0.0.1:{http}"),
            format!(
                "server.http_tls.cert_file={}",
                live.join("tls.crt").display()
            ),
            format!(
                "server.http_tls.key_file={}",
                live.join("tls.key").display()
            ),
        ],
    )
    .unwrap();
    let shutdown = tollgate_common::Shutdown::new();
    let _running = tollgate_ratelimit::start(cfg, shutdown.clone())
        .await
        .unwrap();
    let client_trusting = |ca: &std::path::Path| {
        let ca = reqwest::Certificate::from_pem(&std::fs::read(ca).unwrap()).unwrap();
        reqwest::Client::builder()
            .tls_built_in_root_certs(false)
            .add_root_certificate(ca)
            .build()
            .unwrap()
    };
    let url = format!("https://localhost:{http}/healthz");
    let ok_with = |client: reqwest::Client| {
        let url = url.clone();
        async move {
            client
                .get(&url)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false)
        }
    };
    assert!(ok_with(client_trusting(&first.ca_cert)).await);
    assert!(!ok_with(client_trusting(&second.ca_cert)).await);

    // Replace the files the way Kubernetes does: write new ones, then rename over.
    std::fs::copy(&second.server_key, live.join("tls.key.new")).unwrap();
    std::fs::copy(&second.server_cert, live.join("tls.crt.new")).unwrap();
    std::fs::rename(live.join("tls.key.new"), live.join("tls.key")).unwrap();
    std::fs::rename(live.join("tls.crt.new"), live.join("tls.crt")).unwrap();
    let second_ca = second.ca_cert.clone();
    wait_for(
        "the new certificate is served",
        Duration::from_secs(10),
        || {
            let ok = ok_with(client_trusting(&second_ca));
            async move { ok.await.then_some(()) }
        },
    )
    .await;
    assert!(!ok_with(client_trusting(&first.ca_cert)).await);
    shutdown.trigger();
}

trait TapMkdir {
    fn tap_mkdir(self) -> Self;
}

impl TapMkdir for std::path::PathBuf {
    fn tap_mkdir(self) -> Self {
        std::fs::create_dir_all(&self).unwrap();
        self
    }
}
