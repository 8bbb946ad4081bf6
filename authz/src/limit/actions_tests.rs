//! The descriptor builder, action by action, against Envoy's semantics.

use super::*;
use crate::check::OwnedRequest;

fn plans(yaml: &str) -> Descriptors {
    let list: Vec<RateLimitConfig> = serde_yaml::from_str(yaml).unwrap();
    let mut errors = Errors::default();
    validate(&list, "rate_limits", &mut errors);
    assert!(errors.finish(()).is_ok(), "invalid actions");
    Descriptors::compile(&list)
}

fn errors_of(yaml: &str) -> Vec<(String, String)> {
    let list: Vec<RateLimitConfig> = serde_yaml::from_str(yaml).unwrap();
    let mut errors = Errors::default();
    validate(&list, "rate_limits", &mut errors);
    match errors.finish(()) {
        Ok(()) => Vec::new(),
        Err(e) => e.0.into_iter().map(|e| (e.field, e.reason)).collect(),
    }
}

fn entries<'a>(d: &'a [Built<'_>]) -> Vec<Vec<(&'a str, &'a str)>> {
    d.iter()
        .map(|d| d.entries.iter().map(|(k, v)| (*k, &**v)).collect())
        .collect()
}

fn caller() -> Identity {
    let mut id = Identity::new(Method::Jwt, "alice");
    id.plan = Some("gold".into());
    id.tenant = Some("acme".into());
    id.claims = serde_json::json!({"org": {"id": 42}, "tags": ["a"]})
        .as_object()
        .unwrap()
        .clone();
    id
}

fn request() -> OwnedRequest {
    let mut r = OwnedRequest::new("POST", "/api/orders?page=2&tag=a%20b")
        .header("x-client", "mobile")
        .header("x-version", "v2-beta");
    r.source_address = Some("10.1.2.3".into());
    r
}

#[test]
fn generic_key_request_headers_and_remote_address_as_envoy_sends_them() {
    let p = plans(
        "
- actions:
  - generic_key: {descriptor_value: orders}
  - generic_key: {descriptor_key: route, descriptor_value: api}
- actions:
  - request_headers: {header_name: X-Client, descriptor_key: client}
  - request_headers: {header_name: ':method', descriptor_key: method}
  - request_headers: {header_name: ':path', descriptor_key: path}
  - request_headers: {header_name: ':authority', descriptor_key: host}
- actions:
  - remote_address: {}
",
    );
    let (r, id) = (request(), caller());
    let d = p.build(&r, &id);
    assert_eq!(
        entries(&d),
        vec![
            vec![("generic_key", "orders"), ("route", "api")],
            vec![
                ("client", "mobile"),
                ("method", "POST"),
                ("path", "/api/orders?page=2&tag=a%20b"),
                ("host", "api.example.com"),
            ],
            vec![("remote_address", "10.1.2.3")],
        ]
    );
}

#[test]
fn an_absent_value_drops_its_descriptor_unless_skip_if_absent() {
    let p = plans(
        "
- actions:
  - generic_key: {descriptor_value: x}
  - request_headers: {header_name: x-missing, descriptor_key: m}
- actions:
  - generic_key: {descriptor_value: y}
  - request_headers: {header_name: x-missing, descriptor_key: m, skip_if_absent: true}
- actions:
  - request_headers: {header_name: x-missing, descriptor_key: m, skip_if_absent: true}
- actions:
  - remote_address: {}
",
    );
    let mut r = request();
    r.source_address = None;
    assert_eq!(
        entries(&p.build(&r, &caller())),
        vec![vec![("generic_key", "y")]],
        "dropped; skipped; empty (not sent); no address (dropped)"
    );
}

#[test]
fn masked_remote_address_is_the_network_in_cidr_form() {
    let p = plans(
        "
- actions:
  - masked_remote_address: {v4_prefix_mask_len: 16, v6_prefix_mask_len: 64}
- actions:
  - masked_remote_address: {}
",
    );
    let (r, id) = (request(), caller());
    let d = p.build(&r, &id);
    assert_eq!(
        entries(&d),
        vec![
            vec![("masked_remote_address", "10.1.0.0/16")],
            vec![("masked_remote_address", "10.1.2.3/32")],
        ]
    );
    let mut r = request();
    r.source_address = Some("2001:db8:1:2:3:4:5:6".into());
    assert_eq!(
        entries(&p.build(&r, &caller()))[0],
        vec![("masked_remote_address", "2001:db8:1:2::/64")]
    );
}

#[test]
fn header_value_match_with_expect_match_and_invert() {
    let p = plans(
        "
- actions:
  - header_value_match:
      descriptor_value: beta
      headers: [{name: x-version, string_match: {suffix: '-BETA', ignore_case: true}}]
- actions:
  - header_value_match:
      descriptor_key: stable
      descriptor_value: 'yes'
      expect_match: false
      headers: [{name: x-version, contains_match: beta}]
- actions:
  - header_value_match:
      descriptor_value: no-debug
      headers: [{name: x-debug, present_match: true, invert_match: true}, {name: ':method', exact_match: POST}]
- actions:
  - header_value_match:
      descriptor_value: never
      headers: [{name: x-missing, exact_match: a, invert_match: true}]
",
    );
    assert_eq!(
        entries(&p.build(&request(), &caller())),
        vec![
            vec![("header_match", "beta")],
            vec![("header_match", "no-debug")],
        ],
        "matched; expect_match false and it matched: dropped; all matchers hold; \
         an absent header matches no value even inverted"
    );
}

#[test]
fn identity_from_metadata_actions_and_claims() {
    let p = plans(
        "
- actions:
  - metadata:
      descriptor_key: plan
      metadata_key: {key: envoy.filters.http.ext_authz, path: [{key: plan}]}
      default_value: anonymous
      source: DYNAMIC
  - dynamic_metadata:
      descriptor_key: subject
      metadata_key: {key: envoy.filters.http.ext_authz, path: [{key: subject}]}
      default_value: anonymous
- actions:
  - identity: {descriptor_key: org, claim: org.id}
  - identity: {descriptor_key: tenant, field: tenant}
  - identity: {descriptor_key: via, field: method}
  - identity: {descriptor_key: key, field: key_id, skip_if_absent: true}
",
    );
    assert_eq!(
        entries(&p.build(&request(), &caller())),
        vec![
            vec![("plan", "gold"), ("subject", "alice")],
            vec![("org", "42"), ("tenant", "acme"), ("via", "jwt")],
        ]
    );
    // An anonymous caller has no subject or plan: the defaults, as Envoy's metadata actions do.
    let anon = Identity::new(Method::Anonymous, "");
    assert_eq!(
        entries(&p.build(&request(), &anon)),
        vec![vec![("plan", "anonymous"), ("subject", "anonymous")]]
    );
}

#[test]
fn query_parameters_and_their_value_match() {
    let p = plans(
        "
- actions:
  - query_parameters: {query_parameter_name: tag, descriptor_key: tag}
  - query_parameters: {query_parameter_name: page, descriptor_key: page}
- actions:
  - query_parameters: {query_parameter_name: missing, descriptor_key: m}
- actions:
  - query_parameter_value_match:
      descriptor_value: page-two
      query_parameters: [{name: page, string_match: {exact: '2'}}, {name: debug, present_match: false}]
",
    );
    assert_eq!(
        entries(&p.build(&request(), &caller())),
        vec![
            vec![("tag", "a b"), ("page", "2")],
            vec![("query_match", "page-two")],
        ]
    );
}

#[test]
fn bad_actions_are_named_with_their_path() {
    let e = errors_of(
        "
- actions: []
- actions:
  - request_headers: {header_name: '', descriptor_key: k}
  - generic_key: {descriptor_key: '', descriptor_value: v}
  - masked_remote_address: {v4_prefix_mask_len: 33}
  - metadata:
      descriptor_key: plan
      metadata_key: {key: envoy.lb, path: [{key: plan}]}
  - metadata:
      descriptor_key: plan
      metadata_key: {key: envoy.filters.http.ext_authz, path: [{key: scopes}]}
  - identity: {descriptor_key: x, field: plan, claim: plan}
  - header_value_match: {descriptor_value: v, headers: [{name: a, exact_match: x, prefix_match: y}]}
",
    );
    let fields: Vec<&str> = e.iter().map(|(f, _)| f.as_str()).collect();
    assert_eq!(
        fields,
        vec![
            "rate_limits[0].actions",
            "rate_limits[1].actions[0].request_headers.header_name",
            "rate_limits[1].actions[1]",
            "rate_limits[1].actions[2].masked_remote_address.v4_prefix_mask_len",
            "rate_limits[1].actions[3].metadata.metadata_key.key",
            "rate_limits[1].actions[4].metadata.metadata_key.path",
            "rate_limits[1].actions[5].identity",
            "rate_limits[1].actions[6].header_value_match.headers",
        ],
        "{e:?}"
    );
    // An action Envoy has but a Check cannot see is refused by name.
    let r: Result<Vec<RateLimitConfig>, _> =
        serde_yaml::from_str("- actions: [{source_cluster: {}}]");
    assert!(r.unwrap_err().to_string().contains("source_cluster"));
}

/// Envoy's route form of a key's own limit, moved over as it is: (key_id, <id>) joins the
/// descriptor and the key's `rate_limit` becomes its override, only for a key that has one.
#[test]
fn a_keys_own_limit_becomes_the_descriptors_override() {
    let d = plans(
        "
- actions:
  - metadata:
      descriptor_key: plan
      metadata_key: { key: envoy.filters.http.ext_authz, path: [{ key: plan }] }
  - metadata:
      descriptor_key: key_id
      metadata_key: { key: envoy.filters.http.ext_authz, path: [{ key: key_limit }, { key: key_id }] }
      source: DYNAMIC
      skip_if_absent: true
  limit:
    dynamic_metadata:
      metadata_key: { key: envoy.filters.http.ext_authz, path: [{ key: key_limit }] }
",
    );
    let mut key = Identity::new(Method::ApiKey, "team-a");
    key.plan = Some("gold".into());
    key.key_id = Some("k1".into());
    let r = request();
    let plain = d.build(&r, &key);
    assert_eq!(entries(&plain), [vec![("plan", "gold")]]);
    assert_eq!(
        plain[0].limit, None,
        "no limit of its own: the plan's applies"
    );
    key.rate_limit = Some(crate::apikey::KeyLimit {
        requests_per_unit: 2,
        unit: crate::apikey::LimitUnit::Minute,
    });
    let own = d.build(&r, &key);
    assert_eq!(entries(&own), [vec![("plan", "gold"), ("key_id", "k1")]]);
    assert_eq!(
        own[0].limit,
        Some(LimitOverride {
            requests_per_unit: 2,
            unit: Some(Unit::Minute)
        })
    );
    let bad = errors_of(
        "
- actions: [{generic_key: {descriptor_value: x}}]
  limit:
    dynamic_metadata:
      metadata_key: { key: e2e.override, path: [{ key: limit }] }
",
    );
    assert_eq!(bad.len(), 1);
    assert_eq!(
        bad[0].0,
        "rate_limits[0].limit.dynamic_metadata.metadata_key"
    );
}
