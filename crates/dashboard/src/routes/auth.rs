//! `/login` and `/logout`: a name (recorded as the actor of releases) and the login token start a session.

use askama::Template;
use askama_web::WebTemplate;
use std::{net::SocketAddr, time::Instant};

use axum::{
    Extension, Form, Router,
    extract::{ConnectInfo, Query, State},
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

/// Only a same-origin path is followed after login, so `?next=` cannot send people elsewhere: it must parse as a
/// path (and query), start with one `/`, and hold only visible ASCII other than `\` — browsers drop tabs and
/// newlines and read `\` as `/`, which turns `/\t/host` or `/\\host` into another origin.
fn safe_next(next: &str) -> String {
    let same_origin = next.starts_with('/')
        && !next.starts_with("//")
        && next.bytes().all(|b| b.is_ascii_graphic() && b != b'\\')
        && next.parse::<axum::http::uri::PathAndQuery>().is_ok();
    if same_origin { next.to_owned() } else { "/".to_owned() }
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

async fn login(
    State(state): State<AppState>,
    peer: Option<Extension<ConnectInfo<SocketAddr>>>,
    Form(form): Form<LoginForm>,
) -> Response {
    // Behind a proxy every client shares its address, and so its attempts: the safe side.
    let client = peer.map_or_else(
        || "unknown".to_owned(),
        |Extension(ConnectInfo(addr))| addr.ip().to_string(),
    );
    let now = Instant::now();
    if let Some(wait) = state.logins.wait(&client, now) {
        tracing::warn!(%client, ?wait, "login attempt while blocked");
        let seconds = wait.as_secs().max(1);
        let page = LoginPage {
            nav: Nav::new("login", None),
            next: safe_next(&form.next),
            actor: form.actor.trim().to_owned(),
            error: Some(format!("Too many wrong tokens; try again in {seconds} s.")),
        };
        return (
            StatusCode::TOO_MANY_REQUESTS,
            [(header::RETRY_AFTER, seconds.to_string())],
            page,
        )
            .into_response();
    }
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
        tracing::warn!(actor, %client, "login with a wrong token");
        state.logins.failed(&client, now);
        return fail(StatusCode::UNAUTHORIZED, "That token is not right.");
    }
    state.logins.succeeded(&client);
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
