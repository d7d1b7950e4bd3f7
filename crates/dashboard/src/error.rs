//! The error type of every handler; it is the HTTP response. Internal errors are logged with their cause and shown
//! to the client only as "something went wrong": no SQL, paths or stack traces ever reach a page.

use askama::Template;
use axum::{
    Json,
    http::StatusCode,
    response::{Html, IntoResponse, Response},
};

use crate::{
    db::DbError,
    releases::{FormErrors, StoreError},
};

#[derive(Debug, thiserror::Error)]
pub enum AppError {
    /// 401: the action needs a login (or the ingest token).
    #[error("log in to do this")]
    Unauthorized,
    /// 403: logged in, but the CSRF token is missing or wrong.
    #[error("this form has expired; reload the page and try again")]
    Forbidden,
    /// 404.
    #[error("{0} not found")]
    NotFound(String),
    /// 400: a malformed request (bad query parameter, unreadable body).
    #[error("{0}")]
    BadRequest(String),
    /// 422: well-formed but invalid input.
    #[error("{0}")]
    Unprocessable(String),
    /// 400 with an error per field (the guarded-release API).
    #[error("{}", invalid_summary(.0))]
    InvalidFields(FormErrors),
    /// 409: the request contradicts the current state (a running release, a taken name, a finished release).
    #[error("{0}")]
    Conflict(String),
    /// 413.
    #[error("request body too large")]
    TooLarge,
    /// 500: logged, never shown.
    #[error("database: {0}")]
    Db(#[from] DbError),
    /// 500 or 502: the InferenceModel store failed.
    #[error("release store: {0}")]
    Store(StoreError),
    #[error("template: {0}")]
    Template(#[from] askama::Error),
}

impl From<StoreError> for AppError {
    fn from(err: StoreError) -> AppError {
        match err {
            StoreError::NotFound(key) => AppError::NotFound(format!("InferenceModel {key}")),
            StoreError::Invalid(errors) => {
                AppError::Unprocessable(errors.iter().map(|e| e.to_string()).collect::<Vec<_>>().join("; "))
            }
            StoreError::ReleaseNotFound(key) => AppError::NotFound(format!("guarded release {key}")),
            StoreError::Conflict(message) => AppError::Conflict(message),
            other => AppError::Store(other),
        }
    }
}

impl AppError {
    pub fn status(&self) -> StatusCode {
        match self {
            AppError::Unauthorized => StatusCode::UNAUTHORIZED,
            AppError::Forbidden => StatusCode::FORBIDDEN,
            AppError::NotFound(_) => StatusCode::NOT_FOUND,
            AppError::BadRequest(_) | AppError::InvalidFields(_) => StatusCode::BAD_REQUEST,
            AppError::Conflict(_) => StatusCode::CONFLICT,
            AppError::Unprocessable(_) => StatusCode::UNPROCESSABLE_ENTITY,
            AppError::TooLarge => StatusCode::PAYLOAD_TOO_LARGE,
            AppError::Store(StoreError::Unavailable(_) | StoreError::Kube { .. }) => StatusCode::BAD_GATEWAY,
            AppError::Db(_) | AppError::Store(_) | AppError::Template(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// What the client may see.
    pub fn public_message(&self) -> String {
        if self.status().is_server_error() {
            tracing::error!(error = %self, "request failed");
            "Something went wrong on our side. It has been logged; try again in a moment.".into()
        } else {
            self.to_string()
        }
    }

    /// The JSON flavour, for `/api/v1/…`.
    pub fn into_json(self) -> Response {
        let status = self.status();
        let body = match &self {
            AppError::InvalidFields(errors) => {
                serde_json::json!({ "error": self.public_message(), "fields": errors.fields, "form": errors.form })
            }
            _ => serde_json::json!({ "error": self.public_message() }),
        };
        (status, Json(body)).into_response()
    }
}

fn invalid_summary(errors: &FormErrors) -> String {
    let mut parts: Vec<String> = errors.form.clone();
    parts.extend(
        errors
            .fields
            .iter()
            .map(|(field, message)| format!("{field}: {message}")),
    );
    if parts.is_empty() {
        "invalid request".into()
    } else {
        parts.join("; ")
    }
}

#[derive(Template)]
#[template(path = "error.html")]
struct ErrorPage {
    status: u16,
    title: String,
    message: String,
    login: bool,
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let status = self.status();
        let page = ErrorPage {
            status: status.as_u16(),
            title: status.canonical_reason().unwrap_or("Error").to_owned(),
            message: self.public_message(),
            login: matches!(self, AppError::Unauthorized),
        };
        let body = page
            .render()
            .unwrap_or_else(|_| format!("{} {}", status.as_u16(), page.title));
        (status, Html(body)).into_response()
    }
}

/// A handler result rendered as JSON errors.
pub struct ApiError(pub AppError);

impl<E: Into<AppError>> From<E> for ApiError {
    fn from(err: E) -> ApiError {
        ApiError(err.into())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        self.0.into_json()
    }
}
