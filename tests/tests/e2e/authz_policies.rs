//! Policies people write elsewhere, through real Envoy: a CEL condition on a claim, a header and
//! the method; bearer tokens from a cookie and the query as well as `Authorization`; and
//! client-certificate identity on Envoy's mTLS example (`deploy/envoy/envoy-mtls.yaml`) with
//! a real TLS client holding certificates with SPIFFE IDs.

use std::collections::BTreeMap;

use serde_json::json;
use tollgate_tests::echo::{Echo, EchoUpstream};
use tollgate_tests::envoy::{Backends, Envoy, rewrite_ports};
use tollgate_tests::issuer::{AUDIENCE, ISSUER, Issuer};
use tollgate_tests::paths::project_root;
use tollgate_tests::process::free_port;
use tollgate_tests::stack::{Authz, Ratelimit, load_config};

/// The CEL rule, as docs/authz.md shows it.
const CEL_POLICY: &str = r#"
policy:
  rules:
    - name: orders
      path: {prefix: /orders}
      conditions:
        - cel: request.method == "GET" && request.headers["x-org"] == claims.org && "orders:read" in identity.scopes
    - name: api
      path: {prefix: /}
headers:
  remove_credential: true
"#;

#[tokio::test]
async fn cel_conditions_and_token_sources_through_envoy() {
    let issuer = Issuer::start(&["k"]).await;
    let dir = tempfile::tempdir().unwrap();
    let jwt = json!({"issuers": [{
        "issuer": ISSUER,
        "jwks_url": issuer.jwks_url(),
        "audiences": [AUDIENCE],
        "token_sources": [
            {"header": "authorization", "prefix": "Bearer "},
            {"cookie": "session"},
            {"query": "access_token"},
        ],
    }]});
    let file = dir.path().join("authz.yaml");
    std::fs::write(
        &file,
        format!("log: {{format: text, level: warn}}\njwt: {jwt}\n{CEL_POLICY}"),
    )
    .unwrap();
    let authz = Authz::start(load_config(&file, &[]).unwrap())
        .await
        .unwrap();
    let ratelimit = Ratelimit::example(&[]).await.unwrap();
    let upstream = EchoUpstream::start().await;
    let envoy = Envoy::start_example(Backends {
        upstream: upstream.port(),
        authz: authz.grpc_port(),
        ratelimit: ratelimit.grpc_port(),
    })
    .await
    .unwrap();
    let client = reqwest::Client::new();
    let acme = issuer.token("k", "alice", json!({"org": "acme", "scope": "orders:read"}));
    let bearer = format!("Bearer {acme}");

    // The CEL rule: claim + header + method.
    let send = |method: reqwest::Method, org: &str| {
        client
            .request(method, envoy.url("/orders/7"))
            .header("authorization", &bearer)
            .header("x-org", org)
            .send()
    };
    let r = send(reqwest::Method::GET, "acme").await.unwrap();
    assert_eq!(r.status(), 200);
    let echo: Echo = r.json().await.unwrap();
    assert_eq!(echo.header("x-tollgate-subject"), Some("alice"));
    assert_eq!(echo.header("authorization"), None, "remove_credential");
    for (method, org) in [
        (reqwest::Method::GET, "globex"),
        (reqwest::Method::DELETE, "acme"),
    ] {
        let r = send(method.clone(), org).await.unwrap();
        assert_eq!(r.status(), 403, "{method} with x-org {org}");
        assert_eq!(
            r.headers()["www-authenticate"],
            "Bearer realm=\"tollgate\", error=\"insufficient_scope\""
        );
    }
    let no_scope = issuer.token("k", "bob", json!({"org": "acme", "scope": "orders:write"}));
    let r = client
        .get(envoy.url("/orders/7"))
        .bearer_auth(&no_scope)
        .header("x-org", "acme")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 403);

    // A token from a cookie: allowed, and cut out of the Cookie header the upstream sees.
    let r = client
        .get(envoy.url("/api/x"))
        .header("cookie", format!("theme=dark; session={acme}"))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Echo = r.json().await.unwrap();
    assert_eq!(echo.header("x-tollgate-subject"), Some("alice"));
    assert_eq!(echo.header("cookie"), Some("theme=dark"));

    // From the query: allowed, and the parameter never reaches the upstream.
    let r = client
        .get(envoy.url(&format!("/api/x?page=2&access_token={acme}")))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Echo = r.json().await.unwrap();
    assert_eq!(echo.path, "/api/x?page=2");

    // In two places: refused, whichever is right.
    let r = client
        .get(envoy.url(&format!("/api/x?access_token={acme}")))
        .header("authorization", &bearer)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 400);
    assert_eq!(
        r.headers()["www-authenticate"],
        "Bearer realm=\"tollgate\", error=\"invalid_request\""
    );
    // A header the issuer does not list is not looked at.
    let r = client
        .get(envoy.url("/api/x"))
        .header("x-token", &acme)
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 401);
}

/// The SPIFFE IDs of the test's client certificates.
const WEB: &str = "spiffe://acme.test/ns/web";
const DB: &str = "spiffe://acme.test/ns/db";
const EVIL: &str = "spiffe://evil.test/ns/web";

const MTLS_POLICY: &str = r#"
log: {format: text, level: warn}
mtls:
  trust_domains: [acme.test]
policy:
  rules:
    - name: orders
      path: {prefix: /orders}
      identity: [mtls]
      conditions:
        - claim: subject
          equals: spiffe://acme.test/ns/web
    - name: mesh
      path: {prefix: /}
      identity: [mtls]
      conditions:
        - cel: identity.cert.spiffe_id.startsWith("spiffe://acme.test/")
"#;

#[tokio::test]
async fn client_certificates_through_envoy() {
    let dir = tempfile::tempdir().unwrap();
    let (pki, clients) = tollgate_tests::pki::generate_with_clients(
        dir.path(),
        "tollgate-clients-ca",
        &["localhost", "127.0.0.1"],
        &[WEB, DB, EVIL],
    );
    let file = dir.path().join("authz.yaml");
    std::fs::write(&file, MTLS_POLICY).unwrap();
    let authz = Authz::start(load_config(&file, &[]).unwrap())
        .await
        .unwrap();
    let upstream = EchoUpstream::start().await;
    let (port, admin) = (free_port(), free_port());
    let ports = BTreeMap::from([
        (10443, port),
        (9901, admin),
        (8000, upstream.port()),
        (9001, authz.grpc_port()),
    ]);
    let shipped =
        std::fs::read_to_string(project_root().join("deploy/envoy/envoy-mtls.yaml")).unwrap();
    let config = rewrite_ports(&shipped, &ports)
        .replace("address: 0.0.0.0", "address: 127.0.0.1")
        .replace(
            "/etc/tollgate/tls/server.pem",
            &pki.server_cert.display().to_string(),
        )
        .replace(
            "/etc/tollgate/tls/server.key",
            &pki.server_key.display().to_string(),
        )
        .replace(
            "/etc/tollgate/tls/clients-ca.pem",
            &pki.ca_cert.display().to_string(),
        );
    let _envoy = Envoy::start_raw(&config, port, admin).await.unwrap();

    let ca = reqwest::Certificate::from_pem(&std::fs::read(&pki.ca_cert).unwrap()).unwrap();
    let client_for = |cert: Option<&(std::path::PathBuf, std::path::PathBuf)>| {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(ca.clone());
        if let Some((c, k)) = cert {
            let mut pem = std::fs::read(c).unwrap();
            pem.extend(std::fs::read(k).unwrap());
            b = b.identity(reqwest::Identity::from_pem(&pem).unwrap());
        }
        b.build().unwrap()
    };
    let url = |path: &str| format!("https://localhost:{port}{path}");
    let get = |client: reqwest::Client, path: String| async move {
        client
            .get(path)
            // A client's own identity header: always replaced.
            .header("x-tollgate-subject", "spiffe://acme.test/ns/web")
            .send()
            .await
            .unwrap()
    };

    let web = client_for(Some(&clients[0]));
    let r = get(web.clone(), url("/orders/1")).await;
    assert_eq!(r.status(), 200);
    let echo: Echo = r.json().await.unwrap();
    assert_eq!(echo.header("x-tollgate-subject"), Some(WEB));
    assert_eq!(echo.header("x-tollgate-auth-method"), Some("mtls"));
    assert_eq!(
        echo.headers.get("x-tollgate-subject").map(Vec::len),
        Some(1)
    );

    let db = client_for(Some(&clients[1]));
    assert_eq!(get(db.clone(), url("/orders/1")).await.status(), 403);
    assert_eq!(
        get(db, url("/other")).await.status(),
        200,
        "the CEL rule takes any ID of the trust domain"
    );
    let evil = client_for(Some(&clients[2]));
    assert_eq!(
        get(evil, url("/other")).await.status(),
        401,
        "another trust domain, though signed by the listener's CA"
    );
    let r = get(client_for(None), url("/orders/1")).await;
    assert_eq!(r.status(), 401);
    assert!(r.headers().get("www-authenticate").is_none());
}
