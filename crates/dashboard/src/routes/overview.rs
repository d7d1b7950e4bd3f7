//! `/`: pools, pods with their live queue / running / KV-cache use, and request rate and TTFT per model over the last
//! five minutes; the live part re-renders every two seconds through htmx (`/partials/overview`).

use std::collections::BTreeMap;

use askama::Template;
use askama_web::WebTemplate;
use axum::{Router, extract::State, http::HeaderMap, routing::get};

use super::{Nav, encode, fmt_opt_ms, fmt_pct, pod_path, session};
use crate::{AppState, error::AppError, time::now_ms};

/// The window of the per-model statistics.
const WINDOW_MS: i64 = 5 * 60 * 1000;
/// A pod not sampled for this long is shown as stale.
const STALE_MS: i64 = 5_000;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/", get(overview))
        .route("/partials/overview", get(partial))
}

pub(crate) struct PoolView {
    name: String,
    pods: usize,
    kv_mean: String,
    queue: i64,
    running: i64,
}

pub(crate) struct PodView {
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
    stale: bool,
}

pub(crate) struct ModelView {
    model: String,
    target: String,
    filter: String,
    requests: i64,
    rate: String,
    routed: String,
    errors: i64,
    ttft_mean: String,
    ttft_max: String,
}

pub(crate) struct Live {
    pools: Vec<PoolView>,
    pods: Vec<PodView>,
    models: Vec<ModelView>,
}

pub(crate) fn kv_class(kv: f64) -> &'static str {
    if kv >= 0.9 {
        "hot"
    } else if kv >= 0.7 {
        "warm"
    } else {
        "ok"
    }
}

async fn live(state: &AppState) -> Result<Live, AppError> {
    let now = now_ms();
    let pods = state.db.pods().await?;
    let stats = state.db.model_stats(now - WINDOW_MS).await?;
    let mut pools: BTreeMap<String, (usize, f64, i64, i64)> = BTreeMap::new();
    for p in &pods {
        let e = pools.entry(p.pool.clone()).or_default();
        *e = (e.0 + 1, e.1 + p.kv_usage, e.2 + p.queue, e.3 + p.running);
    }
    Ok(Live {
        pools: pools
            .into_iter()
            .map(|(name, (n, kv, queue, running))| PoolView {
                name,
                pods: n,
                kv_mean: fmt_pct(kv / n.max(1) as f64),
                queue,
                running,
            })
            .collect(),
        pods: pods
            .iter()
            .map(|p| {
                let age = now - p.last_seen_ms;
                PodView {
                    name: p.pod.clone(),
                    path: pod_path(&p.pod),
                    pool: p.pool.clone(),
                    endpoint: p.endpoint.clone(),
                    queue: p.queue,
                    running: p.running,
                    kv: fmt_pct(p.kv_usage),
                    kv_width: (p.kv_usage.clamp(0.0, 1.0) * 100.0).round() as u32,
                    kv_class: kv_class(p.kv_usage),
                    seen: if age < 1000 {
                        "now".into()
                    } else {
                        format!("{}s ago", age / 1000)
                    },
                    stale: age > STALE_MS,
                }
            })
            .collect(),
        models: stats
            .iter()
            .map(|s| ModelView {
                filter: format!("model={}&target_model={}", encode(&s.model), encode(&s.target_model)),
                model: s.model.clone(),
                target: s.target_model.clone(),
                requests: s.requests,
                rate: format!("{:.2}", s.requests as f64 / (WINDOW_MS as f64 / 1000.0)),
                routed: format!("{:.1}", s.routed as f64 * 100.0 / s.requests.max(1) as f64),
                errors: s.errors,
                ttft_mean: fmt_opt_ms(s.ttft_mean_ms),
                ttft_max: fmt_opt_ms(s.ttft_max_ms),
            })
            .collect(),
    })
}

#[derive(Template, WebTemplate)]
#[template(path = "overview.html")]
struct OverviewPage {
    nav: Nav,
    live: Live,
}

#[derive(Template, WebTemplate)]
#[template(path = "overview_live.html")]
struct LivePartial {
    live: Live,
}

async fn overview(State(state): State<AppState>, headers: HeaderMap) -> Result<OverviewPage, AppError> {
    let session = session(&state, &headers);
    Ok(OverviewPage {
        nav: Nav::new("overview", session.as_ref()),
        live: live(&state).await?,
    })
}

async fn partial(State(state): State<AppState>) -> Result<LivePartial, AppError> {
    Ok(LivePartial {
        live: live(&state).await?,
    })
}
