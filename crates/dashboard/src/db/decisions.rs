//! Decisions: batched inserts from ingest, the filtered keyset-paginated audit query, one decision by request id,
//! and per-model statistics for the overview.

use std::fmt;

use audit::{Candidate, Criticality, EndpointId, Outcome, Record};
use serde::{Deserialize, Serialize};
use sqlx::{QueryBuilder, Sqlite, prelude::FromRow};

use super::{Db, Result};

/// Rows per multi-row INSERT: 21 columns × 200 rows stays far below SQLite's 32 766 bound parameters, and
/// larger statements stop paying off.
const INSERT_CHUNK: usize = 200;

/// A decision in the shape it is stored: the filter columns, plus the candidates and fallbacks as JSON.
#[derive(Clone, Debug, PartialEq)]
pub struct NewDecision {
    /// The gateway's id of this decision; `None` for records without one (never deduplicated).
    pub record_id: Option<String>,
    pub request_id: String,
    pub received_at_ms: i64,
    pub model: String,
    pub target_model: String,
    pub pool: String,
    pub criticality: &'static str,
    pub outcome: &'static str,
    pub endpoint: Option<String>,
    /// `namespace/name` of the pod that won, when one did.
    pub pod: Option<String>,
    pub profile: String,
    pub reason: String,
    pub scheduler_micros: i64,
    pub status: Option<i64>,
    pub ttft_ms: Option<f64>,
    pub duration_ms: Option<f64>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub cached_tokens: Option<i64>,
    pub fallbacks: String,
    pub candidates: String,
    /// The request id of the client request this mirrored copy duplicates.
    pub mirror_of: Option<String>,
}

impl NewDecision {
    pub fn from_decision(d: &Record) -> Result<NewDecision> {
        let pod = d.endpoint.as_ref().and_then(|endpoint| {
            d.candidates
                .iter()
                .find(|c| &c.endpoint == endpoint)
                .map(|c| c.pod.as_str().to_owned())
        });
        Ok(NewDecision {
            record_id: (!d.record_id.is_empty()).then(|| d.record_id.clone()),
            request_id: d.request_id.clone(),
            received_at_ms: clamp_i64(d.received_at_ms),
            model: d.model.clone(),
            target_model: d.target_model.clone(),
            pool: d.pool.clone(),
            criticality: criticality_name(d.criticality),
            outcome: outcome_name(d.outcome),
            endpoint: d.endpoint.as_ref().map(|e| e.as_str().to_owned()),
            pod,
            profile: d.profile.clone(),
            reason: d.reason.clone(),
            scheduler_micros: clamp_i64(d.scheduler_micros),
            status: d.status.map(i64::from),
            ttft_ms: d.ttft_ms,
            duration_ms: d.duration_ms,
            prompt_tokens: d.prompt_tokens.map(clamp_i64),
            completion_tokens: d.completion_tokens.map(clamp_i64),
            cached_tokens: d.cached_tokens.map(clamp_i64),
            fallbacks: serde_json::to_string(&d.fallbacks)?,
            candidates: serde_json::to_string(&d.candidates)?,
            mirror_of: d.mirror_of.clone(),
        })
    }
}

fn clamp_i64(v: u64) -> i64 {
    i64::try_from(v).unwrap_or(i64::MAX)
}

pub fn outcome_name(outcome: Outcome) -> &'static str {
    match outcome {
        Outcome::Routed => "Routed",
        Outcome::Shed429 => "Shed429",
        Outcome::NoCapacity503 => "NoCapacity503",
        Outcome::BadRequest400 => "BadRequest400",
        Outcome::NotFound404 => "NotFound404",
        Outcome::Error => "Error",
    }
}

pub fn criticality_name(criticality: Criticality) -> &'static str {
    match criticality {
        Criticality::Critical => "Critical",
        Criticality::Standard => "Standard",
        Criticality::Sheddable => "Sheddable",
    }
}

/// The filters of the audit; every field narrows the result, `None` means any.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct DecisionFilter {
    pub model: Option<String>,
    pub target_model: Option<String>,
    pub pod: Option<String>,
    pub outcome: Option<Outcome>,
    pub criticality: Option<Criticality>,
    /// Inclusive lower bound on `received_at_ms`.
    pub from_ms: Option<i64>,
    /// Exclusive upper bound on `received_at_ms`.
    pub to_ms: Option<i64>,
    /// Request ids starting with this text (a prefix keeps the search on the index).
    pub request_id_prefix: Option<String>,
    /// Only mirrored copies, or only client traffic.
    pub mirrored: Option<Mirrored>,
}

/// The `mirrored` filter of the audit.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Mirrored {
    /// Only the decisions of mirrored copies.
    Only,
    /// Only client traffic.
    Exclude,
}

impl Mirrored {
    pub fn as_str(self) -> &'static str {
        match self {
            Mirrored::Only => "only",
            Mirrored::Exclude => "exclude",
        }
    }
}

/// Keyset position: the last row of the previous page, newest-first order on `(received_at_ms, id)`.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    pub received_at_ms: i64,
    pub id: i64,
}

impl fmt::Display for Cursor {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}.{}", self.received_at_ms, self.id)
    }
}

impl std::str::FromStr for Cursor {
    type Err = ();

    fn from_str(s: &str) -> std::result::Result<Cursor, ()> {
        let (at, id) = s.split_once('.').ok_or(())?;
        Ok(Cursor {
            received_at_ms: at.parse().map_err(|_| ())?,
            id: id.parse().map_err(|_| ())?,
        })
    }
}

/// One row of the audit list (no candidates).
#[derive(Clone, Debug, PartialEq, FromRow, Serialize)]
pub struct DecisionSummary {
    #[serde(skip)]
    pub id: i64,
    pub request_id: String,
    pub received_at_ms: i64,
    pub model: String,
    pub target_model: String,
    pub pool: String,
    pub criticality: String,
    pub outcome: String,
    pub endpoint: Option<String>,
    pub pod: Option<String>,
    pub profile: String,
    pub reason: String,
    pub scheduler_micros: i64,
    pub status: Option<i64>,
    pub ttft_ms: Option<f64>,
    pub duration_ms: Option<f64>,
    pub prompt_tokens: Option<i64>,
    pub completion_tokens: Option<i64>,
    pub cached_tokens: Option<i64>,
    pub mirror_of: Option<String>,
    pub record_id: Option<String>,
}

impl DecisionSummary {
    pub fn cursor(&self) -> Cursor {
        Cursor {
            received_at_ms: self.received_at_ms,
            id: self.id,
        }
    }
}

/// The columns of a [`DecisionSummary`], as a macro so fixed queries stay `&'static str` literals.
macro_rules! summary_columns {
    () => {
        "id, request_id, received_at_ms, model, target_model, pool, criticality, outcome, endpoint, pod, profile, \
         reason, scheduler_micros, status, ttft_ms, duration_ms, prompt_tokens, completion_tokens, cached_tokens, \
         mirror_of, record_id"
    };
}

const SUMMARY_COLUMNS: &str = summary_columns!();

#[derive(FromRow)]
struct FullRow {
    #[sqlx(flatten)]
    summary: DecisionSummary,
    fallbacks: String,
    candidates: String,
}

impl FullRow {
    fn into_decision(self) -> Result<(Cursor, Record)> {
        let s = self.summary;
        let cursor = s.cursor();
        let outcome: Outcome = serde_json::from_value(serde_json::Value::String(s.outcome))?;
        let criticality: Criticality = serde_json::from_value(serde_json::Value::String(s.criticality))?;
        let fallbacks: Vec<EndpointId> = serde_json::from_str(&self.fallbacks)?;
        let candidates: Vec<Candidate> = serde_json::from_str(&self.candidates)?;
        let unsigned = |v: i64| u64::try_from(v).unwrap_or(0);
        Ok((
            cursor,
            Record {
                record_id: s.record_id.unwrap_or_default(),
                request_id: s.request_id,
                received_at_ms: unsigned(s.received_at_ms),
                model: s.model,
                target_model: s.target_model,
                criticality,
                pool: s.pool,
                outcome,
                endpoint: s.endpoint.map(EndpointId::from),
                fallbacks,
                candidates,
                profile: s.profile,
                reason: s.reason,
                scheduler_micros: unsigned(s.scheduler_micros),
                status: s.status.and_then(|v| u16::try_from(v).ok()),
                ttft_ms: s.ttft_ms,
                duration_ms: s.duration_ms,
                prompt_tokens: s.prompt_tokens.map(unsigned),
                completion_tokens: s.completion_tokens.map(unsigned),
                cached_tokens: s.cached_tokens.map(unsigned),
                mirror_of: s.mirror_of,
            },
        ))
    }
}

/// Requests, successes and TTFT of one model → target pair over a window.
#[derive(Clone, Debug, PartialEq, FromRow, Serialize)]
pub struct ModelStats {
    pub model: String,
    pub target_model: String,
    pub requests: i64,
    pub routed: i64,
    pub errors: i64,
    pub ttft_mean_ms: Option<f64>,
    pub ttft_max_ms: Option<f64>,
}

fn push_filter(qb: &mut QueryBuilder<Sqlite>, filter: &DecisionFilter, after: Option<Cursor>) {
    qb.push(" WHERE 1 = 1");
    let text_filters = [
        ("model", &filter.model),
        ("target_model", &filter.target_model),
        ("pod", &filter.pod),
    ];
    for (column, value) in text_filters {
        if let Some(value) = value {
            qb.push(format_args!(" AND {column} = ")).push_bind(value.clone());
        }
    }
    if let Some(outcome) = filter.outcome {
        qb.push(" AND outcome = ").push_bind(outcome_name(outcome));
    }
    if let Some(criticality) = filter.criticality {
        qb.push(" AND criticality = ").push_bind(criticality_name(criticality));
    }
    if let Some(from) = filter.from_ms {
        qb.push(" AND received_at_ms >= ").push_bind(from);
    }
    if let Some(to) = filter.to_ms {
        qb.push(" AND received_at_ms < ").push_bind(to);
    }
    if let Some(prefix) = &filter.request_id_prefix {
        // `request_id >= p AND request_id < p || U+10FFFF` is a prefix match SQLite answers from the index.
        qb.push(" AND request_id >= ")
            .push_bind(prefix.clone())
            .push(" AND request_id < ")
            .push_bind(format!("{prefix}\u{10FFFF}"));
    }
    match filter.mirrored {
        // Matches the partial index `decisions_mirrored`, so a page of copies is a range scan of copies only.
        Some(Mirrored::Only) => qb.push(" AND mirror_of IS NOT NULL"),
        Some(Mirrored::Exclude) => qb.push(" AND mirror_of IS NULL"),
        None => &mut *qb,
    };
    if let Some(after) = after {
        qb.push(" AND (received_at_ms, id) < (")
            .push_bind(after.received_at_ms)
            .push(", ")
            .push_bind(after.id)
            .push(")");
    }
    qb.push(" ORDER BY received_at_ms DESC, id DESC LIMIT ");
}

impl Db {
    /// Stores a batch in one transaction; returns how many rows were written (records already stored under their
    /// `record_id` are skipped).
    pub async fn insert_decisions(&self, rows: &[NewDecision]) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let mut written = 0;
        for chunk in rows.chunks(INSERT_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT INTO decisions (request_id, received_at_ms, model, target_model, pool, criticality, outcome, \
                 endpoint, pod, profile, reason, scheduler_micros, status, ttft_ms, duration_ms, prompt_tokens, \
                 completion_tokens, cached_tokens, fallbacks, candidates, mirror_of, record_id) ",
            );
            qb.push_values(chunk, |mut b, d| {
                b.push_bind(d.request_id.as_str())
                    .push_bind(d.received_at_ms)
                    .push_bind(d.model.as_str())
                    .push_bind(d.target_model.as_str())
                    .push_bind(d.pool.as_str())
                    .push_bind(d.criticality)
                    .push_bind(d.outcome)
                    .push_bind(d.endpoint.as_deref())
                    .push_bind(d.pod.as_deref())
                    .push_bind(d.profile.as_str())
                    .push_bind(d.reason.as_str())
                    .push_bind(d.scheduler_micros)
                    .push_bind(d.status)
                    .push_bind(d.ttft_ms)
                    .push_bind(d.duration_ms)
                    .push_bind(d.prompt_tokens)
                    .push_bind(d.completion_tokens)
                    .push_bind(d.cached_tokens)
                    .push_bind(d.fallbacks.as_str())
                    .push_bind(d.candidates.as_str())
                    .push_bind(d.mirror_of.as_deref())
                    .push_bind(d.record_id.as_deref());
            });
            // A record already stored (a batch resent after its answer was lost) is skipped, not duplicated.
            qb.push(" ON CONFLICT DO NOTHING");
            written += qb.build().execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    /// One page of the audit, newest first, strictly older than `after`.
    pub async fn list_decisions(
        &self,
        filter: &DecisionFilter,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<Vec<DecisionSummary>> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!("SELECT {SUMMARY_COLUMNS} FROM decisions"));
        push_filter(&mut qb, filter, after);
        qb.push_bind(i64::from(limit));
        Ok(qb.build_query_as::<DecisionSummary>().fetch_all(&self.pool).await?)
    }

    /// SQLite's plan for one audit page (`EXPLAIN QUERY PLAN`), one line per step: tests and the benchmark check
    /// that every filter stays on an index.
    pub async fn audit_plan(&self, filter: &DecisionFilter, limit: u32) -> Result<Vec<String>> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!("EXPLAIN QUERY PLAN SELECT {SUMMARY_COLUMNS} FROM decisions"));
        push_filter(&mut qb, filter, None);
        qb.push_bind(i64::from(limit));
        let rows: Vec<(i64, i64, i64, String)> = qb.build_query_as().fetch_all(&self.pool).await?;
        Ok(rows.into_iter().map(|(_, _, _, detail)| detail).collect())
    }

    /// Like [`Db::list_decisions`] but with candidates and fallbacks, as full decision records.
    pub async fn list_full_decisions(
        &self,
        filter: &DecisionFilter,
        after: Option<Cursor>,
        limit: u32,
    ) -> Result<Vec<(Cursor, Record)>> {
        let mut qb = QueryBuilder::<Sqlite>::new(format!(
            "SELECT {SUMMARY_COLUMNS}, fallbacks, candidates FROM decisions"
        ));
        push_filter(&mut qb, filter, after);
        qb.push_bind(i64::from(limit));
        let rows = qb.build_query_as::<FullRow>().fetch_all(&self.pool).await?;
        rows.into_iter().map(FullRow::into_decision).collect()
    }

    /// A decision with this request id: the stored row `row` when given, else the newest (ids supplied by clients
    /// need not be unique; a client request comes before a mirrored copy that happens to carry the same id).
    /// Returns the row's id with the record.
    pub async fn get_decision(&self, request_id: &str, row: Option<i64>) -> Result<Option<(i64, Record)>> {
        let found = sqlx::query_as::<_, FullRow>(concat!(
            "SELECT ",
            summary_columns!(),
            ", fallbacks, candidates FROM decisions WHERE request_id = ?1 AND (?2 IS NULL OR id = ?2) \
             ORDER BY mirror_of IS NOT NULL, id DESC LIMIT 1"
        ))
        .bind(request_id)
        .bind(row)
        .fetch_optional(&self.pool)
        .await?;
        found.map(|r| r.into_decision().map(|(c, d)| (c.id, d))).transpose()
    }

    /// Every stored decision with this request id (a reused `x-request-id`, a mirrored copy), newest first.
    pub async fn with_request_id(&self, request_id: &str, limit: u32) -> Result<Vec<DecisionSummary>> {
        Ok(sqlx::query_as::<_, DecisionSummary>(concat!(
            "SELECT ",
            summary_columns!(),
            " FROM decisions WHERE request_id = ?1 ORDER BY id DESC LIMIT ?2"
        ))
        .bind(request_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    /// The mirrored copies of one client request, newest first.
    pub async fn mirrors_of(&self, request_id: &str, limit: u32) -> Result<Vec<DecisionSummary>> {
        Ok(sqlx::query_as::<_, DecisionSummary>(concat!(
            "SELECT ",
            summary_columns!(),
            " FROM decisions WHERE mirror_of = ?1 ORDER BY id DESC LIMIT ?2"
        ))
        .bind(request_id)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    /// Per model → target statistics of the client requests (mirrored copies left out) received since `since_ms`.
    pub async fn model_stats(&self, since_ms: i64) -> Result<Vec<ModelStats>> {
        Ok(sqlx::query_as::<_, ModelStats>(
            "SELECT model, target_model, count(*) AS requests, \
             sum(outcome = 'Routed') AS routed, sum(outcome = 'Error') AS errors, \
             avg(ttft_ms) AS ttft_mean_ms, max(ttft_ms) AS ttft_max_ms \
             FROM decisions WHERE received_at_ms >= ?1 AND mirror_of IS NULL \
             GROUP BY model, target_model ORDER BY model, target_model",
        )
        .bind(since_ms)
        .fetch_all(&self.pool)
        .await?)
    }
}
