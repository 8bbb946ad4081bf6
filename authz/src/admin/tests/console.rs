//! The console's files and headers, `GET /v1/stats`, and the CSRF properties of the admin
//! router, through `oneshot`.

use super::*;
use crate::admin::console::{PREFIX, asset_names};

/// The console's policy, spelled out here so that a weakened constant fails the tests.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; style-src 'self'; \
     img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; base-uri 'none'; \
     form-action 'self'";

/// A response with its body as text.
struct Raw {
    status: StatusCode,
    headers: axum::http::HeaderMap,
    body: String,
}

async fn raw(router: &Router, req: Request<Body>) -> Raw {
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let bytes = axum::body::to_bytes(resp.into_body(), 1 << 20)
        .await
        .unwrap();
    Raw {
        status,
        headers,
        body: String::from_utf8_lossy(&bytes).into_owned(),
    }
}

async fn get(router: &Router, uri: &str) -> Raw {
    raw(router, Request::get(uri).body(Body::empty()).unwrap()).await
}

fn console_dir() -> std::path::PathBuf {
    std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("console")
}

#[tokio::test]
async fn every_console_file_is_embedded_and_served_with_strict_headers() {
    let a = admin().await;
    let mut on_disk: Vec<String> = std::fs::read_dir(console_dir())
        .unwrap()
        .map(|e| e.unwrap().file_name().into_string().unwrap())
        .collect();
    on_disk.sort();
    let mut embedded: Vec<String> = asset_names().iter().map(|s| s.to_string()).collect();
    embedded.sort();
    assert_eq!(
        embedded, on_disk,
        "authz/console/ and the embedded list differ"
    );

    for name in asset_names() {
        let r = get(&a.router, &format!("{PREFIX}{name}")).await;
        assert_eq!(r.status, StatusCode::OK, "{name}");
        let ct = r.headers[header::CONTENT_TYPE].to_str().unwrap();
        let want = match name.rsplit('.').next().unwrap() {
            "html" => "text/html",
            "css" => "text/css",
            "js" => "text/javascript",
            "svg" => "image/svg+xml",
            other => panic!("unexpected file type {other}"),
        };
        assert!(ct.starts_with(want), "{name}: {ct}");
        assert_eq!(
            r.headers[header::CONTENT_SECURITY_POLICY],
            CONTENT_SECURITY_POLICY
        );
        assert_eq!(r.headers[header::X_CONTENT_TYPE_OPTIONS], "nosniff");
        assert_eq!(r.headers[header::REFERRER_POLICY], "no-referrer");
        assert_eq!(r.headers[header::X_FRAME_OPTIONS], "DENY");
        assert_eq!(r.headers[header::CACHE_CONTROL], "no-cache");
        let on_disk = std::fs::read_to_string(console_dir().join(name)).unwrap();
        assert_eq!(r.body, on_disk, "{name} is served as it is in the tree");

        // A revalidation of an unchanged file is a 304 without a body.
        let etag = r.headers[header::ETAG].clone();
        let again = raw(
            &a.router,
            Request::get(format!("{PREFIX}{name}"))
                .header(header::IF_NONE_MATCH, etag.clone())
                .body(Body::empty())
                .unwrap(),
        )
        .await;
        assert_eq!(again.status, StatusCode::NOT_MODIFIED, "{name}");
        assert!(again.body.is_empty());
        assert_eq!(again.headers[header::ETAG], etag);
    }

    // The page itself at the prefix, and the listener's root and /console lead there.
    let index = get(&a.router, PREFIX).await;
    assert_eq!(index.status, StatusCode::OK);
    assert!(index.body.contains("<title>Tollgate console</title>"));
    for from in ["/", "/console"] {
        let r = get(&a.router, from).await;
        assert!(r.status.is_redirection(), "{from}: {}", r.status);
        assert_eq!(r.headers[header::LOCATION], PREFIX);
    }
    let missing = get(&a.router, "/console/nope.js").await;
    assert_eq!(missing.status, StatusCode::NOT_FOUND);
    assert_eq!(
        missing.headers[header::CONTENT_SECURITY_POLICY],
        CONTENT_SECURITY_POLICY
    );
}

#[tokio::test]
async fn the_console_has_no_inline_code_and_loads_only_its_own_files() {
    let html = std::fs::read_to_string(console_dir().join("index.html")).unwrap();
    let lower = html.to_ascii_lowercase();
    assert!(!lower.contains("<style"), "no inline style element");
    assert!(!lower.contains(" style="), "no style attributes");
    let handler = regex::Regex::new(r"\son[a-z]+\s*=").unwrap();
    assert!(!handler.is_match(&lower), "no inline event handlers");
    let script = regex::Regex::new(r"<script\b([^>]*)>([^<]*)</script>").unwrap();
    let mut scripts = 0;
    for s in script.captures_iter(&html) {
        scripts += 1;
        assert!(s[1].contains("src=\"./"), "script from a file: {}", &s[0]);
        assert!(s[2].trim().is_empty(), "no inline script body: {}", &s[0]);
    }
    assert!(scripts >= 1);

    // Every file the page or a module refers to is one the binary serves, by a relative path:
    // nothing from another origin, no CDN, no web font.
    let names = asset_names();
    let refs = regex::Regex::new(r#"(?:src|href)="\./([^"]+)""#).unwrap();
    for r in refs.captures_iter(&html) {
        assert!(names.contains(&&r[1]), "index.html refers to {}", &r[1]);
    }
    assert!(!lower.contains("http://") && !lower.contains("https://") && !lower.contains("//cdn"));
    let import = regex::Regex::new(r#"(?m)^\s*import\b[^'"]*['"]([^'"]+)['"]"#).unwrap();
    let sinks = [
        "innerHTML",
        "outerHTML",
        "insertAdjacentHTML",
        "document.write",
        "eval(",
        "new Function",
        "localStorage",
        "document.cookie",
    ];
    for name in names.iter().filter(|n| n.ends_with(".js")) {
        let js = std::fs::read_to_string(console_dir().join(name)).unwrap();
        for i in import.captures_iter(&js) {
            let target = i[1].strip_prefix("./").unwrap_or_else(|| {
                panic!("{name} imports {} (only ./ modules of the console)", &i[1])
            });
            assert!(names.contains(&target), "{name} imports missing {target}");
        }
        for sink in sinks {
            assert!(!js.contains(sink), "{name} uses {sink}");
        }
        // The SVG namespace is a name, not a place anything is loaded from.
        let js = js.replace("'http://www.w3.org/2000/svg'", "");
        assert!(
            !js.contains("http://") && !js.contains("https://"),
            "{name} names another origin"
        );
    }
    let css = std::fs::read_to_string(console_dir().join("style.css")).unwrap();
    assert!(!css.contains("@import") && !css.contains("url(http") && !css.contains("@font-face"));
}

#[tokio::test]
async fn the_console_can_be_turned_off() {
    let a = admin().await;
    let (router, _) = build(
        a.keys.clone(),
        Secret::new(TOKEN),
        Sources {
            stats: stats::Stats::with_source(Box::new(String::new), None),
            limits: None,
        },
        false,
    )
    .unwrap();
    let r = get(&router, PREFIX).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = get(&router, "/console/app.js").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
}

#[tokio::test]
async fn api_answers_carry_a_deny_all_policy_and_nosniff() {
    let a = admin().await;
    for uri in ["/v1/keys", "/openapi.json", "/nope"] {
        let r = get(&a.router, uri).await;
        assert_eq!(
            r.headers[header::CONTENT_SECURITY_POLICY],
            "default-src 'none'; frame-ancestors 'none'",
            "{uri}"
        );
        assert_eq!(
            r.headers[header::X_CONTENT_TYPE_OPTIONS],
            "nosniff",
            "{uri}"
        );
        assert_eq!(r.headers[header::REFERRER_POLICY], "no-referrer", "{uri}");
    }
}

/// What a cross-site page can make a browser send carries no `Authorization` header: a form
/// post (urlencoded, multipart or text/plain), a cookie, a credential in the query string.
/// None of them may act.
#[tokio::test]
async fn cookie_only_and_form_posts_are_refused() {
    let a = admin().await;
    let (id, _) = a.create("target").await;
    let forged = |method: &str, uri: &str, content_type: &str, body: &str| {
        Request::builder()
            .method(method)
            .uri(uri)
            .header(header::CONTENT_TYPE, content_type)
            .header(
                header::COOKIE,
                format!("tollgate_admin={TOKEN}; token={TOKEN}"),
            )
            .header(header::ORIGIN, "https://evil.example")
            .body(Body::from(body.to_string()))
            .unwrap()
    };
    let attempts = [
        forged(
            "POST",
            "/v1/keys",
            "application/x-www-form-urlencoded",
            "name=x&owner=y",
        ),
        forged(
            "POST",
            "/v1/keys",
            "text/plain",
            r#"{"name":"x","owner":"y"}"#,
        ),
        forged(
            "POST",
            "/v1/keys",
            "multipart/form-data; boundary=b",
            "--b\r\nContent-Disposition: form-data; name=\"name\"\r\n\r\nx\r\n--b--\r\n",
        ),
        forged(
            "POST",
            &format!("/v1/keys/{id}/revoke"),
            "application/x-www-form-urlencoded",
            "",
        ),
        forged("POST", &format!("/v1/keys/{id}/rotate"), "text/plain", ""),
        forged(
            "POST",
            &format!("/v1/keys/{id}/revoke?access_token={TOKEN}"),
            "application/x-www-form-urlencoded",
            &format!("access_token={TOKEN}"),
        ),
        forged(
            "PATCH",
            &format!("/v1/keys/{id}"),
            "application/json",
            r#"{"owner":"evil"}"#,
        ),
    ];
    for req in attempts {
        let what = format!("{} {}", req.method(), req.uri());
        let r = raw(&a.router, req).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{what}: {}", r.body);
        assert!(
            !r.headers.contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN),
            "{what}: no CORS grant"
        );
    }
    // Nothing changed: still one key, not revoked, same owner.
    let page = a.call("GET", "/v1/keys", None).await;
    assert_eq!(
        page.body["keys"].as_array().unwrap().len(),
        1,
        "{}",
        page.body
    );
    let key = a.call("GET", &format!("/v1/keys/{id}"), None).await;
    assert_eq!(key.body["revoked"], false);
    assert_eq!(key.body["owner"], "team-a");

    // A cross-origin script would need a CORS preflight to send the header: none is granted.
    let preflight = raw(
        &a.router,
        Request::builder()
            .method("OPTIONS")
            .uri("/v1/keys")
            .header(header::ORIGIN, "https://evil.example")
            .header(header::ACCESS_CONTROL_REQUEST_METHOD, "POST")
            .header(
                header::ACCESS_CONTROL_REQUEST_HEADERS,
                "authorization, content-type",
            )
            .body(Body::empty())
            .unwrap(),
    )
    .await;
    assert!(!preflight.status.is_success(), "{}", preflight.status);
    assert!(
        !preflight
            .headers
            .contains_key(header::ACCESS_CONTROL_ALLOW_ORIGIN)
    );
    assert!(
        !preflight
            .headers
            .contains_key(header::ACCESS_CONTROL_ALLOW_HEADERS)
    );
}

const METRICS: &str = "\
tollgate_authz_checks_total{decision=\"allow\",method=\"api_key\",reason=\"allowed\"} 12
tollgate_authz_checks_total{decision=\"deny\",method=\"api_key\",reason=\"revoked\"} 3
tollgate_ratelimit_decisions_total{domain=\"gateway\",limit=\"plan-silver\",decision=\"over_limit\"} 4
tollgate_ratelimit_decisions_total{domain=\"gateway\",limit=\"plan-silver\",decision=\"within_limit\"} 9
";

fn stats_router(keys: &ApiKeys, ratelimit: Option<&str>) -> Router {
    let url = ratelimit.map(|u| reqwest::Url::parse(u).unwrap());
    build(
        keys.clone(),
        Secret::new(TOKEN),
        Sources {
            stats: stats::Stats::with_source(Box::new(|| METRICS.to_string()), url.as_ref()),
            limits: None,
        },
        true,
    )
    .unwrap()
    .0
}

async fn stats_of(router: &Router, token: Option<&str>) -> Raw {
    let mut req = Request::get("/v1/stats");
    if let Some(t) = token {
        req = req.header(header::AUTHORIZATION, format!("Bearer {t}"));
    }
    raw(router, req.body(Body::empty()).unwrap()).await
}

#[tokio::test]
async fn stats_need_the_credential_and_report_the_check_counters() {
    let a = admin().await;
    let router = stats_router(&a.keys, None);
    assert_eq!(
        stats_of(&router, None).await.status,
        StatusCode::UNAUTHORIZED
    );
    assert_eq!(
        stats_of(&router, Some("admin-token-0123456789abcdeX"))
            .await
            .status,
        StatusCode::UNAUTHORIZED
    );
    let r = stats_of(&router, Some(TOKEN)).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        body["checks"],
        json!([
            {"decision": "allow", "method": "api_key", "reason": "allowed", "count": 12},
            {"decision": "deny", "method": "api_key", "reason": "revoked", "count": 3},
        ])
    );
    assert_eq!(
        body["rate_limit"],
        Value::Null,
        "not configured: no 429 source"
    );
    assert!(humantime::parse_rfc3339(body["at"].as_str().unwrap()).is_ok());
    let doc = openapi::document();
    assert_eq!(keys_of(&body), properties(&doc, "Stats"));
    assert_eq!(keys_of(&body["checks"][0]), properties(&doc, "CheckCount"));
}

/// A stand-in for tollgate-ratelimit's side HTTP listener: `/metrics` answers `METRICS`.
async fn fake_ratelimit_metrics() -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let app = Router::new()
        .route("/metrics", axum::routing::get(|| async { METRICS }))
        .route(
            "/broken",
            axum::routing::get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

/// Single-call mode: the over-limit counts are this process's own engine's, no URL needed.
#[tokio::test]
async fn in_single_call_mode_stats_carry_the_embedded_limits_counts() {
    let a = admin().await;
    let router = build(
        a.keys.clone(),
        Secret::new(TOKEN),
        Sources {
            stats: stats::Stats::with_source(Box::new(|| METRICS.to_string()), None)
                .single_call(true),
            limits: None,
        },
        true,
    )
    .unwrap()
    .0;
    let r = stats_of(&router, Some(TOKEN)).await;
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(body["mode"], "single_call");
    assert_eq!(
        body["rate_limit"]["over_limit"],
        json!([{"domain": "gateway", "limit": "plan-silver", "count": 4}])
    );
    let pair = stats_of(&stats_router(&a.keys, None), Some(TOKEN)).await;
    let body: Value = serde_json::from_str(&pair.body).unwrap();
    assert_eq!(
        (&body["mode"], &body["rate_limit"]),
        (&json!("pair"), &Value::Null)
    );
}

#[tokio::test]
async fn stats_carry_tollgate_ratelimits_over_limit_counts_when_configured() {
    let a = admin().await;
    let addr = fake_ratelimit_metrics().await;
    let router = stats_router(&a.keys, Some(&format!("http://{addr}/metrics")));
    let r = stats_of(&router, Some(TOKEN)).await;
    let body: Value = serde_json::from_str(&r.body).unwrap();
    assert_eq!(
        body["rate_limit"],
        json!({"over_limit": [{"domain": "gateway", "limit": "plan-silver", "count": 4}], "error": null})
    );
    let doc = openapi::document();
    assert_eq!(
        keys_of(&body["rate_limit"]),
        properties(&doc, "RateLimitCounts")
    );
    assert_eq!(
        keys_of(&body["rate_limit"]["over_limit"][0]),
        properties(&doc, "LimitCount")
    );

    // tollgate-ratelimit failing or gone: the answer still comes, saying why the 429s are missing.
    let closed = {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.local_addr().unwrap()
    };
    for (url, why) in [
        (format!("http://{addr}/broken"), "answered 500"),
        (format!("http://{closed}/metrics"), "unreachable"),
    ] {
        let router = stats_router(&a.keys, Some(&url));
        let r = stats_of(&router, Some(TOKEN)).await;
        assert_eq!(r.status, StatusCode::OK);
        let body: Value = serde_json::from_str(&r.body).unwrap();
        assert_eq!(body["rate_limit"]["over_limit"], json!([]));
        let error = body["rate_limit"]["error"].as_str().unwrap();
        assert!(error.contains(why), "{error}");
        assert!(
            !error.contains("127.0.0.1"),
            "no address in the answer: {error}"
        );
        assert_eq!(
            body["checks"].as_array().unwrap().len(),
            2,
            "own counts still there"
        );
    }
}

#[test]
fn a_bad_ratelimit_metrics_url_is_refused_with_its_field_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    for (url, why) in [
        ("ftp://ratelimit/metrics", "http:// or https://"),
        ("not a url", "not a URL"),
        ("http://", "not a URL"),
    ] {
        let file = dir.path().join("authz.yaml");
        std::fs::write(
            &file,
            format!(
                "api_keys:\n  store: {{type: embedded, path: {}}}\nadmin:\n  token_file: {}\n  ratelimit_metrics_url: \"{url}\"\n",
                dir.path().join("k.redb").display(),
                token.display()
            ),
        )
        .unwrap();
        let e = tollgate_common::config::load::<crate::Config>(&tollgate_common::config::Sources {
            file: Some(file),
            ..Default::default()
        })
        .unwrap_err()
        .to_string();
        assert!(
            e.contains("authz.yaml:5: admin.ratelimit_metrics_url") && e.contains(why),
            "{url}: {e}"
        );
    }
}

/// The config example in docs/console.md loads, and says what the page says it does.
#[test]
fn the_documented_console_config_loads() {
    let page = std::fs::read_to_string(
        std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../docs/console.md"),
    )
    .unwrap();
    let yaml = page
        .split("```yaml\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("a yaml block in docs/console.md");
    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let yaml = yaml
        .replace(
            "/run/secrets/tollgate-admin-token",
            &token.display().to_string(),
        )
        .replace("/var/lib/tollgate", &dir.path().display().to_string());
    let file = dir.path().join("authz.yaml");
    std::fs::write(&file, yaml).unwrap();
    let config =
        tollgate_common::config::load::<crate::Config>(&tollgate_common::config::Sources {
            file: Some(file),
            ..Default::default()
        })
        .unwrap();
    let admin = config.admin.unwrap();
    assert!(admin.console);
    assert_eq!(
        admin.ratelimit_metrics_url.as_deref(),
        Some("http://127.0.0.1:8082/metrics")
    );
}
