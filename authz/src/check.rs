//! The Check decision and the gRPC service Envoy's ext_authz filter calls.
//!
//! A decision: pick the policy rule (or the one `context_extensions` names) → if public, allow →
//! collect the credentials the rule's identity methods understand (two different ones is a
//! 400, see below) → the first method in the rule's order that finds its credential verifies it
//! → check the rule's conditions → allow with identity headers and dynamic metadata, or deny
//! with an RFC 6750 answer. The reason of a denial goes to metrics and logs, never to the client
//! beyond the RFC's error codes.
//!
//! Ambiguous credentials: a request carrying both a bearer token and an API key (or an API key
//! in both the header and the query) is answered 400 `invalid_request`, as RFC 6750 §3.1 asks
//! for "more than one method for including an access token": guessing which one the client meant
//! would let an attacker-controlled credential shadow the real one. A credential repeated in one
//! place (two `Authorization` or API key headers, which Envoy joins with `,`, or the query
//! parameter twice or in a percent-encoded spelling) is the same 400: RFC 6750 §3.1 "repeats
//! the same parameter".
//!
//! The policy matches the path an upstream acts on ([`path`]); the upstream is told exactly the
//! identity the decision used, or the credential is refused ([`forward`]).
//!
//! # Layout
//! - this file: the decision, the RFC 6750 answers and the gRPC adapter;
//! - `forward`: the identity headers;
//! - `path`: the path the policy matches.

mod forward;
mod path;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;
use tollgate_proto::auth::{
    Authorization, CheckRequest, CheckResponse, HttpResponse, HttpView, denied_response, header,
    ok_response,
};
use tollgate_proto::metadata;
use tollgate_proto::rpc_code;

use crate::apikey::{ApiKeyError, ApiKeys, UsageOutcome};
use crate::config::HeadersConfig;
use crate::identity::introspection::Introspector;
use crate::identity::jwt::JwtVerifier;
use crate::identity::{Identity, Method, Rejection};
use crate::metrics;
use crate::policy::{Policy, Unmet};
use forward::{Forwarded, HeaderPlan};

/// `context_extensions` keys a route may set in its ext_authz per-route config.
pub mod extensions {
    /// Use the named policy rule instead of matching.
    pub const RULE: &str = "tollgate.rule";
    /// Comma-separated identity methods, in order, replacing the rule's.
    pub const IDENTITY: &str = "tollgate.identity";
    /// Space-separated scopes required on top of the rule's conditions.
    pub const SCOPES: &str = "tollgate.scopes";
}

const REALM: &str = "tollgate";

/// Everything a decision needs; built once from the config. Only the policy can change while
/// the service runs ([`Authorizer::replace_policy`]).
pub struct Authorizer {
    /// Swapped whole by a reload; a Check takes the current one without a lock and keeps it
    /// for the whole decision, so a reload never mixes two policies in one answer.
    policy: ArcSwap<Policy>,
    jwt: Option<JwtVerifier>,
    introspection: Option<Introspector>,
    api_keys: Option<ApiKeys>,
    api_key_header: String,
    api_key_query: Option<String>,
    headers: HeaderPlan,
}

/// The outcome of a decision, for metrics.
struct Outcome {
    response: CheckResponse,
    decision: &'static str,
    method: &'static str,
    reason: &'static str,
}

/// A credential found in the request.
#[derive(Clone, Copy)]
enum Credential<'a> {
    Bearer(&'a str),
    /// The key, and whether it came from the query string.
    ApiKey(&'a str, bool),
}

impl Authorizer {
    pub fn new(
        policy: Policy,
        jwt: Option<JwtVerifier>,
        introspection: Option<Introspector>,
        api_keys: Option<(ApiKeys, String, Option<String>)>,
        headers: &HeadersConfig,
    ) -> Self {
        let (api_keys, api_key_header, api_key_query) = match api_keys {
            Some((k, h, q)) => (Some(k), h.to_ascii_lowercase(), q),
            None => (None, String::new(), None),
        };
        Self {
            policy: ArcSwap::from_pointee(policy),
            jwt,
            introspection,
            api_keys,
            api_key_header,
            api_key_query,
            headers: HeaderPlan::new(headers),
        }
    }

    /// Installs `policy` for every Check that starts from now on; those in flight finish on
    /// the policy they started with.
    pub fn replace_policy(&self, policy: Policy) {
        self.policy.store(Arc::new(policy));
    }

    /// The JWT verifier, when configured (for starting its key refreshers).
    pub fn jwt(&self) -> Option<&JwtVerifier> {
        self.jwt.as_ref()
    }

    /// Answers one Check.
    pub async fn check(&self, req: &CheckRequest) -> CheckResponse {
        let start = Instant::now();
        let out = self.decide(req).await;
        metrics::check(out.decision, out.method, out.reason, start.elapsed());
        tollgate_common::trace::record_outcome(out.decision, out.reason);
        // One line per denial at info, per decision at debug; Envoy's x-request-id joins them
        // to its access log. Never the credential, subject or key id.
        if out.decision == "deny" {
            tracing::info!(
                request_id = request_id(req),
                method = out.method,
                reason = out.reason,
                "denied"
            );
        } else if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(
                request_id = request_id(req),
                method = out.method,
                reason = out.reason,
                "allowed"
            );
        }
        out.response
    }

    async fn decide(&self, req: &CheckRequest) -> Outcome {
        let Some(view) = HttpView::of(req) else {
            return deny(Denial::Forbidden, "none", "no_http_attributes", None);
        };
        let ext = view.context_extensions;
        let Ok(path) = path::normalise(view.path) else {
            return deny(Denial::BadPath, "none", "dot_segment", None);
        };
        // An owned handle rather than a guard: the decision may await a key store or an
        // introspection call while the rule is borrowed.
        let policy = self.policy.load_full();
        let rule = match ext.get(extensions::RULE) {
            Some(name) => match policy.by_name(name) {
                Some(r) => r,
                None => {
                    tracing::warn!(rule = %name, "context_extensions names an unknown rule; denying");
                    return deny(Denial::Forbidden, "none", "unknown_rule", None);
                }
            },
            None => match policy.select(view.host, &path, view.method) {
                Some(r) => r,
                None => return deny(Denial::Forbidden, "none", "no_rule", None),
            },
        };
        if rule.public {
            let anon = Identity::new(Method::Anonymous, "");
            let forwarded = self
                .headers
                .forward(&anon)
                .expect("an anonymous identity has only its method to forward");
            return self.allow(&anon, forwarded, None, "public");
        }
        let methods: Cow<'_, [Method]> = match ext.get(extensions::IDENTITY) {
            Some(list) => match parse_methods(list) {
                Some(m) => Cow::Owned(m.into_iter().filter(|m| self.has(*m)).collect()),
                None => {
                    tracing::warn!(value = %list, "invalid tollgate.identity in context_extensions; denying");
                    return deny(Denial::Forbidden, "none", "bad_route_override", None);
                }
            },
            None => Cow::Borrowed(&rule.identity),
        };
        let wants_bearer = methods
            .iter()
            .any(|m| matches!(m, Method::Jwt | Method::Introspection));
        let wants_key = methods.contains(&Method::ApiKey);
        let challenge = if wants_bearer {
            Scheme::Bearer
        } else {
            Scheme::ApiKey
        };

        let bearer = if wants_bearer {
            match bearer_token(view.header("authorization")) {
                Ok(b) => b,
                Err(()) => {
                    return deny(
                        Denial::BadRequest(challenge),
                        "none",
                        "malformed_authorization",
                        None,
                    );
                }
            }
        } else {
            None
        };
        let api_key = if wants_key {
            match self.api_key(&view) {
                Ok(k) => k,
                Err(()) => {
                    return deny(
                        Denial::BadRequest(challenge),
                        "api_key",
                        "ambiguous_credentials",
                        None,
                    );
                }
            }
        } else {
            None
        };
        if bearer.is_some() && api_key.is_some() {
            return deny(
                Denial::BadRequest(challenge),
                "none",
                "ambiguous_credentials",
                None,
            );
        }

        // The first method, in the rule's order, that finds its credential decides.
        let mut chosen = None;
        for m in methods.iter() {
            let cred = match (m, bearer, api_key) {
                // With introspection also accepted, JWT takes only JWT-shaped tokens.
                (Method::Jwt, Some(t), _)
                    if JwtVerifier::looks_like_jwt(t)
                        || !methods.contains(&Method::Introspection) =>
                {
                    Some(Credential::Bearer(t))
                }
                (Method::Introspection, Some(t), _) => Some(Credential::Bearer(t)),
                (Method::ApiKey, _, Some((k, q))) => Some(Credential::ApiKey(k, q)),
                _ => None,
            };
            if let Some(c) = cred {
                chosen = Some((*m, c));
                break;
            }
        }
        let Some((method, cred)) = chosen else {
            return deny(
                Denial::Unauthenticated(challenge),
                "none",
                "no_credential",
                None,
            );
        };
        let identity: Result<Arc<Identity>, (Rejection, Scheme)> = match (method, cred) {
            (Method::Jwt, Credential::Bearer(t)) => match &self.jwt {
                Some(j) => j.verify(t).await.map_err(|r| (r, Scheme::Bearer)),
                None => Err((Rejection::Invalid("not_configured"), Scheme::Bearer)),
            },
            (Method::Introspection, Credential::Bearer(t)) => match &self.introspection {
                Some(i) => i.verify(t).await.map_err(|r| (r, Scheme::Bearer)),
                None => Err((Rejection::Invalid("not_configured"), Scheme::Bearer)),
            },
            (Method::ApiKey, Credential::ApiKey(k, _)) => match &self.api_keys {
                Some(keys) => keys
                    .verify(k)
                    .await
                    .map(Arc::new)
                    .map_err(|e| (api_key_rejection(&e), Scheme::ApiKey)),
                None => Err((Rejection::Invalid("not_configured"), Scheme::ApiKey)),
            },
            _ => Err((Rejection::Invalid("internal"), Scheme::Bearer)),
        };
        let identity = match identity {
            Ok(id) => id,
            Err((Rejection::Invalid(reason), scheme)) => {
                return deny(Denial::InvalidToken(scheme), method.as_str(), reason, None);
            }
            Err((Rejection::Unavailable(reason), _)) => {
                return deny(Denial::Unavailable, method.as_str(), reason, None);
            }
        };

        let scheme = if method == Method::ApiKey {
            Scheme::ApiKey
        } else {
            Scheme::Bearer
        };
        // Before the conditions: what they are evaluated on must be what the upstream is told.
        let forwarded = match self.headers.forward(&identity) {
            Ok(f) => f,
            Err(reason) => {
                return deny(Denial::InvalidToken(scheme), method.as_str(), reason, None);
            }
        };
        let extra: Vec<&str> = match ext.get(extensions::SCOPES) {
            Some(s) => s.split(' ').filter(|s| !s.is_empty()).collect(),
            None => Vec::new(),
        };
        if let Some(unmet) = rule.unmet(&identity, &extra) {
            self.count_usage(&identity, UsageOutcome::Denied);
            let (reason, scope) = match unmet {
                Unmet::Scope(s) => ("insufficient_scope", Some(s)),
                Unmet::Claim => ("claim_condition", None),
            };
            return deny(
                Denial::InsufficientScope(scheme),
                method.as_str(),
                reason,
                scope,
            );
        }
        self.count_usage(&identity, UsageOutcome::Allowed);
        self.allow(&identity, forwarded, Some(cred), "allowed")
    }

    /// Counts a decision on an API key caller in the key's usage (nothing for other callers).
    fn count_usage(&self, identity: &Identity, outcome: UsageOutcome) {
        if let Some(keys) = &self.api_keys {
            keys.record_usage(identity, outcome);
        }
    }

    /// The API key of the request: from the header or the query parameter, `Err` when it is
    /// there twice (both places, a repeated header, a repeated or re-spelled parameter).
    fn api_key<'a>(&self, view: &HttpView<'a>) -> Result<Option<(&'a str, bool)>, ()> {
        let h = view.header(&self.api_key_header).filter(|v| !v.is_empty());
        if h.is_some_and(|v| v.contains(',')) {
            // Envoy joins repeated headers with `,`, which no key contains.
            return Err(());
        }
        let q = match self.api_key_query.as_deref() {
            Some(p) => query_credential(view.query, p)?,
            None => None,
        };
        match (h, q) {
            (Some(_), Some(_)) => Err(()),
            (Some(h), None) => Ok(Some((h, false))),
            (None, Some(q)) => Ok(Some((q, true))),
            (None, None) => Ok(None),
        }
    }

    fn has(&self, m: Method) -> bool {
        match m {
            Method::Jwt => self.jwt.is_some(),
            Method::Introspection => self.introspection.is_some(),
            Method::ApiKey => self.api_keys.is_some(),
            Method::Anonymous => false,
        }
    }

    fn allow(
        &self,
        id: &Identity,
        forwarded: Forwarded,
        cred: Option<Credential<'_>>,
        reason: &'static str,
    ) -> Outcome {
        let Forwarded { set, mut remove } = forwarded;
        let anonymous = id.method == Method::Anonymous;
        let h = &self.headers;
        let mut remove_query = None;
        if h.remove_credential {
            match cred {
                Some(Credential::Bearer(_)) => remove.push("authorization".into()),
                Some(Credential::ApiKey(_, false)) => remove.push(self.api_key_header.clone()),
                Some(Credential::ApiKey(_, true)) => remove_query = self.api_key_query.clone(),
                None => {}
            }
        }
        let mut fields = Vec::with_capacity(6);
        fields.push(("method", metadata::string(id.method.as_str())));
        if !anonymous {
            fields.push(("subject", metadata::string(id.subject.clone())));
        }
        if let Some(k) = &id.key_id {
            fields.push(("key_id", metadata::string(k.clone())));
        }
        if let Some(t) = &id.tenant {
            fields.push(("tenant", metadata::string(t.clone())));
        }
        if let Some(p) = &id.plan {
            fields.push(("plan", metadata::string(p.clone())));
        }
        // The key's own limit, as Envoy's rate limit `limit` override reads it.
        if let (Some(l), Some(k)) = (&id.rate_limit, &id.key_id) {
            fields.push(("rate_limit", l.metadata(k)));
        }
        let mut response = ok_response(set, remove, Some(metadata::structure(fields)));
        if let (Some(param), Some(HttpResponse::OkResponse(ok))) =
            (remove_query, response.http_response.as_mut())
        {
            ok.query_parameters_to_remove.push(param);
        }
        Outcome {
            response,
            decision: "allow",
            method: id.method.as_str(),
            reason,
        }
    }
}

/// Envoy's `x-request-id` of the checked request ("" when absent), for log lines.
fn request_id(req: &CheckRequest) -> &str {
    req.attributes
        .as_ref()
        .and_then(|a| a.request.as_ref())
        .and_then(|r| r.http.as_ref())
        .and_then(|h| h.headers.get("x-request-id"))
        .map_or("", |v| sanitize_id(v))
}

/// A request id is client-controllable when Envoy trusts the client's: keep it short and
/// printable so it cannot forge log lines or carry a credential of any length.
fn sanitize_id(v: &str) -> &str {
    if v.len() <= 64 && v.bytes().all(|b| b.is_ascii_graphic()) {
        v
    } else {
        ""
    }
}

fn api_key_rejection(e: &ApiKeyError) -> Rejection {
    match e {
        ApiKeyError::Store(_) => {
            // Logged by the key store itself, at most once per interval.
            metrics::key_store_error();
            Rejection::Unavailable("key_store_error")
        }
        other => Rejection::Invalid(other.reason()),
    }
}

fn parse_methods(list: &str) -> Option<Vec<Method>> {
    list.split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(|s| match s {
            "jwt" => Some(Method::Jwt),
            "introspection" => Some(Method::Introspection),
            "api_key" => Some(Method::ApiKey),
            _ => None,
        })
        .collect()
}

/// The bearer token of an Authorization header: `Ok(None)` when absent or another scheme,
/// `Err` when it says Bearer but the token is not an RFC 6750 b64token (or is repeated).
#[allow(clippy::result_unit_err)]
pub fn bearer_token(h: Option<&str>) -> Result<Option<&str>, ()> {
    let Some(h) = h else { return Ok(None) };
    let h = h.trim_matches(' ');
    let (scheme, rest) = match h.split_once(' ') {
        Some(p) => p,
        None => {
            return if h.eq_ignore_ascii_case("bearer") {
                Err(())
            } else {
                Ok(None)
            };
        }
    };
    if !scheme.eq_ignore_ascii_case("bearer") {
        return Ok(None);
    }
    let token = rest.trim_start_matches(' ');
    let body = token.trim_end_matches('=');
    if body.is_empty()
        || !body
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b))
    {
        return Err(());
    }
    Ok(Some(token))
}

/// The value of credential parameter `name` in `query` (`None` when absent or empty), `Err`
/// when the parameter appears more than once or in a spelling that only decodes to `name`
/// (`api%5Fkey`): an upstream that decodes names would read a credential Tollgate did not check.
fn query_credential<'a>(query: &'a str, name: &str) -> Result<Option<&'a str>, ()> {
    let mut found = None;
    for pair in query.split('&') {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        let same = k == name || (k.contains('%') && decoded_eq(k, name));
        if !same {
            continue;
        }
        if found.is_some() || k != name {
            return Err(());
        }
        found = Some(v);
    }
    Ok(found.filter(|v| !v.is_empty()))
}

/// Whether `encoded`, percent-decoded, is `name`.
fn decoded_eq(encoded: &str, name: &str) -> bool {
    let b = encoded.as_bytes();
    let mut out = Vec::with_capacity(b.len());
    let mut i = 0;
    while i < b.len() {
        let hex = |j: usize| b.get(j).and_then(|c| (*c as char).to_digit(16));
        match (b[i], hex(i + 1), hex(i + 2)) {
            (b'%', Some(h), Some(l)) => {
                out.push((h * 16 + l) as u8);
                i += 3;
            }
            (c, _, _) => {
                out.push(c);
                i += 1;
            }
        }
    }
    out == name.as_bytes()
}

#[derive(Clone, Copy)]
enum Scheme {
    Bearer,
    ApiKey,
}

impl Scheme {
    fn name(self) -> &'static str {
        match self {
            Scheme::Bearer => "Bearer",
            Scheme::ApiKey => "ApiKey",
        }
    }
}

/// The RFC 6750 answers.
#[derive(Clone, Copy)]
enum Denial {
    /// No credential: 401 with a bare challenge (§3.1: no error code).
    Unauthenticated(Scheme),
    /// 400 invalid_request.
    BadRequest(Scheme),
    /// 401 invalid_token.
    InvalidToken(Scheme),
    /// 403 insufficient_scope.
    InsufficientScope(Scheme),
    /// 403: no rule allows this request.
    Forbidden,
    /// 400: a path that could resolve to another route (a dot segment in any spelling).
    BadPath,
    /// 503: the credential could not be checked now (issuer, introspection or key store down).
    Unavailable,
}

fn deny(d: Denial, method: &'static str, reason: &'static str, scope: Option<&str>) -> Outcome {
    let (status, rpc, error, scheme) = match d {
        Denial::Unauthenticated(s) => (401, rpc_code::UNAUTHENTICATED, None, Some(s)),
        Denial::BadRequest(s) => (
            400,
            rpc_code::INVALID_ARGUMENT,
            Some("invalid_request"),
            Some(s),
        ),
        Denial::InvalidToken(s) => (
            401,
            rpc_code::UNAUTHENTICATED,
            Some("invalid_token"),
            Some(s),
        ),
        Denial::InsufficientScope(s) => (
            403,
            rpc_code::PERMISSION_DENIED,
            Some("insufficient_scope"),
            Some(s),
        ),
        Denial::BadPath => (
            400,
            rpc_code::INVALID_ARGUMENT,
            Some("invalid_request"),
            None,
        ),
        Denial::Forbidden => (
            403,
            rpc_code::PERMISSION_DENIED,
            Some("access_denied"),
            None,
        ),
        Denial::Unavailable => (
            503,
            rpc_code::UNAVAILABLE,
            Some("temporarily_unavailable"),
            None,
        ),
    };
    let mut headers = Vec::with_capacity(3);
    if let Some(s) = scheme {
        let mut challenge = format!("{} realm=\"{REALM}\"", s.name());
        if let Some(e) = error {
            challenge.push_str(&format!(", error=\"{e}\""));
        }
        if let Some(sc) = scope {
            // Scopes are config values (validated: no spaces); quotes are dropped defensively.
            challenge.push_str(&format!(", scope=\"{}\"", sc.replace(['"', '\\'], "")));
        }
        headers.push(header("www-authenticate", challenge));
    }
    if status == 503 {
        headers.push(header("retry-after", "5"));
    }
    headers.push(header("content-type", "application/json"));
    headers.push(header("cache-control", "no-store"));
    let body = match error {
        Some(e) => format!("{{\"error\":\"{e}\"}}"),
        None => "{\"error\":\"unauthorized\"}".to_string(),
    };
    Outcome {
        response: denied_response(rpc, status, headers, body),
        decision: "deny",
        method,
        reason,
    }
}

/// The gRPC service.
#[derive(Clone)]
pub struct AuthzService {
    inner: Arc<Authorizer>,
}

impl AuthzService {
    pub fn new(inner: Arc<Authorizer>) -> Self {
        Self { inner }
    }
}

#[tonic::async_trait]
impl Authorization for AuthzService {
    async fn check(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        if !tollgate_common::trace::enabled() {
            let req = request.into_inner();
            return Ok(tonic::Response::new(self.inner.check(&req).await));
        }
        // Envoy's span for this call is in the gRPC metadata; without it, the client's trace
        // in the checked request's headers.
        let headers = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .map(|h| &h.headers);
        let span = tollgate_server::trace::server_span(
            "envoy.service.auth.v3.Authorization/Check",
            request.metadata(),
            |k| headers.and_then(|h| h.get(k)).map(String::as_str),
        );
        let req = request.into_inner();
        let answer = tracing::Instrument::instrument(self.inner.check(&req), span).await;
        Ok(tonic::Response::new(answer))
    }
}

#[cfg(test)]
mod tests;
