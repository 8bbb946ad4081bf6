//! The binaries as operators run them: `check-config` reports every error with file, line,
//! field and reason and exits non-zero; `serve` validates before binding anything; SIGTERM
//! drains and exits cleanly. Also: TLS certificates reloaded when their files change.

use std::process::Command;
use std::time::Duration;

use tollgate_tests::paths::{project_root, workspace_bin};
use tollgate_tests::process::{ChildProcess, free_port, wait_for};

#[test]
fn check_config_accepts_the_shipped_examples() {
    // The authz example takes its admin credential from the environment, as serve would.
    let token = (
        "TOLLGATE_ADMIN_TOKEN",
        "example-admin-credential-0123456789",
    );
    for (bin, config) in [
        ("tollgate-ratelimit", "ratelimit.yaml"),
        ("tollgate-authz", "authz.yaml"),
        // Single-call mode: its limits files (deploy/config/limits) are checked too.
        ("tollgate-authz", "authz-single-call.yaml"),
    ] {
        let out = Command::new(workspace_bin(bin))
            .args(["check-config", "--config"])
            .arg(format!("deploy/config/{config}"))
            .env(token.0, token.1)
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

/// Kubernetes service links and other tools' `TOLLGATE_*` variables do not stop either service:
/// each is ignored with one warning naming it (never its value).
#[tokio::test]
async fn variables_that_name_no_field_are_ignored_with_one_warning_each() {
    let ignored = [
        ("TOLLGATE_ADMIN_PORT", "tcp://10.96.0.12:9092"),
        ("TOLLGATE_PORT", "tcp://10.96.0.13:9001"),
        ("TOLLGATE_ADMIN_TOKEN_FILE", "/run/token"),
        ("TOLLGATE_ADMIN_URL", "http://127.0.0.1:9092"),
        ("TOLLGATE_AUTHZ_BIN", "/usr/bin/true"),
    ];
    let dir = tempfile::tempdir().unwrap();
    for bin in ["tollgate-authz", "tollgate-ratelimit"] {
        let (grpc, http) = (free_port(), free_port());
        let mut cmd = Command::new(workspace_bin(bin));
        cmd.args(["serve", "--set", "log.format=json"])
            .args(["--grpc-addr", &format!("127.0.0.1:{grpc}")])
            .args(["--http-addr", &format!("127.0.0.1:{http}")])
            .envs(ignored)
            .current_dir(dir.path());
        let child = ChildProcess::spawn(bin, cmd, &dir.path().join(format!("{bin}.log"))).unwrap();
        let readyz = format!("http://127.0.0.1:{http}/readyz");
        wait_for("ready", Duration::from_secs(20), || {
            let url = readyz.clone();
            async move {
                let s = reqwest::get(&url).await.ok()?.status();
                s.is_success().then_some(())
            }
        })
        .await;
        let log = child.log();
        for (name, value) in ignored {
            let lines = log
                .lines()
                .filter(|l| l.contains("ignoring an environment variable") && l.contains(name))
                .count();
            assert_eq!(lines, 1, "{bin}: {name}\n{log}");
            assert!(
                !log.contains(value),
                "{bin} logged the value of {name}\n{log}"
            );
        }
    }
}

/// Malformed overrides are refused with a clear error and exit 2, never a panic (101).
#[test]
fn malformed_overrides_are_clear_errors() {
    for (args, env, want) in [
        (
            &["--set", "foo"][..],
            None,
            "--set foo: expected PATH=VALUE",
        ),
        (&["--set", "=1"][..], None, "--set =1: no field path"),
        (&["--set", "server..grpc_addr=1"][..], None, "empty level"),
        (
            &[][..],
            Some(("TOLLGATE_SERVER__", "x")),
            "environment variable TOLLGATE_SERVER__: expected TOLLGATE_<FIELD>",
        ),
        (
            &[][..],
            Some(("TOLLGATE_SERVER__GRPC_ADDR", "nowhere")),
            "server.grpc_addr: invalid socket address syntax (from environment variable TOLLGATE_SERVER__GRPC_ADDR)",
        ),
    ] {
        for bin in ["tollgate-authz", "tollgate-ratelimit"] {
            for sub in ["serve", "check-config"] {
                let mut cmd = Command::new(workspace_bin(bin));
                cmd.arg(sub).args(args);
                if let Some((k, v)) = env {
                    cmd.env(k, v);
                }
                let out = cmd.output().unwrap();
                let err = String::from_utf8_lossy(&out.stderr);
                assert_eq!(out.status.code(), Some(2), "{bin} {sub} {args:?}: {err}");
                assert!(err.contains(want), "{bin} {sub} {args:?}: {err}");
            }
        }
    }
}

/// `check-config` refuses what `serve` refuses, with the same message: here an admin credential
/// from the environment that is too short.
#[test]
fn check_config_refuses_a_weak_admin_credential_like_serve() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = dir.path().join("authz.yaml");
    std::fs::write(
        &cfg,
        format!(
            "api_keys:\n  store: {{type: embedded, path: {}}}\nadmin:\n  addr: 127.0.0.1:0\n",
            dir.path().join("keys.redb").display()
        ),
    )
    .unwrap();
    let want = format!(
        "{}:3: admin: the environment variable TOLLGATE_ADMIN_TOKEN is shorter than 16 characters",
        cfg.display()
    );
    for sub in ["check-config", "serve"] {
        let out = Command::new(workspace_bin("tollgate-authz"))
            .args([sub, "--config"])
            .arg(&cfg)
            .env("TOLLGATE_ADMIN_TOKEN", "too-short")
            .output()
            .unwrap();
        let err = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{sub}: {err}");
        assert!(err.contains(&want), "{sub}: {err}");
    }
    assert!(!dir.path().join("keys.redb").exists(), "nothing was opened");
}

/// Text logs carry colour codes on a terminal only: not in a file, yes under a pseudo-terminal
/// (`script` runs the binary on one).
#[test]
fn text_logs_are_coloured_only_on_a_terminal() {
    let dir = tempfile::tempdir().unwrap();
    // A config error after logging starts is not needed: the usage of a bad listener address
    // gets logged as an error by serve, so serve on a port that is taken.
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = taken.local_addr().unwrap().to_string();
    let serve = [
        workspace_bin("tollgate-ratelimit").display().to_string(),
        "serve".into(),
        "--set".into(),
        "log.format=text".into(),
        "--grpc-addr".into(),
        addr,
    ];
    let to_file = dir.path().join("plain.log");
    let out = Command::new(&serve[0])
        .args(&serve[1..])
        .stdout(std::fs::File::create(&to_file).unwrap())
        .output()
        .unwrap();
    assert!(!out.status.success());
    let plain = std::fs::read_to_string(&to_file).unwrap();
    assert!(plain.contains("open file descriptor limit"), "{plain}");
    assert!(
        !plain.contains('\u{1b}'),
        "escape codes in a file: {plain:?}"
    );

    let typescript = dir.path().join("tty.log");
    let status = Command::new("script")
        .args(["-q", "-e", "-c", &serve.join(" ")])
        .arg(&typescript)
        .stdin(std::process::Stdio::null())
        .stdout(std::process::Stdio::null())
        .status()
        .unwrap();
    assert!(!status.success());
    let tty = std::fs::read_to_string(&typescript).unwrap();
    assert!(tty.contains("open file descriptor limit"), "{tty}");
    assert!(tty.contains('\u{1b}'), "no colour on a terminal: {tty:?}");
}

/// What the docs and the image say about the binaries holds: the Dockerfile exposes the default
/// ports, examples use the real key prefix and side-listener ports, and the documented
/// variables, metric labels and `/config` fields exist.
#[test]
fn docs_say_what_the_binaries_do() {
    let read = |p: &str| std::fs::read_to_string(project_root().join(p)).unwrap();
    let dockerfile = read("Dockerfile");
    let exposed: std::collections::BTreeSet<u16> = dockerfile
        .lines()
        .find_map(|l| l.strip_prefix("EXPOSE "))
        .expect("an EXPOSE line")
        .split_whitespace()
        .map(|p| p.parse().unwrap())
        .collect();
    let admin = tollgate_authz::admin::AdminConfig::default().addr.port();
    let defaults: std::collections::BTreeSet<u16> = [
        tollgate_authz::config::DEFAULT_GRPC_PORT,
        tollgate_authz::config::DEFAULT_HTTP_PORT,
        admin,
        tollgate_ratelimit::config::DEFAULT_GRPC_PORT,
        tollgate_ratelimit::config::DEFAULT_HTTP_PORT,
    ]
    .into();
    assert_eq!(
        exposed, defaults,
        "Dockerfile EXPOSE vs the binaries' defaults"
    );

    let prefix = tollgate_authz::apikey::format::PREFIX;
    for doc in ["bench/README.md", "docs/api-keys.md", "README.md"] {
        let text = read(doc);
        for (i, _) in text.match_indices("tg") {
            let word = &text[i..(i + prefix.len()).min(text.len())];
            if word.starts_with("tg_") {
                panic!("{doc}: a key example starts `tg_`, keys start `{prefix}`");
            }
        }
    }
    let observability = read("docs/observability.md");
    let urls = observability
        .match_indices("http://")
        .map(|(i, _)| &observability[i..])
        .map(|u| &u[..u.find(['`', ' ', ')']).unwrap_or(u.len())])
        .filter(|u| u.ends_with("/loglevel"));
    let mut seen = 0;
    for url in urls {
        seen += 1;
        let authority = url.trim_start_matches("http://").split('/').next().unwrap();
        let port: u16 = authority.rsplit(':').next().unwrap().parse().unwrap();
        assert!(
            [
                tollgate_authz::config::DEFAULT_HTTP_PORT,
                tollgate_ratelimit::config::DEFAULT_HTTP_PORT
            ]
            .contains(&port),
            "docs/observability.md: /loglevel on port {port}, not a side listener's default"
        );
    }
    assert!(seen > 0, "no /loglevel example found");
    let api_keys = read("docs/api-keys.md");
    for var in [
        "TOLLGATE_ADMIN_TOKEN",
        "TOLLGATE_ADMIN_TOKEN_FILE",
        "TOLLGATE_ADMIN_URL",
    ] {
        assert!(
            api_keys.contains(var),
            "docs/api-keys.md does not mention {var}"
        );
    }
    let ratelimit = read("docs/ratelimit.md");
    assert!(ratelimit.contains("limit=\"override\""));
    assert!(ratelimit.contains("`unlimited` (true for"));
}
