//! What a decision says back, as plain data every front end wraps in its own types: the
//! rate-limit headers for the client's response (IETF `RateLimit-Policy` / `RateLimit`,
//! `X-RateLimit-*`, `Retry-After`) as `(name, value)` pairs, and the metadata naming the limit
//! that fired (Envoy: dynamic metadata).

use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use crate::engine::{Code, Decision, Status};
use crate::limits::Limit;

/// Which rate-limit headers to add to the client's response (the `headers:` setting).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct HeaderOptions {
    /// The IETF `RateLimit-Policy` and `RateLimit` fields (draft-ietf-httpapi-ratelimit-headers).
    pub ietf: bool,
    /// `X-RateLimit-Limit`, `X-RateLimit-Remaining`, `X-RateLimit-Reset` for the tightest limit.
    pub x_ratelimit: bool,
    /// `Retry-After` (seconds) on over-limit responses.
    pub retry_after: bool,
}

impl Default for HeaderOptions {
    fn default() -> Self {
        Self {
            ietf: true,
            x_ratelimit: false,
            retry_after: true,
        }
    }
}

/// The response headers for a decision, in order: `RateLimit-Policy`, `RateLimit`, the
/// `X-RateLimit-*` three, `Retry-After` (each only when `opts` asks for it and it applies).
pub fn headers(decision: &Decision, opts: HeaderOptions) -> Vec<(&'static str, String)> {
    let mut out = Vec::with_capacity(6); // the most it holds
    if opts.ietf {
        ietf(decision, &mut out);
    }
    if opts.x_ratelimit
        && let Some((s, l)) = tightest(decision)
    {
        let window = ceil_secs(l.rule.window).max(1);
        out.push((
            "X-RateLimit-Limit",
            format!("{}, {};w={window}", l.rule.limit, l.rule.limit),
        ));
        out.push(("X-RateLimit-Remaining", s.remaining.to_string()));
        out.push(("X-RateLimit-Reset", ceil_secs(s.reset_after).to_string()));
    }
    if opts.retry_after
        && decision.code == Code::OverLimit
        && let Some(wait) = decision.retry_after()
    {
        out.push(("Retry-After", ceil_secs(wait).max(1).to_string()));
    }
    out
}

/// `RateLimit-Policy` and `RateLimit`: one item per applied limit, even when several
/// descriptors hit the same one.
fn ietf(decision: &Decision, out: &mut Vec<(&'static str, String)>) {
    let (mut policy, mut state) = (String::with_capacity(64), String::with_capacity(64));
    for (i, s) in decision.statuses.iter().enumerate() {
        let Some(l) = &s.limit else { continue };
        let seen = decision.statuses[..i]
            .iter()
            .any(|e| e.limit.as_ref().is_some_and(|m| Arc::ptr_eq(m, l)));
        if seen {
            continue;
        }
        if !policy.is_empty() {
            policy.push_str(", ");
            state.push_str(", ");
        }
        policy.push_str(&l.ietf.policy);
        state.push_str(&l.ietf.name);
        state.push_str(";r=");
        push_decimal(&mut state, s.remaining);
        state.push_str(";t=");
        push_decimal(&mut state, ceil_secs(s.reset_after));
    }
    if !policy.is_empty() {
        out.push(("RateLimit-Policy", policy));
        out.push(("RateLimit", state));
    }
}

/// Appends `n` in decimal, without the formatting machinery (this runs on every answer).
fn push_decimal(out: &mut String, mut n: u64) {
    let mut digits = [0u8; 20];
    let mut at = digits.len();
    loop {
        at -= 1;
        digits[at] = b'0' + (n % 10) as u8;
        n /= 10;
        if n == 0 {
            break;
        }
    }
    for &d in &digits[at..] {
        out.push(char::from(d));
    }
}

/// A limit's fixed parts of the IETF headers, rendered when the limit is built rather than on
/// every response.
#[derive(Debug, Clone)]
pub(crate) struct IetfItems {
    /// The name as an sf-string.
    pub(crate) name: Box<str>,
    /// `RateLimit-Policy`'s item: the name with its quota and window.
    pub(crate) policy: Box<str>,
}

impl IetfItems {
    pub(crate) fn new(name: &str, rule: &crate::algorithm::Rule) -> Self {
        let mut quoted = String::new();
        sf_string(&mut quoted, name);
        let policy = format!(
            "{quoted};q={};w={}",
            rule.limit,
            ceil_secs(rule.window).max(1)
        );
        Self {
            name: quoted.into(),
            policy: policy.into(),
        }
    }
}

/// The denying status if any, else the applied limit with the least remaining.
fn tightest(decision: &Decision) -> Option<(&Status, &Arc<Limit>)> {
    let with_limit = || {
        decision
            .statuses
            .iter()
            .filter_map(|s| s.limit.as_ref().map(|l| (s, l)))
    };
    with_limit()
        .find(|(s, _)| s.code == Code::OverLimit)
        .or_else(|| with_limit().min_by_key(|(s, _)| s.remaining))
}

/// Whole seconds, rounded up (a client waiting the rounded-down value would be denied again).
fn ceil_secs(d: Duration) -> u64 {
    d.as_secs() + u64::from(d.subsec_nanos() > 0)
}

/// An RFC 8941 sf-string: quoted, with `"` and `\` escaped and non-printable ASCII replaced.
fn sf_string(out: &mut String, s: &str) {
    out.push('"');
    for c in s.chars() {
        match c {
            '"' | '\\' => {
                out.push('\\');
                out.push(c);
            }
            ' '..='~' => out.push(c),
            _ => out.push('_'),
        }
    }
    out.push('"');
}

/// The field names of [`Metadata`] wherever it is rendered as a map (Envoy files it under
/// the `envoy.filters.http.ratelimit` namespace).
pub mod metadata_keys {
    /// Name of the limit that denied the request.
    pub const LIMIT: &str = "limit";
    pub const DOMAIN: &str = "domain";
    /// Index of the denied descriptor in the request.
    pub const DESCRIPTOR: &str = "descriptor_index";
    /// Names of shadow-mode limits that would have denied.
    pub const SHADOW_LIMITS: &str = "shadow_limits";
    /// Some limit of the request is in quota mode (envoyproxy/ratelimit's name).
    pub const QUOTA_MODE_ENABLED: &str = "quotaModeEnabled";
    /// Indices of the descriptors over a quota-mode limit (envoyproxy/ratelimit's name).
    pub const QUOTA_MODE_VIOLATIONS: &str = "quotaModeViolations";
}

/// What a decision tells observers about the limits that fired.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Metadata<'a> {
    pub domain: &'a str,
    /// The first denied descriptor: the limit's name and the descriptor's index.
    pub fired: Option<(&'a str, usize)>,
    /// Shadow-mode limits that would have denied, by name.
    pub shadow_limits: Vec<&'a str>,
    /// Some limit of the request is in `quota_mode` (envoyproxy/ratelimit's `quotaModeEnabled`).
    pub quota_mode: bool,
    /// The request descriptors whose quota-mode limit is over (`quotaModeViolations`).
    pub quota_violations: Vec<usize>,
}

/// The metadata of a decision in `domain`; `None` when no limit fired, shadow or enforced.
pub fn metadata<'a>(domain: &'a str, decision: &'a Decision) -> Option<Metadata<'a>> {
    let fired = decision.fired().map(|(i, l)| (&*l.name, i));
    let shadow_limits: Vec<&str> = decision
        .statuses
        .iter()
        .filter_map(|s| s.shadow_fired.as_deref().map(|l| &*l.name))
        .collect();
    let quota_violations: Vec<usize> = (decision.statuses.iter().enumerate())
        .filter(|(_, s)| s.quota_exceeded)
        .map(|(i, _)| i)
        .collect();
    let quota_mode = decision
        .statuses
        .iter()
        .any(|s| s.limit.as_ref().is_some_and(|l| l.quota_mode));
    if fired.is_none() && shadow_limits.is_empty() && !quota_mode {
        return None;
    }
    Some(Metadata {
        domain,
        fired,
        shadow_limits,
        quota_mode,
        quota_violations,
    })
}

#[cfg(test)]
mod tests;
