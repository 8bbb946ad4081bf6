//! The request as a decision reads it, whatever carried it: a gRPC `CheckRequest`, an HTTP
//! ext_authz call, or an Envoy dynamic module reading Envoy's own header map. Each adapter
//! implements [`RequestView`] over what it holds, borrowing rather than copying.

/// One request to decide on.
///
/// Header names are asked for in lower case. What the proxy has normalised (the path, the
/// host) is taken as the proxy left it; the decision normalises again where an upstream could
/// read it differently (see `path`).
pub trait RequestView: Sync {
    /// The HTTP method, upper case (`GET`).
    fn method(&self) -> &str;
    /// The `Host` (`:authority`), as sent, possibly with a port.
    fn host(&self) -> &str;
    /// The path as the proxy normalised it, without the query string.
    fn path(&self) -> &str;
    /// The query string without the leading `?` (empty when there is none).
    fn query(&self) -> &str;
    /// A header's value. A header sent more than once is whatever the adapter has for it:
    /// the proxy's comma-joined value or its first value (see [`Self::header_repeated`]).
    fn header(&self, name: &str) -> Option<&str>;
    /// Whether `name` was (or may have been) sent more than once. Where the proxy joins
    /// repeated headers with `,` only the joined value is left, so a `,` in it counts as a
    /// repetition: a credential never contains one.
    fn header_repeated(&self, name: &str) -> bool {
        self.header(name).is_some_and(|v| v.contains(','))
    }
    /// What the route asks of the decision (its per-route settings).
    fn route(&self) -> RouteSettings<'_> {
        RouteSettings::default()
    }
    /// The client's address as the proxy trusts it (the connection's peer, or the address
    /// its `X-Forwarded-For` handling settled on), without a port.
    fn source_address(&self) -> Option<&str> {
        None
    }
    /// What the proxy says about the client's TLS certificate, when it says anything.
    fn peer_certificate(&self) -> Option<PeerCertificate<'_>> {
        None
    }
    /// The proxy's request id (`x-request-id`), for log lines; empty when absent.
    fn request_id(&self) -> &str {
        self.header("x-request-id").unwrap_or("")
    }
}

/// A route's settings for the decision. Over gRPC they arrive as `context_extensions`
/// ([`extensions`]); an Envoy module reads them from its per-route config.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RouteSettings<'a> {
    /// Use this policy rule instead of matching one.
    pub rule: Option<&'a str>,
    /// Comma-separated identity methods, in order, replacing the rule's.
    pub identity: Option<&'a str>,
    /// Space-separated scopes required on top of the rule's conditions.
    pub scopes: Option<&'a str>,
    /// No checks on this route: allowed as anonymous (identity headers still removed), and
    /// not rate limited.
    pub disabled: bool,
}

/// The client certificate as the proxy describes it.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct PeerCertificate<'a> {
    /// The proxy's name for the peer (Envoy: the first URI SAN, else the first DNS SAN, else
    /// the subject).
    pub principal: &'a str,
    /// The certificate itself, URL-encoded PEM, when the proxy is set to send it (Envoy:
    /// `include_peer_certificate`).
    pub pem: Option<&'a str>,
}

/// The `context_extensions` keys a route may set in its ext_authz per-route config (gRPC).
pub mod extensions {
    /// Use the named policy rule instead of matching.
    pub const RULE: &str = "tollgate.rule";
    /// Comma-separated identity methods, in order, replacing the rule's.
    pub const IDENTITY: &str = "tollgate.identity";
    /// Space-separated scopes required on top of the rule's conditions.
    pub const SCOPES: &str = "tollgate.scopes";
    /// `"true"`: no checks on this route (see [`super::RouteSettings::disabled`]).
    pub const DISABLED: &str = "tollgate.disabled";
}

/// A plain request, owned: for tests and for callers that build a request by hand.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct OwnedRequest {
    pub method: String,
    pub host: String,
    pub path: String,
    pub query: String,
    /// Lower-case names; a name listed twice was sent twice.
    pub headers: Vec<(String, String)>,
    pub rule: Option<String>,
    pub identity: Option<String>,
    pub scopes: Option<String>,
    pub disabled: bool,
    pub source_address: Option<String>,
}

impl OwnedRequest {
    /// A `method` request for `path_and_query` on `api.example.com`.
    pub fn new(method: &str, path_and_query: &str) -> Self {
        let (path, query) = path_and_query
            .split_once('?')
            .unwrap_or((path_and_query, ""));
        Self {
            method: method.into(),
            host: "api.example.com".into(),
            path: path.into(),
            query: query.into(),
            ..Default::default()
        }
    }

    /// With one more header.
    pub fn header(mut self, name: &str, value: &str) -> Self {
        self.headers
            .push((name.to_ascii_lowercase(), value.to_string()));
        self
    }
}

impl RequestView for OwnedRequest {
    fn method(&self) -> &str {
        &self.method
    }
    fn host(&self) -> &str {
        &self.host
    }
    fn path(&self) -> &str {
        &self.path
    }
    fn query(&self) -> &str {
        &self.query
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.headers
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
    fn header_repeated(&self, name: &str) -> bool {
        let mut values = self.headers.iter().filter(|(n, _)| n == name);
        match (values.next(), values.next()) {
            (Some(_), Some(_)) => true,
            (Some((_, v)), None) => v.contains(','),
            _ => false,
        }
    }
    fn route(&self) -> RouteSettings<'_> {
        RouteSettings {
            rule: self.rule.as_deref(),
            identity: self.identity.as_deref(),
            scopes: self.scopes.as_deref(),
            disabled: self.disabled,
        }
    }
    fn source_address(&self) -> Option<&str> {
        self.source_address.as_deref()
    }
}
