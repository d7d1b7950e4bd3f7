//! Guarded releases (CanaryRelease objects): reading, creating and steering them through the shared store, and the
//! pure rules of the dashboard's side: what a start request becomes (and every way it can be wrong), which operator
//! action is allowed in which state, and how the controller's status history becomes release-history rows.
//!
//! The controller owns the status and the weights while a release runs; the dashboard only creates the object and
//! sets `spec.control`.

use api::{
    NamespacedName,
    canary::{CanaryLimits, CanaryRelease, CanaryReleaseSpec, CanaryReleaseStatus, Control, Phase, ReleaseEvent},
};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
use serde::{Deserialize, Serialize};
use store::Store;

use super::{FormErrors, MAX_REASON, ModelState, StoreError, Target};
use crate::db::{NewRelease, ReleaseKind};

/// A CanaryRelease as the dashboard shows it: its spec, and its status when the controller has written one.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Guarded {
    #[serde(flatten)]
    pub key: NamespacedName,
    pub spec: CanaryReleaseSpec,
    pub status: Option<CanaryReleaseStatus>,
    /// `metadata.creationTimestamp` in ms, when known (orders past releases).
    pub created_ms: Option<i64>,
    /// Where the object lives (a file path, or the cluster).
    pub source: String,
}

fn time_ms(time: &Time) -> i64 {
    time.0.as_millisecond()
}

impl Guarded {
    /// The page's view of an object without its status (the caller adds it: a sidecar in dir mode).
    pub fn from_object(release: &CanaryRelease, source: String) -> Guarded {
        Guarded {
            key: NamespacedName::of(&release.metadata),
            spec: release.spec.clone(),
            status: release.status.clone(),
            created_ms: release.metadata.creation_timestamp.as_ref().map(time_ms),
            source,
        }
    }

    /// The phase the controller last reported; `Pending` until it has written a status.
    pub fn phase(&self) -> Phase {
        self.status.as_ref().map(|s| s.phase).unwrap_or_default()
    }

    /// A release that is not over: it holds the model's weights.
    pub fn is_active(&self) -> bool {
        !self.phase().is_terminal()
    }

    pub fn percent(&self) -> u32 {
        self.status.as_ref().map(|s| s.canary_percent).unwrap_or(0)
    }

    /// Whether this release moves the weights of `model`.
    pub fn targets_model(&self, model: &NamespacedName) -> bool {
        self.key.namespace == model.namespace && self.spec.model_ref == model.name
    }

    /// The targets at a canary share of `percent` (what the controller applies).
    pub fn targets_at(&self, percent: u32) -> Vec<Target> {
        let percent = percent.min(100);
        vec![
            Target {
                name: self.spec.stable.clone(),
                weight: Some(100 - percent),
            },
            Target {
                name: self.spec.canary.clone(),
                weight: Some(percent),
            },
        ]
    }
}

/// Sorts releases oldest first: by creation time (unknown last), then by name.
pub fn sort_releases(releases: &mut [Guarded]) {
    releases.sort_by(|a, b| {
        (&a.key.namespace, a.created_ms.is_none(), a.created_ms, &a.key.name).cmp(&(
            &b.key.namespace,
            b.created_ms.is_none(),
            b.created_ms,
            &b.key.name,
        ))
    });
}

/// Every CanaryRelease with its status, oldest first.
pub async fn list(store: &dyn Store) -> Result<Vec<Guarded>, StoreError> {
    let mut releases: Vec<Guarded> = store
        .list_releases()
        .await?
        .iter()
        .map(|r| Guarded::from_object(&r.object, r.source.clone()))
        .collect();
    sort_releases(&mut releases);
    Ok(releases)
}

/// Creates a new release; [`StoreError::Conflict`] when one of that name exists already.
pub async fn create(store: &dyn Store, release: &CanaryRelease) -> Result<Guarded, StoreError> {
    let created = store.create_release(release).await?;
    Ok(Guarded::from_object(&created.object, created.source))
}

/// Sets `spec.control`, leaving the rest of the object as it is.
pub async fn set_control(store: &dyn Store, key: &NamespacedName, control: Control) -> Result<Guarded, StoreError> {
    let updated = store.set_control(key, control).await?;
    Ok(Guarded::from_object(&updated.object, updated.source))
}

/// An operator's button (or API call) on a running release.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Action {
    Pause,
    Resume,
    Promote,
    Abort,
}

impl Action {
    pub fn parse(text: &str) -> Option<Action> {
        match text {
            "pause" => Some(Action::Pause),
            "resume" => Some(Action::Resume),
            "promote" => Some(Action::Promote),
            "abort" => Some(Action::Abort),
            _ => None,
        }
    }

    pub fn as_str(self) -> &'static str {
        match self {
            Action::Pause => "pause",
            Action::Resume => "resume",
            Action::Promote => "promote",
            Action::Abort => "abort",
        }
    }

    /// The `spec.control` this action asks for.
    pub fn control(self) -> Control {
        match self {
            Action::Pause => Control::Pause,
            Action::Resume => Control::Run,
            Action::Promote => Control::Promote,
            Action::Abort => Control::Abort,
        }
    }

    pub fn kind(self) -> ReleaseKind {
        match self {
            Action::Pause => ReleaseKind::Pause,
            Action::Resume => ReleaseKind::Resume,
            Action::Promote => ReleaseKind::Promote,
            Action::Abort => ReleaseKind::Abort,
        }
    }
}

/// Decides an action against a release's state: the control to write, `None` when it is already in force, or why
/// it is refused (a 409). Abort is always allowed on a running release; nothing undoes an abort, and a promotion
/// can only be aborted.
pub fn decide(release: &Guarded, action: Action) -> Result<Option<Control>, String> {
    if !release.is_active() {
        return Err(format!(
            "release {} is {:?}; a finished release cannot be changed",
            release.key.name,
            release.phase()
        ));
    }
    let want = action.control();
    let current = release.spec.control;
    if current == want {
        return Ok(None);
    }
    match (current, action) {
        (Control::Abort, _) => Err(format!("release {} is being aborted", release.key.name)),
        (Control::Promote, Action::Pause | Action::Resume) => Err(format!(
            "release {} is being promoted; only abort can stop it",
            release.key.name
        )),
        _ => Ok(Some(want)),
    }
}

/// Canary limit defaults shown in the form (the CRD's defaults).
pub fn default_limits() -> (f64, f64, f64) {
    let limits = CanaryLimits::default();
    (
        limits.ttft_p90_ratio(),
        limits.error_rate_increase(),
        limits.shed_rate_increase(),
    )
}

/// A start request as the API receives it (the form is parsed into the same shape).
#[derive(Clone, Debug, Default, PartialEq, Deserialize)]
#[serde(rename_all = "camelCase", deny_unknown_fields)]
pub struct StartRequest {
    /// The CanaryRelease's name; derived from the canary and the time when absent.
    #[serde(default)]
    pub name: Option<String>,
    pub canary: String,
    /// Defaults to the model's target with the largest weight (other than the canary).
    #[serde(default)]
    pub stable: Option<String>,
    #[serde(default)]
    pub steps: Option<Vec<u32>>,
    #[serde(default)]
    pub hold: Option<String>,
    #[serde(default)]
    pub min_requests: Option<u32>,
    #[serde(default)]
    pub limits: CanaryLimits,
    #[serde(default)]
    pub reason: String,
    /// Who starts it (bearer callers only; a session's actor is its login name).
    #[serde(default)]
    pub actor: Option<String>,
}

/// Why a start request was refused.
#[derive(Debug, Clone, PartialEq)]
pub enum StartError {
    /// Per-field problems (400 / the form's inline errors).
    Invalid(FormErrors),
    /// Another release is running for the model, or the name is taken (409).
    Conflict(String),
}

/// A start request that passed validation.
#[derive(Debug, Clone, PartialEq)]
pub struct Start {
    pub release: CanaryRelease,
    /// The model's targets with the canary added at weight 0, when it was not one of them yet.
    pub add_canary: Option<Vec<Target>>,
}

/// The API and form field a spec field error belongs to: `spec.steps[2]` → `steps`, `spec.limits.x` → `limits.x`.
fn field_of(spec_field: &str) -> String {
    let field = spec_field.strip_prefix("spec.").unwrap_or(spec_field);
    match field.split_once('[') {
        Some((head, _)) => head.to_owned(),
        None => field.to_owned(),
    }
}

/// DNS-1123 subdomain, as Kubernetes requires of object names (and safe in a file name).
fn valid_name(name: &str) -> bool {
    let bytes = name.as_bytes();
    !bytes.is_empty()
        && bytes.len() <= 253
        && bytes
            .iter()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'-' | b'.'))
        && bytes[0].is_ascii_alphanumeric()
        && bytes[bytes.len() - 1].is_ascii_alphanumeric()
}

/// `qwq-32b-v2-20261210-153012`: the canary as a name, then the UTC time to the second.
pub fn default_name(canary: &str, now_ms: i64) -> String {
    let mut base: String = canary
        .chars()
        .map(|c| {
            let c = c.to_ascii_lowercase();
            if c.is_ascii_alphanumeric() || c == '-' { c } else { '-' }
        })
        .collect();
    base.truncate(200);
    let base = base.trim_matches('-');
    let stamp: String = crate::time::format_ms(now_ms)
        .chars()
        .take(19)
        .filter(char::is_ascii_digit)
        .collect();
    let (date, time) = stamp.split_at(8.min(stamp.len()));
    if base.is_empty() {
        format!("release-{date}-{time}")
    } else {
        format!("{base}-{date}-{time}")
    }
}

/// The stable target when the request names none: the heaviest target other than the canary (first on a tie).
pub fn default_stable(model: &ModelState, canary: &str) -> Option<String> {
    let mut best: Option<&Target> = None;
    for t in model.targets.iter().filter(|t| t.name != canary) {
        if best.is_none_or(|b| t.weight.unwrap_or(1) > b.weight.unwrap_or(1)) {
            best = Some(t);
        }
    }
    best.map(|t| t.name.clone())
}

/// Validates a start request against the model and the releases that exist, and builds the CanaryRelease.
/// Every field problem is reported at once; conflicts come only after the request itself is valid.
pub fn validate_start(
    model: &ModelState,
    existing: &[Guarded],
    request: &StartRequest,
    now_ms: i64,
) -> Result<Start, StartError> {
    let mut errors = FormErrors::default();
    let canary = request.canary.trim().to_owned();
    if canary.is_empty() {
        errors
            .fields
            .insert("canary".into(), "name the target model to release".into());
    } else if canary.len() > 253 || canary.chars().any(|c| c.is_control() || c.is_whitespace()) {
        errors
            .fields
            .insert("canary".into(), "must be at most 253 characters without spaces".into());
    }
    let stable = match request.stable.as_deref().map(str::trim).filter(|s| !s.is_empty()) {
        Some(stable) => stable.to_owned(),
        None => default_stable(model, &canary).unwrap_or_default(),
    };
    if !model.targets.iter().any(|t| t.name == stable) {
        errors.fields.insert(
            "stable".into(),
            format!("{stable:?} is not a target model of {}", model.model_name),
        );
    }
    let name = match request.name.as_deref().map(str::trim).filter(|n| !n.is_empty()) {
        Some(name) => name.to_owned(),
        None => default_name(&canary, now_ms),
    };
    if !valid_name(&name) {
        errors.fields.insert(
            "name".into(),
            "lowercase letters, digits, '-' and '.', starting and ending with a letter or digit".into(),
        );
    }
    if request.reason.trim().is_empty() {
        errors
            .fields
            .insert("reason".into(), "say why, for the release history".into());
    } else if request.reason.chars().count() > MAX_REASON {
        errors
            .fields
            .insert("reason".into(), format!("must be at most {MAX_REASON} characters"));
    }
    let spec = CanaryReleaseSpec {
        model_ref: model.key.name.clone(),
        stable: stable.clone(),
        canary: canary.clone(),
        steps: request.steps.clone(),
        hold: request.hold.as_deref().map(str::trim).map(str::to_owned),
        min_requests: request.min_requests,
        limits: request.limits.clone(),
        control: Control::Run,
    };
    if let Err(spec_errors) = spec.validate() {
        for e in spec_errors {
            let field = field_of(&e.field);
            let message = match e.field.split_once('[') {
                Some((_, index)) => {
                    let i: usize = index.trim_end_matches(']').parse().unwrap_or(0);
                    format!("step {}: {}", i + 1, e.message)
                }
                None => e.message,
            };
            errors.fields.entry(field).or_insert(message);
        }
    }
    if request.min_requests == Some(0) {
        errors.fields.insert("minRequests".into(), "must be at least 1".into());
    }
    if !errors.is_empty() {
        return Err(StartError::Invalid(errors));
    }
    if let Some(running) = existing.iter().find(|r| r.is_active() && r.targets_model(&model.key)) {
        return Err(StartError::Conflict(format!(
            "guarded release {} is already {:?} for {}; let it finish or abort it first",
            running.key.name,
            running.phase(),
            model.model_name
        )));
    }
    if existing
        .iter()
        .any(|r| r.key.namespace == model.key.namespace && r.key.name == name)
    {
        return Err(StartError::Conflict(format!(
            "a guarded release named {name} exists already; choose another name"
        )));
    }
    let add_canary = (!model.targets.iter().any(|t| t.name == canary)).then(|| {
        // An unweighted model splits equally: weight 1 each keeps that split while the canary gets nothing.
        let unweighted = model.targets.iter().all(|t| t.weight.is_none());
        let mut targets: Vec<Target> = model
            .targets
            .iter()
            .map(|t| Target {
                name: t.name.clone(),
                weight: if unweighted { Some(1) } else { t.weight },
            })
            .collect();
        targets.push(Target {
            name: canary.clone(),
            weight: Some(0),
        });
        targets
    });
    let mut release = CanaryRelease::new(&name, spec);
    release.metadata.namespace = Some(model.key.namespace.clone());
    Ok(Start { release, add_canary })
}

/// The history kind of a controller event.
fn event_kind(phase: Phase) -> ReleaseKind {
    match phase {
        Phase::Promoted => ReleaseKind::Promoted,
        Phase::RolledBack => ReleaseKind::RolledBack,
        Phase::Aborted => ReleaseKind::Aborted,
        Phase::Invalid => ReleaseKind::Invalid,
        Phase::Pending | Phase::Progressing | Phase::Paused => ReleaseKind::Step,
    }
}

/// The release-history rows of a release's status history, each with a key that makes copying them idempotent.
pub fn history_rows(release: &Guarded, model: &ModelState) -> Vec<NewRelease> {
    let events: &[ReleaseEvent] = release.status.as_ref().map(|s| s.history.as_slice()).unwrap_or(&[]);
    events
        .iter()
        .map(|e| {
            let at_ms = time_ms(&e.time);
            let target_json = |percent| serde_json::to_string(&release.targets_at(percent)).unwrap_or_default();
            NewRelease {
                namespace: model.key.namespace.clone(),
                name: model.key.name.clone(),
                model_name: model.model_name.clone(),
                at_ms,
                actor: e.actor.clone(),
                kind: event_kind(e.phase),
                reason: e.reason.clone(),
                before: target_json(e.from_percent),
                after: target_json(e.to_percent),
                guarded_release: Some(release.key.name.clone()),
                event_key: Some(format!(
                    "{}/{}@{at_ms}:{}>{}:{:?}:{}:{}",
                    release.key.namespace, release.key.name, e.from_percent, e.to_percent, e.phase, e.actor, e.reason
                )),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn model(targets: &[(&str, Option<u32>)]) -> ModelState {
        ModelState {
            key: NamespacedName {
                namespace: "default".into(),
                name: "qwq-model".into(),
            },
            model_name: "qwq".into(),
            criticality: "Critical".into(),
            pool: "pool".into(),
            targets: targets
                .iter()
                .map(|(n, w)| Target {
                    name: (*n).into(),
                    weight: *w,
                })
                .collect(),
            source: "test".into(),
        }
    }

    fn request(canary: &str) -> StartRequest {
        StartRequest {
            canary: canary.into(),
            reason: "ship v2".into(),
            ..StartRequest::default()
        }
    }

    fn guarded(name: &str, phase: Option<Phase>, control: Control) -> Guarded {
        let start = validate_start(
            &model(&[("a", Some(100)), ("b", Some(0))]),
            &[],
            &StartRequest {
                name: Some(name.into()),
                ..request("b")
            },
            0,
        )
        .unwrap();
        let mut g = Guarded::from_object(&start.release, "test".into());
        g.spec.control = control;
        g.status = phase.map(|phase| CanaryReleaseStatus {
            phase,
            ..CanaryReleaseStatus::default()
        });
        g
    }

    #[test]
    fn a_start_defaults_the_stable_the_name_and_the_steps() {
        let m = model(&[("qwq-32b", Some(100)), ("qwq-32b-v2", Some(0))]);
        let start = validate_start(&m, &[], &request("qwq-32b-v2"), 1_796_900_000_000).unwrap();
        let spec = &start.release.spec;
        assert_eq!((spec.stable.as_str(), spec.canary.as_str()), ("qwq-32b", "qwq-32b-v2"));
        assert_eq!(spec.model_ref, "qwq-model");
        assert_eq!(spec.steps(), [1, 5, 25, 50, 100]);
        assert_eq!(start.release.metadata.namespace.as_deref(), Some("default"));
        let name = start.release.metadata.name.unwrap();
        assert!(name.starts_with("qwq-32b-v2-2026") && valid_name(&name), "{name}");
        assert_eq!(start.add_canary, None);
    }

    #[test]
    fn a_new_canary_is_added_at_weight_zero_keeping_an_equal_split() {
        let m = model(&[("a", None), ("b", None)]);
        let start = validate_start(&m, &[], &request("c"), 0).unwrap();
        let weights: Vec<_> = start.add_canary.unwrap().iter().map(|t| t.weight).collect();
        assert_eq!(weights, [Some(1), Some(1), Some(0)]);
    }

    #[test]
    fn every_bad_field_is_reported_by_its_api_name() {
        let m = model(&[("a", Some(100)), ("b", Some(0))]);
        let bad = StartRequest {
            name: Some("Bad_Name".into()),
            canary: "b".into(),
            stable: Some("zzz".into()),
            steps: Some(vec![5, 1, 90]),
            hold: Some("soon".into()),
            min_requests: Some(0),
            limits: CanaryLimits {
                max_ttft_p90_ratio: Some(0.5),
                ..CanaryLimits::default()
            },
            reason: " ".into(),
            actor: None,
        };
        let Err(StartError::Invalid(errors)) = validate_start(&m, &[], &bad, 0) else {
            panic!("expected field errors");
        };
        for field in [
            "name",
            "stable",
            "steps",
            "hold",
            "minRequests",
            "limits.maxTtftP90Ratio",
            "reason",
        ] {
            assert!(errors.field(field).is_some(), "{field} missing: {errors:?}");
        }
        assert!(errors.field("steps").unwrap().starts_with("step 2:"), "{errors:?}");
        let same = StartRequest {
            stable: Some("a".into()),
            ..request("a")
        };
        let same = validate_start(&m, &[], &same, 0).unwrap_err();
        let StartError::Invalid(errors) = same else { panic!() };
        assert!(errors.field("canary").is_some(), "{errors:?}");
    }

    #[test]
    fn one_running_release_per_model_and_names_are_unique() {
        let m = model(&[("a", Some(100)), ("b", Some(0))]);
        let running = guarded("first", Some(Phase::Progressing), Control::Run);
        assert!(matches!(
            validate_start(&m, std::slice::from_ref(&running), &request("b"), 0),
            Err(StartError::Conflict(message)) if message.contains("first")
        ));
        let done = guarded("first", Some(Phase::Promoted), Control::Run);
        let again = StartRequest {
            name: Some("first".into()),
            ..request("b")
        };
        assert!(matches!(
            validate_start(&m, std::slice::from_ref(&done), &again, 0),
            Err(StartError::Conflict(message)) if message.contains("exists already")
        ));
        assert!(validate_start(&m, &[done], &request("b"), 0).is_ok());
    }

    #[test]
    fn actions_follow_the_release_state() {
        let run = guarded("r", None, Control::Run);
        assert_eq!(decide(&run, Action::Pause), Ok(Some(Control::Pause)));
        assert_eq!(decide(&run, Action::Resume), Ok(None));
        let paused = guarded("r", Some(Phase::Paused), Control::Pause);
        assert_eq!(decide(&paused, Action::Resume), Ok(Some(Control::Run)));
        assert_eq!(decide(&paused, Action::Promote), Ok(Some(Control::Promote)));
        let promoting = guarded("r", Some(Phase::Progressing), Control::Promote);
        assert!(decide(&promoting, Action::Pause).is_err());
        assert_eq!(decide(&promoting, Action::Abort), Ok(Some(Control::Abort)));
        let aborting = guarded("r", Some(Phase::Progressing), Control::Abort);
        assert!(decide(&aborting, Action::Resume).is_err());
        for phase in [Phase::Promoted, Phase::RolledBack, Phase::Aborted, Phase::Invalid] {
            let done = guarded("r", Some(phase), Control::Run);
            assert!(decide(&done, Action::Abort).unwrap_err().contains("finished"));
        }
        assert_eq!(Action::parse("resume"), Some(Action::Resume));
        assert_eq!(Action::parse("delete"), None);
    }

    #[test]
    fn controller_events_become_keyed_history_rows() {
        let mut g = guarded("r", Some(Phase::Progressing), Control::Run);
        let event = |percent_from, percent_to, phase, reason: &str| ReleaseEvent {
            time: Time(k8s_openapi::jiff::Timestamp::from_second(1_800_000_000).unwrap()),
            from_percent: percent_from,
            to_percent: percent_to,
            phase,
            actor: "controller".into(),
            reason: reason.into(),
        };
        g.status.as_mut().unwrap().history = vec![
            event(0, 1, Phase::Progressing, "first step"),
            event(5, 0, Phase::RolledBack, "canary TTFT P90 too high"),
        ];
        let rows = history_rows(&g, &model(&[("a", Some(100)), ("b", Some(0))]));
        assert_eq!(rows.len(), 2);
        assert_eq!(rows[0].kind, ReleaseKind::Step);
        assert_eq!(rows[0].after, r#"[{"name":"a","weight":99},{"name":"b","weight":1}]"#);
        assert_eq!(rows[1].kind, ReleaseKind::RolledBack);
        assert_eq!(rows[0].at_ms, 1_800_000_000_000);
        assert_ne!(rows[0].event_key, rows[1].event_key);
        assert_eq!(rows[1].guarded_release.as_deref(), Some("r"));
    }
}
