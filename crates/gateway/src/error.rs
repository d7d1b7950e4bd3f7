//! Request-level errors of the gateway and their mapping to HTTP status and the upstream EPP body format.

use http::StatusCode;

/// Why a request could not be routed. `Display` is the message part of `inference error: <Code> - <message>`.
#[derive(Debug, thiserror::Error, Clone, PartialEq, Eq)]
pub enum RouteError {
    #[error("{0}")]
    BadRequest(String),
    #[error("request body is larger than the limit of {limit} bytes")]
    PayloadTooLarge { limit: usize },
    #[error("model {0:?} is not served by this pool")]
    UnknownModel(String),
    #[error("system saturated, sheddable request dropped")]
    Shed,
    #[error("{0}")]
    NoCapacity(String),
    #[error("{0}")]
    Internal(String),
    /// The model server could not be reached, or failed before answering.
    #[error("{0}")]
    BadGateway(String),
}

impl RouteError {
    /// The upstream error code name (`pkg/common/error`), used in bodies and as a metric label.
    pub fn code(&self) -> &'static str {
        match self {
            RouteError::BadRequest(_) => "BadRequest",
            RouteError::PayloadTooLarge { .. } => "PayloadTooLarge",
            RouteError::UnknownModel(_) => "NotFound",
            RouteError::Shed => "ResourceExhausted",
            RouteError::NoCapacity(_) => "ServiceUnavailable",
            RouteError::Internal(_) => "Internal",
            RouteError::BadGateway(_) => "BadGateway",
        }
    }

    pub fn http_status(&self) -> StatusCode {
        match self {
            RouteError::BadRequest(_) => StatusCode::BAD_REQUEST,
            RouteError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            RouteError::UnknownModel(_) => StatusCode::NOT_FOUND,
            RouteError::Shed => StatusCode::TOO_MANY_REQUESTS,
            RouteError::NoCapacity(_) => StatusCode::SERVICE_UNAVAILABLE,
            RouteError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
            RouteError::BadGateway(_) => StatusCode::BAD_GATEWAY,
        }
    }

    /// The response body, identical to the upstream EPP's: `inference error: <Code> - <message>`.
    pub fn body(&self) -> String {
        format!("inference error: {} - {}", self.code(), self)
    }

    /// The decision outcome this error is recorded as.
    pub fn outcome(&self) -> scheduler::Outcome {
        match self {
            RouteError::BadRequest(_) | RouteError::PayloadTooLarge { .. } => scheduler::Outcome::BadRequest400,
            RouteError::UnknownModel(_) => scheduler::Outcome::NotFound404,
            RouteError::Shed => scheduler::Outcome::Shed429,
            RouteError::NoCapacity(_) => scheduler::Outcome::NoCapacity503,
            RouteError::Internal(_) | RouteError::BadGateway(_) => scheduler::Outcome::Error,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn body_follows_upstream_format() {
        let err = RouteError::UnknownModel("gpt-9".into());
        assert_eq!(err.http_status(), StatusCode::NOT_FOUND);
        assert_eq!(
            err.body(),
            "inference error: NotFound - model \"gpt-9\" is not served by this pool"
        );
        assert_eq!(RouteError::Shed.http_status(), StatusCode::TOO_MANY_REQUESTS);
        assert_eq!(
            RouteError::Shed.body(),
            "inference error: ResourceExhausted - system saturated, sheddable request dropped"
        );
    }
}
