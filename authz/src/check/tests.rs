//! Tests of the Check decision, asked through the gRPC adapter so that what Envoy would read
//! is checked too: policy selection, credentials (and their ambiguity), RFC 6750 answers,
//! identity headers (spoofing, sanitising) and dynamic metadata.

use std::collections::HashMap;

use jsonwebtoken::Algorithm;
use serde_json::json;
use tollgate_common::config::{Sources, load};
use tollgate_proto::auth::attribute_context::{HttpRequest, Request};
use tollgate_proto::auth::{AttributeContext, CheckRequest, CheckResponse, HttpResponse};
use tollgate_proto::pb::envoy::r#type::v3::StatusCode;

use crate::apikey::NewKey;
use crate::identity::jwt::tests::{AUD, EC, ISS, RSA1, claims, public_jwk, sign};
use crate::{AuthzService, Built, Config, build};

fn now() -> u64 {
    crate::identity::unix(std::time::SystemTime::now())
}

struct Fixture {
    built: Built,
    grpc: AuthzService,
    _dir: tempfile::TempDir,
}

async fn fixture(extra: &str) -> Fixture {
    let dir = tempfile::tempdir().unwrap();
    let keys = serde_json::to_string(&vec![public_jwk(RSA1, Algorithm::RS256, "k1")]).unwrap();
    let yaml = format!(
        r#"
policy:
  identity_order: [jwt, api_key]
  rules:
    - name: health
      path: {{exact: /healthz}}
      public: true
    - name: admin
      path: {{prefix: /admin}}
      identity: [jwt]
      conditions:
        - scope: admin
    - name: tenant-only
      path: {{prefix: /acme}}
      conditions:
        - claim: tenant
          equals: acme
    - name: keys-only
      path: {{prefix: /keys}}
      identity: [api_key]
    - name: api
      path: {{prefix: /api}}
jwt:
  issuers:
    - issuer: {ISS}
      audiences: [{AUD}]
      keys: {keys}
      claims: {{tenant: org, plan: tier}}
api_keys:
  query_param: api_key
  store: {{type: embedded, path: {}}}
headers:
  claims: {{email: x-user-email}}
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
    let built = build(&cfg).await.unwrap();
    Fixture {
        grpc: AuthzService::new(built.authorizer.clone()),
        built,
        _dir: dir,
    }
}

fn req(method: &str, path: &str, headers: &[(&str, &str)], ext: &[(&str, &str)]) -> CheckRequest {
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(Request {
                http: Some(HttpRequest {
                    method: method.into(),
                    host: "api.example.com".into(),
                    path: path.into(),
                    headers: headers
                        .iter()
                        .map(|(k, v)| (k.to_string(), v.to_string()))
                        .collect(),
                    ..Default::default()
                }),
                ..Default::default()
            }),
            context_extensions: ext
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
            ..Default::default()
        }),
    }
}

/// The HTTP status Envoy would answer (200 for OK).
fn status(r: &CheckResponse) -> i32 {
    match r.http_response.as_ref().unwrap() {
        HttpResponse::OkResponse(_) => 200,
        HttpResponse::DeniedResponse(d) => d.status.as_ref().unwrap().code,
        HttpResponse::ErrorResponse(_) => panic!("error response"),
    }
}

fn headers(r: &CheckResponse) -> HashMap<String, String> {
    let hs = match r.http_response.as_ref().unwrap() {
        HttpResponse::OkResponse(o) => &o.headers,
        HttpResponse::DeniedResponse(d) => &d.headers,
        HttpResponse::ErrorResponse(_) => panic!("error response"),
    };
    hs.iter()
        .map(|h| h.header.as_ref().unwrap())
        .map(|h| (h.key.clone(), h.value.clone()))
        .collect()
}

fn removed(r: &CheckResponse) -> Vec<String> {
    match r.http_response.as_ref().unwrap() {
        HttpResponse::OkResponse(o) => o.headers_to_remove.clone(),
        _ => panic!("denied"),
    }
}

fn body(r: &CheckResponse) -> String {
    match r.http_response.as_ref().unwrap() {
        HttpResponse::DeniedResponse(d) => d.body.clone(),
        _ => panic!("allowed"),
    }
}

fn meta(r: &CheckResponse, k: &str) -> Option<String> {
    tollgate_proto::metadata::get_str(r.dynamic_metadata.as_ref()?, k).map(str::to_string)
}

const IDENTITY_HEADERS: [&str; 7] = [
    "x-tollgate-subject",
    "x-tollgate-tenant",
    "x-tollgate-plan",
    "x-tollgate-scopes",
    "x-tollgate-auth-method",
    "x-tollgate-key-id",
    "x-user-email",
];

fn token(extra: serde_json::Value) -> String {
    let mut c = claims(now());
    for (k, v) in extra.as_object().unwrap() {
        c[k] = v.clone();
    }
    format!("Bearer {}", sign(RSA1, Algorithm::RS256, Some("k1"), &c))
}

#[tokio::test]
async fn allowed_jwt_sets_identity_headers_and_metadata() {
    let f = fixture("").await;
    let a = &f.grpc;
    let t = token(json!({"tier": "gold", "email": "alice@example.com"}));
    let r = a
        .check(&req("GET", "/api/x", &[("authorization", &t)], &[]))
        .await;
    assert_eq!(status(&r), 200);
    assert_eq!(r.status.as_ref().unwrap().code, 0);
    let h = headers(&r);
    assert_eq!(h["x-tollgate-subject"], "alice");
    assert_eq!(h["x-tollgate-tenant"], "acme");
    assert_eq!(h["x-tollgate-plan"], "gold");
    assert_eq!(h["x-tollgate-scopes"], "read write");
    assert_eq!(h["x-tollgate-auth-method"], "jwt");
    assert_eq!(h["x-user-email"], "alice@example.com");
    assert_eq!(
        removed(&r),
        vec!["x-tollgate-key-id"],
        "unset identity headers are stripped"
    );
    assert_eq!(meta(&r, "subject").as_deref(), Some("alice"));
    assert_eq!(meta(&r, "plan").as_deref(), Some("gold"));
    assert_eq!(meta(&r, "tenant").as_deref(), Some("acme"));
    assert_eq!(meta(&r, "method").as_deref(), Some("jwt"));
    assert_eq!(meta(&r, "key_id"), None);
}

#[tokio::test]
async fn rfc6750_denials() {
    let f = fixture("").await;
    let a = &f.grpc;
    let r = a.check(&req("GET", "/api/x", &[], &[])).await;
    assert_eq!(status(&r), StatusCode::Unauthorized as i32);
    assert_eq!(headers(&r)["www-authenticate"], "Bearer realm=\"tollgate\"");
    assert_eq!(r.dynamic_metadata, None);

    let r = a
        .check(&req(
            "GET",
            "/api/x",
            &[("authorization", "Bearer abc.def.ghi")],
            &[],
        ))
        .await;
    assert_eq!(status(&r), 401);
    assert_eq!(
        headers(&r)["www-authenticate"],
        "Bearer realm=\"tollgate\", error=\"invalid_token\""
    );
    assert_eq!(
        body(&r),
        "{\"error\":\"invalid_token\"}",
        "no reason beyond the RFC code"
    );

    for bad in ["Bearer", "Bearer a b", "Bearer a,b", "Bearer \"x\""] {
        let r = a
            .check(&req("GET", "/api/x", &[("authorization", bad)], &[]))
            .await;
        assert_eq!(status(&r), 400, "{bad}");
        assert!(headers(&r)["www-authenticate"].contains("invalid_request"));
    }
    // Another scheme is not ours: no credential.
    let r = a
        .check(&req(
            "GET",
            "/api/x",
            &[("authorization", "Basic YTpi")],
            &[],
        ))
        .await;
    assert_eq!(status(&r), 401);

    let r = a
        .check(&req(
            "GET",
            "/admin/x",
            &[("authorization", &token(json!({})))],
            &[],
        ))
        .await;
    assert_eq!(status(&r), 403);
    assert_eq!(
        headers(&r)["www-authenticate"],
        "Bearer realm=\"tollgate\", error=\"insufficient_scope\", scope=\"admin\""
    );
    let r = a
        .check(&req(
            "GET",
            "/admin/x",
            &[("authorization", &token(json!({"scope": "admin"})))],
            &[],
        ))
        .await;
    assert_eq!(status(&r), 200);

    let r = a
        .check(&req(
            "GET",
            "/acme",
            &[("authorization", &token(json!({"org": "other"})))],
            &[],
        ))
        .await;
    assert_eq!(status(&r), 403);
    let r = a
        .check(&req(
            "GET",
            "/nowhere",
            &[("authorization", &token(json!({})))],
            &[],
        ))
        .await;
    assert_eq!(status(&r), 403, "no rule matched: deny");
    assert_eq!(body(&r), "{\"error\":\"access_denied\"}");

    let r = a.check(&CheckRequest::default()).await;
    assert_eq!(status(&r), 403);
}

#[tokio::test]
async fn expired_and_foreign_tokens_are_invalid() {
    let f = fixture("").await;
    let a = &f.grpc;
    let t = token(json!({"exp": now() - 3600}));
    assert_eq!(
        status(
            &a.check(&req("GET", "/api", &[("authorization", &t)], &[]))
                .await
        ),
        401
    );
    let t = token(json!({"aud": "https://elsewhere.test"}));
    assert_eq!(
        status(
            &a.check(&req("GET", "/api", &[("authorization", &t)], &[]))
                .await
        ),
        401
    );
    let t = format!(
        "Bearer {}",
        sign(EC, Algorithm::ES256, Some("k1"), &claims(now()))
    );
    assert_eq!(
        status(
            &a.check(&req("GET", "/api", &[("authorization", &t)], &[]))
                .await
        ),
        401
    );
}

#[tokio::test]
async fn public_routes_strip_spoofed_identity_headers() {
    let f = fixture("").await;
    let a = &f.grpc;
    let spoof: Vec<(&str, &str)> = IDENTITY_HEADERS.iter().map(|h| (*h, "root")).collect();
    let r = a.check(&req("GET", "/healthz", &spoof, &[])).await;
    assert_eq!(status(&r), 200);
    let h = headers(&r);
    assert_eq!(h["x-tollgate-auth-method"], "anonymous");
    let mut rm = removed(&r);
    rm.sort();
    let mut want: Vec<String> = IDENTITY_HEADERS
        .iter()
        .filter(|h| **h != "x-tollgate-auth-method")
        .map(|h| h.to_string())
        .collect();
    want.sort();
    assert_eq!(rm, want);

    // On an authenticated route, the client's copies are overwritten or removed too.
    let mut hs = spoof.clone();
    let t = token(json!({}));
    hs.push(("authorization", &t));
    let r = a.check(&req("GET", "/api", &hs, &[])).await;
    let h = headers(&r);
    assert_eq!(h["x-tollgate-subject"], "alice");
    for name in IDENTITY_HEADERS {
        assert!(
            h.contains_key(name) ^ removed(&r).iter().any(|x| x == name),
            "{name} neither set nor removed"
        );
    }
}

#[tokio::test]
async fn values_that_cannot_be_forwarded_faithfully_refuse_the_token() {
    let f = fixture("").await;
    let a = &f.grpc;
    for claims in [
        json!({"sub": "al\r\nx-admin: 1\u{0}ice"}),
        json!({"sub": "admin\u{1}"}),
        json!({"org": "acme\u{7f}"}),
        json!({"email": "a".repeat(1025)}),
        json!({"scope": ["read", "read admin"]}),
    ] {
        let t = token(claims.clone());
        let r = a
            .check(&req("GET", "/api", &[("authorization", &t)], &[]))
            .await;
        assert_eq!(status(&r), 401, "{claims}");
        assert!(
            headers(&r)["www-authenticate"].contains("error=\"invalid_token\""),
            "{claims}"
        );
    }
    let t = token(json!({"groups": ["users,admin"], "email": "a".repeat(1024)}));
    let r = a
        .check(&req("GET", "/api", &[("authorization", &t)], &[]))
        .await;
    assert_eq!(status(&r), 200);
    assert_eq!(headers(&r)["x-user-email"].len(), 1024);
}

#[tokio::test]
async fn conditions_see_the_tenant_the_upstream_is_told() {
    let f = fixture("").await;
    let a = &f.grpc;
    // `tenant` comes from the `org` claim; a raw `tenant` claim changes nothing.
    let t = token(json!({"org": "globex", "tenant": "acme"}));
    let r = a
        .check(&req("GET", "/acme", &[("authorization", &t)], &[]))
        .await;
    assert_eq!(status(&r), 403);
    let t = token(json!({"org": "acme", "tenant": "globex"}));
    let r = a
        .check(&req("GET", "/acme", &[("authorization", &t)], &[]))
        .await;
    assert_eq!(status(&r), 200);
    assert_eq!(headers(&r)["x-tollgate-tenant"], "acme");
}

#[tokio::test]
async fn dot_segments_are_refused_and_path_parameters_ignored() {
    let f = fixture("").await;
    let a = &f.grpc;
    for p in [
        "/healthz/..;/admin",
        "/healthz/%2e%2e/admin",
        "/x/.;/healthz",
    ] {
        let r = a.check(&req("GET", p, &[], &[])).await;
        assert_eq!(status(&r), 400, "{p}");
        assert_eq!(body(&r), "{\"error\":\"invalid_request\"}");
    }
    // `/admin;x` is `/admin` to Tomcat-like upstreams, so it is `/admin` to the policy.
    let t = token(json!({}));
    let r = a
        .check(&req("GET", "/admin;x/users", &[("authorization", &t)], &[]))
        .await;
    assert_eq!(status(&r), 403, "the admin rule applies");
    let r = a
        .check(&req("GET", "/healthz;jsessionid=1", &[], &[]))
        .await;
    assert_eq!(status(&r), 200, "the public health rule applies");
}

#[tokio::test]
async fn api_keys_and_ambiguous_credentials() {
    let f = fixture("").await;
    let a = &f.grpc;
    let keys = f.built.api_keys.as_ref().unwrap();
    let (info, secret) = keys
        .create(NewKey {
            name: "ci".into(),
            owner: "team-a".into(),
            tenant: Some("acme".into()),
            scopes: vec!["read".into()],
            plan: Some("silver".into()),
            rate_limit: None,
            expires_at: None,
        })
        .await
        .unwrap();
    let key = secret.expose();
    let r = a
        .check(&req("GET", "/keys/x", &[("x-api-key", key)], &[]))
        .await;
    assert_eq!(status(&r), 200);
    let h = headers(&r);
    assert_eq!(h["x-tollgate-subject"], "team-a");
    assert_eq!(h["x-tollgate-key-id"], info.id);
    assert_eq!(h["x-tollgate-auth-method"], "api_key");
    assert_eq!(meta(&r, "plan").as_deref(), Some("silver"));
    assert_eq!(meta(&r, "key_id").as_deref(), Some(info.id.as_str()));
    assert!(
        !removed(&r).contains(&"x-api-key".to_string()),
        "credential kept unless configured"
    );

    let r = a
        .check(&req("GET", "/keys/x", &[("x-api-key", "tgk_nope")], &[]))
        .await;
    assert_eq!(status(&r), 401);
    assert!(
        headers(&r)["www-authenticate"]
            .starts_with("ApiKey realm=\"tollgate\", error=\"invalid_token\"")
    );

    // Both a bearer token and an API key: 400, whichever would have been valid.
    let t = token(json!({}));
    let r = a
        .check(&req(
            "GET",
            "/api",
            &[("authorization", &t), ("x-api-key", key)],
            &[],
        ))
        .await;
    assert_eq!(status(&r), 400);
    assert_eq!(body(&r), "{\"error\":\"invalid_request\"}");

    // A route that takes only API keys ignores a bearer token (it may be for the upstream).
    let r = a
        .check(&req("GET", "/keys", &[("authorization", &t)], &[]))
        .await;
    assert_eq!(status(&r), 401);
    assert!(headers(&r)["www-authenticate"].starts_with("ApiKey"));

    keys.revoke(&info.id).await.unwrap();
    let r = a
        .check(&req("GET", "/keys/x", &[("x-api-key", key)], &[]))
        .await;
    assert_eq!(status(&r), 401, "revoked");
}

#[tokio::test]
async fn query_parameter_keys_and_credential_removal() {
    let f = fixture("  remove_credential: true\n").await;
    let a = &f.grpc;
    let t = token(json!({}));
    let r = a
        .check(&req("GET", "/api", &[("authorization", &t)], &[]))
        .await;
    assert!(removed(&r).contains(&"authorization".to_string()));

    let keys = f.built.api_keys.as_ref().unwrap();
    let (_, secret) = keys
        .create(NewKey {
            name: "q".into(),
            owner: "o".into(),
            ..Default::default()
        })
        .await
        .unwrap();
    let key = secret.expose();
    let path = format!("/keys?x=1&api_key={key}");
    let r = a.check(&req("GET", &path, &[], &[])).await;
    assert_eq!(status(&r), 200);
    match r.http_response.as_ref().unwrap() {
        HttpResponse::OkResponse(o) => {
            assert_eq!(
                o.query_parameters_to_remove,
                vec!["api_key"],
                "the key leaves the query"
            );
        }
        _ => unreachable!(),
    }
    let r = a
        .check(&req("GET", "/keys", &[("x-api-key", key)], &[]))
        .await;
    assert!(removed(&r).contains(&"x-api-key".to_string()));
    let r = a
        .check(&req("GET", &path, &[("x-api-key", key)], &[]))
        .await;
    assert_eq!(
        status(&r),
        400,
        "a key in both the header and the query is ambiguous"
    );
    // Repeated in one place: the query twice, a spelling that decodes to the name, two headers.
    for path in [
        format!("/keys?api_key={key}&api_key=tgk_other"),
        format!("/keys?api_key={key}&api_key="),
        format!("/keys?api_key={key}&api%5Fkey=tgk_other"),
        format!("/keys?api%5fkey={key}"),
    ] {
        let r = a.check(&req("GET", &path, &[], &[])).await;
        assert_eq!(status(&r), 400, "{path}");
        assert_eq!(body(&r), "{\"error\":\"invalid_request\"}");
    }
    let joined = format!("{key},{key}");
    let r = a
        .check(&req("GET", "/keys", &[("x-api-key", &joined)], &[]))
        .await;
    assert_eq!(status(&r), 400, "two API key headers");
    let r = a
        .check(&req(
            "GET",
            &format!("/keys?api_keyx=1&x=api_key&api_key={key}"),
            &[],
            &[],
        ))
        .await;
    assert_eq!(status(&r), 200, "other parameters are not the credential");
}

#[tokio::test]
async fn context_extensions_override_per_route() {
    let f = fixture("").await;
    let a = &f.grpc;
    let t = token(json!({}));
    let auth = [("authorization", t.as_str())];
    // Name a rule: /nowhere would be denied, but the route says "use `api`".
    let r = a
        .check(&req("GET", "/nowhere", &auth, &[("tollgate.rule", "api")]))
        .await;
    assert_eq!(status(&r), 200);
    let r = a
        .check(&req("GET", "/api", &[], &[("tollgate.rule", "health")]))
        .await;
    assert_eq!(status(&r), 200, "the route made itself public");
    let r = a
        .check(&req("GET", "/api", &auth, &[("tollgate.rule", "missing")]))
        .await;
    assert_eq!(status(&r), 403, "an unknown rule name denies");
    let r = a
        .check(&req(
            "GET",
            "/api",
            &auth,
            &[("tollgate.scopes", "read write")],
        ))
        .await;
    assert_eq!(status(&r), 200);
    let r = a
        .check(&req(
            "GET",
            "/api",
            &auth,
            &[("tollgate.scopes", "billing")],
        ))
        .await;
    assert_eq!(status(&r), 403);
    assert!(headers(&r)["www-authenticate"].contains("scope=\"billing\""));
    let r = a
        .check(&req(
            "GET",
            "/api",
            &auth,
            &[("tollgate.identity", "api_key")],
        ))
        .await;
    assert_eq!(status(&r), 401, "the route accepts API keys only");
    let r = a
        .check(&req(
            "GET",
            "/api",
            &auth,
            &[("tollgate.identity", "kerberos")],
        ))
        .await;
    assert_eq!(status(&r), 403);
}

/// The decision itself, asked with a plain request (as an adapter that is not gRPC would).
mod decision {
    use std::sync::Arc;

    use super::*;
    use crate::check::{Decision, MetadataValue, OwnedRequest};
    use crate::identity::Method;
    use crate::reason::Reason;

    fn allowed(d: Decision) -> crate::check::Allow {
        match d {
            Decision::Allow(a) => a,
            Decision::Deny(d) => panic!("denied: {d:?}"),
        }
    }

    #[tokio::test]
    async fn a_disabled_route_is_anonymous_and_keeps_stripping_identity_headers() {
        let f = fixture("").await;
        let a = &f.built.authorizer;
        let mut r = OwnedRequest::new("GET", "/admin/x").header("x-tollgate-subject", "root");
        r.disabled = true;
        let d = allowed(a.check(&r).await);
        assert_eq!(d.reason, Reason::RouteDisabled);
        assert_eq!(d.identity.method, Method::Anonymous);
        assert!(
            d.remove_headers
                .iter()
                .any(|h| &**h == "x-tollgate-subject")
        );
        assert_eq!(
            d.set_headers,
            vec![(Arc::from("x-tollgate-auth-method"), "anonymous".to_string())]
        );
        r.disabled = false;
        assert!(
            !a.check(&r).await.is_allowed(),
            "without the setting, /admin needs a token"
        );
    }

    #[tokio::test]
    async fn a_header_sent_twice_is_ambiguous_whatever_its_values() {
        let f = fixture("").await;
        let a = &f.built.authorizer;
        let r = OwnedRequest::new("GET", "/keys/x")
            .header("x-api-key", "tgk_a")
            .header("x-api-key", "tgk_b");
        match a.check(&r).await {
            Decision::Deny(d) => {
                assert_eq!((d.status, d.reason), (400, Reason::AmbiguousCredentials));
            }
            Decision::Allow(_) => panic!("allowed"),
        }
    }

    #[tokio::test]
    async fn the_route_names_the_rule_and_the_answer_names_it_back() {
        let f = fixture("").await;
        let a = &f.built.authorizer;
        let t = token(json!({}));
        let mut r = OwnedRequest::new("GET", "/somewhere").header("authorization", &t);
        assert_eq!(a.check(&r).await.reason(), Reason::NoRule);
        r.rule = Some("api".into());
        let d = allowed(a.check(&r).await);
        assert_eq!((&*d.rule, d.reason), ("api", Reason::Allowed));
        let d = Decision::Allow(d);
        let fields = d.metadata();
        assert!(fields.contains(&("subject", MetadataValue::String("alice"))));
        assert!(fields.contains(&("method", MetadataValue::String("jwt"))));
    }
}

/// A Check on an API key counts in the key's usage (allowed, or denied by a rule), and a key with
/// its own limit carries it in the metadata, in the shape of Envoy's `limit` override.
#[tokio::test]
async fn api_key_checks_count_in_usage_and_carry_the_keys_own_limit() {
    let f = fixture("").await;
    let a = &f.grpc;
    let keys = f.built.api_keys.as_ref().unwrap();
    let (info, secret) = keys
        .create(NewKey {
            name: "own".into(),
            owner: "team-b".into(),
            tenant: Some("globex".into()),
            rate_limit: Some(crate::apikey::KeyLimit::parse("2/minute").unwrap()),
            ..Default::default()
        })
        .await
        .unwrap();
    let key = secret.expose();
    let r = a
        .check(&req("GET", "/keys/x", &[("x-api-key", key)], &[]))
        .await;
    assert_eq!(status(&r), 200);
    let md = r.dynamic_metadata.as_ref().unwrap();
    use tollgate_proto::pb::google::protobuf::value::Kind;
    let Some(Kind::StructValue(limit)) = md.fields["key_limit"].kind.as_ref() else {
        panic!("key_limit is a struct: {md:?}");
    };
    assert_eq!(
        limit.fields["requests_per_unit"].kind,
        Some(Kind::NumberValue(2.0))
    );
    assert_eq!(
        tollgate_proto::metadata::get_str(limit, "unit"),
        Some("MINUTE")
    );
    assert_eq!(
        tollgate_proto::metadata::get_str(limit, "key_id"),
        Some(info.id.as_str())
    );
    let r = a
        .check(&req("GET", "/acme/x", &[("x-api-key", key)], &[]))
        .await;
    assert_eq!(status(&r), 403, "not tenant acme");
    let today = keys.today();
    let usage = keys.usage(&info.id, today, today).await.unwrap();
    assert_eq!(
        (
            usage.totals.allowed,
            usage.totals.denied,
            usage.totals.rate_limited
        ),
        (1, 1, 0)
    );
}

/// A Check's future is moved whole at each wrapper on its way into the connection's task
/// (tonic, hyper, the task cell), so what only a cache miss or a traced call needs is boxed
/// apart: the common path's future stays small. Sizes as of this test: the decision 1320
/// bytes, the gRPC method's 2472 (5696 with the miss paths and the traced path inline).
#[tokio::test]
async fn the_check_future_leaves_rare_paths_boxed() {
    use tonic::server::UnaryService;
    fn at_most<T: ?Sized>(what: &str, value: &T, bound: usize) {
        let size = std::mem::size_of_val(value);
        assert!(size <= bound, "{what}: {size} bytes, more than {bound}");
    }
    let f = fixture("").await;
    let a = &f.built.authorizer;
    at_most("jwt verify", &a.jwt.as_ref().unwrap().verify("x"), 256);
    at_most(
        "api key verify",
        &a.api_keys.as_ref().unwrap().verify("x"),
        256,
    );
    let view = crate::check::OwnedRequest::new("GET", "/");
    at_most("check", &a.check(&view), 1600);
    let mut method = crate::grpc::Unary(f.grpc.clone());
    let grpc = method.call(tonic::Request::new(Default::default()));
    at_most("grpc check", &*grpc, 3000);
}

/// The server serves Check alone: another method of the service is answered `UNIMPLEMENTED`
/// (gRPC status 12), as tonic's generated server answers it.
#[tokio::test]
async fn the_server_answers_other_methods_unimplemented() {
    use tower::ServiceExt;
    let f = fixture("").await;
    let server = crate::CheckServer::new(f.grpc.clone());
    let call = |path: &str| {
        http::Request::post(path)
            .header("content-type", "application/grpc")
            .body(tonic::body::Body::default())
            .unwrap()
    };
    let other = server
        .clone()
        .oneshot(call("/envoy.service.auth.v3.Authorization/Other"))
        .await
        .unwrap();
    assert_eq!(other.headers()["grpc-status"], "12");
    // Check itself is served: an empty body is not a message, so the codec answers, not 12.
    let check = server
        .oneshot(call("/envoy.service.auth.v3.Authorization/Check"))
        .await
        .unwrap();
    assert_ne!(
        check
            .headers()
            .get("grpc-status")
            .map(|v| v.to_str().unwrap()),
        Some("12")
    );
}
