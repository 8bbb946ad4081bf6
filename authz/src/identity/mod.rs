//! Who made a request: the identity every authentication method produces, and which the policy,
//! the upstream headers and Envoy's dynamic metadata are built from.

use std::time::SystemTime;

use crate::reason::Reason;

/// How the caller proved who they are.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, serde::Serialize, serde::Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Method {
    /// A JWT bearer token verified against an issuer's keys.
    Jwt,
    /// An opaque OAuth 2.0 token accepted by RFC 7662 introspection.
    Introspection,
    /// An API key from the key store.
    ApiKey,
    /// The client certificate the proxy verified on the TLS connection.
    Mtls,
    /// No credential; only where a policy rule is public.
    Anonymous,
}

impl Method {
    /// The bounded label used in metrics, metadata and headers.
    pub fn as_str(self) -> &'static str {
        match self {
            Method::Jwt => "jwt",
            Method::Introspection => "introspection",
            Method::ApiKey => "api_key",
            Method::Mtls => "mtls",
            Method::Anonymous => "anonymous",
        }
    }
}

/// An authenticated caller.
#[derive(Debug, Clone, PartialEq)]
pub struct Identity {
    pub method: Method,
    /// `sub` of a token, or the owner of an API key.
    pub subject: String,
    /// The token issuer (JWT / introspection).
    pub issuer: Option<String>,
    /// The API key's public id (never its secret).
    pub key_id: Option<String>,
    pub tenant: Option<String>,
    /// Plan / tier, e.g. `gold`; rate limits can follow it through dynamic metadata.
    pub plan: Option<String>,
    /// A rate limit of the caller's own (an API key's), replacing its plan's.
    pub rate_limit: Option<crate::apikey::KeyLimit>,
    pub scopes: Vec<String>,
    /// Token claims (JWT payload or introspection response); empty for API keys.
    pub claims: serde_json::Map<String, serde_json::Value>,
    /// When the credential stops being valid, if it says.
    pub expires_at: Option<SystemTime>,
    /// The client certificate, for an `mtls` identity.
    pub cert: Option<std::sync::Arc<PeerCert>>,
}

impl Identity {
    /// An identity with only a method and subject set.
    pub fn new(method: Method, subject: impl Into<String>) -> Self {
        Self {
            method,
            subject: subject.into(),
            issuer: None,
            key_id: None,
            tenant: None,
            plan: None,
            rate_limit: None,
            scopes: Vec::new(),
            claims: serde_json::Map::new(),
            expires_at: None,
            cert: None,
        }
    }

    /// Whether the identity carries `scope`.
    pub fn has_scope(&self, scope: &str) -> bool {
        self.scopes.iter().any(|s| s == scope)
    }
}

/// What an identity carries of the client certificate (see `mtls`).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PeerCert {
    /// The subject DN, RFC 4514 form (`CN=web, O=Acme`).
    pub subject: String,
    /// The proxy's name for the peer (Envoy: the first URI SAN, else DNS SAN, else subject).
    pub principal: String,
    pub dns: Vec<String>,
    pub uris: Vec<String>,
    pub emails: Vec<String>,
    /// The URI SAN with the `spiffe://` scheme.
    pub spiffe_id: Option<String>,
    /// SHA-256 of the DER, lower-case hex.
    pub fingerprint: String,
}

pub mod cache;
pub mod crypto;
pub mod introspection;
pub mod jwks;
pub mod jwt;
pub mod mtls;
pub mod token_source;

/// The one clock every identity method reads (`tollgate_common::clock`), shared so that tests
/// move time for all of them at once.
pub type Clock = std::sync::Arc<dyn tollgate_common::clock::Clock>;

/// Why a presented token was not accepted. The variant picks the RFC 6750 answer; the
/// [`Rejection::reason`] goes to logs and metrics only.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    /// The credential is not acceptable (bad signature, expired, wrong audience, unknown, ...).
    #[error("invalid credential: {0}")]
    Invalid(Reason),
    /// The credential could not be checked (issuer or store unreachable, no keys yet): deny, retryable.
    #[error("credential check unavailable: {0}")]
    Unavailable(Reason),
}

impl Rejection {
    /// The bounded reason label.
    pub fn reason(&self) -> &'static str {
        self.kind().as_str()
    }

    /// The reason itself.
    pub fn kind(&self) -> Reason {
        match self {
            Rejection::Invalid(r) | Rejection::Unavailable(r) => *r,
        }
    }
}

/// Seconds since the epoch of `t` (0 before it).
pub(crate) fn unix(t: SystemTime) -> u64 {
    t.duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}
