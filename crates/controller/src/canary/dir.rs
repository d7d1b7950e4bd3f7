//! The dir-mode driver: every `--canary-interval` it reads the CanaryRelease documents of the gateway's `--dir`
//! directory and their `.status/` sidecars, and carries each active release one [`Releases::advance`] forward over
//! a [`DirStore`] (the InferenceModel's document rewritten with the new weights, atomically, other documents
//! untouched; the status written to the sidecar). The user's files carry only the spec; status never goes into them.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use api::{
    NamespacedName,
    canary::{CanaryRelease, CanaryReleaseStatus, Phase},
    dir::{self, Document},
};
use store::{ReleaseStore, dir::DirStore};
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{Releases, metrics::Totals};

/// Drives the CanaryReleases of one directory.
#[derive(Debug)]
pub struct DirDriver {
    store: DirStore,
    releases: Releases,
    interval: Duration,
}

impl DirDriver {
    pub fn new(dir: impl Into<PathBuf>, gateway_metrics_urls: Vec<String>, interval: Duration) -> DirDriver {
        DirDriver {
            store: DirStore::new(dir),
            releases: Releases::new(gateway_metrics_urls),
            interval,
        }
    }

    pub fn dir(&self) -> &Path {
        self.store.dir()
    }

    /// Evaluates every release each interval until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tracing::info!(dir = %self.dir().display(), interval = ?self.interval, "canary releases driven from a directory");
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = ticks.tick() => {}
            }
            if let Err(error) = self.tick().await {
                tracing::warn!(dir = %self.dir().display(), %error, "cannot read the directory");
            }
        }
    }

    /// One pass over the directory. Per-release failures are logged and retried next time; only an unreadable
    /// directory fails the pass.
    pub async fn tick(&self) -> Result<(), dir::DirError> {
        // Read leniently, unlike the store's listing: one broken document must not stop the other releases.
        let scan = dir::scan(self.dir(), "CanaryRelease")?;
        for error in &scan.errors {
            tracing::warn!(%error, "unreadable CanaryRelease document");
        }
        let mut releases = Vec::new();
        for doc in scan.documents {
            let key = NamespacedName::new(doc.namespace(), doc.name());
            if releases.iter().any(|(k, _, _)| *k == key) {
                tracing::warn!(release = %key, file = %doc.path.display(), "release defined twice; the first one counts");
                continue;
            }
            let status = match dir::read_status(self.dir(), &key.namespace, &key.name) {
                Ok(status) => status.unwrap_or_default(),
                Err(error) => {
                    tracing::warn!(release = %key, %error, "unreadable status sidecar; starting over");
                    CanaryReleaseStatus::default()
                }
            };
            releases.push((key, doc, status));
        }
        self.releases.retain(|k| releases.iter().any(|(key, _, _)| key == k));
        let active = releases.iter().any(|(_, _, s)| !s.phase.is_finished());
        if !active {
            return Ok(());
        }
        let totals = self.releases.scrape().await;
        for (key, doc, status) in releases {
            if let Err(error) = self.advance(&key, &doc, status, &totals).await {
                tracing::warn!(release = %key, %error, "release not advanced; retrying next tick");
            }
        }
        Ok(())
    }

    async fn advance(
        &self,
        key: &NamespacedName,
        doc: &Document,
        status: CanaryReleaseStatus,
        totals: &Result<Totals, String>,
    ) -> store::Result<()> {
        if status.phase.is_finished() {
            return Ok(());
        }
        let release: CanaryRelease = match doc.decode() {
            Ok(release) => release,
            Err(error) => {
                let message = format!("invalid CanaryRelease document: {error}");
                if status.phase != Phase::Invalid || status.message != message {
                    let invalid = CanaryReleaseStatus {
                        phase: Phase::Invalid,
                        message,
                        ..status
                    };
                    self.store.write_status(key, &invalid).await?;
                }
                return Ok(());
            }
        };
        self.releases
            .advance(&self.store, key, &release, &status, totals)
            .await?;
        Ok(())
    }
}
