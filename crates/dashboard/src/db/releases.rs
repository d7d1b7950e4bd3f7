//! Release history: every change of an InferenceModel's target weights made through the dashboard, every operator
//! action on a guarded release, and the controller's steps copied from the releases' status.

use serde::Serialize;
use sqlx::{Sqlite, prelude::FromRow, query::Query, sqlite::SqliteArguments};

use super::{Db, Result};

/// What a history row records.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "snake_case")]
pub enum ReleaseKind {
    /// Weights set by hand.
    Apply,
    /// Weights restored to the state before an earlier row.
    Rollback,
    /// A guarded release was started.
    Start,
    /// Operator actions on a guarded release (`spec.control`).
    Pause,
    Resume,
    Promote,
    Abort,
    /// The controller moved or held a step.
    Step,
    /// The controller ended a release: canary at 100 %, rolled back on a broken limit, aborted, or refused.
    Promoted,
    RolledBack,
    Aborted,
    Invalid,
}

impl ReleaseKind {
    pub fn as_str(self) -> &'static str {
        match self {
            ReleaseKind::Apply => "apply",
            ReleaseKind::Rollback => "rollback",
            ReleaseKind::Start => "start",
            ReleaseKind::Pause => "pause",
            ReleaseKind::Resume => "resume",
            ReleaseKind::Promote => "promote",
            ReleaseKind::Abort => "abort",
            ReleaseKind::Step => "step",
            ReleaseKind::Promoted => "promoted",
            ReleaseKind::RolledBack => "rolled_back",
            ReleaseKind::Aborted => "aborted",
            ReleaseKind::Invalid => "invalid",
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
    /// The CanaryRelease the row belongs to, if any.
    pub guarded_release: Option<String>,
    /// Set on rows copied from a controller's status history: a second copy of the same event is ignored.
    pub event_key: Option<String>,
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
    pub guarded_release: Option<String>,
}

fn insert(release: &NewRelease) -> Query<'_, Sqlite, SqliteArguments> {
    sqlx::query(
        "INSERT INTO releases (namespace, name, model_name, at_ms, actor, kind, reason, before, after, \
         guarded_release, event_key) VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11) ON CONFLICT DO NOTHING",
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
    .bind(&release.guarded_release)
    .bind(&release.event_key)
}

/// The columns of a [`ReleaseRow`], as a macro so queries stay `&'static str` literals.
macro_rules! columns {
    () => {
        "id, namespace, name, model_name, at_ms, actor, kind, reason, before, after, guarded_release"
    };
}

impl Db {
    /// Records a row; returns its id, or `None` when a row with the same `event_key` is already there.
    pub async fn insert_release(&self, release: &NewRelease) -> Result<Option<i64>> {
        let done = insert(release).execute(&self.pool).await?;
        Ok((done.rows_affected() == 1).then(|| done.last_insert_rowid()))
    }

    /// Records many rows in one transaction (controller events on every read: usually all already there).
    pub async fn insert_releases(&self, releases: &[NewRelease]) -> Result<u64> {
        let mut tx = self.pool.begin().await?;
        let mut written = 0;
        for release in releases {
            written += insert(release).execute(&mut *tx).await?.rows_affected();
        }
        tx.commit().await?;
        Ok(written)
    }

    /// The history of one InferenceModel, newest first (controller events copied late sort by their own time).
    pub async fn releases(&self, namespace: &str, name: &str, limit: u32) -> Result<Vec<ReleaseRow>> {
        Ok(sqlx::query_as::<_, ReleaseRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM releases WHERE namespace = ?1 AND name = ?2 ORDER BY at_ms DESC, id DESC LIMIT ?3"
        ))
        .bind(namespace)
        .bind(name)
        .bind(i64::from(limit))
        .fetch_all(&self.pool)
        .await?)
    }

    pub async fn release(&self, id: i64) -> Result<Option<ReleaseRow>> {
        Ok(
            sqlx::query_as::<_, ReleaseRow>(concat!("SELECT ", columns!(), " FROM releases WHERE id = ?1"))
                .bind(id)
                .fetch_optional(&self.pool)
                .await?,
        )
    }

    /// The latest release of every model, newest first, for the releases list.
    pub async fn latest_releases(&self) -> Result<Vec<ReleaseRow>> {
        Ok(sqlx::query_as::<_, ReleaseRow>(concat!(
            "SELECT ",
            columns!(),
            " FROM releases WHERE id IN (SELECT max(id) FROM releases GROUP BY namespace, name) ORDER BY id DESC"
        ))
        .fetch_all(&self.pool)
        .await?)
    }
}
