//! The InferencePool reconciler: counts the ready pods the pool selects, checks the endpoint-picker Service and
//! the `attach-to` Gateway listener, and writes `Ready` and `ResolvedRefs` with the ready-pod count.

use std::{collections::BTreeMap, sync::Arc, time::Duration};

use api::{
    ATTACH_TO_ANNOTATION,
    conditions::{self, ConditionType, Desired, Reason, Status},
    v1alpha1::{InferencePool, InferencePoolStatus},
};
use k8s_openapi::{
    api::{
        core::v1::{Pod, Service},
        discovery::v1::EndpointSlice,
    },
    jiff::Timestamp,
};
use kube::{
    Api, ResourceExt,
    api::{ApiResource, DynamicObject, GroupVersionKind, ListParams},
    runtime::controller::Action,
};
use serde::Deserialize;

use crate::{Context, Error, Result, status};

/// Re-check even without a watch event: the picker Service and the Gateway are read, not watched.
const RESYNC: Duration = Duration::from_secs(60);

/// What the reconciler observed about a pool's surroundings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    pub ready_pods: usize,
    /// `None` without an extensionRef; otherwise whether it resolved and how many picker endpoints are ready.
    pub picker: Option<Picker>,
    /// `None` without the attach-to annotation; otherwise the problem, if any.
    pub listener: Option<Result<(), String>>,
}

#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Picker {
    /// The extensionRef names something other than a core Service, or a Service that does not exist.
    Unresolved(String),
    Service {
        name: String,
        ready_endpoints: usize,
    },
}

/// The `inference.networking.x-k8s.io/attach-to` annotation: which Gateway listener serves the pool.
#[derive(Debug, Deserialize)]
struct AttachTo {
    name: String,
    #[serde(default)]
    namespace: Option<String>,
    #[serde(default)]
    port: Option<i32>,
}

pub async fn reconcile(pool: Arc<InferencePool>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile("InferencePool");
    let namespace = pool.namespace().ok_or_else(|| Error::NoNamespace(pool.name_any()))?;
    let observed = observe(&pool, &namespace, &ctx).await?;
    let current = pool
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let next = InferencePoolStatus {
        ready_pods: Some(i32::try_from(observed.ready_pods).unwrap_or(i32::MAX)),
        conditions: conditions::merge(current, &decide(&observed), pool.metadata.generation, Timestamp::now()),
    };
    let unchanged = pool
        .status
        .as_ref()
        .is_some_and(|s| s.ready_pods == next.ready_pods && conditions::same(&s.conditions, &next.conditions));
    if status::report(&ctx, &*pool, current, &next.conditions, unchanged, &next).await? {
        tracing::info!(pool = %pool.name_any(), %namespace, ready_pods = observed.ready_pods, "pool status updated");
    }
    Ok(Action::requeue(RESYNC))
}

async fn observe(pool: &InferencePool, namespace: &str, ctx: &Context) -> Result<Observed> {
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), namespace);
    let selector = pool
        .spec
        .selector
        .iter()
        .map(|(k, v)| format!("{k}={v}"))
        .collect::<Vec<_>>()
        .join(",");
    let ready_pods = pods
        .list(&ListParams::default().labels(&selector))
        .await?
        .items
        .iter()
        .filter(|p| is_ready(p))
        .count();

    let picker = match &pool.spec.extension_ref {
        None => None,
        Some(ext) => {
            let core = ext.group.as_deref().unwrap_or("").is_empty();
            let service = ext.kind.as_deref().unwrap_or("Service") == "Service";
            if !(core && service) {
                Some(Picker::Unresolved(format!(
                    "extensionRef kind {}/{} is not supported; only a core Service is",
                    ext.group.as_deref().unwrap_or(""),
                    ext.kind.as_deref().unwrap_or("Service")
                )))
            } else {
                let services: Api<Service> = Api::namespaced(ctx.client.clone(), namespace);
                match services.get_opt(&ext.name).await? {
                    None => Some(Picker::Unresolved(format!(
                        "Service {namespace}/{} not found",
                        ext.name
                    ))),
                    Some(_) => {
                        let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), namespace);
                        let lp = ListParams::default().labels(&format!("kubernetes.io/service-name={}", ext.name));
                        let ready_endpoints = slices
                            .list(&lp)
                            .await?
                            .items
                            .iter()
                            .flat_map(|s| &s.endpoints)
                            // A missing `ready` means ready, per the EndpointSlice API.
                            .filter(|e| e.conditions.as_ref().and_then(|c| c.ready) != Some(false))
                            .count();
                        Some(Picker::Service {
                            name: ext.name.clone(),
                            ready_endpoints,
                        })
                    }
                }
            }
        }
    };

    let listener = match pool.annotations().get(ATTACH_TO_ANNOTATION) {
        None => None,
        Some(text) => Some(resolve_listener(text, namespace, ctx).await?),
    };
    Ok(Observed {
        ready_pods,
        picker,
        listener,
    })
}

/// Finds the Gateway named by the annotation and a listener on its port.
async fn resolve_listener(text: &str, namespace: &str, ctx: &Context) -> Result<Result<(), String>> {
    let attach: AttachTo = match serde_saphyr::from_str(text) {
        Ok(attach) => attach,
        Err(error) => {
            return Ok(Err(format!(
                "cannot parse the {ATTACH_TO_ANNOTATION} annotation: {error}"
            )));
        }
    };
    let namespace = attach.namespace.as_deref().unwrap_or(namespace);
    let gvk = GroupVersionKind::gvk("gateway.networking.k8s.io", "v1", "Gateway");
    let gateways: Api<DynamicObject> = Api::namespaced_with(
        ctx.client.clone(),
        namespace,
        &ApiResource::from_gvk_with_plural(&gvk, "gateways"),
    );
    let Some(gateway) = gateways.get_opt(&attach.name).await? else {
        return Ok(Err(format!("Gateway {namespace}/{} not found", attach.name)));
    };
    let Some(port) = attach.port else { return Ok(Ok(())) };
    let listeners = gateway.data["spec"]["listeners"]
        .as_array()
        .cloned()
        .unwrap_or_default();
    if listeners.iter().any(|l| l["port"].as_i64() == Some(i64::from(port))) {
        Ok(Ok(()))
    } else {
        Ok(Err(format!(
            "Gateway {namespace}/{} has no listener on port {port}",
            attach.name
        )))
    }
}

/// The conditions for what was observed; pure.
pub fn decide(observed: &Observed) -> Vec<Desired> {
    let ready = match (&observed.picker, observed.ready_pods) {
        (
            Some(Picker::Service {
                name,
                ready_endpoints: 0,
            }),
            _,
        ) => Desired::new(
            ConditionType::Ready,
            Status::False,
            Reason::EndpointPickerNotHealthy,
            format!("endpoint picker Service {name} has no ready endpoints"),
        ),
        (Some(Picker::Unresolved(problem)), _) => Desired::new(
            ConditionType::Ready,
            Status::False,
            Reason::EndpointPickerNotHealthy,
            problem.clone(),
        ),
        (_, 0) => Desired::new(
            ConditionType::Ready,
            Status::False,
            Reason::NoReadyPods,
            "no selected pod is ready",
        ),
        (_, n) => Desired::new(
            ConditionType::Ready,
            Status::True,
            Reason::Ready,
            format!("{n} ready pods"),
        ),
    };
    let mut problems = Vec::new();
    let mut reason = Reason::ResolvedRefs;
    if let Some(Picker::Unresolved(problem)) = &observed.picker {
        problems.push(problem.clone());
        reason = Reason::InvalidExtensionRef;
    }
    if let Some(Err(problem)) = &observed.listener {
        problems.push(problem.clone());
        if reason == Reason::ResolvedRefs {
            reason = Reason::GatewayListenerNotFound;
        }
    }
    let resolved = if problems.is_empty() {
        Desired::new(
            ConditionType::ResolvedRefs,
            Status::True,
            Reason::ResolvedRefs,
            "all references resolved",
        )
    } else {
        Desired::new(ConditionType::ResolvedRefs, Status::False, reason, problems.join("; "))
    };
    vec![ready, resolved]
}

/// Ready condition True and not terminating: the gateway's own membership rule.
pub fn is_ready(pod: &Pod) -> bool {
    pod.metadata.deletion_timestamp.is_none()
        && pod
            .status
            .as_ref()
            .and_then(|s| s.conditions.as_ref())
            .is_some_and(|c| c.iter().any(|c| c.type_ == "Ready" && c.status == "True"))
}

/// Pools of the pod's namespace whose selector matches it: the pools a pod change must re-reconcile.
pub fn selecting(pools: &[Arc<InferencePool>], pod: &Pod) -> Vec<Arc<InferencePool>> {
    let empty = BTreeMap::new();
    let labels = pod.metadata.labels.as_ref().unwrap_or(&empty);
    pools
        .iter()
        .filter(|p| p.metadata.namespace == pod.metadata.namespace)
        .filter(|p| p.spec.selector.iter().all(|(k, v)| labels.get(k) == Some(v)))
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
