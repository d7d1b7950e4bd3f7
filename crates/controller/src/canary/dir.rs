//! The dir-mode driver: every `--canary-interval` it reads the CanaryRelease documents of the gateway's `--dir`
//! directory and their `.status/` sidecars, evaluates each, rewrites the InferenceModel's document with the new
//! weights (atomically, other documents untouched) and writes the status sidecar. The user's files carry only the
//! spec; status never goes into them.

use std::{
    path::{Path, PathBuf},
    time::Duration,
};

use api::{
    NamespacedName,
    canary::{CanaryRelease, CanaryReleaseStatus, Phase},
    dir::{self, Document},
    v1alpha1::InferenceModel,
};
use k8s_openapi::jiff::Timestamp;
use tokio::time::MissedTickBehavior;
use tokio_util::sync::CancellationToken;

use super::{Releases, Subject, kube::new_events};

/// Drives the CanaryReleases of one directory.
#[derive(Debug)]
pub struct DirDriver {
    dir: PathBuf,
    releases: Releases,
    interval: Duration,
}

/// Why a release could not be carried forward this tick (it is retried on the next).
#[derive(Debug, thiserror::Error)]
pub enum TickError {
    #[error(transparent)]
    Dir(#[from] dir::DirError),
    #[error("the new weights of {model} are invalid: {message}")]
    InvalidWeights { model: String, message: String },
}

impl DirDriver {
    pub fn new(dir: impl Into<PathBuf>, gateway_metrics_urls: Vec<String>, interval: Duration) -> DirDriver {
        DirDriver {
            dir: dir.into(),
            releases: Releases::new(gateway_metrics_urls),
            interval,
        }
    }

    pub fn dir(&self) -> &Path {
        &self.dir
    }

    /// Evaluates every release each interval until `cancel` fires.
    pub async fn run(self, cancel: CancellationToken) {
        let mut ticks = tokio::time::interval(self.interval);
        ticks.set_missed_tick_behavior(MissedTickBehavior::Delay);
        tracing::info!(dir = %self.dir.display(), interval = ?self.interval, "canary releases driven from a directory");
        loop {
            tokio::select! {
                () = cancel.cancelled() => break,
                _ = ticks.tick() => {}
            }
            if let Err(error) = self.tick().await {
                tracing::warn!(dir = %self.dir.display(), %error, "cannot read the directory");
            }
        }
    }

    /// One pass over the directory. Per-release failures are logged and retried next time; only an unreadable
    /// directory fails the pass.
    pub async fn tick(&self) -> Result<(), dir::DirError> {
        let scan = dir::scan(&self.dir, "CanaryRelease")?;
        for error in &scan.errors {
            tracing::warn!(%error, "unreadable CanaryRelease document");
        }
        let mut releases = Vec::new();
        for doc in scan.documents {
            let key = NamespacedName {
                namespace: doc.namespace().to_owned(),
                name: doc.name().to_owned(),
            };
            if releases.iter().any(|(k, _, _)| *k == key) {
                tracing::warn!(release = %key, file = %doc.path.display(), "release defined twice; the first one counts");
                continue;
            }
            let status = match dir::read_status(&self.dir, &key.namespace, &key.name) {
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
            if let Err(error) = self.advance(&key, &doc, status, &totals) {
                tracing::warn!(release = %key, %error, "release not advanced; retrying next tick");
            }
        }
        Ok(())
    }

    fn advance(
        &self,
        key: &NamespacedName,
        doc: &Document,
        status: CanaryReleaseStatus,
        totals: &Result<super::metrics::Totals, String>,
    ) -> Result<(), TickError> {
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
                    dir::write_status(&self.dir, &key.namespace, &key.name, &invalid)?;
                }
                return Ok(());
            }
        };
        let model_doc = dir::find(&self.dir, "InferenceModel", &key.namespace, &release.spec.model_ref)?;
        let model: Option<InferenceModel> = model_doc.as_ref().map(Document::decode).transpose()?;
        let operator = super::operator(release.metadata.annotations.as_ref());
        let subject = Subject {
            key,
            spec: &release.spec,
            status: &status,
            model: model.as_ref(),
            operator: &operator,
        };
        let evaluation = self.releases.evaluate(&subject, totals, Timestamp::now());
        if let (Some(targets), Some(doc), Some(model)) = (&evaluation.targets, &model_doc, &model) {
            let mut updated = model.clone();
            updated.spec.target_models = targets.clone();
            api::validate::validate_model(&updated).map_err(|errors| TickError::InvalidWeights {
                model: format!("{}/{}", key.namespace, release.spec.model_ref),
                message: errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; "),
            })?;
            // Only targetModels changes; the rest of the document is re-rendered from what was read.
            let mut value = doc.value.clone();
            value["spec"]["targetModels"] = serde_json::to_value(targets).unwrap_or_default();
            dir::rewrite(doc, &value)?;
            tracing::info!(release = %key, model = %release.spec.model_ref, percent = evaluation.output.status.canary_percent, "weights applied");
        }
        let next = &evaluation.output.status;
        if *next != status {
            dir::write_status(&self.dir, &key.namespace, &key.name, next)?;
            for event in new_events(&status.history, &next.history) {
                tracing::info!(release = %key, phase = ?event.phase, from = event.from_percent, to = event.to_percent, actor = %event.actor, reason = %event.reason, "release step");
            }
        }
        Ok(())
    }
}
