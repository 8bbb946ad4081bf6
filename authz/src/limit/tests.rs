//! Single-call mode through the decision: a rule's descriptors counted by the embedded engine,
//! 429 with the rate-limit headers over the limit, the headers on the client's response and
//! the limit in the metadata within it, and each failure mode of a store that cannot answer.

use tollgate_common::config::{Sources, load};

use crate::check::{Decision, MetadataValue, OwnedRequest, metadata_keys};
use crate::reason::Reason;
use crate::{Config, build};

const LIMITS: &str = "
domain: edge
descriptors:
  - key: route
    value: limited
    rate_limit: {name: limited, unit: minute, requests_per_unit: 2}
  - key: plan
    value: anonymous
    descriptors:
      - key: remote_address
        rate_limit: {name: per-address, unit: minute, requests_per_unit: 100}
";

async fn authorizer(
    store: &str,
    failure_mode: &str,
) -> (std::sync::Arc<crate::Authorizer>, tempfile::TempDir) {
    let dir = tempfile::tempdir().unwrap();
    let limits = dir.path().join("limits");
    std::fs::create_dir(&limits).unwrap();
    std::fs::write(limits.join("edge.yaml"), LIMITS).unwrap();
    let yaml = format!(
        r#"
policy:
  rate_limits:
    - actions:
      - metadata:
          descriptor_key: plan
          metadata_key: {{key: envoy.filters.http.ext_authz, path: [{{key: plan}}]}}
          default_value: anonymous
      - remote_address: {{}}
  rules:
    - name: limited
      path: {{prefix: /limited}}
      public: true
      rate_limits:
        - actions: [{{generic_key: {{descriptor_key: route, descriptor_value: limited}}}}]
    - name: unlimited
      path: {{prefix: /free}}
      public: true
      rate_limits: []
    - name: public
      path: {{prefix: /}}
      public: true
rate_limit:
  domain: edge
  store: {store}
  limits: {{path: {}}}
  failure_mode: {failure_mode}
"#,
        limits.display()
    );
    let p = dir.path().join("authz.yaml");
    std::fs::write(&p, yaml).unwrap();
    let cfg: Config = load(&Sources {
        file: Some(p),
        ..Default::default()
    })
    .unwrap();
    (build(&cfg).await.unwrap().authorizer, dir)
}

fn request(path: &str) -> OwnedRequest {
    let mut r = OwnedRequest::new("GET", path);
    r.source_address = Some("192.0.2.7".into());
    r
}

fn header<'a>(hs: &'a [(&'static str, String)], name: &str) -> Option<&'a str> {
    hs.iter()
        .find(|(n, _)| n.eq_ignore_ascii_case(name))
        .map(|(_, v)| v.as_str())
}

#[tokio::test]
async fn over_the_limit_is_a_429_with_the_rate_limit_headers() {
    let (a, _dir) = authorizer("{type: memory}", "error").await;
    for i in 0..2 {
        let Decision::Allow(ok) = a.check(&request("/limited")).await else {
            panic!("request {i} denied");
        };
        let state = header(&ok.response_headers, "ratelimit").unwrap_or_default();
        assert!(
            state.starts_with(&format!("\"limited\";r={};t=", 1 - i)),
            "{:?}",
            ok.response_headers
        );
        let note = ok.rate_limit.as_ref().unwrap();
        assert_eq!((&*note.domain, &*note.limit), ("edge", "limited"));
    }
    let d = a.check(&request("/limited")).await;
    let Decision::Deny(deny) = &d else {
        panic!("third request allowed");
    };
    assert_eq!((deny.status, deny.reason), (429, Reason::RateLimited));
    assert_eq!(
        header(&deny.headers, "ratelimit-policy"),
        Some("\"limited\";q=2;w=60")
    );
    assert!(
        header(&deny.headers, "retry-after").is_some(),
        "{:?}",
        deny.headers
    );
    assert_eq!(
        header(&deny.headers, "content-type"),
        Some("application/json")
    );
    assert_eq!(deny.body, r#"{"error":"rate_limited"}"#);
    // The metadata names the limit that denied.
    let md = d.metadata();
    let Some((_, MetadataValue::Struct(fields))) =
        md.iter().find(|(k, _)| *k == metadata_keys::RATE_LIMIT)
    else {
        panic!("{md:?}");
    };
    assert!(
        fields.contains(&("limit", MetadataValue::String("limited"))),
        "{fields:?}"
    );
}

#[tokio::test]
async fn each_rule_counts_its_own_descriptors_and_the_default_applies_elsewhere() {
    let (a, _dir) = authorizer("{type: memory}", "error").await;
    for _ in 0..5 {
        let Decision::Allow(ok) = a.check(&request("/free")).await else {
            panic!("an empty rate_limits list limits nothing");
        };
        assert!(ok.response_headers.is_empty() && ok.rate_limit.is_none());
    }
    let Decision::Allow(ok) = a.check(&request("/other")).await else {
        panic!("denied");
    };
    assert_eq!(
        ok.rate_limit.as_ref().map(|n| &*n.limit),
        Some("per-address"),
        "the default descriptors: (plan anonymous, remote_address)"
    );
    // A route that switches the checks off is not limited either.
    let mut r = request("/limited");
    r.disabled = true;
    for _ in 0..3 {
        assert!(a.check(&r).await.is_allowed());
    }
}

#[tokio::test]
async fn a_store_that_cannot_answer_follows_the_failure_mode() {
    let down = "{type: redis, url: 'redis://127.0.0.1:1', timeout: 50ms}";
    let (a, _dir) = authorizer(down, "allow").await;
    let d = a.check(&request("/limited")).await;
    assert!(d.is_allowed(), "failure_mode allow");
    let (a, _dir) = authorizer(down, "deny").await;
    let Decision::Deny(deny) = a.check(&request("/limited")).await else {
        panic!("failure_mode deny allowed");
    };
    assert_eq!(deny.status, 429);
    let (a, _dir) = authorizer(down, "error").await;
    let Decision::Deny(deny) = a.check(&request("/limited")).await else {
        panic!("failure_mode error allowed");
    };
    assert_eq!(
        (deny.status, deny.reason),
        (503, Reason::RateLimitStoreError)
    );
    assert_eq!(header(&deny.headers, "retry-after"), Some("1"));
}
