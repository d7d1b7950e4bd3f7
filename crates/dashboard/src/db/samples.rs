//! Per-pod samples (queue, running, KV-cache use): the time series behind the pod charts and the latest state per
//! pod behind the overview.

use serde::{Deserialize, Serialize};
use sqlx::{QueryBuilder, Sqlite, prelude::FromRow};

use super::{Db, Result};

/// Rows per multi-row INSERT of samples (6 columns each).
const INSERT_CHUNK: usize = 500;

/// One sample as shipped by a gateway.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
pub struct NewSample {
    /// `namespace/name`.
    pub pod: String,
    pub pool: String,
    /// `ip:port`.
    pub endpoint: String,
    pub at_ms: i64,
    pub queue: u32,
    pub running: u32,
    /// 0..=1.
    pub kv_usage: f64,
}

/// The latest known state of one pod.
#[derive(Clone, Debug, PartialEq, FromRow, Serialize)]
pub struct PodRow {
    pub pod: String,
    pub pool: String,
    pub endpoint: String,
    pub last_seen_ms: i64,
    pub queue: i64,
    pub running: i64,
    pub kv_usage: f64,
}

/// One point of a pod's history (averaged over its bucket when the range is long).
#[derive(Clone, Debug, PartialEq, FromRow, Serialize)]
pub struct SampleRow {
    pub at_ms: i64,
    pub queue: f64,
    pub running: f64,
    pub kv_usage: f64,
}

impl Db {
    /// Stores a batch of samples and moves each pod's latest state forward.
    pub async fn insert_samples(&self, samples: &[NewSample]) -> Result<u64> {
        if samples.is_empty() {
            return Ok(0);
        }
        let mut tx = self.pool.begin().await?;
        let mut written = 0;
        for chunk in samples.chunks(INSERT_CHUNK) {
            let mut qb = QueryBuilder::<Sqlite>::new(
                "INSERT OR REPLACE INTO pod_samples (pod, at_ms, queue, running, kv_usage) ",
            );
            qb.push_values(chunk, |mut b, s| {
                b.push_bind(s.pod.as_str())
                    .push_bind(s.at_ms)
                    .push_bind(s.queue)
                    .push_bind(s.running)
                    .push_bind(s.kv_usage);
            });
            written += qb.build().execute(&mut *tx).await?.rows_affected();
        }
        for s in samples {
            sqlx::query(
                "INSERT INTO pods (pod, pool, endpoint, last_seen_ms, queue, running, kv_usage) \
                 VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7) \
                 ON CONFLICT (pod) DO UPDATE SET pool = excluded.pool, endpoint = excluded.endpoint, \
                 last_seen_ms = excluded.last_seen_ms, queue = excluded.queue, running = excluded.running, \
                 kv_usage = excluded.kv_usage WHERE excluded.last_seen_ms >= pods.last_seen_ms",
            )
            .bind(&s.pod)
            .bind(&s.pool)
            .bind(&s.endpoint)
            .bind(s.at_ms)
            .bind(s.queue)
            .bind(s.running)
            .bind(s.kv_usage)
            .execute(&mut *tx)
            .await?;
        }
        tx.commit().await?;
        Ok(written)
    }

    /// Every pod with its latest sample, by pool and name.
    pub async fn pods(&self) -> Result<Vec<PodRow>> {
        Ok(sqlx::query_as::<_, PodRow>(
            "SELECT pod, pool, endpoint, last_seen_ms, queue, running, kv_usage FROM pods ORDER BY pool, pod",
        )
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn pod(&self, pod: &str) -> Result<Option<PodRow>> {
        Ok(sqlx::query_as::<_, PodRow>(
            "SELECT pod, pool, endpoint, last_seen_ms, queue, running, kv_usage FROM pods WHERE pod = ?1",
        )
        .bind(pod)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// A pod's samples in `[from_ms, to_ms)`, averaged into buckets of `bucket_ms` (1 keeps every sample).
    pub async fn samples(&self, pod: &str, from_ms: i64, to_ms: i64, bucket_ms: i64) -> Result<Vec<SampleRow>> {
        Ok(sqlx::query_as::<_, SampleRow>(
            "SELECT (at_ms / ?4) * ?4 AS at_ms, avg(queue) AS queue, avg(running) AS running, \
             avg(kv_usage) AS kv_usage \
             FROM pod_samples WHERE pod = ?1 AND at_ms >= ?2 AND at_ms < ?3 \
             GROUP BY at_ms / ?4 ORDER BY 1",
        )
        .bind(pod)
        .bind(from_ms)
        .bind(to_ms)
        .bind(bucket_ms.max(1))
        .fetch_all(&self.pool)
        .await?)
    }
}
