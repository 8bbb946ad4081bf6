//! `GET /v1/limits`: the rate limits in force, in the shape of tollgate-ratelimit's `/config`
//! view (`domains[].limits[]` with `descriptor`, `name`, `limit`, `window`, `algorithm`, ...,
//! `loaded_at`, `files`, `errors`).
//!
//! Where the limits come from is a [`LimitsView`]: in the service pair, tollgate-ratelimit's
//! `/config` read through `admin.ratelimit_config_url` (at most once a second, however many
//! consoles ask); a process that limits by itself passes its own view to
//! [`super::router_with_limits`] (any `Fn() -> serde_json::Value` is one).

use std::time::{Duration, Instant};

use axum::Json;
use axum::extract::State;
use axum::http::{HeaderValue, StatusCode, header};
use axum::response::{IntoResponse, Response};
use futures::future::BoxFuture;
use serde_json::Value;

use super::AppState;
use super::routes::ApiError;

/// Where the route is served.
pub(super) const PATH: &str = "/v1/limits";
const FETCH_TIMEOUT: Duration = Duration::from_secs(2);
const REUSE: Duration = Duration::from_secs(1);
/// Largest `/config` answer read from tollgate-ratelimit.
const MAX_BYTES: usize = 8 << 20;

/// Why the limits in force cannot be shown now.
#[derive(Debug, Clone, thiserror::Error)]
pub enum LimitsError {
    /// The source did not answer usefully (unreachable, an error, not a limits view).
    #[error("{0}")]
    Unavailable(String),
}

/// A source of the limits in force, as a `/config`-shaped JSON object.
pub trait LimitsView: Send + Sync + 'static {
    fn limits(&self) -> BoxFuture<'_, Result<Value, LimitsError>>;
}

/// A view computed in process (e.g. `serde_json::to_value(reloader.view())`).
impl<F> LimitsView for F
where
    F: Fn() -> Value + Send + Sync + 'static,
{
    fn limits(&self) -> BoxFuture<'_, Result<Value, LimitsError>> {
        let view = self();
        Box::pin(async move { Ok(view) })
    }
}

/// tollgate-ratelimit's `/config`, read over HTTP and reused for [`REUSE`].
pub(super) struct RatelimitConfig {
    url: reqwest::Url,
    http: reqwest::Client,
    last: tokio::sync::Mutex<Option<(Instant, Result<Value, LimitsError>)>>,
}

impl RatelimitConfig {
    pub(super) fn new(url: reqwest::Url) -> Self {
        Self {
            url,
            http: reqwest::Client::builder()
                .timeout(FETCH_TIMEOUT)
                .redirect(reqwest::redirect::Policy::none())
                .build()
                .expect("a plain HTTP client builds"),
            last: tokio::sync::Mutex::new(None),
        }
    }

    async fn fetch(&self) -> Result<Value, LimitsError> {
        let unavailable =
            |why: &str| LimitsError::Unavailable(format!("tollgate-ratelimit's /config {why}"));
        let mut resp = self.http.get(self.url.clone()).send().await.map_err(|e| {
            unavailable(if e.is_timeout() {
                "did not answer in time"
            } else {
                "is unreachable"
            })
        })?;
        if !resp.status().is_success() {
            return Err(unavailable(&format!("answered {}", resp.status().as_u16())));
        }
        let mut body = Vec::new();
        while let Some(chunk) = resp
            .chunk()
            .await
            .map_err(|_| unavailable("stopped mid-answer"))?
        {
            if body.len() + chunk.len() > MAX_BYTES {
                return Err(unavailable("is too large to read"));
            }
            body.extend_from_slice(&chunk);
        }
        let view: Value = serde_json::from_slice(&body).map_err(|_| unavailable("is not JSON"))?;
        if !view.get("domains").is_some_and(Value::is_array) {
            return Err(unavailable("is not a limits view (no domains list)"));
        }
        Ok(view)
    }
}

impl LimitsView for RatelimitConfig {
    fn limits(&self) -> BoxFuture<'_, Result<Value, LimitsError>> {
        Box::pin(async move {
            // Held across the fetch: concurrent readers wait for one fetch.
            let mut last = self.last.lock().await;
            if let Some((when, answer)) = &*last
                && when.elapsed() < REUSE
            {
                return answer.clone();
            }
            let answer = self.fetch().await;
            if let Err(e) = &answer {
                // Host and path only: a URL's user info is not for logs.
                tracing::debug!(host = self.url.host_str().unwrap_or(""), path = self.url.path(), error = %e, "cannot read the limits in force");
            }
            *last = Some((Instant::now(), answer.clone()));
            answer
        })
    }
}

pub(super) async fn serve(State(st): State<AppState>) -> Result<Response, ApiError> {
    let Some(view) = &st.limits else {
        return Err(ApiError::new(
            StatusCode::NOT_FOUND,
            "not_configured",
            "no source of the limits in force: set admin.ratelimit_config_url to tollgate-ratelimit's /config",
        ));
    };
    match view.limits().await {
        Ok(v) => {
            let mut resp = Json(v).into_response();
            resp.headers_mut()
                .insert(header::CACHE_CONTROL, HeaderValue::from_static("no-store"));
            Ok(resp)
        }
        Err(LimitsError::Unavailable(why)) => Err(ApiError::new(
            StatusCode::BAD_GATEWAY,
            "limits_unavailable",
            why,
        )),
    }
}
