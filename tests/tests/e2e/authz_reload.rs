//! Hot reload of tollgate-authz's policy seen through real Envoy: an edited config file changes
//! the answers, a broken one keeps the last good policy (and counts the error on `/metrics`),
//! and a new file renamed over the config is picked up too.

use std::path::Path;
use std::time::Duration;

use tollgate_common::Shutdown;
use tollgate_common::config::{Sources, load};
use tollgate_tests::echo::EchoUpstream;
use tollgate_tests::envoy::{Backends, Envoy};
use tollgate_tests::process::wait_for;
use tollgate_tests::stack::{Ratelimit, example, wait_ready};

use crate::authz::client;

/// The shipped config with a rule that makes `/hello` need a credential.
fn with_hello_rule(shipped: &str) -> String {
    let marker = "    # Everything else is public.\n";
    assert!(shipped.contains(marker), "the shipped authz.yaml changed");
    shipped.replace(
        marker,
        &format!("    - name: hello\n      path: {{ prefix: /hello }}\n{marker}"),
    )
}

async fn status(envoy: &Envoy, path: &str) -> u16 {
    client()
        .get(envoy.url(path))
        .send()
        .await
        .unwrap()
        .status()
        .as_u16()
}

async fn wait_status(envoy: &Envoy, path: &str, want: u16, what: &str) {
    wait_for(what, Duration::from_secs(10), || async move {
        (status(envoy, path).await == want).then_some(())
    })
    .await
}

/// A counter without labels from the service's `/metrics` (0 when absent).
async fn counter(http: std::net::SocketAddr, name: &str) -> u64 {
    let text = client()
        .get(format!("http://{http}/metrics"))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    text.lines()
        .find_map(|l| l.strip_prefix(&format!("{name} ")))
        .map(|v| v.trim().parse::<f64>().unwrap() as u64)
        .unwrap_or(0)
}

/// Writes `text` beside `path` and renames it onto `path`, as editors and config tools do.
fn rename_over(path: &Path, text: &str) {
    let tmp = path.with_extension("yaml.tmp");
    std::fs::write(&tmp, text).unwrap();
    std::fs::rename(&tmp, path).unwrap();
}

#[tokio::test]
async fn policy_edits_apply_through_envoy_and_a_broken_file_keeps_the_last_good_one() {
    tollgate_tests::init_test_logging();
    // The config alone in its directory; the key store and admin credential elsewhere.
    let conf_dir = tempfile::tempdir().unwrap();
    let state = tempfile::tempdir().unwrap();
    let path = conf_dir.path().join("authz.yaml");
    let shipped = std::fs::read_to_string(example("authz.yaml")).unwrap();
    std::fs::write(&path, &shipped).unwrap();
    let token_file = state.path().join("admin-token");
    std::fs::write(&token_file, "reload-test-admin-credential-0123456789").unwrap();
    let sources = Sources {
        file: Some(path.clone()),
        sets: vec![
            "server.grpc_addr=127.0.0.1:0".into(),
            "server.http_addr=127.0.0.1:0".into(),
            "server.shutdown_delay=0s".into(),
            "server.drain_timeout=5s".into(),
            format!(
                "api_keys.store.path={}",
                state.path().join("keys.redb").display()
            ),
            format!("admin.token_file={}", token_file.display()),
            "admin.addr=127.0.0.1:0".into(),
        ],
        ..Default::default()
    };
    let config = load::<tollgate_authz::Config>(&sources).unwrap();
    let shutdown = Shutdown::new();
    let running = tollgate_authz::start_with_reload(config, sources, shutdown.clone())
        .await
        .unwrap();
    wait_ready(running.http_addr).await;
    let http = running.http_addr;

    let upstream = EchoUpstream::start().await;
    let ratelimit = Ratelimit::example(&[]).await.unwrap();
    let envoy = Envoy::start_example(Backends {
        upstream: upstream.port(),
        authz: running.grpc_addr.port(),
        ratelimit: ratelimit.grpc_port(),
    })
    .await
    .unwrap();

    assert_eq!(status(&envoy, "/hello").await, 200);
    let reloads = counter(http, "tollgate_authz_config_reloads_total").await;

    // An edit in place: /hello now needs a credential.
    let closed = with_hello_rule(&shipped);
    std::fs::write(&path, &closed).unwrap();
    wait_status(&envoy, "/hello", 401, "/hello to need a credential").await;
    assert_eq!(status(&envoy, "/other").await, 200);
    assert!(counter(http, "tollgate_authz_config_reloads_total").await > reloads);

    // A typo: refused, counted, and the last good policy stays in force.
    let errors = counter(http, "tollgate_authz_config_reload_errors_total").await;
    let broken = closed.replace(
        "      path: { prefix: /hello }\n",
        "      path: { prefix: /hello }\n      colour: red\n",
    );
    assert_ne!(broken, closed);
    std::fs::write(&path, &broken).unwrap();
    wait_for(
        "the reload error on /metrics",
        Duration::from_secs(10),
        || async move {
            (counter(http, "tollgate_authz_config_reload_errors_total").await > errors)
                .then_some(())
        },
    )
    .await;
    assert_eq!(status(&envoy, "/hello").await, 401, "last good policy kept");
    assert_eq!(status(&envoy, "/other").await, 200, "last good policy kept");
    let reloader = running.reloader.as_ref().expect("started with reload");
    let refused = reloader.reload().unwrap_err();
    assert!(
        refused.0[0].field.contains("rules[2]") && refused.0[0].reason.contains("colour"),
        "{refused}"
    );

    // A new file renamed over the config (a new inode) is seen as well.
    rename_over(&path, &shipped);
    wait_status(&envoy, "/hello", 200, "the renamed-over config").await;
    let reloaded = reloader.reload().unwrap();
    assert!(reloaded.needs_restart.is_empty(), "{reloaded:?}");

    shutdown.trigger();
    tokio::time::timeout(Duration::from_secs(10), running.handle)
        .await
        .unwrap()
        .unwrap()
        .unwrap();
}
