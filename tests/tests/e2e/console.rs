//! The web console on tollgate-authz's admin listener, in Debian's headless chromium, against
//! the shipped example (real Envoy, tollgate-authz, tollgate-ratelimit, the echo upstream): an
//! operator logs in, creates a key and reads its secret once, the key works through Envoy, the
//! key's page shows its calls per day with the exact counts, the activity and plans pages show
//! what happened and the limits in force, the key is edited (its plan, a rate limit of its own
//! that Envoy then applies), rotated with a grace period and revoked from the console, and Envoy
//! refuses it. The console's pure logic
//! (chart, rates, search, plans) runs under node's test runner.

use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::Duration;

use serde_json::{Value, json};
use tollgate_tests::browser::{Browser, driver_dir, screenshot_dir};
use tollgate_tests::echo::{Echo, EchoUpstream};
use tollgate_tests::envoy::{Backends, Envoy};
use tollgate_tests::paths::{node_bin, project_root};
use tollgate_tests::process::wait_for;
use tollgate_tests::stack::{Authz, Ratelimit};

/// The example stack, with `/v1/stats` and `/v1/limits` reading tollgate-ratelimit's over-limit
/// counts and limits in force, and last-used times written every 200 ms (instead of 10 s) so the
/// key's page shows them soon.
struct Gateway {
    envoy: Envoy,
    authz: Authz,
    _upstream: EchoUpstream,
    _ratelimit: Ratelimit,
}

impl Gateway {
    async fn start() -> Gateway {
        let upstream = EchoUpstream::start().await;
        let ratelimit = Ratelimit::example(&[]).await.unwrap();
        let authz = Authz::example(&[
            format!(
                "admin.ratelimit_metrics_url=http://{}/metrics",
                ratelimit.running.http_addr
            ),
            format!(
                "admin.ratelimit_config_url=http://{}/config",
                ratelimit.running.http_addr
            ),
            "api_keys.last_used_flush=200ms".into(),
        ])
        .await
        .unwrap();
        let envoy = Envoy::start_example(Backends {
            upstream: upstream.port(),
            authz: authz.grpc_port(),
            ratelimit: ratelimit.grpc_port(),
        })
        .await
        .unwrap();
        Gateway {
            envoy,
            authz,
            _upstream: upstream,
            _ratelimit: ratelimit,
        }
    }

    /// `GET /api/orders` through Envoy with `key`: the status and, when it reached the
    /// upstream, what the upstream saw.
    async fn call(&self, key: &str) -> (u16, Option<Echo>) {
        let r = reqwest::Client::new()
            .get(self.envoy.url("/api/orders"))
            .header("x-api-key", key)
            .send()
            .await
            .unwrap();
        let status = r.status().as_u16();
        let echo = if status == 200 {
            Some(r.json().await.unwrap())
        } else {
            None
        };
        (status, echo)
    }

    async fn admin(&self, method: reqwest::Method, path: &str, body: Option<Value>) -> Value {
        let mut req = reqwest::Client::new()
            .request(method, format!("{}{path}", self.authz.admin_url()))
            .bearer_auth(&self.authz.admin_token);
        if let Some(b) = body {
            req = req.json(&b);
        }
        let r = req.send().await.unwrap();
        assert!(r.status().is_success(), "{path}: {}", r.status());
        r.json().await.unwrap()
    }
}

/// Sends traffic of every kind through Envoy until stopped (at most 30 s): calls with `good`
/// (allowed), `limited` (over its plan's limit) and `denied` (refused). The task ends with the
/// number of answers each key got, in that order.
fn traffic(
    envoy_url: String,
    good: String,
    limited: String,
    denied: String,
) -> (Arc<AtomicBool>, tokio::task::JoinHandle<[u64; 3]>) {
    let stop = Arc::new(AtomicBool::new(false));
    let flag = stop.clone();
    let task = tokio::spawn(async move {
        let c = reqwest::Client::new();
        let mut answered = [0; 3];
        for _ in 0..300 {
            if flag.load(Ordering::Relaxed) {
                break;
            }
            for (i, key) in [&good, &limited, &denied].into_iter().enumerate() {
                let sent = c
                    .get(format!("{envoy_url}/api/orders"))
                    .header("x-api-key", key)
                    .send()
                    .await;
                answered[i] += u64::from(sent.is_ok());
            }
            // Paces the load (a few calls a second), it synchronises nothing.
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
        answered
    });
    (stop, task)
}

/// `YYYY-MM-DD` of today, UTC.
fn today() -> String {
    tollgate_authz::apikey::Day::of(std::time::SystemTime::now()).to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_operator_manages_a_key_in_the_console_and_envoy_follows() {
    let gw = Gateway::start().await;
    let shots = screenshot_dir("console");
    let mut b = Browser::start(&shots).await.unwrap();

    let opened = b
        .step(
            "open",
            json!({"url": format!("{}/console/", gw.authz.admin_url())}),
        )
        .await;
    assert_eq!(opened["title"], "Tollgate console");
    b.screenshot("login").await;

    // The policy is enforced in the browser, not only sent: injected inline code does not run.
    let probe = b.step("csp_probe", json!({})).await;
    assert_eq!(probe["ran"], false, "{probe}");
    let violations = probe["violations"].to_string();
    assert!(
        violations.contains("script-src") && violations.contains("style-src"),
        "{probe}"
    );

    let refused = b
        .step(
            "login",
            json!({"token": "not-the-admin-credential-000", "refused": true}),
        )
        .await;
    assert!(
        refused["message"]
            .as_str()
            .unwrap()
            .contains("not the admin credential"),
        "{refused}"
    );
    b.step("login", json!({"token": gw.authz.admin_token}))
        .await;

    // Create: the secret is shown once, copies to the clipboard, and is gone from the page.
    let created = b
        .step(
            "create_key",
            json!({"name": "checkout service", "owner": "team-checkout", "plan": "silver",
                   "tenant": "acme", "scopes": "orders:read orders:write"}),
        )
        .await;
    let (id, secret) = (
        created["id"].as_str().unwrap().to_string(),
        created["secret"].as_str().unwrap().to_string(),
    );
    assert!(secret.starts_with(&format!("tgk_{id}_")), "{created}");
    assert_eq!(created["copied"], secret, "the copy button copies the key");
    let seen = b.step("find_anywhere", json!({"text": secret})).await;
    assert_eq!(
        seen,
        json!([]),
        "the secret is nowhere once dismissed: {seen}"
    );

    // The key works through Envoy: the upstream sees its identity, never the key.
    let (status, echo) = gw.call(&secret).await;
    assert_eq!(status, 200);
    let echo = echo.unwrap();
    assert_eq!(echo.header("x-tollgate-subject"), Some("team-checkout"));
    assert_eq!(echo.header("x-tollgate-plan"), Some("silver"));
    assert_eq!(echo.header("x-tollgate-tenant"), Some("acme"));
    assert_eq!(echo.header("x-tollgate-key-id"), Some(id.as_str()));
    assert!(echo.header("x-api-key").is_none(), "{echo:?}");

    // The key's page shows its use once the batched last-used time is written, and its one
    // call today (usage counts are read with the calls not yet written).
    let page = b
        .step(
            "key_page",
            json!({"id": id, "used": true, "totals": "1 allowed · 0 denied · 0 rate limited"}),
        )
        .await;
    assert_eq!(page["details"]["Owner"], "team-checkout");
    assert_eq!(page["details"]["Plan"], "silver");
    assert_eq!(page["details"]["Rate limit"], "the plan’s");
    assert_eq!(page["details"]["Scopes"], "orders:read orders:write");
    assert_eq!(page["details"]["state"], "active");
    assert_ne!(page["details"]["Last used"], "never", "{page}");
    assert!(
        page["usage"]
            .as_str()
            .unwrap()
            .contains("Last 30 days, UTC: 1 allowed · 0 denied · 0 rate limited"),
        "{page}"
    );
    assert_eq!(
        page["chart"],
        json!([format!(
            "{}: Allowed 1, Denied 0, Rate limited (429) 0",
            today()
        )])
    );

    // The chart that section draws once the API serves usage: the component itself, in this
    // page under its policy, on a usage answer of the documented shape.
    let chart = b
        .step(
            "chart_component",
            json!({"now": "2025-03-10T12:00:00Z", "answer": {"days": [
                {"date": "2025-03-01", "allowed": 120, "denied": 4, "rate_limited": 9},
                {"date": "2025-03-09", "allowed": 80, "denied": 0, "rate_limited": 0},
                {"date": "2025-03-10", "allowed": 30, "denied": 2, "rate_limited": 0}
            ]}}),
        )
        .await;
    assert_eq!(chart["bars"], 30, "{chart}");
    assert_eq!(
        chart["segments"],
        json!([
            "allowed",
            "denied",
            "rate_limited",
            "allowed",
            "allowed",
            "denied"
        ])
    );
    assert_eq!(
        chart["titles"],
        json!([
            "2025-03-01: Allowed 120, Denied 4, Rate limited (429) 9",
            "2025-03-09: Allowed 80, Denied 0, Rate limited (429) 0",
            "2025-03-10: Allowed 30, Denied 2, Rate limited (429) 0"
        ])
    );
    assert_eq!(chart["rows"], 3);

    // More keys, as a real store has: another team's on gold, one without a plan, one revoked.
    let create = |body: Value| gw.admin(reqwest::Method::POST, "/v1/keys", Some(body));
    let gold = create(json!({"name": "storefront", "owner": "team-store", "plan": "gold", "tenant": "acme", "scopes": ["orders:read"]}))
        .await["secret"]
        .as_str()
        .unwrap()
        .to_string();
    create(json!({"name": "partner feed", "owner": "partner-globex", "tenant": "globex", "expires_in": "30d"})).await;
    let old = create(json!({"name": "legacy batch", "owner": "team-batch", "plan": "silver", "tenant": "globex"})).await;
    let old_id = old["key"]["id"].as_str().unwrap();
    let revoked_key = old["secret"].as_str().unwrap().to_string();
    gw.admin(
        reqwest::Method::POST,
        &format!("/v1/keys/{old_id}/revoke"),
        None,
    )
    .await;

    // Live rates while traffic of every kind flows: allowed (gold), denied (the revoked key),
    // over the limit (the silver key allows 3 a minute and has used 1).
    let (stop, task) = traffic(gw.envoy.url(""), gold, secret.clone(), revoked_key);
    let activity = b
        .step(
            "activity",
            json!({"want": ["Allowed", "Denied", "Over limit (429)"], "nonzero": true, "points": 3}),
        )
        .await;
    b.screenshot("activity").await;
    stop.store(true, Ordering::Relaxed);
    let [_, limited_calls, denied_calls] = task.await.unwrap();
    for label in ["Allowed", "Denied", "Over limit (429)"] {
        let rate = activity["rates"][label].as_str().unwrap();
        assert!(rate.ends_with("/s") && rate != "0/s", "{label}: {activity}");
    }
    assert!(
        activity["reasons"].as_str().unwrap().contains("revoked"),
        "{activity}"
    );
    assert!(
        activity["limits"]
            .as_str()
            .unwrap()
            .contains("gateway/plan-silver"),
        "{activity}"
    );

    // Every call the traffic made is on the keys' pages: in the service pair tollgate-authz
    // allowed the silver key's calls (the 429s are tollgate-ratelimit's) and denied the
    // revoked key's.
    let allowed = format!("{} allowed · 0 denied · 0 rate limited", 1 + limited_calls);
    let page = b
        .step("key_page", json!({"id": id, "totals": allowed}))
        .await;
    assert!(page["usage"].as_str().unwrap().contains(&allowed), "{page}");
    b.screenshot("key-page").await;
    let denied = format!("0 allowed · {denied_calls} denied · 0 rate limited");
    let page = b
        .step("key_page", json!({"id": old_id, "totals": denied}))
        .await;
    assert!(page["usage"].as_str().unwrap().contains(&denied), "{page}");

    // The plans with their calls, and the limits in force read from tollgate-ratelimit.
    let plans = b.step("plans", json!({})).await;
    let table = plans["plans"].as_str().unwrap();
    assert!(
        table.contains("silver") && table.contains("gold"),
        "{plans}"
    );
    assert!(table.contains("Calls, last 30 days"), "{plans}");
    assert!(
        table.contains("3 per 1m, sliding_window"),
        "silver's limit: {plans}"
    );
    let silver_calls = format!(
        "{} allowed · {denied_calls} denied · 0 rate limited",
        1 + limited_calls
    );
    assert!(table.contains(&silver_calls), "{silver_calls}: {plans}");
    let limits = plans["limits"].as_str().unwrap();
    assert!(
        limits.contains("Loaded ")
            && limits.contains("plan_silver.subject")
            && limits.contains("plan-silver"),
        "{plans}"
    );
    b.screenshot("plans").await;

    let all = b.step("search", json!({"query": ""})).await;
    assert_eq!(all["rows"].as_array().unwrap().len(), 4, "{all}");
    b.screenshot("keys").await;
    let found = b.step("search", json!({"query": "silver checkout"})).await;
    let rows = found["rows"].as_array().unwrap();
    assert_eq!(rows.len(), 1, "{found}");
    assert_eq!(rows[0][0], id.as_str());
    let revoked = b.step("search", json!({"query": "revoked"})).await;
    assert_eq!(revoked["rows"].as_array().unwrap().len(), 1, "{revoked}");
    assert_eq!(revoked["rows"][0][1], "legacy batch");

    // Edit the plan in the console: the next call through Envoy carries the new one.
    b.step("key_page", json!({"id": id})).await;
    let edited = b.step("edit", json!({"fields": {"Plan": "gold"}})).await;
    assert_eq!(edited["details"]["Plan"], "gold");
    wait_for(
        "the new plan through Envoy",
        Duration::from_secs(5),
        || async {
            match gw.call(&secret).await {
                (200, Some(e)) if e.header("x-tollgate-plan") == Some("gold") => Some(()),
                _ => None,
            }
        },
    )
    .await;

    // A rate limit of the key's own, set in the console: Envoy applies it instead of gold's
    // 1000 a minute. Cleared again, gold's applies.
    let edited = b
        .step("edit", json!({"fields": {"Rate limit": "2/minute"}}))
        .await;
    assert_eq!(edited["details"]["Rate limit"], "2/minute (its own)");
    wait_for(
        "the key's own limit through Envoy",
        Duration::from_secs(5),
        || async { (gw.call(&secret).await.0 == 429).then_some(()) },
    )
    .await;
    let edited = b.step("edit", json!({"fields": {"Rate limit": ""}})).await;
    assert_eq!(edited["details"]["Rate limit"], "the plan’s");
    wait_for("gold's limit again", Duration::from_secs(5), || async {
        (gw.call(&secret).await.0 == 200).then_some(())
    })
    .await;

    // Rotate with a grace period: old and new secrets both work, the page says until when.
    let rotated = b.step("rotate", json!({"grace": "1h"})).await;
    let new_secret = rotated["secret"].as_str().unwrap().to_string();
    assert_ne!(new_secret, secret);
    assert_eq!(rotated["details"]["state"], "rotating", "{rotated}");
    assert!(
        rotated["details"]["Previous secret works until"].is_string(),
        "{rotated}"
    );
    assert_eq!(gw.call(&new_secret).await.0, 200);
    assert_eq!(
        gw.call(&secret).await.0,
        200,
        "the old secret works during the grace period"
    );
    let seen = b.step("find_anywhere", json!({"text": new_secret})).await;
    assert_eq!(seen, json!([]), "{seen}");

    // Revoke in the console: Envoy refuses both secrets within a second.
    let revoked = b.step("revoke", json!({})).await;
    assert_eq!(revoked["details"]["state"], "revoked");
    b.screenshot("key-revoked").await;
    wait_for(
        "the revocation through Envoy",
        Duration::from_secs(1),
        || async {
            let (new, old) = (gw.call(&new_secret).await.0, gw.call(&secret).await.0);
            (new == 401 && old == 401).then_some(())
        },
    )
    .await;

    // Only the credential is stored, in this tab's session; logging out removes it.
    let stored = b.step("storage", json!({})).await;
    assert_eq!(
        stored,
        json!({"session": ["tollgate.admin.credential"], "local": [], "cookie": ""})
    );
    let after = b.step("logout", json!({})).await;
    assert_eq!(after, json!({"session": [], "local": [], "cookie": ""}));

    let shots_taken = b.screenshots.clone();
    b.close().await;
    publish_doc_images(&shots_taken);
}

/// The screenshots docs/console.md shows (as `docs/images/console-<name>.png`).
const DOC_IMAGES: &[&str] = &[
    "login",
    "create-key-secret-once",
    "key-page",
    "rotate-with-grace",
    "activity",
    "plans",
    "keys",
];

/// With `TOLLGATE_UPDATE_DOC_IMAGES=1`, copies the screenshots docs/console.md shows into
/// `docs/images/`.
fn publish_doc_images(shots: &[PathBuf]) {
    let docs = project_root().join("docs/images");
    let page = std::fs::read_to_string(project_root().join("docs/console.md")).unwrap();
    for name in DOC_IMAGES {
        let image = format!("images/console-{name}.png");
        assert!(page.contains(&image), "docs/console.md shows {image}");
        assert!(
            shots
                .iter()
                .any(|s| s.file_stem().is_some_and(|f| f == *name)),
            "the test takes the {name} screenshot"
        );
    }
    if std::env::var_os("TOLLGATE_UPDATE_DOC_IMAGES").is_none() {
        return;
    }
    std::fs::create_dir_all(&docs).unwrap();
    for shot in shots {
        let name = shot.file_stem().unwrap().to_string_lossy();
        if !DOC_IMAGES.contains(&&*name) {
            continue;
        }
        let name = shot.file_name().unwrap().to_string_lossy();
        let to = docs.join(format!("console-{name}"));
        std::fs::copy(shot, &to).unwrap();
        println!("doc image: {}", to.display());
    }
}

/// The console's pure logic (chart geometry, rates, search, plans, the PATCH body) under
/// node's own test runner.
#[test]
fn the_consoles_logic_passes_its_unit_tests() {
    let out = std::process::Command::new(node_bin())
        .args(["--test", "unit/"])
        .current_dir(driver_dir())
        .output()
        .expect("run node --test");
    let text = format!(
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(out.status.success(), "node --test failed:\n{text}");
    assert!(
        text.contains("# fail 0") && !text.contains("# pass 0"),
        "{text}"
    );
}
