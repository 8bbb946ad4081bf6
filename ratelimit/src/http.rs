//! Side-listener routes of the rate-limit service: `/config`, the limits in force and the state
//! of every limits file (merged with the shared `/healthz`, `/readyz`, `/metrics`).

use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::routing::get;

use tollgate_limiter::reload::Reloader;

/// The `/config` route: JSON with the limits in force, every file's state and every error's
/// file, line and reason (an empty `errors` list means the files on disk are all in force).
pub fn router(reloader: Arc<Reloader>) -> Router {
    Router::new()
        .route("/config", get(config))
        .with_state(reloader)
}

async fn config(State(reloader): State<Arc<Reloader>>) -> axum::Json<serde_json::Value> {
    axum::Json(serde_json::to_value(&*reloader.view()).unwrap_or_default())
}
