//! Finding the credential of a request: where each kind may be (a bearer token in the places
//! the JWT issuers list in `token_sources`, `Authorization: Bearer` by default; an API key in
//! its header, query parameter or cookie; the client certificate the proxy forwarded), refusing
//! a request that carries two, and choosing the one the rule's first identity method
//! understands.
//!
//! Ambiguous credentials: a request carrying both a bearer token and an API key, or a token (or
//! key) in two of its places, is answered 400 `invalid_request`, as RFC 6750 §3.1 asks for
//! "more than one method for including an access token": guessing which one the client meant
//! would let an attacker-controlled credential shadow the real one. A credential repeated in one
//! place (two `Authorization` or API key headers, a cookie twice, the query parameter twice or
//! in a percent-encoded spelling) is the same 400: RFC 6750 §3.1 "repeats the same parameter".
//! A client certificate is not a credential of the request but of the connection: it is never
//! ambiguous with one, and the rule's order decides.
//!
//! Each credential remembers where it was found ([`Location`]), which is what
//! `headers.remove_credential` strips from the upstream request (a cookie is cut out of the
//! `Cookie` header, the other cookies stay).

use std::collections::HashMap;
use std::sync::Arc;

use crate::identity::Method;
use crate::identity::jwt::JwtVerifier;
use crate::identity::token_source::{TokenSource, cookie, without_cookie};

use super::request::{PeerCertificate, RequestView};

/// Where the credentials of a request may be.
#[derive(Debug, Clone)]
pub(super) struct Sources {
    /// The API key header (lower case).
    api_key_header: Arc<str>,
    /// The API key query parameter, when keys may come in the query.
    api_key_query: Option<Arc<str>>,
    /// The API key cookie, when keys may come in a cookie.
    api_key_cookie: Option<Arc<str>>,
    /// Every place a bearer token may be, in the order they are tried.
    bearer: Vec<TokenSource>,
    /// The indexes in `bearer` each JWT issuer takes tokens from.
    issuers: HashMap<String, Vec<usize>>,
}

/// Where a credential was found, so that it can be removed from the upstream request.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(super) enum Location {
    Header(Arc<str>),
    Query(Arc<str>),
    /// A cookie, and the `Cookie` header without it (`None`: nothing else was in it).
    Cookie(Option<String>),
    /// The TLS connection: nothing to remove.
    Connection,
}

/// A credential found in the request.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Credential<'a> {
    Bearer(&'a str),
    ApiKey(&'a str),
    Certificate(PeerCertificate<'a>),
}

/// What a request carries, before a method is chosen.
#[derive(Debug, Default)]
pub(super) struct Found<'a> {
    /// The token and the index of its source.
    bearer: Option<(&'a str, usize)>,
    api_key: Option<(&'a str, Location)>,
    bearer_location: Option<Location>,
    certificate: Option<PeerCertificate<'a>>,
}

/// Why the credentials of a request are refused before any is verified (both 400).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Refusal {
    /// `Authorization: Bearer` with something that is not a b64token.
    MalformedAuthorization,
    /// Two credentials, or one twice.
    Ambiguous,
}

/// The bearer token sources of the config: each JWT issuer's, and `Authorization: Bearer`
/// for introspection.
#[derive(Debug, Clone, Default)]
pub struct BearerSources {
    /// `(issuer, its sources)`, in the config's order.
    pub issuers: Vec<(String, Vec<TokenSource>)>,
    /// Introspection is configured (it reads `Authorization: Bearer`).
    pub introspection: bool,
}

impl Sources {
    pub(super) fn new(
        api_key_header: Option<&str>,
        api_key_query: Option<&str>,
        api_key_cookie: Option<&str>,
        bearer: &BearerSources,
    ) -> Self {
        let mut s = Self {
            api_key_header: api_key_header
                .unwrap_or_default()
                .to_ascii_lowercase()
                .into(),
            api_key_query: api_key_query.map(Into::into),
            api_key_cookie: api_key_cookie.map(Into::into),
            bearer: Vec::new(),
            issuers: HashMap::new(),
        };
        s.set_bearer(bearer);
        s
    }

    /// Replaces the bearer token sources.
    pub(super) fn set_bearer(&mut self, bearer: &BearerSources) {
        let mut all: Vec<TokenSource> = Vec::new();
        let mut index = |s: &TokenSource| match all.iter().position(|x| x == s) {
            Some(i) => i,
            None => {
                all.push(s.clone());
                all.len() - 1
            }
        };
        let mut issuers = HashMap::new();
        for (iss, sources) in &bearer.issuers {
            issuers.insert(iss.clone(), sources.iter().map(&mut index).collect());
        }
        if bearer.introspection || bearer.issuers.is_empty() {
            index(&TokenSource::authorization());
        }
        self.bearer = all;
        self.issuers = issuers;
    }

    /// The credentials of the kinds `methods` accept: a bearer token for JWT and
    /// introspection, an API key for `api_key`, the client certificate for `mtls`.
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
            for (i, source) in self.bearer.iter().enumerate() {
                if let Some((token, location)) = self.token_at(req, source)? {
                    if found.bearer.is_some() {
                        return Err(Refusal::Ambiguous);
                    }
                    found.bearer = Some((token, i));
                    found.bearer_location = Some(location);
                }
            }
        }
        if wants_key {
            found.api_key = self.api_key(req).map_err(|()| Refusal::Ambiguous)?;
        }
        if found.bearer.is_some() && found.api_key.is_some() {
            return Err(Refusal::Ambiguous);
        }
        if methods.contains(&Method::Mtls) {
            found.certificate = req.peer_certificate();
        }
        Ok(found)
    }

    /// The token at one source, and where it is.
    fn token_at<'a>(
        &self,
        req: &'a dyn RequestView,
        source: &TokenSource,
    ) -> Result<Option<(&'a str, Location)>, Refusal> {
        let found = match source {
            TokenSource::Header { name, .. } if source.is_authorization_bearer() => {
                bearer_token(req.header(name))
                    .map_err(|()| Refusal::MalformedAuthorization)?
                    .map(|t| (t, Location::Header(name.clone())))
            }
            TokenSource::Header { name, prefix } => {
                let Some(v) = req.header(name).filter(|v| !v.is_empty()) else {
                    return Ok(None);
                };
                if req.header_repeated(name) {
                    return Err(Refusal::Ambiguous);
                }
                let token = match prefix {
                    None => Some(v.trim()),
                    Some(p) => v
                        .get(..p.len())
                        .filter(|head| head.eq_ignore_ascii_case(p))
                        .map(|_| v[p.len()..].trim()),
                };
                token
                    .filter(|t| !t.is_empty())
                    .map(|t| (t, Location::Header(name.clone())))
            }
            TokenSource::Cookie(name) => match req.header("cookie") {
                Some(h) => cookie(h, name)
                    .map_err(|()| Refusal::Ambiguous)?
                    .map(|t| (t, Location::Cookie(without_cookie(h, name)))),
                None => None,
            },
            TokenSource::Query(name) => query_credential(req.query(), name)
                .map_err(|()| Refusal::Ambiguous)?
                .map(|t| (t, Location::Query(name.clone()))),
        };
        Ok(found)
    }

    /// The API key of the request: from the header, the query parameter or the cookie, `Err`
    /// when it is there twice (two places, a repeated header, cookie or parameter, a
    /// re-spelled parameter).
    fn api_key<'a>(&self, req: &'a dyn RequestView) -> Result<Option<(&'a str, Location)>, ()> {
        let mut found = None;
        let mut take = |v: Option<(&'a str, Location)>| match (v, found.is_some()) {
            (Some(_), true) => Err(()),
            (Some(v), false) => {
                found = Some(v);
                Ok(())
            }
            (None, _) => Ok(()),
        };
        let h = req.header(&self.api_key_header).filter(|v| !v.is_empty());
        if h.is_some() && req.header_repeated(&self.api_key_header) {
            return Err(());
        }
        take(h.map(|h| (h, Location::Header(self.api_key_header.clone()))))?;
        if let Some(p) = &self.api_key_query {
            take(query_credential(req.query(), p)?.map(|q| (q, Location::Query(p.clone()))))?;
        }
        if let (Some(c), Some(h)) = (&self.api_key_cookie, req.header("cookie")) {
            take(cookie(h, c)?.map(|k| (k, Location::Cookie(without_cookie(h, c)))))?;
        }
        Ok(found)
    }

    /// Where `credential` was found.
    pub(super) fn location(&self, found: &Found<'_>, credential: Credential<'_>) -> Location {
        match credential {
            Credential::Bearer(_) => found.bearer_location.clone(),
            Credential::ApiKey(_) => found.api_key.as_ref().map(|(_, l)| l.clone()),
            Credential::Certificate(_) => None,
        }
        .unwrap_or(Location::Connection)
    }

    /// Whether the token that `method` verified (for JWT: of `issuer`) may come from where it
    /// was found: each issuer takes tokens only from its own sources, introspection only from
    /// `Authorization: Bearer`.
    pub(super) fn accepts(&self, found: &Found<'_>, method: Method, issuer: Option<&str>) -> bool {
        let Some((_, i)) = found.bearer else {
            return true;
        };
        match method {
            Method::Jwt => issuer
                .and_then(|iss| self.issuers.get(iss))
                .is_some_and(|ids| ids.contains(&i)),
            Method::Introspection => self.bearer[i].is_authorization_bearer(),
            _ => true,
        }
    }
}

impl<'a> Found<'a> {
    /// The first method, in `methods`' order, that finds its credential, with that credential.
    pub(super) fn choose(&self, methods: &[Method]) -> Option<(Method, Credential<'a>)> {
        let bearer = self.bearer.map(|(t, _)| t);
        methods.iter().find_map(|&m| {
            let cred = match (m, bearer, &self.api_key) {
                // With introspection also accepted, JWT takes only JWT-shaped tokens (the
                // shape is only looked at then: it is a scan of the whole token).
                (Method::Jwt, Some(t), _)
                    if !methods.contains(&Method::Introspection)
                        || JwtVerifier::looks_like_jwt(t) =>
                {
                    Some(Credential::Bearer(t))
                }
                (Method::Introspection, Some(t), _) => Some(Credential::Bearer(t)),
                (Method::ApiKey, _, Some((k, _))) => Some(Credential::ApiKey(k)),
                (Method::Mtls, _, _) => self.certificate.map(Credential::Certificate),
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
    if body.is_empty() || !is_b64token(body.as_bytes()) {
        return Err(());
    }
    Ok(Some(token))
}

/// Whether every byte of `s` is one of RFC 6750's b64token characters (the trailing `=`
/// aside): letters, digits and `-._~+/`. A token is scanned on every request, so the bytes are
/// classed by arithmetic alone and folded sixteen at a time without an early exit, which the
/// compiler turns into vector compares; a chunk with a bad byte ends the scan.
fn is_b64token(s: &[u8]) -> bool {
    let mut chunks = s.chunks_exact(16);
    for chunk in &mut chunks {
        if !chunk.iter().fold(true, |ok, &b| ok & b64token_byte(b)) {
            return false;
        }
    }
    chunks.remainder().iter().all(|&b| b64token_byte(b))
}

/// One b64token byte, without branches: `+`..`/` but `,`, digits, letters, `_` and `~`.
#[inline(always)]
fn b64token_byte(b: u8) -> bool {
    let punct = (b.wrapping_sub(b'+') < 5) & (b != b',');
    let digit = b.wrapping_sub(b'0') < 10;
    let letter = (b | 0x20).wrapping_sub(b'a') < 26;
    punct | digit | letter | (b == b'_') | (b == b'~')
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
        Sources::new(
            Some("X-Api-Key"),
            Some("api_key"),
            None,
            &BearerSources::default(),
        )
    }

    #[test]
    fn b64token_bytes_are_exactly_rfc_6750s_wherever_they_sit() {
        let rfc = |b: u8| b.is_ascii_alphanumeric() || b"-._~+/".contains(&b);
        for b in 0..=255u8 {
            assert_eq!(b64token_byte(b), rfc(b), "byte {b:#04x}");
            // One byte at every place of a token long enough for chunks and a remainder.
            for at in [0, 7, 15, 16, 31, 32, 40] {
                let mut token = vec![b'a'; 41];
                token[at] = b;
                assert_eq!(is_b64token(&token), rfc(b), "byte {b:#04x} at {at}");
            }
        }
        assert!(is_b64token(b""));
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
