//! Canary releases as the pages see them: InferenceModels read and changed through the shared [`store::Store`] (a
//! directory of YAML or the Kubernetes API), the validation of a weight change, and the apply/rollback flow that
//! records each change in the history. Guarded releases (CanaryRelease objects, in the same place) are in
//! [`guarded`].

pub mod guarded;

use std::collections::BTreeMap;

use api::{
    NamespacedName,
    canary::{CanaryRelease, CanaryReleaseStatus, Control},
    v1alpha1::{InferenceModel, TargetModel},
};
use futures::future::BoxFuture;
use serde::{Deserialize, Serialize};
pub use store::Error as StoreError;
use store::{ModelStore, ReleaseStore, Store, Stored};

use crate::db::{NewRelease, ReleaseKind};

/// Largest weight the CRD accepts (`targetModels[].weight` maximum).
pub const MAX_WEIGHT: u32 = 1_000_000;

/// One target model and its weight; `None` on every target means an equal split.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct Target {
    pub name: String,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub weight: Option<u32>,
}

/// An InferenceModel as the releases pages show it.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct ModelState {
    pub key: NamespacedName,
    /// `spec.modelName`, what clients request.
    pub model_name: String,
    pub criticality: String,
    pub pool: String,
    pub targets: Vec<Target>,
    /// Where the object lives (a file path, or the cluster).
    pub source: String,
}

impl ModelState {
    /// The page's view of an InferenceModel; objects without a namespace are in `default`.
    pub fn from_model(model: &InferenceModel, source: String) -> ModelState {
        let targets = if model.spec.target_models.is_empty() {
            // A model without targetModels serves itself, as the gateway treats it.
            vec![Target {
                name: model.spec.model_name.clone(),
                weight: None,
            }]
        } else {
            model
                .spec
                .target_models
                .iter()
                .map(|t| Target {
                    name: t.name.clone(),
                    weight: t.weight.and_then(|w| u32::try_from(w).ok()),
                })
                .collect()
        };
        ModelState {
            key: NamespacedName::of(&model.metadata),
            model_name: model.spec.model_name.clone(),
            criticality: model
                .spec
                .criticality
                .map(|c| format!("{c:?}"))
                .unwrap_or_else(|| "Standard".into()),
            pool: model.spec.pool_ref.name.clone(),
            targets,
            source,
        }
    }

    /// Each target's share of traffic in percent (equal shares when unweighted).
    pub fn shares(&self) -> Vec<f64> {
        shares(&self.targets)
    }

    /// A history row for this model made now by `actor`, with its current targets as both before and after.
    pub fn history_row(&self, actor: &str, kind: ReleaseKind, reason: String) -> NewRelease {
        let targets = serde_json::to_string(&self.targets).unwrap_or_default();
        NewRelease {
            namespace: self.key.namespace.clone(),
            name: self.key.name.clone(),
            model_name: self.model_name.clone(),
            at_ms: crate::time::now_ms(),
            actor: actor.to_owned(),
            kind,
            reason,
            before: targets.clone(),
            after: targets,
            guarded_release: None,
            event_key: None,
        }
    }
}

pub fn shares(targets: &[Target]) -> Vec<f64> {
    let weight = |t: &Target| f64::from(t.weight.unwrap_or(1));
    let total: f64 = targets.iter().map(weight).sum();
    targets
        .iter()
        .map(|t| if total > 0.0 { weight(t) * 100.0 / total } else { 0.0 })
        .collect()
}

/// Every InferenceModel as the pages show it, sorted by namespace and name.
pub async fn list(store: &dyn Store) -> Result<Vec<ModelState>, StoreError> {
    Ok(store
        .list_models()
        .await?
        .iter()
        .map(|m| ModelState::from_model(&m.object, m.source.clone()))
        .collect())
}

/// Loads one model through [`list`].
pub async fn get(store: &dyn Store, key: &NamespacedName) -> Result<ModelState, StoreError> {
    list(store)
        .await?
        .into_iter()
        .find(|m| &m.key == key)
        .ok_or_else(|| StoreError::NotFound(key.clone()))
}

/// Replaces the model's `spec.targetModels` and returns the stored state.
pub async fn apply(store: &dyn Store, key: &NamespacedName, targets: &[Target]) -> Result<ModelState, StoreError> {
    let model = store
        .get_model(key)
        .await?
        .ok_or_else(|| StoreError::NotFound(key.clone()))?;
    let applied = store.apply_targets(&model, &target_models(targets)).await?;
    Ok(ModelState::from_model(&applied.object, applied.source))
}

fn target_models(targets: &[Target]) -> Vec<TargetModel> {
    targets
        .iter()
        .map(|t| TargetModel {
            name: t.name.clone(),
            // Out of range on purpose when too large, so validation reports it rather than clamping it.
            weight: t.weight.map(|w| i32::try_from(w).unwrap_or(i32::MAX)),
        })
        .collect()
}

/// The store of a dashboard started without `--dir` or `--kube`: the audit and pod pages work, releases are empty.
#[derive(Debug, Default)]
pub struct NoReleaseStore;

impl ModelStore for NoReleaseStore {
    fn list_models(&self) -> BoxFuture<'_, Result<Vec<Stored<InferenceModel>>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn get_model<'a>(&'a self, _: &'a NamespacedName) -> BoxFuture<'a, Result<Option<InferenceModel>, StoreError>> {
        Box::pin(async { Ok(None) })
    }

    fn apply_targets<'a>(
        &'a self,
        model: &'a InferenceModel,
        _: &'a [TargetModel],
    ) -> BoxFuture<'a, Result<Stored<InferenceModel>, StoreError>> {
        Box::pin(async move { Err(StoreError::NotFound(NamespacedName::of(&model.metadata))) })
    }

    fn describe(&self) -> String {
        "nowhere: start the dashboard with --dir or --kube to edit releases".into()
    }
}

impl ReleaseStore for NoReleaseStore {
    fn list_releases(&self) -> BoxFuture<'_, Result<Vec<Stored<CanaryRelease>>, StoreError>> {
        Box::pin(async { Ok(Vec::new()) })
    }

    fn create_release<'a>(&'a self, _: &'a CanaryRelease) -> BoxFuture<'a, Result<Stored<CanaryRelease>, StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable(self.describe())) })
    }

    fn set_control<'a>(
        &'a self,
        key: &'a NamespacedName,
        _: Control,
    ) -> BoxFuture<'a, Result<Stored<CanaryRelease>, StoreError>> {
        Box::pin(async move {
            Err(StoreError::Unavailable(format!(
                "no release {key}: {}",
                self.describe()
            )))
        })
    }

    fn write_status<'a>(
        &'a self,
        _: &'a NamespacedName,
        _: &'a CanaryReleaseStatus,
    ) -> BoxFuture<'a, Result<(), StoreError>> {
        Box::pin(async { Err(StoreError::Unavailable(self.describe())) })
    }
}

/// The weight form as submitted: one row per target (name fixed, weight text) plus an optional new target.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct WeightForm {
    /// `(target name, weight as typed)`, in the order shown.
    pub rows: Vec<(String, String)>,
    pub new_name: String,
    pub new_weight: String,
    pub reason: String,
}

/// Inline validation errors: per field (`weight_0`, `new_name`, `reason`) and for the form as a whole.
#[derive(Clone, Debug, Default, PartialEq, Serialize)]
pub struct FormErrors {
    pub fields: BTreeMap<String, String>,
    pub form: Vec<String>,
}

impl FormErrors {
    pub fn is_empty(&self) -> bool {
        self.fields.is_empty() && self.form.is_empty()
    }

    pub fn field(&self, name: &str) -> Option<&str> {
        self.fields.get(name).map(String::as_str)
    }
}

/// Longest reason kept with a release.
pub const MAX_REASON: usize = 500;

impl WeightForm {
    /// Parses the form fields `name_N`/`weight_N`, `new_name`, `new_weight` and `reason`.
    pub fn from_fields(fields: &[(String, String)]) -> WeightForm {
        let mut names = BTreeMap::<usize, String>::new();
        let mut weights = BTreeMap::<usize, String>::new();
        let mut form = WeightForm::default();
        for (key, value) in fields {
            if let Some(i) = key.strip_prefix("name_").and_then(|i| i.parse::<usize>().ok()) {
                names.insert(i, value.clone());
            } else if let Some(i) = key.strip_prefix("weight_").and_then(|i| i.parse::<usize>().ok()) {
                weights.insert(i, value.clone());
            } else if key == "new_name" {
                form.new_name = value.clone();
            } else if key == "new_weight" {
                form.new_weight = value.clone();
            } else if key == "reason" {
                form.reason = value.clone();
            }
        }
        form.rows = names
            .into_iter()
            .map(|(i, name)| (name, weights.remove(&i).unwrap_or_default()))
            .collect();
        form
    }

    /// The form pre-filled with a model's current targets.
    pub fn from_targets(targets: &[Target]) -> WeightForm {
        WeightForm {
            rows: targets
                .iter()
                .map(|t| (t.name.clone(), t.weight.map(|w| w.to_string()).unwrap_or_default()))
                .collect(),
            ..WeightForm::default()
        }
    }

    /// Validates the weights (whole numbers in 0–1 000 000, set on all targets or none, at least one above 0) and
    /// returns the new targets, or every problem at once so the form can show them next to their fields.
    pub fn validate(&self) -> Result<Vec<Target>, FormErrors> {
        let mut errors = FormErrors::default();
        let mut targets = Vec::new();
        let mut parse = |field: String, text: &str| -> Option<u32> {
            let text = text.trim();
            if text.is_empty() {
                return None;
            }
            match text.parse::<u32>() {
                Ok(w) if w <= MAX_WEIGHT => Some(w),
                Ok(_) => {
                    errors.fields.insert(field, format!("must be at most {MAX_WEIGHT}"));
                    None
                }
                Err(_) => {
                    errors
                        .fields
                        .insert(field, "must be a whole number from 0 to 1000000".into());
                    None
                }
            }
        };
        let mut blank = 0;
        for (i, (name, weight)) in self.rows.iter().enumerate() {
            if weight.trim().is_empty() {
                blank += 1;
            }
            let weight = parse(format!("weight_{i}"), weight);
            targets.push(Target {
                name: name.clone(),
                weight,
            });
        }
        let new_name = self.new_name.trim();
        if !new_name.is_empty() {
            if self.new_weight.trim().is_empty() {
                blank += 1;
            }
            let weight = parse("new_weight".into(), &self.new_weight);
            if targets.iter().any(|t| t.name == new_name) {
                errors
                    .fields
                    .insert("new_name".into(), format!("{new_name:?} is already a target"));
            } else if new_name.len() > 253 || new_name.chars().any(|c| c.is_control() || c.is_whitespace()) {
                errors.fields.insert(
                    "new_name".into(),
                    "must be at most 253 characters without spaces".into(),
                );
            }
            targets.push(Target {
                name: new_name.to_owned(),
                weight,
            });
        } else if !self.new_weight.trim().is_empty() {
            errors
                .fields
                .insert("new_name".into(), "name the new target, or clear its weight".into());
        }
        if targets.is_empty() {
            errors.form.push("the model needs at least one target".into());
        }
        if errors.fields.is_empty() {
            if blank != 0 && blank != targets.len() {
                errors
                    .form
                    .push("set a weight on every target, or leave all of them empty for an equal split".into());
            } else if blank == 0 && targets.iter().all(|t| t.weight == Some(0)) {
                errors
                    .form
                    .push("at least one weight must be greater than 0, or no traffic could be routed".into());
            }
        }
        if self.reason.trim().is_empty() {
            errors
                .fields
                .insert("reason".into(), "say why, for the release history".into());
        } else if self.reason.chars().count() > MAX_REASON {
            errors
                .fields
                .insert("reason".into(), format!("must be at most {MAX_REASON} characters"));
        }
        if errors.is_empty() { Ok(targets) } else { Err(errors) }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn form(rows: &[(&str, &str)], reason: &str) -> WeightForm {
        WeightForm {
            rows: rows.iter().map(|(n, w)| ((*n).into(), (*w).into())).collect(),
            reason: reason.into(),
            ..WeightForm::default()
        }
    }

    #[test]
    fn a_90_10_split_is_accepted() {
        let targets = form(&[("a", "90"), ("b", " 10 ")], "canary").validate().unwrap();
        assert_eq!(
            targets,
            [
                Target {
                    name: "a".into(),
                    weight: Some(90)
                },
                Target {
                    name: "b".into(),
                    weight: Some(10)
                }
            ]
        );
        assert_eq!(shares(&targets), [90.0, 10.0]);
    }

    #[test]
    fn weights_must_be_all_or_none_in_range_and_not_all_zero() {
        let errors = form(&[("a", "90"), ("b", "")], "x").validate().unwrap_err();
        assert!(errors.form[0].contains("every target"), "{errors:?}");
        let errors = form(&[("a", "0"), ("b", "0")], "x").validate().unwrap_err();
        assert!(errors.form[0].contains("greater than 0"), "{errors:?}");
        let errors = form(&[("a", "1000001"), ("b", "-1")], "x").validate().unwrap_err();
        assert_eq!(errors.field("weight_0"), Some("must be at most 1000000"));
        assert!(errors.field("weight_1").unwrap().contains("whole number"));
        let errors = form(&[("a", "1")], " ").validate().unwrap_err();
        assert!(errors.field("reason").is_some());
        // No weights at all is an equal split.
        let targets = form(&[("a", ""), ("b", "")], "even").validate().unwrap();
        assert_eq!(shares(&targets), [50.0, 50.0]);
    }

    #[test]
    fn a_new_target_needs_a_fresh_name() {
        let mut f = form(&[("a", "100")], "add b");
        f.new_name = "a".into();
        f.new_weight = "5".into();
        assert!(f.validate().unwrap_err().field("new_name").is_some());
        f.new_name = "b".into();
        assert_eq!(f.validate().unwrap().len(), 2);
    }

    #[tokio::test]
    async fn without_a_store_there_is_nothing_to_release() {
        assert!(list(&NoReleaseStore).await.unwrap().is_empty());
        let key = NamespacedName {
            namespace: "default".into(),
            name: "m".into(),
        };
        assert!(matches!(
            apply(&NoReleaseStore, &key, &[]).await,
            Err(StoreError::NotFound(_))
        ));
    }

    #[test]
    fn form_fields_keep_their_row_order() {
        let fields: Vec<(String, String)> = [
            ("name_1", "b"),
            ("weight_1", "10"),
            ("name_0", "a"),
            ("weight_0", "90"),
            ("reason", "r"),
        ]
        .iter()
        .map(|(k, v)| ((*k).into(), (*v).into()))
        .collect();
        let f = WeightForm::from_fields(&fields);
        assert_eq!(f.rows, [("a".into(), "90".into()), ("b".into(), "10".into())]);
        assert_eq!(f.reason, "r");
    }
}
