//! The adapter between Envoy's request and tollgate-authz's decision: the request copied into
//! authz's [`OwnedRequest`] (a decision may finish on the background runtime, after the hook
//! that could read Envoy's header map has returned), and a [`Decision`] turned into a
//! [`Verdict`] that adds nothing of its own: the same headers, status, body and challenge as
//! the service's answer, the identity as dynamic metadata under ext_authz's namespace (so
//! access-log formats and route matchers that read it carry over).

use std::borrow::Cow;
use std::collections::BTreeMap;

use tollgate_authz::Decision;
use tollgate_authz::RequestView;
use tollgate_authz::check::{MetadataValue as AuthzValue, PeerCertificate, RouteSettings};

use crate::filter::{Counts, LocalReply, Metadata, MetadataValue, Mutations, Request, Verdict};
use crate::host::Counter;

/// Where the identity is filed, as Envoy's ext_authz filter files a Check's metadata.
pub(crate) const NAMESPACE: &str = "envoy.filters.http.ext_authz";

/// The request header that carries the client certificate (URL-encoded PEM) to the module: a
/// `header_mutation` filter ahead of it sets it from `%DOWNSTREAM_PEER_CERT%`, as the HTTP
/// flavour of ext_authz does. It is only believed when its fingerprint is the one Envoy reports
/// for the connection, so a client's own copy is worth nothing; it never reaches the upstream.
pub(crate) const PEER_CERTIFICATE_HEADER: &str =
    tollgate_authz::http_check::PEER_CERTIFICATE_HEADER;

/// A piece of [`ModuleRequest::text`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
struct Span {
    start: u32,
    end: u32,
}

/// The request as the decision reads it, copied out of Envoy (a decision may finish on the
/// background runtime, after the hook that could read Envoy's header map has returned). Every
/// string lives in one buffer, so a request costs two allocations whatever its header count.
/// Header values that are not UTF-8 are read lossily: a credential never has such bytes, and a
/// condition on such a header sees what it can.
#[derive(Debug, Default)]
pub(crate) struct ModuleRequest {
    text: String,
    method: Span,
    host: Span,
    path: Span,
    query: Span,
    /// Lower-case names; a name listed twice was sent twice.
    headers: Vec<(Span, Span)>,
    /// The [`name_bit`]s of the header names: most lookups of a header the request lacks (the
    /// identity headers, the other credentials' places) end at one test.
    names: u64,
    rule: Option<Span>,
    identity: Option<Span>,
    scopes: Option<Span>,
    source_address: Option<Span>,
    /// The principal Envoy names for the peer, and the forwarded certificate when it is the
    /// connection's.
    peer: Option<(Span, Option<Span>)>,
    /// The client sent a certificate header (believed or not): the upstream must not get it.
    peer_header: bool,
}

impl ModuleRequest {
    /// Copies what the decision reads out of `request`.
    pub(crate) fn copy(request: &dyn Request) -> Self {
        let headers = request.headers();
        let size: usize = headers
            .iter()
            .map(|(n, v)| n.len() + v.len())
            .sum::<usize>()
            + 256;
        let mut r = ModuleRequest {
            headers: Vec::with_capacity(headers.len()),
            ..ModuleRequest::default()
        };
        // Header bytes are nearly always valid UTF-8 (ASCII): one check of them all is cheaper
        // than one per header, and the lossy conversion, header by header, runs only when it
        // fails.
        let mut bytes = Vec::with_capacity(size);
        for (name, value) in &headers {
            let name = append(&mut bytes, name);
            r.headers.push((name, append(&mut bytes, value)));
        }
        match String::from_utf8(bytes) {
            Ok(text) => r.text = text,
            Err(_) => {
                r.text = String::with_capacity(size);
                r.headers.clear();
                for (name, value) in &headers {
                    let name = r.push(&String::from_utf8_lossy(name));
                    let value = r.push(&String::from_utf8_lossy(value));
                    r.headers.push((name, value));
                }
            }
        }
        for &(name, _) in &r.headers {
            let name = &mut r.text[name.start as usize..name.end as usize];
            name.make_ascii_lowercase();
            r.names |= name_bit(name.as_bytes());
        }
        // Envoy's request attributes for these are its pseudo-headers, already copied: read
        // them from there, and ask Envoy only when one is missing.
        r.method = match r.find(":method") {
            Some(v) => v,
            None => r.push(request.method().unwrap_or_default()),
        };
        r.host = match r.find(":authority") {
            Some(v) => v,
            None => r.push(request.host().unwrap_or_default()),
        };
        let full = match r.find(":path") {
            Some(v) => v,
            None => r.push(request.path().unwrap_or_default()),
        };
        (r.path, r.query) = match r.get(full).find('?') {
            Some(at) => {
                let at = full.start + at as u32;
                let path = Span {
                    start: full.start,
                    end: at,
                };
                (
                    path,
                    Span {
                        start: at + 1,
                        end: full.end,
                    },
                )
            }
            None => (
                full,
                Span {
                    start: full.end,
                    end: full.end,
                },
            ),
        };
        r.rule = request.route_rule().map(|v| r.push(v));
        r.identity = request.route_identity().map(|v| r.push(v));
        r.scopes = request.route_scopes().map(|v| r.push(v));
        r.source_address = request
            .source_address()
            .map(|a| r.push(address_without_port(a)));
        let cert_header = r.find(PEER_CERTIFICATE_HEADER);
        r.peer_header = cert_header.is_some();
        if let Some(peer) = request.tls_peer() {
            // Envoy's name for the peer: the first URI SAN, else the first DNS SAN, else the
            // subject (what ext_authz sends as the source principal).
            let principal = peer.uri_san.or(peer.dns_san).or(peer.subject);
            let principal = r.push(principal.unwrap_or_default());
            let pem = cert_header.filter(|pem| {
                let pem = r.get(*pem);
                !pem.is_empty()
                    && peer.sha256.is_some_and(|want| {
                        tollgate_authz::identity::mtls::fingerprint(pem)
                            .is_some_and(|got| got.eq_ignore_ascii_case(want))
                    })
            });
            r.peer = Some((principal, pem));
        }
        r
    }

    fn push(&mut self, s: &str) -> Span {
        let start = self.text.len() as u32;
        self.text.push_str(s);
        Span {
            start,
            end: self.text.len() as u32,
        }
    }

    fn get(&self, span: Span) -> &str {
        &self.text[span.start as usize..span.end as usize]
    }

    /// The first value of header `name` (lower case).
    fn find(&self, name: &str) -> Option<Span> {
        if self.names & name_bit(name.as_bytes()) == 0 {
            return None;
        }
        self.headers
            .iter()
            .find(|(n, _)| self.get(*n) == name)
            .map(|(_, v)| *v)
    }

    /// `m` cut to what this request needs: its removals to the headers the request carries and
    /// `m` does not set anyway (a set replaces every value), plus the certificate header if the
    /// client sent one; and a set of a header the request does not carry made an add, which
    /// Envoy's header map does without looking for values to replace. Each of these is a call
    /// into Envoy's header map, and most requests carry none of the headers removed or set.
    pub(crate) fn fit_to_request(&self, m: &mut Mutations) {
        let set = &m.set_headers;
        m.remove_headers
            .retain(|h| self.find(h).is_some() && !set.iter().any(|(n, _)| n == h));
        if self.peer_header {
            m.remove_headers.push(PEER_CERTIFICATE_HEADER.into());
        }
        // A name set twice keeps its last value, which two adds would not: left as sets. (A
        // bit per set; sets past the 64th stay sets.)
        let mut adds = 0u64;
        for (i, (name, _)) in set.iter().enumerate().take(64) {
            let twice = set.iter().filter(|(n, _)| n == name).count() > 1;
            if !twice && self.find(name).is_none() {
                adds |= 1 << i;
            }
        }
        if adds != 0 {
            let mut added = Vec::with_capacity(adds.count_ones() as usize);
            let mut i = 0;
            m.set_headers.retain_mut(|header| {
                let add = i < 64 && adds & (1 << i) != 0;
                i += 1;
                if add {
                    added.push(std::mem::take(header));
                }
                !add
            });
            // Before the existing adds: sets are applied before adds.
            match m.add_headers.is_empty() {
                true => m.add_headers = added,
                false => drop(m.add_headers.splice(0..0, added)),
            }
        }
    }
}

impl RequestView for ModuleRequest {
    fn method(&self) -> &str {
        self.get(self.method)
    }
    fn host(&self) -> &str {
        self.get(self.host)
    }
    fn path(&self) -> &str {
        self.get(self.path)
    }
    fn query(&self) -> &str {
        self.get(self.query)
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.find(name).map(|v| self.get(v))
    }
    fn header_repeated(&self, name: &str) -> bool {
        let mut values = self.headers.iter().filter(|(n, _)| self.get(*n) == name);
        match (values.next(), values.next()) {
            (Some(_), Some(_)) => true,
            (Some((_, v)), None) => self.get(*v).contains(','),
            _ => false,
        }
    }
    fn route(&self) -> RouteSettings<'_> {
        RouteSettings {
            rule: self.rule.map(|s| self.get(s)),
            identity: self.identity.map(|s| self.get(s)),
            scopes: self.scopes.map(|s| self.get(s)),
            disabled: false,
        }
    }
    fn source_address(&self) -> Option<&str> {
        self.source_address.map(|s| self.get(s))
    }
    fn peer_certificate(&self) -> Option<PeerCertificate<'_>> {
        let (principal, pem) = self.peer?;
        Some(PeerCertificate {
            principal: self.get(principal),
            pem: pem.map(|p| self.get(p)),
        })
    }
}

/// Appends `b` to `bytes`, and where it went.
fn append(bytes: &mut Vec<u8>, b: &[u8]) -> Span {
    let start = bytes.len() as u32;
    bytes.extend_from_slice(b);
    Span {
        start,
        end: bytes.len() as u32,
    }
}

/// A header name's bit in [`ModuleRequest::names`], from its length and last byte.
fn name_bit(name: &[u8]) -> u64 {
    let last = name.last().map_or(0, |b| usize::from(*b));
    1 << ((name.len() * 5 + last) & 63)
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

/// The verdict the client and the upstream see for `decision` on `request`; with `metadata`,
/// the identity and the limit that applied go to later filters as dynamic metadata.
pub(crate) fn from_decision(
    decision: Decision,
    request: &dyn RequestView,
    metadata: bool,
) -> Verdict {
    let reason = decision.reason().as_str();
    let metadata = match metadata {
        true => metadata_of(&decision),
        false => Vec::new(),
    };
    match decision {
        Decision::Allow(a) => {
            let mut set_headers = a.set_headers;
            if !a.remove_query.is_empty() {
                let query = without_params(request.query(), &a.remove_query);
                let path = match query.is_empty() {
                    true => request.path().to_string(),
                    false => format!("{}?{query}", request.path()),
                };
                set_headers.push((":path".into(), path));
            }
            let mut counts = Counts::default();
            counts.push(Counter::Decisions, reason);
            if a.rate_limit.is_some() {
                counts.push(Counter::RateLimit, "ok");
            }
            Verdict::Continue(Mutations {
                remove_headers: a.remove_headers,
                set_headers,
                add_headers: Vec::new(),
                response_headers: lower_names(a.response_headers),
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

/// The rate-limit headers of an allowed request, their names lower case (the limiter's
/// spelling of its own names is known, so most need no copy).
fn lower_names(headers: Vec<(&'static str, String)>) -> Vec<(Cow<'static, str>, String)> {
    headers
        .into_iter()
        .map(|(k, v)| {
            let name = match k {
                "RateLimit-Policy" => Cow::Borrowed("ratelimit-policy"),
                "RateLimit" => Cow::Borrowed("ratelimit"),
                "X-RateLimit-Limit" => Cow::Borrowed("x-ratelimit-limit"),
                "X-RateLimit-Remaining" => Cow::Borrowed("x-ratelimit-remaining"),
                "X-RateLimit-Reset" => Cow::Borrowed("x-ratelimit-reset"),
                "Retry-After" => Cow::Borrowed("retry-after"),
                _ if k.bytes().any(|b| b.is_ascii_uppercase()) => {
                    Cow::Owned(k.to_ascii_lowercase())
                }
                _ => Cow::Borrowed(k),
            };
            (name, v)
        })
        .collect()
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

fn metadata_of(decision: &Decision) -> Vec<Metadata> {
    decision
        .metadata()
        .into_iter()
        .map(|(key, value)| Metadata {
            namespace: Cow::Borrowed(NAMESPACE),
            key: Cow::Borrowed(key),
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
    use std::sync::Arc;

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
        let owned = ModuleRequest::copy(&req);
        assert_eq!(owned.path(), "/orders/7");
        assert_eq!(owned.query(), "page=2&key=k");
        assert_eq!(owned.method(), "GET");
        assert_eq!(owned.host(), "example.test");
        assert_eq!(owned.route().rule, Some("orders"));
        assert_eq!(owned.source_address(), Some("10.0.0.7"));
        assert_eq!(owned.headers.len(), 3);
        assert!(owned.header_repeated("x-multi"));
        assert!(!owned.header_repeated("authorization"));
        assert_eq!(owned.header("authorization"), Some("Bearer t"));
        assert_eq!(owned.header("x-absent"), None);
        assert_eq!(owned.peer_certificate(), None);
        assert!(!strips_peer_header(&owned));
    }

    #[test]
    fn envoys_pseudo_headers_stand_for_its_attributes() {
        let req = FakeRequest::default()
            .with(":method", "POST")
            .with(":authority", "a.test")
            .with(":path", "/p/q?x=1&y");
        let r = ModuleRequest::copy(&req);
        assert_eq!(
            (r.method(), r.host(), r.path(), r.query()),
            ("POST", "a.test", "/p/q", "x=1&y")
        );
        let r = ModuleRequest::copy(&FakeRequest::default().with(":path", "/bare"));
        assert_eq!((r.path(), r.query(), r.method()), ("/bare", "", ""));
    }

    #[test]
    fn a_header_that_is_not_utf8_is_read_lossily_and_the_others_as_they_are() {
        let mut req = FakeRequest::get("/p?q=1")
            .with(":path", "/p?q=1")
            .with("Authorization", "Bearer t");
        req.headers.push(("x-bytes".into(), b"a\xffb".to_vec()));
        req.headers.push(("X-After".into(), b"kept".to_vec()));
        let r = ModuleRequest::copy(&req);
        assert_eq!(r.header("x-bytes"), Some("a\u{fffd}b"));
        assert_eq!(r.header("authorization"), Some("Bearer t"));
        assert_eq!(r.header("x-after"), Some("kept"));
        assert_eq!((r.path(), r.query()), ("/p", "q=1"));
    }

    #[test]
    fn every_header_is_found_and_one_sharing_its_bit_is_not() {
        let names: Vec<String> = (0..80).map(|i| format!("X-Header-{i}")).collect();
        let mut req = FakeRequest::get("/").with("x-ab", "1");
        for n in &names {
            req = req.with(n, "v");
        }
        let r = ModuleRequest::copy(&req);
        for n in &names {
            assert_eq!(r.header(&n.to_ascii_lowercase()), Some("v"), "{n}");
        }
        assert_eq!(name_bit(b"x-ab"), name_bit(b"x-bb"));
        assert_eq!(r.header("x-ab"), Some("1"));
        assert_eq!(r.header("x-bb"), None);
        assert_eq!(r.header("x-header-80"), None);
        let few = ModuleRequest::copy(&FakeRequest::get("/").with("x-ab", "1"));
        assert_eq!(few.header("x-bb"), None);
        assert_eq!(few.header("x-abc"), None);
    }

    fn strips_peer_header(r: &ModuleRequest) -> bool {
        let mut m = Mutations::default();
        r.fit_to_request(&mut m);
        m.remove_headers == [Arc::from(PEER_CERTIFICATE_HEADER)]
    }

    #[test]
    fn only_headers_the_request_carries_and_no_set_one_are_removed() {
        let r = ModuleRequest::copy(
            &FakeRequest::get("/")
                .with("X-Tollgate-Subject", "forged")
                .with("x-tollgate-auth-method", "forged")
                .with("x-other", "kept"),
        );
        let mut m = Mutations {
            remove_headers: [
                "x-tollgate-subject",
                "x-tollgate-plan",
                "x-tollgate-auth-method",
            ]
            .map(Arc::from)
            .to_vec(),
            set_headers: vec![("x-tollgate-auth-method".into(), "jwt".into())],
            ..Mutations::default()
        };
        r.fit_to_request(&mut m);
        assert_eq!(m.remove_headers, [Arc::from("x-tollgate-subject")]);
    }

    #[test]
    fn a_header_the_request_lacks_is_added_and_one_it_carries_is_set() {
        let r = ModuleRequest::copy(
            &FakeRequest::get("/")
                .with("X-Tollgate-Subject", "forged")
                .with("x-other", "kept"),
        );
        let pair = |n: &str, v: &str| (Arc::from(n), v.to_string());
        let mut m = Mutations {
            set_headers: vec![
                pair("x-tollgate-subject", "alice"),
                pair("x-tollgate-auth-method", "jwt"),
                pair("x-twice", "1"),
                pair("x-twice", "2"),
            ],
            add_headers: vec![pair("x-tollgate-auth-method", "more")],
            ..Mutations::default()
        };
        r.fit_to_request(&mut m);
        // The forged copy is replaced; a name set twice keeps the set's meaning.
        assert_eq!(
            m.set_headers,
            [
                pair("x-tollgate-subject", "alice"),
                pair("x-twice", "1"),
                pair("x-twice", "2")
            ]
        );
        // Added in the order a set and then the adds would have left them.
        assert_eq!(
            m.add_headers,
            [
                pair("x-tollgate-auth-method", "jwt"),
                pair("x-tollgate-auth-method", "more")
            ]
        );
    }

    fn certificate(name: &str) -> String {
        let mut params = rcgen::CertificateParams::new(vec![name.to_string()]).unwrap();
        params
            .distinguished_name
            .push(rcgen::DnType::CommonName, name);
        let key = rcgen::KeyPair::generate().unwrap();
        let pem = params.self_signed(&key).unwrap().pem();
        pem.replace('\n', "%0A")
            .replace(' ', "%20")
            .replace('+', "%2B")
    }

    fn with_peer(pem: &str, sha256: Option<&str>) -> ModuleRequest {
        let mut req = FakeRequest::get("/").with(PEER_CERTIFICATE_HEADER, pem);
        req.peer_subject = sha256.map(|_| "CN=web".to_string());
        req.peer_dns_san = sha256.map(|_| "web.test".to_string());
        req.peer_sha256 = sha256.map(str::to_string);
        ModuleRequest::copy(&req)
    }

    #[test]
    fn a_forwarded_certificate_counts_only_when_it_is_the_connections() {
        let pem = certificate("web.test");
        let own = tollgate_authz::identity::mtls::fingerprint(&pem).unwrap();
        let r = with_peer(&pem, Some(&own));
        let peer = r.peer_certificate().unwrap();
        assert_eq!(
            peer.principal, "web.test",
            "Envoy's name: the DNS SAN before the subject"
        );
        assert_eq!(peer.pem, Some(pem.as_str()));
        assert!(strips_peer_header(&r));

        let other = tollgate_authz::identity::mtls::fingerprint(&certificate("x.test")).unwrap();
        let forged = with_peer(&pem, Some(&other));
        assert_eq!(
            forged.peer_certificate().map(|p| p.pem),
            Some(None),
            "another certificate than the handshake's is not believed"
        );
        assert!(strips_peer_header(&forged));

        let plain = with_peer(&pem, None);
        assert_eq!(
            plain.peer_certificate(),
            None,
            "no TLS peer, no certificate"
        );
        assert!(
            strips_peer_header(&plain),
            "and the client's copy is still stripped"
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
