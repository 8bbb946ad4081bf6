//! Trust boundaries through real Envoy: what a hostile client sends (its address, identity
//! headers in every spelling, credentials twice, hosts and paths spelled to fool a rule,
//! claims the upstream would misread, floods of headers) against what the upstream receives.
//!
//! Three gateways, each shared by every check: the shipped `deploy/envoy/envoy.yaml`, the
//! shipped `deploy/envoy/envoy-http-authz.yaml` (HTTP ext_authz), and the Envoy config the Helm
//! chart renders (routes with and without authz, a host route, claim
//! headers) with both services reached over mTLS configured from Helm values only. Each runs
//! the same checks, one per trust class of docs/authz.md, plus the generated sweep of every
//! identity header spelling over every route.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::echo::{Echo, EchoUpstream};
use tollgate_tests::envoy::Envoy;
use tollgate_tests::issuer::{AUDIENCE, ISSUER, Issuer};
use tollgate_tests::process::{free_port, wait_for};
use tollgate_tests::stack::{Authz, Flavour, Ratelimit, example, load_config};

use crate::helm::{EnvoyPorts, Rendered, loopback_envoy, render};

/// The policy both gateways' tollgate-authz runs (`policy.rules`).
const RULES: &str = r#"
    - name: secure-host
      hosts: [secure.example.com]
    - name: admin
      path: {prefix: /admin}
      conditions: [{scope: admin}]
    - name: acme
      path: {prefix: /acme}
      conditions: [{claim: tenant, equals: acme}]
    - name: public
      path: {prefix: /public}
      public: true
    - name: api
      path: {prefix: /}
"#;

/// The header the Helm gateway copies the `groups` claim to.
const GROUPS: &str = "x-tollgate-groups";
const DEFAULT_IDENTITY: [&str; 6] = [
    "x-tollgate-subject",
    "x-tollgate-tenant",
    "x-tollgate-plan",
    "x-tollgate-scopes",
    "x-tollgate-auth-method",
    "x-tollgate-key-id",
];
const ADMIN_TOKEN: &str = "trust-e2e-admin-credential-0123456789";

/// How a request of the sweep authenticates.
#[derive(Debug, Clone, Copy)]
enum Cred {
    None,
    Jwt,
    ApiKey,
}

/// A route of the gateway under test, as a client reaches it.
struct Route {
    host: &'static str,
    path: &'static str,
    cred: Cred,
}

/// One gateway and everything behind it.
struct Gateway {
    name: &'static str,
    envoy: Envoy,
    issuer: Issuer,
    /// An API key with tenant, plan and scopes: every identity header set.
    key: String,
    /// Every header name tollgate-authz sets here.
    identity: Vec<String>,
    /// Where the `groups` claim goes, when this gateway forwards it.
    groups: Option<&'static str>,
    /// Whether API keys are also read from the query (`api_key`), and removed from it.
    query_keys: bool,
    routes: Vec<Route>,
    authz: Authz,
    ratelimit: Ratelimit,
    _upstream: EchoUpstream,
    _dir: tempfile::TempDir,
    _rendered: Option<Rendered>,
}

fn jwt_section(issuer: &Issuer) -> Value {
    json!({"issuers": [{
        "issuer": ISSUER,
        "jwks_url": issuer.jwks_url(),
        "audiences": [AUDIENCE],
        "refresh_interval": "1s",
        "min_refetch_interval": "1s",
        "claims": {"tenant": "org", "plan": "tier"},
    }]})
}

/// Per-address limits high enough for every check here, in fixed hourly windows so that the
/// remaining count only ever goes down during a run.
const LIMITS: &str = r#"
domain: gateway
descriptors:
  - key: remote_address
    rate_limit: {unit: hour, requests_per_unit: 100000, algorithm: fixed_window}
"#;

impl Gateway {
    /// The flavour's shipped Envoy config in front of tollgate-authz (the shipped example's API
    /// key and admin settings, plus a JWT issuer and the policy above) and tollgate-ratelimit.
    /// Over HTTP, keys come from the header only: that flavour cannot take one out of the
    /// query (the config refuses it).
    async fn shipped(flavour: Flavour) -> Gateway {
        let query_keys = flavour == Flavour::Grpc;
        let issuer = Issuer::start(&["main", "old"]).await;
        let dir = tempfile::tempdir().unwrap();
        let d = dir.path();
        std::fs::write(d.join("admin-token"), ADMIN_TOKEN).unwrap();
        let authz_yaml = format!(
            "log: {{format: text, level: warn}}\npolicy:\n  rules:{RULES}\njwt: {jwt}\napi_keys:\n  header: x-api-key\n{query}  store: {{type: embedded, path: {keys}}}\nadmin:\n  addr: 127.0.0.1:0\n  token_file: {token}\nheaders:\n  remove_credential: true\n",
            jwt = jwt_section(&issuer),
            query = if query_keys {
                "  query_param: api_key\n"
            } else {
                ""
            },
            keys = d.join("keys.redb").display(),
            token = d.join("admin-token").display(),
        );
        std::fs::write(d.join("authz.yaml"), authz_yaml).unwrap();
        std::fs::create_dir(d.join("limits")).unwrap();
        std::fs::write(d.join("limits/gateway.yaml"), LIMITS).unwrap();
        let authz =
            Authz::start(load_config(&d.join("authz.yaml"), &flavour.authz_sets()).unwrap())
                .await
                .unwrap();
        let ratelimit = Ratelimit::start(
            load_config(
                &example("ratelimit.yaml"),
                &[format!("limits.path={}", d.join("limits").display())],
            )
            .unwrap(),
        )
        .await
        .unwrap();
        let upstream = EchoUpstream::start().await;
        let envoy = flavour
            .start_envoy(&authz, &[], upstream.port(), ratelimit.grpc_port())
            .await
            .unwrap();
        let key = create_key(&authz, ADMIN_TOKEN).await;
        let none = |path| Route {
            host: "gw.example.com",
            path,
            cred: Cred::None,
        };
        // Over gRPC `/limited` names the public rule (context_extensions); over HTTP Envoy
        // sends none, and the path's rule (`api`) wants a credential.
        let limited = Route {
            cred: if query_keys { Cred::None } else { Cred::Jwt },
            ..none("/limited/x")
        };
        Gateway {
            name: match flavour {
                Flavour::Grpc => "shipped",
                Flavour::Http => "shipped-http",
            },
            envoy,
            issuer,
            key,
            identity: DEFAULT_IDENTITY.iter().map(|s| s.to_string()).collect(),
            groups: None,
            query_keys,
            routes: vec![
                none("/healthz"),
                limited,
                none("/public/x"),
                Route {
                    host: "gw.example.com",
                    path: "/api/x",
                    cred: Cred::Jwt,
                },
                Route {
                    host: "gw.example.com",
                    path: "/api/x",
                    cred: Cred::ApiKey,
                },
            ],
            authz,
            ratelimit,
            _upstream: upstream,
            _dir: dir,
            _rendered: None,
        }
    }

    /// The chart rendered with mTLS between Envoy and both services, claim headers, and routes
    /// with and without authz; Envoy and both services run on the rendered configs (addresses
    /// rewritten to loopback, mounted files to their local copies).
    async fn helm() -> Gateway {
        let issuer = Issuer::start(&["main", "old"]).await;
        let dir = tempfile::tempdir().unwrap();
        let names = [
            "edge-tollgate-authz-headless.tollgate.svc.cluster.local",
            "edge-tollgate-ratelimit-headless.tollgate.svc.cluster.local",
        ];
        let pki = tollgate_tests::pki::generate_for(dir.path(), "tollgate-mtls-ca", &names);
        let values = dir.path().join("values.yaml");
        std::fs::write(&values, helm_values(&issuer)).unwrap();
        let pem = |p: &Path| std::fs::read_to_string(p).unwrap();
        let mut secrets = Vec::new();
        for (secret, cert, key) in [
            ("authz-tls", &pki.server_cert, &pki.server_key),
            ("ratelimit-tls", &pki.server_cert, &pki.server_key),
            ("envoy-tls", &pki.client_cert, &pki.client_key),
        ] {
            secrets.push(format!("{secret}/tls.crt={}", pem(cert)));
            secrets.push(format!("{secret}/tls.key={}", pem(key)));
            secrets.push(format!("{secret}/ca.crt={}", pem(&pki.ca_cert)));
        }
        let secrets: Vec<&str> = secrets.iter().map(String::as_str).collect();
        let r =
            render(&[values.to_str().unwrap()], &[], &secrets).unwrap_or_else(|e| panic!("{e}"));

        let authz_w = r.workload("edge-tollgate-authz/authz");
        let authz = Authz::start(
            load_config(
                &authz_w.config_file(&[]),
                &["admin.addr=127.0.0.1:0".to_string()],
            )
            .unwrap(),
        )
        .await
        .unwrap();
        let admin_token =
            std::fs::read_to_string(authz_w.localise("/etc/tollgate/admin/token")).unwrap();
        let ratelimit_w = r.workload("edge-tollgate-ratelimit/ratelimit");
        let ratelimit = Ratelimit::start(load_config(&ratelimit_w.config_file(&[]), &[]).unwrap())
            .await
            .unwrap();
        let upstream = EchoUpstream::start().await;

        let envoy_w = r.workload("edge-tollgate-envoy/envoy");
        for sds in ["tollgate-sds-client.yaml", "tollgate-sds-ca.yaml"] {
            let local = envoy_w.localise(&format!("/etc/envoy/{sds}"));
            let text = envoy_w.localise(&std::fs::read_to_string(&local).unwrap());
            std::fs::write(&local, text).unwrap();
        }
        let ports = EnvoyPorts {
            listener: free_port(),
            ops: free_port(),
            admin: free_port(),
            authz: authz.grpc_port(),
            ratelimit: ratelimit.grpc_port(),
            upstream: upstream.port(),
        };
        let config = std::fs::read_to_string(r.file("edge-tollgate-envoy", "envoy.yaml")).unwrap();
        let config = envoy_w.localise(&loopback_envoy(&config, &ports));
        let envoy = Envoy::start_raw(&config, ports.listener, ports.admin)
            .await
            .unwrap();
        let key = create_key(&authz, admin_token.trim_end()).await;
        let route = |host, path, cred| Route { host, path, cred };
        let mut identity: Vec<String> = DEFAULT_IDENTITY.iter().map(|s| s.to_string()).collect();
        identity.push(GROUPS.to_string());
        Gateway {
            name: "helm",
            envoy,
            issuer,
            key,
            identity,
            groups: Some(GROUPS),
            query_keys: true,
            routes: vec![
                route("gw.example.com", "/healthz", Cred::None),
                route("gw.example.com", "/docs/x", Cred::None),
                route("gw.example.com", "/limited/x", Cred::None),
                route("gw.example.com", "/public/x", Cred::None),
                route("gw.example.com", "/api/x", Cred::Jwt),
                route("gw.example.com", "/api/x", Cred::ApiKey),
                route("secure.example.com", "/x", Cred::Jwt),
            ],
            authz,
            ratelimit,
            _upstream: upstream,
            _dir: dir,
            _rendered: Some(r),
        }
    }

    /// A raw HTTP/1.1 request: `headers` go out exactly as given (case, underscores, repeats).
    async fn send(
        &self,
        method: &str,
        host: &str,
        path: &str,
        headers: &[(String, String)],
    ) -> Reply {
        let mut req = format!("{method} {path} HTTP/1.1\r\nhost: {host}\r\n");
        for (k, v) in headers {
            req.push_str(&format!("{k}: {v}\r\n"));
        }
        req.push_str("connection: close\r\n\r\n");
        raw(self.envoy.port, &req).await
    }

    async fn get(&self, path: &str, headers: &[(&str, &str)]) -> Reply {
        let headers: Vec<(String, String)> = headers
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect();
        self.send("GET", "gw.example.com", path, &headers).await
    }

    fn bearer(&self, extra: Value) -> String {
        format!("Bearer {}", self.issuer.token("main", "alice", extra))
    }

    /// The credential headers of `cred`.
    fn credential(&self, cred: Cred) -> Vec<(String, String)> {
        match cred {
            Cred::None => vec![],
            Cred::Jwt => vec![(
                "authorization".into(),
                self.bearer(
                    json!({"org": "acme", "tier": "gold", "scope": "read", "groups": ["ops"]}),
                ),
            )],
            Cred::ApiKey => vec![("x-api-key".into(), self.key.clone())],
        }
    }
}

fn helm_values(issuer: &Issuer) -> String {
    let upstream = json!({"address": "backend", "port": 8080});
    let values = json!({
        "redis": {"mode": "none"},
        "mtls": {
            "enabled": true,
            "authzSecret": "authz-tls",
            "ratelimitSecret": "ratelimit-tls",
            "envoySecret": "envoy-tls",
        },
        "authz": {
            "replicas": 1,
            "log": {"format": "text", "level": "warn"},
            "policy": serde_yaml::from_str::<Value>(&format!("rules:{RULES}")).unwrap(),
            "jwt": jwt_section(issuer),
            "headers": {"remove_credential": true, "claims": {"groups": GROUPS}},
            "extraConfig": {"api_keys": {"query_param": "api_key"}},
        },
        "ratelimit": {
            "replicas": 1,
            "log": {"format": "text", "level": "warn"},
            "limits": {"gateway": serde_yaml::from_str::<Value>(LIMITS).unwrap()},
        },
        "envoy": {"routes": [
            {"name": "health", "path": "/healthz", "upstream": upstream, "authz": {"enabled": false}, "rateLimits": []},
            {"name": "docs", "pathPrefix": "/docs", "upstream": upstream, "authz": {"enabled": false}},
            {"name": "secure", "host": "secure.example.com", "pathPrefix": "/", "upstream": upstream},
            {"name": "limited", "pathPrefix": "/limited", "upstream": upstream, "authz": {"rule": "public"}},
            {"name": "default", "pathPrefix": "/", "upstream": upstream},
        ]},
    });
    serde_yaml::to_string(&values).unwrap()
}

/// An API key with tenant, plan and scopes, from the admin API.
async fn create_key(authz: &Authz, admin_token: &str) -> String {
    let admin = format!("http://{}", authz.running.admin_addr.expect("admin API on"));
    let body = json!({"name": "trust", "owner": "team-a", "tenant": "acme", "plan": "gold", "scopes": ["read", "write"]});
    let issued = tollgate_tests::stack::create_key(&admin, admin_token, &body).await;
    issued["secret"].as_str().unwrap().to_string()
}

/// A response read off the wire.
struct Reply {
    status: u16,
    headers: BTreeMap<String, String>,
    body: String,
}

impl Reply {
    /// What the upstream received (the request was allowed).
    fn echo(&self) -> Echo {
        assert_eq!(self.status, 200, "{}", self.body);
        serde_json::from_str(&self.body).unwrap_or_else(|e| panic!("{e}: {}", self.body))
    }
}

async fn raw(port: u16, request: &str) -> Reply {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", port))
        .await
        .unwrap();
    s.write_all(request.as_bytes()).await.unwrap();
    // Read to the end of the response, not of the connection: after a local reply Envoy waits
    // for the client to close first (its delayed close).
    let mut out = Vec::new();
    let read = async {
        let mut buf = [0u8; 16 * 1024];
        loop {
            let n = s.read(&mut buf).await.unwrap();
            out.extend_from_slice(&buf[..n]);
            if n == 0 || complete(&out) {
                break;
            }
        }
    };
    tokio::time::timeout(Duration::from_secs(10), read)
        .await
        .expect("Envoy answers within 10s");
    let text = String::from_utf8_lossy(&out).into_owned();
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    let mut lines = head.lines();
    let status = lines
        .next()
        .and_then(|l| l.split(' ').nth(1))
        .and_then(|c| c.parse().ok())
        .unwrap_or(0);
    let headers: BTreeMap<String, String> = lines
        .filter_map(|l| l.split_once(':'))
        .map(|(k, v)| (k.to_ascii_lowercase(), v.trim().to_string()))
        .collect();
    let body = if headers
        .get("transfer-encoding")
        .is_some_and(|v| v == "chunked")
    {
        dechunk(body)
    } else {
        body.to_string()
    };
    Reply {
        status,
        headers,
        body,
    }
}

/// Whether `out` holds a whole HTTP/1.1 response (by content-length or the last chunk).
fn complete(out: &[u8]) -> bool {
    let text = String::from_utf8_lossy(out);
    let Some((head, body)) = text.split_once("\r\n\r\n") else {
        return false;
    };
    let head = head.to_ascii_lowercase();
    if let Some(len) = head
        .lines()
        .find_map(|l| l.strip_prefix("content-length:"))
        .and_then(|v| v.trim().parse::<usize>().ok())
    {
        return body.len() >= len;
    }
    head.contains("transfer-encoding: chunked") && body.ends_with("0\r\n\r\n")
}

fn dechunk(mut body: &str) -> String {
    let mut out = String::new();
    while let Some((size, rest)) = body.split_once("\r\n") {
        let n = usize::from_str_radix(size.trim(), 16).unwrap_or(0);
        if n == 0 || rest.len() < n {
            break;
        }
        out.push_str(&rest[..n]);
        body = rest[n..].trim_start_matches("\r\n");
    }
    out
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_boundaries_hold_through_the_shipped_envoy_config() {
    let gw = Gateway::shipped(Flavour::Grpc).await;
    check_every_class(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_boundaries_hold_through_the_shipped_http_ext_authz_envoy_config() {
    let gw = Gateway::shipped(Flavour::Http).await;
    check_every_class(&gw).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn trust_boundaries_hold_through_the_helm_rendered_envoy_config_over_mtls() {
    let gw = Gateway::helm().await;
    check_every_class(&gw).await;
    mtls_from_helm_values(&gw).await;
}

async fn check_every_class(gw: &Gateway) {
    client_address(gw).await;
    one_identity(gw).await;
    lists_are_unambiguous(gw).await;
    hosts(gw).await;
    no_identity_header_spelling_reaches_the_upstream(gw).await;
    repeated_credentials(gw).await;
    paths(gw).await;
    control_characters_and_header_counts(gw).await;
    withdrawn_keys(gw).await;
}

/// Class 1: The address rate limits key on is the connection's, whatever X-Forwarded-For says; the
/// request id is Envoy's.
async fn client_address(gw: &Gateway) {
    let mut remaining = Vec::new();
    for forged in ["203.0.113.7", "198.51.100.1", "192.0.2.44"] {
        let r = gw.get("/public/x", &[("x-forwarded-for", forged)]).await;
        let e = r.echo();
        // Envoy appends the peer it saw (for a loopback peer, its own address) after the
        // client's entry: the last entry is never the client's word.
        let xff = e.header("x-forwarded-for").unwrap_or_default();
        let entries: Vec<&str> = xff.split(',').map(str::trim).collect();
        assert!(
            entries.len() == 2 && entries[0] == forged && entries[1] != forged,
            "{}: {xff}",
            gw.name
        );
        let limit = r.headers.get("ratelimit").cloned().unwrap_or_default();
        let r_value = limit
            .split(';')
            .find_map(|p| p.strip_prefix("r="))
            .and_then(|v| v.parse::<u64>().ok())
            .unwrap_or_else(|| panic!("{}: no remaining count in {limit:?}", gw.name));
        remaining.push(r_value);
    }
    assert!(
        remaining.windows(2).all(|w| w[1] < w[0]),
        "{}: three forged addresses spend one per-address budget: {remaining:?}",
        gw.name
    );
    // Nor does it choose the request id the services log: Envoy's own, returned to it.
    let r = gw
        .get("/public/x", &[("x-request-id", "forged-request-id")])
        .await;
    let e = r.echo();
    let id = e.header("x-request-id").unwrap_or_default();
    assert_ne!(id, "forged-request-id", "{}", gw.name);
    assert_eq!(r.headers.get("x-request-id").map(String::as_str), Some(id));
}

/// Class 2: A condition on `tenant` is decided on the tenant the upstream is told.
async fn one_identity(gw: &Gateway) {
    let t = gw.bearer(json!({"org": "globex", "tenant": "acme"}));
    let r = gw.get("/acme/x", &[("authorization", &t)]).await;
    assert_eq!(
        r.status, 403,
        "{}: a raw `tenant` claim is not the tenant",
        gw.name
    );
    let t = gw.bearer(json!({"org": "acme", "tenant": "globex"}));
    let e = gw.get("/acme/x", &[("authorization", &t)]).await.echo();
    assert_eq!(e.header("x-tollgate-tenant"), Some("acme"), "{}", gw.name);
}

/// Class 3: A list element holding the separator never reaches the upstream as two values.
async fn lists_are_unambiguous(gw: &Gateway) {
    for scope in [json!(["read admin"]), json!(["read", "write\tadmin"])] {
        let t = gw.bearer(json!({"scope": scope}));
        let r = gw.get("/admin/x", &[("authorization", &t)]).await;
        assert_eq!(r.status, 401, "{}: {scope}", gw.name);
        let r = gw.get("/api/x", &[("authorization", &t)]).await;
        assert_eq!(r.status, 401, "{}: {scope} is refused everywhere", gw.name);
    }
    // A space-separated string is what the grammar says: two scopes.
    let t = gw.bearer(json!({"scope": "read admin"}));
    let e = gw.get("/admin/x", &[("authorization", &t)]).await.echo();
    assert_eq!(e.header("x-tollgate-scopes"), Some("read admin"));
    if let Some(groups) = gw.groups {
        let t = gw.bearer(json!({"groups": ["users,admin", "ops"]}));
        let e = gw.get("/api/x", &[("authorization", &t)]).await.echo();
        assert_eq!(e.header(groups), Some("users%2Cadmin,ops"), "{}", gw.name);
    }
}

/// Class 4: `hosts:` rules see the host without case, port or trailing dot; so does the upstream.
async fn hosts(gw: &Gateway) {
    for host in [
        "secure.example.com",
        "SECURE.example.com",
        "secure.example.com.",
        "secure.example.com:443",
        "Secure.Example.Com.:8443",
    ] {
        let r = gw.send("GET", host, "/public/x", &[]).await;
        assert_eq!(
            r.status, 401,
            "{}: Host {host} is secure.example.com",
            gw.name
        );
    }
    let cred = gw.credential(Cred::Jwt);
    let e = gw
        .send("GET", "secure.example.com.:8443", "/public/x", &cred)
        .await
        .echo();
    assert_eq!(e.header("host"), Some("secure.example.com"), "{}", gw.name);
    if gw.name == "helm" {
        // The host's own virtual host takes every spelling (not the `*` one).
        let before = gw
            .envoy
            .stat("cluster.upstream_secure.upstream_rq_total")
            .await;
        gw.send("GET", "SECURE.example.com.:80", "/x", &cred)
            .await
            .echo();
        let after = gw
            .envoy
            .stat("cluster.upstream_secure.upstream_rq_total")
            .await;
        assert_eq!(after, before + 1);
    }
}

/// Every spelling of `name` a client could use to pass it as the real header: each dash as
/// `-` or `_`, in lower, upper and title case.
fn spellings(name: &str) -> Vec<String> {
    let parts: Vec<&str> = name.split('-').collect();
    let gaps = parts.len() - 1;
    let mut out = Vec::new();
    for mask in 0..(1u32 << gaps) {
        let mut joined = parts[0].to_string();
        for (i, p) in parts[1..].iter().enumerate() {
            joined.push(if mask & (1 << i) != 0 { '_' } else { '-' });
            joined.push_str(p);
        }
        let title: String = joined
            .split_inclusive(['-', '_'])
            .map(|w| {
                let mut c = w.chars();
                c.next()
                    .map(|f| f.to_ascii_uppercase().to_string() + c.as_str())
                    .unwrap_or_default()
            })
            .collect();
        out.push(joined.to_ascii_uppercase());
        out.push(title);
        out.push(joined);
    }
    out
}

/// Classes 5 and 6, generated: every identity header name in every spelling, repeated, on every
/// route (authz on, off, public, authenticated): no client value reaches the upstream.
async fn no_identity_header_spelling_reaches_the_upstream(gw: &Gateway) {
    let underscores = "http1.dropped_headers_with_underscores";
    let dropped_before = gw.envoy.stat(underscores).await;
    let mut sent = 0;
    let mut with_underscore = 0;
    for name in &gw.identity {
        for route in &gw.routes {
            let mut headers = gw.credential(route.cred);
            for (i, spelling) in spellings(name).into_iter().enumerate() {
                with_underscore += u64::from(spelling.contains('_'));
                headers.push((spelling, format!("forged-{i}")));
            }
            // The plain name twice more: repeats are one header to Envoy, two to some upstreams.
            headers.push((name.clone(), "forged-again".into()));
            headers.push((name.clone(), "forged-again".into()));
            sent += headers.len();
            let r = gw.send("GET", route.host, route.path, &headers).await;
            let e = r.echo();
            for (k, values) in &e.headers {
                assert!(
                    !values.iter().any(|v| v.contains("forged")),
                    "{}: {k}: {values:?} reached the upstream on {} {} ({:?})",
                    gw.name,
                    route.host,
                    route.path,
                    route.cred
                );
            }
        }
    }
    assert!(sent > 500, "{sent}");
    assert_eq!(
        gw.envoy.stat(underscores).await - dropped_before,
        with_underscore,
        "{}: every underscore spelling is dropped at the edge",
        gw.name
    );
}

/// Class 7: A credential twice in one place is ambiguous: 400, like two credentials.
async fn repeated_credentials(gw: &Gateway) {
    let k = &gw.key;
    for path in [
        format!("/api/x?api_key={k}&api_key=tgk_attacker"),
        format!("/api/x?api_key=tgk_attacker&api_key={k}"),
        format!("/api/x?api_key={k}&api%5Fkey=tgk_attacker"),
    ] {
        if !gw.query_keys {
            break;
        }
        let r = gw.get(&path, &[]).await;
        assert_eq!(r.status, 400, "{}: {path}", gw.name);
        assert!(r.body.contains("invalid_request"), "{}", r.body);
    }
    let r = gw
        .get("/api/x", &[("x-api-key", k), ("x-api-key", "tgk_attacker")])
        .await;
    assert_eq!(r.status, 400, "{}: two API key headers", gw.name);
    let t = gw.bearer(json!({}));
    let r = gw
        .get("/api/x", &[("authorization", &t), ("authorization", &t)])
        .await;
    assert_eq!(r.status, 400, "{}: two Authorization headers", gw.name);
    // Once is fine, and the key leaves the query before the upstream sees it.
    if gw.query_keys {
        let e = gw.get(&format!("/api/x?a=1&api_key={k}"), &[]).await.echo();
        assert_eq!(e.path, "/api/x?a=1", "{}", gw.name);
    } else {
        // Not read from the query at all: no credential.
        let r = gw.get(&format!("/api/x?a=1&api_key={k}"), &[]).await;
        assert_eq!(r.status, 401, "{}", gw.name);
    }
}

/// Class 8: The path a rule matched is the path the upstream acts on.
async fn paths(gw: &Gateway) {
    // Envoy resolves a dot segment with `;parameters` written plainly, as Tomcat would ...
    for path in ["/public/..;/admin/x", "/docs/..;x/admin/x"] {
        let r = gw.get(path, &[]).await;
        assert_eq!(
            r.status, 401,
            "{}: {path} is /admin/x to the policy",
            gw.name
        );
    }
    // ... but not one spelled `%2e%2e;`: refused by its first route, before any filter.
    let mut refused = vec![
        "/public/%2e%2e;/admin/x",
        "/public/.%2E;jsessionid=1/admin",
        "/public/%2e;/x",
    ];
    if gw.name == "helm" {
        // A prefix route without authz: nothing but Envoy stands in the way.
        refused.extend(["/docs/%2e%2e;/admin/x", "/docs/%2E%2E;jsessionid=1/admin"]);
    }
    for path in refused {
        let r = gw.get(path, &[]).await;
        assert_eq!(r.status, 400, "{}: {path}", gw.name);
        assert!(
            r.body.contains("dot segment"),
            "{}: {path}: {}",
            gw.name,
            r.body
        );
    }
    // ... and by tollgate-authz for spellings Envoy leaves alone (`%3b` stays encoded).
    let r = gw.get("/public/%2e%2e%3b/admin/x", &[]).await;
    assert_eq!(r.status, 400, "{}", gw.name);
    assert!(r.body.contains("invalid_request"), "{}", r.body);
    // `;parameters` do not move a request out of a rule: `/admin;x/users` is `/admin/users`.
    let t = gw.bearer(json!({"scope": "read"}));
    let r = gw.get("/admin;x/users", &[("authorization", &t)]).await;
    assert_eq!(r.status, 403, "{}", gw.name);
    // Envoy's own normalisation: the upstream sees the path the policy judged.
    let e = gw.get("/public//x/./y/../z", &[]).await.echo();
    assert_eq!(e.path, "/public/x/z", "{}", gw.name);
    // An escaped slash is no path separator in disguise: the client is sent to what it means.
    let r = gw.get("/public%2F..%2Fadmin", &[]).await;
    assert_eq!(r.status, 307, "{}", gw.name);
    assert_eq!(
        r.headers.get("location").map(String::as_str),
        Some("/admin")
    );
}

/// Class 10: Control characters in claims are a clear 401, never Envoy's 503; a request near the
/// header limit gets 200 or 431, never a 500.
async fn control_characters_and_header_counts(gw: &Gateway) {
    let controls = (1u32..0x20)
        .chain([0x7f, 0x85, 0x9f])
        .filter_map(char::from_u32);
    for c in controls {
        let t = gw.bearer(json!({"sub": format!("adm{c}in")}));
        let r = gw.get("/api/x", &[("authorization", &t)]).await;
        assert_eq!(r.status, 401, "{}: {c:?} in the subject", gw.name);
        assert!(r.body.contains("invalid_token"), "{}", r.body);
    }
    // Each credential sets its most identity headers: an API key all six defaults, a JWT all
    // but the key id plus the claim headers.
    for cred in [Cred::ApiKey, Cred::Jwt] {
        header_counts(gw, cred).await;
    }
}

async fn header_counts(gw: &Gateway, cred: Cred) {
    let mut statuses = Vec::new();
    for extra in 75..=100 {
        let mut headers = gw.credential(cred);
        headers.extend((0..extra).map(|i| (format!("x-filler-{i}"), "v".to_string())));
        let r = gw.send("GET", "gw.example.com", "/api/x", &headers).await;
        if r.status == 200 {
            let e = r.echo();
            assert!(
                e.header("x-tollgate-plan").is_some(),
                "the identity headers are set"
            );
        }
        statuses.push(r.status);
    }
    assert!(
        statuses.iter().all(|s| *s == 200 || *s == 431),
        "{}: {cred:?}: {statuses:?}",
        gw.name
    );
    let first_refused = statuses.iter().position(|s| *s == 431).unwrap();
    assert!(
        first_refused > 5 && statuses[first_refused..].iter().all(|s| *s == 431),
        "{}: {cred:?}: {statuses:?}",
        gw.name
    );
}

/// Class 10: A JWKS refresh that withdraws a key refuses the tokens it verified at once, cached or
/// not.
async fn withdrawn_keys(gw: &Gateway) {
    let t = format!("Bearer {}", gw.issuer.token("old", "mallory", json!({})));
    let r = gw.get("/api/x", &[("authorization", &t)]).await;
    assert_eq!(r.status, 200, "{}", gw.name);
    gw.issuer.publish(&["main"]);
    wait_for("the withdrawn key's token refused", Duration::from_secs(10), || {
        let t = t.clone();
        async move { (gw.get("/api/x", &[("authorization", &t)]).await.status == 401).then_some(()) }
    })
    .await;
    gw.issuer.publish(&["main", "old"]);
}

/// Class 9: The Helm values alone give mTLS from Envoy to both services (certificates from Secrets,
/// the kubelet's probes off the TLS port), and nothing reaches the services without a client
/// certificate.
async fn mtls_from_helm_values(gw: &Gateway) {
    for cluster in ["tollgate_authz", "tollgate_ratelimit"] {
        let handshakes = gw
            .envoy
            .stat(&format!("cluster.{cluster}.ssl.handshake"))
            .await;
        assert!(handshakes >= 1, "{cluster}: {handshakes}");
    }
    let no_cert = reqwest::Client::builder()
        .danger_accept_invalid_certs(true)
        .timeout(Duration::from_secs(5))
        .build()
        .unwrap();
    for port in [gw.authz.grpc_port(), gw.ratelimit.grpc_port()] {
        let r = no_cert
            .get(format!("https://127.0.0.1:{port}/"))
            .send()
            .await;
        assert!(
            r.is_err(),
            "a client without a certificate is refused: {r:?}"
        );
    }
    let err = render(&[], &["mtls.enabled=true"], &[])
        .err()
        .expect("refused");
    assert!(
        err.contains("mtls.enabled: set mtls.") && err.contains("tls.crt, tls.key and ca.crt"),
        "{err}"
    );
    let r = gw._rendered.as_ref().unwrap();
    for name in ["edge-tollgate-authz", "edge-tollgate-ratelimit"] {
        let d = r.find("Deployment", name);
        let c = &d["spec"]["template"]["spec"]["containers"][0];
        assert_eq!(c["livenessProbe"]["httpGet"]["path"], "/healthz", "{name}");
        assert!(c["livenessProbe"].get("grpc").is_none(), "{name}");
        let np = r.find("NetworkPolicy", name);
        assert_eq!(
            np["spec"]["ingress"][0]["ports"][0]["port"], "grpc",
            "{name}"
        );
    }
    for d in r.manifests() {
        if let Some(pod) = d["spec"]["template"]["spec"].as_mapping() {
            assert_eq!(
                pod.get("enableServiceLinks").and_then(|v| v.as_bool()),
                Some(false),
                "{}",
                d["metadata"]["name"].as_str().unwrap_or_default()
            );
        }
    }
}
