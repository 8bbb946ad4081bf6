//! tollgate-authz through real Envoy against the real OIDC provider: JWTs verified with keys
//! found by OIDC discovery, opaque tokens introspected, RFC 6750 answers reaching the client,
//! and identity headers the upstream can trust; over both ext_authz flavours (gRPC and HTTP,
//! each on its shipped Envoy config).

use std::time::Duration;

use tollgate_tests::echo::{Echo, EchoUpstream};
use tollgate_tests::envoy::Envoy;
use tollgate_tests::oidc::{
    API_RESOURCE, APP_GOLD, APP_SILVER, ES256_RESOURCE, INTROSPECTOR, OPAQUE_RESOURCE, OidcProvider,
};
use tollgate_tests::stack::{Authz, Flavour, Ratelimit, load_config};

/// The admin API credential of gateways whose config names `$DIR/admin-token`.
pub(crate) const ADMIN_TOKEN: &str = "e2e-admin-credential-0123456789";

pub(crate) fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(10))
        .build()
        .unwrap()
}

/// Envoy (the shipped config of a flavour) in front of the echo upstream, with tollgate-authz
/// on `yaml` and the example tollgate-ratelimit.
pub(crate) struct Gateway {
    pub envoy: Envoy,
    pub authz: Authz,
    pub _ratelimit: Ratelimit,
    pub _upstream: EchoUpstream,
    pub _dir: tempfile::TempDir,
}

impl Gateway {
    /// Over gRPC, `deploy/envoy/envoy.yaml`.
    pub(crate) async fn start(yaml: &str, sets: &[String]) -> Gateway {
        Self::start_as(Flavour::Grpc, yaml, sets, &[]).await
    }

    /// Over `flavour`'s shipped Envoy config; `claim_headers` are the `headers.claims` names
    /// of `yaml`.
    pub(crate) async fn start_as(
        flavour: Flavour,
        yaml: &str,
        sets: &[String],
        claim_headers: &[&str],
    ) -> Gateway {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("authz.yaml");
        let yaml = yaml.replace("$DIR", &dir.path().display().to_string());
        std::fs::write(&path, yaml).unwrap();
        std::fs::write(dir.path().join("admin-token"), ADMIN_TOKEN).unwrap();
        let mut sets = sets.to_vec();
        sets.extend(flavour.authz_sets());
        let authz = Authz::start(load_config(&path, &sets).unwrap())
            .await
            .unwrap();
        let upstream = EchoUpstream::start().await;
        let ratelimit = Ratelimit::example(&[]).await.unwrap();
        let envoy = flavour
            .start_envoy(
                &authz,
                claim_headers,
                upstream.port(),
                ratelimit.grpc_port(),
            )
            .await
            .unwrap();
        Gateway {
            envoy,
            authz,
            _ratelimit: ratelimit,
            _upstream: upstream,
            _dir: dir,
        }
    }

    pub(crate) fn url(&self, path: &str) -> String {
        self.envoy.url(path)
    }
}

fn config(oidc: &OidcProvider) -> String {
    format!(
        r#"
log: {{format: text, level: warn}}
policy:
  identity_order: [jwt, introspection, api_key]
  rules:
    - name: admin
      path: {{prefix: /admin}}
      conditions:
        - scope: admin
    - name: api
      path: {{prefix: /}}
jwt:
  issuers:
    - issuer: {issuer}
      discovery: true
      audiences: [{API_RESOURCE}]
      algorithms: [RS256, ES256]
introspection:
  endpoint: {introspection}
  client_id: {id}
  client_secret: {secret}
  issuer: {issuer}
  audiences: [{OPAQUE_RESOURCE}]
api_keys:
  store: {{type: embedded, path: $DIR/keys.redb}}
headers:
  claims: {{client_id: x-client-id}}
"#,
        issuer = oidc.issuer(),
        introspection = oidc.introspection_endpoint(),
        id = INTROSPECTOR.id,
        secret = INTROSPECTOR.secret,
    )
}

async fn echo(resp: reqwest::Response) -> Echo {
    assert_eq!(resp.status(), 200);
    resp.json().await.unwrap()
}

/// The status of a GET sent byte for byte, path untouched.
async fn raw_get(gw: &Gateway, path: &str, token: &str) -> u16 {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(("127.0.0.1", gw.envoy.port))
        .await
        .unwrap();
    let req = format!(
        "GET {path} HTTP/1.1\r\nhost: gw\r\nauthorization: Bearer {token}\r\nconnection: close\r\n\r\n"
    );
    s.write_all(req.as_bytes()).await.unwrap();
    let mut out = Vec::new();
    s.read_to_end(&mut out).await.unwrap();
    let text = String::from_utf8_lossy(&out);
    text.split(' ')
        .nth(1)
        .and_then(|c| c.parse().ok())
        .unwrap_or(0)
}

fn challenge(resp: &reqwest::Response) -> String {
    resp.headers()
        .get("www-authenticate")
        .map(|v| v.to_str().unwrap().to_string())
        .unwrap_or_default()
}

#[tokio::test]
async fn jwts_from_the_oidc_provider_through_envoy_over_grpc() {
    jwts_from_the_oidc_provider(Flavour::Grpc).await;
}

#[tokio::test]
async fn jwts_from_the_oidc_provider_through_envoy_over_http() {
    jwts_from_the_oidc_provider(Flavour::Http).await;
}

async fn jwts_from_the_oidc_provider(flavour: Flavour) {
    let oidc = OidcProvider::start().await.unwrap();
    let gw = Gateway::start_as(flavour, &config(&oidc), &[], &["x-client-id"]).await;
    let c = client();

    let read = oidc
        .client_credentials(APP_GOLD.id, APP_GOLD.secret, "read", Some(API_RESOURCE))
        .await
        .unwrap();
    let resp = c
        .get(gw.url("/orders/7"))
        .bearer_auth(&read)
        .header("x-tollgate-subject", "root")
        .header("x-tollgate-tenant", "everyone")
        .header("x-tollgate-key-id", "tgk_forged")
        .send()
        .await
        .unwrap();
    let e = echo(resp).await;
    assert_eq!(e.header("x-tollgate-subject"), Some("app-gold"), "{e:?}");
    assert_eq!(e.header("x-tollgate-auth-method"), Some("jwt"));
    assert_eq!(e.header("x-tollgate-scopes"), Some("read"));
    assert_eq!(e.header("x-client-id"), Some("app-gold"));
    assert_eq!(
        e.header("x-tollgate-tenant"),
        None,
        "spoofed identity headers are removed"
    );
    assert_eq!(e.header("x-tollgate-key-id"), None);
    assert!(
        e.header("authorization").is_some(),
        "the credential is kept unless configured"
    );

    // Scope conditions: 403 insufficient_scope, then allowed with the scope.
    let resp = c
        .get(gw.url("/admin/users"))
        .bearer_auth(&read)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 403);
    assert_eq!(
        challenge(&resp),
        "Bearer realm=\"tollgate\", error=\"insufficient_scope\", scope=\"admin\""
    );
    let admin = oidc
        .client_credentials(
            APP_GOLD.id,
            APP_GOLD.secret,
            "read admin",
            Some(API_RESOURCE),
        )
        .await
        .unwrap();
    let e = echo(
        c.get(gw.url("/admin/users"))
            .bearer_auth(&admin)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(e.header("x-tollgate-scopes"), Some("read admin"));
    // Rules see the path Envoy normalised: a dot-segment or double-slash detour still lands on
    // /admin (sent raw, since HTTP clients normalise such paths themselves).
    assert_eq!(raw_get(&gw, "/orders/../orders/7", &read).await, 200);
    for sneaky in [
        "/orders/../admin/users",
        "/orders/%2e%2e/admin/users",
        "//admin/users",
    ] {
        assert_eq!(raw_get(&gw, sneaky, &read).await, 403, "{sneaky}");
    }

    // No credential, a tampered signature, a token for another audience: 401.
    let resp = c.get(gw.url("/orders")).send().await.unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(challenge(&resp), "Bearer realm=\"tollgate\"");
    let mut tampered = read.clone().into_bytes();
    let i = tampered.len() - 5;
    tampered[i] = if tampered[i] == b'A' { b'B' } else { b'A' };
    let resp = c
        .get(gw.url("/orders"))
        .bearer_auth(String::from_utf8(tampered).unwrap())
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        challenge(&resp),
        "Bearer realm=\"tollgate\", error=\"invalid_token\""
    );
    let body: serde_json::Value = resp.json().await.unwrap();
    assert_eq!(body, serde_json::json!({"error": "invalid_token"}));
    let other_aud = oidc
        .client_credentials(APP_GOLD.id, APP_GOLD.secret, "read", Some(ES256_RESOURCE))
        .await
        .unwrap();
    let resp = c
        .get(gw.url("/orders"))
        .bearer_auth(&other_aud)
        .send()
        .await
        .unwrap();
    assert_eq!(
        resp.status(),
        401,
        "a valid signature for another audience is not enough"
    );

    // A bearer token and an API key at once: 400 invalid_request.
    let resp = c
        .get(gw.url("/orders"))
        .bearer_auth(&read)
        .header("x-api-key", "tgk_x")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 400);
    assert!(challenge(&resp).contains("invalid_request"));

    // None of the denied requests reached the upstream.
    assert_eq!(gw.envoy.stat("cluster.upstream.upstream_rq_total").await, 3);
}

#[tokio::test]
async fn opaque_tokens_are_introspected_through_envoy_over_grpc() {
    opaque_tokens_are_introspected(Flavour::Grpc).await;
}

#[tokio::test]
async fn opaque_tokens_are_introspected_through_envoy_over_http() {
    opaque_tokens_are_introspected(Flavour::Http).await;
}

async fn opaque_tokens_are_introspected(flavour: Flavour) {
    let oidc = OidcProvider::start().await.unwrap();
    let gw = Gateway::start_as(flavour, &config(&oidc), &[], &["x-client-id"]).await;
    let c = client();

    let opaque = oidc
        .client_credentials(APP_SILVER.id, APP_SILVER.secret, "read write", None)
        .await
        .unwrap();
    assert!(
        !opaque.contains('.'),
        "the provider issues opaque tokens without a resource"
    );
    let e = echo(
        c.get(gw.url("/things"))
            .bearer_auth(&opaque)
            .send()
            .await
            .unwrap(),
    )
    .await;
    assert_eq!(e.header("x-tollgate-subject"), Some("app-silver"), "{e:?}");
    assert_eq!(e.header("x-tollgate-auth-method"), Some("introspection"));
    assert_eq!(e.header("x-tollgate-scopes"), Some("read write"));

    let revoked = oidc
        .client_credentials(APP_SILVER.id, APP_SILVER.secret, "read", None)
        .await
        .unwrap();
    oidc.revoke(APP_SILVER, &revoked).await.unwrap();
    let resp = c
        .get(gw.url("/things"))
        .bearer_auth(&revoked)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
    assert_eq!(
        challenge(&resp),
        "Bearer realm=\"tollgate\", error=\"invalid_token\""
    );
    let resp = c
        .get(gw.url("/things"))
        .bearer_auth("made-up-token")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 401);
}

#[tokio::test]
async fn issuer_down_at_start_fails_closed_then_recovers() {
    // Discovery pointing at a closed port: the service starts, but no JWT verifies (503) until
    // keys are known; the RFC 6750 answer says "try again", not "your token is bad".
    let oidc = OidcProvider::start().await.unwrap();
    let dead = format!("http://127.0.0.1:{}", tollgate_tests::process::free_port());
    let yaml = config(&oidc).replace("discovery: true", &format!("jwks_url: {dead}/jwks"));
    let gw = Gateway::start(&yaml, &[]).await;
    let token = oidc
        .client_credentials(APP_GOLD.id, APP_GOLD.secret, "read", Some(API_RESOURCE))
        .await
        .unwrap();
    let resp = client()
        .get(gw.url("/orders"))
        .bearer_auth(&token)
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 503);
    let metrics = client()
        .get(format!("http://{}/metrics", gw.authz.running.http_addr))
        .send()
        .await
        .unwrap()
        .text()
        .await
        .unwrap();
    assert!(
        metrics.contains("tollgate_authz_jwks_fetches_total{result=\"error\"}"),
        "{metrics}"
    );
    assert!(metrics.contains("reason=\"no_keys\""), "{metrics}");
}
