//! The Tollgate filter on real authz configs: decisions on the worker, denials as the service
//! answers them, identity headers, single-call rate limits, and config errors with their place.

use super::*;
use crate::filter::testing::FakeRequest;
use crate::host::Counter;

/// Writes the authz config `yaml` into `dir` (`{dir}` in it is that dir) and returns the
/// filter config that names it.
fn filter_config(dir: &std::path::Path, yaml: &str) -> String {
    let path = dir.join("authz.yaml");
    std::fs::write(&path, yaml.replace("{dir}", &dir.display().to_string())).unwrap();
    format!("config: {}\n", path.display())
}

/// A gate on an authz config written to a temp dir (`{dir}` in `yaml` is that dir).
fn gate(yaml: &str) -> (tempfile::TempDir, Gate) {
    let dir = tempfile::tempdir().unwrap();
    let text = filter_config(dir.path(), yaml);
    let gate = Gate::from_config("tollgate", text.as_bytes()).unwrap();
    (dir, gate)
}

const POLICY: &str = "log: {format: text}
policy:
  no_match: deny
  rules:
    - name: open
      path: {prefix: /open}
      public: true
      rate_limits:
        - actions:
          - generic_key: {descriptor_key: route, descriptor_value: open}
    - name: api
      path: {prefix: /api}
      identity: [api_key]
api_keys:
  header: x-api-key
  store: {type: embedded, path: '{dir}/keys.redb'}
rate_limit:
  domain: gw
  store: {type: memory}
  limits: {path: '{dir}/limits'}
";

fn with_limits(yaml: &str) -> (tempfile::TempDir, Gate) {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("limits")).unwrap();
    std::fs::write(
        dir.path().join("limits/gw.yaml"),
        "domain: gw\ndescriptors:\n  - key: route\n    value: open\n    rate_limit: {unit: minute, requests_per_unit: 2}\n",
    )
    .unwrap();
    let text = filter_config(dir.path(), yaml);
    (dir, Gate::from_config("tollgate", text.as_bytes()).unwrap())
}

#[test]
fn a_public_rule_is_decided_on_the_worker_and_rate_limited_with_429_and_headers() {
    let (_dir, gate) = with_limits(POLICY);
    for _ in 0..2 {
        let forged = FakeRequest::get("/open").with("x-tollgate-subject", "someone");
        let Verdict::Continue(m) = gate.on_request(&forged) else {
            panic!("allowed expected")
        };
        assert!(
            m.response_headers
                .iter()
                .any(|(k, _)| k == "ratelimit-policy"),
            "{m:?}"
        );
        assert!(m.counts.contains(&(Counter::Decisions, "public")), "{m:?}");
        assert!(m.counts.contains(&(Counter::RateLimit, "ok")), "{m:?}");
        // The client's copy of an identity header never reaches the upstream.
        assert!(
            m.remove_headers
                .iter()
                .any(|h| &**h == "x-tollgate-subject"),
            "{m:?}"
        );
    }
    let Verdict::Respond(reply) = gate.on_request(&FakeRequest::get("/open")) else {
        panic!("429 expected")
    };
    assert_eq!(reply.status, 429);
    assert_eq!(reply.details, "tollgate_rate_limited");
    let names: Vec<&str> = reply.headers.iter().map(|(k, _)| k.as_str()).collect();
    assert!(names.contains(&"retry-after"), "{names:?}");
}

#[test]
fn a_missing_credential_is_the_services_401_with_its_challenge() {
    let (_dir, gate) = with_limits(POLICY);
    let Verdict::Respond(reply) = gate.on_request(&FakeRequest::get("/api/x")) else {
        panic!("401 expected")
    };
    assert_eq!(reply.status, 401);
    assert_eq!(reply.details, "tollgate_denied");
    assert!(
        reply.headers.iter().any(|(k, _)| k == "www-authenticate"),
        "{reply:?}"
    );
    // No rule: the policy's no_match denies.
    let Verdict::Respond(reply) = gate.on_request(&FakeRequest::get("/elsewhere")) else {
        panic!("403 expected")
    };
    assert_eq!(reply.status, 403);
}

#[test]
fn a_disabled_route_still_strips_identity_headers() {
    let (_dir, gate) = gate(
        "log: {format: text}\npolicy:\n  rules:\n    - name: all\n      path: {prefix: /}\n      public: true\n",
    );
    let m = gate.on_disabled();
    assert!(
        m.remove_headers
            .iter()
            .any(|h| &**h == "x-tollgate-subject"),
        "{m:?}"
    );
    assert!(m.set_headers.is_empty());
}

#[test]
fn a_bad_authz_config_refuses_the_filter_config_with_its_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("authz.yaml");
    std::fs::write(&path, "policy:\n  rulez: []\n").unwrap();
    let text = format!("config: {}\n", path.display());
    let err = Gate::from_config("tollgate", text.as_bytes())
        .unwrap_err()
        .to_string();
    assert!(err.contains("config: "), "{err}");
    assert!(err.contains("authz.yaml"), "{err}");
    assert!(err.contains("rulez"), "{err}");
    let err = Gate::from_config("tollgate", b"confg: x\n")
        .unwrap_err()
        .to_string();
    assert!(err.contains("unknown field `confg`"), "{err}");
}

#[test]
fn filter_configs_naming_one_file_share_one_authorizer_and_its_key_store() {
    let dir = tempfile::tempdir().unwrap();
    std::fs::create_dir(dir.path().join("limits")).unwrap();
    let text = filter_config(dir.path(), POLICY);
    let first = Gate::from_config("tollgate", text.as_bytes()).unwrap();
    // Envoy builds a listener's new filter config before it drops the old one: the embedded
    // key store, which one owner opens, is the same one.
    let second = Gate::from_config("tollgate", text.as_bytes()).unwrap();
    assert!(Arc::ptr_eq(&first.started, &second.started));
    drop((first, second));
    // Once the last is gone its background tasks stop and release the store.
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(10);
    let third = loop {
        match Gate::from_config("tollgate", text.as_bytes()) {
            Ok(g) => break g,
            Err(e) if std::time::Instant::now() < deadline => {
                assert!(e.to_string().contains("another process holds it"), "{e}");
                std::thread::sleep(std::time::Duration::from_millis(20));
            }
            Err(e) => panic!("the store was never released: {e}"),
        }
    };
    assert!(matches!(
        third.on_request(&FakeRequest::get("/api")),
        Verdict::Respond(r) if r.status == 401
    ));
}

#[test]
fn the_routes_identity_methods_reach_the_decision() {
    let (_dir, gate) = with_limits(POLICY);
    let status = |identity: Option<&str>| {
        let mut req = FakeRequest::get("/api/x");
        req.identity = identity.map(str::to_string);
        match gate.on_request(&req) {
            Verdict::Respond(reply) => reply.status,
            other => panic!("denied expected: {other:?}"),
        }
    };
    // No credential for the rule's methods: 401; a route naming methods that are not methods
    // is a misconfiguration, denied with 403 as the service denies it.
    assert_eq!(status(None), 401);
    assert_eq!(status(Some("api_key")), 401);
    assert_eq!(status(Some("passwords")), 403);
}

#[test]
fn the_identity_and_limit_go_to_metadata_only_when_switched_on() {
    let (dir, off) = with_limits(POLICY);
    let Verdict::Continue(m) = off.on_request(&FakeRequest::get("/open")) else {
        panic!("allowed expected")
    };
    assert!(m.metadata.is_empty(), "{m:?}");
    // The rest of the verdict is the same: the limit applied and its headers are there.
    assert!(m.counts.contains(&(Counter::RateLimit, "ok")), "{m:?}");
    assert!(
        m.response_headers.iter().any(|(k, _)| k == "ratelimit"),
        "{m:?}"
    );

    let text = format!(
        "{}dynamic_metadata: true\n",
        filter_config(dir.path(), POLICY)
    );
    let on = Gate::from_config("tollgate", text.as_bytes()).unwrap();
    let Verdict::Continue(m) = on.on_request(&FakeRequest::get("/open")) else {
        panic!("allowed expected")
    };
    let keys: Vec<&str> = m.metadata.iter().map(|e| &*e.key).collect();
    assert_eq!(keys, ["method", "rate_limit"], "{m:?}");
    assert!(m.metadata.iter().all(|e| e.namespace == verdict::NAMESPACE));
}
