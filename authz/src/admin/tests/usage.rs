//! Usage per key and its totals, a key's own rate limit, and `GET /v1/limits`, through
//! `oneshot`: answers, their OpenAPI schemas, and every refusal of a bad request.

use std::sync::atomic::{AtomicUsize, Ordering};

use axum::Json;

use super::*;
use crate::apikey::UsageOutcome;

/// Makes `n` calls with `secret` that end in `outcome`, as the Check path counts them.
async fn calls(a: &Admin, secret: &str, outcome: UsageOutcome, n: usize) {
    let who = a.keys.verify(secret).await.unwrap();
    for _ in 0..n {
        a.keys.record_usage(&who, outcome);
    }
}

#[tokio::test]
async fn a_keys_usage_per_day_and_totals_per_plan_and_tenant() {
    let a = admin().await;
    let (id, secret) = a.create("k").await;
    calls(&a, &secret, UsageOutcome::Allowed, 3).await;
    calls(&a, &secret, UsageOutcome::Denied, 1).await;
    // Half written, half still in memory: the answer has both.
    a.keys.flush_usage().await.unwrap();
    calls(&a, &secret, UsageOutcome::RateLimited, 2).await;

    let today = a.keys.today().to_string();
    let r = a.call("GET", &format!("/v1/keys/{id}/usage"), None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.headers[header::CACHE_CONTROL], "no-store");
    assert_eq!(r.body["key_id"], id.as_str());
    assert_eq!(r.body["to"], today.as_str());
    assert_eq!(r.body["retention_days"], 90);
    assert_eq!(
        r.body["days"],
        json!([{"date": today, "allowed": 3, "denied": 1, "rate_limited": 2}])
    );
    assert_eq!(
        r.body["totals"],
        json!({"allowed": 3, "denied": 1, "rate_limited": 2})
    );
    let doc = openapi::document();
    assert_eq!(keys_of(&r.body), properties(&doc, "KeyUsage"));
    assert_eq!(keys_of(&r.body["days"][0]), properties(&doc, "DayUsage"));
    assert_eq!(keys_of(&r.body["totals"]), properties(&doc, "Counts"));

    // A range without calls.
    let r = a
        .call(
            "GET",
            &format!("/v1/keys/{id}/usage?from=2020-01-01&to=2020-01-31"),
            None,
        )
        .await;
    assert_eq!(r.body["days"], json!([]));
    assert_eq!(r.body["from"], "2020-01-01");

    let (_, other) = a.create("other").await;
    calls(&a, &other, UsageOutcome::Allowed, 1).await;
    let r = a.call("GET", "/v1/usage?group_by=plan", None).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(
        r.body["groups"],
        json!([{"name": "gold", "allowed": 4, "denied": 1, "rate_limited": 2}])
    );
    assert_eq!(keys_of(&r.body), properties(&doc, "UsageTotals"));
    assert_eq!(
        keys_of(&r.body["groups"][0]),
        properties(&doc, "GroupUsage")
    );
    let r = a.call("GET", "/v1/usage?group_by=tenant", None).await;
    assert_eq!(r.body["group_by"], "tenant");
    assert_eq!(
        r.body["groups"][0]["name"],
        Value::Null,
        "keys without a tenant"
    );
}

#[tokio::test]
async fn bad_usage_requests_are_refused_clearly() {
    let a = admin().await;
    let (id, _) = a.create("k").await;
    let usage = format!("/v1/keys/{id}/usage");
    for (uri, says) in [
        (
            format!("{usage}?from=2025-3-1"),
            "from must be a UTC date as YYYY-MM-DD",
        ),
        (format!("{usage}?to=tomorrow"), "to must be a UTC date"),
        (
            format!("{usage}?from=2025-03-02&to=2025-03-01"),
            "must not be after to",
        ),
        (
            format!("{usage}?from=2024-01-01&to=2025-03-01"),
            "at most 366",
        ),
        (format!("{usage}?day=2025-03-01"), "unknown field"),
        ("/v1/usage".to_string(), "group_by is required"),
        ("/v1/usage?group_by=owner".to_string(), "plan or tenant"),
        ("/v1/usage?group_by=plan&from=x".to_string(), "from must be"),
    ] {
        let r = a.call("GET", &uri, None).await;
        assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
        let message = r.body["message"].as_str().unwrap();
        assert!(message.contains(says), "{uri}: {message}");
    }
    let missing = crate::apikey::format::generate_id();
    let r = a
        .call("GET", &format!("/v1/keys/{missing}/usage"), None)
        .await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_found");
    let r = a.send("GET", &usage, None, None).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
}

#[tokio::test]
async fn a_key_carries_its_own_limit_set_changed_and_cleared() {
    let a = admin().await;
    let limit = json!({"requests_per_unit": 2, "unit": "minute"});
    let r = a
        .call(
            "POST",
            "/v1/keys",
            Some(json!({"name": "n", "owner": "o", "plan": "gold", "rate_limit": limit})),
        )
        .await;
    assert_eq!(r.status, StatusCode::CREATED, "{}", r.body);
    assert_eq!(r.body["key"]["rate_limit"], limit);
    let id = r.body["key"]["id"].as_str().unwrap().to_string();
    let secret = r.body["secret"].as_str().unwrap().to_string();
    let who = a.keys.verify(&secret).await.unwrap();
    assert_eq!(who.rate_limit.unwrap().to_string(), "2/minute");

    let path = format!("/v1/keys/{id}");
    let r = a
        .call(
            "PATCH",
            &path,
            Some(json!({"rate_limit": {"requests_per_unit": 500, "unit": "hour"}})),
        )
        .await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    let r = a.call("GET", &path, None).await;
    assert_eq!(
        r.body["rate_limit"],
        json!({"requests_per_unit": 500, "unit": "hour"})
    );
    assert_eq!(
        a.keys
            .verify(&secret)
            .await
            .unwrap()
            .rate_limit
            .unwrap()
            .to_string(),
        "500/hour",
        "the next Check sees the change"
    );
    // Leaving it out keeps it; null clears it.
    let r = a.call("PATCH", &path, Some(json!({"name": "m"}))).await;
    assert_eq!(r.body["rate_limit"]["requests_per_unit"], 500);
    let r = a
        .call("PATCH", &path, Some(json!({"rate_limit": null})))
        .await;
    assert_eq!(r.body["rate_limit"], Value::Null);
    assert_eq!(a.keys.verify(&secret).await.unwrap().rate_limit, None);

    for (body, says) in [
        (
            json!({"requests_per_unit": 0, "unit": "minute"}),
            "at least 1",
        ),
        (
            json!({"requests_per_unit": 2_000_000_000u32, "unit": "minute"}),
            "at most 1000000000",
        ),
        (
            json!({"requests_per_unit": 5, "unit": "month"}),
            "unknown variant",
        ),
        (
            json!({"requests_per_unit": -1, "unit": "minute"}),
            "invalid value",
        ),
        (
            json!({"requests_per_unit": 5, "unit": "minute", "burst": 2}),
            "unknown field",
        ),
        (json!("100/minute"), "invalid type"),
    ] {
        for (method, uri, req) in [
            (
                "POST",
                "/v1/keys",
                json!({"name": "n", "owner": "o", "rate_limit": body}),
            ),
            ("PATCH", path.as_str(), json!({"rate_limit": body})),
        ] {
            let r = a.call(method, uri, Some(req)).await;
            assert_error(&r, StatusCode::BAD_REQUEST, "invalid_request");
            let message = r.body["message"].as_str().unwrap();
            assert!(message.contains(says), "{method} {body}: {message}");
        }
    }
}

/// A stand-in for tollgate-ratelimit's `/config` (the real one answers in the e2e tests):
/// counts its hits.
async fn fake_config(hits: Arc<AtomicUsize>) -> std::net::SocketAddr {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    let view = json!({"generation": 3, "loaded_at": "2025-03-01T00:00:00Z", "domains": [
        {"domain": "gateway", "file": "gateway.yaml", "limits": [
            {"descriptor": "plan_silver.subject", "name": "plan-silver", "unlimited": false,
             "algorithm": "sliding_window", "limit": 3, "window": "1m", "shadow_mode": false}
        ]}
    ], "files": [], "errors": []});
    let app = Router::new()
        .route(
            "/config",
            axum::routing::get(move || {
                hits.fetch_add(1, Ordering::SeqCst);
                let view = view.clone();
                async move { Json(view) }
            }),
        )
        .route(
            "/broken",
            axum::routing::get(|| async { StatusCode::INTERNAL_SERVER_ERROR }),
        )
        .route("/text", axum::routing::get(|| async { "not json" }))
        .route(
            "/other",
            axum::routing::get(|| async { Json(json!({"a": 1})) }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await });
    addr
}

fn limits_router(keys: &ApiKeys, view: Option<Arc<dyn LimitsView>>) -> Router {
    let sources = Sources {
        stats: stats::Stats::with_source(Box::new(String::new), None),
        limits: view,
    };
    build(keys.clone(), Secret::new(TOKEN), sources, false)
        .unwrap()
        .0
}

async fn get_limits(router: &Router) -> Reply {
    let req = Request::get("/v1/limits")
        .header(header::AUTHORIZATION, format!("Bearer {TOKEN}"))
        .body(Body::empty())
        .unwrap();
    send_request(router, req).await
}

#[tokio::test]
async fn the_limits_in_force_come_from_tollgate_ratelimits_config() {
    let a = admin().await;
    let r = a.call("GET", "/v1/limits", None).await;
    assert_error(&r, StatusCode::NOT_FOUND, "not_configured");
    assert!(
        r.body["message"]
            .as_str()
            .unwrap()
            .contains("admin.ratelimit_config_url"),
        "{}",
        r.body
    );

    let hits = Arc::new(AtomicUsize::new(0));
    let addr = fake_config(hits.clone()).await;
    let url = |path: &str| reqwest::Url::parse(&format!("http://{addr}{path}")).unwrap();
    let view: Arc<dyn LimitsView> = Arc::new(limits::RatelimitConfig::new(url("/config")));
    let router = limits_router(&a.keys, Some(view));
    let r = get_limits(&router).await;
    assert_eq!(r.status, StatusCode::OK, "{}", r.body);
    assert_eq!(r.body["domains"][0]["limits"][0]["name"], "plan-silver");
    assert_eq!(r.body["loaded_at"], "2025-03-01T00:00:00Z");
    // Consoles polling together make one read a second.
    for _ in 0..5 {
        assert_eq!(get_limits(&router).await.status, StatusCode::OK);
    }
    assert_eq!(hits.load(Ordering::SeqCst), 1);

    let closed = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap();
    for (source, says) in [
        (url("/broken"), "answered 500"),
        (url("/text"), "is not JSON"),
        (url("/other"), "not a limits view"),
        (
            reqwest::Url::parse(&format!("http://{closed}/config")).unwrap(),
            "unreachable",
        ),
    ] {
        let view: Arc<dyn LimitsView> = Arc::new(limits::RatelimitConfig::new(source));
        let r = get_limits(&limits_router(&a.keys, Some(view))).await;
        assert_error(&r, StatusCode::BAD_GATEWAY, "limits_unavailable");
        let message = r.body["message"].as_str().unwrap();
        assert!(message.contains(says), "{message}");
        assert!(!message.contains("127.0.0.1"), "no address: {message}");
    }
}

#[tokio::test]
async fn a_process_that_limits_by_itself_serves_its_own_view() {
    let a = admin().await;
    let view: Arc<dyn LimitsView> =
        Arc::new(|| json!({"domains": [{"domain": "embedded", "limits": []}]}));
    let r = get_limits(&limits_router(&a.keys, Some(view))).await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.body["domains"][0]["domain"], "embedded");
}

#[test]
fn a_bad_ratelimit_config_url_is_refused_with_its_field() {
    let cfg: AdminConfig =
        serde_yaml::from_str("ratelimit_config_url: ftp://x/config\ntoken_file: /nonexistent")
            .unwrap();
    let mut errors = Errors::for_file(None, None);
    cfg.validate("admin", &mut errors);
    let e = errors.finish(()).unwrap_err().to_string();
    assert!(
        e.contains("admin.ratelimit_config_url: must be an http:// or https:// URL"),
        "{e}"
    );
}

/// docs/api-products.md: its tollgate-authz config loads, its limits are the shipped file's, and
/// the screenshots it shows exist.
#[test]
fn the_api_products_guide_examples_hold() {
    let root = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("..");
    let page = std::fs::read_to_string(root.join("docs/api-products.md")).unwrap();
    let blocks: Vec<&str> = page
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .collect();
    assert_eq!(blocks.len(), 3);
    // The billing-period example loads as a limits file, with its monthly quota.
    let quota = tollgate_limiter::limits::Limits::parse(
        blocks[2],
        tollgate_limiter::algorithm::Algorithm::SlidingWindow,
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let summary = quota.domain("gateway").unwrap().summary();
    assert_eq!(
        summary[1].period.as_deref(),
        Some("month@Europe/Berlin"),
        "{summary:?}"
    );
    let shipped = std::fs::read_to_string(root.join("deploy/config/limits/gateway.yaml")).unwrap();
    assert!(
        shipped.contains(blocks[0]),
        "the limits are an excerpt of the shipped file"
    );

    let dir = tempfile::tempdir().unwrap();
    let token = dir.path().join("token");
    std::fs::write(&token, TOKEN).unwrap();
    let yaml = blocks[1]
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
    assert_eq!(config.api_keys.unwrap().usage.retention_days, 90);
    assert_eq!(
        config.admin.unwrap().ratelimit_config_url.as_deref(),
        Some("http://127.0.0.1:8082/config")
    );
    for (i, _) in page.match_indices("](images/") {
        let name = &page[i + 2..];
        let name = &name[..name.find(')').unwrap()];
        assert!(root.join("docs").join(name).exists(), "{name}");
    }
}
