//! The JSON API under `/api/v1/` (decisions with the audit's filters, one decision, pod samples) and the CSV / JSON
//! exports of any audit query. Errors are JSON `{"error": …}`.

use audit::Record;
use axum::{
    Json, Router,
    body::Body,
    extract::{Path, Query, State},
    http::header,
    response::{IntoResponse, Response},
    routing::get,
};
use futures::stream::{self, StreamExt as _};
use serde::{Deserialize, Serialize};

use super::decisions::{DEFAULT_LIMIT, DecisionParams};
use crate::{
    AppState,
    db::{Cursor, DecisionFilter, DecisionSummary, SampleRow},
    error::{ApiError, AppError},
    time::{format_ms, now_ms, parse_time},
};

/// Rows an export streams at most; narrow the filter for more.
const EXPORT_MAX: usize = 200_000;
/// Rows fetched per keyset page while exporting.
const EXPORT_PAGE: u32 = 1000;
/// Points a chart gets at most; longer ranges are averaged into buckets.
const MAX_POINTS: i64 = 1200;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/api/v1/decisions", get(decisions))
        .route("/api/v1/decisions/{request_id}", get(decision))
        .route("/api/v1/export/decisions.csv", get(export_csv))
        .route("/api/v1/export/decisions.json", get(export_json))
        .route("/api/v1/pods/{namespace}/{name}/samples", get(samples))
}

#[derive(Serialize)]
struct DecisionPage {
    decisions: Vec<Record>,
    /// Pass as `after` for the next (older) page; absent on the last page.
    #[serde(skip_serializing_if = "Option::is_none")]
    next: Option<String>,
}

async fn decisions(
    State(state): State<AppState>,
    Query(params): Query<DecisionParams>,
) -> Result<Json<DecisionPage>, ApiError> {
    let (filter, after, limit) = params.parse(DEFAULT_LIMIT)?;
    let rows = state.db.list_full_decisions(&filter, after, limit).await?;
    let next = (rows.len() == limit as usize)
        .then(|| rows.last().map(|(c, _)| c.to_string()))
        .flatten();
    Ok(Json(DecisionPage {
        decisions: rows.into_iter().map(|(_, d)| d).collect(),
        next,
    }))
}

async fn decision(State(state): State<AppState>, Path(request_id): Path<String>) -> Result<Json<Record>, ApiError> {
    let d = state
        .db
        .get_decision(&request_id, None)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("decision {request_id:?}")))?;
    Ok(Json(d.1))
}

/// Streams every page of a query through `render`, stopping at [`EXPORT_MAX`] rows.
fn export<T, F, Fut>(state: AppState, filter: DecisionFilter, fetch: F, render: fn(&T) -> String) -> Body
where
    T: Send + 'static,
    F: Fn(AppState, DecisionFilter, Option<Cursor>) -> Fut + Send + Sync + 'static,
    Fut: Future<Output = Result<Vec<(Cursor, T)>, AppError>> + Send,
{
    let start = (Some(None::<Cursor>), 0usize);
    let fetch = std::sync::Arc::new(fetch);
    let pages = stream::unfold(start, move |(cursor, sent)| {
        let (state, filter, fetch) = (state.clone(), filter.clone(), fetch.clone());
        async move {
            let after = cursor?;
            if sent >= EXPORT_MAX {
                return None;
            }
            match fetch(state, filter, after).await {
                Ok(rows) => {
                    let full = rows.len() == EXPORT_PAGE as usize;
                    let next_cursor = rows.last().map(|(c, _)| Some(*c)).filter(|_| full);
                    let take = rows.len().min(EXPORT_MAX - sent);
                    let chunk: String = rows.iter().take(take).map(|(_, row)| render(row)).collect();
                    Some((Ok::<_, std::io::Error>(chunk), (next_cursor, sent + take)))
                }
                Err(err) => {
                    // Headers are gone by now: end the body early and log why.
                    tracing::error!(error = %err, "export failed");
                    None
                }
            }
        }
    });
    Body::from_stream(pages.boxed())
}

/// Quotes a CSV cell, and defuses cells a spreadsheet would run as a formula.
fn csv_cell(text: &str) -> String {
    let text = if text.starts_with(['=', '+', '-', '@']) {
        format!("'{text}")
    } else {
        text.to_owned()
    };
    if text.contains([',', '"', '\n', '\r']) {
        format!("\"{}\"", text.replace('"', "\"\""))
    } else {
        text
    }
}

const CSV_HEADER: &str = "received_at,request_id,model,target_model,pool,criticality,outcome,pod,endpoint,status,\
                          ttft_ms,duration_ms,prompt_tokens,completion_tokens,cached_tokens,scheduler_micros,profile,reason,\
                          mirror_of\n";

fn csv_row(d: &DecisionSummary) -> String {
    let num = |v: Option<f64>| v.map(|v| format!("{v:.3}")).unwrap_or_default();
    let int = |v: Option<i64>| v.map(|v| v.to_string()).unwrap_or_default();
    let cells = [
        format_ms(d.received_at_ms),
        csv_cell(&d.request_id),
        csv_cell(&d.model),
        csv_cell(&d.target_model),
        csv_cell(&d.pool),
        d.criticality.clone(),
        d.outcome.clone(),
        csv_cell(d.pod.as_deref().unwrap_or("")),
        csv_cell(d.endpoint.as_deref().unwrap_or("")),
        int(d.status),
        num(d.ttft_ms),
        num(d.duration_ms),
        int(d.prompt_tokens),
        int(d.completion_tokens),
        int(d.cached_tokens),
        d.scheduler_micros.to_string(),
        csv_cell(&d.profile),
        csv_cell(&d.reason),
        csv_cell(d.mirror_of.as_deref().unwrap_or("")),
    ];
    let mut line = cells.join(",");
    line.push('\n');
    line
}

async fn export_csv(State(state): State<AppState>, Query(params): Query<DecisionParams>) -> Result<Response, ApiError> {
    let (filter, _, _) = params.parse(DEFAULT_LIMIT)?;
    let body = export(
        state,
        filter,
        |state, filter, after| async move {
            let rows = state.db.list_decisions(&filter, after, EXPORT_PAGE).await?;
            Ok(rows.into_iter().map(|r| (r.cursor(), r)).collect())
        },
        csv_row,
    );
    let header_then_rows = Body::from_stream(
        stream::once(async { Ok::<_, axum::Error>(bytes::Bytes::from_static(CSV_HEADER.as_bytes())) })
            .chain(body.into_data_stream()),
    );
    Ok((
        [
            (header::CONTENT_TYPE, "text/csv; charset=utf-8"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"decisions.csv\""),
        ],
        header_then_rows,
    )
        .into_response())
}

fn ndjson_row(d: &Record) -> String {
    let mut line = serde_json::to_string(d).unwrap_or_default();
    line.push('\n');
    line
}

/// Full decision records, one JSON object per line (NDJSON: streamable and `jq`-friendly).
async fn export_json(
    State(state): State<AppState>,
    Query(params): Query<DecisionParams>,
) -> Result<Response, ApiError> {
    let (filter, _, _) = params.parse(DEFAULT_LIMIT)?;
    let body = export(
        state,
        filter,
        |state, filter, after| async move { Ok(state.db.list_full_decisions(&filter, after, EXPORT_PAGE).await?) },
        ndjson_row,
    );
    Ok((
        [
            (header::CONTENT_TYPE, "application/x-ndjson"),
            (header::CONTENT_DISPOSITION, "attachment; filename=\"decisions.ndjson\""),
        ],
        body,
    )
        .into_response())
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct RangeQuery {
    from: String,
    to: String,
}

/// Columnar series, the shape uPlot draws directly: `t` in seconds since the epoch.
#[derive(Serialize, Default)]
struct Series {
    t: Vec<f64>,
    kv_usage: Vec<f64>,
    queue: Vec<f64>,
    running: Vec<f64>,
    bucket_ms: i64,
}

async fn samples(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
    Query(range): Query<RangeQuery>,
) -> Result<Json<Series>, ApiError> {
    let now = now_ms();
    let time = |text: &str, default: i64| -> Result<i64, AppError> {
        if text.trim().is_empty() {
            Ok(default)
        } else {
            parse_time(text).ok_or_else(|| AppError::BadRequest(format!("invalid time {text:?}")))
        }
    };
    let to = time(&range.to, now)?;
    let from = time(&range.from, to - 15 * 60 * 1000)?;
    if from >= to {
        return Err(AppError::BadRequest("from must be before to".into()).into());
    }
    let bucket_ms = ((to - from) / MAX_POINTS).max(1000);
    let rows: Vec<SampleRow> = state
        .db
        .samples(&format!("{namespace}/{name}"), from, to, bucket_ms)
        .await?;
    let mut series = Series {
        bucket_ms,
        ..Series::default()
    };
    for r in rows {
        series.t.push(r.at_ms as f64 / 1000.0);
        series.kv_usage.push(r.kv_usage);
        series.queue.push(r.queue);
        series.running.push(r.running);
    }
    Ok(Json(series))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn csv_cells_are_quoted_and_defused() {
        assert_eq!(csv_cell("plain"), "plain");
        assert_eq!(csv_cell("a,b"), "\"a,b\"");
        assert_eq!(csv_cell("say \"hi\""), "\"say \"\"hi\"\"\"");
        assert_eq!(csv_cell("=cmd()"), "'=cmd()");
    }
}
