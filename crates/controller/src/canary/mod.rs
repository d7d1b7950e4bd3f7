//! Guarded canary releases: the controller side of `CanaryRelease`.
//!
//! ```text
//!  gateway /metrics ──scrape──► metrics::Totals ──diff vs step-start baseline──► machine::Window (stable, canary)
//!                                                                                     │
//!  CanaryRelease spec + status ─────────────────────────────────────────► machine::evaluate (pure)
//!                                                                                     │
//!           InferenceModel targetModels weights ◄── apply ── status (history, observations) ──► write
//!                              (both through a `store::Store`: Releases::advance is the one step of every driver)
//!  drivers: kube.rs (reconciler, KubeStore, Events)   dir.rs (ticks over a YAML directory, DirStore)
//! ```
//!
//! The step-start baseline lives in memory, keyed by release and step: a controller restart (or a failover to the
//! other replica) restarts the current step's measurement window and with it the hold. That can only delay a
//! promotion, never hasten one.

pub mod dir;
pub mod kube;
pub mod machine;
pub mod metrics;

use std::{collections::HashMap, sync::Mutex, time::Duration};

use api::{
    NamespacedName,
    canary::{CanaryRelease, CanaryReleaseSpec, CanaryReleaseStatus, Phase, ReleaseEvent},
    v1alpha1::{InferenceModel, TargetModel},
};
use k8s_openapi::jiff::Timestamp;
use store::Store;

use self::{
    machine::{Input, Measurement, Output},
    metrics::{Scraper, TargetTotals, Totals},
};

/// The field manager of the weights and the status this controller writes for releases.
pub const FIELD_MANAGER: &str = "switchyard-canary";

/// Annotation naming who last set `spec.control` (the dashboard sets it); the history names them as the actor.
pub const CONTROL_ACTOR_ANNOTATION: &str = "switchyard.dev/control-actor";

/// The actor of an operator action when no annotation names one.
pub const UNKNOWN_OPERATOR: &str = "operator";

/// How long one gateway scrape may take.
pub const SCRAPE_TIMEOUT: Duration = Duration::from_secs(2);

/// The counters at the start of a release's current window.
#[derive(Clone, Debug)]
struct Baseline {
    /// The step (index and start time) the baseline belongs to; another step needs a new one.
    step: (Option<u32>, Option<Timestamp>),
    taken_at: Timestamp,
    stable: TargetTotals,
    canary: TargetTotals,
}

/// One evaluation's result to carry out: weights first, then status.
#[derive(Clone, Debug, PartialEq)]
pub struct Evaluation {
    pub output: Output,
    /// The InferenceModel's new targetModels, when its weights must change.
    pub targets: Option<Vec<TargetModel>>,
}

/// The release being evaluated, as a driver read it.
#[derive(Clone, Copy, Debug)]
pub struct Subject<'a> {
    pub key: &'a NamespacedName,
    pub spec: &'a CanaryReleaseSpec,
    pub status: &'a CanaryReleaseStatus,
    /// The InferenceModel named by `spec.modelRef`, if it exists.
    pub model: Option<&'a InferenceModel>,
    /// Who set `spec.control`.
    pub operator: &'a str,
}

/// What both drivers share: the gateway scraper and the per-release baselines.
#[derive(Debug)]
pub struct Releases {
    scraper: Scraper,
    baselines: Mutex<HashMap<NamespacedName, Baseline>>,
}

impl Releases {
    pub fn new(gateway_metrics_urls: Vec<String>) -> Releases {
        Releases {
            scraper: Scraper::new(gateway_metrics_urls, SCRAPE_TIMEOUT),
            baselines: Mutex::new(HashMap::new()),
        }
    }

    /// The gateways' summed totals now, or why there are none.
    pub async fn scrape(&self) -> Result<Totals, String> {
        self.scraper.scrape().await
    }

    /// Evaluates one release against `totals` (scraped now) and decides the weights to apply.
    pub fn evaluate(&self, subject: &Subject<'_>, totals: &Result<Totals, String>, now: Timestamp) -> Evaluation {
        let Subject {
            key,
            spec,
            status,
            model,
            operator,
        } = *subject;
        let mut baselines = self.baselines.lock().unwrap_or_else(|p| p.into_inner());
        let step = (status.step, status.step_started_at.as_ref().map(|t| t.0));
        let current = match (model, totals) {
            (_, Err(why)) => Err(why.clone()),
            (None, Ok(_)) => Err("the InferenceModel is missing".into()),
            (Some(model), Ok(totals)) => Ok((
                totals.target(&model.spec.model_name, &spec.stable),
                totals.target(&model.spec.model_name, &spec.canary),
            )),
        };
        let measurement = match &current {
            Err(why) => Measurement::Unavailable(why.clone()),
            Ok((stable, canary)) => {
                let baseline = baselines
                    .entry(key.clone())
                    .and_modify(|b| {
                        if b.step != step {
                            *b = fresh(step, now, stable, canary);
                        }
                    })
                    .or_insert_with(|| fresh(step, now, stable, canary));
                Measurement::Measured {
                    stable: stable.since(&baseline.stable),
                    canary: canary.since(&baseline.canary),
                    since: baseline.taken_at,
                }
            }
        };
        let output = machine::evaluate(&Input {
            spec,
            status,
            model: check_model(&key.namespace, spec, model),
            measurement,
            now,
            operator,
        });
        let next = &output.status;
        if next.phase.is_terminal() {
            baselines.remove(key);
        } else if output.new_window {
            let step = (next.step, next.step_started_at.as_ref().map(|t| t.0));
            match &current {
                Ok((stable, canary)) => {
                    baselines.insert(key.clone(), fresh(step, now, stable, canary));
                }
                Err(_) => {
                    baselines.remove(key);
                }
            }
        }
        // Weights follow the status: moved when the machine says so, and put back while a step is held if someone
        // changed them underneath (the release owns the split until it ends).
        let active = matches!(next.phase, Phase::Progressing | Phase::Paused) && next.step.is_some();
        let percent = output.apply_percent.or(active.then_some(next.canary_percent));
        let targets = match (percent, model) {
            (Some(percent), Some(model)) if output.status.phase != Phase::Invalid => {
                let wanted = weighted_targets(model, spec, percent);
                (wanted != model.spec.target_models).then_some(wanted)
            }
            _ => None,
        };
        Evaluation { output, targets }
    }

    /// One step of a release over `store`, whichever driver calls it: reads the InferenceModel, evaluates the
    /// release against `totals`, applies the new weights, then writes the status if it changed and logs its new
    /// history entries. Returns the status when it was written.
    pub async fn advance(
        &self,
        store: &dyn Store,
        key: &NamespacedName,
        release: &CanaryRelease,
        status: &CanaryReleaseStatus,
        totals: &Result<Totals, String>,
    ) -> store::Result<Option<CanaryReleaseStatus>> {
        let model_key = NamespacedName::new(key.namespace.clone(), release.spec.model_ref.clone());
        let model = store.get_model(&model_key).await?;
        let operator = operator(release.metadata.annotations.as_ref());
        let subject = Subject {
            key,
            spec: &release.spec,
            status,
            model: model.as_ref(),
            operator: &operator,
        };
        let evaluation = self.evaluate(&subject, totals, Timestamp::now());
        if let (Some(targets), Some(model)) = (&evaluation.targets, &model) {
            store.apply_targets(model, targets).await?;
            tracing::info!(release = %key, model = %model_key.name, percent = evaluation.output.status.canary_percent, "weights applied");
        }
        let next = evaluation.output.status;
        if next == *status {
            return Ok(None);
        }
        store.write_status(key, &next).await?;
        for event in new_events(&status.history, &next.history) {
            tracing::info!(release = %key, phase = ?event.phase, from = event.from_percent, to = event.to_percent, actor = %event.actor, reason = %event.reason, "release step");
        }
        Ok(Some(next))
    }

    /// Forgets releases that no longer exist.
    pub fn retain(&self, keep: impl Fn(&NamespacedName) -> bool) {
        self.baselines
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .retain(|k, _| keep(k));
    }
}

fn fresh(
    step: (Option<u32>, Option<Timestamp>),
    now: Timestamp,
    stable: &TargetTotals,
    canary: &TargetTotals,
) -> Baseline {
    Baseline {
        step,
        taken_at: now,
        stable: stable.clone(),
        canary: canary.clone(),
    }
}

/// Whether `model` can carry the release: it exists and has both targets. `Ok` lists the other targets, which
/// the release holds at weight 0.
pub fn check_model(
    namespace: &str,
    spec: &CanaryReleaseSpec,
    model: Option<&InferenceModel>,
) -> Result<Vec<String>, String> {
    let Some(model) = model else {
        return Err(format!("InferenceModel {namespace}/{} not found", spec.model_ref));
    };
    let names: Vec<&str> = model.spec.target_models.iter().map(|t| t.name.as_str()).collect();
    for (role, wanted) in [("stable", &spec.stable), ("canary", &spec.canary)] {
        if !names.contains(&wanted.as_str()) {
            return Err(format!(
                "InferenceModel {namespace}/{} has no target model {wanted} (the {role}); its targets are {}",
                spec.model_ref,
                if names.is_empty() {
                    "none".to_owned()
                } else {
                    names.join(", ")
                }
            ));
        }
    }
    Ok(names
        .into_iter()
        .filter(|n| *n != spec.stable && *n != spec.canary)
        .map(str::to_owned)
        .collect())
}

/// The model's targets with the release's split: stable 100 − p, canary p, any other target 0.
pub fn weighted_targets(model: &InferenceModel, spec: &CanaryReleaseSpec, percent: u32) -> Vec<TargetModel> {
    let percent = percent.min(100) as i32;
    model
        .spec
        .target_models
        .iter()
        .map(|t| TargetModel {
            name: t.name.clone(),
            weight: Some(if t.name == spec.canary {
                percent
            } else if t.name == spec.stable {
                100 - percent
            } else {
                0
            }),
        })
        .collect()
}

/// The history entries in `next` that `before` did not have.
pub fn new_events<'a>(before: &[ReleaseEvent], next: &'a [ReleaseEvent]) -> impl Iterator<Item = &'a ReleaseEvent> {
    next.iter().filter(move |e| !before.contains(e))
}

/// Who set `spec.control`, from the [`CONTROL_ACTOR_ANNOTATION`].
pub fn operator(annotations: Option<&std::collections::BTreeMap<String, String>>) -> String {
    annotations
        .and_then(|a| a.get(CONTROL_ACTOR_ANNOTATION))
        .filter(|a| !a.trim().is_empty())
        .cloned()
        .unwrap_or_else(|| UNKNOWN_OPERATOR.to_owned())
}

#[cfg(test)]
mod tests {
    use api::canary::{CanaryLimits, Control};
    use serde_json::json;

    use super::*;

    fn spec() -> CanaryReleaseSpec {
        CanaryReleaseSpec {
            model_ref: "qwq".into(),
            stable: "qwq-32b".into(),
            canary: "qwq-32b-v2".into(),
            steps: Some(vec![10, 50, 100]),
            hold: Some("1s".into()),
            min_requests: Some(5),
            limits: CanaryLimits::default(),
            control: Control::Run,
        }
    }

    fn model(targets: serde_json::Value) -> InferenceModel {
        serde_json::from_value(json!({
            "apiVersion": "inference.networking.x-k8s.io/v1alpha1", "kind": "InferenceModel",
            "metadata": {"name": "qwq", "namespace": "default"},
            "spec": {"modelName": "qwq", "poolRef": {"name": "pool"}, "targetModels": targets}
        }))
        .unwrap()
    }

    fn totals(stable_ok: u64, canary_ok: u64) -> Result<Totals, String> {
        Ok(Totals::parse(&format!(
            "switchyard_requests_total{{model=\"qwq\",target_model=\"qwq-32b\",outcome=\"Routed\"}} {stable_ok}\n\
             switchyard_requests_total{{model=\"qwq\",target_model=\"qwq-32b-v2\",outcome=\"Routed\"}} {canary_ok}\n"
        )))
    }

    fn subject<'a>(
        key: &'a NamespacedName,
        spec: &'a CanaryReleaseSpec,
        status: &'a CanaryReleaseStatus,
        model: &'a InferenceModel,
    ) -> Subject<'a> {
        Subject {
            key,
            spec,
            status,
            model: Some(model),
            operator: "op",
        }
    }

    fn at(s: i64) -> Timestamp {
        Timestamp::from_second(1_750_000_000 + s).unwrap()
    }

    #[test]
    fn the_model_needs_both_targets_and_others_go_to_zero() {
        let two = model(json!([{"name": "qwq-32b", "weight": 100}, {"name": "qwq-32b-v2", "weight": 0}]));
        assert_eq!(check_model("default", &spec(), Some(&two)), Ok(Vec::new()));
        let one = model(json!([{"name": "qwq-32b"}]));
        let error = check_model("default", &spec(), Some(&one)).unwrap_err();
        assert!(error.contains("no target model qwq-32b-v2 (the canary)"), "{error}");
        assert!(
            check_model("default", &spec(), None)
                .unwrap_err()
                .contains("default/qwq not found")
        );
        let three = model(json!([{"name": "old"}, {"name": "qwq-32b"}, {"name": "qwq-32b-v2"}]));
        assert_eq!(
            check_model("default", &spec(), Some(&three)),
            Ok(vec!["old".to_owned()])
        );
        let weights: Vec<_> = weighted_targets(&three, &spec(), 25)
            .into_iter()
            .map(|t| t.weight)
            .collect();
        assert_eq!(weights, [Some(0), Some(75), Some(25)]);
    }

    #[test]
    fn windows_are_measured_from_the_step_start_and_weights_follow_the_status() {
        let releases = Releases::new(Vec::new());
        let spec = spec();
        let key = NamespacedName {
            namespace: "default".into(),
            name: "r".into(),
        };
        let m = model(json!([{"name": "qwq-32b", "weight": 100}, {"name": "qwq-32b-v2", "weight": 0}]));
        let first = releases.evaluate(&subject(&key, &spec, &Default::default(), &m), &totals(1000, 0), at(0));
        assert_eq!(first.output.apply_percent, Some(10));
        let weights: Vec<_> = first.targets.clone().unwrap().into_iter().map(|t| t.weight).collect();
        assert_eq!(weights, [Some(90), Some(10)]);

        let mut m10 = m.clone();
        m10.spec.target_models = first.targets.unwrap();
        let status = first.output.status;
        let held = releases.evaluate(&subject(&key, &spec, &status, &m10), &totals(1090, 10), at(1));
        assert_eq!(
            held.output.status.canary.as_ref().unwrap().requests,
            10,
            "diffed against the step start"
        );
        assert_eq!(held.output.status.stable.as_ref().unwrap().requests, 90);
        assert_eq!(held.output.apply_percent, Some(50));
        assert_eq!(held.targets.unwrap()[1].weight, Some(50));

        // Someone put the weights back by hand: the held step's weights are re-applied.
        let drifted = releases.evaluate(&subject(&key, &spec, &status, &m), &Err("down".into()), at(1));
        assert_eq!(drifted.output.apply_percent, None);
        assert_eq!(drifted.targets.unwrap()[1].weight, Some(10));
    }
}
