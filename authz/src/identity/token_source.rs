//! Where a bearer token may be in a request (`jwt.issuers[].token_sources`): a header, with or
//! without a prefix, a cookie, or a query parameter; and reading a cookie out of a `Cookie`
//! header. Finding the token of a request is the decision's (`check::credential`).

use std::sync::Arc;

use serde::Deserialize;
use tollgate_common::config::{Errors, join};

/// One place a token may be; exactly one of `header`, `cookie` or `query`.
#[derive(Debug, Clone, PartialEq, Eq, Hash, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TokenSourceConfig {
    /// A request header (any case; compared in lower case).
    #[serde(default)]
    pub header: Option<String>,
    /// With `header`: what the value starts with before the token (`"Bearer "`, compared
    /// without case). Absent: the whole value is the token.
    #[serde(default)]
    pub prefix: Option<String>,
    #[serde(default)]
    pub cookie: Option<String>,
    #[serde(default)]
    pub query: Option<String>,
}

/// A validated token source.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub enum TokenSource {
    /// A lower-case header name, and the prefix before the token. (The names a request's
    /// credential is found under are shared with where it was found, not copied per request.)
    Header {
        name: Arc<str>,
        prefix: Option<String>,
    },
    Cookie(String),
    Query(Arc<str>),
}

impl TokenSource {
    /// `Authorization: Bearer <token>`, the default.
    pub fn authorization() -> Self {
        TokenSource::Header {
            name: "authorization".into(),
            prefix: Some("Bearer ".into()),
        }
    }

    /// Whether this is `Authorization: Bearer`, which RFC 6750 parses strictly.
    pub fn is_authorization_bearer(&self) -> bool {
        matches!(self, TokenSource::Header { name, prefix: Some(p) }
            if &**name == "authorization" && p.trim_end().eq_ignore_ascii_case("bearer"))
    }
}

impl TokenSourceConfig {
    /// The source, or what is wrong with it (pushed at `at`).
    pub fn parse(&self, at: &str, errors: &mut Errors) -> Option<TokenSource> {
        let set = [
            self.header.is_some(),
            self.cookie.is_some(),
            self.query.is_some(),
        ];
        if set.iter().filter(|b| **b).count() != 1 {
            errors.push(at, "set exactly one of `header`, `cookie` or `query`");
            return None;
        }
        if self.prefix.is_some() && self.header.is_none() {
            errors.push(join(at, "prefix"), "only a `header` source takes a prefix");
            return None;
        }
        let name_ok = |n: &str| {
            !n.is_empty()
                && n.bytes()
                    .all(|b| b.is_ascii_alphanumeric() || b"-_.~!#$&'*+^`|".contains(&b))
        };
        if let Some(h) = &self.header {
            if !name_ok(h) {
                errors.push(join(at, "header"), "expected a header name");
                return None;
            }
            if self.prefix.as_deref() == Some("") {
                errors.push(join(at, "prefix"), "must not be empty (omit it instead)");
                return None;
            }
            return Some(TokenSource::Header {
                name: h.to_ascii_lowercase().into(),
                prefix: self.prefix.clone(),
            });
        }
        if let Some(c) = &self.cookie {
            if !name_ok(c) {
                errors.push(join(at, "cookie"), "expected a cookie name");
                return None;
            }
            return Some(TokenSource::Cookie(c.clone()));
        }
        let q = self.query.as_deref().unwrap_or_default();
        if !name_ok(q) || q.contains('&') {
            errors.push(join(at, "query"), "expected a query parameter name");
            return None;
        }
        Some(TokenSource::Query(q.into()))
    }
}

/// The value of cookie `name` in a `Cookie` header (`a=1; b=2`; a proxy joins several with
/// `; ` or `,`): `Ok(None)` when absent or empty, `Err` when it is there twice.
pub(crate) fn cookie<'a>(header: &'a str, name: &str) -> Result<Option<&'a str>, ()> {
    let mut found = None;
    for pair in header.split([';', ',']) {
        let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
        if k.trim() != name {
            continue;
        }
        if found.is_some() {
            return Err(());
        }
        let v = v.trim();
        found = Some(
            v.strip_prefix('"')
                .and_then(|v| v.strip_suffix('"'))
                .unwrap_or(v),
        );
    }
    Ok(found.filter(|v| !v.is_empty()))
}

/// The `Cookie` header without cookie `name` (`None` when nothing is left).
pub(crate) fn without_cookie(header: &str, name: &str) -> Option<String> {
    let rest: Vec<&str> = header
        .split([';', ','])
        .map(str::trim)
        .filter(|p| !p.is_empty() && p.split_once('=').map_or(*p, |(k, _)| k).trim() != name)
        .collect();
    (!rest.is_empty()).then(|| rest.join("; "))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sources_parse_or_say_why_not() {
        let ok: Vec<TokenSourceConfig> = serde_yaml::from_str(
            "[{header: Authorization, prefix: 'Bearer '}, {header: x-token}, {cookie: session}, {query: access_token}]",
        )
        .unwrap();
        let mut e = Errors::default();
        let parsed: Vec<_> = ok.iter().map(|s| s.parse("s", &mut e).unwrap()).collect();
        assert!(e.is_empty());
        assert!(parsed[0].is_authorization_bearer());
        assert_eq!(
            parsed[1],
            TokenSource::Header {
                name: "x-token".into(),
                prefix: None
            }
        );
        assert_eq!(parsed[2], TokenSource::Cookie("session".into()));
        assert_eq!(parsed[3], TokenSource::Query("access_token".into()));

        let bad: Vec<TokenSourceConfig> = serde_yaml::from_str(
            "[{header: a, cookie: b}, {cookie: s, prefix: x}, {header: 'a b'}, {query: ''}, {}]",
        )
        .unwrap();
        let mut e = Errors::default();
        for (i, s) in bad.iter().enumerate() {
            assert!(s.parse(&format!("s[{i}]"), &mut e).is_none(), "{s:?}");
        }
        let errs = e.finish(()).unwrap_err().to_string();
        for want in [
            "s[0]: set exactly one",
            "s[1].prefix: only a `header`",
            "s[2].header",
            "s[3].query",
            "s[4]: set exactly one",
        ] {
            assert!(errs.contains(want), "{want} in {errs}");
        }
    }

    #[test]
    fn cookies_are_found_once_and_stripped() {
        let h = "theme=dark; session=abc.def; other=\"q\"";
        assert_eq!(cookie(h, "session"), Ok(Some("abc.def")));
        assert_eq!(cookie(h, "other"), Ok(Some("q")));
        assert_eq!(cookie(h, "sess"), Ok(None));
        assert_eq!(cookie("session=", "session"), Ok(None));
        assert_eq!(cookie("session=a; session=b", "session"), Err(()));
        assert_eq!(cookie("session=a, session=b", "session"), Err(()));
        assert_eq!(
            without_cookie(h, "session").as_deref(),
            Some("theme=dark; other=\"q\"")
        );
        assert_eq!(without_cookie("session=a", "session"), None);
    }
}
