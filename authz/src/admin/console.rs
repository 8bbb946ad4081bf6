//! The web console: the files under `authz/console/` (HTML, CSS, plain ES modules, an icon),
//! compiled into the binary and served under `/console/` on the admin listener. Nothing is
//! fetched at run time and nothing here is secret: the page asks the operator for the admin
//! credential and calls the admin API with it, so the API stays the one source of truth.
//!
//! Every response carries a strict Content-Security-Policy (no inline script or style, no
//! other origin, no framing), `nosniff` and `no-referrer`. The files are sent with
//! `Cache-Control: no-cache` and a strong ETag: a browser revalidates on every load (so an
//! upgraded binary is never shown stale) and a revalidation of an unchanged file is a 304.

use std::sync::OnceLock;

use axum::Router;
use axum::extract::{Path, Request};
use axum::http::{HeaderMap, HeaderValue, StatusCode, header};
use axum::middleware::Next;
use axum::response::{IntoResponse, Redirect, Response};
use axum::routing::get;
use sha2::{Digest, Sha256};

/// Where the console lives on the admin listener.
pub(super) const PREFIX: &str = "/console/";

/// The console's policy: its own files only, no inline code, no framing, no form posts elsewhere.
const CONTENT_SECURITY_POLICY: &str = "default-src 'none'; script-src 'self'; \
     style-src 'self'; img-src 'self' data:; connect-src 'self'; frame-ancestors 'none'; \
     base-uri 'none'; form-action 'self'";

/// For the API's own answers (JSON): nothing may load or frame them as a page.
const API_POLICY: &str = "default-src 'none'; frame-ancestors 'none'";

/// One embedded file.
struct Asset {
    name: &'static str,
    content_type: &'static str,
    body: &'static [u8],
}

macro_rules! asset {
    ($name:literal, $type:expr) => {
        Asset {
            name: $name,
            content_type: $type,
            body: include_bytes!(concat!(env!("CARGO_MANIFEST_DIR"), "/console/", $name)),
        }
    };
}

const JS: &str = "text/javascript; charset=utf-8";

/// Every file of `authz/console/` (a test holds this list to the directory).
const ASSETS: &[Asset] = &[
    asset!("index.html", "text/html; charset=utf-8"),
    asset!("style.css", "text/css; charset=utf-8"),
    asset!("favicon.svg", "image/svg+xml"),
    asset!("app.js", JS),
    asset!("api.js", JS),
    asset!("dom.js", JS),
    asset!("keys.js", JS),
    asset!("key.js", JS),
    asset!("plans.js", JS),
    asset!("activity.js", JS),
    asset!("chart.js", JS),
    asset!("rates.js", JS),
];

/// The console's routes (no credential: the files grant nothing, the API calls carry it).
pub(super) fn routes<S: Clone + Send + Sync + 'static>() -> Router<S> {
    Router::new()
        .route("/", get(|| async { Redirect::to(PREFIX) }))
        .route("/console", get(|| async { Redirect::to(PREFIX) }))
        .route(PREFIX, get(index))
        .route("/console/{file}", get(file))
}

async fn index(headers: HeaderMap) -> Response {
    serve("index.html", &headers)
}

async fn file(Path(name): Path<String>, headers: HeaderMap) -> Response {
    serve(&name, &headers)
}

fn serve(name: &str, request: &HeaderMap) -> Response {
    let Some((asset, etag)) = find(name) else {
        return (StatusCode::NOT_FOUND, "no such file\n").into_response();
    };
    let fresh = request
        .get(header::IF_NONE_MATCH)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.split(',').any(|t| t.trim() == etag));
    let mut resp = if fresh {
        StatusCode::NOT_MODIFIED.into_response()
    } else {
        asset.body.into_response()
    };
    let h = resp.headers_mut();
    h.insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static(asset.content_type),
    );
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert(header::ETAG, HeaderValue::from_str(etag).expect("hex ETag"));
    resp
}

/// The asset called `name` and its ETag (a digest of its bytes, computed once).
fn find(name: &str) -> Option<(&'static Asset, &'static str)> {
    static ETAGS: OnceLock<Vec<String>> = OnceLock::new();
    let etags = ETAGS.get_or_init(|| {
        ASSETS
            .iter()
            .map(|a| {
                let digest = Sha256::digest(a.body);
                let hex: String = digest.iter().take(12).map(|b| format!("{b:02x}")).collect();
                format!("\"{hex}\"")
            })
            .collect()
    });
    let i = ASSETS.iter().position(|a| a.name == name)?;
    Some((&ASSETS[i], etags[i].as_str()))
}

/// Adds the security headers every admin response carries: the console's policy on its pages,
/// a deny-everything policy on the API's answers, and on both `nosniff`, `no-referrer` and no
/// framing.
pub(super) async fn harden(req: Request, next: Next) -> Response {
    let console = req.uri().path() == "/console" || req.uri().path().starts_with(PREFIX);
    let mut resp = next.run(req).await;
    let h = resp.headers_mut();
    let policy = if console {
        CONTENT_SECURITY_POLICY
    } else {
        API_POLICY
    };
    h.insert(
        header::CONTENT_SECURITY_POLICY,
        HeaderValue::from_static(policy),
    );
    h.insert(
        header::X_CONTENT_TYPE_OPTIONS,
        HeaderValue::from_static("nosniff"),
    );
    h.insert(
        header::REFERRER_POLICY,
        HeaderValue::from_static("no-referrer"),
    );
    h.insert(header::X_FRAME_OPTIONS, HeaderValue::from_static("DENY"));
    h.insert(
        "cross-origin-opener-policy",
        HeaderValue::from_static("same-origin"),
    );
    h.insert(
        "cross-origin-resource-policy",
        HeaderValue::from_static("same-origin"),
    );
    resp
}

#[cfg(test)]
pub(super) fn asset_names() -> Vec<&'static str> {
    ASSETS.iter().map(|a| a.name).collect()
}
