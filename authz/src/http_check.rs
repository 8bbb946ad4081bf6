//! The HTTP ext_authz adapter (Envoy's `http_service` flavour): the check request Envoy sends
//! (the client's method, `path_prefix` + the client's path and query, its `Host`, the headers
//! `authorization_request.allowed_headers` lets through, the trusted client address in
//! [`SOURCE_ADDRESS_HEADER`]) read as a [`RequestView`]; the [`Decision`] written back as the
//! answer Envoy reads:
//!
//! - allowed: `200`, each identity header as a response header (Envoy copies those matching
//!   `allowed_upstream_headers` onto the upstream request, replacing the client's), the ones
//!   this identity has no value for (and the credential, with `headers.remove_credential`)
//!   named in `x-envoy-auth-headers-to-remove`, the dynamic metadata as
//!   [`METADATA_PREFIX`]`<key>` headers (Envoy's `dynamic_metadata_from_headers`), and the
//!   client's response headers (`allowed_client_headers_on_success`);
//! - denied: the status, the challenge and the other response headers
//!   (`allowed_client_headers`), the body.
//!
//! Nothing else happens here: the decision, its metrics and log lines are the shared path's.
//! What this flavour cannot carry is refused by the config instead (removing a query
//! parameter, see `Config::validate`).

use std::net::{IpAddr, SocketAddr};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;
use axum::body::Body;
use axum::extract::{Request, State};
use axum::http::{HeaderMap, HeaderName, HeaderValue, StatusCode};
use axum::response::Response;
use serde::Deserialize;
use tollgate_common::config::{Errors, Validate, join};
use tollgate_server::tls::TlsConfig;

use crate::check::{Authorizer, Decision, MetadataValue, PeerCertificate, RequestView};

/// The check-request header carrying the client's address. Envoy sets it from
/// `%DOWNSTREAM_REMOTE_ADDRESS_WITHOUT_PORT%` (`authorization_request.headers_to_add`, which
/// overwrites a client's own): the address gRPC mode gets as the request's `source`.
pub const SOURCE_ADDRESS_HEADER: &str = "x-tollgate-source-address";

/// The check-request header carrying the client certificate the proxy verified, URL-encoded
/// PEM. Envoy sets it from `%DOWNSTREAM_PEER_CERT%` (`authorization_request.headers_to_add`,
/// overwriting a client's own; empty, and so not sent, without a certificate): what gRPC mode
/// gets with `include_peer_certificate`.
pub const PEER_CERTIFICATE_HEADER: &str = "x-tollgate-peer-certificate";

/// The prefix of the answer headers that carry dynamic metadata (`x-tollgate-metadata-plan`,
/// ...; a struct's fields as `<key>.<field>`). Envoy files each under its header name in the
/// `envoy.filters.http.ext_authz` namespace.
pub const METADATA_PREFIX: &str = "x-tollgate-metadata-";

/// The answer header naming the headers Envoy removes from the upstream request.
pub const HEADERS_TO_REMOVE: &str = "x-envoy-auth-headers-to-remove";

const ALPN: &[&[u8]] = &[b"h2", b"http/1.1"];

fn default_addr() -> SocketAddr {
    SocketAddr::from(([127, 0, 0, 1], 9003))
}
fn default_max_connections() -> usize {
    1024
}
fn default_header_timeout() -> Duration {
    Duration::from_secs(10)
}

/// The `http_authz:` config section: the listener Envoy's `http_service` calls.
#[derive(Debug, Clone, Deserialize, PartialEq, Eq)]
#[serde(deny_unknown_fields)]
pub struct HttpAuthzConfig {
    #[serde(default = "default_addr")]
    pub addr: SocketAddr,
    /// Envoy's `http_service.path_prefix`: taken off the check request's path to give the
    /// client's. A check whose path does not start with it is refused (403).
    #[serde(default)]
    pub path_prefix: String,
    /// TLS (and mTLS with `client_ca_file`), reloaded when the files change.
    #[serde(default)]
    pub tls: Option<TlsConfig>,
    /// Most connections held open (also at most a quarter of the file-descriptor limit); past
    /// it a new one closes the oldest idle one. Envoy opens one per concurrent check over
    /// HTTP/1.1, per worker.
    #[serde(default = "default_max_connections")]
    pub max_connections: usize,
    /// How long a client may take to send a request's headers; also how long a connection
    /// may sit idle between requests (keep Envoy's `idle_timeout` for the cluster below it).
    #[serde(default = "default_header_timeout", with = "humantime_serde")]
    pub header_timeout: Duration,
}

impl Default for HttpAuthzConfig {
    fn default() -> Self {
        Self {
            addr: default_addr(),
            path_prefix: String::new(),
            tls: None,
            max_connections: default_max_connections(),
            header_timeout: default_header_timeout(),
        }
    }
}

impl Validate for HttpAuthzConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        let p = &self.path_prefix;
        if !p.is_empty() && (!p.starts_with('/') || p.ends_with('/') || p.contains(['?', '#'])) {
            errors.push(
                join(at, "path_prefix"),
                "expected empty or a path like `/check` (a leading `/`, no trailing `/`, no `?`)",
            );
        }
        if let Some(tls) = &self.tls {
            tls.validate(&join(at, "tls"), errors);
        }
        if self.max_connections == 0 {
            errors.push(join(at, "max_connections"), "must be at least 1");
        }
        if self.header_timeout.is_zero() {
            errors.push(join(at, "header_timeout"), "must be greater than 0");
        }
    }
}

impl HttpAuthzConfig {
    fn limits(&self) -> tollgate_server::conns::HttpLimits {
        tollgate_server::conns::HttpLimits {
            listener: "http_authz",
            max_connections: self.max_connections,
            header_timeout: self.header_timeout,
        }
    }

    /// Whether `name` (an identity header) would be read by Envoy as something else.
    pub(crate) fn reserved(name: &str) -> bool {
        let n = name.to_ascii_lowercase();
        n.starts_with(METADATA_PREFIX)
            || n == HEADERS_TO_REMOVE
            || n == SOURCE_ADDRESS_HEADER
            || n == PEER_CERTIFICATE_HEADER
    }
}

/// Why the listener could not start.
#[derive(Debug, thiserror::Error)]
pub enum HttpAuthzError {
    #[error("cannot bind the HTTP ext_authz listener on {addr}: {source}")]
    Bind {
        addr: SocketAddr,
        source: std::io::Error,
    },
    #[error(transparent)]
    Tls(#[from] tollgate_common::tls::TlsError),
}

/// The listener, bound and not yet serving.
pub(crate) struct Listener {
    pub(crate) addr: SocketAddr,
    listener: tokio::net::TcpListener,
    tls: Option<tollgate_server::tls::ReloadingAcceptor>,
    cfg: HttpAuthzConfig,
}

impl std::fmt::Debug for Listener {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Listener")
            .field("addr", &self.addr)
            .finish_non_exhaustive()
    }
}

/// Binds the listener and loads its TLS material.
pub(crate) async fn bind(cfg: &HttpAuthzConfig) -> Result<Listener, HttpAuthzError> {
    let tls = cfg
        .tls
        .as_ref()
        .map(|t| tollgate_server::tls::ReloadingAcceptor::new(t, ALPN))
        .transpose()?;
    let bind_err = |source| HttpAuthzError::Bind {
        addr: cfg.addr,
        source,
    };
    let listener = tokio::net::TcpListener::bind(cfg.addr)
        .await
        .map_err(bind_err)?;
    let addr = listener.local_addr().map_err(bind_err)?;
    Ok(Listener {
        addr,
        listener,
        tls,
        cfg: cfg.clone(),
    })
}

impl Listener {
    /// Serves checks until `stop` triggers, then lets open ones finish.
    pub(crate) fn serve(
        self,
        authorizer: Arc<Authorizer>,
        stop: tollgate_common::Shutdown,
    ) -> impl std::future::Future<Output = ()> + Send + 'static {
        let router = router(authorizer, &self.cfg.path_prefix);
        tollgate_server::conns::serve_listener(
            self.listener,
            self.tls,
            router,
            self.cfg.limits(),
            stop,
        )
    }
}

#[derive(Clone)]
struct Checker {
    authorizer: Arc<Authorizer>,
    prefix: Arc<str>,
}

/// Every method on every path is a check (Envoy keeps the client's method and path).
fn router(authorizer: Arc<Authorizer>, path_prefix: &str) -> Router {
    Router::new().fallback(check).with_state(Checker {
        authorizer,
        prefix: path_prefix.into(),
    })
}

async fn check(State(c): State<Checker>, req: Request) -> Response {
    let (parts, _body) = req.into_parts();
    let view = Http::of(&parts, &c.prefix);
    let decide = async {
        match &view {
            Some(v) => c.authorizer.check(v).await,
            None => c.authorizer.refuse_unreadable(),
        }
    };
    let decision = if tollgate_common::trace::enabled() {
        // Envoy's span for this call is in the check request's own headers.
        let span = tollgate_server::trace::server_span(
            "envoy ext_authz http check",
            &tonic::metadata::MetadataMap::new(),
            |k| parts.headers.get(k).and_then(|v| v.to_str().ok()),
        );
        tracing::Instrument::instrument(decide, span).await
    } else {
        decide.await
    };
    answer(decision)
}

/// A check request as the decision reads it.
struct Http<'a> {
    method: &'a str,
    host: &'a str,
    path: &'a str,
    query: &'a str,
    headers: &'a HeaderMap,
}

impl<'a> Http<'a> {
    /// `None` when the path does not start with the configured prefix.
    fn of(parts: &'a axum::http::request::Parts, prefix: &str) -> Option<Self> {
        let path = parts.uri.path().strip_prefix(prefix)?;
        if !path.starts_with('/') {
            return None;
        }
        let host = parts
            .headers
            .get(axum::http::header::HOST)
            .and_then(|h| h.to_str().ok())
            .or_else(|| parts.uri.authority().map(|a| a.as_str()))
            .unwrap_or("");
        Some(Self {
            method: parts.method.as_str(),
            host,
            path,
            query: parts.uri.query().unwrap_or(""),
            headers: &parts.headers,
        })
    }
}

impl RequestView for Http<'_> {
    fn method(&self) -> &str {
        self.method
    }
    fn host(&self) -> &str {
        self.host
    }
    fn path(&self) -> &str {
        self.path
    }
    fn query(&self) -> &str {
        self.query
    }
    fn header(&self, name: &str) -> Option<&str> {
        // A value that is not visible ASCII reads as absent: no credential has one.
        self.headers.get(name).and_then(|v| v.to_str().ok())
    }
    fn header_repeated(&self, name: &str) -> bool {
        let mut values = self.headers.get_all(name).iter();
        match (values.next(), values.next()) {
            (Some(_), Some(_)) => true,
            (Some(v), None) => v.as_bytes().contains(&b','),
            _ => false,
        }
    }
    fn source_address(&self) -> Option<&str> {
        let v = self.header(SOURCE_ADDRESS_HEADER)?;
        v.parse::<IpAddr>().is_ok().then_some(v)
    }
    fn peer_certificate(&self) -> Option<PeerCertificate<'_>> {
        // No principal over HTTP: the identity takes Envoy's (first URI SAN, else DNS SAN,
        // else subject) from the certificate itself.
        let pem = self
            .header(PEER_CERTIFICATE_HEADER)
            .filter(|v| !v.is_empty())?;
        Some(PeerCertificate {
            principal: "",
            pem: Some(pem),
        })
    }
}

/// The answer Envoy reads for `decision`.
fn answer(decision: Decision) -> Response {
    let mut headers = HeaderMap::new();
    metadata_headers(&decision, &mut headers);
    let (status, body) = match decision {
        Decision::Allow(a) => {
            let mut remove: Vec<String> = a.remove_headers.iter().map(|n| n.to_string()).collect();
            for (name, value) in a.set_headers {
                match (header_name(&name), HeaderValue::from_str(&value)) {
                    (Some(n), Ok(v)) => {
                        headers.insert(n, v);
                    }
                    // Set or removed, never left as the client sent it.
                    _ => remove.push(name.to_string()),
                }
            }
            // `remove_query` is empty here: the config refuses `remove_credential` for a query
            // API key when this listener is on, since Envoy cannot act on it over HTTP.
            for (name, value) in a.response_headers {
                append(&mut headers, name, &value);
            }
            if !remove.is_empty()
                && let Ok(v) = HeaderValue::from_str(&remove.join(","))
            {
                headers.insert(HeaderName::from_static(HEADERS_TO_REMOVE), v);
            }
            (StatusCode::OK, String::new())
        }
        Decision::Deny(d) => {
            for (name, value) in d.headers {
                append(&mut headers, name, &value);
            }
            let status = StatusCode::from_u16(d.status).unwrap_or(StatusCode::FORBIDDEN);
            (status, d.body)
        }
    };
    let mut response = Response::new(Body::from(body));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}

fn header_name(name: &str) -> Option<HeaderName> {
    HeaderName::from_bytes(name.as_bytes()).ok()
}

fn append(headers: &mut HeaderMap, name: &str, value: &str) {
    if let (Some(n), Ok(v)) = (header_name(name), HeaderValue::from_str(value)) {
        headers.append(n, v);
    }
}

/// The dynamic metadata as headers: strings as they are, numbers in decimal, lists joined
/// with `,`, a struct's fields as `<key>.<field>`.
fn metadata_headers(d: &Decision, headers: &mut HeaderMap) {
    fn put(headers: &mut HeaderMap, key: &str, v: &MetadataValue<'_>) {
        let text = match v {
            MetadataValue::String(s) => s.to_string(),
            MetadataValue::Number(n) => n.to_string(),
            MetadataValue::List(items) => items.join(","),
            MetadataValue::Struct(fields) => {
                for (field, value) in fields {
                    put(headers, &format!("{key}.{field}"), value);
                }
                return;
            }
        };
        append(headers, &format!("{METADATA_PREFIX}{key}"), &text);
    }
    for (key, value) in d.metadata() {
        put(headers, key, &value);
    }
}

#[cfg(test)]
mod tests;
