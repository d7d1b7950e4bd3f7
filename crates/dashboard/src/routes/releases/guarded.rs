//! Guarded releases of one model: the "Guarded release" card of `/releases/{namespace}/{name}` (start form, live
//! state, Pause/Resume/Promote/Abort over htmx) and the JSON API under `/api/v1/releases/{namespace}/{name}/guarded`.
//!
//! Every operator action is recorded in the release history with its actor and reason; the controller's steps are
//! copied from each release's `status.history` whenever the dashboard reads the releases, so the history shows both.

use askama::Template;
use askama_web::WebTemplate;
use axum::{
    Form, Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, HeaderValue, StatusCode},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::{
    HISTORY, field,
    manual::{self, HistoryItem, TargetView, history_items, model_link, target_views},
};
use crate::routes::{Nav, auth::writer, encode, session};
use crate::{
    AppState, auth,
    db::{NewRelease, ReleaseKind, ReleaseRow},
    error::{ApiError, AppError},
    releases::{
        self, FormErrors, ModelState,
        guarded::{
            Action, Guarded, Start, StartError, StartRequest, decide, default_limits, default_stable, history_rows,
            validate_start,
        },
    },
    time::{format_ms, now_ms},
};
use api::{
    NamespacedName,
    canary::{CanaryLimits, Control, Phase, TargetObservation},
};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/releases/{namespace}/{name}/guarded", get(card_route).post(start_form))
        .route(
            "/releases/{namespace}/{name}/guarded/{release}/{action}",
            post(action_form),
        )
        .route(
            "/api/v1/releases/{namespace}/{name}/guarded",
            get(api_list).post(api_start),
        )
        .route(
            "/api/v1/releases/{namespace}/{name}/guarded/{release}/{action}",
            post(api_action),
        )
}

/// The model and its guarded releases (oldest first), with the controller's events copied into the history.
pub(super) async fn load(state: &AppState, key: &NamespacedName) -> Result<(ModelState, Vec<Guarded>), AppError> {
    let model = releases::get(state.releases.as_ref(), key).await?;
    let guarded: Vec<Guarded> = releases::guarded::list(state.releases.as_ref())
        .await?
        .into_iter()
        .filter(|r| r.targets_model(key))
        .collect();
    let events: Vec<NewRelease> = guarded.iter().flat_map(|r| history_rows(r, &model)).collect();
    if !events.is_empty() {
        state.db.insert_releases(&events).await?;
    }
    Ok((model, guarded))
}

/// The running release of a model, if any: it owns the model's weights until it ends.
pub(super) fn active(releases: &[Guarded]) -> Option<&Guarded> {
    releases.iter().find(|r| r.is_active())
}

/// Refuses a manual weight change while a guarded release runs (409).
pub(super) async fn ensure_unlocked(state: &AppState, key: &NamespacedName) -> Result<(), AppError> {
    let releases = releases::guarded::list(state.releases.as_ref()).await?;
    match releases.iter().find(|r| r.is_active() && r.targets_model(key)) {
        Some(r) => Err(AppError::Conflict(format!(
            "guarded release {} controls the weights of {key}; pause, promote or abort it first",
            r.key.name
        ))),
        None => Ok(()),
    }
}

fn phase_class(phase: Phase) -> &'static str {
    match phase {
        Phase::Promoted => "ok",
        Phase::Progressing => "info",
        Phase::Pending | Phase::Paused => "warn",
        Phase::RolledBack | Phase::Aborted | Phase::Invalid => "bad",
    }
}

pub(crate) struct StepView {
    pub(crate) percent: u32,
    pub(crate) reached: bool,
    pub(crate) current: bool,
}

pub(crate) struct ObservationRow {
    pub(crate) label: &'static str,
    pub(crate) stable: String,
    pub(crate) canary: String,
    pub(crate) limit: String,
    pub(crate) breached: bool,
}

pub(crate) struct ActiveView {
    pub(crate) name: String,
    pub(crate) phase: String,
    pub(crate) phase_class: &'static str,
    /// What the operator asked for, when it is not plain Run ("pause requested").
    pub(crate) control_note: Option<String>,
    pub(crate) percent: u32,
    pub(crate) steps: Vec<StepView>,
    pub(crate) stable: String,
    pub(crate) canary: String,
    pub(crate) hold: String,
    pub(crate) step_started: String,
    pub(crate) message: String,
    pub(crate) observations: Vec<ObservationRow>,
    pub(crate) measured: bool,
    pub(crate) action: String,
    pub(crate) can_pause: bool,
    pub(crate) can_resume: bool,
    pub(crate) can_promote: bool,
    pub(crate) can_abort: bool,
}

pub(crate) struct PastView {
    pub(crate) name: String,
    pub(crate) phase: String,
    pub(crate) phase_class: &'static str,
    pub(crate) canary: String,
    pub(crate) percent: u32,
    pub(crate) message: String,
}

/// The start form as typed (strings, so a bad value comes back as it was entered).
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct StartForm {
    pub(crate) name: String,
    pub(crate) stable: String,
    pub(crate) canary: String,
    pub(crate) canary_new: String,
    pub(crate) steps: String,
    pub(crate) hold: String,
    pub(crate) min_requests: String,
    pub(crate) ttft_ratio: String,
    pub(crate) error_increase: String,
    pub(crate) shed_increase: String,
    pub(crate) reason: String,
}

impl StartForm {
    /// The defaults for a model: stable = the heaviest target, canary = the next one.
    fn defaults(model: &ModelState) -> StartForm {
        let stable = default_stable(model, "").unwrap_or_default();
        let canary = model
            .targets
            .iter()
            .find(|t| t.name != stable)
            .map(|t| t.name.clone())
            .unwrap_or_default();
        let (ttft, errors, shed) = default_limits();
        StartForm {
            name: String::new(),
            stable,
            canary,
            canary_new: String::new(),
            steps: api::canary::DEFAULT_STEPS.map(|s| s.to_string()).join(", "),
            hold: "60s".into(),
            min_requests: "20".into(),
            ttft_ratio: ttft.to_string(),
            error_increase: errors.to_string(),
            shed_increase: shed.to_string(),
            reason: String::new(),
        }
    }

    fn from_fields(fields: &[(String, String)]) -> StartForm {
        let get = |name: &str| {
            fields
                .iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .unwrap_or_default()
        };
        StartForm {
            name: get("name"),
            stable: get("stable"),
            canary: get("canary"),
            canary_new: get("canary_new"),
            steps: get("steps"),
            hold: get("hold"),
            min_requests: get("minRequests"),
            ttft_ratio: get("maxTtftP90Ratio"),
            error_increase: get("maxErrorRateIncrease"),
            shed_increase: get("maxShedRateIncrease"),
            reason: get("reason"),
        }
    }

    /// The request this form stands for, and the fields that did not even parse.
    fn request(&self) -> (StartRequest, FormErrors) {
        let mut errors = FormErrors::default();
        let text = |s: &str| Some(s.trim().to_owned()).filter(|s| !s.is_empty());
        let mut number = |field: &str, value: &str, what: &str| -> Option<f64> {
            let value = text(value)?;
            match value.parse::<f64>() {
                Ok(v) => Some(v),
                Err(_) => {
                    errors.fields.insert(field.into(), format!("must be {what}"));
                    None
                }
            }
        };
        let limits = CanaryLimits {
            max_ttft_p90_ratio: number("limits.maxTtftP90Ratio", &self.ttft_ratio, "a number like 1.5"),
            max_error_rate_increase: number(
                "limits.maxErrorRateIncrease",
                &self.error_increase,
                "a fraction like 0.02",
            ),
            max_shed_rate_increase: number(
                "limits.maxShedRateIncrease",
                &self.shed_increase,
                "a fraction like 0.05",
            ),
        };
        let steps = text(&self.steps).and_then(|steps| {
            let parsed: Result<Vec<u32>, _> = steps
                .split([',', ' '])
                .filter(|s| !s.is_empty())
                .map(str::parse::<u32>)
                .collect();
            match parsed {
                Ok(steps) => Some(steps),
                Err(_) => {
                    errors.fields.insert(
                        "steps".into(),
                        "whole percents separated by commas, e.g. 1, 5, 25, 50, 100".into(),
                    );
                    None
                }
            }
        });
        let min_requests = text(&self.min_requests).and_then(|m| match m.parse::<u32>() {
            Ok(m) => Some(m),
            Err(_) => {
                errors
                    .fields
                    .insert("minRequests".into(), "must be a whole number".into());
                None
            }
        });
        let request = StartRequest {
            name: text(&self.name),
            canary: text(&self.canary_new).unwrap_or_else(|| self.canary.trim().to_owned()),
            stable: text(&self.stable),
            steps,
            hold: text(&self.hold),
            min_requests,
            limits,
            reason: self.reason.clone(),
            actor: None,
        };
        (request, errors)
    }
}

pub(crate) struct StartView {
    pub(crate) targets: Vec<String>,
    pub(crate) form: StartForm,
    pub(crate) errors: FormErrors,
}

impl StartView {
    pub(crate) fn error(&self, field: &str) -> Option<String> {
        let field = match field {
            "canary_new" => "canary",
            other => other,
        };
        self.errors.field(field).map(str::to_owned)
    }
}

/// Everything the card shows.
pub(crate) struct GuardedCard {
    /// `/releases/{namespace}/{name}/guarded`: the card's own URL (start form, live refresh).
    pub(crate) base: String,
    pub(crate) active: Option<ActiveView>,
    pub(crate) start: StartView,
    pub(crate) past: Vec<PastView>,
    /// A refusal to show inside the card (an htmx action that conflicted with the state).
    pub(crate) flash: Option<String>,
}

fn fmt_rate(v: f64) -> String {
    format!("{:.1} %", v * 100.0)
}

fn observations(release: &Guarded) -> (bool, Vec<ObservationRow>) {
    let status = release.status.as_ref();
    let (stable, canary) = (
        status.and_then(|s| s.stable.clone()),
        status.and_then(|s| s.canary.clone()),
    );
    let measured = stable.is_some() || canary.is_some();
    let (stable, canary) = (stable.unwrap_or_default(), canary.unwrap_or_default());
    let limits = &release.spec.limits;
    let ttft = |o: &TargetObservation| {
        o.ttft_p90_ms
            .map(|v| format!("{v:.0} ms"))
            .unwrap_or_else(|| "–".into())
    };
    let ttft_breached = matches!(
        (stable.ttft_p90_ms, canary.ttft_p90_ms),
        (Some(s), Some(c)) if s > 0.0 && c / s > limits.ttft_p90_ratio()
    );
    let rows = vec![
        ObservationRow {
            label: "Requests",
            stable: stable.requests.to_string(),
            canary: canary.requests.to_string(),
            limit: format!("canary ≥ {} to judge a step", release.spec.min_requests()),
            breached: false,
        },
        ObservationRow {
            label: "TTFT P90",
            stable: ttft(&stable),
            canary: ttft(&canary),
            limit: format!("≤ {}× stable", limits.ttft_p90_ratio()),
            breached: ttft_breached,
        },
        ObservationRow {
            label: "Error rate",
            stable: fmt_rate(stable.error_rate),
            canary: fmt_rate(canary.error_rate),
            limit: format!("≤ stable + {}", fmt_rate(limits.error_rate_increase())),
            breached: canary.error_rate > stable.error_rate + limits.error_rate_increase(),
        },
        ObservationRow {
            label: "Shed rate",
            stable: fmt_rate(stable.shed_rate),
            canary: fmt_rate(canary.shed_rate),
            limit: format!("≤ stable + {}", fmt_rate(limits.shed_rate_increase())),
            breached: canary.shed_rate > stable.shed_rate + limits.shed_rate_increase(),
        },
    ];
    (measured, rows)
}

fn active_view(key: &NamespacedName, release: &Guarded) -> ActiveView {
    let percent = release.percent();
    let status = release.status.as_ref();
    let step_index = status.and_then(|s| s.step).map(|s| s as usize);
    let steps = release
        .spec
        .steps()
        .iter()
        .enumerate()
        .map(|(i, &p)| StepView {
            percent: p,
            reached: p <= percent && step_index.is_some(),
            current: step_index == Some(i),
        })
        .collect();
    let control_note = match release.spec.control {
        Control::Run => None,
        Control::Pause => Some("pause requested: the controller holds the current step".into()),
        Control::Promote => Some("promotion requested: the canary goes to 100 %".into()),
        Control::Abort => Some("abort requested: the canary goes back to 0 %".into()),
    };
    let allowed = |action| decide(release, action).is_ok_and(|c| c.is_some());
    let (measured, observations) = observations(release);
    ActiveView {
        name: release.key.name.clone(),
        phase: format!("{:?}", release.phase()),
        phase_class: phase_class(release.phase()),
        control_note,
        percent,
        steps,
        stable: release.spec.stable.clone(),
        canary: release.spec.canary.clone(),
        hold: release.spec.hold.clone().unwrap_or_else(|| "60s".into()),
        step_started: status
            .and_then(|s| s.step_started_at.as_ref())
            .map(|t| format_ms(t.0.as_millisecond()))
            .unwrap_or_else(|| "not yet".into()),
        message: status.map(|s| s.message.clone()).unwrap_or_default(),
        observations,
        measured,
        action: format!("{}/guarded/{}", model_link(key), encode(&release.key.name)),
        can_pause: allowed(Action::Pause),
        can_resume: allowed(Action::Resume),
        can_promote: allowed(Action::Promote),
        can_abort: allowed(Action::Abort),
    }
}

pub(super) fn build_card(
    key: &NamespacedName,
    model: &ModelState,
    releases: &[Guarded],
    form: Option<StartForm>,
    errors: FormErrors,
) -> GuardedCard {
    GuardedCard {
        base: format!("{}/guarded", model_link(key)),
        active: active(releases).map(|r| active_view(key, r)),
        start: StartView {
            targets: model.targets.iter().map(|t| t.name.clone()).collect(),
            form: form.unwrap_or_else(|| StartForm::defaults(model)),
            errors,
        },
        past: releases
            .iter()
            .rev()
            .filter(|r| !r.is_active())
            .map(|r| PastView {
                name: r.key.name.clone(),
                phase: format!("{:?}", r.phase()),
                phase_class: phase_class(r.phase()),
                canary: r.spec.canary.clone(),
                percent: r.percent(),
                message: r.status.as_ref().map(|s| s.message.clone()).unwrap_or_default(),
            })
            .collect(),
        flash: None,
    }
}

/// The card alone, with the current split and the history swapped out-of-band: what htmx polls and what an
/// action answers.
#[derive(Template, WebTemplate)]
#[template(path = "release_guarded_partial.html")]
struct Partial {
    nav: Nav,
    model: ModelState,
    guarded: GuardedCard,
    targets: Vec<TargetView>,
    history: Vec<HistoryItem>,
    oob: bool,
}

async fn partial(
    state: &AppState,
    headers: &HeaderMap,
    key: &NamespacedName,
    flash: Option<String>,
) -> Result<Partial, AppError> {
    let (model, releases) = load(state, key).await?;
    let rows = state.db.releases(&key.namespace, &key.name, HISTORY).await?;
    let locked = active(&releases).is_some();
    let mut guarded = build_card(key, &model, &releases, None, FormErrors::default());
    guarded.flash = flash;
    Ok(Partial {
        nav: Nav::new("releases", session(state, headers).as_ref()),
        targets: target_views(&model.targets),
        history: history_items(key, &model.targets, &rows, locked),
        oob: true,
        guarded,
        model,
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct CardQuery {
    /// Set by the polling of a running release's card.
    live: Option<String>,
}

/// `GET /releases/{namespace}/{name}/guarded`: the card for htmx. When the release a live card was showing has
/// ended, the page reloads as a whole so the weight form unlocks.
async fn card_route(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<CardQuery>,
) -> Result<Response, AppError> {
    let key = NamespacedName { namespace, name };
    let page = partial(&state, &headers, &key, None).await?;
    if q.live.is_some() && page.guarded.active.is_none() {
        return Ok(([("hx-refresh", HeaderValue::from_static("true"))], page).into_response());
    }
    Ok(page.into_response())
}

/// Validates and creates a release, recording it (and a canary added to the model) in the history.
async fn start(
    state: &AppState,
    key: &NamespacedName,
    request: &StartRequest,
    actor: &str,
) -> Result<Guarded, AppError> {
    let (model, _) = load(state, key).await?;
    let all = releases::guarded::list(state.releases.as_ref()).await?;
    let Start { release, add_canary } = validate_start(&model, &all, request, now_ms()).map_err(|e| match e {
        StartError::Invalid(errors) => AppError::InvalidFields(errors),
        StartError::Conflict(message) => AppError::Conflict(message),
    })?;
    let before = serde_json::to_string(&model.targets).unwrap_or_default();
    let mut after = before.clone();
    if let Some(targets) = &add_canary {
        let applied = releases::apply(state.releases.as_ref(), key, targets).await?;
        after = serde_json::to_string(&applied.targets).unwrap_or_default();
    }
    let created = releases::guarded::create(state.releases.as_ref(), &release).await?;
    let spec = &created.spec;
    state
        .db
        .insert_release(&NewRelease {
            before,
            after,
            guarded_release: Some(created.key.name.clone()),
            ..model.history_row(
                actor,
                ReleaseKind::Start,
                format!(
                    "{} (guarded release {}: {} → {}, steps {:?}, hold {})",
                    request.reason.trim(),
                    created.key.name,
                    spec.stable,
                    spec.canary,
                    spec.steps(),
                    spec.hold.as_deref().unwrap_or("60s")
                ),
            )
        })
        .await?;
    tracing::info!(model = %key, release = %created.key, actor, "guarded release started");
    Ok(created)
}

/// Applies an operator action; `Ok(None)` when it was already in force (nothing written or recorded).
async fn act(
    state: &AppState,
    key: &NamespacedName,
    release: &str,
    action: Action,
    actor: &str,
    reason: &str,
) -> Result<(Guarded, bool), AppError> {
    let (model, releases) = load(state, key).await?;
    let current = releases
        .into_iter()
        .find(|r| r.key.name == release)
        .ok_or_else(|| AppError::NotFound(format!("guarded release {release} of {key}")))?;
    let Some(control) = decide(&current, action).map_err(AppError::Conflict)? else {
        return Ok((current, false));
    };
    let release_key = NamespacedName {
        namespace: current.key.namespace.clone(),
        name: current.key.name.clone(),
    };
    let updated = releases::guarded::set_control(state.releases.as_ref(), &release_key, control).await?;
    let reason = match reason.trim() {
        "" => format!("{} requested from the dashboard", action.as_str()),
        reason => reason.to_owned(),
    };
    state
        .db
        .insert_release(&NewRelease {
            guarded_release: Some(release_key.name.clone()),
            ..model.history_row(actor, action.kind(), reason)
        })
        .await?;
    tracing::info!(model = %key, release = %release_key, actor, action = action.as_str(), "guarded release action");
    Ok((updated, true))
}

/// `POST /releases/{namespace}/{name}/guarded`: the start form. Success goes back to the page; invalid input
/// re-renders it with the errors beside their fields.
async fn start_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, AppError> {
    let session = writer(&state, &headers, field(&fields, "csrf"))?;
    let key = NamespacedName { namespace, name };
    let form = StartForm::from_fields(&fields);
    let (request, parse_errors) = form.request();
    let result = if parse_errors.is_empty() {
        start(&state, &key, &request, &session.actor).await.map(|_| ())
    } else {
        Err(AppError::InvalidFields(parse_errors.clone()))
    };
    let (status, mut errors) = match result {
        Ok(()) => return Ok(Redirect::to(&format!("{}?started=1", model_link(&key))).into_response()),
        Err(AppError::InvalidFields(errors)) => (StatusCode::UNPROCESSABLE_ENTITY, errors),
        Err(AppError::Conflict(message)) => (
            StatusCode::CONFLICT,
            FormErrors {
                form: vec![message],
                ..FormErrors::default()
            },
        ),
        Err(other) => return Err(other),
    };
    // Parse errors stop validation early; show the rules the typed values break too.
    if !parse_errors.is_empty()
        && let Ok((model, _)) = load(&state, &key).await
        && let Err(StartError::Invalid(more)) = validate_start(&model, &[], &request, now_ms())
    {
        for (k, v) in more.fields {
            errors.fields.entry(k).or_insert(v);
        }
    }
    let page = manual::detail_page(&state, &headers, key, None, FormErrors::default())
        .await?
        .with_start_form(form, errors);
    Ok((status, page).into_response())
}

/// `POST /releases/{namespace}/{name}/guarded/{release}/{action}`: a card button. htmx gets the card back (a
/// refusal shown inside it); a plain form post goes back to the page.
async fn action_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((namespace, name, release, action)): Path<(String, String, String, String)>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, AppError> {
    let session = writer(&state, &headers, field(&fields, "csrf"))?;
    let key = NamespacedName { namespace, name };
    let action = Action::parse(&action).ok_or_else(|| AppError::NotFound(format!("action {action:?}")))?;
    let htmx = headers.contains_key("hx-request");
    let result = act(&state, &key, &release, action, &session.actor, field(&fields, "reason")).await;
    match (result, htmx) {
        (Ok(_), true) => Ok(partial(&state, &headers, &key, None).await?.into_response()),
        (Err(AppError::Conflict(message)), true) => {
            Ok(partial(&state, &headers, &key, Some(message)).await?.into_response())
        }
        (Ok(_), false) => Ok(Redirect::to(&model_link(&key)).into_response()),
        (Err(e), _) => Err(e),
    }
}

/// A release as the API returns it: the object plus its phase and whether it still runs.
#[derive(Serialize)]
struct ApiRelease {
    #[serde(flatten)]
    release: Guarded,
    phase: Phase,
    canary_percent: u32,
    active: bool,
}

impl From<Guarded> for ApiRelease {
    fn from(release: Guarded) -> ApiRelease {
        ApiRelease {
            phase: release.phase(),
            canary_percent: release.percent(),
            active: release.is_active(),
            release,
        }
    }
}

#[derive(Serialize)]
struct ApiList {
    model: ModelState,
    /// The running release, if any.
    active: Option<ApiRelease>,
    /// Every release of the model, newest first (the active one included).
    releases: Vec<ApiRelease>,
    /// The model's release history, newest first: operator actions and the controller's steps.
    history: Vec<ReleaseRow>,
}

async fn api_list(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<ApiList>, ApiError> {
    let key = NamespacedName { namespace, name };
    let (model, releases) = load(&state, &key).await?;
    let history = state.db.releases(&key.namespace, &key.name, HISTORY).await?;
    Ok(Json(ApiList {
        model,
        active: active(&releases).cloned().map(ApiRelease::from),
        releases: releases.into_iter().rev().map(ApiRelease::from).collect(),
        history,
    }))
}

/// The caller of a JSON write: `Authorization: Bearer <login token>` (actor from the body, else "api"), or a
/// session cookie with its CSRF token in `X-CSRF-Token` (actor = the login name).
pub(super) fn api_writer(state: &AppState, headers: &HeaderMap) -> Result<Option<String>, AppError> {
    match auth::bearer(headers) {
        Some(token) if state.config.login_token.matches(token) => Ok(None),
        Some(_) => Err(AppError::Unauthorized),
        None => {
            let csrf = headers.get("x-csrf-token").and_then(|v| v.to_str().ok()).unwrap_or("");
            Ok(Some(writer(state, headers, csrf)?.actor))
        }
    }
}

async fn api_start(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
    body: Result<Json<StartRequest>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let actor = api_writer(&state, &headers)?;
    let Json(request) = body.map_err(|e| AppError::BadRequest(e.body_text()))?;
    let actor = actor.or_else(|| request.actor.clone()).unwrap_or_else(|| "api".into());
    let key = NamespacedName { namespace, name };
    let created = start(&state, &key, &request, &actor).await?;
    Ok((
        StatusCode::CREATED,
        Json(serde_json::json!({ "release": ApiRelease::from(created) })),
    )
        .into_response())
}

#[derive(Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
struct ActionBody {
    reason: String,
    actor: Option<String>,
}

async fn api_action(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((namespace, name, release, action)): Path<(String, String, String, String)>,
    body: Bytes,
) -> Result<Response, ApiError> {
    let actor = api_writer(&state, &headers)?;
    let action = Action::parse(&action)
        .ok_or_else(|| AppError::BadRequest(format!("unknown action {action:?} (pause, resume, promote or abort)")))?;
    let body: ActionBody = if body.iter().all(u8::is_ascii_whitespace) {
        ActionBody::default()
    } else {
        serde_json::from_slice(&body).map_err(|e| AppError::BadRequest(format!("invalid JSON body: {e}")))?
    };
    let actor = actor.or(body.actor).unwrap_or_else(|| "api".into());
    let key = NamespacedName { namespace, name };
    let (release, changed) = act(&state, &key, &release, action, &actor, &body.reason).await?;
    Ok(Json(serde_json::json!({ "release": ApiRelease::from(release), "changed": changed })).into_response())
}
