//! The router: pages (askama), the JSON API under `/api/v1/`, ingest, static files, health and metrics
//! (DESIGN.md §11). Each area has its own module with a `router()`.

mod api;
mod auth;
mod decisions;
mod ingest;
mod overview;
mod pods;
mod releases;

use axum::{
    Router,
    extract::State,
    http::{HeaderMap, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use tower_http::set_header::SetResponseHeaderLayer;

use crate::{AppState, auth::Session};

pub(crate) fn router(state: AppState) -> Router {
    Router::new()
        .merge(overview::router())
        .merge(decisions::router())
        .merge(releases::router())
        .merge(pods::router())
        .merge(auth::router())
        .merge(api::router())
        .merge(ingest::router())
        .route("/static/{file}", get(static_file))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .fallback(|| async { crate::error::AppError::NotFound("page".into()) })
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_CONTENT_TYPE_OPTIONS,
            HeaderValue::from_static("nosniff"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::X_FRAME_OPTIONS,
            HeaderValue::from_static("DENY"),
        ))
        .layer(SetResponseHeaderLayer::if_not_present(
            header::CONTENT_SECURITY_POLICY,
            HeaderValue::from_static(
                "default-src 'self'; script-src 'self'; style-src 'self' 'unsafe-inline'; img-src 'self' data:; \
                 frame-ancestors 'none'; form-action 'self'",
            ),
        ))
        .with_state(state)
}

/// What the layout needs on every page: the active tab and, when logged in, who and the CSRF token.
pub(crate) struct Nav {
    pub(crate) active: &'static str,
    pub(crate) user: Option<String>,
    pub(crate) csrf: String,
}

impl Nav {
    pub(crate) fn new(active: &'static str, session: Option<&Session>) -> Nav {
        Nav {
            active,
            user: session.map(|s| s.actor.clone()),
            csrf: session.map(|s| s.csrf.clone()).unwrap_or_default(),
        }
    }
}

pub(crate) fn session(state: &AppState, headers: &HeaderMap) -> Option<Session> {
    state.sessions.from_headers(headers)
}

/// Percent-encodes a path segment or query value (everything but RFC 3986 unreserved characters).
pub(crate) fn encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for b in text.bytes() {
        if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
            out.push(char::from(b));
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

/// Splits `namespace/name` into its two parts for `/pods/{namespace}/{name}` links.
pub(crate) fn pod_path(pod: &str) -> String {
    match pod.split_once('/') {
        Some((ns, name)) => format!("{}/{}", encode(ns), encode(name)),
        None => format!("default/{}", encode(pod)),
    }
}

pub(crate) fn fmt_opt_ms(v: Option<f64>) -> String {
    v.map(|v| format!("{v:.1}")).unwrap_or_else(|| "–".into())
}

pub(crate) fn fmt_pct(v: f64) -> String {
    format!("{:.1}", v * 100.0)
}

struct Asset {
    bytes: &'static [u8],
    content_type: &'static str,
}

fn asset(name: &str) -> Option<Asset> {
    let (bytes, content_type): (&'static [u8], _) = match name {
        "app.css" => (include_bytes!("../../static/app.css"), "text/css; charset=utf-8"),
        "pods.js" => (include_bytes!("../../static/pods.js"), "text/javascript; charset=utf-8"),
        "htmx.min.js" => (
            include_bytes!("../../static/vendor/htmx.min.js"),
            "text/javascript; charset=utf-8",
        ),
        "uPlot.iife.min.js" => (
            include_bytes!("../../static/vendor/uPlot.iife.min.js"),
            "text/javascript; charset=utf-8",
        ),
        "uPlot.min.css" => (
            include_bytes!("../../static/vendor/uPlot.min.css"),
            "text/css; charset=utf-8",
        ),
        _ => return None,
    };
    Some(Asset { bytes, content_type })
}

/// Static files are compiled into the binary, so a deployment is one file.
async fn static_file(axum::extract::Path(file): axum::extract::Path<String>) -> Response {
    match asset(&file) {
        Some(a) => (
            [
                (header::CONTENT_TYPE, a.content_type),
                (header::CACHE_CONTROL, "public, max-age=3600"),
            ],
            a.bytes,
        )
            .into_response(),
        None => crate::error::AppError::NotFound("file".into()).into_response(),
    }
}

async fn readyz(State(state): State<AppState>) -> (StatusCode, &'static str) {
    match state.db.ping().await {
        Ok(()) => (StatusCode::OK, "ready"),
        Err(err) => {
            tracing::warn!(error = %err, "readiness check failed");
            (StatusCode::SERVICE_UNAVAILABLE, "database unavailable")
        }
    }
}

async fn metrics(State(state): State<AppState>) -> Response {
    let mut body = String::new();
    // Writing into a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut body, &state.registry());
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        body,
    )
        .into_response()
}
