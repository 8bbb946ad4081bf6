//! Policies people write elsewhere, through real Envoy: a CEL condition on a claim, a header and
//! the method; bearer tokens from a cookie and the query as well as `Authorization`; and
//! client-certificate identity on Envoy's mTLS example (`deploy/envoy/envoy-mtls.yaml`) with
//! a real TLS client holding certificates with SPIFFE IDs, over both ext_authz flavours and in
//! process (`deploy/envoy/envoy-module-mtls.yaml`).

use std::collections::BTreeMap;

use serde_json::json;
use tollgate_tests::echo::{Echo, EchoUpstream};
use tollgate_tests::envoy::{Backends, Envoy, rewrite_ports};
use tollgate_tests::issuer::{AUDIENCE, ISSUER, Issuer};
use tollgate_tests::paths::project_root;
use tollgate_tests::process::free_port;
use tollgate_tests::stack::{Authz, Flavour, Ratelimit, load_config};

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
async fn client_certificates_through_envoy_grpc() {
    client_certificates_through_envoy(Shape::Service(Flavour::Grpc)).await;
}

#[tokio::test]
async fn client_certificates_through_envoy_http() {
    client_certificates_through_envoy(Shape::Service(Flavour::Http)).await;
}

#[tokio::test]
async fn client_certificates_in_process() {
    client_certificates_through_envoy(Shape::Module).await;
}

/// Who decides on the certificate: tollgate-authz over an ext_authz flavour, or the module
/// (`deploy/envoy/envoy-module-mtls.yaml`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Shape {
    Service(Flavour),
    Module,
}

impl Shape {
    fn name(self) -> &'static str {
        match self {
            Shape::Service(f) => f.name(),
            Shape::Module => "module",
        }
    }
}

/// The module's mTLS example loading the authz config `authz` (a file).
fn module_mtls_config(authz: &std::path::Path, ports: &BTreeMap<u16, u16>) -> String {
    let text = tollgate_tests::envoy::example_file("envoy-module-mtls.yaml");
    let shipped = "config: /etc/tollgate/authz.yaml";
    assert!(text.contains(shipped), "the example moved");
    let text = text.replace(shipped, &format!("config: {}", authz.display()));
    rewrite_ports(&text, ports).replace("address: 0.0.0.0", "address: 127.0.0.1")
}

/// The Envoy config of `flavour` terminating mTLS: `deploy/envoy/envoy-mtls.yaml` for gRPC;
/// for HTTP, the shipped HTTP-mode config with envoy-mtls.yaml's TLS settings put on its
/// listener (what that file's comments tell an operator to do).
fn mtls_config(flavour: Flavour, authz: &Authz, ports: &BTreeMap<u16, u16>) -> String {
    let mtls =
        std::fs::read_to_string(project_root().join("deploy/envoy/envoy-mtls.yaml")).unwrap();
    let config = match flavour {
        Flavour::Grpc => mtls,
        Flavour::Http => {
            let start = mtls
                .find("    - transport_socket:\n")
                .expect("the TLS settings moved");
            let end = start + mtls[start..].find("      filters:\n").unwrap();
            let tls = mtls[start..end].to_string();
            let http = flavour.envoy_config(authz, &[]);
            let chain = "    filter_chains:\n    - filters:\n";
            assert!(http.contains(chain), "the HTTP-mode listener moved");
            http.replacen(
                chain,
                &format!("    filter_chains:\n{tls}      filters:\n"),
                1,
            )
        }
    };
    rewrite_ports(&config, ports).replace("address: 0.0.0.0", "address: 127.0.0.1")
}

/// An URL-encoded PEM, as Envoy forwards a certificate.
fn url_encoded(pem: &[u8]) -> String {
    pem.iter()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (*b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

async fn client_certificates_through_envoy(shape: Shape) {
    let dir = tempfile::tempdir().unwrap();
    let (pki, clients) = tollgate_tests::pki::generate_with_clients(
        dir.path(),
        "tollgate-clients-ca",
        &["localhost", "127.0.0.1"],
        &[WEB, DB, EVIL],
    );
    let file = dir.path().join("authz.yaml");
    std::fs::write(&file, MTLS_POLICY).unwrap();
    let upstream = EchoUpstream::start().await;
    let (port, admin) = (free_port(), free_port());
    let mut ports = BTreeMap::from([(10443, port), (9901, admin), (8000, upstream.port())]);
    let tls_files = |config: String| {
        config
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
            )
    };
    let module_env = tollgate_tests::module::module_dir();
    let module_env = [("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module_env.as_os_str())];
    let (_authz, config, env): (_, _, &[(&str, &std::ffi::OsStr)]) = match shape {
        Shape::Service(flavour) => {
            let authz = Authz::start(load_config(&file, &flavour.authz_sets()).unwrap())
                .await
                .unwrap();
            // The HTTP-mode config's listener is on 10000 and rate-limits (no limiter here:
            // its failure mode lets requests through).
            ports.extend([
                (10000, port),
                (9001, authz.grpc_port()),
                (8081, free_port()),
            ]);
            let config = mtls_config(flavour, &authz, &ports);
            (Some(authz), config, &[])
        }
        Shape::Module => (None, module_mtls_config(&file, &ports), &module_env),
    };
    let config = tls_files(config);
    let envoy = Envoy::start_raw_with_env(&config, port, admin, env)
        .await
        .unwrap();

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

    // A client naming a certificate it does not hold, in the header HTTP mode carries the
    // verified one in: it is the certificate of its connection (or none) that counts, and
    // the upstream never sees the forged header.
    let forged = url_encoded(&std::fs::read(&clients[0].0).unwrap());
    let forge = |client: reqwest::Client, path: &str| {
        client
            .get(url(path))
            .header("x-tollgate-peer-certificate", &forged)
            .send()
    };
    let r = forge(client_for(None), "/orders/1").await.unwrap();
    assert_eq!(r.status(), 401, "{}", shape.name());
    let r = forge(client_for(Some(&clients[1])), "/other")
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let echo: Echo = r.json().await.unwrap();
    assert_eq!(echo.header("x-tollgate-subject"), Some(DB));
    if shape != Shape::Service(Flavour::Grpc) {
        assert_eq!(echo.header("x-tollgate-peer-certificate"), None);
    }
    if shape != Shape::Module {
        return;
    }

    // Without the header_mutation filter (an operator who dropped it), the client's header
    // reaches the module: it is still not believed, since it is not the certificate of the
    // connection, and the upstream still never sees it.
    drop(envoy);
    let filter = config
        .find("          - name: envoy.filters.http.header_mutation\n")
        .expect("the example's header_mutation filter");
    let next = filter
        + config[filter..]
            .find("          - name: envoy.filters.http.dynamic_modules")
            .unwrap();
    let bare = format!("{}{}", &config[..filter], &config[next..]);
    let _envoy = Envoy::start_raw_with_env(&bare, port, admin, env)
        .await
        .unwrap();
    let r = forge(client_for(None), "/orders/1").await.unwrap();
    assert_eq!(r.status(), 401, "no certificate on the connection");
    let r = forge(client_for(Some(&clients[1])), "/other")
        .await
        .unwrap();
    assert_eq!(r.status(), 401, "another certificate than the connection's");
}

/// The chart's values for a gateway that takes client certificates, as docs/authz.md shows
/// them (the indented block after "`envoy.clientCertificates` makes").
fn documented_helm_mtls_values() -> String {
    let doc = std::fs::read_to_string(project_root().join("docs/authz.md")).unwrap();
    let at = doc
        .find("`envoy.clientCertificates` makes")
        .expect("the Helm mTLS docs");
    let start = at + doc[at..].find("```yaml\n").unwrap() + "```yaml\n".len();
    let end = start + doc[start..].find("```").unwrap();
    doc[start..end]
        .lines()
        .map(|l| l.strip_prefix("  ").unwrap_or(l))
        .collect::<Vec<_>>()
        .join("\n")
}

/// What the test adds: one process of each, no Redis, no API keys.
const HELM_TEST_VALUES: &str = r#"
redis: {mode: none}
ratelimit: {enabled: false}
envoy: {replicas: 1}
authz:
  replicas: 1
  apiKeys: {enabled: false}
  admin: {enabled: false}
"#;

/// `envoy.clientCertificates` in a Helm install: the rendered Envoy serves TLS with the
/// Secret's certificate, verifies client certificates against the CA Secret and forwards them
/// (include_peer_certificate), and the rendered tollgate-authz has its `mtls` section; both
/// run for real, with real TLS clients.
#[tokio::test]
async fn the_helm_chart_takes_client_certificates() {
    use crate::helm::{EnvoyPorts, listen_args, loopback_envoy, render};
    let dir = tempfile::tempdir().unwrap();
    let (pki, clients) = tollgate_tests::pki::generate_with_clients(
        dir.path(),
        "tollgate-clients-ca",
        &["localhost", "127.0.0.1"],
        &[WEB, DB, EVIL],
    );
    let (values, test_values) = (dir.path().join("values.yaml"), dir.path().join("test.yaml"));
    std::fs::write(&values, documented_helm_mtls_values()).unwrap();
    std::fs::write(&test_values, HELM_TEST_VALUES).unwrap();
    let read = |p: &std::path::Path| std::fs::read_to_string(p).unwrap();
    let secrets = [
        format!("gateway-tls/tls.crt={}", read(&pki.server_cert)),
        format!("gateway-tls/tls.key={}", read(&pki.server_key)),
        format!("clients-ca/ca.crt={}", read(&pki.ca_cert)),
    ];
    let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
    let r = render(
        &[values.to_str().unwrap(), test_values.to_str().unwrap()],
        &[],
        &secrets,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let text = read(&r.file("edge-tollgate-envoy", "envoy.yaml"));
    for want in [
        "DownstreamTlsContext",
        "require_client_certificate: false",
        "include_peer_certificate: true",
        "forward_client_cert_details: SANITIZE",
    ] {
        assert!(text.contains(want), "{want} in\n{text}");
    }
    // Turned on without its Secrets: refused, naming them.
    let e = render(&[], &["envoy.clientCertificates.enabled=true"], &[])
        .err()
        .expect("refused");
    assert!(
        e.contains("clientCertificates/serverSecret") && e.contains("clientCertificates/caSecret"),
        "{e}"
    );
    // Off (the default): no TLS on the listener, no certificate forwarded.
    let off = render(&[test_values.to_str().unwrap()], &[], &[]).unwrap();
    let plain = read(&off.file("edge-tollgate-envoy", "envoy.yaml"));
    assert!(
        plain.contains("include_peer_certificate: false")
            && !plain.contains("DownstreamTlsContext")
    );
    let authz: serde_yaml::Value =
        serde_yaml::from_str(&read(&r.file("edge-tollgate-authz", "authz.yaml"))).unwrap();
    assert_eq!(authz["mtls"]["trust_domains"][0], "acme.test");

    let (grpc, http) = (
        tollgate_tests::process::free_addr(),
        tollgate_tests::process::free_addr(),
    );
    let _authz =
        r.workload("edge-tollgate-authz/authz")
            .spawn(dir.path(), &[], &listen_args(grpc, http));
    tollgate_tests::stack::wait_ready(http).await;
    let upstream = EchoUpstream::start().await;
    let ports = EnvoyPorts {
        listener: free_port(),
        ops: free_port(),
        admin: free_port(),
        authz: grpc.port(),
        ratelimit: free_port(),
        upstream: upstream.port(),
    };
    let envoy_w = r.workload("edge-tollgate-envoy/envoy");
    for sds in ["tollgate-sds-listener.yaml", "tollgate-sds-clients-ca.yaml"] {
        let local = envoy_w.localise(&format!("/etc/envoy/{sds}"));
        let text = envoy_w.localise(&read(std::path::Path::new(&local)));
        std::fs::write(&local, text).unwrap();
    }
    let local = envoy_w.localise(&text);
    let _envoy = Envoy::start_raw(&loopback_envoy(&local, &ports), ports.listener, ports.admin)
        .await
        .unwrap();

    let ca = reqwest::Certificate::from_pem(read(&pki.ca_cert).as_bytes()).unwrap();
    let client = |cert: Option<&(std::path::PathBuf, std::path::PathBuf)>| {
        let mut b = reqwest::Client::builder()
            .use_rustls_tls()
            .add_root_certificate(ca.clone());
        if let Some((c, k)) = cert {
            b = b.identity(reqwest::Identity::from_pem((read(c) + &read(k)).as_bytes()).unwrap());
        }
        b.build().unwrap()
    };
    let url = format!("https://localhost:{}/orders/1", ports.listener);
    let r = client(Some(&clients[0])).get(&url).send().await.unwrap();
    assert_eq!(r.status(), 200);
    let echo: Echo = r.json().await.unwrap();
    assert_eq!(echo.header("x-tollgate-subject"), Some(WEB));
    assert_eq!(echo.header("x-tollgate-auth-method"), Some("mtls"));
    let status = |c: reqwest::Client| {
        let url = url.clone();
        async move { c.get(url).send().await.unwrap().status() }
    };
    assert_eq!(status(client(Some(&clients[1]))).await, 200, "the CEL rule");
    assert_eq!(status(client(Some(&clients[2]))).await, 401, "trust domain");
    assert_eq!(status(client(None)).await, 401, "no certificate");
    drop(_envoy);

    // In-process: the chart's Envoy runs the module on the same values, and hands it the
    // listener's certificate through its header_mutation filter.
    let r = render(
        &[values.to_str().unwrap(), test_values.to_str().unwrap()],
        &["envoy.mode=inprocess"],
        &secrets,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let envoy_w = r.workload("edge-tollgate-envoy/envoy");
    let text = read(&r.file("edge-tollgate-envoy", "envoy.yaml"));
    assert!(text.contains("%DOWNSTREAM_PEER_CERT%"), "{text}");
    for file in [
        "tollgate-sds-listener.yaml",
        "tollgate-sds-clients-ca.yaml",
        "tollgate-authz.yaml",
    ] {
        let local = envoy_w.localise(&format!("/etc/envoy/{file}"));
        let text = envoy_w.localise(&read(std::path::Path::new(&local)));
        std::fs::write(&local, text).unwrap();
    }
    let local = envoy_w.localise(&text);
    let module_dir = tollgate_tests::module::module_dir();
    let env = [("ENVOY_DYNAMIC_MODULES_SEARCH_PATH", module_dir.as_os_str())];
    let _envoy = Envoy::start_raw_with_env(
        &loopback_envoy(&local, &ports),
        ports.listener,
        ports.admin,
        &env,
    )
    .await
    .unwrap();
    let r = client(Some(&clients[0]))
        .get(&url)
        .header("x-tollgate-peer-certificate", "forged")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200, "in-process");
    let echo: Echo = r.json().await.unwrap();
    assert_eq!(echo.header("x-tollgate-subject"), Some(WEB));
    assert_eq!(echo.header("x-tollgate-peer-certificate"), None);
    assert_eq!(status(client(Some(&clients[1]))).await, 200, "the CEL rule");
    assert_eq!(status(client(Some(&clients[2]))).await, 401, "trust domain");
    assert_eq!(status(client(None)).await, 401, "no certificate");
}
