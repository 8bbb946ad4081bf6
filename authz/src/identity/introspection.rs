//! Opaque OAuth 2.0 access tokens checked by RFC 7662 introspection (the `oauth2` crate), with
//! client authentication. Active answers are cached until min(configured TTL, token `exp`);
//! inactive answers, errors and timeouts deny and are never cached, so a flaky introspection
//! endpoint cannot pin a decision in either direction.

use std::collections::HashMap;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use oauth2::basic::{
    BasicErrorResponse, BasicRevocationErrorResponse, BasicTokenResponse, BasicTokenType,
};
use oauth2::{
    AccessToken, AuthType, Client, ClientId, ClientSecret, EndpointNotSet, EndpointSet,
    ExtraTokenFields, IntrospectionUrl, StandardRevocableToken, StandardTokenIntrospectionResponse,
    TokenIntrospectionResponse,
};
use parking_lot::Mutex;
use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};
use tollgate_common::config::{Errors, Validate, join};
use tollgate_common::secret::Secret;

use super::cache::{IdentityCache, TokenHash, hash_token};
use super::jwt::ClaimMapping;
use super::{Clock, Identity, Method, Rejection, unix};
use crate::metrics;
use crate::reason::Reason;

/// The `introspection:` section.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct IntrospectionConfig {
    /// The RFC 7662 endpoint.
    pub endpoint: String,
    pub client_id: String,
    /// The client secret, inline (prefer `client_secret_file` or `TOLLGATE_INTROSPECTION__CLIENT_SECRET`).
    #[serde(default)]
    pub client_secret: Option<Secret>,
    #[serde(default)]
    pub client_secret_file: Option<PathBuf>,
    #[serde(default)]
    pub auth_method: ClientAuth,
    #[serde(default = "default_timeout", with = "humantime_serde")]
    pub timeout: Duration,
    /// Active answers are cached for at most this long (and never past the token's `exp`).
    #[serde(default = "default_cache_ttl", with = "humantime_serde")]
    pub cache_ttl: Duration,
    #[serde(default = "default_cache_entries")]
    pub cache_max_entries: usize,
    /// When set, the answer's `iss` must equal it.
    #[serde(default)]
    pub issuer: Option<String>,
    /// When non-empty, the answer's `aud` must contain one of these.
    #[serde(default)]
    pub audiences: Vec<String>,
    #[serde(default = "default_max_token_bytes")]
    pub max_token_bytes: usize,
    #[serde(default)]
    pub claims: ClaimMapping,
}

/// How the service authenticates to the introspection endpoint.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ClientAuth {
    #[default]
    ClientSecretBasic,
    ClientSecretPost,
}

fn default_timeout() -> Duration {
    Duration::from_secs(2)
}
fn default_cache_ttl() -> Duration {
    Duration::from_secs(60)
}
fn default_cache_entries() -> usize {
    10_000
}
fn default_max_token_bytes() -> usize {
    4096
}

impl Validate for IntrospectionConfig {
    fn validate(&self, at: &str, errors: &mut Errors) {
        if IntrospectionUrl::new(self.endpoint.clone()).is_err()
            || !(self.endpoint.starts_with("https://") || self.endpoint.starts_with("http://"))
        {
            errors.push(join(at, "endpoint"), "must be an http(s) URL");
        }
        if self.client_id.is_empty() {
            errors.push(join(at, "client_id"), "must not be empty");
        }
        match (&self.client_secret, &self.client_secret_file) {
            (Some(_), Some(_)) => errors.push(
                join(at, "client_secret"),
                "set one of `client_secret` or `client_secret_file`",
            ),
            (None, None) => errors.push(
                join(at, "client_secret"),
                "required (or `client_secret_file`)",
            ),
            (None, Some(p)) => errors.require_file(at, "client_secret_file", Some(p)),
            (Some(s), None) if s.is_empty() => {
                errors.push(join(at, "client_secret"), "must not be empty")
            }
            _ => {}
        }
        if self.timeout.is_zero() || self.timeout > Duration::from_secs(30) {
            errors.push(join(at, "timeout"), "must be between 1ms and 30s");
        }
        if !(16..=64 * 1024).contains(&self.max_token_bytes) {
            errors.push(join(at, "max_token_bytes"), "must be between 16 and 65536");
        }
    }
}

/// Every member of the introspection answer beyond RFC 7662's own, kept as claims.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct OtherMembers {
    #[serde(flatten)]
    pub members: Map<String, Value>,
}

impl ExtraTokenFields for OtherMembers {}

type Answer = StandardTokenIntrospectionResponse<OtherMembers, BasicTokenType>;
type OAuthClient = Client<
    BasicErrorResponse,
    BasicTokenResponse,
    Answer,
    StandardRevocableToken,
    BasicRevocationErrorResponse,
    EndpointNotSet,
    EndpointNotSet,
    EndpointSet,
    EndpointNotSet,
    EndpointNotSet,
>;

/// Why the introspector could not be built.
#[derive(Debug, thiserror::Error)]
pub enum IntrospectionSetupError {
    #[error("reading the client secret from {path}: {source}")]
    Secret {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("invalid endpoint URL: {0}")]
    Url(String),
    #[error("building the HTTP client: {0}")]
    Http(String),
}

/// Checks opaque tokens at the introspection endpoint.
pub struct Introspector {
    client: OAuthClient,
    http: reqwest::Client,
    timeout: Duration,
    cache: IdentityCache,
    cache_ttl: Duration,
    issuer: Option<String>,
    audiences: Vec<String>,
    max_token_bytes: usize,
    claims: ClaimMapping,
    clock: Clock,
    inflight: Mutex<HashMap<TokenHash, Arc<Shared>>>,
    lookups: metrics::CacheCounters,
}

type Shared = tokio::sync::OnceCell<Result<Arc<Identity>, Rejection>>;

/// A caller's share of an in-flight introspection; the last one out (or the first after it
/// finished) removes the entry, also when callers are cancelled (Envoy gave up waiting).
struct Inflight<'a> {
    map: &'a Mutex<HashMap<TokenHash, Arc<Shared>>>,
    key: TokenHash,
    cell: Arc<Shared>,
}

impl Drop for Inflight<'_> {
    fn drop(&mut self) {
        let mut map = self.map.lock();
        if let Some(c) = map.get(&self.key)
            && Arc::ptr_eq(c, &self.cell)
            && (self.cell.initialized() || Arc::strong_count(&self.cell) <= 2)
        {
            map.remove(&self.key);
        }
    }
}

impl Introspector {
    pub fn new(
        cfg: &IntrospectionConfig,
        clock: Clock,
    ) -> Result<Introspector, IntrospectionSetupError> {
        let secret = match (&cfg.client_secret, &cfg.client_secret_file) {
            (Some(s), _) => s.expose().to_string(),
            (None, Some(p)) => std::fs::read_to_string(p)
                .map_err(|source| IntrospectionSetupError::Secret {
                    path: p.clone(),
                    source,
                })?
                .trim_end_matches(['\r', '\n'])
                .to_string(),
            (None, None) => String::new(),
        };
        let url = IntrospectionUrl::new(cfg.endpoint.clone())
            .map_err(|e| IntrospectionSetupError::Url(e.to_string()))?;
        let client = Client::new(ClientId::new(cfg.client_id.clone()))
            .set_client_secret(ClientSecret::new(secret))
            .set_auth_type(match cfg.auth_method {
                ClientAuth::ClientSecretBasic => AuthType::BasicAuth,
                ClientAuth::ClientSecretPost => AuthType::RequestBody,
            })
            .set_introspection_url(url);
        // Redirects are not followed: the client secret must only ever go to the configured URL.
        let http = reqwest::Client::builder()
            .redirect(reqwest::redirect::Policy::none())
            .timeout(cfg.timeout)
            .build()
            .map_err(|e| IntrospectionSetupError::Http(e.to_string()))?;
        Ok(Introspector {
            client,
            http,
            timeout: cfg.timeout,
            cache: IdentityCache::new(cfg.cache_max_entries),
            cache_ttl: cfg.cache_ttl,
            issuer: cfg.issuer.clone(),
            audiences: cfg.audiences.clone(),
            max_token_bytes: cfg.max_token_bytes,
            claims: cfg.claims.clone(),
            clock,
            inflight: Mutex::new(HashMap::new()),
            lookups: metrics::CacheCounters::new("introspection"),
        })
    }

    /// Checks a token, from the cache when an earlier active answer still holds.
    pub async fn verify(&self, token: &str) -> Result<Arc<Identity>, Rejection> {
        if token.len() > self.max_token_bytes {
            return Err(Rejection::Invalid(Reason::TokenTooLarge));
        }
        // RFC 6750 §2.1 b64token charset; anything else cannot be a token and is not sent out.
        if token.is_empty()
            || !token
                .bytes()
                .all(|b| b.is_ascii_alphanumeric() || b"-._~+/=".contains(&b))
        {
            return Err(Rejection::Invalid(Reason::Malformed));
        }
        let now = self.clock.now();
        let key = hash_token(token);
        if let Some(id) = self.cache.get(&key, now) {
            self.lookups.hit();
            return Ok(id);
        }
        self.lookups.miss();
        // Concurrent Checks of one new token share a single introspection request.
        let cell = self
            .inflight
            .lock()
            .entry(key)
            .or_insert_with(|| Arc::new(tokio::sync::OnceCell::new()))
            .clone();
        let guard = Inflight {
            map: &self.inflight,
            key,
            cell,
        };
        // Boxed: the call is rare (cache misses) and its state large; inline it would grow
        // every Check's future.
        Box::pin(guard.cell.get_or_init(|| self.introspect(token, key, now)))
            .await
            .clone()
    }

    async fn introspect(
        &self,
        token: &str,
        key: TokenHash,
        now: SystemTime,
    ) -> Result<Arc<Identity>, Rejection> {
        let access = AccessToken::new(token.to_string());
        let request = self
            .client
            .introspect(&access)
            .set_token_type_hint("access_token");
        let span = tollgate_common::trace::span("introspection", "client");
        let call = tokio::time::timeout(self.timeout, request.request_async(&self.http));
        let answer = match tracing::Instrument::instrument(call, span).await {
            Ok(Ok(a)) => a,
            Ok(Err(e)) => {
                metrics::introspection("error");
                tracing::warn!(error = %e, "introspection failed; denying");
                return Err(Rejection::Unavailable(Reason::IntrospectionError));
            }
            Err(_) => {
                metrics::introspection("error");
                tracing::warn!("introspection timed out; denying");
                return Err(Rejection::Unavailable(Reason::IntrospectionTimeout));
            }
        };
        if !answer.active() {
            metrics::introspection("inactive");
            return Err(Rejection::Invalid(Reason::Inactive));
        }
        metrics::introspection("active");
        let (identity, exp) = self.identity(&answer, now)?;
        let identity = Arc::new(identity);
        let until = match exp {
            Some(exp) => (now + self.cache_ttl).min(exp),
            None => now + self.cache_ttl,
        };
        self.cache.insert(key, identity.clone(), None, until, now);
        Ok(identity)
    }

    fn identity(
        &self,
        a: &Answer,
        now: SystemTime,
    ) -> Result<(Identity, Option<SystemTime>), Rejection> {
        let now_s = unix(now) as i64;
        let exp = a.exp().map(|t| t.timestamp());
        if exp.is_some_and(|e| e <= now_s) {
            return Err(Rejection::Invalid(Reason::Expired));
        }
        if a.nbf().is_some_and(|t| t.timestamp() > now_s) {
            return Err(Rejection::Invalid(Reason::NotYetValid));
        }
        if let Some(want) = &self.issuer
            && a.iss() != Some(want.as_str())
        {
            return Err(Rejection::Invalid(Reason::WrongIssuer));
        }
        if !self.audiences.is_empty() {
            let ok = a
                .aud()
                .is_some_and(|auds| auds.iter().any(|x| self.audiences.contains(x)));
            if !ok {
                return Err(Rejection::Invalid(Reason::WrongAudience));
            }
        }
        let mut claims = a.extra_fields().members.clone();
        let mut put = |k: &str, v: Option<Value>| {
            if let Some(v) = v {
                claims.insert(k.to_string(), v);
            }
        };
        put("sub", a.sub().map(|s| Value::String(s.to_string())));
        put("iss", a.iss().map(|s| Value::String(s.to_string())));
        put(
            "client_id",
            a.client_id().map(|c| Value::String(c.as_str().to_string())),
        );
        put(
            "username",
            a.username().map(|s| Value::String(s.to_string())),
        );
        put(
            "aud",
            a.aud()
                .map(|v| Value::Array(v.iter().cloned().map(Value::String).collect())),
        );
        put("exp", exp.map(Value::from));
        let scopes: Vec<String> = a
            .scopes()
            .map(|s| s.iter().map(|s| s.as_str().to_string()).collect())
            .unwrap_or_default();
        put(
            "scope",
            (!scopes.is_empty()).then(|| Value::String(scopes.join(" "))),
        );

        let subject = match claims.get(&self.claims.subject) {
            Some(Value::String(s)) if !s.is_empty() => s.clone(),
            _ => return Err(Rejection::Invalid(Reason::MissingSubject)),
        };
        let str_claim = |name: &Option<String>| match name.as_ref().and_then(|n| claims.get(n)) {
            Some(Value::String(s)) => Some(s.clone()),
            _ => None,
        };
        let mut id = Identity::new(Method::Introspection, subject);
        id.issuer = a.iss().map(str::to_string).or_else(|| self.issuer.clone());
        id.tenant = str_claim(&self.claims.tenant);
        id.plan = str_claim(&self.claims.plan);
        id.scopes = if scopes.is_empty() {
            self.claims
                .scopes
                .iter()
                .find_map(|c| claims.get(c))
                .map(super::jwt::scopes_of)
                .unwrap_or_default()
        } else {
            scopes
        };
        let exp_at = exp
            .and_then(|e| u64::try_from(e).ok())
            .map(|e| SystemTime::UNIX_EPOCH + Duration::from_secs(e));
        id.expires_at = exp_at;
        id.claims = claims;
        Ok((id, exp_at))
    }
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;
    use std::sync::atomic::{AtomicUsize, Ordering};

    use axum::Router;
    use axum::extract::State;
    use axum::http::{HeaderMap, StatusCode};
    use axum::response::IntoResponse;
    use axum::routing::post;
    use base64::Engine;
    use parking_lot::Mutex;
    use serde_json::json;

    use super::*;
    use crate::identity::jwt::tests::clock_at;

    const T0: u64 = 1_800_000_000;

    /// What the endpoint answers for a token; it counts calls and checks client authentication.
    #[derive(Clone)]
    struct Srv {
        answers: Arc<Mutex<std::collections::HashMap<String, (StatusCode, Value)>>>,
        calls: Arc<AtomicUsize>,
    }

    async fn introspect(
        State(s): State<Srv>,
        headers: HeaderMap,
        body: String,
    ) -> axum::response::Response {
        s.calls.fetch_add(1, Ordering::SeqCst);
        let want = format!(
            "Basic {}",
            base64::engine::general_purpose::STANDARD.encode("rs:s3cret")
        );
        if headers.get("authorization").and_then(|v| v.to_str().ok()) != Some(want.as_str()) {
            return (
                StatusCode::UNAUTHORIZED,
                axum::Json(json!({"error": "invalid_client"})),
            )
                .into_response();
        }
        let token = body
            .split('&')
            .find_map(|p| p.strip_prefix("token="))
            .unwrap_or_default()
            .to_string();
        if token == "hang" {
            std::future::pending::<()>().await;
        }
        let (code, v) = s
            .answers
            .lock()
            .get(&token)
            .cloned()
            .unwrap_or((StatusCode::OK, json!({"active": false})));
        (code, axum::Json(v)).into_response()
    }

    async fn setup(extra: &str) -> (Srv, Introspector, Arc<tollgate_common::clock::ManualClock>) {
        let srv = Srv {
            answers: Default::default(),
            calls: Arc::new(AtomicUsize::new(0)),
        };
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let app = Router::new()
            .route("/introspect", post(introspect))
            .with_state(srv.clone());
        tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
        let cfg: IntrospectionConfig = serde_yaml::from_str(&format!(
            "endpoint: http://{addr}/introspect\nclient_id: rs\nclient_secret: s3cret\ntimeout: 300ms\nclaims: {{tenant: org}}\n{extra}"
        ))
        .unwrap();
        let (clock, t) = clock_at(T0);
        (srv, Introspector::new(&cfg, clock).unwrap(), t)
    }

    fn active(exp: u64) -> (StatusCode, Value) {
        (
            StatusCode::OK,
            json!({"active": true, "sub": "svc-1", "scope": "read write", "exp": exp, "aud": "https://api.test", "iss": "https://idp.test", "org": "acme", "client_id": "c1"}),
        )
    }

    #[tokio::test]
    async fn active_tokens_are_cached_until_ttl_or_exp() {
        let (srv, i, clock) = setup("cache_ttl: 60s").await;
        srv.answers.lock().insert("tok1".into(), active(T0 + 30));
        let id = i.verify("tok1").await.unwrap();
        assert_eq!(id.method, Method::Introspection);
        assert_eq!(id.subject, "svc-1");
        assert_eq!(id.scopes, vec!["read", "write"]);
        assert_eq!(id.tenant.as_deref(), Some("acme"));
        assert_eq!(id.claims["client_id"], json!("c1"));
        i.verify("tok1").await.unwrap();
        assert_eq!(
            srv.calls.load(Ordering::SeqCst),
            1,
            "second check from the cache"
        );
        clock.set(SystemTime::UNIX_EPOCH + Duration::from_secs(T0 + 30));
        assert_eq!(
            i.verify("tok1").await.unwrap_err(),
            Rejection::Invalid(Reason::Expired)
        );
        assert_eq!(srv.calls.load(Ordering::SeqCst), 2, "never cached past exp");
    }

    #[tokio::test]
    async fn inactive_and_errors_deny_and_are_not_cached() {
        let (srv, i, _) = setup("").await;
        assert_eq!(
            i.verify("unknown").await.unwrap_err(),
            Rejection::Invalid(Reason::Inactive)
        );
        assert_eq!(
            i.verify("unknown").await.unwrap_err(),
            Rejection::Invalid(Reason::Inactive)
        );
        assert_eq!(srv.calls.load(Ordering::SeqCst), 2);

        srv.answers.lock().insert(
            "t5".into(),
            (
                StatusCode::INTERNAL_SERVER_ERROR,
                json!({"error": "server_error"}),
            ),
        );
        assert!(matches!(
            i.verify("t5").await,
            Err(Rejection::Unavailable(_))
        ));
        srv.answers.lock().insert("t5".into(), active(T0 + 600));
        assert_eq!(
            i.verify("t5").await.unwrap().subject,
            "svc-1",
            "the error was not cached"
        );

        assert!(
            matches!(i.verify("hang").await, Err(Rejection::Unavailable(_))),
            "timeouts deny"
        );
        assert_eq!(
            i.verify("bad token").await.unwrap_err(),
            Rejection::Invalid(Reason::Malformed)
        );
        assert_eq!(
            i.verify(&"a".repeat(5000)).await.unwrap_err(),
            Rejection::Invalid(Reason::TokenTooLarge)
        );
    }

    #[tokio::test]
    async fn concurrent_checks_of_a_new_token_share_one_request() {
        let (srv, i, _) = setup("").await;
        srv.answers.lock().insert("burst".into(), active(T0 + 600));
        let i = Arc::new(i);
        let tasks: Vec<_> = (0..20)
            .map(|_| {
                let i = i.clone();
                tokio::spawn(async move { i.verify("burst").await.map(|id| id.subject.clone()) })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap().unwrap(), "svc-1");
        }
        assert_eq!(srv.calls.load(Ordering::SeqCst), 1);
        assert!(i.inflight.lock().is_empty(), "no entry left behind");

        // Failures are shared by the callers waiting on them, then forgotten.
        let tasks: Vec<_> = (0..5)
            .map(|_| {
                let i = i.clone();
                tokio::spawn(async move { i.verify("nobody").await.map(|_| ()) })
            })
            .collect();
        for t in tasks {
            assert_eq!(t.await.unwrap(), Err(Rejection::Invalid(Reason::Inactive)));
        }
        assert_eq!(srv.calls.load(Ordering::SeqCst), 2);
        assert!(i.verify("nobody").await.is_err());
        assert_eq!(
            srv.calls.load(Ordering::SeqCst),
            3,
            "a failure is not cached"
        );
        assert!(i.inflight.lock().is_empty());
    }

    #[tokio::test]
    async fn wrong_client_secret_fails_closed() {
        let (srv, _, _) = setup("").await;
        srv.answers.lock().insert("tok".into(), active(T0 + 600));
        let endpoint = {
            // Same endpoint, wrong secret.
            let (_, good, _) = setup("").await;
            good.client.introspection_url().to_string()
        };
        let cfg: IntrospectionConfig = serde_yaml::from_str(&format!(
            "endpoint: {endpoint}\nclient_id: rs\nclient_secret: wrong\n"
        ))
        .unwrap();
        let (clock, _) = clock_at(T0);
        let bad = Introspector::new(&cfg, clock).unwrap();
        assert!(matches!(
            bad.verify("tok").await,
            Err(Rejection::Unavailable(_))
        ));
    }

    #[tokio::test]
    async fn issuer_and_audience_are_checked_when_configured() {
        let (srv, i, _) = setup("issuer: https://idp.test\naudiences: [https://other.test]").await;
        srv.answers.lock().insert("tok".into(), active(T0 + 600));
        assert_eq!(
            i.verify("tok").await.unwrap_err(),
            Rejection::Invalid(Reason::WrongAudience)
        );
        let (srv, i, _) = setup("issuer: https://else.test").await;
        srv.answers.lock().insert("tok".into(), active(T0 + 600));
        assert_eq!(
            i.verify("tok").await.unwrap_err(),
            Rejection::Invalid(Reason::WrongIssuer)
        );
    }
}
