//! What the shipped HTTP ext_authz config (`deploy/envoy/envoy-http-authz.yaml`) lets through,
//! each way, seen on the wire: a recording check service stands where tollgate-authz would, so
//! the test reads exactly the check request real Envoy sends (the client's method, path and
//! Host; only the allowed headers; the trusted client address, never the client's word for it)
//! and which parts of an answer real Envoy acts on (the identity headers, the removals, never
//! another header; on a denial the status, body, challenge and the allowed headers only).
//! That tollgate-authz answers these check requests as it answers gRPC Checks is the flavour
//! tests' job (authz, authz_plans, trust).

use std::collections::BTreeMap;
use std::sync::{Arc, Mutex};

use axum::http::{HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use tollgate_tests::echo::{Echo, EchoUpstream};
use tollgate_tests::envoy::{
    Backends, Envoy, example_http_authz_config, example_ports, rewrite_ports,
};
use tollgate_tests::process::free_port;

use crate::authz::client;

/// One check request as the check service received it.
#[derive(Debug, Clone)]
struct Seen {
    method: String,
    path_and_query: String,
    headers: BTreeMap<String, Vec<String>>,
    body: Vec<u8>,
}

impl Seen {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .get(name)
            .and_then(|v| v.first())
            .map(String::as_str)
    }
}

/// A check service that records every check and answers as a decision would: paths under
/// `/check/deny` are denied, every other one allowed, each answer carrying headers Envoy must
/// not pass on.
struct Recorder {
    port: u16,
    seen: Arc<Mutex<Vec<Seen>>>,
    _task: tokio::task::JoinHandle<()>,
}

impl Recorder {
    async fn start() -> Recorder {
        let seen = Arc::new(Mutex::new(Vec::new()));
        let log = seen.clone();
        let app = axum::Router::new().fallback(move |req: axum::extract::Request| {
            let log = log.clone();
            async move {
                let (parts, body) = req.into_parts();
                let body = axum::body::to_bytes(body, 1 << 20).await.unwrap().to_vec();
                let path_and_query = parts.uri.path_and_query().unwrap().to_string();
                if path_and_query == "/readyz" {
                    return StatusCode::OK.into_response();
                }
                let mut headers = BTreeMap::<String, Vec<String>>::new();
                for (k, v) in &parts.headers {
                    headers
                        .entry(k.to_string())
                        .or_default()
                        .push(v.to_str().unwrap_or("<bytes>").to_string());
                }
                let deny = path_and_query.starts_with("/check/deny");
                log.lock().unwrap().push(Seen {
                    method: parts.method.to_string(),
                    path_and_query,
                    headers,
                    body,
                });
                answer(deny)
            }
        });
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let port = listener.local_addr().unwrap().port();
        let task = tokio::spawn(async move {
            axum::serve(listener, app).await.unwrap();
        });
        Recorder {
            port,
            seen,
            _task: task,
        }
    }

    fn last(&self) -> Seen {
        self.seen
            .lock()
            .unwrap()
            .last()
            .cloned()
            .expect("a check request")
    }
}

fn answer(deny: bool) -> Response {
    let mut h = HeaderMap::new();
    let mut put = |k: &'static str, v: &'static str| {
        h.append(k, HeaderValue::from_static(v));
    };
    put("x-tollgate-metadata-plan", "gold");
    put("x-internal-note", "not for anyone");
    put("set-cookie", "session=from-authz");
    if deny {
        put("www-authenticate", "Bearer realm=\"tollgate\"");
        put("content-type", "application/json");
        put("cache-control", "no-store");
        put("x-tollgate-subject", "alice");
        return (StatusCode::UNAUTHORIZED, h, "{\"error\":\"unauthorized\"}").into_response();
    }
    put("x-tollgate-subject", "alice");
    put("x-tollgate-plan", "gold");
    put(
        "x-envoy-auth-headers-to-remove",
        "x-tollgate-tenant, x-remove-me",
    );
    (StatusCode::OK, h).into_response()
}

/// Real Envoy on the shipped HTTP config (`xff_num_trusted_hops` as given) before `recorder`.
async fn envoy(recorder: &Recorder, upstream: &EchoUpstream, trusted_hops: u32) -> Envoy {
    let config = example_http_authz_config().replace(
        "xff_num_trusted_hops: 0",
        &format!("xff_num_trusted_hops: {trusted_hops}"),
    );
    let ports = [
        (example_ports::AUTHZ_HTTP, recorder.port),
        (example_ports::AUTHZ_SIDE, recorder.port),
    ]
    .into();
    let backends = Backends {
        upstream: upstream.port(),
        authz: free_port(),
        // No rate-limit service: the shipped config allows when it cannot answer.
        ratelimit: free_port(),
    };
    Envoy::start_with(&rewrite_ports(&config, &ports), backends)
        .await
        .unwrap()
}

#[tokio::test]
async fn the_check_request_carries_the_request_and_only_what_the_config_allows() {
    let recorder = Recorder::start().await;
    let upstream = EchoUpstream::start().await;
    let envoy = envoy(&recorder, &upstream, 0).await;
    let r = client()
        .post(envoy.url("/orders/7?page=2"))
        .header("host", "api.example.com")
        .header("authorization", "Bearer t0ken")
        .header("x-api-key", "tgk_k3y")
        .header("x-tollgate-source-address", "6.6.6.6")
        .header("x-forwarded-for", "7.7.7.7")
        .header("x-envoy-external-address", "8.8.8.8")
        .header("x-tollgate-subject", "root")
        .header("x-tollgate-tenant", "everyone")
        .header("x-remove-me", "client value")
        .header("cookie", "a=b")
        .header("x-custom", "c")
        .body("a body the check never sees")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let client_headers = r.headers().clone();
    let e: Echo = r.json().await.unwrap();

    let c = recorder.last();
    assert_eq!(c.method, "POST", "the client's method");
    assert_eq!(
        c.path_and_query, "/check/orders/7?page=2",
        "prefix + path + query"
    );
    assert_eq!(c.header("host"), Some("api.example.com"));
    assert_eq!(c.header("authorization"), Some("Bearer t0ken"));
    assert_eq!(c.header("x-api-key"), Some("tgk_k3y"));
    assert!(c.header("x-request-id").is_some(), "Envoy's request id");
    assert!(c.body.is_empty(), "no body");
    // The trusted address is the connection's peer, whatever the client says.
    assert_eq!(
        c.headers.get("x-tollgate-source-address"),
        Some(&vec!["127.0.0.1".to_string()]),
        "{c:?}"
    );
    for absent in [
        "cookie",
        "x-custom",
        "x-forwarded-for",
        "x-envoy-external-address",
        "x-tollgate-subject",
        "x-tollgate-tenant",
        "x-remove-me",
    ] {
        assert_eq!(c.header(absent), None, "{absent} reached the check: {c:?}");
    }

    // Upstream: the identity headers replace the client's; the named ones are removed;
    // nothing else of the answer arrives.
    assert_eq!(e.header("x-tollgate-subject"), Some("alice"), "{e:?}");
    assert_eq!(e.header("x-tollgate-plan"), Some("gold"));
    for absent in [
        "x-tollgate-tenant",
        "x-remove-me",
        "x-envoy-auth-headers-to-remove",
        "x-tollgate-metadata-plan",
        "x-internal-note",
        "set-cookie",
        "x-tollgate-source-address",
    ] {
        assert_eq!(
            e.header(absent),
            None,
            "{absent} reached the upstream: {e:?}"
        );
    }
    // The client's response carries nothing of the answer either.
    for absent in [
        "x-tollgate-metadata-plan",
        "x-internal-note",
        "x-tollgate-subject",
    ] {
        assert!(
            client_headers.get(absent).is_none(),
            "{absent}: {client_headers:?}"
        );
    }
    assert_ne!(
        client_headers.get("set-cookie").map(|v| v.as_bytes()),
        Some(&b"session=from-authz"[..])
    );
}

#[tokio::test]
async fn a_denial_reaches_the_client_with_its_challenge_and_nothing_else() {
    let recorder = Recorder::start().await;
    let upstream = EchoUpstream::start().await;
    let envoy = envoy(&recorder, &upstream, 0).await;
    let r = client().get(envoy.url("/deny/x")).send().await.unwrap();
    assert_eq!(r.status(), 401);
    let h = r.headers().clone();
    assert_eq!(h["www-authenticate"], "Bearer realm=\"tollgate\"");
    assert_eq!(h["content-type"], "application/json");
    assert_eq!(h["cache-control"], "no-store");
    for absent in [
        "x-tollgate-metadata-plan",
        "x-internal-note",
        "set-cookie",
        "x-tollgate-subject",
    ] {
        assert!(
            h.get(absent).is_none(),
            "{absent} reached the client: {h:?}"
        );
    }
    assert_eq!(r.text().await.unwrap(), "{\"error\":\"unauthorized\"}");
    assert_eq!(envoy.stat("cluster.upstream.upstream_rq_total").await, 0);
}

#[tokio::test]
async fn behind_a_trusted_proxy_the_address_is_the_one_envoy_settles_on() {
    let recorder = Recorder::start().await;
    let upstream = EchoUpstream::start().await;
    let envoy = envoy(&recorder, &upstream, 1).await;
    // One trusted hop: the address the load balancer in front appended, never the client's
    // own header of that name.
    let r = client()
        .get(envoy.url("/x"))
        .header("x-forwarded-for", "198.51.100.1, 203.0.113.9")
        .header("x-tollgate-source-address", "6.6.6.6")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let c = recorder.last();
    assert_eq!(
        c.headers.get("x-tollgate-source-address"),
        Some(&vec!["203.0.113.9".to_string()]),
        "{c:?}"
    );
}
