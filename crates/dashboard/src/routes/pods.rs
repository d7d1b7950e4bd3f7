//! `/pods` and `/pods/{namespace}/{name}`: KV-cache use, queue and running requests over time (uPlot charts fed by
//! `/api/v1/pods/{namespace}/{name}/samples`, with a range picker and live refresh) and the pod's latest decisions.

use askama::Template;
use askama_web::WebTemplate;
use axum::{
    Router,
    extract::{Path, State},
    http::HeaderMap,
    routing::get,
};

use super::{
    Nav,
    decisions::{Row, rows},
    encode, fmt_pct,
    overview::kv_class,
    pod_path, session,
};
use crate::{AppState, db::DecisionFilter, error::AppError, time::now_ms};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/pods", get(list))
        .route("/pods/{namespace}/{name}", get(detail))
}

struct PodItem {
    name: String,
    path: String,
    pool: String,
    endpoint: String,
    queue: i64,
    running: i64,
    kv: String,
    kv_width: u32,
    kv_class: &'static str,
    seen: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "pods.html")]
struct ListPage {
    nav: Nav,
    pods: Vec<PodItem>,
}

async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<ListPage, AppError> {
    let now = now_ms();
    let pods = state
        .db
        .pods()
        .await?
        .into_iter()
        .map(|p| PodItem {
            path: pod_path(&p.pod),
            kv: fmt_pct(p.kv_usage),
            kv_width: (p.kv_usage.clamp(0.0, 1.0) * 100.0).round() as u32,
            kv_class: kv_class(p.kv_usage),
            seen: format!("{}s ago", (now - p.last_seen_ms).max(0) / 1000),
            name: p.pod,
            pool: p.pool,
            endpoint: p.endpoint,
            queue: p.queue,
            running: p.running,
        })
        .collect();
    let session = session(&state, &headers);
    Ok(ListPage {
        nav: Nav::new("pods", session.as_ref()),
        pods,
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "pod.html")]
struct DetailPage {
    nav: Nav,
    pod: String,
    endpoint: String,
    pool: String,
    samples_url: String,
    decisions_link: String,
    rows: Vec<Row>,
}

/// Decisions shown under the charts.
const RECENT_DECISIONS: u32 = 20;

async fn detail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<DetailPage, AppError> {
    let pod = format!("{namespace}/{name}");
    let row = state.db.pod(&pod).await?;
    let filter = DecisionFilter {
        pod: Some(pod.clone()),
        ..DecisionFilter::default()
    };
    let recent = state.db.list_decisions(&filter, None, RECENT_DECISIONS).await?;
    if row.is_none() && recent.is_empty() {
        return Err(AppError::NotFound(format!("pod {pod}")));
    }
    let session = session(&state, &headers);
    Ok(DetailPage {
        nav: Nav::new("pods", session.as_ref()),
        endpoint: row.as_ref().map(|r| r.endpoint.clone()).unwrap_or_default(),
        pool: row.as_ref().map(|r| r.pool.clone()).unwrap_or_default(),
        samples_url: format!("/api/v1/pods/{}/{}/samples", encode(&namespace), encode(&name)),
        decisions_link: format!("/decisions?pod={}", encode(&pod)),
        rows: rows(&recent),
        pod,
    })
}
