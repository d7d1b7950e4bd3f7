//! Release history: every change of an InferenceModel's target weights made through the dashboard.

use serde::Serialize;
use sqlx::prelude::FromRow;

use super::{Db, Result};

/// Whether a change was a new release or a return to an earlier state.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseKind {
    Apply,
    Rollback,
}

impl ReleaseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseKind::Apply => "apply",
            ReleaseKind::Rollback => "rollback",
        }
    }
}

/// A release to record; `before` and `after` are JSON arrays of `{"name", "weight"}`.
#[derive(Clone, Debug, PartialEq)]
pub struct NewRelease {
    pub namespace: String,
    pub name: String,
    pub model_name: String,
    pub at_ms: i64,
    pub actor: String,
    pub kind: ReleaseKind,
    pub reason: String,
    pub before: String,
    pub after: String,
}

/// A recorded release.
#[derive(Clone, Debug, PartialEq, FromRow, Serialize)]
pub struct ReleaseRow {
    pub id: i64,
    pub namespace: String,
    pub name: String,
    pub model_name: String,
    pub at_ms: i64,
    pub actor: String,
    pub kind: String,
    pub reason: String,
    pub before: String,
    pub after: String,
}

impl Db {
    pub async fn insert_release(&self, release: &NewRelease) -> Result<i64> {
        let done = sqlx::query(
            "INSERT INTO releases (namespace, name, model_name, at_ms, actor, kind, reason, before, after) \
             VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9)",
        )
        .bind(&release.namespace)
        .bind(&release.name)
        .bind(&release.model_name)
        .bind(release.at_ms)
        .bind(&release.actor)
        .bind(release.kind.as_str())
        .bind(&release.reason)
        .bind(&release.before)
        .bind(&release.after)
        .execute(&self.pool)
        .await?;
        Ok(done.last_insert_rowid())
    }

    /// The history of one InferenceModel, newest first.
    pub async fn releases(&self, namespace: &str, name: &str, limit: u32) -> Result<Vec<ReleaseRow>> {
        Ok(sqlx::query_as::<_, ReleaseRow>(
            "SELECT id, namespace, name, model_name, at_ms, actor, kind, reason, before, after FROM releases \
             WHERE namespace = ?1 AND name = ?2 ORDER BY id DESC LIMIT ?3",
        )
        .bind(namespace)
        .bind(name)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn release(&self, id: i64) -> Result<Option<ReleaseRow>> {
        Ok(sqlx::query_as::<_, ReleaseRow>(
            "SELECT id, namespace, name, model_name, at_ms, actor, kind, reason, before, after FROM releases \
             WHERE id = ?1",
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?)
    }

    /// The latest release of every model, newest first, for the releases list.
    pub async fn latest_releases(&self) -> Result<Vec<ReleaseRow>> {
        Ok(sqlx::query_as::<_, ReleaseRow>(
            "SELECT id, namespace, name, model_name, at_ms, actor, kind, reason, before, after FROM releases \
             WHERE id IN (SELECT max(id) FROM releases GROUP BY namespace, name) ORDER BY id DESC",
        )
        .fetch_all(&self.pool)
        .await?)
    }
}
