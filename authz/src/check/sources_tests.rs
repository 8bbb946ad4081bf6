//! Decisions on where credentials come from (token sources, API-key cookies), client
//! certificates, and CEL conditions over the request, asked through the gRPC adapter.

use jsonwebtoken::Algorithm;
use serde_json::json;
use tollgate_common::config::{Sources, load};
use tollgate_proto::auth::attribute_context::{HttpRequest, Peer, Request};
use tollgate_proto::auth::{AttributeContext, CheckRequest, CheckResponse, HttpResponse};

use crate::identity::jwt::tests::{AUD, EC, ISS, RSA1, claims, public_jwk, sign};
use crate::{AuthzService, Config, build};

const OTHER: &str = "https://other.test";

async fn service(extra: &str) -> (AuthzService, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let k1 = serde_json::to_string(&vec![public_jwk(RSA1, Algorithm::RS256, "k1")]).unwrap();
    let k2 = serde_json::to_string(&vec![public_jwk(EC, Algorithm::ES256, "e1")]).unwrap();
    let yaml = format!(
        r#"
policy:
  identity_order: [jwt, api_key]
  rules:
    - name: spiffe
      path: {{prefix: /mesh}}
      identity: [mtls]
      conditions:
        - cel: identity.cert.spiffe_id == "spiffe://acme.test/ns/web"
    - name: orders
      path: {{prefix: /orders}}
      conditions:
        - cel: request.method == "GET" && request.headers["x-org"] == claims.org && "read" in identity.scopes
    - name: api
      path: {{prefix: /}}
jwt:
  issuers:
    - issuer: {ISS}
      audiences: [{AUD}]
      keys: {k1}
      token_sources:
        - {{header: authorization, prefix: "Bearer "}}
        - {{header: x-token}}
        - {{cookie: session}}
        - {{query: access_token}}
    - issuer: {OTHER}
      audiences: [{AUD}]
      keys: {k2}
api_keys:
  cookie: api_key
  store: {{type: embedded, path: {}}}
mtls: {{}}
headers:
  remove_credential: true
{extra}"#,
        dir.path().join("keys.redb").display()
    );
    let p = dir.path().join("authz.yaml");
    std::fs::write(&p, yaml).unwrap();
    let cfg: Config = load(&Sources {
        file: Some(p),
        ..Default::default()
    })
    .unwrap_or_else(|e| panic!("{e}"));
    let built = build(&cfg).await.unwrap();
    (AuthzService::new(built.authorizer.clone()), dir)
}

fn token(iss: &str) -> String {
    let mut c = claims(crate::identity::unix(std::time::SystemTime::now()));
    c["iss"] = json!(iss);
    if iss == ISS {
        sign(RSA1, Algorithm::RS256, Some("k1"), &c)
    } else {
        sign(EC, Algorithm::ES256, Some("e1"), &c)
    }
}

fn req(method: &str, path: &str, headers: &[(&str, &str)]) -> CheckRequest {
    let (path, _) = path.split_once('#').unwrap_or((path, ""));
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
            ..Default::default()
        }),
    }
}

fn with_peer(mut r: CheckRequest, principal: &str, pem: &str) -> CheckRequest {
    r.attributes.as_mut().unwrap().source = Some(Peer {
        principal: principal.into(),
        certificate: pem.into(),
        ..Default::default()
    });
    r
}

fn status(r: &CheckResponse) -> i32 {
    match r.http_response.as_ref().unwrap() {
        HttpResponse::OkResponse(_) => 200,
        HttpResponse::DeniedResponse(d) => d.status.as_ref().unwrap().code,
        HttpResponse::ErrorResponse(_) => panic!("error response"),
    }
}

fn header<'a>(r: &'a CheckResponse, name: &str) -> Option<&'a str> {
    let hs = match r.http_response.as_ref().unwrap() {
        HttpResponse::OkResponse(o) => &o.headers,
        HttpResponse::DeniedResponse(d) => &d.headers,
        HttpResponse::ErrorResponse(_) => return None,
    };
    hs.iter()
        .filter_map(|h| h.header.as_ref())
        .find(|h| h.key == name)
        .map(|h| h.value.as_str())
}

fn ok(r: &CheckResponse) -> &tollgate_proto::auth::OkHttpResponse {
    match r.http_response.as_ref().unwrap() {
        HttpResponse::OkResponse(o) => o,
        _ => panic!("denied: {r:?}"),
    }
}

#[tokio::test]
async fn a_token_is_read_from_each_source_of_its_issuer_and_removed_from_it() {
    let (s, _d) = service("").await;
    let t = token(ISS);
    let bearer = format!("Bearer {t}");
    let r = s
        .check(&req("GET", "/x", &[("authorization", &bearer)]))
        .await;
    assert_eq!(status(&r), 200);
    assert!(
        ok(&r)
            .headers_to_remove
            .iter()
            .any(|h| h == "authorization")
    );

    let r = s.check(&req("GET", "/x", &[("x-token", &t)])).await;
    assert_eq!(status(&r), 200);
    assert!(ok(&r).headers_to_remove.iter().any(|h| h == "x-token"));

    let cookie = format!("theme=dark; session={t}; lang=en");
    let r = s.check(&req("GET", "/x", &[("cookie", &cookie)])).await;
    assert_eq!(status(&r), 200);
    assert_eq!(
        header(&r, "cookie"),
        Some("theme=dark; lang=en"),
        "the token cookie is cut out, the others stay"
    );
    let only = format!("session={t}");
    let r = s.check(&req("GET", "/x", &[("cookie", &only)])).await;
    assert!(ok(&r).headers_to_remove.iter().any(|h| h == "cookie"));

    let r = s
        .check(&req("GET", &format!("/x?page=2&access_token={t}"), &[]))
        .await;
    assert_eq!(status(&r), 200);
    assert_eq!(ok(&r).query_parameters_to_remove, ["access_token"]);
    assert_eq!(header(&r, "x-tollgate-subject"), Some("alice"));
}

#[tokio::test]
async fn a_token_in_two_sources_or_in_a_source_its_issuer_does_not_list_is_refused() {
    let (s, _d) = service("").await;
    let t = token(ISS);
    let bearer = format!("Bearer {t}");
    for r in [
        req(
            "GET",
            &format!("/x?access_token={t}"),
            &[("authorization", &bearer)],
        ),
        req(
            "GET",
            "/x",
            &[("x-token", &t), ("cookie", &format!("session={t}"))],
        ),
        req(
            "GET",
            "/x",
            &[("cookie", &format!("session={t}; session=x"))],
        ),
    ] {
        let r = s.check(&r).await;
        assert_eq!(status(&r), 400, "{r:?}");
        assert_eq!(
            header(&r, "www-authenticate"),
            Some("Bearer realm=\"tollgate\", error=\"invalid_request\"")
        );
    }
    // The other issuer takes tokens from `Authorization` only.
    let other = token(OTHER);
    let r = s
        .check(&req(
            "GET",
            "/x",
            &[("authorization", &format!("Bearer {other}"))],
        ))
        .await;
    assert_eq!(status(&r), 200);
    let r = s.check(&req("GET", "/x", &[("x-token", &other)])).await;
    assert_eq!(status(&r), 401);
    assert_eq!(
        header(&r, "www-authenticate"),
        Some("Bearer realm=\"tollgate\", error=\"invalid_token\"")
    );
}

#[tokio::test]
async fn an_api_key_may_come_in_a_cookie() {
    let (s, _d) = service("").await;
    // An unknown key in the cookie is found (and refused as unknown, not as missing).
    let r = s
        .check(&req("GET", "/x", &[("cookie", "api_key=tg_nope_nope")]))
        .await;
    assert_eq!(status(&r), 401);
    assert!(
        header(&r, "www-authenticate")
            .unwrap()
            .contains("invalid_token"),
        "{r:?}"
    );
    let r = s
        .check(&req(
            "GET",
            "/x",
            &[("cookie", "api_key=a"), ("authorization", "Bearer b")],
        ))
        .await;
    assert_eq!(status(&r), 400);
}

#[tokio::test]
async fn cel_conditions_read_the_request_and_the_identity() {
    let (s, _d) = service("").await;
    let bearer = format!("Bearer {}", token(ISS));
    let get = |method: &str, org: &str| {
        req(
            method,
            "/orders/1",
            &[("authorization", &bearer), ("x-org", org)],
        )
    };
    assert_eq!(status(&s.check(&get("GET", "acme")).await), 200);
    let r = s.check(&get("GET", "globex")).await;
    assert_eq!(status(&r), 403);
    assert_eq!(
        header(&r, "www-authenticate"),
        Some("Bearer realm=\"tollgate\", error=\"insufficient_scope\"")
    );
    assert_eq!(status(&s.check(&get("POST", "acme")).await), 403);
    let r = s
        .check(&req("GET", "/orders/1", &[("authorization", &bearer)]))
        .await;
    assert_eq!(
        status(&r),
        403,
        "a missing header fails the condition closed"
    );
}

fn url_encode(pem: &str) -> String {
    pem.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

fn cert(spiffe: &str) -> String {
    let mut p = rcgen::CertificateParams::new(Vec::<String>::new()).unwrap();
    p.distinguished_name.push(rcgen::DnType::CommonName, "web");
    p.subject_alt_names = vec![rcgen::SanType::URI(spiffe.try_into().unwrap())];
    let key = rcgen::KeyPair::generate().unwrap();
    url_encode(&p.self_signed(&key).unwrap().pem())
}

#[tokio::test]
async fn client_certificates_identify_the_caller() {
    let (s, _d) = service("").await;
    let web = "spiffe://acme.test/ns/web";
    let r = s
        .check(&with_peer(req("GET", "/mesh/a", &[]), web, &cert(web)))
        .await;
    assert_eq!(status(&r), 200);
    assert_eq!(header(&r, "x-tollgate-subject"), Some(web));
    assert_eq!(header(&r, "x-tollgate-auth-method"), Some("mtls"));

    let db = "spiffe://acme.test/ns/db";
    let r = s
        .check(&with_peer(req("GET", "/mesh/a", &[]), db, &cert(db)))
        .await;
    assert_eq!(status(&r), 403);
    assert_eq!(
        header(&r, "www-authenticate"),
        None,
        "no scheme asks for a certificate"
    );

    let r = s.check(&req("GET", "/mesh/a", &[])).await;
    assert_eq!(status(&r), 401);
    let r = s
        .check(&with_peer(req("GET", "/mesh/a", &[]), web, ""))
        .await;
    assert_eq!(status(&r), 401, "named but not forwarded");
    let r = s
        .check(&with_peer(req("GET", "/mesh/a", &[]), web, "garbage"))
        .await;
    assert_eq!(status(&r), 401);
}
