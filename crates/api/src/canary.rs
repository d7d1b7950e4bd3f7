//! `switchyard.dev/v1alpha1` CanaryRelease: a guarded release that moves an InferenceModel's traffic from a stable
//! target model to a canary in steps, promoting or rolling back on the gateway's measurements.
//!
//! The controller drives it (kube mode: the CRD; dir mode: a YAML document of the same shape in the watched
//! directory); the dashboard starts one by creating the object and steers it through `spec.control`.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::CustomResource;
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use crate::validate::FieldError;

/// Our own API group (CanaryRelease); the seed's CRDs stay in `inference.networking.x-k8s.io` untouched.
pub const GROUP: &str = "switchyard.dev";

/// The steps a release takes when the spec names none: canary share of traffic in percent.
pub const DEFAULT_STEPS: [u32; 5] = [1, 5, 25, 50, 100];
/// How many history entries the status keeps (oldest dropped first); the dashboard's SQLite keeps the full record.
pub const MAX_HISTORY: usize = 64;

/// CanaryRelease moves an InferenceModel's traffic from its stable target model to a canary in steps, holding each
/// step while the gateway measures both, and rolls back at once when the canary breaks a limit.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[kube(
    group = "switchyard.dev",
    version = "v1alpha1",
    kind = "CanaryRelease",
    namespaced,
    status = "CanaryReleaseStatus",
    derive = "PartialEq",
    doc = "CanaryRelease moves an InferenceModel's traffic to a canary target model in guarded steps.",
    printcolumn(name = "Model", type_ = "string", json_path = ".spec.modelRef"),
    printcolumn(name = "Stable", type_ = "string", json_path = ".spec.stable"),
    printcolumn(name = "Canary", type_ = "string", json_path = ".spec.canary"),
    printcolumn(name = "Percent", type_ = "integer", json_path = ".status.canaryPercent"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp")
)]
#[serde(rename_all = "camelCase")]
pub struct CanaryReleaseSpec {
    /// Name of the InferenceModel (same namespace) whose targetModels weights this release moves.
    #[schemars(length(min = 1, max = 253))]
    pub model_ref: String,
    /// Target model serving today; it keeps 100 − canary percent of the traffic.
    #[schemars(length(min = 1, max = 253))]
    pub stable: String,
    /// Target model being released.
    #[schemars(length(min = 1, max = 253))]
    pub canary: String,
    /// Canary share of traffic per step, in percent: strictly increasing, each in 1–100, the last 100.
    /// Defaults to 1, 5, 25, 50, 100.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(min = 1, max = 20))]
    pub steps: Option<Vec<u32>>,
    /// How long each step is held and measured before the next, as a Go-style duration ("30s", "5m"). Defaults
    /// to "60s".
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub hold: Option<String>,
    /// Canary responses a step needs before it can be judged healthy; a step with fewer is held longer.
    /// Defaults to 20.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 1, max = 1_000_000))]
    pub min_requests: Option<u32>,
    /// What the canary must stay within, relative to the stable target measured over the same window.
    #[serde(default)]
    pub limits: CanaryLimits,
    /// The operator's intent: Run (the default), Pause (hold the current step), Promote (go to 100 % now) or
    /// Abort (roll back to 0 % now and stop). The dashboard's buttons set this field.
    #[serde(default)]
    pub control: Control,
}

/// Limits on the canary, relative to the stable target over the same measurement window.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryLimits {
    /// Largest allowed canary TTFT P90 as a multiple of the stable target's. Defaults to 1.5.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_ttft_p90_ratio: Option<f64>,
    /// Largest allowed canary error rate (5xx and failed upstreams over responses) above the stable target's, as
    /// a fraction. Defaults to 0.02.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_error_rate_increase: Option<f64>,
    /// Largest allowed canary shed rate (429 for Sheddable traffic) above the stable target's, as a fraction.
    /// Defaults to 0.05.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub max_shed_rate_increase: Option<f64>,
}

impl CanaryLimits {
    pub fn ttft_p90_ratio(&self) -> f64 {
        self.max_ttft_p90_ratio.unwrap_or(1.5)
    }
    pub fn error_rate_increase(&self) -> f64 {
        self.max_error_rate_increase.unwrap_or(0.02)
    }
    pub fn shed_rate_increase(&self) -> f64 {
        self.max_shed_rate_increase.unwrap_or(0.05)
    }
}

/// The operator's intent for a release.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Control {
    #[default]
    Run,
    Pause,
    Promote,
    Abort,
}

/// Where a release stands.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, Default, PartialEq, Eq, Hash, JsonSchema)]
pub enum Phase {
    /// Accepted, first step not applied yet.
    #[default]
    Pending,
    /// Holding a step and measuring.
    Progressing,
    /// Holding a step on the operator's request; limits are still checked and still roll back.
    Paused,
    /// The canary has 100 % (terminal).
    Promoted,
    /// A limit was broken and the canary is back to 0 % (terminal).
    RolledBack,
    /// The operator aborted; the canary is back to 0 % (terminal).
    Aborted,
    /// The spec or the InferenceModel cannot be released (terminal until the spec changes); see the message.
    Invalid,
}

impl Phase {
    /// The release ended (promoted, rolled back or aborted): its history is complete and the model is free for the
    /// next one. `Invalid` is not finished: a corrected spec resumes it.
    pub fn is_finished(self) -> bool {
        matches!(self, Phase::Promoted | Phase::RolledBack | Phase::Aborted)
    }

    /// A terminal phase never moves weights again.
    pub fn is_terminal(self) -> bool {
        self.is_finished() || self == Phase::Invalid
    }
}

/// What the controller last measured for one target over the current step's window.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct TargetObservation {
    /// Responses (routed requests that finished) in the window.
    pub requests: u64,
    /// TTFT P90 in milliseconds, when any response in the window had one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub ttft_p90_ms: Option<f64>,
    /// Errors over responses.
    pub error_rate: f64,
    /// Sheds (429) over requests for this target.
    pub shed_rate: f64,
}

/// One step, hold extension, pause, promotion or rollback, with its reason.
#[derive(Serialize, Deserialize, Clone, Debug, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ReleaseEvent {
    pub time: Time,
    /// Canary percent before and after (equal when only the phase changed).
    pub from_percent: u32,
    pub to_percent: u32,
    pub phase: Phase,
    /// Who decided: `controller`, or the dashboard user who set `spec.control`.
    pub actor: String,
    /// Why, in a sentence with the measured numbers ("canary TTFT P90 2 310 ms is 2.4× stable's 960 ms, limit 1.5×").
    pub reason: String,
}

/// Observed state of a CanaryRelease, written by the controller.
#[derive(Serialize, Deserialize, Clone, Debug, Default, PartialEq, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct CanaryReleaseStatus {
    #[serde(default)]
    pub phase: Phase,
    /// Index into the steps of the step being held (absent before the first step).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step: Option<u32>,
    /// Canary share of traffic the controller last applied, in percent.
    #[serde(default)]
    pub canary_percent: u32,
    /// When the current step's measurement window started.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub step_started_at: Option<Time>,
    /// The last measurement of the stable and canary targets.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub stable: Option<TargetObservation>,
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub canary: Option<TargetObservation>,
    /// Human summary of the current phase.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub message: String,
    /// Every step and its reason, oldest first (at most [`MAX_HISTORY`]).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub history: Vec<ReleaseEvent>,
    /// Ready (progressing or promoted) and Degraded (rolled back) conditions.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 8))]
    #[schemars(extend("x-kubernetes-list-type" = "map", "x-kubernetes-list-map-keys" = ["type"]))]
    pub conditions: Vec<Condition>,
}

impl CanaryReleaseSpec {
    /// The steps in force (the spec's or [`DEFAULT_STEPS`]).
    pub fn steps(&self) -> Vec<u32> {
        self.steps.clone().unwrap_or_else(|| DEFAULT_STEPS.to_vec())
    }

    pub fn min_requests(&self) -> u32 {
        self.min_requests.unwrap_or(20)
    }

    /// Checks the rules a schema cannot express; returns every broken rule.
    pub fn validate(&self) -> Result<(), Vec<FieldError>> {
        let mut errors = Vec::new();
        if self.stable == self.canary {
            errors.push(FieldError::new("spec.canary", "must differ from spec.stable"));
        }
        let steps = self.steps();
        if steps.is_empty() {
            errors.push(FieldError::new("spec.steps", "needs at least one step"));
        }
        for (i, step) in steps.iter().enumerate() {
            if !(1..=100).contains(step) {
                errors.push(FieldError::new(format!("spec.steps[{i}]"), "must be between 1 and 100"));
            }
            if i > 0 && *step <= steps[i - 1] {
                errors.push(FieldError::new(
                    format!("spec.steps[{i}]"),
                    "must be larger than the step before it",
                ));
            }
        }
        if steps.last().is_some_and(|last| *last != 100) {
            errors.push(FieldError::new("spec.steps", "the last step must be 100"));
        }
        if let Some(hold) = &self.hold
            && let Err(message) = parse_hold(hold)
        {
            errors.push(FieldError::new("spec.hold", message));
        }
        let limits = [
            ("spec.limits.maxTtftP90Ratio", self.limits.max_ttft_p90_ratio, 1.0),
            (
                "spec.limits.maxErrorRateIncrease",
                self.limits.max_error_rate_increase,
                0.0,
            ),
            (
                "spec.limits.maxShedRateIncrease",
                self.limits.max_shed_rate_increase,
                0.0,
            ),
        ];
        for (field, value, min) in limits {
            if let Some(v) = value
                && !(v.is_finite() && v >= min)
            {
                errors.push(FieldError::new(field, format!("must be a number ≥ {min}")));
            }
        }
        if errors.is_empty() { Ok(()) } else { Err(errors) }
    }

    /// The hold per step in force.
    pub fn hold(&self) -> std::time::Duration {
        self.hold
            .as_deref()
            .and_then(|h| parse_hold(h).ok())
            .unwrap_or(std::time::Duration::from_secs(60))
    }
}

/// Parses a hold such as `1500ms`, `30s`, `5m` or `1h` (1 s to 24 h), in the grammar of [`crate::duration`].
pub fn parse_hold(text: &str) -> Result<std::time::Duration, String> {
    crate::duration::parse_duration_within(
        text,
        std::time::Duration::from_secs(1),
        std::time::Duration::from_secs(86_400),
        "the hold",
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    fn spec() -> CanaryReleaseSpec {
        CanaryReleaseSpec {
            model_ref: "qwq".into(),
            stable: "qwq-32b".into(),
            canary: "qwq-32b-v2".into(),
            steps: None,
            hold: None,
            min_requests: None,
            limits: CanaryLimits::default(),
            control: Control::Run,
        }
    }

    #[test]
    fn defaults_are_the_documented_ones() {
        let s = spec();
        assert_eq!(s.steps(), vec![1, 5, 25, 50, 100]);
        assert_eq!(s.hold(), std::time::Duration::from_secs(60));
        assert_eq!(s.min_requests(), 20);
        assert_eq!(s.limits.ttft_p90_ratio(), 1.5);
        assert!(s.validate().is_ok());
    }

    #[test]
    fn bad_specs_name_every_broken_field() {
        let mut s = spec();
        s.canary = s.stable.clone();
        s.steps = Some(vec![10, 5, 101]);
        s.hold = Some("forever".into());
        s.limits.max_ttft_p90_ratio = Some(0.5);
        let fields: Vec<String> = s.validate().unwrap_err().into_iter().map(|e| e.field).collect();
        for field in [
            "spec.canary",
            "spec.steps[1]",
            "spec.steps[2]",
            "spec.steps",
            "spec.hold",
            "spec.limits.maxTtftP90Ratio",
        ] {
            assert!(fields.iter().any(|f| f == field), "{field} missing from {fields:?}");
        }
    }

    #[test]
    fn holds_parse_with_units_and_bounds() {
        assert_eq!(parse_hold("1500ms"), Ok(std::time::Duration::from_millis(1500)));
        assert_eq!(parse_hold("5m"), Ok(std::time::Duration::from_secs(300)));
        assert!(parse_hold("10ms").is_err());
        assert!(parse_hold("2d").is_err());
        assert!(parse_hold("").is_err());
    }

    #[test]
    fn a_yaml_document_deserialises_with_camel_case_fields() {
        let yaml = "apiVersion: switchyard.dev/v1alpha1\nkind: CanaryRelease\nmetadata:\n  name: qwq-v2\n  namespace: default\nspec:\n  modelRef: qwq\n  stable: qwq-32b\n  canary: qwq-32b-v2\n  steps: [10, 50, 100]\n  hold: 20s\n  limits:\n    maxTtftP90Ratio: 1.2\n  control: Pause\n";
        let release: CanaryRelease = serde_saphyr::from_str(yaml).unwrap();
        assert_eq!(release.spec.steps(), vec![10, 50, 100]);
        assert_eq!(release.spec.control, Control::Pause);
        assert_eq!(release.spec.limits.ttft_p90_ratio(), 1.2);
    }
}
