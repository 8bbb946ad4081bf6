//! Tests of the HTTP ext_authz adapter: what Envoy's `http_service` sends read as the decision
//! reads it, and the decision written as the answer Envoy acts on.

use axum::body::Body;
use axum::http::{Request, StatusCode};
use tollgate_common::config::{Sources, load};
use tower::ServiceExt;

use super::*;
use crate::apikey::NewKey;
use crate::{Built, Config, build};

struct Fixture {
    built: Built,
    _dir: tempfile::TempDir,
}

async fn fixture(extra: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let yaml = format!(
        r#"
policy:
  rules:
    - name: health
      path: {{exact: /healthz}}
      public: true
    - name: api
      path: {{prefix: /api}}
      identity: [api_key]
api_keys:
  store: {{type: embedded, path: {}}}
http_authz:
  addr: 127.0.0.1:0
  path_prefix: /check
{extra}"#,
        dir.path().join("keys.redb").display()
    );
    let p = dir.path().join("authz.yaml");
    std::fs::write(&p, yaml).unwrap();
    let cfg: Config = load(&Sources {
        file: Some(p),
        ..Default::default()
    })
    .unwrap();
    Fixture {
        built: build(&cfg).await.unwrap(),
        _dir: dir,
    }
}

impl Fixture {
    async fn key(&self) -> String {
        let keys = self.built.api_keys.as_ref().unwrap();
        let (_, secret) = keys
            .create(NewKey {
                name: "ci".into(),
                owner: "team-a".into(),
                plan: Some("silver".into()),
                ..Default::default()
            })
            .await
            .unwrap();
        secret.expose().to_string()
    }

    /// What the listener answers to a check of `method path` with `headers`.
    async fn check(&self, method: &str, path: &str, headers: &[(&str, &str)]) -> Answer {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("host", "api.example.com");
        for (n, v) in headers {
            req = req.header(*n, *v);
        }
        let resp = router(self.built.authorizer.clone(), "/check")
            .oneshot(req.body(Body::empty()).unwrap())
            .await
            .unwrap();
        let status = resp.status();
        let headers = resp
            .headers()
            .iter()
            .map(|(n, v)| (n.to_string(), v.to_str().unwrap().to_string()))
            .collect();
        let body = axum::body::to_bytes(resp.into_body(), 1 << 16)
            .await
            .unwrap();
        Answer {
            status,
            headers,
            body: String::from_utf8(body.to_vec()).unwrap(),
        }
    }
}

struct Answer {
    status: StatusCode,
    headers: Vec<(String, String)>,
    body: String,
}

impl Answer {
    fn get(&self, name: &str) -> Option<&str> {
        let mut found = self.headers.iter().filter(|(n, _)| n == name);
        let first = found.next().map(|(_, v)| v.as_str());
        assert!(found.next().is_none(), "{name} answered twice");
        first
    }

    fn removed(&self) -> Vec<&str> {
        let mut r: Vec<&str> = self
            .get(HEADERS_TO_REMOVE)
            .unwrap_or("")
            .split(',')
            .filter(|s| !s.is_empty())
            .collect();
        r.sort();
        r
    }
}

#[tokio::test]
async fn an_allowed_check_sets_removes_and_files_the_identity() {
    let f = fixture("").await;
    let key = f.key().await;
    let a = f
        .check("POST", "/check/api/orders?x=1", &[("x-api-key", &key)])
        .await;
    assert_eq!(a.status, StatusCode::OK, "{}", a.body);
    assert_eq!(a.get("x-tollgate-subject"), Some("team-a"));
    assert_eq!(a.get("x-tollgate-plan"), Some("silver"));
    assert_eq!(a.get("x-tollgate-auth-method"), Some("api_key"));
    assert!(a.get("x-tollgate-key-id").is_some());
    // Every identity header this identity has no value for is removed upstream.
    assert_eq!(a.removed(), ["x-tollgate-scopes", "x-tollgate-tenant"]);
    // The metadata Envoy's rate-limit actions read.
    assert_eq!(a.get("x-tollgate-metadata-subject"), Some("team-a"));
    assert_eq!(a.get("x-tollgate-metadata-plan"), Some("silver"));
    assert_eq!(a.get("x-tollgate-metadata-method"), Some("api_key"));
    assert_eq!(
        a.get("x-tollgate-metadata-key_id"),
        a.get("x-tollgate-key-id")
    );
    assert_eq!(a.body, "");
}

#[tokio::test]
async fn the_credential_is_removed_when_configured() {
    let f = fixture("headers: {remove_credential: true}").await;
    let key = f.key().await;
    let a = f
        .check("GET", "/check/api/orders", &[("x-api-key", &key)])
        .await;
    assert_eq!(a.status, StatusCode::OK);
    assert_eq!(
        a.removed(),
        ["x-api-key", "x-tollgate-scopes", "x-tollgate-tenant"]
    );
}

#[tokio::test]
async fn a_denial_carries_its_status_challenge_and_body_and_no_identity() {
    let f = fixture("").await;
    let a = f.check("GET", "/check/api/orders", &[]).await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert_eq!(a.get("www-authenticate"), Some("ApiKey realm=\"tollgate\""));
    assert_eq!(a.get("cache-control"), Some("no-store"));
    assert_eq!(a.body, "{\"error\":\"unauthorized\"}");
    assert!(
        a.headers
            .iter()
            .all(|(n, _)| !n.starts_with("x-tollgate") && n != HEADERS_TO_REMOVE),
        "{:?}",
        a.headers
    );
    let a = f
        .check("GET", "/check/api/orders", &[("x-api-key", "tgk_nope")])
        .await;
    assert_eq!(a.status, StatusCode::UNAUTHORIZED);
    assert!(a.get("www-authenticate").unwrap().contains("invalid_token"));
}

#[tokio::test]
async fn the_prefix_is_the_checks_and_the_rest_is_the_clients_path() {
    let f = fixture("").await;
    // Public under the prefix; the same path without it is not a check.
    assert_eq!(f.check("GET", "/check/healthz", &[]).await.status, 200);
    for outside in ["/healthz", "/checkhealthz", "/other/healthz"] {
        assert_eq!(f.check("GET", outside, &[]).await.status, 403, "{outside}");
    }
    // The policy still sees dot segments however the check spells them.
    assert_eq!(
        f.check("GET", "/check/healthz/%2e%2e/api", &[])
            .await
            .status,
        400
    );
}

#[tokio::test]
async fn a_repeated_credential_is_ambiguous() {
    let f = fixture("").await;
    let key = f.key().await;
    let a = f
        .check(
            "GET",
            "/check/api/orders",
            &[("x-api-key", &key), ("x-api-key", &key)],
        )
        .await;
    assert_eq!(a.status, StatusCode::BAD_REQUEST);
}

#[test]
fn the_source_address_is_only_envoys_header_and_only_an_address() {
    let parts = |v: Option<&str>| {
        let mut b = Request::builder()
            .uri("/a")
            .header("x-forwarded-for", "6.6.6.6");
        if let Some(v) = v {
            b = b.header(SOURCE_ADDRESS_HEADER, v);
        }
        b.body(()).unwrap().into_parts().0
    };
    let p = parts(None);
    assert_eq!(Http::of(&p, "").unwrap().source_address(), None);
    let p = parts(Some("203.0.113.7"));
    assert_eq!(
        Http::of(&p, "").unwrap().source_address(),
        Some("203.0.113.7")
    );
    let p = parts(Some("2001:db8::1"));
    assert_eq!(
        Http::of(&p, "").unwrap().source_address(),
        Some("2001:db8::1")
    );
    for junk in ["203.0.113.7:443", "6.6.6.6, 203.0.113.7", "-", ""] {
        let p = parts(Some(junk));
        assert_eq!(Http::of(&p, "").unwrap().source_address(), None, "{junk}");
    }
}

#[test]
fn what_the_flavour_cannot_carry_is_refused_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("authz.yaml");
    std::fs::write(
        &p,
        format!(
            r#"
api_keys:
  query_param: api_key
  store: {{type: embedded, path: {}}}
headers:
  remove_credential: true
  claims: {{email: x-tollgate-metadata-email}}
http_authz:
  path_prefix: check/
"#,
            dir.path().join("k.redb").display()
        ),
    )
    .unwrap();
    let e = load::<Config>(&Sources {
        file: Some(p),
        ..Default::default()
    })
    .unwrap_err()
    .to_string();
    assert!(e.contains("http_authz.path_prefix"), "{e}");
    assert!(e.contains("cannot remove a query parameter"), "{e}");
    assert!(
        e.contains("`x-tollgate-metadata-email` means something else"),
        "{e}"
    );
}

#[test]
fn the_client_certificate_is_envoys_header_when_not_empty() {
    let parts = |v: Option<&str>| {
        let mut b = Request::builder().uri("/a");
        if let Some(v) = v {
            b = b.header(PEER_CERTIFICATE_HEADER, v);
        }
        b.body(()).unwrap().into_parts().0
    };
    let p = parts(None);
    assert_eq!(Http::of(&p, "").unwrap().peer_certificate(), None);
    let p = parts(Some(""));
    assert_eq!(Http::of(&p, "").unwrap().peer_certificate(), None);
    let p = parts(Some("-----BEGIN%20CERTIFICATE-----%0A"));
    assert_eq!(
        Http::of(&p, "").unwrap().peer_certificate(),
        Some(PeerCertificate {
            principal: "",
            pem: Some("-----BEGIN%20CERTIFICATE-----%0A")
        })
    );
    // Its name is Envoy's: an identity header of that name is refused at load.
    assert!(HttpAuthzConfig::reserved("X-Tollgate-Peer-Certificate"));
}
