//! CPU cost of one Check decision in-process (no gRPC, no Envoy): a cached JWT, an API key, and
//! an uncached RS256 verification. `cargo run -p tollgate-authz --release --example check_cost`
//!
//! Complements the gRPC / Envoy benchmarks in `bench/`, which include transport costs.

// The example shares its package's dependencies; the lint is for the library's.
#![allow(unused_crate_dependencies)]

use std::hint::black_box;
use std::time::{Instant, SystemTime, UNIX_EPOCH};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use prost::Message;
use serde_json::json;
use tollgate_authz::apikey::NewKey;
use tollgate_authz::{AuthzService, Config, build};
use tollgate_proto::auth::attribute_context::{HttpRequest, Request};
use tollgate_proto::auth::{AttributeContext, CheckRequest, CheckResponse, read};

const ISSUER: &str = "https://issuer.test";

/// A request shaped like Envoy's (the credential plus a dozen ordinary headers), read as the
/// server reads it.
fn request(credential: (&str, &str)) -> read::CheckRequest {
    read::CheckRequest::read(&full_request(credential))
}

/// The message Envoy sends, before the server reads it.
fn full_request(credential: (&str, &str)) -> CheckRequest {
    let mut headers: std::collections::HashMap<String, String> = (0..12)
        .map(|i| (format!("x-header-{i}"), "v".repeat(20)))
        .collect();
    headers.insert(credential.0.into(), credential.1.into());
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: "GET".into(),
                    host: "api.example.com".into(),
                    path: "/api/orders/7".into(),
                    headers,
                    ..Default::default()
                }),
                ..Default::default()
            }),
            ..Default::default()
        }),
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() {
    // Before any other use of jsonwebtoken, as `build` would.
    assert!(tollgate_authz::identity::crypto::install());
    let dir = tempfile::tempdir().unwrap();
    let key =
        EncodingKey::from_rsa_pem(include_bytes!("../src/identity/testdata/rsa1.pem")).unwrap();
    let mut jwk = jsonwebtoken::jwk::Jwk::from_encoding_key(&key, Algorithm::RS256).unwrap();
    jwk.common.key_id = Some("k1".into());
    let yaml = format!(
        "policy:\n  rules:\n    - name: api\n      path: {{prefix: /api}}\n\
         jwt:\n  issuers:\n    - issuer: {ISSUER}\n      audiences: [api]\n      keys: [{}]\n\
         api_keys:\n  store: {{type: embedded, path: {}}}\n",
        serde_json::to_string(&jwk).unwrap(),
        dir.path().join("keys.redb").display()
    );
    let cfg: Config = serde_yaml::from_str(&yaml).unwrap();
    let built = build(&cfg).await.unwrap();
    // Through the gRPC adapter: the CheckRequest read and the CheckResponse built are part of
    // what a Check costs.
    let authz = &AuthzService::new(built.authorizer.clone());

    let now = SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .unwrap()
        .as_secs();
    let mut header = Header::new(Algorithm::RS256);
    header.kid = Some("k1".into());
    let token = |jti: u64| {
        let claims = json!({"iss": ISSUER, "aud": "api", "sub": "alice", "exp": now + 3600,
                            "scope": "read write", "jti": jti});
        format!(
            "Bearer {}",
            jsonwebtoken::encode(&header, &claims, &key).unwrap()
        )
    };
    let (_, secret) = built
        .api_keys
        .as_ref()
        .unwrap()
        .create(NewKey {
            name: "bench".into(),
            owner: "team".into(),
            plan: Some("gold".into()),
            ..Default::default()
        })
        .await
        .unwrap();

    let bearer = token(0);
    let cases = [
        ("cached JWT", request(("authorization", &bearer))),
        ("API key", request(("x-api-key", secret.expose()))),
    ];
    for (name, req) in &cases {
        let answer = CheckResponse::decode(authz.answer(req).await.bytes()).unwrap();
        assert_eq!(answer.status.unwrap().code, 0, "{name} must be allowed");
        for _ in 0..5_000 {
            black_box(authz.answer(req).await);
        }
        let n = 200_000;
        let t = Instant::now();
        for _ in 0..n {
            black_box(authz.answer(req).await);
        }
        println!(
            "{name}: {:.2} µs per Check",
            t.elapsed().as_secs_f64() * 1e6 / n as f64
        );
    }

    let n = 2_000;
    let requests: Vec<String> = (1..=n).map(token).collect();
    let requests: Vec<read::CheckRequest> = requests
        .iter()
        .map(|t| request(("authorization", t)))
        .collect();
    let t = Instant::now();
    for req in &requests {
        black_box(authz.answer(req).await);
    }
    println!(
        "uncached RS256 JWT: {:.1} µs per Check",
        t.elapsed().as_secs_f64() * 1e6 / n as f64
    );
}
