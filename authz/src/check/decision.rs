//! The answer to one Check as plain data: what the upstream request gets (identity headers set
//! and removed, query parameters removed), what the client's response gets, what the proxy
//! files as dynamic metadata; or the denial the client sees. Adapters turn it into their own
//! protocol and add nothing of their own.

use std::sync::Arc;

use crate::identity::{Identity, Method};
use crate::reason::Reason;

/// The answer to one Check.
#[derive(Debug, Clone)]
pub enum Decision {
    Allow(Allow),
    Deny(Deny),
}

/// An allowed request.
#[derive(Debug, Clone)]
pub struct Allow {
    /// Who the caller is (an anonymous identity on public and disabled routes).
    pub identity: Arc<Identity>,
    /// The policy rule that allowed it (`no_match` for the no-match rule, empty on a route
    /// that switched the checks off).
    pub rule: Arc<str>,
    /// Headers to set on the upstream request, replacing any the client sent.
    pub set_headers: Vec<(Arc<str>, String)>,
    /// Headers to remove from the upstream request: identity headers this identity has no
    /// value for, and the credential when `headers.remove_credential` asks.
    pub remove_headers: Vec<Arc<str>>,
    /// Query parameters to remove from the upstream request (the API key, when it came in
    /// the query and `headers.remove_credential` asks).
    pub remove_query: Vec<Arc<str>>,
    /// Headers for the client's response (rate-limit headers in single-call mode).
    pub response_headers: Vec<(&'static str, String)>,
    /// The limit that applied, in single-call mode.
    pub rate_limit: Option<LimitNote>,
    pub reason: Reason,
}

/// A denied request: what the client is answered.
#[derive(Debug, Clone)]
pub struct Deny {
    pub status: u16,
    /// Response headers: the RFC 6750 challenge, `Retry-After`, rate-limit headers, the body's
    /// content type.
    pub headers: Vec<(&'static str, String)>,
    pub body: String,
    /// The identity method that was tried, when one was.
    pub method: Option<Method>,
    /// The limit that denied (429 in single-call mode).
    pub rate_limit: Option<LimitNote>,
    pub reason: Reason,
}

/// A rate limit named in the dynamic metadata: the one that denied, or the tightest one that
/// applied (least remaining).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LimitNote {
    pub domain: Arc<str>,
    pub limit: Arc<str>,
    pub remaining: u64,
    /// Shadow-mode limits that would have denied.
    pub shadow_limits: Vec<Arc<str>>,
}

/// A value in the dynamic metadata.
#[derive(Debug, Clone, PartialEq)]
pub enum MetadataValue<'a> {
    String(&'a str),
    Number(f64),
    List(Vec<&'a str>),
    Struct(Vec<(&'static str, MetadataValue<'a>)>),
}

/// The metadata field names (Envoy files them under `envoy.filters.http.ext_authz`).
pub mod metadata_keys {
    pub const METHOD: &str = "method";
    pub const SUBJECT: &str = "subject";
    pub const KEY_ID: &str = "key_id";
    pub const TENANT: &str = "tenant";
    pub const PLAN: &str = "plan";
    /// A struct: `domain`, `limit`, `remaining`, `shadow_limits`.
    pub const RATE_LIMIT: &str = "rate_limit";
    /// An API key's own limit: `requests_per_unit`, `unit`, `key_id`, the shape of Envoy's
    /// descriptor `limit` override.
    pub const KEY_LIMIT: &str = "key_limit";
}

impl Decision {
    pub fn is_allowed(&self) -> bool {
        matches!(self, Decision::Allow(_))
    }

    pub fn reason(&self) -> Reason {
        match self {
            Decision::Allow(a) => a.reason,
            Decision::Deny(d) => d.reason,
        }
    }

    /// The identity method, for metrics and logs (`None` before one was chosen).
    pub fn method(&self) -> Option<Method> {
        match self {
            Decision::Allow(a) => Some(a.identity.method),
            Decision::Deny(d) => d.method,
        }
    }

    /// The dynamic metadata: the identity on an allowed request (method, subject, key id,
    /// tenant, plan) and the rate limit that applied or denied.
    pub fn metadata(&self) -> Vec<(&'static str, MetadataValue<'_>)> {
        let mut out = Vec::new();
        let note = match self {
            Decision::Allow(a) => {
                identity_metadata(&a.identity, &mut out);
                a.rate_limit.as_ref()
            }
            Decision::Deny(d) => d.rate_limit.as_ref(),
        };
        if let Some(n) = note {
            out.push((metadata_keys::RATE_LIMIT, n.metadata()));
        }
        out
    }
}

fn identity_metadata<'a>(id: &'a Identity, out: &mut Vec<(&'static str, MetadataValue<'a>)>) {
    use MetadataValue::String as S;
    out.push((metadata_keys::METHOD, S(id.method.as_str())));
    if id.method != Method::Anonymous {
        out.push((metadata_keys::SUBJECT, S(&id.subject)));
    }
    for (key, value) in [
        (metadata_keys::KEY_ID, &id.key_id),
        (metadata_keys::TENANT, &id.tenant),
        (metadata_keys::PLAN, &id.plan),
    ] {
        if let Some(v) = value {
            out.push((key, S(v)));
        }
    }
    if let (Some(limit), Some(key_id)) = (&id.rate_limit, &id.key_id) {
        out.push((
            metadata_keys::KEY_LIMIT,
            MetadataValue::Struct(vec![
                (
                    "requests_per_unit",
                    MetadataValue::Number(f64::from(limit.requests_per_unit)),
                ),
                ("unit", S(limit.unit.envoy_name())),
                ("key_id", S(key_id)),
            ]),
        ));
    }
}

impl LimitNote {
    fn metadata(&self) -> MetadataValue<'_> {
        let mut fields = vec![
            ("domain", MetadataValue::String(&self.domain)),
            ("limit", MetadataValue::String(&self.limit)),
            ("remaining", MetadataValue::Number(self.remaining as f64)),
        ];
        if !self.shadow_limits.is_empty() {
            fields.push((
                "shadow_limits",
                MetadataValue::List(self.shadow_limits.iter().map(|s| &**s).collect()),
            ));
        }
        MetadataValue::Struct(fields)
    }
}
