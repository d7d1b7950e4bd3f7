//! `/decisions` (the searchable audit, keyset-paginated) and `/decisions/{request_id}` (every candidate with its
//! metrics and scorer values, and why the winner won). The query string is the filter, shared with the JSON API and
//! the exports.

use askama::Template;
use askama_web::WebTemplate;
use audit::{Criticality, Outcome, Record};
use axum::{
    Router,
    extract::{Path, Query, State},
    http::HeaderMap,
    routing::get,
};
use serde::Deserialize;

use super::{Nav, encode, fmt_opt_ms, fmt_pct, pod_path, session};
use crate::{
    AppState,
    db::{Cursor, DecisionFilter, DecisionSummary, Mirrored},
    error::AppError,
    time::{format_input, format_ms, parse_time},
};

/// Rows per page when the query names no `limit`.
pub(crate) const DEFAULT_LIMIT: u32 = 50;
/// Largest page the API serves.
pub(crate) const MAX_LIMIT: u32 = 1000;
/// Mirrored copies listed on a client request's page.
const MIRRORS_SHOWN: u32 = 20;
/// Records listed that share the shown one's request id.
const SAME_ID_SHOWN: u32 = 50;

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/decisions", get(list))
        .route("/decisions/{request_id}", get(detail))
}

pub(crate) const OUTCOMES: [&str; 6] = [
    "Routed",
    "Shed429",
    "NoCapacity503",
    "BadRequest400",
    "NotFound404",
    "Error",
];
pub(crate) const CRITICALITIES: [&str; 3] = ["Critical", "Standard", "Sheddable"];

/// The query string of the audit as typed; empty fields mean "any".
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default)]
pub(crate) struct DecisionParams {
    pub(crate) model: String,
    pub(crate) target_model: String,
    pub(crate) pod: String,
    pub(crate) outcome: String,
    pub(crate) criticality: String,
    pub(crate) from: String,
    pub(crate) to: String,
    pub(crate) q: String,
    /// `only` (mirrored copies) or `exclude` (client traffic); empty for both.
    pub(crate) mirrored: String,
    pub(crate) after: String,
    pub(crate) limit: String,
}

fn opt(text: &str) -> Option<String> {
    let text = text.trim();
    (!text.is_empty()).then(|| text.to_owned())
}

impl DecisionParams {
    /// The filter, cursor and page size; 400 with the offending parameter named when one is malformed.
    pub(crate) fn parse(&self, default_limit: u32) -> Result<(DecisionFilter, Option<Cursor>, u32), AppError> {
        let bad = |what: &str| AppError::BadRequest(format!("invalid {what}"));
        let outcome = match opt(&self.outcome) {
            None => None,
            Some(o) => Some(
                serde_json::from_value::<Outcome>(serde_json::Value::String(o)).map_err(|_| {
                    bad("outcome (one of Routed, Shed429, NoCapacity503, BadRequest400, NotFound404, Error)")
                })?,
            ),
        };
        let criticality = match opt(&self.criticality) {
            None => None,
            Some(c) => Some(
                serde_json::from_value::<Criticality>(serde_json::Value::String(c))
                    .map_err(|_| bad("criticality (Critical, Standard or Sheddable)"))?,
            ),
        };
        let mirrored = match opt(&self.mirrored).as_deref() {
            None => None,
            Some("only") => Some(Mirrored::Only),
            Some("exclude") => Some(Mirrored::Exclude),
            Some(_) => return Err(bad("mirrored (only or exclude)")),
        };
        let time = |text: &str, what: &str| match opt(text) {
            None => Ok(None),
            Some(t) => parse_time(&t).map(Some).ok_or_else(|| bad(what)),
        };
        let filter = DecisionFilter {
            model: opt(&self.model),
            target_model: opt(&self.target_model),
            pod: opt(&self.pod),
            outcome,
            criticality,
            from_ms: time(&self.from, "from (YYYY-MM-DDTHH:MM in UTC, or ms since the epoch)")?,
            to_ms: time(&self.to, "to (YYYY-MM-DDTHH:MM in UTC, or ms since the epoch)")?,
            request_id_prefix: opt(&self.q),
            mirrored,
        };
        let after = match opt(&self.after) {
            None => None,
            Some(a) => Some(a.parse::<Cursor>().map_err(|()| bad("after cursor"))?),
        };
        let limit = match opt(&self.limit) {
            None => default_limit,
            Some(l) => l
                .parse::<u32>()
                .ok()
                .filter(|l| (1..=MAX_LIMIT).contains(l))
                .ok_or_else(|| bad("limit (1 to 1000)"))?,
        };
        Ok((filter, after, limit))
    }

    /// The query string of these filters (without the cursor), for links to other pages and exports.
    pub(crate) fn query_string(&self) -> String {
        [
            ("model", &self.model),
            ("target_model", &self.target_model),
            ("pod", &self.pod),
            ("outcome", &self.outcome),
            ("criticality", &self.criticality),
            ("from", &self.from),
            ("to", &self.to),
            ("q", &self.q),
            ("mirrored", &self.mirrored),
        ]
        .iter()
        .filter(|(_, v)| !v.trim().is_empty())
        .map(|(k, v)| format!("{k}={}", encode(v.trim())))
        .collect::<Vec<_>>()
        .join("&")
    }
}

pub(crate) struct Row {
    pub(crate) link: String,
    pub(crate) request_id: String,
    pub(crate) time: String,
    pub(crate) model: String,
    pub(crate) target: String,
    pub(crate) pod: String,
    pub(crate) pod_path: String,
    pub(crate) outcome: String,
    pub(crate) outcome_class: &'static str,
    pub(crate) status: String,
    pub(crate) ttft: String,
    pub(crate) micros: i64,
    pub(crate) reason: String,
    /// The original request's id, on a mirrored copy.
    pub(crate) mirror_of: Option<String>,
}

pub(crate) fn outcome_class(outcome: &str) -> &'static str {
    match outcome {
        "Routed" => "ok",
        "Shed429" | "NoCapacity503" => "warn",
        _ => "bad",
    }
}

pub(crate) fn rows(summaries: &[DecisionSummary]) -> Vec<Row> {
    summaries
        .iter()
        .map(|d| Row {
            link: format!("/decisions/{}", encode(&d.request_id)),
            request_id: d.request_id.clone(),
            time: format_ms(d.received_at_ms),
            model: d.model.clone(),
            target: d.target_model.clone(),
            pod: d.pod.clone().unwrap_or_default(),
            pod_path: d.pod.as_deref().map(pod_path).unwrap_or_default(),
            outcome: d.outcome.clone(),
            outcome_class: outcome_class(&d.outcome),
            status: d.status.map(|s| s.to_string()).unwrap_or_else(|| "–".into()),
            ttft: fmt_opt_ms(d.ttft_ms),
            micros: d.scheduler_micros,
            reason: d.reason.clone(),
            mirror_of: d.mirror_of.clone(),
        })
        .collect()
}

#[derive(Template, WebTemplate)]
#[template(path = "decisions.html")]
struct ListPage {
    nav: Nav,
    params: DecisionParams,
    from_value: String,
    to_value: String,
    outcomes: [&'static str; 6],
    criticalities: [&'static str; 3],
    rows: Vec<Row>,
    query: String,
    next: Option<String>,
    first_page: bool,
}

async fn list(
    State(state): State<AppState>,
    headers: HeaderMap,
    Query(params): Query<DecisionParams>,
) -> Result<ListPage, AppError> {
    let (filter, after, limit) = params.parse(DEFAULT_LIMIT)?;
    let summaries = state.db.list_decisions(&filter, after, limit).await?;
    let query = params.query_string();
    let next = (summaries.len() == limit as usize)
        .then(|| summaries.last().map(|d| d.cursor()))
        .flatten()
        .map(|c| {
            let sep = if query.is_empty() { "" } else { "&" };
            format!("/decisions?{query}{sep}after={c}")
        });
    let session = session(&state, &headers);
    Ok(ListPage {
        nav: Nav::new("decisions", session.as_ref()),
        from_value: filter.from_ms.map(format_input).unwrap_or_default(),
        to_value: filter.to_ms.map(format_input).unwrap_or_default(),
        outcomes: OUTCOMES,
        criticalities: CRITICALITIES,
        rows: rows(&summaries),
        first_page: after.is_none(),
        params,
        query,
        next,
    })
}

pub(crate) struct CandidateView {
    pod: String,
    pod_path: String,
    endpoint: String,
    winner: bool,
    fallback: bool,
    queue: u32,
    running: u32,
    kv: String,
    prefix: u32,
    /// "precise" (the engine's reported blocks) or "approximate" (what the gateway sent).
    prefix_mode: &'static str,
    lora: String,
    age: String,
    scores: Vec<String>,
    total: String,
    total_value: f64,
    filtered_by: String,
}

#[derive(Template, WebTemplate)]
#[template(path = "decision.html")]
struct DetailPage {
    nav: Nav,
    d: Record,
    /// Every record stored under this request id when there are several, the shown one marked.
    same_id: Vec<(bool, Row)>,
    outcome: &'static str,
    criticality: &'static str,
    time: String,
    outcome_class: &'static str,
    scorers: Vec<String>,
    candidates: Vec<CandidateView>,
    why: String,
    ttft: String,
    duration: String,
    tokens: String,
    json_link: String,
    /// On a mirrored copy: the link to the client request it copies.
    original_link: Option<String>,
    /// On a client request: its mirrored copies.
    mirrors: Vec<Row>,
}

/// One sentence on why the winner won: its total against the runner-up, and the scorer that made the difference.
fn explain(d: &Record) -> String {
    let Some(endpoint) = &d.endpoint else {
        return d.reason.clone();
    };
    let Some(winner) = d.candidates.iter().find(|c| &c.endpoint == endpoint) else {
        return d.reason.clone();
    };
    let runner_up = d
        .candidates
        .iter()
        .filter(|c| &c.endpoint != endpoint && c.filtered_by.is_none())
        .max_by(|a, b| a.total.total_cmp(&b.total));
    match runner_up {
        None => format!("{} was the only candidate left after filtering.", winner.pod),
        Some(r) => {
            let lead = winner
                .scores
                .iter()
                .map(|(name, v)| (name, v - r.scores.get(name).copied().unwrap_or(0.0)))
                .max_by(|a, b| a.1.total_cmp(&b.1));
            let lead = match lead {
                Some((name, delta)) if delta > 0.0 => {
                    format!("; the largest lead was {name} (+{delta:.2} before weighting)")
                }
                _ => String::new(),
            };
            if (winner.total - r.total).abs() < 1e-9 {
                format!(
                    "{} tied with {} at {:.2}; the picker broke the tie{lead}.",
                    winner.pod, r.pod, winner.total
                )
            } else {
                format!(
                    "{} scored {:.2} against {:.2} for the runner-up {}{lead}.",
                    winner.pod, winner.total, r.total, r.pod
                )
            }
        }
    }
}

/// `?row=` picks one of several stored records sharing a request id (the page lists them all).
#[derive(Deserialize, Default)]
struct DetailQuery {
    row: Option<i64>,
}

async fn detail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path(request_id): Path<String>,
    Query(q): Query<DetailQuery>,
) -> Result<DetailPage, AppError> {
    let (row, d) = state
        .db
        .get_decision(&request_id, q.row)
        .await?
        .ok_or_else(|| AppError::NotFound(format!("decision {request_id:?}")))?;
    let same_id = state.db.with_request_id(&request_id, SAME_ID_SHOWN).await?;
    let same_id: Vec<(bool, Row)> = if same_id.len() > 1 {
        let shown = same_id.iter().map(|s| s.id == row);
        let links = same_id
            .iter()
            .map(|s| format!("/decisions/{}?row={}", encode(&s.request_id), s.id));
        shown
            .zip(rows(&same_id).into_iter().zip(links))
            .map(|(current, (r, link))| (current, Row { link, ..r }))
            .collect()
    } else {
        Vec::new()
    };
    let scorers: Vec<String> = d
        .candidates
        .iter()
        .flat_map(|c| c.scores.keys())
        .fold(Vec::new(), |mut acc, k| {
            if !acc.iter().any(|a: &String| a == k) {
                acc.push(k.to_owned());
            }
            acc
        });
    let mut candidates: Vec<CandidateView> = d
        .candidates
        .iter()
        .map(|c| CandidateView {
            pod: c.pod.to_string(),
            pod_path: pod_path(c.pod.as_str()),
            endpoint: c.endpoint.to_string(),
            winner: d.endpoint.as_ref() == Some(&c.endpoint),
            fallback: d.fallbacks.contains(&c.endpoint),
            queue: c.queue,
            running: c.running,
            kv: fmt_pct(c.kv_usage),
            prefix: c.prefix_match_blocks,
            prefix_mode: match c.prefix_mode {
                audit::PrefixMode::Precise => "precise",
                audit::PrefixMode::Approximate => "approximate",
            },
            lora: serde_json::to_value(c.lora_state)
                .ok()
                .and_then(|v| v.as_str().map(|s| s.replace('_', " ")))
                .unwrap_or_default(),
            age: c
                .metrics_age_ms
                .map(|a| format!("{a} ms"))
                .unwrap_or_else(|| "never".into()),
            scores: scorers
                .iter()
                .map(|s| c.scores.get(s).map(|v| format!("{v:.2}")).unwrap_or_else(|| "–".into()))
                .collect(),
            total: format!("{:.2}", c.total),
            total_value: c.total,
            filtered_by: c.filtered_by.as_deref().unwrap_or("").to_owned(),
        })
        .collect();
    // Winner first, then by total, so the table reads as a ranking.
    candidates.sort_by(|a, b| b.winner.cmp(&a.winner).then(b.total_value.total_cmp(&a.total_value)));
    let tokens = match (d.prompt_tokens, d.completion_tokens) {
        (Some(p), Some(c)) => format!(
            "{p} prompt / {c} completion{}",
            d.cached_tokens.map(|c| format!(" / {c} cached")).unwrap_or_default()
        ),
        _ => "–".into(),
    };
    let mirrors = match &d.mirror_of {
        Some(_) => Vec::new(),
        None => rows(&state.db.mirrors_of(&d.request_id, MIRRORS_SHOWN).await?),
    };
    let session = session(&state, &headers);
    Ok(DetailPage {
        nav: Nav::new("decisions", session.as_ref()),
        original_link: d.mirror_of.as_deref().map(|id| format!("/decisions/{}", encode(id))),
        mirrors,
        same_id,
        time: format_ms(i64::try_from(d.received_at_ms).unwrap_or(i64::MAX)),
        outcome_class: outcome_class(crate::db::outcome_name(d.outcome)),
        outcome: crate::db::outcome_name(d.outcome),
        criticality: crate::db::criticality_name(d.criticality),
        why: explain(&d),
        ttft: fmt_opt_ms(d.ttft_ms),
        duration: fmt_opt_ms(d.duration_ms),
        json_link: format!("/api/v1/decisions/{}", encode(&d.request_id)),
        tokens,
        scorers,
        candidates,
        d,
    })
}
