//! The gateway wiring itself: an allowed request reaches the upstream, a denial and a 429 reach
//! the client — in every shape (`Shape`: the ext_authz + ratelimit pair, single-call, and
//! in-process in Envoy's module) —,
//! each service's outage gives the failure mode the shipped Envoy configs choose, TLS/mTLS
//! between Envoy and the services, and graceful shutdown.

use std::time::Duration;

use tollgate_tests::echo::Echo;
use tollgate_tests::envoy::{Backends, Envoy, example_config};
use tollgate_tests::process::free_port;
use tollgate_tests::process::wait_for;
use tollgate_tests::stack::{Authz, Ratelimit, Shape, Stack};

/// One test per [`Shape`] of the async fn `$name(shape)`: `$name::pair`, `$name::single_call`,
/// `$name::in_process`.
macro_rules! each_shape {
    ($name:ident) => {
        mod $name {
            #[tokio::test]
            async fn pair() {
                super::$name(super::Shape::Pair).await
            }
            #[tokio::test]
            async fn single_call() {
                super::$name(super::Shape::SingleCall).await
            }
            #[tokio::test]
            async fn in_process() {
                super::$name(super::Shape::InProcess).await
            }
        }
    };
}

fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

each_shape!(allowed_request_reaches_the_upstream_without_spoofed_identity_headers);
async fn allowed_request_reaches_the_upstream_without_spoofed_identity_headers(shape: Shape) {
    let stack = Stack::example_shaped(shape).await.unwrap();
    let resp = client()
        .get(stack.url("/hello?x=1"))
        .header("x-tollgate-subject", "admin")
        .header("x-tollgate-plan", "gold")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    let echo: Echo = resp.json().await.unwrap();
    assert_eq!(echo.path, "/hello?x=1");
    assert_eq!(echo.method, "GET");
    // The client's copies of identity headers never reach the upstream.
    assert_eq!(echo.header("x-tollgate-subject"), None, "{echo:?}");
    assert_eq!(echo.header("x-tollgate-plan"), None, "{echo:?}");
    assert!(stack.envoy.stat(shape.allowed_stat()).await >= 1);
}

each_shape!(authz_denial_gives_the_client_its_status_and_body);
async fn authz_denial_gives_the_client_its_status_and_body(shape: Shape) {
    let stack = Stack::example_shaped(shape).await.unwrap();
    let resp = client().get(stack.url("/api/orders")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    let challenge = resp
        .headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string());
    // RFC 6750-style challenge naming the scheme the route accepts (API keys in the example).
    assert!(
        challenge.as_deref().is_some_and(|c| c.contains("realm=")),
        "{challenge:?}"
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert!(body.get("error").is_some(), "{body}");
    // The request never reached the upstream.
    assert_eq!(
        stack.envoy.stat("cluster.upstream.upstream_rq_total").await,
        0
    );
}

each_shape!(over_the_limit_gives_429_with_rate_limit_headers);
async fn over_the_limit_gives_429_with_rate_limit_headers(shape: Shape) {
    let stack = Stack::example_shaped(shape).await.unwrap();
    let c = client();
    // deploy/config/limits/gateway.yaml: /limited allows 5 a minute.
    for i in 0..5 {
        let r = c.get(stack.url("/limited")).send().await.unwrap();
        assert_eq!(r.status(), 200, "request {i}");
        if shape != Shape::Pair {
            // Within the limit, the client is told how much is left.
            let state = r.headers().get("ratelimit").map(|v| v.to_str().unwrap());
            let want = format!("\"demo-limited\";r={};", 4 - i);
            assert!(state.is_some_and(|s| s.starts_with(&want)), "{state:?}");
        }
    }
    let r = c.get(stack.url("/limited")).send().await.unwrap();
    assert_eq!(r.status(), 429);
    let h = r.headers();
    let retry_after: u64 = h
        .get("retry-after")
        .expect("Retry-After")
        .to_str()
        .unwrap()
        .parse()
        .unwrap();
    // Sliding window (the default): the earliest admission can be up to a window and a bit away.
    assert!((1..=120).contains(&retry_after), "{retry_after}");
    assert!(h.get("ratelimit-policy").is_some(), "{h:?}");
    assert!(h.get("ratelimit").is_some(), "{h:?}");
    assert_eq!(stack.envoy.stat(shape.over_limit_stat()).await, 1);
    assert_eq!(
        stack.envoy.stat("cluster.upstream.upstream_rq_total").await,
        5,
        "the denied request never reached the upstream"
    );
}

#[tokio::test]
async fn authz_down_denies_with_503() {
    let stack = Stack::example_without(false, true).await.unwrap();
    let r = client().get(stack.url("/hello")).send().await.unwrap();
    assert_eq!(r.status(), 503, "authz is a security control: fail closed");
    assert_eq!(
        stack.envoy.stat("cluster.upstream.upstream_rq_total").await,
        0
    );
}

#[tokio::test]
async fn single_call_authz_down_denies_with_503() {
    let upstream = tollgate_tests::echo::EchoUpstream::start().await;
    let envoy = Envoy::start_with(
        &Shape::SingleCall.envoy_config(),
        Backends {
            upstream: upstream.port(),
            authz: free_port(),
            ratelimit: free_port(),
        },
    )
    .await
    .unwrap();
    let r = client().get(envoy.url("/limited")).send().await.unwrap();
    assert_eq!(
        r.status(),
        503,
        "the limits are counted by authz: fail closed"
    );
}

#[tokio::test]
async fn ratelimit_down_lets_requests_through() {
    let stack = Stack::example_without(true, false).await.unwrap();
    let c = client();
    for _ in 0..7 {
        // More than /limited's 5: with the limiter down, nothing is limited.
        let r = c.get(stack.url("/limited")).send().await.unwrap();
        assert_eq!(r.status(), 200);
    }
    assert!(
        stack
            .envoy
            .stat("cluster.upstream.ratelimit.failure_mode_allowed")
            .await
            >= 7
    );
}

/// Envoy's clusters to both services over mTLS: the services require a client certificate from
/// the configured CA; Envoy presents one and verifies the services' certificates.
#[tokio::test]
async fn envoy_reaches_the_services_over_mtls_and_a_client_without_a_certificate_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let pki = tollgate_tests::pki::generate(dir.path(), "tollgate-test-ca");
    let tls = |prefix: &str| {
        vec![
            format!("{prefix}.cert_file={}", pki.server_cert.display()),
            format!("{prefix}.key_file={}", pki.server_key.display()),
            format!("{prefix}.client_ca_file={}", pki.ca_cert.display()),
        ]
    };
    let upstream = tollgate_tests::echo::EchoUpstream::start().await;
    let rl = Ratelimit::example(&tls("server.tls")).await.unwrap();
    let az = Authz::example(&tls("server.tls")).await.unwrap();
    let transport = format!(
        r#"    transport_socket:
      name: envoy.transport_sockets.tls
      typed_config:
        "@type": type.googleapis.com/envoy.extensions.transport_sockets.tls.v3.UpstreamTlsContext
        sni: localhost
        common_tls_context:
          alpn_protocols: [h2]
          tls_certificates:
          - certificate_chain: {{ filename: {cert} }}
            private_key: {{ filename: {key} }}
          validation_context:
            trusted_ca: {{ filename: {ca} }}
            match_typed_subject_alt_names:
            - san_type: DNS
              matcher: {{ exact: localhost }}
"#,
        cert = pki.client_cert.display(),
        key = pki.client_key.display(),
        ca = pki.ca_cert.display()
    );
    let config = with_cluster_transport(&example_config(), &transport);
    let envoy = Envoy::start_with(
        &config,
        Backends {
            upstream: upstream.port(),
            authz: az.grpc_port(),
            ratelimit: rl.grpc_port(),
        },
    )
    .await
    .unwrap();
    let c = client();
    let r = c.get(envoy.url("/hello")).send().await.unwrap();
    assert_eq!(r.status(), 200);
    for _ in 0..5 {
        assert_eq!(
            c.get(envoy.url("/limited")).send().await.unwrap().status(),
            200
        );
    }
    assert_eq!(
        c.get(envoy.url("/limited")).send().await.unwrap().status(),
        429
    );
    assert!(envoy.stat("cluster.tollgate_authz.ssl.handshake").await >= 1);

    // The same services, reached without a client certificate: refused, so authz fails closed.
    let no_cert = transport
        .lines()
        .filter(|l| {
            !l.contains("tls_certificates")
                && !l.contains("certificate_chain")
                && !l.contains("private_key")
        })
        .map(|l| format!("{l}\n"))
        .collect::<String>();
    let envoy2 = Envoy::start_with(
        &with_cluster_transport(&example_config(), &no_cert),
        Backends {
            upstream: upstream.port(),
            authz: az.grpc_port(),
            ratelimit: rl.grpc_port(),
        },
    )
    .await
    .unwrap();
    assert_eq!(
        c.get(envoy2.url("/hello")).send().await.unwrap().status(),
        503
    );
}

/// Adds `transport` (a `transport_socket:` block indented for a cluster) to the two Tollgate
/// clusters of the example config.
fn with_cluster_transport(config: &str, transport: &str) -> String {
    let mut out = String::new();
    let mut in_tollgate_cluster = false;
    for line in config.lines() {
        if let Some(name) = line.strip_prefix("  - name: ") {
            in_tollgate_cluster = name.starts_with("tollgate_");
        }
        if in_tollgate_cluster && line.starts_with("    typed_extension_protocol_options:") {
            out.push_str(transport);
        }
        out.push_str(line);
        out.push('\n');
    }
    assert_eq!(
        out.matches("UpstreamTlsContext").count(),
        2,
        "both clusters got TLS"
    );
    out
}

/// SIGTERM's sequence, driven through the Shutdown handle: not ready at once (readyz 503,
/// gRPC health NOT_SERVING) while still answering during the shutdown delay, then stopped.
#[tokio::test]
async fn shutdown_reports_not_ready_then_drains_and_stops() {
    let rl = Ratelimit::example(&["server.shutdown_delay=1s".to_string()])
        .await
        .unwrap();
    let http = rl.running.http_addr;
    let readyz = format!("http://{http}/readyz");
    assert_eq!(reqwest::get(&readyz).await.unwrap().status(), 200);
    rl.shutdown.trigger();
    wait_for("readyz 503", Duration::from_secs(5), || {
        let url = readyz.clone();
        async move {
            match reqwest::get(&url).await {
                Ok(r) if r.status() == 503 => Some(()),
                _ => None,
            }
        }
    })
    .await;
    // Still serving gRPC while not ready: Envoy's in-flight and late calls get answers.
    let mut grpc = tollgate_proto::ratelimit::RateLimitServiceClient::connect(format!(
        "http://{}",
        rl.running.grpc_addr
    ))
    .await
    .unwrap();
    let resp = grpc
        .should_rate_limit(tollgate_proto::ratelimit::RateLimitRequest {
            domain: "gateway".into(),
            descriptors: vec![tollgate_proto::ratelimit::descriptor([(
                "route", "limited",
            )])],
            hits_addend: 0,
        })
        .await
        .unwrap();
    assert_eq!(
        resp.get_ref().overall_code,
        tollgate_proto::ratelimit::Code::Ok as i32
    );
    // Then it stops by itself: the listeners close and the serving task ends.
    wait_for("listeners closed", Duration::from_secs(10), || async move {
        tokio::net::TcpStream::connect(http)
            .await
            .is_err()
            .then_some(())
    })
    .await;
    wait_for("service task finished", Duration::from_secs(10), || {
        let done = rl.running.handle.is_finished();
        async move { done.then_some(()) }
    })
    .await;
}

/// `Envoy::start_with` starts Envoy again on other ports when a port it picked was taken
/// before Envoy bound it; it recognises that case by Envoy's error, which this pins.
#[tokio::test]
async fn envoy_on_a_taken_port_fails_with_address_in_use() {
    let taken = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let port = taken.local_addr().unwrap().port();
    let admin = free_port();
    let ports = [
        (tollgate_tests::envoy::example_ports::LISTENER, port),
        (tollgate_tests::envoy::example_ports::ADMIN, admin),
    ]
    .into();
    let config = tollgate_tests::envoy::rewrite_ports(&example_config(), &ports)
        .replace("address: 0.0.0.0", "address: 127.0.0.1");
    let err = Envoy::start_raw(&config, port, admin)
        .await
        .expect_err("the listener's port is taken");
    assert!(
        format!("{err:#}").contains("Address already in use"),
        "{err:#}"
    );
}
