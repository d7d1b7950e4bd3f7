//! `POST /api/v1/ingest`: NDJSON batches of decisions and pod samples from gateways, with the ingest bearer token
//! (separate from the login token, so a gateway's credential can never edit releases).

use axum::{
    Json, Router,
    body::Bytes,
    extract::{DefaultBodyLimit, State},
    http::HeaderMap,
    routing::post,
};
use serde::Serialize;

use crate::{
    AppState, auth,
    error::{ApiError, AppError},
    ingest,
};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/ingest", post(ingest_batch))
        .layer(DefaultBodyLimit::max(ingest::MAX_BODY_BYTES))
}

#[derive(Serialize)]
struct Stored {
    decisions: u64,
    samples: u64,
}

async fn ingest_batch(
    State(state): State<AppState>,
    headers: HeaderMap,
    body: Bytes,
) -> Result<Json<Stored>, ApiError> {
    let reject = |err: AppError| {
        state.counters.rejected.inc();
        ApiError(err)
    };
    let token = auth::bearer(&headers).ok_or_else(|| reject(AppError::Unauthorized))?;
    if !state.config.ingest_token.matches(token) {
        return Err(reject(AppError::Unauthorized));
    }
    let batch = ingest::parse(&body).map_err(|e| reject(AppError::Unprocessable(e.to_string())))?;
    let decisions = if batch.decisions.is_empty() {
        0
    } else {
        state.db.insert_decisions(&batch.decisions).await?
    };
    let samples = state.db.insert_samples(&batch.samples).await?;
    state.counters.decisions.inc_by(decisions);
    state.counters.samples.inc_by(samples);
    state.counters.batches.inc();
    Ok(Json(Stored { decisions, samples }))
}
