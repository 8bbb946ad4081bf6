//! `envoy.service.auth.v3`: the Check API Envoy's ext_authz filter calls, and header builders.

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
use envoy_types::pb::envoy::r#type::v3::StatusCode;

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

/// Maps a numeric HTTP status to Envoy's `StatusCode` enum value (403 when unknown).
pub fn http_status_code(code: u16) -> i32 {
    StatusCode::try_from(code as i32)
        .map(|c| c as i32)
        .unwrap_or(StatusCode::Forbidden as i32)
}

pub mod read;
