//! The kube-mode driver: a reconciler over `CanaryRelease` objects (requeued every `--canary-interval` while a
//! release is active, and on every change of the InferenceModel it moves). It server-side applies the
//! InferenceModel's `targetModels` and the release's status as field manager `switchyard-canary` (forced: the
//! release owns the split while it runs), and publishes one Event per history entry.

use std::{sync::Arc, time::Duration};

use api::{
    GROUP_X_K8S, NamespacedName,
    canary::{CanaryRelease, Phase, ReleaseEvent},
    v1alpha1::InferenceModel,
};
use k8s_openapi::jiff::Timestamp;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        controller::Action,
        events::{Event, EventType, Recorder},
    },
};
use serde_json::json;

use super::{FIELD_MANAGER, Releases, Subject};
use crate::{Error, Result, metrics::Metrics};

const KIND: &str = "CanaryRelease";

/// Retry a failed reconcile after this long.
const ERROR_REQUEUE: Duration = Duration::from_secs(15);

/// What the release reconciler needs.
pub struct CanaryContext {
    pub client: Client,
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
    let key = NamespacedName {
        namespace: namespace.clone(),
        name: release.name_any(),
    };
    let status = release.status.clone().unwrap_or_default();
    if status.phase.is_finished() {
        // Terminal phases never move weights again: nothing to read or write.
        return Ok(Action::await_change());
    }
    let models: Api<InferenceModel> = Api::namespaced(ctx.client.clone(), &namespace);
    let model = models.get_opt(&release.spec.model_ref).await?;
    let totals = ctx.releases.scrape().await;
    let operator = super::operator(release.metadata.annotations.as_ref());
    let subject = Subject {
        key: &key,
        spec: &release.spec,
        status: &status,
        model: model.as_ref(),
        operator: &operator,
    };
    let evaluation = ctx.releases.evaluate(&subject, &totals, Timestamp::now());
    if let (Some(targets), Some(model)) = (&evaluation.targets, &model) {
        // modelName and poolRef are required by the CRD schema, so an apply must carry them.
        let body = json!({
            "apiVersion": format!("{GROUP_X_K8S}/v1alpha1"),
            "kind": "InferenceModel",
            "metadata": {"name": model.name_any(), "namespace": namespace},
            "spec": {
                "modelName": model.spec.model_name,
                "poolRef": model.spec.pool_ref,
                "targetModels": targets,
            }
        });
        models
            .patch(
                &model.name_any(),
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
        tracing::info!(release = %key, model = %model.name_any(), percent = evaluation.output.status.canary_percent, "weights applied");
    }
    let next = &evaluation.output.status;
    if *next != status {
        let releases: Api<CanaryRelease> = Api::namespaced(ctx.client.clone(), &namespace);
        let body = json!({
            "apiVersion": CanaryRelease::api_version(&()),
            "kind": KIND,
            "status": next,
        });
        releases
            .patch_status(
                &key.name,
                &PatchParams::apply(FIELD_MANAGER).force(),
                &Patch::Apply(&body),
            )
            .await?;
        ctx.metrics.status_written(KIND);
        let reference = release.object_ref(&());
        for event in new_events(&status.history, &next.history) {
            tracing::info!(release = %key, phase = ?event.phase, from = event.from_percent, to = event.to_percent, reason = %event.reason, "release step");
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

/// The history entries in `next` that `before` did not have.
pub fn new_events<'a>(before: &[ReleaseEvent], next: &'a [ReleaseEvent]) -> impl Iterator<Item = &'a ReleaseEvent> {
    next.iter().filter(move |e| !before.contains(e))
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
