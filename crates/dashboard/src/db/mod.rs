//! The dashboard's SQLite database: the only module that holds SQL (ARCHITECTURE.md invariant).
//!
//! SQLite runs in WAL mode so page reads never wait for an ingest batch, with `synchronous = NORMAL` (a power cut
//! may lose the last batches, never corrupt the file) and incremental auto-vacuum so retention can give pages back
//! in small steps instead of one long `VACUUM`. The schema comes only from `migrations/`.

mod decisions;
mod releases;
mod samples;

use std::{path::Path, str::FromStr, time::Duration};

use sqlx::{
    SqlitePool,
    migrate::Migrator,
    sqlite::{SqliteAutoVacuum, SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous},
};

pub use self::{
    decisions::{
        Cursor, DecisionFilter, DecisionSummary, Mirrored, ModelStats, NewDecision, criticality_name, outcome_name,
    },
    releases::{NewRelease, ReleaseKind, ReleaseRow},
    samples::{NewSample, PodRow, SampleRow},
};

/// The embedded migrations of `migrations/` at the workspace root.
pub static MIGRATOR: Migrator = sqlx::migrate!("../../migrations");

/// How long a writer waits for the write lock before giving up; ingest batches take milliseconds.
const BUSY_TIMEOUT: Duration = Duration::from_secs(10);

#[derive(Debug, thiserror::Error)]
pub enum DbError {
    #[error("database error: {0}")]
    Sqlx(#[from] sqlx::Error),
    #[error("migration failed: {0}")]
    Migrate(#[from] sqlx::migrate::MigrateError),
    #[error("stored JSON is invalid: {0}")]
    Json(#[from] serde_json::Error),
}

pub type Result<T, E = DbError> = std::result::Result<T, E>;

/// A handle on the database; clones share one connection pool.
#[derive(Clone, Debug)]
pub struct Db {
    pool: SqlitePool,
}

impl Db {
    /// Opens (creating if needed) the database at `url` (`sqlite://switchyard.db` or a plain path) and migrates it.
    pub async fn open(url: &str) -> Result<Db> {
        let options = if url.starts_with("sqlite:") {
            SqliteConnectOptions::from_str(url)?
        } else {
            SqliteConnectOptions::new().filename(url)
        };
        Self::open_with(options).await
    }

    /// Opens the database file at `path`, creating and migrating it.
    pub async fn open_path(path: &Path) -> Result<Db> {
        Self::open_with(SqliteConnectOptions::new().filename(path)).await
    }

    async fn open_with(options: SqliteConnectOptions) -> Result<Db> {
        let options = options
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            .synchronous(SqliteSynchronous::Normal)
            .auto_vacuum(SqliteAutoVacuum::Incremental)
            .busy_timeout(BUSY_TIMEOUT)
            .foreign_keys(true);
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            .connect_with(options)
            .await?;
        MIGRATOR.run(&pool).await?;
        Ok(Db { pool })
    }

    /// A trivial query, for `/readyz`.
    pub async fn ping(&self) -> Result<()> {
        sqlx::query("SELECT 1").execute(&self.pool).await?;
        Ok(())
    }

    /// Refreshes the planner statistics after large changes (cheap when little changed).
    pub async fn optimize(&self) -> Result<()> {
        sqlx::query("PRAGMA optimize").execute(&self.pool).await?;
        Ok(())
    }

    /// Full statistics, for a freshly bulk-loaded database (the benchmark).
    pub async fn analyze(&self) -> Result<()> {
        sqlx::query("ANALYZE").execute(&self.pool).await?;
        Ok(())
    }

    /// Deletes decisions and samples older than `cutoff_ms`, `batch` rows per statement so ingest keeps getting the
    /// write lock in between, then returns the freed pages to the file system a few at a time.
    pub async fn delete_before(&self, cutoff_ms: i64, batch: i64) -> Result<u64> {
        let mut deleted = 0;
        for sql in [
            "DELETE FROM decisions WHERE id IN \
             (SELECT id FROM decisions WHERE received_at_ms < ?1 ORDER BY received_at_ms LIMIT ?2)",
            "DELETE FROM pod_samples WHERE (pod, at_ms) IN \
             (SELECT pod, at_ms FROM pod_samples WHERE at_ms < ?1 LIMIT ?2)",
        ] {
            // Bounded: each round deletes up to `batch` rows of a table that only shrinks below the cutoff.
            loop {
                let done = sqlx::query(sql).bind(cutoff_ms).bind(batch).execute(&self.pool).await?;
                deleted += done.rows_affected();
                if done.rows_affected() < batch as u64 {
                    break;
                }
                tokio::task::yield_now().await;
            }
        }
        sqlx::query("DELETE FROM pods WHERE last_seen_ms < ?1")
            .bind(cutoff_ms)
            .execute(&self.pool)
            .await?;
        sqlx::query("PRAGMA incremental_vacuum(2000)")
            .execute(&self.pool)
            .await?;
        Ok(deleted)
    }
}
