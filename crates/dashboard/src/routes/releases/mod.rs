//! The release pages and their JSON API, one module for one object (a model's traffic split): `manual` is the
//! weight form, apply, history and rollback; `guarded` the guarded-release card and its actions. While a guarded
//! release runs, the weights belong to the controller: `manual` refuses changes and shows the card `guarded` builds.

mod guarded;
mod manual;

use axum::Router;

use crate::AppState;

/// History rows shown and returned.
const HISTORY: u32 = 100;

pub(super) fn router() -> Router<AppState> {
    manual::router().merge(guarded::router())
}

/// The value of form field `name`, empty when absent (forms are read as ordered pairs so repeated fields keep their
/// order).
fn field<'f>(fields: &'f [(String, String)], name: &str) -> &'f str {
    fields
        .iter()
        .find(|(k, _)| k == name)
        .map(|(_, v)| v.as_str())
        .unwrap_or("")
}
