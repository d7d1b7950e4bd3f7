//! `/releases` (every InferenceModel with its targets and weights) and `/releases/{namespace}/{name}` (the weight form,
//! apply, the history with actor, time, before/after and reason, and one-click rollback), plus the JSON API
//! `/api/v1/releases[/{namespace}/{name}]` whose POST takes the login token as a bearer or a session with a CSRF header.
//! While a guarded release runs for a model (see `guarded`), its weights belong to the controller: the weight form
//! is disabled and every manual change is refused with 409.

use api::NamespacedName;
use askama::Template;
use askama_web::WebTemplate;
use axum::{
    Form, Json, Router,
    extract::{Path, Query, State},
    http::{HeaderMap, StatusCode},
    response::{IntoResponse, Redirect, Response},
    routing::{get, post},
};
use serde::{Deserialize, Serialize};

use super::{
    HISTORY, field,
    guarded::{self, GuardedCard, StartForm},
};
use crate::routes::{Nav, auth::writer, encode, session};
use crate::{
    AppState,
    db::{NewRelease, ReleaseKind, ReleaseRow},
    error::{ApiError, AppError},
    releases::{self, FormErrors, ModelState, Target, WeightForm, shares},
    time::format_ms,
};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/releases", get(list))
        .route("/releases/{namespace}/{name}", get(detail).post(apply_form))
        .route("/releases/{namespace}/{name}/rollback/{id}", post(rollback_form))
        .route("/api/v1/releases", get(api_list))
        .route("/api/v1/releases/{namespace}/{name}", get(api_detail).post(api_apply))
}

pub(crate) struct TargetView {
    pub(crate) name: String,
    pub(crate) weight: String,
    pub(crate) share: String,
    pub(crate) width: u32,
}

pub(super) fn target_views(targets: &[Target]) -> Vec<TargetView> {
    targets
        .iter()
        .zip(shares(targets))
        .map(|(t, share)| TargetView {
            name: t.name.clone(),
            weight: t.weight.map(|w| w.to_string()).unwrap_or_else(|| "–".into()),
            share: format!("{share:.1}"),
            width: share.round() as u32,
        })
        .collect()
}

struct ModelItem {
    link: String,
    key: String,
    model_name: String,
    criticality: String,
    pool: String,
    targets: Vec<TargetView>,
    last_change: String,
    /// `Progressing 5 %` while a guarded release runs.
    in_release: Option<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "releases.html")]
struct ListPage {
    nav: Nav,
    source: String,
    models: Vec<ModelItem>,
}

pub(super) fn model_link(key: &NamespacedName) -> String {
    format!("/releases/{}/{}", encode(&key.namespace), encode(&key.name))
}

async fn list(State(state): State<AppState>, headers: HeaderMap) -> Result<ListPage, AppError> {
    let models = releases::list(state.releases.as_ref()).await?;
    let latest = state.db.latest_releases().await?;
    let running: Vec<_> = releases::guarded::list(state.releases.as_ref())
        .await?
        .into_iter()
        .filter(|r| r.is_active())
        .collect();
    let session = session(&state, &headers);
    Ok(ListPage {
        nav: Nav::new("releases", session.as_ref()),
        source: state.releases.describe(),
        models: models
            .iter()
            .map(|m| ModelItem {
                link: model_link(&m.key),
                key: m.key.to_string(),
                model_name: m.model_name.clone(),
                criticality: m.criticality.clone(),
                pool: m.pool.clone(),
                targets: target_views(&m.targets),
                last_change: latest
                    .iter()
                    .find(|r| r.namespace == m.key.namespace && r.name == m.key.name)
                    .map(|r| format!("{} by {}", format_ms(r.at_ms), r.actor))
                    .unwrap_or_else(|| "never through the dashboard".into()),
                in_release: running
                    .iter()
                    .find(|r| r.targets_model(&m.key))
                    .map(|r| format!("{:?} {} %", r.phase(), r.percent())),
            })
            .collect(),
    })
}

pub(crate) struct HistoryItem {
    pub(crate) id: i64,
    pub(crate) time: String,
    pub(crate) actor: String,
    pub(crate) kind: String,
    pub(crate) kind_class: &'static str,
    pub(crate) guarded_release: String,
    pub(crate) reason: String,
    pub(crate) before: String,
    pub(crate) after: String,
    pub(crate) rollback_action: String,
    pub(crate) can_roll_back: bool,
}

/// `qwq-32b 90 · qwq-32b-canary 10`.
fn describe_targets(json: &str) -> String {
    match serde_json::from_str::<Vec<Target>>(json) {
        Ok(targets) => targets
            .iter()
            .map(|t| match t.weight {
                Some(w) => format!("{} {w}", t.name),
                None => t.name.clone(),
            })
            .collect::<Vec<_>>()
            .join(" · "),
        Err(_) => "?".into(),
    }
}

fn kind_class(kind: &str) -> &'static str {
    match kind {
        "promoted" => "ok",
        "rollback" | "rolled_back" | "abort" | "aborted" | "pause" => "warn",
        "invalid" => "bad",
        "start" | "step" | "promote" | "resume" => "info",
        _ => "",
    }
}

/// The history table. Only rows whose `before` is the model's whole target list can be rolled back to (a
/// controller step names only stable and canary), and nothing can while a guarded release holds the weights.
pub(super) fn history_items(
    key: &NamespacedName,
    current: &[Target],
    rows: &[ReleaseRow],
    locked: bool,
) -> Vec<HistoryItem> {
    let current = serde_json::to_string(current).unwrap_or_default();
    rows.iter()
        .map(|r| HistoryItem {
            id: r.id,
            time: format_ms(r.at_ms),
            actor: r.actor.clone(),
            kind: r.kind.replace('_', " "),
            kind_class: kind_class(&r.kind),
            guarded_release: r.guarded_release.clone().unwrap_or_default(),
            reason: r.reason.clone(),
            before: describe_targets(&r.before),
            after: describe_targets(&r.after),
            rollback_action: format!("{}/rollback/{}", model_link(key), r.id),
            can_roll_back: !locked && r.before != current && matches!(r.kind.as_str(), "apply" | "rollback" | "start"),
        })
        .collect()
}

struct FormRow {
    index: usize,
    name: String,
    weight: String,
    error: Option<String>,
}

#[derive(Template, WebTemplate)]
#[template(path = "release.html")]
pub(super) struct DetailPage {
    nav: Nav,
    model: ModelState,
    action: String,
    targets: Vec<TargetView>,
    rows: Vec<FormRow>,
    new_name: String,
    new_weight: String,
    reason: String,
    expected: String,
    errors: FormErrors,
    history: Vec<HistoryItem>,
    flash: Option<String>,
    guarded: GuardedCard,
    /// Whether a guarded release holds the weights (the weight form is disabled).
    locked: bool,
    /// The history and split are rendered in place, not as htmx out-of-band swaps.
    oob: bool,
}

impl DetailPage {
    fn error(&self, field: &str) -> Option<String> {
        self.errors.field(field).map(str::to_owned)
    }

    /// The page with the guarded-release start form as it was submitted, and its errors.
    pub(super) fn with_start_form(mut self, form: StartForm, errors: FormErrors) -> DetailPage {
        self.guarded.start.form = form;
        self.guarded.start.errors = errors;
        self
    }
}

pub(super) async fn detail_page(
    state: &AppState,
    headers: &HeaderMap,
    key: NamespacedName,
    form: Option<WeightForm>,
    errors: FormErrors,
) -> Result<DetailPage, AppError> {
    let (model, guarded_releases) = guarded::load(state, &key).await?;
    let history = state.db.releases(&key.namespace, &key.name, HISTORY).await?;
    let locked = guarded::active(&guarded_releases).is_some();
    let form = form.unwrap_or_else(|| WeightForm::from_targets(&model.targets));
    let session = session(state, headers);
    Ok(DetailPage {
        nav: Nav::new("releases", session.as_ref()),
        action: model_link(&key),
        targets: target_views(&model.targets),
        rows: form
            .rows
            .iter()
            .enumerate()
            .map(|(index, (name, weight))| FormRow {
                index,
                name: name.clone(),
                weight: weight.clone(),
                error: errors.field(&format!("weight_{index}")).map(str::to_owned),
            })
            .collect(),
        new_name: form.new_name,
        new_weight: form.new_weight,
        reason: form.reason,
        expected: serde_json::to_string(&model.targets).unwrap_or_default(),
        history: history_items(&key, &model.targets, &history, locked),
        flash: None,
        guarded: guarded::build_card(&key, &model, &guarded_releases, None, FormErrors::default()),
        locked,
        oob: false,
        errors,
        model,
    })
}

#[derive(Deserialize, Default)]
#[serde(default)]
struct DetailQuery {
    applied: Option<String>,
    started: Option<String>,
}

async fn detail(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
    Query(q): Query<DetailQuery>,
) -> Result<DetailPage, AppError> {
    let mut page = detail_page(
        &state,
        &headers,
        NamespacedName { namespace, name },
        None,
        FormErrors::default(),
    )
    .await?;
    if q.applied.is_some() {
        page.flash = Some("Applied. The gateway routes by the new weights within a second.".into());
    }
    if q.started.is_some() {
        page.flash = Some("Guarded release started. The controller applies its first step and reports here.".into());
    }
    Ok(page)
}

/// Applies `targets` through the store and records the release; returns the stored state and the history id.
async fn apply(
    state: &AppState,
    key: &NamespacedName,
    targets: &[Target],
    actor: &str,
    reason: &str,
    kind: ReleaseKind,
) -> Result<(ModelState, i64), AppError> {
    guarded::ensure_unlocked(state, key).await?;
    let before = releases::get(state.releases.as_ref(), key).await?;
    let after = releases::apply(state.releases.as_ref(), key, targets).await?;
    let id = state
        .db
        .insert_release(&NewRelease {
            before: serde_json::to_string(&before.targets).unwrap_or_default(),
            ..after.history_row(actor, kind, reason.trim().to_owned())
        })
        .await?
        .unwrap_or_default();
    tracing::info!(model = %key, actor, kind = kind.as_str(), release = id, "release applied");
    Ok((after, id))
}

async fn apply_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, AppError> {
    let session = writer(&state, &headers, field(&fields, "csrf"))?;
    let key = NamespacedName { namespace, name };
    let form = WeightForm::from_fields(&fields);
    let current = releases::get(state.releases.as_ref(), &key).await?;
    if serde_json::to_string(&current.targets).unwrap_or_default() != field(&fields, "expected") {
        let mut errors = FormErrors::default();
        errors.form.push(
            "Someone changed this model since you opened the page; the form now shows the current weights.".into(),
        );
        let page = detail_page(&state, &headers, key, None, errors).await?;
        return Ok((StatusCode::CONFLICT, page).into_response());
    }
    let targets = match form.validate() {
        Ok(targets) => targets,
        Err(errors) => {
            let page = detail_page(&state, &headers, key, Some(form), errors).await?;
            return Ok((StatusCode::UNPROCESSABLE_ENTITY, page).into_response());
        }
    };
    apply(&state, &key, &targets, &session.actor, &form.reason, ReleaseKind::Apply).await?;
    Ok(Redirect::to(&format!("{}?applied=1", model_link(&key))).into_response())
}

async fn rollback_form(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((namespace, name, id)): Path<(String, String, i64)>,
    Form(fields): Form<Vec<(String, String)>>,
) -> Result<Response, AppError> {
    let session = writer(&state, &headers, field(&fields, "csrf"))?;
    let key = NamespacedName { namespace, name };
    let release = state
        .db
        .release(id)
        .await?
        .filter(|r| r.namespace == key.namespace && r.name == key.name)
        .ok_or_else(|| AppError::NotFound(format!("release {id} of {key}")))?;
    let targets: Vec<Target> = serde_json::from_str(&release.before).map_err(crate::db::DbError::from)?;
    let reason = format!("roll back release #{id} ({})", release.reason);
    apply(&state, &key, &targets, &session.actor, &reason, ReleaseKind::Rollback).await?;
    Ok(Redirect::to(&model_link(&key)).into_response())
}

#[derive(Serialize)]
struct ApiModel {
    #[serde(flatten)]
    model: ModelState,
    shares: Vec<f64>,
}

async fn api_list(State(state): State<AppState>) -> Result<Json<Vec<ApiModel>>, ApiError> {
    let models = releases::list(state.releases.as_ref()).await?;
    Ok(Json(
        models
            .into_iter()
            .map(|m| ApiModel {
                shares: m.shares(),
                model: m,
            })
            .collect(),
    ))
}

#[derive(Serialize)]
struct ApiDetail {
    model: ApiModel,
    history: Vec<ReleaseRow>,
}

async fn api_detail(
    State(state): State<AppState>,
    Path((namespace, name)): Path<(String, String)>,
) -> Result<Json<ApiDetail>, ApiError> {
    let key = NamespacedName { namespace, name };
    let model = releases::get(state.releases.as_ref(), &key).await?;
    let history = state.db.releases(&key.namespace, &key.name, HISTORY).await?;
    Ok(Json(ApiDetail {
        model: ApiModel {
            shares: model.shares(),
            model,
        },
        history,
    }))
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct ApplyBody {
    targets: Vec<Target>,
    reason: String,
    /// Who applies; recorded in the history (bearer callers only: a session's actor is its login name).
    #[serde(default)]
    actor: Option<String>,
}

/// The JSON apply: `Authorization: Bearer <login token>`, or a session cookie with its token in `X-CSRF-Token`.
async fn api_apply(
    State(state): State<AppState>,
    headers: HeaderMap,
    Path((namespace, name)): Path<(String, String)>,
    body: Result<Json<ApplyBody>, axum::extract::rejection::JsonRejection>,
) -> Result<Response, ApiError> {
    let actor = guarded::api_writer(&state, &headers)?;
    let Json(body) = body.map_err(|e| AppError::Unprocessable(e.body_text()))?;
    let actor = actor.or(body.actor).unwrap_or_else(|| "api".into());
    let form = WeightForm {
        rows: body
            .targets
            .iter()
            .map(|t| (t.name.clone(), t.weight.map(|w| w.to_string()).unwrap_or_default()))
            .collect(),
        reason: body.reason.clone(),
        ..WeightForm::default()
    };
    let targets = form.validate().map_err(|errors| {
        let mut messages: Vec<String> = errors.fields.iter().map(|(k, v)| format!("{k}: {v}")).collect();
        messages.extend(errors.form);
        AppError::Unprocessable(messages.join("; "))
    })?;
    let key = NamespacedName { namespace, name };
    let (after, id) = apply(&state, &key, &targets, &actor, &body.reason, ReleaseKind::Apply).await?;
    Ok(Json(serde_json::json!({ "release": id, "model": after })).into_response())
}
