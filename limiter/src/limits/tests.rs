//! Compatibility suite: every matching case envoyproxy/ratelimit's documentation describes, with
//! configs and requests written here, plus this service's extensions and validation errors.

use std::time::Duration;

use super::*;
use crate::descriptor::Descriptor;
use crate::key::KeyBuilder;

fn cfg(yaml: &str) -> Limits {
    match Limits::parse(yaml, Algorithm::SlidingWindow) {
        Ok(l) => l,
        Err(e) => panic!("config rejected:\n{e}"),
    }
}

fn errors(yaml: &str) -> Vec<(String, Option<usize>, String)> {
    Limits::parse(yaml, Algorithm::SlidingWindow)
        .expect_err("config should be rejected")
        .0
        .into_iter()
        .map(|e| (e.field, e.line, e.reason))
        .collect()
}

/// The limits a descriptor selects, by name, and the descriptor part of its counter key.
fn lookup(l: &Limits, domain: &str, entries: &[(&str, &str)]) -> (Vec<String>, String) {
    let d = l.domain(domain).expect("domain");
    let mut key = KeyBuilder::new(domain);
    let found = d.find(&Descriptor::new(entries.iter().copied()), &mut key);
    let part = found
        .first()
        .map(|l| l.counter_key(&key).descriptor().to_string())
        .unwrap_or_default();
    (found.iter().map(|l| l.name.to_string()).collect(), part)
}

fn matched(l: &Limits, domain: &str, entries: &[(&str, &str)]) -> Option<String> {
    let (names, _) = lookup(l, domain, entries);
    assert!(names.len() <= 1, "{names:?}");
    names.into_iter().next()
}

fn limit<'a>(l: &'a Limits, domain: &str, entries: &[(&str, &str)]) -> &'a Limit {
    let d = l.domain(domain).expect("domain");
    let mut key = KeyBuilder::new(domain);
    let found = d.find(&Descriptor::new(entries.iter().copied()), &mut key);
    assert_eq!(found.len(), 1, "expected one limit for {entries:?}");
    &found[0]
}

// Example 1: key + value pairs at the top level.
#[test]
fn top_level_key_value_pairs_match_only_their_value() {
    let l = cfg("
domain: mongo_cps
descriptors:
  - key: database
    value: users
    rate_limit: {unit: second, requests_per_unit: 500}
  - key: database
    value: default
    rate_limit: {unit: second, requests_per_unit: 500}
");
    assert_eq!(
        matched(&l, "mongo_cps", &[("database", "users")]).as_deref(),
        Some("database_users")
    );
    assert_eq!(
        matched(&l, "mongo_cps", &[("database", "default")]).as_deref(),
        Some("database_default")
    );
    assert_eq!(matched(&l, "mongo_cps", &[("database", "other")]), None);
    assert_eq!(
        matched(&l, "mongo_cps", &[("Database", "users")]),
        None,
        "keys are case-sensitive"
    );
    assert_eq!(
        matched(&l, "mongo_cps", &[("database", "Users")]),
        None,
        "values are case-sensitive"
    );
    let r = limit(&l, "mongo_cps", &[("database", "users")]);
    assert_eq!(
        (r.requests_per_unit, r.unit, r.rule.window),
        (500, Some(Unit::Second), Duration::from_secs(1))
    );
    assert!(l.domain("other").is_none());
}

// Example 2: a placeholder descriptor with a nested key-only limit, and a top-level key-only limit.
#[test]
fn nested_key_only_limits_count_per_value() {
    let l = cfg("
domain: messaging
descriptors:
  - key: message_type
    value: marketing
    descriptors:
      - key: to_number
        rate_limit: {unit: day, requests_per_unit: 5}
  - key: to_number
    rate_limit: {unit: day, requests_per_unit: 100}
");
    let a = lookup(
        &l,
        "messaging",
        &[("message_type", "marketing"), ("to_number", "2061111111")],
    );
    let b = lookup(
        &l,
        "messaging",
        &[("message_type", "marketing"), ("to_number", "2062222222")],
    );
    assert_eq!(a.0, ["message_type_marketing.to_number"]);
    assert_eq!(b.0, a.0);
    assert_ne!(a.1, b.1, "each phone number has its own counter");
    assert_eq!(
        limit(
            &l,
            "messaging",
            &[("message_type", "marketing"), ("to_number", "1")]
        )
        .requests_per_unit,
        5
    );
    let c = lookup(&l, "messaging", &[("to_number", "2061111111")]);
    assert_eq!(c.0, ["to_number"]);
    assert_eq!(
        limit(&l, "messaging", &[("to_number", "1")]).requests_per_unit,
        100
    );
    assert_ne!(a.1, c.1);
    // The placeholder has no limit of its own.
    assert_eq!(
        matched(&l, "messaging", &[("message_type", "marketing")]),
        None
    );
    // Another message type has no nested config.
    assert_eq!(
        matched(
            &l,
            "messaging",
            &[("message_type", "transactional"), ("to_number", "1")]
        ),
        None
    );
}

// Example 3: key/value is attempted before key alone, whatever the order in the file.
#[test]
fn key_value_is_matched_before_key_alone_in_either_order() {
    for yaml in [
        "
domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: second, requests_per_unit: 0}
",
        "
domain: edge_proxy_per_ip
descriptors:
  - key: remote_address
    value: 50.0.0.5
    rate_limit: {unit: second, requests_per_unit: 0}
  - key: remote_address
    rate_limit: {unit: second, requests_per_unit: 10}
",
    ] {
        let l = cfg(yaml);
        assert_eq!(
            limit(&l, "edge_proxy_per_ip", &[("remote_address", "50.0.0.5")]).requests_per_unit,
            0
        );
        assert_eq!(
            limit(&l, "edge_proxy_per_ip", &[("remote_address", "50.0.0.1")]).requests_per_unit,
            10
        );
        assert_eq!(
            limit(&l, "edge_proxy_per_ip", &[("remote_address", "")]).requests_per_unit,
            10
        );
    }
}

// Example 4: the request's depth must equal the config's depth.
#[test]
fn deeper_request_does_not_match_a_shallower_limit() {
    let l = cfg("
domain: example4
descriptors:
  - key: key
    value: value
    rate_limit: {requests_per_unit: 300, unit: second}
");
    assert_eq!(
        matched(&l, "example4", &[("key", "value"), ("subkey", "subvalue")]),
        None
    );
    assert_eq!(
        matched(&l, "example4", &[("key", "value")]).as_deref(),
        Some("key_value")
    );
    let l = cfg("
domain: example4
descriptors:
  - key: key
    value: value
    descriptors:
      - key: subkey
        rate_limit: {requests_per_unit: 300, unit: second}
");
    assert_eq!(
        matched(&l, "example4", &[("key", "value"), ("subkey", "subvalue")]).as_deref(),
        Some("key_value.subkey")
    );
    assert_eq!(
        matched(&l, "example4", &[("key", "value")]),
        None,
        "shorter request, limit only nested"
    );
    assert_eq!(
        matched(
            &l,
            "example4",
            &[("key", "value"), ("subkey", "x"), ("third", "y")]
        ),
        None
    );
    assert_eq!(
        matched(&l, "example4", &[("subkey", "subvalue")]),
        None,
        "nested keys are not top level"
    );
    assert_eq!(matched(&l, "example4", &[]), None);
}

#[test]
fn limits_at_each_level_apply_only_to_requests_of_that_depth() {
    let l = cfg("
domain: d
descriptors:
  - key: a
    rate_limit: {unit: minute, requests_per_unit: 1}
    descriptors:
      - key: b
        rate_limit: {unit: minute, requests_per_unit: 2}
");
    assert_eq!(matched(&l, "d", &[("a", "x")]).as_deref(), Some("a"));
    assert_eq!(
        matched(&l, "d", &[("a", "x"), ("b", "y")]).as_deref(),
        Some("a.b")
    );
    assert_eq!(matched(&l, "d", &[("a", "x"), ("c", "y")]), None);
    assert_eq!(
        matched(&l, "d", &[("a", "x"), ("b", "y"), ("c", "z")]),
        None
    );
}

// The most specific descriptor is chosen per level, and a specific value without the deeper
// config does not fall back to the key-only sibling's subtree.
#[test]
fn specific_value_at_a_level_wins_even_without_the_nested_match() {
    let l = cfg("
domain: test-domain
descriptors:
  - key: key1
    value: value1
    descriptors:
      - key: subkey1
        rate_limit: {unit: second, requests_per_unit: 5}
      - key: subkey1
        value: subvalue1
        rate_limit: {unit: second, requests_per_unit: 10}
  - key: key1
    descriptors:
      - key: other
        rate_limit: {unit: second, requests_per_unit: 7}
");
    assert_eq!(
        limit(&l, "test-domain", &[("key1", "value1"), ("subkey1", "x")]).requests_per_unit,
        5
    );
    assert_eq!(
        limit(
            &l,
            "test-domain",
            &[("key1", "value1"), ("subkey1", "subvalue1")]
        )
        .requests_per_unit,
        10
    );
    assert_eq!(
        limit(&l, "test-domain", &[("key1", "value2"), ("other", "x")]).requests_per_unit,
        7
    );
    assert_eq!(
        matched(&l, "test-domain", &[("key1", "value1"), ("other", "x")]),
        None
    );
}

// Example 5: unlimited.
#[test]
fn unlimited_limits_are_recognised_and_may_not_have_a_unit() {
    let l = cfg("
domain: internal
descriptors:
  - key: ldap
    rate_limit:
      unlimited: true
  - key: azure
    rate_limit: {unit: minute, requests_per_unit: 100}
");
    assert!(limit(&l, "internal", &[("ldap", "x")]).unlimited);
    assert!(!limit(&l, "internal", &[("azure", "x")]).unlimited);
    let e = errors(
        "
domain: internal
descriptors:
  - key: ldap
    rate_limit:
      unlimited: true
      unit: second
",
    );
    assert_eq!(e[0].2, "should not specify rate limit unit when unlimited");
}

// Example 6: shadow_mode per descriptor.
#[test]
fn shadow_mode_is_per_descriptor() {
    let l = cfg("
domain: example6
descriptors:
  - key: service
    descriptors:
      - key: user
        value: user-a
        rate_limit: {requests_per_unit: 10, unit: second}
        shadow_mode: true
      - key: user
        value: user-b
        rate_limit: {requests_per_unit: 20, unit: second}
");
    assert!(
        limit(
            &l,
            "example6",
            &[("service", "auth-service"), ("user", "user-a")]
        )
        .shadow
    );
    assert!(
        !limit(
            &l,
            "example6",
            &[("service", "auth-service"), ("user", "user-b")]
        )
        .shadow
    );
}

// Example 7: names and replaces (the dropping itself is the engine's; see engine tests).
#[test]
fn names_and_replaces_are_loaded_and_checked() {
    let l = cfg("
domain: example7
descriptors:
  - key: key_1
    value: value_1
    descriptors:
      - key: user
        value: bkthomps
        rate_limit: {name: specific_limit, requests_per_unit: 5, unit: second}
  - key: key_2
    value: value_2
    descriptors:
      - key: user
        value: bkthomps
        rate_limit:
          replaces:
            - name: specific_limit
          requests_per_unit: 10
          unit: second
");
    let a = limit(
        &l,
        "example7",
        &[("key_1", "value_1"), ("user", "bkthomps")],
    );
    assert!(a.named);
    assert_eq!(&*a.name, "specific_limit");
    let b = limit(
        &l,
        "example7",
        &[("key_2", "value_2"), ("user", "bkthomps")],
    );
    assert!(!b.named);
    assert_eq!(&*b.replaces[0], "specific_limit");
    let e = errors(
        "
domain: x
descriptors:
  - key: a
    rate_limit:
      name: n
      unit: second
      requests_per_unit: 1
      replaces:
        - name: n
        - name: ''
",
    );
    let reasons: Vec<_> = e.iter().map(|e| e.2.as_str()).collect();
    assert_eq!(
        reasons,
        [
            "replaces should not contain name of same descriptor",
            "should not have an empty replaces entry"
        ]
    );
}

// Example 8: detailed_metric.
#[test]
fn detailed_metric_is_per_descriptor() {
    let l = cfg("
domain: example8
descriptors:
  - key: key1
    detailed_metric: true
    rate_limit: {unit: minute, requests_per_unit: 10}
  - key: key1
    value: value1
    rate_limit: {unit: minute, requests_per_unit: 20}
");
    assert!(limit(&l, "example8", &[("key1", "unspecified")]).detailed_metric);
    assert!(!limit(&l, "example8", &[("key1", "value1")]).detailed_metric);
}

// Example 9: a trailing wildcard matches any value with that prefix, one counter per value.
#[test]
fn trailing_wildcard_matches_prefix_with_a_counter_per_value() {
    let l = cfg("
domain: example9
descriptors:
  - key: key1
    value: value*
    rate_limit: {unit: minute, requests_per_unit: 20}
");
    let a = lookup(&l, "example9", &[("key1", "value_1")]);
    let b = lookup(&l, "example9", &[("key1", "value_2")]);
    assert_eq!(a.0, ["key1_value*"]);
    assert_eq!(b.0, a.0);
    assert_ne!(a.1, b.1);
    assert_eq!(
        matched(&l, "example9", &[("key1", "value")]).as_deref(),
        Some("key1_value*"),
        "empty suffix"
    );
    assert_eq!(matched(&l, "example9", &[("key1", "valu")]), None);
    assert_eq!(matched(&l, "example9", &[("key1", "xvalue")]), None);
}

#[test]
fn exact_beats_wildcard_beats_key_only_and_first_wildcard_wins() {
    let l = cfg("
domain: d
descriptors:
  - key: path
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: path
    value: /api/*
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: path
    value: /api/admin*
    rate_limit: {unit: second, requests_per_unit: 3}
  - key: path
    value: /api/login
    rate_limit: {unit: second, requests_per_unit: 4}
");
    let n = |v| limit(&l, "d", &[("path", v)]).requests_per_unit;
    assert_eq!(n("/api/login"), 4);
    assert_eq!(n("/api/users"), 2);
    assert_eq!(
        n("/api/admin/x"),
        2,
        "the first wildcard in file order wins"
    );
    assert_eq!(n("/other"), 1);
}

// Nested levels have their own wildcards (envoyproxy/ratelimit#420).
#[test]
fn wildcards_work_at_nested_levels() {
    let l = cfg("
domain: d
descriptors:
  - key: tenant
    descriptors:
      - key: path
        value: /v1/*
        rate_limit: {unit: second, requests_per_unit: 5}
");
    assert_eq!(
        limit(&l, "d", &[("tenant", "t1"), ("path", "/v1/x")]).requests_per_unit,
        5
    );
    assert_eq!(
        matched(&l, "d", &[("tenant", "t1"), ("path", "/v2/x")]),
        None
    );
    assert_eq!(matched(&l, "d", &[("path", "/v1/x")]), None);
}

// Extension: `*` anywhere in the value, several times.
#[test]
fn wildcards_anywhere_in_the_value() {
    let l = cfg("
domain: d
descriptors:
  - key: host
    value: '*.example.com'
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: path
    value: /users/*/orders/*
    rate_limit: {unit: second, requests_per_unit: 2}
  - key: any
    value: '*'
    rate_limit: {unit: second, requests_per_unit: 3}
");
    assert!(matched(&l, "d", &[("host", "a.example.com")]).is_some());
    assert!(matched(&l, "d", &[("host", "example.com")]).is_none());
    assert!(matched(&l, "d", &[("host", "a.example.com.evil")]).is_none());
    assert!(matched(&l, "d", &[("path", "/users/7/orders/9")]).is_some());
    assert!(matched(&l, "d", &[("path", "/users/7/orders/")]).is_some());
    assert!(matched(&l, "d", &[("path", "/users/7/carts/9")]).is_none());
    assert!(matched(&l, "d", &[("any", "")]).is_some());
    assert!(matched(&l, "d", &[("any", "x")]).is_some());
}

#[test]
fn share_threshold_makes_all_wildcard_values_share_one_counter() {
    let l = cfg("
domain: d
descriptors:
  - key: files
    value: files/*
    share_threshold: true
    rate_limit: {unit: hour, requests_per_unit: 100}
  - key: pics
    value: pics/*
    rate_limit: {unit: hour, requests_per_unit: 100}
");
    let a = lookup(&l, "d", &[("files", "files/a.pdf")]);
    let b = lookup(&l, "d", &[("files", "files/b.csv")]);
    assert_eq!(a.1, b.1);
    let c = lookup(&l, "d", &[("pics", "pics/a")]);
    let d = lookup(&l, "d", &[("pics", "pics/b")]);
    assert_ne!(c.1, d.1);
}

#[test]
fn counter_keys_are_unambiguous() {
    let l = cfg("
domain: d
descriptors:
  - key: a
    descriptors:
      - key: b
        rate_limit: {unit: second, requests_per_unit: 1}
  - key: a|b
    rate_limit: {unit: second, requests_per_unit: 1}
");
    let (_, k1) = lookup(&l, "d", &[("a", "x|b=y"), ("b", "z")]);
    let (_, k2) = lookup(&l, "d", &[("a", "x"), ("b", "y|b=z")]);
    assert_ne!(k1, k2);
    let (_, k3) = lookup(&l, "d", &[("a|b", "{tag}")]);
    assert!(
        !k3.contains('{') && !k3.contains('}'),
        "no accidental Redis hash tag: {k3}"
    );
    let d = l.domain("d").unwrap();
    let mut key = KeyBuilder::new("d");
    let found = d.find(&Descriptor::new([("a", "x|b=y"), ("b", "z")]), &mut key);
    let full = found[0].counter_key(&key);
    assert_eq!(full.descriptor(), k1);
    assert!(full.as_str().contains(&k1) && full.as_str().len() > k1.len());
}

#[test]
fn each_limit_on_a_descriptor_has_its_own_counter() {
    let l = cfg("
domain: d
descriptors:
  - key: k
    rate_limits:
      - {unit: second, requests_per_unit: 5}
      - {unit: second, requests_per_unit: 5}
");
    let (names, _) = lookup(&l, "d", &[("k", "v")]);
    assert_eq!(names, ["k", "k#1"]);
    let d = l.domain("d").unwrap();
    let mut key = KeyBuilder::new("d");
    let found = d.find(&Descriptor::new([("k", "v")]), &mut key);
    let (k0, k1) = (found[0].counter_key(&key), found[1].counter_key(&key));
    let (k0, k1) = (k0.as_str(), k1.as_str());
    assert_ne!(k0, k1);
    // One Redis Cluster hash tag for both: the descriptor.
    let tag = |k: &str| k[k.find('{').unwrap()..=k.find('}').unwrap()].to_string();
    assert_eq!(tag(k0), "{rl|d|k=v}");
    assert_eq!(tag(k1), tag(k0));
}

#[test]
fn limits_outside_the_exact_counting_bounds_are_rejected() {
    let e = errors(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {window: 0.5ms, requests_per_unit: 1}\n",
    );
    assert_eq!(e[0].0, "descriptors[0].rate_limit.window");
    // A zero limit (a block list) is valid.
    cfg(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 0}\n",
    );
}

#[test]
fn units_are_case_insensitive_and_cover_week_month_year() {
    for (unit, secs, proto) in [
        ("SECOND", 1, Unit::Second),
        ("Minute", 60, Unit::Minute),
        ("hour", 3600, Unit::Hour),
        ("day", 86_400, Unit::Day),
        ("week", 604_800, Unit::Week),
        ("month", 2_592_000, Unit::Month),
        ("year", 31_536_000, Unit::Year),
    ] {
        let l = cfg(&format!(
            "domain: d\ndescriptors:\n  - key: k\n    rate_limit: {{unit: {unit}, requests_per_unit: 1}}\n"
        ));
        let r = limit(&l, "d", &[("k", "v")]);
        assert_eq!(
            (r.rule.window, r.unit),
            (Duration::from_secs(secs), Some(proto)),
            "{unit}"
        );
    }
}

#[test]
fn scalar_values_are_read_as_strings() {
    let l = cfg("
domain: d
descriptors:
  - key: code
    value: 50
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: flag
    value: true
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: 404
    rate_limit: {name: 7, unit: second, requests_per_unit: 1}
");
    assert!(matched(&l, "d", &[("code", "50")]).is_some());
    assert!(matched(&l, "d", &[("flag", "true")]).is_some());
    assert_eq!(matched(&l, "d", &[("404", "x")]).as_deref(), Some("7"));
}

#[test]
fn extensions_window_multiplier_algorithm_burst_and_several_limits() {
    let l = cfg("
domain: d
descriptors:
  - key: a
    rate_limit: {unit: second, unit_multiplier: 30, requests_per_unit: 10}
  - key: b
    rate_limit: {window: 90s, requests_per_unit: 10, algorithm: token_bucket, burst: 20}
  - key: c
    rate_limit: {name: burst, unit: second, requests_per_unit: 10, algorithm: gcra, burst: 5}
    rate_limits:
      - {name: sustained, unit: hour, requests_per_unit: 1000, algorithm: fixed_window}
");
    let a = limit(&l, "d", &[("a", "x")]);
    assert_eq!(
        (a.rule.window, a.unit, a.rule.algorithm),
        (Duration::from_secs(30), None, Algorithm::SlidingWindow)
    );
    let b = limit(&l, "d", &[("b", "x")]);
    assert_eq!(
        b.rule,
        Rule {
            algorithm: Algorithm::TokenBucket,
            limit: 10,
            window: Duration::from_secs(90),
            burst: Some(20),
            period: None,
        }
    );
    let (names, _) = lookup(&l, "d", &[("c", "x")]);
    assert_eq!(names, ["burst", "sustained"]);
    let with_default = Limits::parse("domain: d\ndescriptors:\n  - key: k\n    rate_limit: {unit: second, requests_per_unit: 1}\n", Algorithm::FixedWindow).unwrap();
    assert_eq!(
        limit(&with_default, "d", &[("k", "v")]).rule.algorithm,
        Algorithm::FixedWindow
    );
}

#[test]
fn invalid_configs_report_every_error_with_its_line() {
    let e = errors(
        "domain: d
descriptors:
  - key: a
    rate_limit: {unit: fortnight, requests_per_unit: 1}
  - value: x
  - key: b
    rate_limit: {unit: second, requests_per_unit: 1, burst: 3}
  - key: b
    rate_limit: {unit: second, requests_per_unit: 1}
  - key: c
    rate_limit: {unit: second, window: 1s, requests_per_unit: 1}
  - key: e
    rate_limit: {requests_per_unit: 1}
",
    );
    let got: Vec<_> = e
        .iter()
        .map(|(f, l, r)| (f.as_str(), *l, r.as_str()))
        .collect();
    assert_eq!(
        got,
        [
            (
                "descriptors[0].rate_limit.unit",
                Some(4),
                "invalid rate limit unit 'fortnight'"
            ),
            ("descriptors[1].key", Some(5), "descriptor has empty key"),
            (
                "descriptors[2].rate_limit.burst",
                Some(7),
                "applies only to the token_bucket and gcra algorithms"
            ),
            (
                "descriptors[3]",
                Some(8),
                "duplicate descriptor composite key 'd.b'"
            ),
            (
                "descriptors[4].rate_limit.window",
                Some(11),
                "give either `unit` or `window`, not both"
            ),
            (
                "descriptors[5].rate_limit.unit",
                Some(13),
                "invalid rate limit unit ''"
            ),
        ]
    );
    assert_eq!(
        errors("descriptors: []\n")[0].2,
        "config file cannot have empty domain"
    );
    let unknown = errors("domain: d\ndescriptors:\n  - key: a\n    rate_limt: {unit: second}\n");
    assert_eq!(unknown[0].0, "descriptors[0].rate_limt");
    assert_eq!(unknown[0].1, Some(4));
    assert!(
        unknown[0].2.contains("unknown field `rate_limt`"),
        "{}",
        unknown[0].2
    );
    let dup_nested = errors(
        "domain: d\ndescriptors:\n  - key: a\n    descriptors:\n      - key: b\n        value: '*'\n      - key: b\n        value: '*'\n",
    );
    assert_eq!(dup_nested[0].0, "descriptors[0].descriptors[1]");
    assert_eq!(
        errors("domain: d\ndescriptors: [\n")[0].2.split(':').next(),
        Some("invalid YAML")
    );
}

#[test]
fn glob_matching() {
    let m = |p: &str, v: &str| Glob::new(p).matches(v);
    assert!(m("a*", "a"));
    assert!(m("a*", "abc"));
    assert!(!m("a*", "ba"));
    assert!(m("*c", "abc"));
    assert!(m("a*c", "ac"));
    assert!(!m("a*c", "ab"));
    assert!(m("a*b*c", "aXbYc"));
    assert!(!m("a*b*c", "aXcYb"));
    assert!(!m("ab*ba", "aba"), "prefix and suffix must not overlap");
    assert!(m("**", ""));
}

#[test]
fn algorithm_errors_carry_their_line_in_block_and_flow_style() {
    let unknown = "unknown variant `bogus`, expected one of `sliding_window`, `fixed_window`, \
                   `token_bucket`, `gcra`";
    let flow = errors(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limits:\n      - {unit: second, requests_per_unit: 1, algorithm: bogus}\n",
    );
    assert_eq!(
        flow,
        [(
            "descriptors[0].rate_limits[0].algorithm".to_string(),
            Some(5),
            unknown.to_string()
        )]
    );
    let block = errors(
        "domain: d\ndescriptors:\n  - key: k\n    rate_limit:\n      unit: second\n      requests_per_unit: 1\n      algorithm: bogus\n",
    );
    assert_eq!(block[0].1, Some(7));
    // Bounds that depend on the algorithm: a burst on a window algorithm, and a meter whose
    // limit × window cannot be counted exactly.
    let e = errors(
        "domain: d
descriptors:
  - key: a
    rate_limit:
      unit: second
      requests_per_unit: 1
      algorithm: fixed_window
      burst: 3
  - key: b
    rate_limit:
      unit: year
      requests_per_unit: 4000000000
      algorithm: gcra
",
    );
    let got: Vec<_> = e.iter().map(|(f, l, _)| (f.as_str(), *l)).collect();
    assert_eq!(
        got,
        [
            ("descriptors[0].rate_limit.burst", Some(8)),
            ("descriptors[1].rate_limit.requests_per_unit", Some(12)),
        ]
    );
}

#[test]
fn calendar_periods_load_and_bad_ones_are_refused_with_their_field() {
    let l = Limits::parse(
        "domain: d
descriptors:
  - key: plan
    rate_limit: {unit: month, requests_per_unit: 1000000, calendar: true, time_zone: Europe/Berlin}
  - key: day
    rate_limit: {unit: DAY, requests_per_unit: 5, calendar: true}
",
        Algorithm::SlidingWindow,
    )
    .unwrap();
    let d = l.domain("d").unwrap();
    let month = &d.summary()[0];
    assert_eq!(month.algorithm, Some(Algorithm::FixedWindow));
    assert_eq!(month.period.as_deref(), Some("month@Europe/Berlin"));
    assert_eq!(d.summary()[1].period.as_deref(), Some("day@UTC"));
    let e = errors(
        "domain: d
descriptors:
  - key: a
    rate_limit: {unit: minute, requests_per_unit: 1, calendar: true}
  - key: b
    rate_limit: {unit: month, requests_per_unit: 1, calendar: true, time_zone: Mars/Olympus}
  - key: c
    rate_limit: {unit: day, requests_per_unit: 1, time_zone: UTC}
  - key: d
    rate_limit: {unit: day, requests_per_unit: 1, calendar: true, algorithm: gcra}
  - key: e
    rate_limit: {unit: day, unit_multiplier: 2, requests_per_unit: 1, calendar: true}
",
    );
    let got: Vec<_> = e.iter().map(|(f, l, _)| (f.as_str(), *l)).collect();
    assert_eq!(
        got,
        [
            ("descriptors[0].rate_limit.calendar", Some(4)),
            ("descriptors[1].rate_limit.time_zone", Some(6)),
            ("descriptors[2].rate_limit.time_zone", Some(8)),
            ("descriptors[3].rate_limit.algorithm", Some(10)),
            ("descriptors[4].rate_limit.calendar", Some(12)),
        ]
    );
    assert!(e[1].2.contains("unknown time zone 'Mars/Olympus'"), "{e:?}");
}

/// The calendar examples of docs/ratelimit.md load as written.
#[test]
fn the_calendar_examples_in_the_docs_load() {
    let doc = include_str!("../../../docs/ratelimit.md");
    let blocks: Vec<&str> = doc
        .split("```yaml\n")
        .skip(1)
        .filter_map(|b| b.split("```").next())
        .filter(|b| b.contains("calendar: true"))
        .collect();
    assert!(!blocks.is_empty());
    for b in blocks {
        let l = Limits::parse(b, Algorithm::SlidingWindow).unwrap_or_else(|e| panic!("{e}\n{b}"));
        assert!(
            l.domains()
                .any(|d| d.summary().iter().any(|s| s.period.is_some()))
        );
    }
}
