//! `/login` and `/logout`: a name (recorded as the actor of releases) and the login token start a session.

use askama::Template;
use askama_web::WebTemplate;
use axum::{
    Form, Router,
    extract::{Query, State},
    http::{HeaderMap, StatusCode, header},
    response::{IntoResponse, Redirect, Response},
    routing::get,
};
use serde::Deserialize;

use super::{Nav, session};
use crate::{AppState, auth, error::AppError};

pub(super) fn router() -> Router<AppState> {
    Router::new()
        .route("/login", get(login_page).post(login))
        .route("/logout", axum::routing::post(logout))
}

#[derive(Template, WebTemplate)]
#[template(path = "login.html")]
struct LoginPage {
    nav: Nav,
    next: String,
    actor: String,
    error: Option<String>,
}

#[derive(Deserialize, Default)]
struct NextQuery {
    #[serde(default)]
    next: String,
}

/// Only same-site paths are followed after login, so `?next=` cannot send people elsewhere.
fn safe_next(next: &str) -> String {
    if next.starts_with('/') && !next.starts_with("//") && !next.contains('\\') {
        next.to_owned()
    } else {
        "/".to_owned()
    }
}

async fn login_page(State(state): State<AppState>, headers: HeaderMap, Query(q): Query<NextQuery>) -> LoginPage {
    let session = session(&state, &headers);
    LoginPage {
        nav: Nav::new("login", session.as_ref()),
        next: safe_next(&q.next),
        actor: String::new(),
        error: None,
    }
}

#[derive(Deserialize)]
struct LoginForm {
    #[serde(default)]
    actor: String,
    #[serde(default)]
    token: String,
    #[serde(default)]
    next: String,
}

/// Longest accepted actor name.
const MAX_ACTOR: usize = 64;

async fn login(State(state): State<AppState>, Form(form): Form<LoginForm>) -> Response {
    let actor = form.actor.trim();
    let next = safe_next(&form.next);
    let fail = |status: StatusCode, error: &str| {
        let page = LoginPage {
            nav: Nav::new("login", None),
            next: next.clone(),
            actor: actor.to_owned(),
            error: Some(error.to_owned()),
        };
        (status, page).into_response()
    };
    if actor.is_empty() || actor.chars().count() > MAX_ACTOR || actor.chars().any(char::is_control) {
        return fail(
            StatusCode::UNPROCESSABLE_ENTITY,
            "Enter your name (up to 64 characters); it is recorded with every release you make.",
        );
    }
    if !state.config.login_token.matches(form.token.trim()) {
        tracing::warn!(actor, "login with a wrong token");
        return fail(StatusCode::UNAUTHORIZED, "That token is not right.");
    }
    let id = state.sessions.create(actor);
    tracing::info!(actor, "logged in");
    (
        [(
            header::SET_COOKIE,
            auth::session_cookie(&id, state.config.secure_cookies),
        )],
        Redirect::to(&next),
    )
        .into_response()
}

#[derive(Deserialize)]
struct LogoutForm {
    #[serde(default)]
    csrf: String,
}

async fn logout(
    State(state): State<AppState>,
    headers: HeaderMap,
    Form(form): Form<LogoutForm>,
) -> Result<Response, AppError> {
    let session = session(&state, &headers).ok_or(AppError::Unauthorized)?;
    if !auth::constant_time_eq(session.csrf.as_bytes(), form.csrf.as_bytes()) {
        return Err(AppError::Forbidden);
    }
    state.sessions.remove(&headers);
    Ok(([(header::SET_COOKIE, auth::clear_cookie())], Redirect::to("/")).into_response())
}

/// The session of a write request whose form carried `csrf`: 401 without a session, 403 with a wrong token.
pub(crate) fn writer(state: &AppState, headers: &HeaderMap, csrf: &str) -> Result<auth::Session, AppError> {
    let session = session(state, headers).ok_or(AppError::Unauthorized)?;
    if csrf.is_empty() || !auth::constant_time_eq(session.csrf.as_bytes(), csrf.as_bytes()) {
        return Err(AppError::Forbidden);
    }
    Ok(session)
}
