//! The gRPC Check adapter (`envoy.service.auth.v3.Authorization/Check`): a `CheckRequest` read
//! as a [`RequestView`] (nothing copied), the [`Decision`] written back as a `CheckResponse`.
//! Nothing else happens here: the decision, its metrics and log lines are the shared path's.

use std::collections::HashMap;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;

use tollgate_proto::auth::attribute_context::{HttpRequest, Peer};
use tollgate_proto::auth::{
    Authorization, CheckRequest, CheckResponse, DeniedHttpResponse, HttpResponse, OkHttpResponse,
    header, http_status_code,
};
use tollgate_proto::metadata;
use tollgate_proto::pb::envoy::config::core::v3::address::Address;
use tollgate_proto::pb::envoy::r#type::v3::HttpStatus;
use tollgate_proto::pb::google::protobuf::{Struct, Value};
use tollgate_proto::pb::google::rpc;
use tollgate_proto::rpc_code;

use crate::check::{
    Allow, Authorizer, Decision, Deny, MetadataValue, PeerCertificate, RequestView, RouteSettings,
    extensions,
};

/// The gRPC service.
#[derive(Debug, Clone)]
pub struct AuthzService {
    inner: Arc<Authorizer>,
}

impl AuthzService {
    pub fn new(inner: Arc<Authorizer>) -> Self {
        Self { inner }
    }

    /// Answers one Check (what the service does for each call, minus the transport).
    pub async fn check(&self, req: &CheckRequest) -> CheckResponse {
        let decision = match Grpc::of(req) {
            Some(view) => self.inner.check(&view).await,
            None => self.inner.refuse_unreadable(),
        };
        response(decision)
    }
}

// By hand rather than with `async_trait`: an async method's future would hold the request
// twice (the argument and the message taken out of it) besides the decision's own state, and
// the traced path's state too. This future, moved whole into each wrapper on its way to the
// connection's task, holds the message once; the traced path is boxed apart.
impl Authorization for AuthzService {
    fn check<'life0, 'async_trait>(
        &'life0 self,
        request: tonic::Request<CheckRequest>,
    ) -> Pin<
        Box<
            dyn Future<Output = Result<tonic::Response<CheckResponse>, tonic::Status>>
                + Send
                + 'async_trait,
        >,
    >
    where
        'life0: 'async_trait,
        Self: 'async_trait,
    {
        if tollgate_common::trace::enabled() {
            return Box::pin(self.check_traced(request));
        }
        let req = request.into_inner();
        Box::pin(async move { Ok(tonic::Response::new(AuthzService::check(self, &req).await)) })
    }
}

impl AuthzService {
    async fn check_traced(
        &self,
        request: tonic::Request<CheckRequest>,
    ) -> Result<tonic::Response<CheckResponse>, tonic::Status> {
        // Envoy's span for this call is in the gRPC metadata; without it, the client's trace
        // in the checked request's headers.
        let headers = request
            .get_ref()
            .attributes
            .as_ref()
            .and_then(|a| a.request.as_ref())
            .and_then(|r| r.http.as_ref())
            .map(|h| &h.headers);
        let span = tollgate_server::trace::server_span(
            "envoy.service.auth.v3.Authorization/Check",
            request.metadata(),
            |k| headers.and_then(|h| h.get(k)).map(String::as_str),
        );
        let req = request.into_inner();
        let answer = tracing::Instrument::instrument(AuthzService::check(self, &req), span).await;
        Ok(tonic::Response::new(answer))
    }
}

/// A `CheckRequest` as the decision reads it.
struct Grpc<'a> {
    http: &'a HttpRequest,
    path: &'a str,
    query: &'a str,
    extensions: &'a HashMap<String, String>,
    source: Option<&'a Peer>,
}

impl<'a> Grpc<'a> {
    /// `None` when the check carries no HTTP request.
    fn of(req: &'a CheckRequest) -> Option<Self> {
        let attrs = req.attributes.as_ref()?;
        let http = attrs.request.as_ref()?.http.as_ref()?;
        let (path, query) = http.path.split_once('?').unwrap_or((&http.path, ""));
        Some(Self {
            http,
            path,
            query,
            extensions: &attrs.context_extensions,
            source: attrs.source.as_ref(),
        })
    }
}

impl RequestView for Grpc<'_> {
    fn method(&self) -> &str {
        &self.http.method
    }
    fn host(&self) -> &str {
        &self.http.host
    }
    fn path(&self) -> &str {
        self.path
    }
    fn query(&self) -> &str {
        self.query
    }
    fn header(&self, name: &str) -> Option<&str> {
        self.http.headers.get(name).map(String::as_str)
    }
    fn route(&self) -> RouteSettings<'_> {
        if self.extensions.is_empty() {
            return RouteSettings::default();
        }
        let get = |k: &str| self.extensions.get(k).map(String::as_str);
        RouteSettings {
            rule: get(extensions::RULE),
            identity: get(extensions::IDENTITY),
            scopes: get(extensions::SCOPES),
            disabled: get(extensions::DISABLED) == Some("true"),
        }
    }
    fn source_address(&self) -> Option<&str> {
        match self.source?.address.as_ref()?.address.as_ref()? {
            Address::SocketAddress(s) => Some(&s.address),
            _ => None,
        }
    }
    fn peer_certificate(&self) -> Option<PeerCertificate<'_>> {
        let peer = self.source?;
        if peer.principal.is_empty() && peer.certificate.is_empty() {
            return None;
        }
        Some(PeerCertificate {
            principal: &peer.principal,
            pem: (!peer.certificate.is_empty()).then_some(peer.certificate.as_str()),
        })
    }
}

/// The `CheckResponse` of a decision.
fn response(decision: Decision) -> CheckResponse {
    let dynamic_metadata = dynamic_metadata(&decision);
    match decision {
        Decision::Allow(a) => allowed(a, dynamic_metadata),
        Decision::Deny(d) => denied(d, dynamic_metadata),
    }
}

fn allowed(a: Allow, dynamic_metadata: Option<Struct>) -> CheckResponse {
    let to_upstream = |(name, value): (Arc<str>, String)| header(name.to_string(), value);
    CheckResponse {
        status: Some(rpc::Status {
            code: rpc_code::OK,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::OkResponse(OkHttpResponse {
            headers: a.set_headers.into_iter().map(to_upstream).collect(),
            headers_to_remove: a.remove_headers.iter().map(|n| n.to_string()).collect(),
            query_parameters_to_remove: a.remove_query.iter().map(|q| q.to_string()).collect(),
            response_headers_to_add: a
                .response_headers
                .into_iter()
                .map(|(n, v)| header(n, v))
                .collect(),
            ..Default::default()
        })),
        dynamic_metadata,
    }
}

fn denied(d: Deny, dynamic_metadata: Option<Struct>) -> CheckResponse {
    // Envoy answers the client with the HTTP status; the gRPC code only says "not OK".
    let code = match d.status {
        400 => rpc_code::INVALID_ARGUMENT,
        401 => rpc_code::UNAUTHENTICATED,
        429 => rpc_code::RESOURCE_EXHAUSTED,
        503 => rpc_code::UNAVAILABLE,
        _ => rpc_code::PERMISSION_DENIED,
    };
    CheckResponse {
        status: Some(rpc::Status {
            code,
            ..Default::default()
        }),
        http_response: Some(HttpResponse::DeniedResponse(DeniedHttpResponse {
            status: Some(HttpStatus {
                code: http_status_code(d.status),
            }),
            headers: d.headers.into_iter().map(|(n, v)| header(n, v)).collect(),
            body: d.body,
        })),
        dynamic_metadata,
    }
}

fn dynamic_metadata(d: &Decision) -> Option<Struct> {
    let fields = d.metadata();
    (!fields.is_empty())
        .then(|| metadata::structure(fields.into_iter().map(|(k, v)| (k, value(v)))))
}

fn value(v: MetadataValue<'_>) -> Value {
    match v {
        MetadataValue::String(s) => metadata::string(s),
        MetadataValue::Number(n) => metadata::number(n),
        MetadataValue::List(items) => metadata::string_list(items),
        MetadataValue::Struct(fields) => metadata::struct_value(metadata::structure(
            fields.into_iter().map(|(k, v)| (k, value(v))),
        )),
    }
}
