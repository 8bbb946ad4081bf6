//! The encoded answer against the message it must decode as: [`response`] builds the
//! `CheckResponse` of a decision with prost's types (what the server sent before it wrote the
//! bytes itself), and every shape of decision is encoded both ways and compared decoded.

use std::sync::Arc;

use prost::Message;
use tollgate_proto::auth::{
    CheckResponse, DeniedHttpResponse, HttpResponse, OkHttpResponse, header, http_status_code,
};
use tollgate_proto::metadata;
use tollgate_proto::pb::envoy::r#type::v3::HttpStatus;
use tollgate_proto::pb::google::protobuf::{Struct, Value};
use tollgate_proto::pb::google::rpc;

use super::{Answer, status_code};
use crate::apikey::{KeyLimit, LimitUnit};
use crate::check::{Allow, Decision, Deny, LimitNote, MetadataValue};
use crate::identity::{Identity, Method};
use crate::reason::Reason;

/// The `CheckResponse` of a decision, built with prost's types.
fn response(decision: Decision) -> CheckResponse {
    let dynamic_metadata = dynamic_metadata(&decision);
    match decision {
        Decision::Allow(a) => allowed(a, dynamic_metadata),
        Decision::Deny(d) => denied(d, dynamic_metadata),
    }
}

fn allowed(a: Allow, dynamic_metadata: Option<Struct>) -> CheckResponse {
    let to_upstream = |(name, value): (Arc<str>, String)| header(name.to_string(), value);
    CheckResponse {
        status: Some(rpc::Status {
            code: 0,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: a.set_headers.into_iter().map(to_upstream).collect(),
            headers_to_remove: a.remove_headers.iter().map(|n| n.to_string()).collect(),
            query_parameters_to_remove: a.remove_query.iter().map(|q| q.to_string()).collect(),
            response_headers_to_add: a
                .response_headers
                .into_iter()
                .map(|(n, v)| header(n, v))
                .collect(),
            ..Default::default()
        })),
        dynamic_metadata,
    }
}

fn denied(d: Deny, dynamic_metadata: Option<Struct>) -> CheckResponse {
    let code = status_code(&Decision::Deny(d.clone()));
    CheckResponse {
        status: Some(rpc::Status {
            code,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: http_status_code(d.status),
            }),
            headers: d.headers.into_iter().map(|(n, v)| header(n, v)).collect(),
            body: d.body,
        })),
        dynamic_metadata,
    }
}

fn dynamic_metadata(d: &Decision) -> Option<Struct> {
    let fields = d.metadata();
    (!fields.is_empty())
        .then(|| metadata::structure(fields.into_iter().map(|(k, v)| (k, value(v)))))
}

fn value(v: MetadataValue<'_>) -> Value {
    match v {
        MetadataValue::String(s) => metadata::string(s),
        MetadataValue::Number(n) => metadata::number(n),
        MetadataValue::List(items) => metadata::string_list(items),
        MetadataValue::Struct(fields) => metadata::struct_value(metadata::structure(
            fields.into_iter().map(|(k, v)| (k, value(v))),
        )),
    }
}

fn limit_note(shadow: &[&str]) -> LimitNote {
    LimitNote {
        domain: "api".into(),
        limit: "per-plan".into(),
        remaining: 41,
        shadow_limits: shadow.iter().map(|s| Arc::from(*s)).collect(),
    }
}

fn decisions() -> Vec<Decision> {
    let long = "v".repeat(300); // lengths that need two varint bytes
    let mut key = Identity::new(Method::ApiKey, "team-a");
    key.key_id = Some("k_123".into());
    key.tenant = Some("acme".into());
    key.plan = Some("gold".into());
    key.rate_limit = Some(KeyLimit {
        requests_per_unit: 7,
        unit: LimitUnit::Minute,
    });
    let allow = |identity: Identity| Allow {
        identity: Arc::new(identity),
        rule: "api".into(),
        set_headers: Vec::new(),
        remove_headers: Vec::new(),
        remove_query: Vec::new(),
        response_headers: Vec::new(),
        rate_limit: None,
        reason: Reason::Allowed,
    };
    let deny = |status: u16| Deny {
        status,
        headers: Vec::new(),
        body: String::new(),
        method: None,
        rate_limit: None,
        reason: Reason::RateLimited,
    };
    vec![
        Decision::Allow(allow(Identity::new(Method::Anonymous, ""))),
        Decision::Allow(Allow {
            set_headers: vec![
                ("x-tollgate-subject".into(), "alice".into()),
                ("x-tollgate-empty".into(), String::new()),
                ("x-tollgate-long".into(), long.clone()),
            ],
            remove_headers: vec!["x-tollgate-plan".into(), "authorization".into()],
            remove_query: vec!["api_key".into()],
            response_headers: vec![
                ("ratelimit-policy", "\"per-plan\";q=100;w=60".into()),
                ("ratelimit", "\"per-plan\";r=41;t=12".into()),
            ],
            rate_limit: Some(limit_note(&["shadow-a", &long])),
            ..allow(key.clone())
        }),
        Decision::Allow(Allow {
            rate_limit: Some(limit_note(&[])),
            ..allow(Identity::new(Method::Jwt, long.clone()))
        }),
        Decision::Deny(deny(403)),
        Decision::Deny(Deny {
            headers: vec![
                ("www-authenticate", "Bearer error=\"invalid_token\"".into()),
                ("content-type", "application/json".into()),
            ],
            body: "{\"error\":\"unauthorized\"}".into(),
            method: Some(Method::Jwt),
            ..deny(401)
        }),
        Decision::Deny(Deny {
            headers: vec![("retry-after", "12".into())],
            body: long,
            rate_limit: Some(limit_note(&["shadow-a"])),
            ..deny(429)
        }),
        Decision::Deny(deny(400)),
        Decision::Deny(deny(503)),
    ]
}

#[test]
fn every_answer_decodes_as_the_response_prost_would_build() {
    for decision in decisions() {
        let answer = Answer::of(&decision);
        let decoded = CheckResponse::decode(answer.bytes()).unwrap();
        let expected = response(decision.clone());
        assert_eq!(decoded, expected, "{decision:?}");
        // Sizes agree too: the same fields are written, none twice.
        assert_eq!(answer.bytes().len(), expected.encoded_len(), "{decision:?}");
    }
}

#[test]
fn the_codec_writes_the_answer_bytes_as_they_are() {
    let decision = decisions().swap_remove(1);
    let answer = Answer::of(&decision);
    assert_eq!(answer.encode_to_vec(), answer.bytes());
    assert_eq!(answer.encoded_len(), answer.bytes().len());
}
