//! Receiving one request body under the front door's bounds: its size, the pause between its pieces, the time to
//! receive all of it, and the process-wide budget of buffered bytes.

use std::time::Duration;

use axum::response::{IntoResponse, Response};
use bytes::{Bytes, BytesMut};
use http_body_util::BodyExt as _;
use hyper::{
    HeaderMap, StatusCode,
    body::Incoming,
    header::{CONNECTION, CONTENT_LENGTH, HeaderValue, RETRY_AFTER},
};
use tokio::time::Instant;

use crate::{Budget, Charge, Limits};

/// Capacity reserved up front from a declared Content-Length: a declaration is only a claim (one byte may follow
/// a claimed 16 MiB), so memory beyond this grows with what actually arrives.
pub const PRESIZE_CAP: usize = 64 << 10;

/// Why a request was answered before reaching the router.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum Rejection {
    #[error("request body is larger than the limit of {limit} bytes")]
    TooLarge { limit: usize },
    #[error("request body stalled: nothing received for {0:?}")]
    BodyIdle(Duration),
    #[error("request body not received within {0:?}")]
    BodyTimeout(Duration),
    #[error("the server holds too many request bytes right now (limit {max}); retry shortly")]
    OverBudget { max: usize },
    #[error("request body failed: {0}")]
    Broken(String),
}

impl Rejection {
    /// The `reason` label of `http_requests_rejected`.
    pub fn reason(&self) -> &'static str {
        match self {
            Rejection::TooLarge { .. } => "too_large",
            Rejection::BodyIdle(_) => "body_idle",
            Rejection::BodyTimeout(_) => "body_timeout",
            Rejection::OverBudget { .. } => "over_budget",
            Rejection::Broken(_) => "broken",
        }
    }

    pub fn status(&self) -> StatusCode {
        match self {
            Rejection::TooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            Rejection::BodyIdle(_) | Rejection::BodyTimeout(_) => StatusCode::REQUEST_TIMEOUT,
            Rejection::OverBudget { .. } => StatusCode::SERVICE_UNAVAILABLE,
            Rejection::Broken(_) => StatusCode::BAD_REQUEST,
        }
    }
}

impl Rejection {
    /// The response sent: `render`'s, with the connection closed (the rest of the body was never read) and
    /// `Retry-After` when the refusal is momentary.
    pub(crate) fn respond(&self, render: fn(&Rejection) -> Response) -> Response {
        let mut response = render(self);
        *response.status_mut() = self.status();
        let headers = response.headers_mut();
        headers.insert(CONNECTION, HeaderValue::from_static("close"));
        if matches!(self, Rejection::OverBudget { .. }) {
            headers.insert(RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// An OpenAI-shaped error body: `{"error": {"message", "type", "code"}}`.
pub fn json(rejection: &Rejection) -> Response {
    let body = serde_json::json!({
        "error": {"message": rejection.to_string(), "type": rejection.reason(), "code": rejection.status().as_u16()}
    });
    axum::Json(body).into_response()
}

/// Receives the whole body of a request whose headers arrived at `started`. The bytes stay charged to `budget`
/// for as long as the returned [`Charge`] lives.
pub(crate) async fn receive(
    mut body: Incoming,
    headers: &HeaderMap,
    max: usize,
    limits: &Limits,
    budget: &Budget,
    started: Instant,
) -> Result<(Bytes, Charge), Rejection> {
    let declared = headers
        .get(CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<usize>().ok());
    if declared.is_some_and(|n| n > max) {
        return Err(Rejection::TooLarge { limit: max });
    }
    let mut charge = budget.charge();
    let mut buf = BytesMut::with_capacity(declared.unwrap_or(0).min(PRESIZE_CAP));
    let deadline = started + limits.body_timeout;
    loop {
        let idle = Instant::now() + limits.body_idle_timeout;
        let (until, late) = if idle < deadline {
            (idle, Rejection::BodyIdle(limits.body_idle_timeout))
        } else {
            (deadline, Rejection::BodyTimeout(limits.body_timeout))
        };
        let frame = match tokio::time::timeout_at(until, body.frame()).await {
            Err(_) => return Err(late),
            Ok(None) => break,
            Ok(Some(Err(err))) => return Err(Rejection::Broken(err.to_string())),
            Ok(Some(Ok(frame))) => frame,
        };
        // Trailers carry nothing a handler here reads.
        let Ok(data) = frame.into_data() else {
            continue;
        };
        if buf.len() + data.len() > max {
            return Err(Rejection::TooLarge { limit: max });
        }
        charge
            .add(data.len())
            .map_err(|over| Rejection::OverBudget { max: over.max })?;
        buf.extend_from_slice(&data);
    }
    Ok((buf.freeze(), charge))
}
