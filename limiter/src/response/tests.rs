//! Header values and metadata of real decisions (memory store, manual clock).

use std::sync::Arc;
use std::time::{Duration, UNIX_EPOCH};

use tollgate_common::clock::ManualClock;

use super::*;
use crate::algorithm::Algorithm;
use crate::descriptor::Descriptor;
use crate::engine::{Engine, EngineOptions};
use crate::limits::Limits;
use crate::store::{MemoryOptions, MemoryStore};

const LIMITS: &str = "
domain: web
descriptors:
  - key: client
    rate_limit: {name: per-client, unit: minute, requests_per_unit: 2}
  - key: path
    rate_limit: {unit: second, requests_per_unit: 100}
  - key: beta
    shadow_mode: true
    rate_limit: {name: beta-trial, unit: minute, requests_per_unit: 1}
";

fn engine() -> Engine {
    Engine::new(
        Limits::parse(LIMITS, Algorithm::FixedWindow).unwrap(),
        Arc::new(MemoryStore::new(&MemoryOptions::default())),
        Arc::new(ManualClock::new(
            UNIX_EPOCH + Duration::from_secs(1_700_000_000),
        )),
        EngineOptions::default(),
    )
}

async fn decide(e: &Engine, entries: &[&[(&str, &str)]]) -> Decision {
    let ds: Vec<Descriptor> = entries
        .iter()
        .map(|e| Descriptor::new(e.iter().copied()))
        .collect();
    e.should_rate_limit("web", &ds, 0).await.unwrap()
}

const ALL: HeaderOptions = HeaderOptions {
    ietf: true,
    x_ratelimit: true,
    retry_after: true,
};

#[tokio::test]
async fn allowed_requests_get_the_ietf_fields_and_no_retry_after() {
    let e = engine();
    let d = decide(&e, &[&[("client", "c1")], &[("nothing", "x")]]).await;
    let h = headers(&d, HeaderOptions::default());
    assert_eq!(h.len(), 2, "{h:?}");
    assert_eq!(h[0], ("RateLimit-Policy", "\"per-client\";q=2;w=60".into()));
    assert_eq!(h[1].0, "RateLimit");
    assert!(h[1].1.starts_with("\"per-client\";r=1;t="), "{}", h[1].1);
    assert_eq!(metadata("web", &d), None);
    let off = HeaderOptions {
        ietf: false,
        x_ratelimit: false,
        retry_after: true,
    };
    assert!(headers(&d, off).is_empty());
}

#[tokio::test]
async fn over_limit_gets_every_header_and_names_the_limit() {
    let e = engine();
    let req: &[&[(&str, &str)]] = &[&[("path", "/a")], &[("client", "c1")]];
    decide(&e, req).await;
    decide(&e, req).await;
    let d = decide(&e, req).await;
    let h = headers(&d, ALL);
    let get = |k: &str| h.iter().find(|(n, _)| *n == k).map(|(_, v)| v.clone());
    assert_eq!(
        get("RateLimit-Policy").unwrap(),
        "\"path\";q=100;w=1, \"per-client\";q=2;w=60"
    );
    assert!(get("RateLimit").unwrap().contains("\"per-client\";r=0;t="));
    assert_eq!(get("X-RateLimit-Limit").unwrap(), "2, 2;w=60");
    assert_eq!(get("X-RateLimit-Remaining").unwrap(), "0");
    let retry: u64 = get("Retry-After").unwrap().parse().unwrap();
    assert!((1..=60).contains(&retry), "{retry}");
    assert_eq!(
        get("X-RateLimit-Reset").unwrap().parse::<u64>().unwrap(),
        retry
    );
    assert_eq!(
        metadata("web", &d),
        Some(Metadata {
            domain: "web",
            fired: Some(("per-client", 1)),
            shadow_limits: vec![],
            quota_mode: false,
            quota_violations: vec![],
        })
    );
}

#[tokio::test]
async fn shadow_limits_are_named_in_metadata_only() {
    let e = engine();
    decide(&e, &[&[("beta", "u")]]).await;
    let d = decide(&e, &[&[("beta", "u")]]).await;
    assert_eq!(d.code, Code::Ok);
    assert!(!headers(&d, ALL).iter().any(|(n, _)| *n == "Retry-After"));
    let md = metadata("web", &d).unwrap();
    assert_eq!((md.fired, md.shadow_limits), (None, vec!["beta-trial"]));
}

#[test]
fn waits_round_up_and_sf_strings_are_escaped() {
    assert_eq!(ceil_secs(Duration::from_millis(1200)), 2);
    assert_eq!(ceil_secs(Duration::from_secs(2)), 2);
    assert_eq!(ceil_secs(Duration::ZERO), 0);
    let mut s = String::new();
    sf_string(&mut s, "a\"b\\c\u{e9}");
    assert_eq!(s, "\"a\\\"b\\\\c_\"");
}

#[test]
fn decimals_are_written_as_display_writes_them() {
    for n in [0, 7, 10, 99, 100, 99_999_999, u64::MAX] {
        let mut out = String::from("x");
        push_decimal(&mut out, n);
        assert_eq!(out, format!("x{n}"));
    }
}

#[tokio::test]
async fn a_limit_two_descriptors_hit_is_one_item() {
    let e = engine();
    let d = decide(
        &e,
        &[&[("client", "c1")], &[("path", "/a")], &[("client", "c2")]],
    )
    .await;
    let h = headers(&d, HeaderOptions::default());
    assert_eq!(
        h[0],
        (
            "RateLimit-Policy",
            "\"per-client\";q=2;w=60, \"path\";q=100;w=1".into()
        )
    );
    assert_eq!(h[1].1.matches("\"per-client\"").count(), 1, "{}", h[1].1);
}
