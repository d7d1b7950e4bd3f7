//! The ApiServerVerifier: a fake Kubernetes API server on kube's tower-test mock service that asserts each request
//! a client sends (method, path) and scripts the reply, so a test states the exact conversation.

use std::time::Duration;

use http::{Method, Request, Response, StatusCode, header::CONTENT_TYPE};
use kube::{Client, client::Body};
use serde_json::{Value, json};

/// The namespace a [`client`] defaults to.
pub const NS: &str = "default";

/// How the fake API server answers one request.
pub enum Reply {
    Json(Value),
    /// Answers with the request body, as create, replace and apply do.
    Echo,
    NotFound,
    Conflict,
}

/// One request the client sent.
#[derive(Debug)]
pub struct Seen {
    pub query: String,
    pub content_type: String,
    pub body: Value,
}

pub struct ApiServerVerifier(tower_test::mock::Handle<Request<Body>, Response<Body>>);

/// A client (default namespace [`NS`]) that talks to a fresh verifier.
pub fn client() -> (Client, ApiServerVerifier) {
    let (service, handle) = tower_test::mock::pair::<Request<Body>, Response<Body>>();
    (Client::new(service, NS), ApiServerVerifier(handle))
}

impl ApiServerVerifier {
    /// Waits for the next request, asserts its method and path, answers it, and returns what was sent.
    pub async fn expect(&mut self, method: Method, path: &str, reply: Reply) -> Seen {
        // Generous, because paused-time tests auto-advance to the nearest timer, and this one must not be it.
        let (request, send) = tokio::time::timeout(Duration::from_secs(60), self.0.next_request())
            .await
            .unwrap_or_else(|_| panic!("no request arrived; expected {method} {path}"))
            .unwrap_or_else(|| panic!("client gone; expected {method} {path}"));
        assert_eq!(
            (request.method(), request.uri().path()),
            (&method, path),
            "unexpected request {}",
            request.uri()
        );
        let query = request.uri().query().unwrap_or("").to_owned();
        let content_type = request
            .headers()
            .get(CONTENT_TYPE)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_owned();
        let bytes = request
            .into_body()
            .collect_bytes()
            .await
            .expect("a mock request body is in memory");
        let body: Value = if bytes.is_empty() {
            Value::Null
        } else {
            serde_json::from_slice(&bytes).expect("the client sends JSON")
        };
        let (status, reply) = match reply {
            Reply::Json(value) => (StatusCode::OK, value),
            Reply::Echo => (StatusCode::OK, body.clone()),
            Reply::NotFound => (StatusCode::NOT_FOUND, status(404, "NotFound")),
            Reply::Conflict => (StatusCode::CONFLICT, status(409, "Conflict")),
        };
        let response = Response::builder()
            .status(status)
            .body(Body::from(serde_json::to_vec(&reply).expect("a JSON value serialises")))
            .expect("a valid response");
        send.send_response(response);
        Seen {
            query,
            content_type,
            body,
        }
    }

    /// Asserts that the client sent nothing more (call after dropping every client clone).
    pub async fn done(mut self) {
        let next = tokio::time::timeout(Duration::from_secs(1), self.0.next_request()).await;
        if let Ok(Some((request, _))) = next {
            panic!("unexpected extra request {} {}", request.method(), request.uri());
        }
    }
}

/// A `Status` object as the API server sends with an error code.
fn status(code: u16, reason: &str) -> Value {
    json!({"apiVersion": "v1", "kind": "Status", "metadata": {}, "status": "Failure", "reason": reason,
        "message": reason, "code": code})
}
