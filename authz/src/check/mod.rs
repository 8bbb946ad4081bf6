//! The Check decision, whatever protocol asks for it: a [`RequestView`] in, a [`Decision`] out,
//! with the same metrics and log lines for every adapter (gRPC Check, HTTP ext_authz, an Envoy
//! dynamic module).
//!
//! A decision: pick the policy rule (or the one the route names) → if public, allow → find the
//! credentials the rule's identity methods understand (two different ones is a 400, see
//! `credential`) → the first method in the rule's order that finds its credential verifies it
//! → check the rule's conditions → allow with identity headers and dynamic metadata, or deny
//! with an RFC 6750 answer → in single-call mode, an allowed request is rate limited by its
//! rule's descriptors (`crate::limit`): 429 over the limit. The reason of a denial goes to metrics and logs, never to the client
//! beyond the RFC's error codes.
//!
//! The policy matches the path an upstream acts on (`path`); the upstream is told exactly the
//! identity the decision used, or the credential is refused (`forward`).
//!
//! # Layout
//! - this file: the decision flow ([`Authorizer`]), its metrics and log lines;
//! - [`request`]: the request as a decision reads it ([`RequestView`], [`RouteSettings`]);
//! - `decision`: the answer ([`Decision`], [`Allow`], [`Deny`]);
//! - `credential`: where credentials are found, and when there are too many;
//! - `rfc6750`: the denials a client sees;
//! - `forward`: the identity headers;
//! - `path`: the path the policy matches.

mod credential;
mod decision;
mod forward;
mod path;
pub mod request;
mod rfc6750;

use std::borrow::Cow;
use std::sync::Arc;
use std::time::Instant;

use arc_swap::ArcSwap;

use crate::apikey::{ApiKeyError, ApiKeys, UsageOutcome};
use crate::config::HeadersConfig;
use crate::identity::introspection::Introspector;
use crate::identity::jwt::JwtVerifier;
use crate::identity::mtls::MtlsVerifier;
use crate::identity::{Identity, Method, Rejection};
use crate::limit::Embedded;
use crate::metrics::{self, CheckMetrics};
use crate::policy::cel::Facts;
use crate::policy::{self, Policy, Rule, Unmet};
use crate::reason::Reason;
use credential::{Credential, Location, Refusal, Sources};
use forward::{Forwarded, HeaderPlan};
use rfc6750::{Denial, Scheme};

pub use credential::{BearerSources, bearer_token};
pub use decision::{Allow, Decision, Deny, LimitNote, MetadataValue, metadata_keys};
pub use request::{OwnedRequest, PeerCertificate, RequestView, RouteSettings, extensions};

/// Everything a decision needs; built once from the config. Only the policy can change while
/// the service runs ([`Authorizer::replace_policy`]).
pub struct Authorizer {
    /// Swapped whole by a reload; a Check takes the current one without a lock and keeps it
    /// for the whole decision, so a reload never mixes two policies in one answer.
    policy: ArcSwap<Policy>,
    jwt: Option<JwtVerifier>,
    introspection: Option<Introspector>,
    api_keys: Option<ApiKeys>,
    mtls: Option<MtlsVerifier>,
    sources: Sources,
    /// The time CEL conditions see (`request.time`).
    clock: Arc<dyn tollgate_common::clock::Clock>,
    headers: HeaderPlan,
    /// The caller of public and disabled routes.
    anonymous: Arc<Identity>,
    /// Single-call mode: the rate-limit engine every allowed request is checked against.
    rate_limit: Option<Embedded>,
    metrics: CheckMetrics,
}

impl std::fmt::Debug for Authorizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Authorizer")
            .field("jwt", &self.jwt.is_some())
            .field("introspection", &self.introspection.is_some())
            .field("api_keys", &self.api_keys.is_some())
            .finish_non_exhaustive()
    }
}

/// Where API keys are read from: the header, and the query parameter and cookie when allowed.
#[derive(Debug, Clone)]
pub struct ApiKeySource {
    pub header: String,
    pub query_param: Option<String>,
    pub cookie: Option<String>,
}

impl Authorizer {
    pub fn new(
        policy: Policy,
        jwt: Option<JwtVerifier>,
        introspection: Option<Introspector>,
        api_keys: Option<(ApiKeys, ApiKeySource)>,
        headers: &HeadersConfig,
    ) -> Self {
        let (api_keys, sources) = match api_keys {
            Some((k, s)) => (
                Some(k),
                Sources::new(
                    Some(&s.header),
                    s.query_param.as_deref(),
                    s.cookie.as_deref(),
                    &BearerSources::default(),
                ),
            ),
            None => (
                None,
                Sources::new(None, None, None, &BearerSources::default()),
            ),
        };
        Self {
            policy: ArcSwap::from_pointee(policy),
            jwt,
            introspection,
            api_keys,
            mtls: None,
            sources,
            clock: Arc::new(tollgate_common::clock::SystemClock),
            headers: HeaderPlan::new(headers),
            anonymous: Arc::new(Identity::new(Method::Anonymous, "")),
            rate_limit: None,
            metrics: CheckMetrics::new(),
        }
    }

    /// Rate-limits every allowed request too (single-call mode).
    pub fn with_rate_limit(mut self, rate_limit: Embedded) -> Self {
        self.rate_limit = Some(rate_limit);
        self
    }

    /// The embedded rate limiter, in single-call mode.
    pub fn rate_limit(&self) -> Option<&Embedded> {
        self.rate_limit.as_ref()
    }

    /// With bearer tokens read from `bearer` (default: `Authorization: Bearer` only) and
    /// client certificates verified by `mtls`.
    pub fn with_credentials(mut self, bearer: &BearerSources, mtls: Option<MtlsVerifier>) -> Self {
        self.sources.set_bearer(bearer);
        self.mtls = mtls;
        self
    }

    /// With conditions reading the time from `clock`.
    pub fn with_clock(mut self, clock: Arc<dyn tollgate_common::clock::Clock>) -> Self {
        self.clock = clock;
        self
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

    /// Decides one request, and records it (metrics, trace attributes, log line).
    pub async fn check(&self, req: &dyn RequestView) -> Decision {
        let start = Instant::now();
        let decision = self.decide(req).await;
        self.report(&decision, req.request_id(), start);
        decision
    }

    /// The answer to a check that carried no HTTP request at all, recorded like any other.
    pub fn refuse_unreadable(&self) -> Decision {
        let start = Instant::now();
        let d = Decision::Deny(Denial::Forbidden.answer(None, Reason::NoHttpAttributes));
        self.report(&d, "", start);
        d
    }

    fn report(&self, d: &Decision, request_id: &str, start: Instant) {
        let (decision, label) = if d.is_allowed() {
            (0, "allow")
        } else {
            (1, "deny")
        };
        let method = d.method();
        let reason = d.reason();
        self.metrics.record(
            decision,
            metrics::method_index(method),
            reason,
            start.elapsed(),
        );
        tollgate_common::trace::record_outcome(label, reason.as_str());
        let method = method.map_or("none", Method::as_str);
        // One line per denial at info, per decision at debug; the proxy's request id joins
        // them to its access log. Never the credential, subject or key id.
        let request_id = sanitize_id(request_id);
        if !d.is_allowed() {
            tracing::info!(request_id, method, reason = reason.as_str(), "denied");
        } else if tracing::enabled!(tracing::Level::DEBUG) {
            tracing::debug!(request_id, method, reason = reason.as_str(), "allowed");
        }
    }

    async fn decide(&self, req: &dyn RequestView) -> Decision {
        let route = req.route();
        if route.disabled {
            return self.allow_anonymous("".into(), Reason::RouteDisabled);
        }
        let Ok(path) = path::normalise(req.path()) else {
            return deny(Denial::BadPath, None, Reason::DotSegment);
        };
        // An owned handle rather than a guard: the decision may await a key store or an
        // introspection call while the rule is borrowed.
        let policy = self.policy.load_full();
        let rule = match select(&policy, req, &route, &path) {
            Ok(rule) => rule,
            Err(reason) => return deny(Denial::Forbidden, None, reason),
        };
        let decision = if rule.public {
            self.allow_anonymous(rule.name.clone(), Reason::Public)
        } else {
            self.authenticate(req, &route, rule, &path).await
        };
        let Decision::Allow(allow) = decision else {
            return decision;
        };
        let Some(limiter) = &self.rate_limit else {
            self.count_usage(&allow.identity, UsageOutcome::Allowed);
            return Decision::Allow(allow);
        };
        let identity = allow.identity.clone();
        let decision = limiter.apply(allow, policy.rate_limits(rule), req).await;
        let outcome = match decision.reason() {
            _ if decision.is_allowed() => UsageOutcome::Allowed,
            Reason::RateLimited => UsageOutcome::RateLimited,
            _ => UsageOutcome::Denied,
        };
        self.count_usage(&identity, outcome);
        decision
    }

    /// Counts a decision on an API-key caller in the key's usage (nothing for other callers).
    fn count_usage(&self, identity: &Identity, outcome: UsageOutcome) {
        if let Some(keys) = &self.api_keys {
            keys.record_usage(identity, outcome);
        }
    }

    /// The decision on a rule that needs a credential.
    async fn authenticate(
        &self,
        req: &dyn RequestView,
        route: &RouteSettings<'_>,
        rule: &Rule,
        path: &str,
    ) -> Decision {
        let Some(methods) = self.methods(rule, route) else {
            return deny(Denial::Forbidden, None, Reason::BadRouteOverride);
        };
        let challenge = if methods
            .iter()
            .any(|m| matches!(m, Method::Jwt | Method::Introspection))
        {
            Scheme::Bearer
        } else if methods.contains(&Method::ApiKey) {
            Scheme::ApiKey
        } else {
            Scheme::Certificate
        };
        let found = match self.sources.find(req, &methods) {
            Ok(f) => f,
            Err(Refusal::MalformedAuthorization) => {
                return deny(
                    Denial::BadRequest(challenge),
                    None,
                    Reason::MalformedAuthorization,
                );
            }
            Err(Refusal::Ambiguous) => {
                return deny(
                    Denial::BadRequest(challenge),
                    None,
                    Reason::AmbiguousCredentials,
                );
            }
        };
        let Some((method, credential)) = found.choose(&methods) else {
            return deny(
                Denial::Unauthenticated(challenge),
                None,
                Reason::NoCredential,
            );
        };
        let identity = match self.verify(method, credential).await {
            Ok(id) => id,
            Err(Rejection::Invalid(r)) => {
                return deny(Denial::InvalidToken(Scheme::of(method)), Some(method), r);
            }
            Err(Rejection::Unavailable(r)) => return deny(Denial::Unavailable, Some(method), r),
        };
        if !self
            .sources
            .accepts(&found, method, identity.issuer.as_deref())
        {
            return deny(
                Denial::InvalidToken(Scheme::of(method)),
                Some(method),
                Reason::TokenSource,
            );
        }
        let location = self.sources.location(&found, credential);
        let facts = Facts {
            method: req.method(),
            host: policy::bare_host(req.host()),
            path,
            query: req.query(),
            source: req.source_address(),
            now: self.clock.now(),
            headers: &|name| req.header(name),
        };
        self.authorize(identity, rule, route, location, &facts)
    }

    /// The identity methods of this request: the route's override (only configured ones),
    /// else the rule's; `None` for an override that is not a list of methods.
    fn methods<'r>(&self, rule: &'r Rule, route: &RouteSettings<'_>) -> Option<Cow<'r, [Method]>> {
        let Some(list) = route.identity else {
            return Some(Cow::Borrowed(&rule.identity));
        };
        match parse_methods(list) {
            Some(m) => Some(Cow::Owned(m.into_iter().filter(|m| self.has(*m)).collect())),
            None => {
                tracing::warn!(value = %list, "invalid identity methods in the route's settings; denying");
                None
            }
        }
    }

    async fn verify(
        &self,
        method: Method,
        credential: Credential<'_>,
    ) -> Result<Arc<Identity>, Rejection> {
        let not_configured = Rejection::Invalid(Reason::NotConfigured);
        match (method, credential) {
            (Method::Jwt, Credential::Bearer(t)) => match &self.jwt {
                Some(j) => j.verify(t).await,
                None => Err(not_configured),
            },
            (Method::Introspection, Credential::Bearer(t)) => match &self.introspection {
                Some(i) => i.verify(t).await,
                None => Err(not_configured),
            },
            (Method::ApiKey, Credential::ApiKey(k)) => match &self.api_keys {
                Some(keys) => keys.verify(k).await.map_err(|e| api_key_rejection(&e)),
                None => Err(not_configured),
            },
            (Method::Mtls, Credential::Certificate(c)) => match (&self.mtls, c.pem) {
                (Some(m), Some(pem)) => m.verify(c.principal, pem).map(Arc::new),
                (Some(_), None) => {
                    tracing::warn!(
                        "the proxy names a client certificate but does not forward it (Envoy: include_peer_certificate); denying"
                    );
                    Err(Rejection::Invalid(Reason::CertificateNotForwarded))
                }
                (None, _) => Err(not_configured),
            },
            _ => Err(Rejection::Invalid(Reason::Internal)),
        }
    }

    /// The verified identity against the rule: its headers must be forwardable as they are,
    /// and it must meet the rule's conditions and the route's extra scopes.
    fn authorize(
        &self,
        identity: Arc<Identity>,
        rule: &Rule,
        route: &RouteSettings<'_>,
        location: Location,
        facts: &Facts<'_>,
    ) -> Decision {
        let method = identity.method;
        let scheme = Scheme::of(method);
        // Before the conditions: what they are evaluated on must be what the upstream is told.
        let forwarded = match self.headers.forward(&identity) {
            Ok(f) => f,
            Err(reason) => return deny(Denial::InvalidToken(scheme), Some(method), reason),
        };
        let extra: Vec<&str> = match route.scopes {
            Some(s) => s.split(' ').filter(|s| !s.is_empty()).collect(),
            None => Vec::new(),
        };
        if let Some(unmet) = rule.unmet(&identity, &extra, facts) {
            self.count_usage(&identity, UsageOutcome::Denied);
            let (reason, scope) = match unmet {
                Unmet::Scope(s) => (Reason::InsufficientScope, Some(s)),
                Unmet::Claim => (Reason::ClaimCondition, None),
                Unmet::Cel => (Reason::CelCondition, None),
                Unmet::CelError(_) => (Reason::CelError, None),
            };
            return deny(
                Denial::InsufficientScope(scheme, scope),
                Some(method),
                reason,
            );
        }
        self.allow(
            identity,
            forwarded,
            rule.name.clone(),
            Some(location),
            Reason::Allowed,
        )
    }

    fn has(&self, m: Method) -> bool {
        match m {
            Method::Jwt => self.jwt.is_some(),
            Method::Introspection => self.introspection.is_some(),
            Method::ApiKey => self.api_keys.is_some(),
            Method::Mtls => self.mtls.is_some(),
            Method::Anonymous => false,
        }
    }

    fn allow_anonymous(&self, rule: Arc<str>, reason: Reason) -> Decision {
        let anon = self.anonymous.clone();
        let forwarded = self
            .headers
            .forward(&anon)
            .expect("an anonymous identity has only its method to forward");
        self.allow(anon, forwarded, rule, None, reason)
    }

    fn allow(
        &self,
        identity: Arc<Identity>,
        forwarded: Forwarded,
        rule: Arc<str>,
        credential: Option<Location>,
        reason: Reason,
    ) -> Decision {
        let Forwarded {
            mut set,
            mut remove,
        } = forwarded;
        let mut remove_query = Vec::new();
        if self.headers.remove_credential {
            match credential {
                Some(Location::Header(h)) => remove.push(h),
                Some(Location::Query(q)) => remove_query.push(q),
                Some(Location::Cookie(Some(rest))) => set.push((Arc::from("cookie"), rest)),
                Some(Location::Cookie(None)) => remove.push(Arc::from("cookie")),
                Some(Location::Connection) | None => {}
            }
        }
        Decision::Allow(Allow {
            identity,
            rule,
            set_headers: set,
            remove_headers: remove,
            remove_query,
            response_headers: Vec::new(),
            rate_limit: None,
            reason,
        })
    }
}

/// The rule for this request: the one the route names, else the first that matches.
fn select<'p>(
    policy: &'p Policy,
    req: &dyn RequestView,
    route: &RouteSettings<'_>,
    path: &str,
) -> Result<&'p Rule, Reason> {
    match route.rule {
        Some(name) => policy.by_name(name).ok_or_else(|| {
            tracing::warn!(rule = %name, "the route names an unknown rule; denying");
            Reason::UnknownRule
        }),
        None => policy
            .select(req.host(), path, req.method())
            .ok_or(Reason::NoRule),
    }
}

fn deny(d: Denial<'_>, method: Option<Method>, reason: Reason) -> Decision {
    Decision::Deny(d.answer(method, reason))
}

/// A request id is client-controllable when the proxy trusts the client's: keep it short and
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
            Rejection::Unavailable(Reason::KeyStoreError)
        }
        ApiKeyError::Malformed => Rejection::Invalid(Reason::Malformed),
        ApiKeyError::Unknown => Rejection::Invalid(Reason::Unknown),
        ApiKeyError::Revoked => Rejection::Invalid(Reason::Revoked),
        ApiKeyError::Expired => Rejection::Invalid(Reason::Expired),
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
            "mtls" => Some(Method::Mtls),
            _ => None,
        })
        .collect()
}

#[cfg(test)]
mod tests;

#[cfg(test)]
mod sources_tests;
