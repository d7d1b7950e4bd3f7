//! The kube-mode driver: a reconciler over `CanaryRelease` objects (requeued every `--canary-interval` while a
//! release is active, and on every change of the InferenceModel it moves). Each reconcile is one
//! [`Releases::advance`] over a [`KubeStore`] that server-side applies the InferenceModel's `targetModels` and the
//! release's status as field manager `switchyard-canary` (forced: the release owns the split while it runs); this
//! driver adds one Event per new history entry.

use std::{sync::Arc, time::Duration};

use api::{
    NamespacedName,
    canary::{CanaryRelease, Phase},
    v1alpha1::InferenceModel,
};
use kube::{
    Resource, ResourceExt,
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder},
    },
};
use store::kube::KubeStore;

use super::{Releases, new_events};
use crate::{Error, Result, metrics::Metrics};

const KIND: &str = "CanaryRelease";

/// Retry a failed reconcile after this long.
const ERROR_REQUEUE: Duration = Duration::from_secs(15);

/// What the release reconciler needs.
pub struct CanaryContext {
    /// Writes as [`super::FIELD_MANAGER`].
    pub store: KubeStore,
    pub recorder: Recorder,
    pub metrics: Arc<Metrics>,
    pub releases: Releases,
    /// How often an active release is evaluated.
    pub interval: Duration,
}

pub async fn reconcile(release: Arc<CanaryRelease>, ctx: Arc<CanaryContext>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile(KIND);
    let namespace = release
        .namespace()
        .ok_or_else(|| Error::NoNamespace(release.name_any()))?;
    let key = NamespacedName::new(namespace, release.name_any());
    let status = release.status.clone().unwrap_or_default();
    if status.phase.is_finished() {
        // Terminal phases never move weights again: nothing to read or write.
        return Ok(Action::await_change());
    }
    let totals = ctx.releases.scrape().await;
    let written = ctx
        .releases
        .advance(&ctx.store, &key, &release, &status, &totals)
        .await?;
    if let Some(next) = &written {
        ctx.metrics.status_written(KIND);
        let reference = release.object_ref(&());
        for event in new_events(&status.history, &next.history) {
            let published = Event {
                type_: if matches!(event.phase, Phase::RolledBack | Phase::Invalid) {
                    EventType::Warning
                } else {
                    EventType::Normal
                },
                reason: format!("{:?}", event.phase),
                note: Some(truncate(&format!(
                    "{} % → {} %: {}",
                    event.from_percent, event.to_percent, event.reason
                ))),
                action: "Release".into(),
                secondary: None,
            };
            // Events are a courtesy; the status already holds the history.
            if let Err(error) = ctx.recorder.publish(&published, &reference).await {
                tracing::warn!(release = %key, %error, "cannot publish event");
            }
        }
    }
    let next = written.as_ref().unwrap_or(&status);
    Ok(if next.phase.is_terminal() && next.phase != Phase::Invalid {
        Action::await_change()
    } else {
        Action::requeue(ctx.interval)
    })
}

/// Logs, counts and schedules a retry.
pub fn error_policy(release: Arc<CanaryRelease>, error: &Error, ctx: Arc<CanaryContext>) -> Action {
    tracing::warn!(release = %release.name_any(), %error, "release reconcile failed");
    ctx.metrics.reconcile_failed(KIND, error);
    Action::requeue(ERROR_REQUEUE)
}

/// Event notes are limited to 1 kB by the API server.
fn truncate(text: &str) -> String {
    if text.len() <= 1000 {
        return text.to_owned();
    }
    let mut end = 1000;
    while !text.is_char_boundary(end) {
        end -= 1;
    }
    format!("{}…", &text[..end])
}

/// The releases moving `model`'s weights: a change to the model must re-evaluate them.
pub fn releases_of(releases: &[Arc<CanaryRelease>], model: &InferenceModel) -> Vec<Arc<CanaryRelease>> {
    releases
        .iter()
        .filter(|r| r.metadata.namespace == model.metadata.namespace && r.spec.model_ref == model.name_any())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
