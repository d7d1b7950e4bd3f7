//! The admin listener: Prometheus `/metrics`, `/healthz`, `/readyz` and `/debug/decisions`.

use std::sync::Arc;

use axum::{
    Json, Router,
    extract::{Query, State},
    http::{HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::get,
};
use serde::Deserialize;

use crate::routing::Director;

/// Decisions returned by `/debug/decisions` when no `limit` is given.
const DEFAULT_DECISIONS: usize = 100;

/// The admin routes; `/debug/decisions` only when `debug_decisions` (it shows who asked for what, and where it went).
pub fn router(director: Arc<Director>, debug_decisions: bool) -> Router {
    let router = Router::new()
        .route("/metrics", get(metrics))
        .route("/healthz", get(|| async { "ok" }))
        .route("/readyz", get(readyz));
    let router = if debug_decisions {
        router.route("/debug/decisions", get(decisions))
    } else {
        router
    };
    router.with_state(director)
}

async fn metrics(State(director): State<Arc<Director>>) -> Response {
    let mut response = director.recorder.metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

/// Ready once the provider finished its first full sync and the served pool exists.
async fn readyz(State(director): State<Arc<Director>>) -> (StatusCode, String) {
    if !director.datastore.is_synced() {
        return (StatusCode::SERVICE_UNAVAILABLE, "datastore not synced yet".into());
    }
    if director.none_answering() {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            "no ready endpoint: every pod's metrics scrape is failing".into(),
        );
    }
    let snapshot = director.datastore.snapshot();
    match snapshot.pool() {
        Some(pool) => (
            StatusCode::OK,
            format!(
                "ready: pool {} with {} endpoints",
                pool.name,
                snapshot.endpoints().len()
            ),
        ),
        None => (
            StatusCode::SERVICE_UNAVAILABLE,
            snapshot.pool_error().unwrap_or("no InferencePool found").to_owned(),
        ),
    }
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct DecisionsQuery {
    limit: Option<usize>,
}

async fn decisions(
    State(director): State<Arc<Director>>,
    Query(query): Query<DecisionsQuery>,
) -> Json<Vec<audit::Record>> {
    Json(
        director
            .recorder
            .decisions
            .latest(query.limit.unwrap_or(DEFAULT_DECISIONS)),
    )
}
