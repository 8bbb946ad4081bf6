//! `envoy.service.auth.v3`: the Check API Envoy's ext_authz filter calls, and response builders.

use std::collections::HashMap;

use envoy_types::pb::envoy::config::core::v3::{
    HeaderValue, HeaderValueOption, header_value_option::HeaderAppendAction,
};
pub use envoy_types::pb::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, CheckResponse, DeniedHttpResponse, OkHttpResponse,
    attribute_context,
    authorization_client::AuthorizationClient,
    authorization_server::{Authorization, AuthorizationServer},
    check_response::HttpResponse,
};
use envoy_types::pb::envoy::r#type::v3::{HttpStatus, StatusCode};
use envoy_types::pb::google::protobuf::Struct;
use envoy_types::pb::google::rpc;

use crate::rpc_code;

/// The parts of a CheckRequest a decision looks at, borrowed from the request.
#[derive(Debug, Clone, Copy)]
pub struct HttpView<'a> {
    pub method: &'a str,
    pub host: &'a str,
    /// The path as Envoy normalised it, without the query string.
    pub path: &'a str,
    /// The query string, without the leading `?` (empty when absent).
    pub query: &'a str,
    /// Request headers; Envoy lower-cases their names.
    pub headers: &'a HashMap<String, String>,
    /// `context_extensions` set on the route or virtual host.
    pub context_extensions: &'a HashMap<String, String>,
    /// The downstream peer address, when Envoy sent it.
    pub source_address: Option<&'a str>,
}

impl<'a> HttpView<'a> {
    /// Extracts the HTTP view of a CheckRequest; `None` when the request carries no HTTP attributes
    /// (a malformed or non-HTTP check), which callers deny.
    pub fn of(req: &'a CheckRequest) -> Option<Self> {
        static EMPTY: std::sync::OnceLock<HashMap<String, String>> = std::sync::OnceLock::new();
        let attrs = req.attributes.as_ref()?;
        let http = attrs.request.as_ref()?.http.as_ref()?;
        let (path, query) = split_path(&http.path);
        let source_address = attrs
            .source
            .as_ref()
            .and_then(|p| p.address.as_ref())
            .and_then(|a| a.address.as_ref())
            .and_then(|a| match a {
                envoy_types::pb::envoy::config::core::v3::address::Address::SocketAddress(s) => {
                    Some(s.address.as_str())
                }
                _ => None,
            });
        Some(Self {
            method: &http.method,
            host: &http.host,
            path,
            query,
            headers: &http.headers,
            context_extensions: if attrs.context_extensions.is_empty() {
                EMPTY.get_or_init(HashMap::new)
            } else {
                &attrs.context_extensions
            },
            source_address,
        })
    }

    /// A header value by lower-case name.
    pub fn header(&self, name: &str) -> Option<&'a str> {
        self.headers.get(name).map(String::as_str)
    }
}

fn split_path(p: &str) -> (&str, &str) {
    match p.split_once('?') {
        Some((path, query)) => (path, query),
        None => (p, ""),
    }
}

/// A header to add (replacing any existing value).
pub fn header(key: impl Into<String>, value: impl Into<String>) -> HeaderValueOption {
    HeaderValueOption {
        header: Some(HeaderValue {
            key: key.into(),
            value: value.into(),
            raw_value: vec![],
        }),
        append_action: HeaderAppendAction::OverwriteIfExistsOrAdd as i32,
        ..Default::default()
    }
}

/// An OK CheckResponse.
///
/// `set_headers` go to the upstream request (overwriting), `remove_headers` are stripped from it
/// first, so identity headers a client sent can never reach the upstream.
pub fn ok_response(
    set_headers: Vec<HeaderValueOption>,
    remove_headers: Vec<String>,
    dynamic_metadata: Option<Struct>,
) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: rpc_code::OK,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: set_headers,
            headers_to_remove: remove_headers,
            ..Default::default()
        })),
        dynamic_metadata,
    }
}

/// A denied CheckResponse: Envoy answers the client with `http_status`, these headers and body.
pub fn denied_response(
    rpc_status: i32,
    http_status: u16,
    headers: Vec<HeaderValueOption>,
    body: String,
) -> CheckResponse {
    CheckResponse {
        status: Some(rpc::Status {
            code: rpc_status,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: http_status_code(http_status),
            }),
            headers,
            body,
        })),
        dynamic_metadata: None,
    }
}

/// Maps a numeric HTTP status to Envoy's `StatusCode` enum value (403 when unknown).
pub fn http_status_code(code: u16) -> i32 {
    StatusCode::try_from(code as i32)
        .map(|c| c as i32)
        .unwrap_or(StatusCode::Forbidden as i32)
}
