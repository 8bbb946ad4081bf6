//! The part of a `CheckRequest` Tollgate reads, decoded from the same wire format as
//! [`super::CheckRequest`]: the HTTP request's method, host, path and headers, the route's
//! context extensions, and the source peer (address, TLS principal and certificate).
//!
//! Every other field (the destination peer, the request's id, time, scheme, protocol and body,
//! metadata, the TLS session) is skipped on the wire without being decoded, and the two maps
//! are kept as their entries in wire order instead of being hashed into a `HashMap`: a Check
//! looks up a handful of names among a few dozen entries. A name sent twice resolves to its
//! last entry, as decoding into a map does.
//!
//! The field numbers are those of `envoy/service/auth/v3/attribute_context.proto` and
//! `envoy/config/core/v3/address.proto`; a test below checks each against `envoy-types`'
//! generated messages by encoding with them and decoding with these.

/// `envoy.service.auth.v3.CheckRequest`, the fields read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct CheckRequest {
    #[prost(message, optional, tag = "1")]
    pub attributes: Option<AttributeContext>,
}

/// `envoy.service.auth.v3.AttributeContext`, the fields read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct AttributeContext {
    #[prost(message, optional, tag = "1")]
    pub source: Option<Peer>,
    #[prost(message, optional, tag = "4")]
    pub request: Option<Request>,
    #[prost(message, repeated, tag = "10")]
    pub context_extensions: Vec<Entry>,
}

/// `AttributeContext.Peer`, the fields read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Peer {
    #[prost(message, optional, tag = "1")]
    pub address: Option<Address>,
    #[prost(string, tag = "4")]
    pub principal: String,
    #[prost(string, tag = "5")]
    pub certificate: String,
}

/// `envoy.config.core.v3.Address`: only its `socket_address` (a pipe or an internal address
/// leaves it `None`).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Address {
    #[prost(message, optional, tag = "1")]
    pub socket_address: Option<SocketAddress>,
}

/// `envoy.config.core.v3.SocketAddress`: the address, not the port.
#[derive(Clone, PartialEq, prost::Message)]
pub struct SocketAddress {
    #[prost(string, tag = "2")]
    pub address: String,
}

/// `AttributeContext.Request`: its HTTP request.
#[derive(Clone, PartialEq, prost::Message)]
pub struct Request {
    #[prost(message, optional, tag = "2")]
    pub http: Option<HttpRequest>,
}

/// `AttributeContext.HttpRequest`, the fields read.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HttpRequest {
    #[prost(string, tag = "2")]
    pub method: String,
    #[prost(message, repeated, tag = "3")]
    pub headers: Vec<Entry>,
    #[prost(string, tag = "4")]
    pub path: String,
    #[prost(string, tag = "5")]
    pub host: String,
    /// The headers as a list, one entry per header line, instead of `headers`: what Envoy
    /// sends with ext_authz's `encode_raw_headers: true`. [`CheckRequest::fold_raw_headers`]
    /// moves them into `headers`.
    #[prost(message, optional, tag = "13")]
    pub header_map: Option<HeaderMap>,
}

/// `envoy.config.core.v3.HeaderMap`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct HeaderMap {
    #[prost(message, repeated, tag = "1")]
    pub headers: Vec<RawHeader>,
}

/// `envoy.config.core.v3.HeaderValue`: Envoy fills `key` and `raw_value`.
#[derive(Clone, PartialEq, prost::Message)]
pub struct RawHeader {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
    #[prost(bytes = "vec", tag = "3")]
    pub raw_value: Vec<u8>,
}

impl HttpRequest {
    /// Moves the header list of `encode_raw_headers` into `headers`, as the map Envoy sends
    /// otherwise would have carried them: one entry per name (lower case), the values of a
    /// name sent more than once joined by `,` in the order sent, and each byte that is not
    /// part of valid UTF-8 replaced by `!`. A decision therefore reads the same request
    /// whichever encoding Envoy is configured with (two `authorization` headers are one
    /// value, refused as ambiguous in both, never the last one alone).
    pub fn fold_raw_headers(&mut self) {
        let Some(map) = self.header_map.take() else {
            return;
        };
        for RawHeader {
            mut key,
            value,
            raw_value,
        } in map.headers
        {
            key.make_ascii_lowercase();
            let value = match raw_value.is_empty() {
                true => value,
                false => sanitized(raw_value),
            };
            match self.headers.iter_mut().find(|e| e.key == key) {
                Some(entry) => {
                    entry.value.push(',');
                    entry.value.push_str(&value);
                }
                None => self.headers.push(Entry { key, value }),
            }
        }
    }
}

/// `bytes` as UTF-8, each byte of an invalid sequence replaced by `!` (as Envoy sanitises the
/// values of the header map).
fn sanitized(bytes: Vec<u8>) -> String {
    match String::from_utf8(bytes) {
        Ok(s) => s,
        Err(e) => {
            let bytes = e.into_bytes();
            let mut out = String::with_capacity(bytes.len());
            for chunk in bytes.utf8_chunks() {
                out.push_str(chunk.valid());
                out.extend(std::iter::repeat_n('!', chunk.invalid().len()));
            }
            out
        }
    }
}

/// One entry of a `map<string, string>` as it is on the wire (a message of a key and a value).
#[derive(Clone, PartialEq, prost::Message)]
pub struct Entry {
    #[prost(string, tag = "1")]
    pub key: String,
    #[prost(string, tag = "2")]
    pub value: String,
}

/// The value of `name` among `entries` (the last one when it was sent twice).
pub fn lookup<'a>(entries: &'a [Entry], name: &str) -> Option<&'a str> {
    entries
        .iter()
        .rev()
        .find(|e| e.key == name)
        .map(|e| e.value.as_str())
}

impl CheckRequest {
    /// A full `CheckRequest` read the way the server reads Envoy's message: encoded, then
    /// decoded as this type, its raw headers folded (for tests and tools that build the full
    /// message).
    pub fn read(full: &super::CheckRequest) -> Self {
        use prost::Message;
        let mut read = Self::decode(full.encode_to_vec().as_slice())
            .expect("a message encoded by prost decodes as a subset of its fields");
        read.fold_raw_headers();
        read
    }

    /// The checked HTTP request, when there is one.
    pub fn http(&self) -> Option<&HttpRequest> {
        self.attributes.as_ref()?.request.as_ref()?.http.as_ref()
    }

    /// [`HttpRequest::fold_raw_headers`] on the request's HTTP part: what the server does with
    /// each Check before anything reads its headers.
    pub fn fold_raw_headers(&mut self) {
        let http = self.attributes.as_mut().and_then(|a| a.request.as_mut());
        if let Some(http) = http.and_then(|r| r.http.as_mut()) {
            http.fold_raw_headers();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::super::attribute_context::{self as full, HttpRequest as FullHttp};
    use super::*;
    use envoy_types::pb::envoy::config::core::v3::{
        Address as FullAddress, Pipe, SocketAddress as FullSocket, address, socket_address,
    };

    fn full_request() -> super::super::CheckRequest {
        super::super::CheckRequest {
            attributes: Some(super::super::AttributeContext {
                source: Some(full::Peer {
                    address: Some(FullAddress {
                        address: Some(address::Address::SocketAddress(FullSocket {
                            address: "203.0.113.7".into(),
                            port_specifier: Some(socket_address::PortSpecifier::PortValue(40_000)),
                            ..Default::default()
                        })),
                    }),
                    service: "client".into(),
                    principal: "spiffe://example/client".into(),
                    certificate: "-----BEGIN CERTIFICATE-----".into(),
                    ..Default::default()
                }),
                destination: Some(full::Peer {
                    principal: "server".into(),
                    ..Default::default()
                }),
                request: Some(full::Request {
                    time: Some(Default::default()),
                    http: Some(FullHttp {
                        id: "1234".into(),
                        method: "POST".into(),
                        headers: [("authorization", "Bearer t"), ("x-api-key", "k")]
                            .into_iter()
                            .map(|(k, v)| (k.to_string(), v.to_string()))
                            .collect(),
                        path: "/api/v1?x=1".into(),
                        host: "api.example.com".into(),
                        scheme: "https".into(),
                        protocol: "HTTP/1.1".into(),
                        size: 12,
                        body: "ignored".into(),
                        ..Default::default()
                    }),
                }),
                context_extensions: [("tollgate.rule".to_string(), "api".to_string())]
                    .into_iter()
                    .collect(),
                ..Default::default()
            }),
        }
    }

    #[test]
    fn reads_the_fields_envoy_types_encodes() {
        let read = CheckRequest::read(&full_request());
        let attrs = read.attributes.unwrap();
        let http = attrs.request.unwrap().http.unwrap();
        assert_eq!(http.method, "POST");
        assert_eq!(http.path, "/api/v1?x=1");
        assert_eq!(http.host, "api.example.com");
        assert_eq!(lookup(&http.headers, "authorization"), Some("Bearer t"));
        assert_eq!(lookup(&http.headers, "x-api-key"), Some("k"));
        assert_eq!(lookup(&http.headers, "cookie"), None);
        assert_eq!(http.headers.len(), 2);
        assert_eq!(
            lookup(&attrs.context_extensions, "tollgate.rule"),
            Some("api")
        );
        let source = attrs.source.unwrap();
        assert_eq!(source.principal, "spiffe://example/client");
        assert_eq!(source.certificate, "-----BEGIN CERTIFICATE-----");
        assert_eq!(
            source.address.unwrap().socket_address.unwrap().address,
            "203.0.113.7"
        );
    }

    #[test]
    fn a_pipe_source_has_no_socket_address() {
        let mut req = full_request();
        let attrs = req.attributes.as_mut().unwrap();
        attrs.source.as_mut().unwrap().address = Some(FullAddress {
            address: Some(address::Address::Pipe(Pipe {
                path: "/run/envoy.sock".into(),
                mode: 0,
            })),
        });
        let read = CheckRequest::read(&req);
        let source = read.attributes.unwrap().source.unwrap();
        assert_eq!(source.address.unwrap().socket_address, None);
    }

    /// A request as Envoy sends it with `encode_raw_headers: true`.
    fn raw(headers: &[(&str, &[u8])]) -> super::super::CheckRequest {
        use envoy_types::pb::envoy::config::core::v3::{HeaderMap as FullMap, HeaderValue};
        let mut req = full_request();
        let http = req.attributes.as_mut().unwrap().request.as_mut().unwrap();
        let http = http.http.as_mut().unwrap();
        http.headers.clear();
        http.header_map = Some(FullMap {
            headers: headers
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: k.to_string(),
                    raw_value: v.to_vec(),
                    ..Default::default()
                })
                .collect(),
        });
        req
    }

    fn headers_of(read: CheckRequest) -> Vec<(String, String)> {
        let http = read.attributes.unwrap().request.unwrap().http.unwrap();
        assert_eq!(http.header_map, None, "folded into headers");
        http.headers.into_iter().map(|e| (e.key, e.value)).collect()
    }

    #[test]
    fn raw_headers_fold_into_the_map_envoy_would_have_sent() {
        let read = CheckRequest::read(&raw(&[
            (":authority", b"api.example.com"),
            ("authorization", b"Bearer a"),
            ("x-forwarded-for", b"198.51.100.1"),
            ("authorization", b"Bearer b"),
            ("X-Api-Key", b"k"),
            ("x-forwarded-for", b"203.0.113.9"),
        ]));
        let headers = headers_of(read);
        let want = [
            (":authority", "api.example.com"),
            ("authorization", "Bearer a,Bearer b"),
            ("x-forwarded-for", "198.51.100.1,203.0.113.9"),
            ("x-api-key", "k"),
        ];
        assert_eq!(
            headers,
            want.map(|(k, v)| (k.to_string(), v.to_string())).to_vec()
        );
    }

    #[test]
    fn raw_values_that_are_not_utf8_have_each_bad_byte_replaced() {
        let read = CheckRequest::read(&raw(&[
            ("x-a", b"ok\xff\xfe-\xc3"),
            ("x-b", "é".as_bytes()),
        ]));
        assert_eq!(
            headers_of(read),
            [
                ("x-a".to_string(), "ok!!-!".to_string()),
                ("x-b".to_string(), "é".to_string())
            ]
        );
    }

    #[test]
    fn a_request_without_raw_headers_keeps_its_map() {
        let read = CheckRequest::read(&full_request());
        assert_eq!(headers_of(read).len(), 2);
    }

    #[test]
    fn a_name_sent_twice_reads_as_its_last_entry() {
        use prost::Message;
        // Two entries for one key, as a map decoder would see them: the last one wins.
        let http = HttpRequest {
            headers: vec![
                Entry {
                    key: "x-a".into(),
                    value: "first".into(),
                },
                Entry {
                    key: "x-a".into(),
                    value: "second".into(),
                },
            ],
            ..Default::default()
        };
        let bytes = http.encode_to_vec();
        let as_map = FullHttp::decode(bytes.as_slice()).unwrap();
        assert_eq!(as_map.headers["x-a"], "second");
        assert_eq!(
            lookup(
                &HttpRequest::decode(bytes.as_slice()).unwrap().headers,
                "x-a"
            ),
            Some("second")
        );
    }
}
