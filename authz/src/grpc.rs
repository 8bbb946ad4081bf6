//! The gRPC Check adapter (`envoy.service.auth.v3.Authorization/Check`): the server
//! ([`CheckServer`]) decodes each `CheckRequest` as [`read::CheckRequest`] (only the fields a
//! decision reads, maps kept as their entries), reads it as a [`RequestView`] (nothing copied),
//! and writes the [`Decision`] back as the bytes of its `CheckResponse` ([`Answer`], written
//! from the decision without building the message). Nothing else happens here: the decision,
//! its metrics and log lines are the shared path's.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};

use prost::Message;
use tollgate_proto::auth::read::{self, Entry, HttpRequest, Peer};
use tollgate_proto::auth::{CheckRequest, CheckResponse};
use tollgate_proto::rpc_code;
use tonic::codegen::{Body, Service, StdError};
use tonic::server::{Grpc as GrpcServer, NamedService, UnaryService};

use crate::check::{Authorizer, Decision, PeerCertificate, RequestView, RouteSettings, extensions};

mod wire;
#[cfg(test)]
mod wire_tests;

pub use wire::Answer;

/// The Check service: what the server does for each call, minus the transport.
#[derive(Debug, Clone)]
pub struct AuthzService {
    inner: Arc<Authorizer>,
}

impl AuthzService {
    pub fn new(inner: Arc<Authorizer>) -> Self {
        Self { inner }
    }

    /// Answers one Check, read as the server reads it, with the encoded `CheckResponse`.
    pub async fn answer(&self, req: &read::CheckRequest) -> Answer {
        let decision = match Grpc::of(req) {
            Some(view) => self.inner.check(&view).await,
            None => self.inner.refuse_unreadable(),
        };
        Answer::of(&decision)
    }

    /// Answers a full `CheckRequest` as if it had come over the wire (encoded, read as the
    /// server reads it, the answer decoded as Envoy does): for tests and tools that build
    /// Envoy's message.
    pub async fn check(&self, req: &CheckRequest) -> CheckResponse {
        let answer = self.answer(&read::CheckRequest::read(req)).await;
        CheckResponse::decode(answer.bytes()).expect("an answer decodes as a CheckResponse")
    }

    async fn answer_traced(&self, request: tonic::Request<read::CheckRequest>) -> Answer {
        // Envoy's span for this call is in the gRPC metadata; without it, the client's trace
        // in the checked request's headers.
        let headers = request.get_ref().http().map(|h| h.headers.as_slice());
        let span = tollgate_server::trace::server_span(
            "envoy.service.auth.v3.Authorization/Check",
            request.metadata(),
            |k| headers.and_then(|h| read::lookup(h, k)),
        );
        let req = request.into_inner();
        tracing::Instrument::instrument(self.answer(&req), span).await
    }
}

/// The gRPC path of the one method served.
const CHECK_PATH: &str = "/envoy.service.auth.v3.Authorization/Check";

/// The `envoy.service.auth.v3.Authorization` gRPC service over an [`AuthzService`], as
/// tonic's generated server would serve it (the same codec defaults: no compression, 4 MiB
/// decoding limit) except that each Check is decoded as [`read::CheckRequest`].
#[derive(Debug, Clone)]
pub struct CheckServer {
    service: AuthzService,
}

impl CheckServer {
    pub fn new(service: AuthzService) -> Self {
        Self { service }
    }
}

impl NamedService for CheckServer {
    const NAME: &'static str = "envoy.service.auth.v3.Authorization";
}

type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send + 'static>>;

impl<B> Service<http::Request<B>> for CheckServer
where
    B: Body + Send + 'static,
    B::Error: Into<StdError> + Send + 'static,
{
    type Response = http::Response<tonic::body::Body>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: http::Request<B>) -> Self::Future {
        if req.uri().path() != CHECK_PATH {
            return Box::pin(async { Ok(unimplemented()) });
        }
        let method = Unary(self.service.clone());
        Box::pin(async move {
            let codec = tonic_prost::ProstCodec::<Answer, read::CheckRequest>::default();
            Ok(GrpcServer::new(codec).unary(method, req).await)
        })
    }
}

/// The answer to a method this service does not have.
fn unimplemented() -> http::Response<tonic::body::Body> {
    tonic::Status::unimplemented("").into_http()
}

/// The Check method. Its future holds the message once besides the decision's own state;
/// the traced path is boxed apart, so its state never weighs on the untraced one.
pub(crate) struct Unary(pub(crate) AuthzService);

impl UnaryService<read::CheckRequest> for Unary {
    type Response = Answer;
    type Future = BoxFuture<Result<tonic::Response<Answer>, tonic::Status>>;

    fn call(&mut self, mut request: tonic::Request<read::CheckRequest>) -> Self::Future {
        let service = self.0.clone();
        request.get_mut().fold_raw_headers();
        if tollgate_common::trace::enabled() {
            return Box::pin(async move {
                Ok(tonic::Response::new(service.answer_traced(request).await))
            });
        }
        let req = request.into_inner();
        Box::pin(async move { Ok(tonic::Response::new(service.answer(&req).await)) })
    }
}

/// A `CheckRequest` as the decision reads it.
struct Grpc<'a> {
    http: &'a HttpRequest,
    path: &'a str,
    query: &'a str,
    extensions: &'a [Entry],
    source: Option<&'a Peer>,
}

impl<'a> Grpc<'a> {
    /// `None` when the check carries no HTTP request.
    fn of(req: &'a read::CheckRequest) -> Option<Self> {
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
        read::lookup(&self.http.headers, name)
    }
    fn route(&self) -> RouteSettings<'_> {
        if self.extensions.is_empty() {
            return RouteSettings::default();
        }
        let get = |k: &str| read::lookup(self.extensions, k);
        RouteSettings {
            rule: get(extensions::RULE),
            identity: get(extensions::IDENTITY),
            scopes: get(extensions::SCOPES),
            disabled: get(extensions::DISABLED) == Some("true"),
        }
    }
    fn source_address(&self) -> Option<&str> {
        let socket = self.source?.address.as_ref()?.socket_address.as_ref()?;
        Some(&socket.address)
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

/// The gRPC code of a decision's `CheckResponse.status`. Envoy answers the client with the
/// HTTP status; the gRPC code only says "not OK".
fn status_code(decision: &Decision) -> i32 {
    match decision {
        Decision::Allow(_) => rpc_code::OK,
        Decision::Deny(d) => match d.status {
            400 => rpc_code::INVALID_ARGUMENT,
            401 => rpc_code::UNAUTHENTICATED,
            429 => rpc_code::RESOURCE_EXHAUSTED,
            503 => rpc_code::UNAVAILABLE,
            _ => rpc_code::PERMISSION_DENIED,
        },
    }
}
