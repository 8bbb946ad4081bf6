//! The adapter between Envoy's request and tollgate-authz's decision: the request copied into
//! authz's [`OwnedRequest`] (a decision may finish on the background runtime, after the hook
//! that could read Envoy's header map has returned), and a [`Decision`] turned into a
//! [`Verdict`] that adds nothing of its own: the same headers, status, body and challenge as
//! the service's answer, the identity as dynamic metadata under ext_authz's namespace (so
//! access-log formats and route matchers that read it carry over).

use std::collections::BTreeMap;

use tollgate_authz::Decision;
use tollgate_authz::check::{MetadataValue as AuthzValue, OwnedRequest};

use crate::filter::{LocalReply, Metadata, MetadataValue, Mutations, Request, Verdict};
use crate::host::Counter;

/// Where the identity is filed, as Envoy's ext_authz filter files a Check's metadata.
const NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// The request as the decision reads it. Header values that are not UTF-8 are read lossily:
/// a credential never has such bytes, and a condition on such a header sees what it can.
pub(crate) fn owned_request(request: &dyn Request) -> OwnedRequest {
    let (path, query) = request
        .path()
        .map_or(("", ""), |p| p.split_once('?').unwrap_or((p, "")));
    OwnedRequest {
        method: request.method().unwrap_or_default().to_string(),
        host: request.host().unwrap_or_default().to_string(),
        path: path.to_string(),
        query: query.to_string(),
        headers: request
            .headers()
            .into_iter()
            .map(|(name, value)| {
                (
                    String::from_utf8_lossy(name).to_ascii_lowercase(),
                    String::from_utf8_lossy(value).into_owned(),
                )
            })
            .collect(),
        rule: request.route_rule().map(str::to_string),
        identity: request.route_identity().map(str::to_string),
        scopes: request.route_scopes().map(str::to_string),
        source_address: request
            .source_address()
            .map(|a| address_without_port(a).to_string()),
        ..OwnedRequest::default()
    }
}

/// `1.2.3.4:5` → `1.2.3.4`, `[::1]:5` → `::1`; anything else as it is.
fn address_without_port(address: &str) -> &str {
    if let Some(rest) = address.strip_prefix('[') {
        return rest.split(']').next().unwrap_or(rest);
    }
    match address.rsplit_once(':') {
        Some((ip, port)) if !ip.contains(':') && port.bytes().all(|b| b.is_ascii_digit()) => ip,
        _ => address,
    }
}

/// The verdict the client and the upstream see for `decision` on `request`.
pub(crate) fn from_decision(decision: Decision, request: &OwnedRequest) -> Verdict {
    let reason = decision.reason().as_str();
    let metadata = metadata(&decision);
    match decision {
        Decision::Allow(a) => {
            let mut set_headers: Vec<(String, String)> = a
                .set_headers
                .iter()
                .map(|(k, v)| (k.to_string(), v.clone()))
                .collect();
            if !a.remove_query.is_empty() {
                let query = without_params(&request.query, &a.remove_query);
                let path = match query.is_empty() {
                    true => request.path.clone(),
                    false => format!("{}?{query}", request.path),
                };
                set_headers.push((":path".into(), path));
            }
            let mut counts = vec![(Counter::Decisions, reason)];
            if a.rate_limit.is_some() {
                counts.push((Counter::RateLimit, "ok"));
            }
            Verdict::Continue(Mutations {
                remove_headers: a.remove_headers.iter().map(|h| h.to_string()).collect(),
                set_headers,
                add_headers: Vec::new(),
                response_headers: lower(a.response_headers),
                metadata,
                counts,
            })
        }
        Decision::Deny(d) => Verdict::Respond(LocalReply {
            status: d.status,
            headers: lower(d.headers),
            body: d.body,
            details: match d.status {
                429 => "tollgate_rate_limited",
                503 => "tollgate_unavailable",
                _ => "tollgate_denied",
            },
        }),
    }
}

fn lower(headers: Vec<(&'static str, String)>) -> Vec<(String, String)> {
    headers
        .into_iter()
        .map(|(k, v)| (k.to_ascii_lowercase(), v))
        .collect()
}

/// `query` without the parameters named `names` (compared as sent, before decoding).
fn without_params(query: &str, names: &[std::sync::Arc<str>]) -> String {
    query
        .split('&')
        .filter(|pair| {
            let name = pair.split_once('=').map_or(*pair, |(n, _)| n);
            !pair.is_empty() && !names.iter().any(|r| **r == *name)
        })
        .collect::<Vec<_>>()
        .join("&")
}

fn metadata(decision: &Decision) -> Vec<Metadata> {
    decision
        .metadata()
        .into_iter()
        .map(|(key, value)| Metadata {
            namespace: NAMESPACE.into(),
            key: key.into(),
            value: convert(&value),
        })
        .collect()
}

fn convert(value: &AuthzValue<'_>) -> MetadataValue {
    match value {
        AuthzValue::String(s) => MetadataValue::String((*s).to_string()),
        AuthzValue::Number(n) => MetadataValue::Number(*n),
        AuthzValue::List(items) => MetadataValue::List(
            items
                .iter()
                .map(|s| MetadataValue::String((*s).to_string()))
                .collect(),
        ),
        AuthzValue::Struct(fields) => MetadataValue::Struct(
            fields
                .iter()
                .map(|(k, v)| ((*k).to_string(), convert(v)))
                .collect::<BTreeMap<_, _>>(),
        ),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::filter::testing::FakeRequest;

    #[test]
    fn the_request_is_copied_with_its_query_headers_rule_and_bare_address() {
        let mut req = FakeRequest::get("/orders/7?page=2&key=k")
            .with("authorization", "Bearer t")
            .with("x-multi", "a")
            .with("x-multi", "b");
        req.rule = Some("orders".into());
        req.source = Some("10.0.0.7:51234".into());
        let owned = owned_request(&req);
        assert_eq!(owned.path, "/orders/7");
        assert_eq!(owned.query, "page=2&key=k");
        assert_eq!(owned.method, "GET");
        assert_eq!(owned.host, "example.test");
        assert_eq!(owned.rule.as_deref(), Some("orders"));
        assert_eq!(owned.source_address.as_deref(), Some("10.0.0.7"));
        assert_eq!(owned.headers.len(), 3);
        use tollgate_authz::RequestView;
        assert!(owned.header_repeated("x-multi"));
        assert_eq!(
            RequestView::header(&owned, "authorization"),
            Some("Bearer t")
        );
    }

    #[test]
    fn ports_are_stripped_from_v4_and_v6_addresses() {
        assert_eq!(address_without_port("1.2.3.4:5"), "1.2.3.4");
        assert_eq!(address_without_port("[::1]:443"), "::1");
        assert_eq!(address_without_port("::1"), "::1");
        assert_eq!(address_without_port("host"), "host");
    }

    #[test]
    fn removed_query_parameters_leave_the_others_in_order() {
        let names = ["api_key".into()];
        assert_eq!(without_params("a=1&api_key=s&b=2", &names), "a=1&b=2");
        assert_eq!(without_params("api_key=s", &names), "");
        assert_eq!(without_params("api_keyx=1&flag", &names), "api_keyx=1&flag");
    }
}
