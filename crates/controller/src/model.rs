//! The InferenceModel reconciler: `ResolvedRefs` for the poolRef, and `Accepted` unless an older InferenceModel of
//! the same pool claims the model name (`ModelNameInUse`) or the spec breaks a rule the CRD schema cannot express.

use std::{sync::Arc, time::Duration};

use api::{
    GROUP_X_K8S,
    conditions::{self, ConditionType, Desired, Reason, Status},
    v1alpha1::{InferenceModel, InferenceModelStatus, InferencePool},
    validate,
};
use k8s_openapi::jiff::Timestamp;
use kube::{Api, ResourceExt, runtime::controller::Action};

use crate::{Context, Error, Result, status};

/// Re-check now and then even without watch events, as a safety net.
const RESYNC: Duration = Duration::from_secs(300);

/// What the reconciler observed about a model's surroundings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Observed {
    /// Whether the poolRef names an existing InferencePool (of a supported group and kind).
    pub pool: Result<(), String>,
    /// The older InferenceModel (`namespace/name`) that owns the model name, if any.
    pub owner: Option<String>,
    /// Rule violations of the spec.
    pub invalid: Vec<String>,
}

pub async fn reconcile(model: Arc<InferenceModel>, ctx: Arc<Context>) -> Result<Action> {
    let _timer = ctx.metrics.reconcile("InferenceModel");
    let namespace = model.namespace().ok_or_else(|| Error::NoNamespace(model.name_any()))?;
    let pool_ref = &model.spec.pool_ref;
    let group = pool_ref.group.as_deref().unwrap_or(GROUP_X_K8S);
    let kind = pool_ref.kind.as_deref().unwrap_or("InferencePool");
    let pool = if group != GROUP_X_K8S || kind != "InferencePool" {
        Err(format!(
            "poolRef {group}/{kind} is not supported; only {GROUP_X_K8S}/InferencePool is"
        ))
    } else {
        let pools: Api<InferencePool> = Api::namespaced(ctx.client.clone(), &namespace);
        match pools.get_opt(&pool_ref.name).await? {
            Some(_) => Ok(()),
            None => Err(format!("InferencePool {namespace}/{} not found", pool_ref.name)),
        }
    };
    // The reconciled object itself competes even if the store has not caught up with it yet.
    let mut claims = same_name(&ctx.models.state(), &model);
    claims.push(model.clone());
    let owner = claimant(&claims, &model)
        .filter(|owner| owner.name_any() != model.name_any())
        .map(|owner| format!("{}/{}", owner.namespace().unwrap_or_default(), owner.name_any()));
    let invalid = validate::validate_model(&model)
        .err()
        .unwrap_or_default()
        .iter()
        .map(ToString::to_string)
        .collect();
    let observed = Observed { pool, owner, invalid };

    let current = model
        .status
        .as_ref()
        .map(|s| s.conditions.as_slice())
        .unwrap_or_default();
    let next = InferenceModelStatus {
        conditions: conditions::merge(
            current,
            &decide(&model, &observed),
            model.metadata.generation,
            Timestamp::now(),
        ),
    };
    let unchanged = model
        .status
        .as_ref()
        .is_some_and(|s| conditions::same(&s.conditions, &next.conditions));
    if status::report(&ctx, &*model, current, &next.conditions, unchanged, &next).await? {
        tracing::info!(model = %model.name_any(), %namespace, "model status updated");
    }
    Ok(Action::requeue(RESYNC))
}

/// The conditions for what was observed; pure.
pub fn decide(model: &InferenceModel, observed: &Observed) -> Vec<Desired> {
    let accepted = if let Some(owner) = &observed.owner {
        Desired::new(
            ConditionType::Accepted,
            Status::False,
            Reason::ModelNameInUse,
            format!(
                "model name {} is already claimed by the older InferenceModel {owner}",
                model.spec.model_name
            ),
        )
    } else if !observed.invalid.is_empty() {
        Desired::new(
            ConditionType::Accepted,
            Status::False,
            Reason::InvalidSpec,
            observed.invalid.join("; "),
        )
    } else {
        Desired::new(
            ConditionType::Accepted,
            Status::True,
            Reason::Accepted,
            "model name accepted",
        )
    };
    let resolved = match &observed.pool {
        Ok(()) => Desired::new(
            ConditionType::ResolvedRefs,
            Status::True,
            Reason::ResolvedRefs,
            format!("InferencePool {} found", model.spec.pool_ref.name),
        ),
        Err(problem) => Desired::new(
            ConditionType::ResolvedRefs,
            Status::False,
            Reason::PoolNotFound,
            problem.clone(),
        ),
    };
    vec![accepted, resolved]
}

/// The InferenceModel that owns `model`'s name in its pool: the oldest claim (by creation time, then name), the
/// same rule the gateway's datastore applies, so status says what routing does.
pub fn claimant(models: &[Arc<InferenceModel>], model: &InferenceModel) -> Option<Arc<InferenceModel>> {
    let mut claims: Vec<&Arc<InferenceModel>> = models.iter().filter(|m| claims_same_name(m, model)).collect();
    claims.sort_by(|a, b| {
        let age = |m: &InferenceModel| {
            let created = m.metadata.creation_timestamp.as_ref().map(|t| t.0);
            (created.is_none(), created, m.name_any())
        };
        age(a).cmp(&age(b))
    });
    claims.first().map(|m| Arc::clone(m))
}

fn claims_same_name(a: &InferenceModel, b: &InferenceModel) -> bool {
    a.metadata.namespace == b.metadata.namespace
        && a.spec.model_name == b.spec.model_name
        && a.spec.pool_ref.name == b.spec.pool_ref.name
}

/// The other claims on `changed`'s model name: a change to one (its deletion included) can flip their status.
pub fn same_name(models: &[Arc<InferenceModel>], changed: &InferenceModel) -> Vec<Arc<InferenceModel>> {
    models
        .iter()
        .filter(|m| claims_same_name(m, changed) && m.name_any() != changed.name_any())
        .cloned()
        .collect()
}

/// Models whose poolRef names `pool`: a pool's creation or deletion flips their ResolvedRefs.
pub fn referencing(models: &[Arc<InferenceModel>], pool: &InferencePool) -> Vec<Arc<InferenceModel>> {
    models
        .iter()
        .filter(|m| m.metadata.namespace == pool.metadata.namespace && m.spec.pool_ref.name == pool.name_any())
        .cloned()
        .collect()
}

#[cfg(test)]
mod tests;
