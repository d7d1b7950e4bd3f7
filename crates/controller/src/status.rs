//! The reconcile context, and how a reconciler reports: server-side apply of status under one field manager, and
//! one Kubernetes Event per condition that changed.

use std::sync::Arc;

use api::v1alpha1::InferenceModel;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{
    Api, Client, Resource, ResourceExt,
    api::{Patch, PatchParams},
    runtime::{
        events::{Event, EventType, Recorder},
        reflector::Store,
    },
};
use serde::{Serialize, de::DeserializeOwned};

use crate::{FIELD_MANAGER, Result, metrics::Metrics};

/// What every reconcile needs.
pub struct Context {
    /// Reads referenced objects and writes status.
    pub client: Client,
    /// Publishes an Event when a condition changes.
    pub recorder: Recorder,
    /// Reconcile counts, durations, errors and status writes.
    pub metrics: Arc<Metrics>,
    /// Every InferenceModel, from the model controller's reflector: the claims on a model name.
    pub models: Store<InferenceModel>,
}

/// Writes `status` with server-side apply (forced: this controller owns status) unless it is unchanged, then
/// publishes an Event for each condition whose status or reason moved. Returns whether anything was written.
pub async fn report<K, S>(
    ctx: &Context,
    obj: &K,
    current: &[Condition],
    next_conditions: &[Condition],
    unchanged: bool,
    status: &S,
) -> Result<bool>
where
    K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + std::fmt::Debug,
    S: Serialize,
{
    if unchanged {
        return Ok(false);
    }
    let namespace = obj.namespace().unwrap_or_default();
    let api: Api<K> = Api::namespaced(ctx.client.clone(), &namespace);
    let body = serde_json::json!({
        "apiVersion": K::api_version(&()),
        "kind": K::kind(&()),
        "status": status,
    });
    api.patch_status(
        &obj.name_any(),
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&body),
    )
    .await?;
    ctx.metrics.status_written(kind_label::<K>());

    let reference = obj.object_ref(&());
    for condition in next_conditions {
        let before = current.iter().find(|c| c.type_ == condition.type_);
        if before.is_some_and(|b| b.status == condition.status && b.reason == condition.reason) {
            continue;
        }
        let event = Event {
            type_: if condition.status == "False" {
                EventType::Warning
            } else {
                EventType::Normal
            },
            reason: condition.reason.clone(),
            note: Some(format!(
                "{} is {}: {}",
                condition.type_, condition.status, condition.message
            )),
            action: "UpdateStatus".into(),
            secondary: None,
        };
        // Events are a courtesy; a failure to publish one must not fail the reconcile that set the status.
        if let Err(error) = ctx.recorder.publish(&event, &reference).await {
            tracing::warn!(object = %obj.name_any(), %error, "cannot publish event");
        }
    }
    Ok(true)
}

/// The kind as a static metric label.
pub fn kind_label<K: Resource<DynamicType = ()>>() -> &'static str {
    match K::kind(&()).as_ref() {
        "InferencePool" => "InferencePool",
        "InferenceModel" => "InferenceModel",
        _ => "other",
    }
}
