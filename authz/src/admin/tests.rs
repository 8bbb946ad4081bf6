//! The admin router through `oneshot`: every route and error, authentication, the audit log,
//! and the OpenAPI document held to the router.

use std::collections::BTreeSet;
use std::io::Write;
use std::sync::{Arc, Mutex};

use axum::body::Body;
use axum::http::{Request, StatusCode, header};
use serde_json::{Value, json};
use tower::ServiceExt;

use super::*;
use crate::apikey::{ApiKeyError, ApiKeysConfig, EmbeddedStoreConfig, KeyStoreConfig};

const TOKEN: &str = "admin-token-0123456789abcdef";

struct Admin {
    router: Router,
    keys: ApiKeys,
    _dir: tempfile::TempDir,
}

async fn admin() -> Admin {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ApiKeysConfig {
        store: KeyStoreConfig::Embedded(EmbeddedStoreConfig {
            path: dir.path().join("keys.redb"),
        }),
        ..ApiKeysConfig::default()
    };
    let keys = ApiKeys::open(&cfg).await.unwrap();
    let router = router_with_token(keys.clone(), Secret::new(TOKEN)).unwrap();
    Admin {
        router,
        keys,
        _dir: dir,
    }
}

struct Reply {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: Value,
}

impl Admin {
    async fn send(
        &self,
        method: &str,
        uri: &str,
        token: Option<&str>,
        body: Option<Value>,
    ) -> Reply {
        let mut req = Request::builder().method(method).uri(uri);
        if let Some(t) = token {
            req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
        }
        let req = match body {
            Some(b) => req
                .header(header::CONTENT_TYPE, "application/json")
                .body(Body::from(b.to_string())),
            None => req.body(Body::empty()),
        }
        .unwrap();
        send_request(&self.router, req).await
    }

    async fn call(&self, method: &str, uri: &str, body: Option<Value>) -> Reply {
        self.send(method, uri, Some(TOKEN), body).await
    }

    async fn create(&self, name: &str) -> (String, String) {
        let r = self
            .call(
                "POST",
                "/v1/keys",
                Some(json!({"name": name, "owner": "team-a", "plan": "gold"})),
            )
            .await;
        assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
        (
            r.body["key"]["id"].as_str().unwrap().into(),
            r.body["secret"].as_str().unwrap().into(),
        )
    }
}

async fn send_request(router: &Router, req: Request<Body>) -> Reply {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    let body = if bytes.is_empty() {
        Value::Null
    } else {
        serde_json::from_slice(&bytes).unwrap()
    };
    Reply {
        status,
        headers,
        body,
    }
}

fn assert_error(r: &Reply, status: StatusCode, code: &str) {
    assert_eq!(r.status, status, "{}", r.body);
    assert_eq!(r.body["error"], code, "{}", r.body);
    assert!(r.body["message"].as_str().is_some_and(|m| !m.is_empty()));
}

#[tokio::test]
async fn every_key_route_needs_the_credential() {
    let a = admin().await;
    let (id, _) = a.create("k").await;
    let routes = [
        ("POST", "/v1/keys".to_string()),
        ("GET", "/v1/keys".to_string()),
        ("GET", format!("/v1/keys/{id}")),
        ("PATCH", format!("/v1/keys/{id}")),
        ("POST", format!("/v1/keys/{id}/revoke")),
        ("POST", format!("/v1/keys/{id}/rotate")),
    ];
    for (method, uri) in &routes {
        let r = a
            .send(method, uri, None, Some(json!({"name": "x", "owner": "y"})))
            .await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
        assert_eq!(
            r.headers[header::WWW_AUTHENTICATE],
            "Bearer realm=\"tollgate-admin\""
        );

        let r = a
            .send(method, uri, Some("admin-token-0123456789abcdeX"), None)
            .await;
        assert_error(&r, StatusCode::UNAUTHORIZED, "unauthorized");
        assert!(
            r.headers[header::WWW_AUTHENTICATE]
                .to_str()
                .unwrap()
                .contains("error=\"invalid_token\"")
        );

        let basic = Request::builder()
            .method(*method)
            .uri(uri)
            .header(header::AUTHORIZATION, format!("Basic {TOKEN}"))
            .body(Body::empty())
            .unwrap();
        assert_eq!(
            send_request(&a.router, basic).await.status,
            StatusCode::UNAUTHORIZED
        );
    }
    // Nothing was changed by the refused requests.
    let info = a.keys.get(&id).await.unwrap();
    assert!(!info.revoked);
    assert_eq!(info.name, "k");
    assert_eq!(a.keys.list(None, 10).await.unwrap().keys.len(), 1);
}

#[tokio::test]
async fn the_router_refuses_to_exist_without_a_real_credential() {
    let dir = tempfile::tempdir().unwrap();
    let cfg = ApiKeysConfig {
        store: KeyStoreConfig::Embedded(EmbeddedStoreConfig {
            path: dir.path().join("k.redb"),
        }),
        ..ApiKeysConfig::default()
    };
    let keys = ApiKeys::open(&cfg).await.unwrap();
    let none = AdminConfig::default();
    assert!(matches!(
        load_token(&none, &Env::new()),
        Err(AdminError::NoCredential)
    ));
    let env: Env = [(TOKEN_ENV.to_string(), "  \n".to_string())].into();
    assert!(matches!(
        load_token(&none, &env),
        Err(AdminError::NoCredential)
    ));
    assert!(matches!(
        router_with_token(keys.clone(), Secret::new("short")),
        Err(AdminError::WeakCredential)
    ));

    let env: Env = [(TOKEN_ENV.to_string(), format!("{TOKEN}\n"))].into();
    assert!(load_token(&none, &env).unwrap().matches(TOKEN));
    // The file wins over the environment.
    let file = dir.path().join("token");
    std::fs::write(&file, "from-the-file-0123456789\n").unwrap();
    let with_file = AdminConfig {
        token_file: Some(file),
        ..AdminConfig::default()
    };
    assert!(
        load_token(&with_file, &env)
            .unwrap()
            .matches("from-the-file-0123456789")
    );
    let missing = AdminConfig {
        token_file: Some(dir.path().join("nope")),
        ..AdminConfig::default()
    };
    assert!(matches!(
        load_token(&missing, &env),
        Err(AdminError::TokenFile { .. })
    ));
    let mut errors = tollgate_common::config::Errors::for_file(None, None);
    missing.validate("admin", &mut errors);
    assert!(
        errors
            .finish(())
            .unwrap_err()
            .to_string()
            .contains("admin.token_file")
    );
}

#[tokio::test]
async fn create_returns_the_secret_once_and_the_key_works() {
    let a = admin().await;
    let r = a
        .call(
            "POST",
            "/v1/keys",
            Some(json!({"name": "ci", "owner": "team-a", "tenant": "acme", "scopes": ["read"], "plan": "gold", "expires_in": "30d"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED);
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    let secret = r.body["secret"].as_str().unwrap();
    assert!(r.body["warning"].as_str().unwrap().contains("only once"));
    assert_eq!(r.body["key"]["plan"], "gold");
    assert!(r.body["key"]["expires_at"].is_string());
    let who = a.keys.verify(secret).await.unwrap();
    assert_eq!(
        (who.subject.as_str(), who.tenant.as_deref()),
        ("team-a", Some("acme"))
    );

    // Neither get nor list ever shows it again.
    let id = r.body["key"]["id"].as_str().unwrap();
    let got = a.call("GET", &format!("/v1/keys/{id}"), None).await;
    assert_eq!(got.status, StatusCode::OK);
    let listed = a.call("GET", "/v1/keys", None).await;
    for body in [&got.body, &listed.body] {
        let text = body.to_string();
        assert!(!text.contains(secret) && !text.contains(&secret[17..]));
        assert!(!text.contains("hash"));
    }
}

#[tokio::test]
async fn create_rejects_bad_bodies() {
    let a = admin().await;
    for body in [
        json!({"name": "x"}),
        json!({"name": "x", "owner": "y", "colour": "red"}),
        json!({"name": "", "owner": "y"}),
        json!({"name": "x", "owner": "y", "scopes": ["a b"]}),
        json!({"name": "x", "owner": "y", "expires_at": "2030-01-01T00:00:00Z", "expires_in": "1d"}),
        json!({"name": "x", "owner": "y", "expires_at": "tomorrow"}),
    ] {
        let r = a.call("POST", "/v1/keys", Some(body.clone())).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    }
    let not_json = Request::builder()
        .method("POST")
        .uri("/v1/keys")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::from("name=x"))
        .unwrap();
    assert_error(
        &send_request(&a.router, not_json).await,
        StatusCode::UNSUPPORTED_MEDIA_TYPE,
        "invalid_request",
    );
    let broken = Request::builder()
        .method("POST")
        .uri("/v1/keys")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .header(header::CONTENT_TYPE, "application/json")
        .body(Body::from("{\"name\":"))
        .unwrap();
    assert_error(
        &send_request(&a.router, broken).await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert!(a.keys.list(None, 10).await.unwrap().keys.is_empty());
}

#[tokio::test]
async fn list_pages_with_limit_and_cursor() {
    let a = admin().await;
    let mut ids = Vec::new();
    for i in 0..3 {
        ids.push(a.create(&format!("k{i}")).await.0);
    }
    ids.sort();
    let first = a.call("GET", "/v1/keys?limit=2", None).await;
    assert_eq!(first.status, StatusCode::OK);
    assert_eq!(first.body["keys"].as_array().unwrap().len(), 2);
    let cursor = first.body["next_cursor"].as_str().unwrap();
    let second = a
        .call("GET", &format!("/v1/keys?limit=2&cursor={cursor}"), None)
        .await;
    assert_eq!(second.body["keys"].as_array().unwrap().len(), 1);
    assert_eq!(second.body["next_cursor"], Value::Null);
    let got: Vec<&str> = first.body["keys"]
        .as_array()
        .unwrap()
        .iter()
        .chain(second.body["keys"].as_array().unwrap())
        .map(|k| k["id"].as_str().unwrap())
        .collect();
    assert_eq!(got, ids);

    for bad in [
        "/v1/keys?limit=0",
        "/v1/keys?limit=1001",
        "/v1/keys?limit=x",
        "/v1/keys?cursor=%2F..",
        "/v1/keys?page=2",
    ] {
        assert_error(
            &a.call("GET", bad, None).await,
            StatusCode::BAD_REQUEST,
            "invalid_request",
        );
    }
}

#[tokio::test]
async fn get_patch_and_their_errors() {
    let a = admin().await;
    let (id, secret) = a.create("k").await;
    let missing = crate::apikey::format::generate_id();

    let r = a.call("GET", &format!("/v1/keys/{id}"), None).await;
    assert_eq!(
        (r.status, r.body["name"].as_str()),
        (StatusCode::OK, Some("k"))
    );
    assert_error(
        &a.call("GET", &format!("/v1/keys/{missing}"), None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &a.call("GET", "/v1/keys/not-an-id", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );

    let r = a
        .call(
            "PATCH",
            &format!("/v1/keys/{id}"),
            Some(json!({"plan": "silver", "scopes": ["a", "b"], "tenant": "t"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["plan"], "silver");
    let who = a.keys.verify(&secret).await.unwrap();
    assert_eq!((who.plan.as_deref(), who.scopes.len()), (Some("silver"), 2));
    // `null` clears, absence keeps.
    let r = a
        .call(
            "PATCH",
            &format!("/v1/keys/{id}"),
            Some(json!({"tenant": null})),
        )
        .await;
    assert_eq!(
        (r.body["tenant"].clone(), r.body["plan"].clone()),
        (Value::Null, json!("silver"))
    );

    assert_error(
        &a.call("PATCH", &format!("/v1/keys/{id}"), Some(json!({})))
            .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        &a.call(
            "PATCH",
            &format!("/v1/keys/{id}"),
            Some(json!({"secret": "x"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        &a.call(
            "PATCH",
            &format!("/v1/keys/{id}"),
            Some(json!({"owner": "a\nb"})),
        )
        .await,
        StatusCode::BAD_REQUEST,
        "invalid_request",
    );
    assert_error(
        &a.call(
            "PATCH",
            &format!("/v1/keys/{missing}"),
            Some(json!({"plan": "x"})),
        )
        .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test]
async fn revoke_and_rotate() {
    let a = admin().await;
    let (id, old) = a.create("k").await;

    let r = a
        .call(
            "POST",
            &format!("/v1/keys/{id}/rotate"),
            Some(json!({"grace_period": "1h"})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    let new = r.body["secret"].as_str().unwrap().to_string();
    assert_eq!(r.body["key"]["id"], id.as_str());
    assert!(r.body["key"]["previous_secret_valid_until"].is_string());
    assert!(
        a.keys.verify(&old).await.is_ok(),
        "old secret valid during the grace period"
    );
    assert!(a.keys.verify(&new).await.is_ok());

    // No body: no grace period.
    let r = a.call("POST", &format!("/v1/keys/{id}/rotate"), None).await;
    assert_eq!(r.status, StatusCode::OK);
    let newest = r.body["secret"].as_str().unwrap().to_string();
    assert!(a.keys.verify(&new).await.is_err());
    assert!(a.keys.verify(&newest).await.is_ok());

    for bad in [
        json!({"grace_period": "forever"}),
        json!({"grace_period": "91d"}),
        json!({"grace": "1h"}),
    ] {
        let r = a
            .call("POST", &format!("/v1/keys/{id}/rotate"), Some(bad))
            .await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
    }

    let r = a.call("POST", &format!("/v1/keys/{id}/revoke"), None).await;
    assert_eq!(
        (r.status, r.body["revoked"].as_bool()),
        (StatusCode::OK, Some(true))
    );
    assert!(matches!(
        a.keys.verify(&newest).await,
        Err(ApiKeyError::Revoked)
    ));
    assert_eq!(
        a.call("POST", &format!("/v1/keys/{id}/revoke"), None)
            .await
            .status,
        StatusCode::OK
    );
    assert_error(
        &a.call("POST", &format!("/v1/keys/{id}/rotate"), None).await,
        StatusCode::CONFLICT,
        "conflict",
    );

    let missing = crate::apikey::format::generate_id();
    assert_error(
        &a.call("POST", &format!("/v1/keys/{missing}/revoke"), None)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &a.call("POST", &format!("/v1/keys/{missing}/rotate"), None)
            .await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_store_outage_is_503() {
    let redis = tollgate_common::testing::RedisServer::start();
    let keys = ApiKeys::open(&crate::apikey::tests::redis_config(&redis))
        .await
        .unwrap();
    let a = Admin {
        router: router_with_token(keys.clone(), Secret::new(TOKEN)).unwrap(),
        keys,
        _dir: tempfile::tempdir().unwrap(),
    };
    let (id, _) = a.create("k").await;
    drop(redis);
    for (method, uri) in [
        ("GET", "/v1/keys".to_string()),
        ("GET", format!("/v1/keys/{id}")),
        ("POST", format!("/v1/keys/{id}/revoke")),
    ] {
        let r = a.call(method, &uri, None).await;
        assert_error(&r, StatusCode::SERVICE_UNAVAILABLE, "store_unavailable");
        assert!(
            !r.body["message"].as_str().unwrap().contains("127.0.0.1"),
            "no internals in the answer"
        );
    }
}

#[tokio::test]
async fn unknown_routes_and_methods_answer_in_json() {
    let a = admin().await;
    assert_error(
        &a.call("GET", "/v2/keys", None).await,
        StatusCode::NOT_FOUND,
        "not_found",
    );
    assert_error(
        &a.call("DELETE", "/v1/keys", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
    assert_error(
        &a.call("PUT", "/openapi.json", None).await,
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
    );
}

/// A `MakeWriter` into a shared buffer, to read the audit lines back.
#[derive(Clone, Default)]
struct Captured(Arc<Mutex<Vec<u8>>>);

impl Write for Captured {
    fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
        self.0.lock().unwrap().extend_from_slice(buf);
        Ok(buf.len())
    }
    fn flush(&mut self) -> std::io::Result<()> {
        Ok(())
    }
}

impl<'a> tracing_subscriber::fmt::MakeWriter<'a> for Captured {
    type Writer = Captured;
    fn make_writer(&'a self) -> Self::Writer {
        self.clone()
    }
}

#[tokio::test]
async fn every_change_is_audited_without_secrets() {
    let captured = Captured::default();
    let subscriber = tracing_subscriber::fmt()
        .json()
        .with_writer(captured.clone())
        .with_max_level(tracing::Level::INFO)
        .finish();
    let _guard = tracing::subscriber::set_default(subscriber);

    // Other tests hit the same callsites in parallel without a subscriber, and a callsite whose
    // first registration overlapped this subscriber's installation keeps a stale "never"
    // interest. So: one warm-up pass (after which every callsite involved is registered), a
    // rebuild of the interest cache, then the pass that counts.
    run_audited_changes(&admin().await).await;
    tracing::callsite::rebuild_interest_cache();
    captured.0.lock().unwrap().clear();
    let (id, secret, new_secret) = run_audited_changes(&admin().await).await;

    let text = String::from_utf8(captured.0.lock().unwrap().clone()).unwrap();
    let lines: Vec<Value> = text
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .filter(|v: &Value| v["target"] == "audit")
        .collect();
    let actions: Vec<&str> = lines
        .iter()
        .filter_map(|l| l["fields"]["action"].as_str())
        .collect();
    assert_eq!(
        actions,
        [
            "credential_loaded",
            "created",
            "updated",
            "rotated",
            "revoked",
            "authenticate"
        ]
    );
    // The actor is the one the credential's load announced, and derived from nothing secret:
    // the same token loaded twice gets two unrelated names.
    let actor = lines[0]["fields"]["actor"].as_str().unwrap().to_string();
    assert!(
        actor.starts_with("admin-token:") && actor.len() == 24,
        "{actor}"
    );
    for l in &lines[1..5] {
        assert_eq!(l["fields"]["key_id"], id.as_str());
        assert_eq!(l["fields"]["actor"], actor.as_str());
        assert!(l["fields"]["at"].as_str().is_some_and(|t| t.ends_with('Z')));
    }
    let again = Credential::new(Secret::new(TOKEN)).actor.to_string();
    assert_ne!(again, actor);
    use sha2::Digest;
    let digest: String = sha2::Sha256::digest(TOKEN.as_bytes())
        .iter()
        .map(|b| format!("{b:02x}"))
        .collect();
    assert!(!digest.contains(&actor["admin-token:".len()..]));
    for needle in [
        secret.as_str(),
        new_secret.as_str(),
        TOKEN,
        "wrong-token-0123456789abcdef",
        &secret[17..],
    ] {
        assert!(!text.contains(needle), "a secret reached the log");
    }
}

/// Create, update, rotate, revoke, and a refused credential; returns the id and both keys.
async fn run_audited_changes(a: &Admin) -> (String, String, String) {
    let (id, secret) = a.create("audited").await;
    let uri = format!("/v1/keys/{id}");
    a.call("PATCH", &uri, Some(json!({"plan": "silver"}))).await;
    let rotated = a
        .call(
            "POST",
            &format!("{uri}/rotate"),
            Some(json!({"grace_period": "1m"})),
        )
        .await;
    let new_secret = rotated.body["secret"].as_str().unwrap().to_string();
    a.call("POST", &format!("{uri}/revoke"), None).await;
    a.send(
        "POST",
        &format!("{uri}/revoke"),
        Some("wrong-token-0123456789abcdef"),
        None,
    )
    .await;
    (id, secret, new_secret)
}

/// (method, path) of every operation in the document.
fn documented(doc: &Value) -> BTreeSet<(String, String)> {
    let mut out = BTreeSet::new();
    for (path, item) in doc["paths"].as_object().unwrap() {
        for method in item.as_object().unwrap().keys() {
            if [
                "get", "post", "patch", "put", "delete", "head", "options", "trace",
            ]
            .contains(&method.as_str())
            {
                out.insert((method.to_uppercase(), path.clone()));
            }
        }
    }
    out
}

#[tokio::test]
async fn the_openapi_document_matches_the_router() {
    let a = admin().await;
    let (_, routes) = build(
        a.keys.clone(),
        Secret::new(TOKEN),
        Sources {
            stats: stats::Stats::with_source(Box::new(String::new), None),
            limits: None,
        },
        true,
    )
    .unwrap();
    let served: BTreeSet<(String, String)> = routes
        .iter()
        .map(|(m, p)| (m.to_string(), p.to_string()))
        .collect();
    let doc = a.send("GET", "/openapi.json", None, None).await;
    assert_eq!(
        doc.status,
        StatusCode::OK,
        "the document needs no credential"
    );
    assert_eq!(doc.body["openapi"], "3.0.3");
    assert_eq!(
        documented(&doc.body),
        served,
        "documented routes == routed routes"
    );

    // Every documented operation is really routed (not a 404/405 from the fallbacks).
    let (id, _) = a.create("probe").await;
    for (method, path) in documented(&doc.body) {
        let uri = path.replace("{id}", &id);
        let r = a.call(&method, &uri, None).await;
        assert_ne!(r.body["message"], "no such route", "{method} {path}");
        assert_ne!(r.status, StatusCode::METHOD_NOT_ALLOWED, "{method} {path}");
    }
}

/// Every `$ref` in `v` points at an existing schema.
fn check_refs(v: &Value, doc: &Value) {
    match v {
        Value::Object(m) => {
            if let Some(Value::String(r)) = m.get("$ref") {
                let name = r
                    .strip_prefix("#/components/schemas/")
                    .expect("local schema ref");
                assert!(
                    doc["components"]["schemas"].get(name).is_some(),
                    "dangling {r}"
                );
            }
            m.values().for_each(|x| check_refs(x, doc));
        }
        Value::Array(a) => a.iter().for_each(|x| check_refs(x, doc)),
        _ => {}
    }
}

fn properties(doc: &Value, schema: &str) -> BTreeSet<String> {
    doc["components"]["schemas"][schema]["properties"]
        .as_object()
        .unwrap()
        .keys()
        .cloned()
        .collect()
}

fn keys_of(v: &Value) -> BTreeSet<String> {
    v.as_object().unwrap().keys().cloned().collect()
}

#[tokio::test]
async fn the_openapi_schemas_match_what_is_sent() {
    let a = admin().await;
    let doc = openapi::document();
    check_refs(&doc, &doc);
    // Only the document itself is open; everything else inherits the bearer requirement.
    for (method, path) in documented(&doc) {
        let op = &doc["paths"][&path][method.to_lowercase()];
        assert_eq!(
            op["security"] == json!([]),
            path == "/openapi.json",
            "{method} {path}"
        );
        assert!(op["operationId"].is_string());
        if path != "/openapi.json" {
            assert!(
                op["responses"]["401"].is_object(),
                "{method} {path} documents 401"
            );
        }
    }
    let created = a
        .call("POST", "/v1/keys", Some(json!({"name": "n", "owner": "o"})))
        .await;
    assert_eq!(keys_of(&created.body), properties(&doc, "IssuedKey"));
    assert_eq!(keys_of(&created.body["key"]), properties(&doc, "Key"));
    let page = a.call("GET", "/v1/keys", None).await;
    assert_eq!(keys_of(&page.body), properties(&doc, "KeyPage"));
    let err = a.call("GET", "/nope", None).await;
    assert_eq!(keys_of(&err.body), properties(&doc, "Error"));
    let secret_pattern = regex::Regex::new(
        doc["components"]["schemas"]["IssuedKey"]["properties"]["secret"]["pattern"]
            .as_str()
            .unwrap(),
    )
    .unwrap();
    assert!(secret_pattern.is_match(created.body["secret"].as_str().unwrap()));
}

mod console;
mod usage;
