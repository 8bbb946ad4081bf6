//! The admin API's handlers, request bodies and JSON error responses.

use std::time::{Duration, SystemTime};

use axum::body::Bytes;
use axum::extract::rejection::{JsonRejection, PathRejection, QueryRejection};
use axum::extract::{Extension, FromRequest, FromRequestParts, Path, Query, Request, State};
use axum::http::request::Parts;
use axum::http::{HeaderValue, Method, StatusCode, header};
use axum::response::{IntoResponse, Response};
use axum::routing::{MethodRouter, get, patch, post};
use axum::{Json, Router};
use serde::{Deserialize, Deserializer, Serialize};

use super::{Actor, AppState};
use crate::apikey::{KeyInfo, KeyLimit, KeyPage, KeyPatch, ManageError, NewKey};

/// Longest grace period a rotation may give the old secret.
pub(super) const MAX_GRACE: Duration = Duration::from_secs(90 * 24 * 3600);
const DEFAULT_PAGE: usize = 100;
const MAX_PAGE: usize = 1000;
const SECRET_WARNING: &str = "store this key now: it is shown only once and cannot be recovered";

/// The authenticated routes, and the list of what was registered.
pub(super) fn table() -> (Router<AppState>, Vec<(Method, &'static str)>) {
    let mut seen = Vec::new();
    let mut router = Router::new();
    let mut add = |method: Method, path: &'static str, handler: MethodRouter<AppState>| {
        seen.push((method, path));
        router = std::mem::take(&mut router).route(path, handler);
    };
    add(Method::POST, "/v1/keys", post(create));
    add(Method::GET, "/v1/keys", get(list));
    add(Method::GET, "/v1/keys/{id}", get(fetch));
    add(Method::PATCH, "/v1/keys/{id}", patch(update));
    add(Method::POST, "/v1/keys/{id}/revoke", post(revoke));
    add(Method::POST, "/v1/keys/{id}/rotate", post(rotate));
    add(
        Method::GET,
        "/v1/keys/{id}/usage",
        get(super::usage::key_usage),
    );
    add(Method::GET, "/v1/usage", get(super::usage::totals));
    (router, seen)
}

/// An error response: `{"error": code, "message": text}`.
#[derive(Debug)]
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: impl Into<String>) -> Self {
        Self {
            status,
            code,
            message: message.into(),
        }
    }

    pub(super) fn invalid(message: impl Into<String>) -> Self {
        Self::new(StatusCode::BAD_REQUEST, "invalid_request", message)
    }

    #[cfg(test)]
    pub(super) fn message(&self) -> &str {
        &self.message
    }
}

#[derive(Serialize)]
struct ErrorBody<'a> {
    error: &'a str,
    message: &'a str,
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        (
            self.status,
            Json(ErrorBody {
                error: self.code,
                message: &self.message,
            }),
        )
            .into_response()
    }
}

impl From<ManageError> for ApiError {
    fn from(e: ManageError) -> Self {
        match e {
            ManageError::NotFound => Self::new(StatusCode::NOT_FOUND, "not_found", "no such key"),
            ManageError::Invalid(m) => Self::invalid(m),
            ManageError::Revoked => {
                Self::new(StatusCode::CONFLICT, "conflict", "the key is revoked")
            }
            ManageError::Busy => Self::new(StatusCode::CONFLICT, "conflict", e.to_string()),
            ManageError::UsageOff => {
                Self::new(StatusCode::NOT_FOUND, "not_configured", e.to_string())
            }
            ManageError::Store(cause) => {
                tracing::error!(error = %cause, "admin request failed: key store unavailable");
                Self::new(
                    StatusCode::SERVICE_UNAVAILABLE,
                    "store_unavailable",
                    "the key store is unavailable",
                )
            }
        }
    }
}

/// 401 with an RFC 6750 challenge.
pub(super) fn unauthorized(error: Option<&str>) -> Response {
    let challenge = match error {
        Some(e) => format!("Bearer realm=\"tollgate-admin\", error=\"{e}\""),
        None => "Bearer realm=\"tollgate-admin\"".to_string(),
    };
    let mut resp = ApiError::new(
        StatusCode::UNAUTHORIZED,
        "unauthorized",
        if error.is_some() {
            "the admin credential is not valid"
        } else {
            "an admin bearer credential is required"
        },
    )
    .into_response();
    resp.headers_mut().insert(
        header::WWW_AUTHENTICATE,
        HeaderValue::from_str(&challenge).expect("ASCII challenge"),
    );
    resp
}

pub(super) async fn no_route() -> ApiError {
    ApiError::new(StatusCode::NOT_FOUND, "not_found", "no such route")
}

pub(super) async fn no_method() -> ApiError {
    ApiError::new(
        StatusCode::METHOD_NOT_ALLOWED,
        "method_not_allowed",
        "method not allowed on this route",
    )
}

/// `Json` whose rejections are JSON errors too.
struct Body<T>(T);

impl<T: serde::de::DeserializeOwned, S: Send + Sync> FromRequest<S> for Body<T> {
    type Rejection = ApiError;

    async fn from_request(req: Request, state: &S) -> Result<Self, Self::Rejection> {
        Json::<T>::from_request(req, state)
            .await
            .map(|Json(v)| Body(v))
            .map_err(|r: JsonRejection| {
                // Only a wrong content type keeps its own status (415); the rest is a bad request.
                let status = match r.status() {
                    StatusCode::UNSUPPORTED_MEDIA_TYPE => StatusCode::UNSUPPORTED_MEDIA_TYPE,
                    _ => StatusCode::BAD_REQUEST,
                };
                ApiError::new(status, "invalid_request", r.body_text())
            })
    }
}

/// The `{id}` path parameter.
pub(super) struct KeyId(pub(super) String);

impl<S: Send + Sync> FromRequestParts<S> for KeyId {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, Self::Rejection> {
        let Path(id) = Path::<String>::from_request_parts(parts, state)
            .await
            .map_err(|r: PathRejection| ApiError::invalid(r.body_text()))?;
        Ok(KeyId(id))
    }
}

fn audit(actor: &Actor, action: &'static str, info: &KeyInfo) {
    tracing::info!(
        target: "audit",
        actor = &*actor.0,
        action,
        key_id = %info.id,
        owner = %info.owner,
        at = %humantime_serde::re::humantime::format_rfc3339_millis(SystemTime::now()),
        "api key {action}"
    );
}

/// Responses that carry a key must not be cached anywhere.
fn no_store(status: StatusCode, body: impl Serialize) -> Response {
    let mut resp = (status, Json(body)).into_response();
    resp.headers_mut()
        .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
    resp
}

/// Accepts `null` for "clear" and absence for "leave as is".
fn some<'de, D: Deserializer<'de>, T: Deserialize<'de>>(
    d: D,
) -> Result<Option<Option<T>>, D::Error> {
    Option::<T>::deserialize(d).map(Some)
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub(super) struct CreateRequest {
    name: String,
    owner: String,
    #[serde(default)]
    tenant: Option<String>,
    #[serde(default)]
    scopes: Vec<String>,
    #[serde(default)]
    plan: Option<String>,
    /// The key's own limit, e.g. `{"requests_per_unit": 100, "unit": "minute"}`.
    #[serde(default)]
    rate_limit: Option<KeyLimit>,
    /// RFC 3339.
    #[serde(default, with = "humantime_serde")]
    expires_at: Option<SystemTime>,
    /// A duration from now, e.g. `90d` (instead of `expires_at`).
    #[serde(default, with = "humantime_serde")]
    expires_in: Option<Duration>,
}

/// A created or rotated key: its metadata and, this once, the key.
#[derive(Debug, Serialize, Deserialize)]
pub struct IssuedKey {
    pub key: KeyInfo,
    pub secret: String,
    pub warning: String,
}

async fn create(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    Body(req): Body<CreateRequest>,
) -> Result<Response, ApiError> {
    let expires_at = match (req.expires_at, req.expires_in) {
        (Some(_), Some(_)) => {
            return Err(ApiError::invalid("give expires_at or expires_in, not both"));
        }
        (Some(t), None) => Some(t),
        (None, Some(d)) => Some(st.keys.now() + d),
        (None, None) => None,
    };
    let new = NewKey {
        name: req.name,
        owner: req.owner,
        tenant: req.tenant,
        scopes: req.scopes,
        plan: req.plan,
        rate_limit: req.rate_limit,
        expires_at,
    };
    let (info, secret) = st.keys.create(new).await?;
    audit(&actor, "created", &info);
    Ok(no_store(
        StatusCode::CREATED,
        IssuedKey {
            key: info,
            secret: secret.expose().to_string(),
            warning: SECRET_WARNING.into(),
        },
    ))
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ListQuery {
    limit: Option<usize>,
    cursor: Option<String>,
}

async fn list(
    State(st): State<AppState>,
    query: Result<Query<ListQuery>, QueryRejection>,
) -> Result<Json<KeyPage>, ApiError> {
    let Query(q) = query.map_err(|r| ApiError::invalid(r.body_text()))?;
    let limit = q.limit.unwrap_or(DEFAULT_PAGE);
    if !(1..=MAX_PAGE).contains(&limit) {
        return Err(ApiError::invalid(format!(
            "limit must be between 1 and {MAX_PAGE}"
        )));
    }
    Ok(Json(st.keys.list(q.cursor.as_deref(), limit).await?))
}

async fn fetch(State(st): State<AppState>, KeyId(id): KeyId) -> Result<Json<KeyInfo>, ApiError> {
    Ok(Json(st.keys.get(&id).await?))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct UpdateRequest {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    owner: Option<String>,
    #[serde(default, deserialize_with = "some")]
    tenant: Option<Option<String>>,
    #[serde(default)]
    scopes: Option<Vec<String>>,
    #[serde(default, deserialize_with = "some")]
    plan: Option<Option<String>>,
    #[serde(default, deserialize_with = "some")]
    rate_limit: Option<Option<KeyLimit>>,
    #[serde(default, deserialize_with = "some_time")]
    expires_at: Option<Option<SystemTime>>,
}

fn some_time<'de, D: Deserializer<'de>>(d: D) -> Result<Option<Option<SystemTime>>, D::Error> {
    humantime_serde::deserialize::<Option<SystemTime>, D>(d).map(Some)
}

async fn update(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    KeyId(id): KeyId,
    Body(req): Body<UpdateRequest>,
) -> Result<Json<KeyInfo>, ApiError> {
    let patch = KeyPatch {
        name: req.name,
        owner: req.owner,
        tenant: req.tenant,
        scopes: req.scopes,
        plan: req.plan,
        rate_limit: req.rate_limit,
        expires_at: req.expires_at,
    };
    if patch == KeyPatch::default() {
        return Err(ApiError::invalid("nothing to change"));
    }
    let info = st.keys.update(&id, patch).await?;
    audit(&actor, "updated", &info);
    Ok(Json(info))
}

async fn revoke(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    KeyId(id): KeyId,
) -> Result<Json<KeyInfo>, ApiError> {
    let info = st.keys.revoke(&id).await?;
    audit(&actor, "revoked", &info);
    Ok(Json(info))
}

#[derive(Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateRequest {
    /// How long the previous secret keeps working, e.g. `1h`; 0 (the default) ends it now.
    #[serde(default, with = "humantime_serde")]
    grace_period: Option<Duration>,
}

async fn rotate(
    State(st): State<AppState>,
    Extension(actor): Extension<Actor>,
    KeyId(id): KeyId,
    body: Bytes,
) -> Result<Response, ApiError> {
    // The body is optional: `POST .../rotate` alone rotates with no grace period.
    let req: RotateRequest = if body.iter().all(u8::is_ascii_whitespace) {
        RotateRequest::default()
    } else {
        serde_json::from_slice(&body)
            .map_err(|e| ApiError::invalid(format!("invalid JSON body: {e}")))?
    };
    let grace = req.grace_period.unwrap_or_default();
    if grace > MAX_GRACE {
        return Err(ApiError::invalid("grace_period must be at most 90 days"));
    }
    let (info, secret) = st.keys.rotate(&id, grace).await?;
    audit(&actor, "rotated", &info);
    Ok(no_store(
        StatusCode::OK,
        IssuedKey {
            key: info,
            secret: secret.expose().to_string(),
            warning: SECRET_WARNING.into(),
        },
    ))
}
