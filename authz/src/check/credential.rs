//! Finding the credential of a request: where each kind may be (today: a bearer token in
//! `Authorization`; an API key in its header or query parameter), refusing a request that
//! carries two, and choosing the one the rule's first identity method understands.
//!
//! Ambiguous credentials: a request carrying both a bearer token and an API key (or an API key
//! in both the header and the query) is answered 400 `invalid_request`, as RFC 6750 §3.1 asks
//! for "more than one method for including an access token": guessing which one the client meant
//! would let an attacker-controlled credential shadow the real one. A credential repeated in one
//! place (two `Authorization` or API key headers, or the query parameter twice or in a
//! percent-encoded spelling) is the same 400: RFC 6750 §3.1 "repeats the same parameter".
//!
//! Each credential remembers where it was found ([`Location`]), which is what
//! `headers.remove_credential` strips from the upstream request. A new place to look (another
//! header, a cookie) is a new [`Location`] and one more lookup in [`Sources::find`].

use std::sync::Arc;

use crate::identity::Method;
use crate::identity::jwt::JwtVerifier;

use super::request::RequestView;

/// Where the credentials of a request may be.
#[derive(Debug, Clone)]
pub(super) struct Sources {
    /// The API key header (lower case).
    api_key_header: Arc<str>,
    /// The API key query parameter, when keys may come in the query.
    api_key_query: Option<Arc<str>>,
    authorization: Arc<str>,
}

/// Where a credential was found, so that it can be removed from the upstream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Location {
    Header(Arc<str>),
    Query(Arc<str>),
}

/// A credential found in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Credential<'a> {
    Bearer(&'a str),
    ApiKey(&'a str),
}

/// What a request carries, before a method is chosen.
#[derive(Debug, Default)]
pub(super) struct Found<'a> {
    bearer: Option<&'a str>,
    api_key: Option<(&'a str, bool)>,
}

/// Why the credentials of a request are refused before any is verified (both 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `Authorization: Bearer` with something that is not a b64token.
    MalformedAuthorization,
    /// Two credentials, or one twice.
    Ambiguous,
}

impl Sources {
    pub(super) fn new(api_key_header: Option<&str>, api_key_query: Option<&str>) -> Self {
        Self {
            api_key_header: api_key_header
                .unwrap_or_default()
                .to_ascii_lowercase()
                .into(),
            api_key_query: api_key_query.map(Into::into),
            authorization: "authorization".into(),
        }
    }

    /// The credentials of the kinds `methods` accept: a bearer token for JWT and
    /// introspection, an API key for `api_key`.
    pub(super) fn find<'a>(
        &self,
        req: &'a dyn RequestView,
        methods: &[Method],
    ) -> Result<Found<'a>, Refusal> {
        let wants_bearer = methods
            .iter()
            .any(|m| matches!(m, Method::Jwt | Method::Introspection));
        let wants_key = methods.contains(&Method::ApiKey);
        let mut found = Found::default();
        if wants_bearer {
            found.bearer = bearer_token(req.header(&self.authorization))
                .map_err(|()| Refusal::MalformedAuthorization)?;
        }
        if wants_key {
            found.api_key = self.api_key(req).map_err(|()| Refusal::Ambiguous)?;
        }
        if found.bearer.is_some() && found.api_key.is_some() {
            return Err(Refusal::Ambiguous);
        }
        Ok(found)
    }

    /// The API key of the request: from the header or the query parameter, `Err` when it is
    /// there twice (both places, a repeated header, a repeated or re-spelled parameter).
    fn api_key<'a>(&self, req: &'a dyn RequestView) -> Result<Option<(&'a str, bool)>, ()> {
        let h = req.header(&self.api_key_header).filter(|v| !v.is_empty());
        if h.is_some() && req.header_repeated(&self.api_key_header) {
            return Err(());
        }
        let q = match self.api_key_query.as_deref() {
            Some(p) => query_credential(req.query(), p)?,
            None => None,
        };
        match (h, q) {
            (Some(_), Some(_)) => Err(()),
            (Some(h), None) => Ok(Some((h, false))),
            (None, Some(q)) => Ok(Some((q, true))),
            (None, None) => Ok(None),
        }
    }

    /// Where `credential` was found.
    pub(super) fn location(&self, found: &Found<'_>, credential: Credential<'_>) -> Location {
        match credential {
            Credential::Bearer(_) => Location::Header(self.authorization.clone()),
            Credential::ApiKey(_) => match (found.api_key, &self.api_key_query) {
                (Some((_, true)), Some(q)) => Location::Query(q.clone()),
                _ => Location::Header(self.api_key_header.clone()),
            },
        }
    }
}

impl<'a> Found<'a> {
    /// The first method, in `methods`' order, that finds its credential, with that credential.
    pub(super) fn choose(&self, methods: &[Method]) -> Option<(Method, Credential<'a>)> {
        methods.iter().find_map(|&m| {
            let cred = match (m, self.bearer, self.api_key) {
                // With introspection also accepted, JWT takes only JWT-shaped tokens.
                (Method::Jwt, Some(t), _)
                    if JwtVerifier::looks_like_jwt(t)
                        || !methods.contains(&Method::Introspection) =>
                {
                    Some(Credential::Bearer(t))
                }
                (Method::Introspection, Some(t), _) => Some(Credential::Bearer(t)),
                (Method::ApiKey, _, Some((k, _))) => Some(Credential::ApiKey(k)),
                _ => None,
            };
            cred.map(|c| (m, c))
        })
    }
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

#[cfg(test)]
mod tests {
    use super::*;
    use crate::check::request::OwnedRequest;

    const BOTH: [Method; 2] = [Method::Jwt, Method::ApiKey];

    fn sources() -> Sources {
        Sources::new(Some("X-Api-Key"), Some("api_key"))
    }

    #[test]
    fn one_credential_is_found_where_it_is() {
        let s = sources();
        let req = OwnedRequest::new("GET", "/x?api_key=k1&page=2");
        let found = s.find(&req, &BOTH).unwrap();
        let (m, c) = found.choose(&BOTH).unwrap();
        assert_eq!((m, c), (Method::ApiKey, Credential::ApiKey("k1")));
        assert_eq!(s.location(&found, c), Location::Query("api_key".into()));
        let req = OwnedRequest::new("GET", "/x").header("x-api-key", "k2");
        let found = s.find(&req, &BOTH).unwrap();
        let (_, c) = found.choose(&BOTH).unwrap();
        assert_eq!(s.location(&found, c), Location::Header("x-api-key".into()));
        let req = OwnedRequest::new("GET", "/x").header("authorization", "Bearer a.b.c");
        let found = s.find(&req, &BOTH).unwrap();
        assert_eq!(
            found.choose(&BOTH),
            Some((Method::Jwt, Credential::Bearer("a.b.c")))
        );
        // A method the rule does not accept does not look.
        let found = s.find(&req, &[Method::ApiKey]).unwrap();
        assert_eq!(found.choose(&[Method::ApiKey]), None);
    }

    #[test]
    fn two_credentials_or_one_twice_are_refused() {
        let s = sources();
        for req in [
            OwnedRequest::new("GET", "/x?api_key=k1").header("x-api-key", "k2"),
            OwnedRequest::new("GET", "/x?api_key=k1&api_key=k2"),
            OwnedRequest::new("GET", "/x?api%5Fkey=k1"),
            OwnedRequest::new("GET", "/x")
                .header("x-api-key", "k1")
                .header("x-api-key", "k2"),
            OwnedRequest::new("GET", "/x").header("x-api-key", "k1,k2"),
            OwnedRequest::new("GET", "/x")
                .header("authorization", "Bearer t")
                .header("x-api-key", "k"),
        ] {
            assert_eq!(
                s.find(&req, &BOTH).err(),
                Some(Refusal::Ambiguous),
                "{req:?}"
            );
        }
        let req = OwnedRequest::new("GET", "/x").header("authorization", "Bearer a,b");
        assert_eq!(
            s.find(&req, &BOTH).err(),
            Some(Refusal::MalformedAuthorization)
        );
    }
}
