//! Field rules of the v1alpha1 CRDs (the OpenAPI and CEL rules of the upstream CRDs), shared by the dir and kube
//! providers so a document is accepted or rejected the same way in both modes.

use std::fmt;

use crate::{
    MIRROR_PERCENT_ANNOTATION, MIRROR_TARGET_ANNOTATION,
    v1alpha1::{InferenceModel, InferencePool},
};

/// Longest `modelName` the CRD accepts.
const MAX_MODEL_NAME: usize = 256;
/// Longest target model name (a DNS subdomain, like an object name).
const MAX_TARGET_NAME: usize = 253;
/// The CRD caps `targetModels` so the weighted split stays a short linear scan.
const MAX_TARGET_MODELS: usize = 10;
const MAX_WEIGHT: i32 = 1_000_000;
/// Label keys are qualified names: an optional DNS-subdomain prefix (≤253) and a name part (≤63).
const MAX_LABEL_KEY: usize = 253;
const MAX_LABEL_NAME: usize = 63;
const MAX_LABEL_VALUE: usize = 63;

/// One broken rule, named by the field's path as `kubectl explain` would spell it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct FieldError {
    /// Path of the offending field, e.g. `spec.targetModels[1].weight`.
    pub field: String,
    pub message: String,
}

impl FieldError {
    pub fn new(field: impl Into<String>, message: impl Into<String>) -> Self {
        Self {
            field: field.into(),
            message: message.into(),
        }
    }
}

impl fmt::Display for FieldError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}: {}", self.field, self.message)
    }
}

impl std::error::Error for FieldError {}

/// Checks an InferencePool; returns every broken rule, not only the first.
pub fn validate_pool(pool: &InferencePool) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    check_object_name(pool.metadata.name.as_deref(), &mut errors);

    let spec = &pool.spec;
    if spec.selector.is_empty() {
        errors.push(FieldError::new("spec.selector", "must select at least one label"));
    }
    for (key, value) in &spec.selector {
        if let Err(message) = check_label_key(key) {
            errors.push(FieldError::new(
                format!("spec.selector[{key}]"),
                format!("invalid label key: {message}"),
            ));
        }
        if let Err(message) = check_label_value(value) {
            errors.push(FieldError::new(
                format!("spec.selector[{key}]"),
                format!("invalid label value: {message}"),
            ));
        }
    }
    check_port("spec.targetPortNumber", Some(spec.target_port_number), &mut errors);

    if let Some(ext) = &spec.extension_ref {
        if ext.name.is_empty() {
            errors.push(FieldError::new("spec.extensionRef.name", "must not be empty"));
        }
        check_port(
            "spec.extensionRef.targetPortNumber",
            ext.target_port_number,
            &mut errors,
        );
    }
    finish(errors)
}

/// Checks an InferenceModel; returns every broken rule, not only the first.
pub fn validate_model(model: &InferenceModel) -> Result<(), Vec<FieldError>> {
    let mut errors = Vec::new();
    check_object_name(model.metadata.name.as_deref(), &mut errors);

    let spec = &model.spec;
    if spec.model_name.is_empty() {
        errors.push(FieldError::new("spec.modelName", "must not be empty"));
    } else if spec.model_name.len() > MAX_MODEL_NAME {
        errors.push(FieldError::new(
            "spec.modelName",
            format!("must be at most {MAX_MODEL_NAME} characters"),
        ));
    }
    if spec.pool_ref.name.is_empty() {
        errors.push(FieldError::new("spec.poolRef.name", "must not be empty"));
    }

    let targets = &spec.target_models;
    if targets.len() > MAX_TARGET_MODELS {
        errors.push(FieldError::new(
            "spec.targetModels",
            format!("must have at most {MAX_TARGET_MODELS} items, got {}", targets.len()),
        ));
    }
    for (idx, target) in targets.iter().enumerate() {
        if target.name.is_empty() {
            errors.push(FieldError::new(
                format!("spec.targetModels[{idx}].name"),
                "must not be empty",
            ));
        } else if target.name.len() > MAX_TARGET_NAME {
            errors.push(FieldError::new(
                format!("spec.targetModels[{idx}].name"),
                format!("must be at most {MAX_TARGET_NAME} characters"),
            ));
        }
        if let Some(weight) = target.weight
            && !(0..=MAX_WEIGHT).contains(&weight)
        {
            errors.push(FieldError::new(
                format!("spec.targetModels[{idx}].weight"),
                format!("must be between 0 and {MAX_WEIGHT}, got {weight}"),
            ));
        }
    }
    let n_weighted = targets.iter().filter(|t| t.weight.is_some()).count();
    if n_weighted != 0 && n_weighted != targets.len() {
        errors.push(FieldError::new(
            "spec.targetModels",
            "weights should be set for all models, or none",
        ));
    } else if n_weighted != 0 && targets.iter().all(|t| t.weight == Some(0)) {
        // An all-zero split would leave the model unroutable while looking configured.
        errors.push(FieldError::new(
            "spec.targetModels",
            "at least one weight must be greater than 0",
        ));
    }
    if let Err(mirror) = mirror_policy(model) {
        errors.extend(mirror);
    }
    finish(errors)
}

/// A share of requests expressed in millionths, so the mirror accumulator counts exactly, without float drift.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct Fraction(u32);

impl Fraction {
    /// The whole: 100 %.
    pub const ONE: u32 = 1_000_000;

    /// Parses a percentage (`"10"`, `"2.5"`), 0–100, rounded to 0.0001 %.
    pub fn from_percent(text: &str) -> Option<Fraction> {
        let percent: f64 = text.trim().parse().ok()?;
        (percent.is_finite() && (0.0..=100.0).contains(&percent))
            .then(|| Fraction((percent * f64::from(Self::ONE) / 100.0).round() as u32))
    }

    /// Millionths of the whole, `0..=Fraction::ONE`.
    pub fn millionths(self) -> u32 {
        self.0
    }

    pub fn as_f64(self) -> f64 {
        f64::from(self.0) / f64::from(Self::ONE)
    }
}

/// Traffic mirroring of one InferenceModel, read from its `switchyard.dev/mirror-*` annotations.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct MirrorPolicy {
    /// The model name the copies are requested as.
    pub target: String,
    pub fraction: Fraction,
}

/// The model's mirror policy: `None` without the annotations, every broken rule when they are invalid.
///
/// Both annotations are required together: a target without a percentage would have to guess a share of the
/// traffic to duplicate, and a percentage without a target mirrors nowhere.
pub fn mirror_policy(model: &InferenceModel) -> Result<Option<MirrorPolicy>, Vec<FieldError>> {
    let annotations = model.metadata.annotations.as_ref();
    let get = |key: &str| annotations.and_then(|a| a.get(key)).map(String::as_str);
    let field = |key: &str| format!("metadata.annotations[{key}]");
    let (target, percent) = (get(MIRROR_TARGET_ANNOTATION), get(MIRROR_PERCENT_ANNOTATION));
    let mut errors = Vec::new();
    let target = match target.map(str::trim) {
        None => None,
        Some("") => {
            errors.push(FieldError::new(field(MIRROR_TARGET_ANNOTATION), "must not be empty"));
            None
        }
        Some(name) if name.len() > MAX_MODEL_NAME => {
            errors.push(FieldError::new(
                field(MIRROR_TARGET_ANNOTATION),
                format!("must be at most {MAX_MODEL_NAME} characters"),
            ));
            None
        }
        Some(name) if name == model.spec.model_name => {
            errors.push(FieldError::new(
                field(MIRROR_TARGET_ANNOTATION),
                format!("must name another model than spec.modelName {name:?}"),
            ));
            None
        }
        Some(name) => Some(name.to_owned()),
    };
    let fraction = match percent {
        None => {
            if target.is_some() {
                errors.push(FieldError::new(
                    field(MIRROR_PERCENT_ANNOTATION),
                    format!("must be set (0 to 100) when {MIRROR_TARGET_ANNOTATION} is"),
                ));
            }
            None
        }
        Some(text) => match Fraction::from_percent(text) {
            Some(fraction) => Some(fraction),
            None => {
                errors.push(FieldError::new(
                    field(MIRROR_PERCENT_ANNOTATION),
                    format!("must be a number from 0 to 100, got {text:?}"),
                ));
                None
            }
        },
    };
    if percent.is_some() && get(MIRROR_TARGET_ANNOTATION).is_none() {
        errors.push(FieldError::new(
            field(MIRROR_PERCENT_ANNOTATION),
            format!("needs {MIRROR_TARGET_ANNOTATION} to name the model to mirror to"),
        ));
    }
    if !errors.is_empty() {
        return Err(errors);
    }
    Ok(target
        .zip(fraction)
        .map(|(target, fraction)| MirrorPolicy { target, fraction }))
}

fn finish(errors: Vec<FieldError>) -> Result<(), Vec<FieldError>> {
    if errors.is_empty() { Ok(()) } else { Err(errors) }
}

fn check_object_name(name: Option<&str>, errors: &mut Vec<FieldError>) {
    match name {
        None | Some("") => errors.push(FieldError::new("metadata.name", "must be set")),
        Some(name) if name.len() > MAX_TARGET_NAME => {
            errors.push(FieldError::new(
                "metadata.name",
                format!("must be at most {MAX_TARGET_NAME} characters"),
            ));
        }
        Some(_) => {}
    }
}

fn check_port(field: &str, port: Option<i32>, errors: &mut Vec<FieldError>) {
    if let Some(port) = port
        && !(1..=65535).contains(&port)
    {
        errors.push(FieldError::new(
            field,
            format!("must be between 1 and 65535, got {port}"),
        ));
    }
}

/// A qualified name: `[prefix/]name`, prefix a DNS subdomain, name 1–63 alphanumerics with `-_.` inside.
fn check_label_key(key: &str) -> Result<(), String> {
    if key.is_empty() || key.len() > MAX_LABEL_KEY {
        return Err(format!("must be 1 to {MAX_LABEL_KEY} characters"));
    }
    let (prefix, name) = match key.rsplit_once('/') {
        Some((prefix, name)) => (Some(prefix), name),
        None => (None, key),
    };
    if let Some(prefix) = prefix {
        let label_ok = |label: &str| {
            !label.is_empty()
                && label.len() <= 63
                && label
                    .bytes()
                    .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || b == b'-')
                && !label.starts_with('-')
                && !label.ends_with('-')
        };
        if prefix.is_empty() || !prefix.split('.').all(label_ok) {
            return Err(format!("prefix {prefix:?} must be a lowercase DNS subdomain"));
        }
    }
    if name.is_empty() || name.len() > MAX_LABEL_NAME {
        return Err(format!("name part must be 1 to {MAX_LABEL_NAME} characters"));
    }
    check_label_chars(name)
}

fn check_label_value(value: &str) -> Result<(), String> {
    if value.len() > MAX_LABEL_VALUE {
        return Err(format!("must be at most {MAX_LABEL_VALUE} characters"));
    }
    if value.is_empty() {
        Ok(())
    } else {
        check_label_chars(value)
    }
}

/// Alphanumerics, with `-`, `_` and `.` allowed only between them.
fn check_label_chars(s: &str) -> Result<(), String> {
    let inner_ok = s
        .bytes()
        .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.'));
    let ends_ok = s.bytes().next().is_some_and(|b| b.is_ascii_alphanumeric())
        && s.bytes().last().is_some_and(|b| b.is_ascii_alphanumeric());
    if inner_ok && ends_ok {
        Ok(())
    } else {
        Err(format!("{s:?} must be alphanumerics with '-', '_' or '.' between them"))
    }
}

#[cfg(test)]
mod tests {
    use std::collections::BTreeMap;

    use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;

    use super::*;
    use crate::v1alpha1::{
        Criticality, ExtensionRef, InferenceModelSpec, InferencePoolSpec, PoolObjectReference, TargetModel,
    };

    fn pool() -> InferencePool {
        InferencePool {
            metadata: ObjectMeta {
                name: Some("reasoning-pool".into()),
                ..Default::default()
            },
            spec: InferencePoolSpec {
                selector: BTreeMap::from([("app".to_string(), "qwq-32b".to_string())]),
                target_port_number: 8000,
                extension_ref: None,
            },
            status: None,
        }
    }

    fn model(targets: &[(&str, Option<i32>)]) -> InferenceModel {
        InferenceModel {
            metadata: ObjectMeta {
                name: Some("inferencemodel-sample".into()),
                ..Default::default()
            },
            spec: InferenceModelSpec {
                model_name: "qwq".into(),
                criticality: Some(Criticality::Critical),
                pool_ref: PoolObjectReference {
                    group: None,
                    kind: None,
                    name: "reasoning-pool".into(),
                },
                target_models: targets
                    .iter()
                    .map(|(name, weight)| TargetModel {
                        name: (*name).into(),
                        weight: *weight,
                    })
                    .collect(),
            },
            status: None,
        }
    }

    /// The fields named by the errors, in order.
    fn fields(result: Result<(), Vec<FieldError>>) -> Vec<String> {
        result.err().unwrap_or_default().into_iter().map(|e| e.field).collect()
    }

    #[test]
    fn seed_pool_and_model_are_valid() {
        assert_eq!(validate_pool(&pool()), Ok(()));
        assert_eq!(validate_model(&model(&[("qwq-32b", Some(100))])), Ok(()));
        assert_eq!(validate_model(&model(&[])), Ok(()));
    }

    #[test]
    fn pool_without_name_is_rejected() {
        let mut p = pool();
        p.metadata.name = None;
        assert_eq!(fields(validate_pool(&p)), ["metadata.name"]);
        p.metadata.name = Some(String::new());
        assert_eq!(fields(validate_pool(&p)), ["metadata.name"]);
    }

    #[test]
    fn pool_with_empty_selector_is_rejected() {
        let mut p = pool();
        p.spec.selector.clear();
        assert_eq!(fields(validate_pool(&p)), ["spec.selector"]);
    }

    #[test]
    fn selector_keys_and_values_follow_label_syntax() {
        let mut p = pool();
        p.spec.selector = BTreeMap::from([
            ("app.kubernetes.io/name".to_string(), "qwq".to_string()),
            ("tier".to_string(), String::new()),
        ]);
        assert_eq!(validate_pool(&p), Ok(()));

        for (key, value) in [
            ("bad key", "x"),
            ("-app", "x"),
            ("Upper.Case/app", "x"),
            ("/app", "x"),
            ("app", "bad value"),
            ("app", "-x"),
        ] {
            p.spec.selector = BTreeMap::from([(key.to_string(), value.to_string())]);
            assert_eq!(
                fields(validate_pool(&p)),
                [format!("spec.selector[{key}]")],
                "{key}={value}"
            );
        }
        p.spec.selector = BTreeMap::from([("a".repeat(64), "x".to_string())]);
        assert_eq!(fields(validate_pool(&p)).len(), 1);
        p.spec.selector = BTreeMap::from([("app".to_string(), "v".repeat(64))]);
        assert_eq!(fields(validate_pool(&p)).len(), 1);
        p.spec.selector = BTreeMap::from([("app".to_string(), "v".repeat(63))]);
        assert_eq!(validate_pool(&p), Ok(()));
    }

    #[test]
    fn target_port_must_be_a_tcp_port() {
        let mut p = pool();
        for port in [0, -1, 65536] {
            p.spec.target_port_number = port;
            assert_eq!(fields(validate_pool(&p)), ["spec.targetPortNumber"], "{port}");
        }
        for port in [1, 65535] {
            p.spec.target_port_number = port;
            assert_eq!(validate_pool(&p), Ok(()), "{port}");
        }
    }

    #[test]
    fn extension_ref_port_is_checked_only_when_set() {
        let mut p = pool();
        let ext = |port| ExtensionRef {
            group: None,
            kind: None,
            name: "picker".into(),
            target_port_number: port,
            failure_mode: None,
        };
        p.spec.extension_ref = Some(ext(None));
        assert_eq!(validate_pool(&p), Ok(()));
        p.spec.extension_ref = Some(ext(Some(9002)));
        assert_eq!(validate_pool(&p), Ok(()));
        p.spec.extension_ref = Some(ext(Some(70000)));
        assert_eq!(fields(validate_pool(&p)), ["spec.extensionRef.targetPortNumber"]);
        let mut unnamed = ext(None);
        unnamed.name.clear();
        p.spec.extension_ref = Some(unnamed);
        assert_eq!(fields(validate_pool(&p)), ["spec.extensionRef.name"]);
    }

    #[test]
    fn every_broken_rule_is_reported() {
        let mut p = pool();
        p.metadata.name = None;
        p.spec.selector.clear();
        p.spec.target_port_number = 0;
        assert_eq!(
            fields(validate_pool(&p)),
            ["metadata.name", "spec.selector", "spec.targetPortNumber"]
        );
    }

    #[test]
    fn model_name_must_be_set_and_short() {
        let mut m = model(&[]);
        m.spec.model_name.clear();
        assert_eq!(fields(validate_model(&m)), ["spec.modelName"]);
        m.spec.model_name = "m".repeat(257);
        assert_eq!(fields(validate_model(&m)), ["spec.modelName"]);
        m.spec.model_name = "m".repeat(256);
        assert_eq!(validate_model(&m), Ok(()));
    }

    #[test]
    fn model_needs_a_pool_ref_name() {
        let mut m = model(&[]);
        m.spec.pool_ref.name.clear();
        assert_eq!(fields(validate_model(&m)), ["spec.poolRef.name"]);
    }

    #[test]
    fn model_without_object_name_is_rejected() {
        let mut m = model(&[]);
        m.metadata.name = None;
        assert_eq!(fields(validate_model(&m)), ["metadata.name"]);
    }

    #[test]
    fn at_most_ten_target_models() {
        let names: Vec<String> = (0..11).map(|i| format!("t{i}")).collect();
        let eleven: Vec<(&str, Option<i32>)> = names.iter().map(|n| (n.as_str(), Some(1))).collect();
        assert_eq!(fields(validate_model(&model(&eleven))), ["spec.targetModels"]);
        assert_eq!(validate_model(&model(&eleven[..10])), Ok(()));
    }

    #[test]
    fn target_names_must_be_set_and_short() {
        let long = "t".repeat(254);
        assert_eq!(
            fields(validate_model(&model(&[("a", None), ("", None), (&long, None)]))),
            ["spec.targetModels[1].name", "spec.targetModels[2].name"]
        );
        assert_eq!(validate_model(&model(&[(&"t".repeat(253), None)])), Ok(()));
    }

    #[test]
    fn weights_are_bounded() {
        assert_eq!(
            fields(validate_model(&model(&[
                ("a", Some(1)),
                ("b", Some(-1)),
                ("c", Some(1_000_001))
            ]))),
            ["spec.targetModels[1].weight", "spec.targetModels[2].weight"]
        );
        assert_eq!(
            validate_model(&model(&[("a", Some(1_000_000)), ("b", Some(0))])),
            Ok(())
        );
    }

    #[test]
    fn weights_are_set_for_all_targets_or_none() {
        let err = validate_model(&model(&[("a", Some(50)), ("b", None)])).unwrap_err();
        assert_eq!(err.len(), 1);
        assert_eq!(
            err[0].to_string(),
            "spec.targetModels: weights should be set for all models, or none"
        );
        assert_eq!(validate_model(&model(&[("a", None), ("b", None)])), Ok(()));
    }

    fn annotated(pairs: &[(&str, &str)]) -> InferenceModel {
        let mut m = model(&[("qwq-32b", Some(100))]);
        m.metadata.annotations = Some(pairs.iter().map(|(k, v)| (k.to_string(), v.to_string())).collect());
        m
    }

    #[test]
    fn mirror_annotations_parse_into_a_policy() {
        assert_eq!(mirror_policy(&model(&[])), Ok(None));
        let m = annotated(&[
            (MIRROR_TARGET_ANNOTATION, "qwq-next"),
            (MIRROR_PERCENT_ANNOTATION, "12.5"),
        ]);
        assert_eq!(validate_model(&m), Ok(()));
        let policy = mirror_policy(&m).unwrap().unwrap();
        assert_eq!(policy.target, "qwq-next");
        assert_eq!(policy.fraction.millionths(), 125_000);
        for (text, millionths) in [("0", 0), ("100", 1_000_000), (" 10 ", 100_000), ("0.0001", 1)] {
            assert_eq!(
                Fraction::from_percent(text).map(Fraction::millionths),
                Some(millionths),
                "{text}"
            );
        }
    }

    #[test]
    fn invalid_mirror_annotations_are_rejected_by_name() {
        let percent = format!("metadata.annotations[{MIRROR_PERCENT_ANNOTATION}]");
        let target = format!("metadata.annotations[{MIRROR_TARGET_ANNOTATION}]");
        for bad in ["abc", "-1", "100.5", "NaN", "inf", ""] {
            let m = annotated(&[(MIRROR_TARGET_ANNOTATION, "qwq-next"), (MIRROR_PERCENT_ANNOTATION, bad)]);
            let err = validate_model(&m).unwrap_err();
            assert_eq!(err.len(), 1, "{bad:?}");
            assert_eq!(err[0].field, percent, "{bad:?}");
            assert!(err[0].message.contains("from 0 to 100"), "{}", err[0].message);
        }
        let long = "m".repeat(257);
        for bad in ["", "  ", long.as_str(), "qwq"] {
            let m = annotated(&[(MIRROR_TARGET_ANNOTATION, bad), (MIRROR_PERCENT_ANNOTATION, "5")]);
            assert_eq!(fields(validate_model(&m)), std::slice::from_ref(&target), "{bad:?}");
        }
        let only_percent = annotated(&[(MIRROR_PERCENT_ANNOTATION, "5")]);
        let err = validate_model(&only_percent).unwrap_err();
        assert_eq!(err[0].field, percent);
        assert!(err[0].message.contains(MIRROR_TARGET_ANNOTATION), "{}", err[0].message);
        let only_target = annotated(&[(MIRROR_TARGET_ANNOTATION, "qwq-next")]);
        assert_eq!(fields(validate_model(&only_target)), [percent]);
    }

    #[test]
    fn set_weights_must_not_all_be_zero() {
        assert_eq!(
            fields(validate_model(&model(&[("a", Some(0)), ("b", Some(0))]))),
            ["spec.targetModels"]
        );
        assert_eq!(validate_model(&model(&[("a", Some(0)), ("b", Some(1))])), Ok(()));
    }
}
