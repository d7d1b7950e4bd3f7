//! Shared fixtures of the dashboard tests: a dashboard on a temp SQLite file and a temp YAML directory, requests
//! through `oneshot`, ingest lines and a logged-in session.

#![allow(dead_code, unreachable_pub)]

use std::{path::PathBuf, sync::Arc, time::Duration};

use axum::{
    Router,
    body::Body,
    http::{HeaderMap, Request, StatusCode, header},
};
use dashboard::{AppState, Config, auth::Secret, db::Db};
use http_body_util::BodyExt;
use store::dir::DirStore;
use tower::ServiceExt;

pub const LOGIN: &str = "login-secret";
pub const INGEST: &str = "ingest-secret";

pub const MODEL_YAML: &str = "\
apiVersion: inference.networking.x-k8s.io/v1alpha1
kind: InferenceModel
metadata:
  name: qwq-model
spec:
  criticality: Critical
  modelName: qwq
  poolRef:
    name: reasoning-pool
  targetModels:
  - name: qwq-32b
    weight: 100
  - name: qwq-32b-canary
    weight: 0
";

pub struct TestApp {
    pub router: Router,
    pub state: AppState,
    pub dir: PathBuf,
}

pub fn temp_dir(name: &str) -> PathBuf {
    let dir = std::env::temp_dir().join(format!("switchyard-dashboard-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dir);
    std::fs::create_dir_all(dir.join("config")).unwrap();
    dir
}

pub async fn test_app(name: &str) -> TestApp {
    let dir = temp_dir(name);
    std::fs::write(dir.join("config/model.yaml"), MODEL_YAML).unwrap();
    let db = Db::open_path(&dir.join("switchyard.db")).await.unwrap();
    let state = AppState::new(
        db,
        Arc::new(DirStore::new(dir.join("config"))),
        Config {
            login_token: Secret::new(LOGIN),
            ingest_token: Secret::new(INGEST),
            secure_cookies: false,
            retain: Duration::from_secs(7 * 86_400),
        },
    );
    TestApp {
        router: dashboard::app(state.clone()),
        state,
        dir,
    }
}

pub struct Reply {
    pub status: StatusCode,
    pub headers: HeaderMap,
    pub body: String,
}

impl TestApp {
    pub async fn send(&self, request: Request<Body>) -> Reply {
        let response = self.router.clone().oneshot(request).await.unwrap();
        let status = response.status();
        let headers = response.headers().clone();
        let bytes = response.into_body().collect().await.unwrap().to_bytes();
        Reply {
            status,
            headers,
            body: String::from_utf8_lossy(&bytes).into_owned(),
        }
    }

    pub async fn get(&self, uri: &str) -> Reply {
        self.send(Request::get(uri).body(Body::empty()).unwrap()).await
    }

    pub async fn get_with_cookie(&self, uri: &str, cookie: &str) -> Reply {
        self.send(
            Request::get(uri)
                .header(header::COOKIE, cookie)
                .body(Body::empty())
                .unwrap(),
        )
        .await
    }

    pub async fn post_form(&self, uri: &str, cookie: Option<&str>, form: &[(&str, &str)]) -> Reply {
        let body = form
            .iter()
            .map(|(k, v)| format!("{}={}", encode(k), encode(v)))
            .collect::<Vec<_>>()
            .join("&");
        let mut request = Request::post(uri).header(header::CONTENT_TYPE, "application/x-www-form-urlencoded");
        if let Some(cookie) = cookie {
            request = request.header(header::COOKIE, cookie);
        }
        self.send(request.body(Body::from(body)).unwrap()).await
    }

    pub async fn ingest(&self, token: Option<&str>, body: String) -> Reply {
        let mut request = Request::post("/api/v1/ingest").header(header::CONTENT_TYPE, "application/x-ndjson");
        if let Some(token) = token {
            request = request.header(header::AUTHORIZATION, format!("Bearer {token}"));
        }
        self.send(request.body(Body::from(body)).unwrap()).await
    }

    /// Logs in as `actor`; returns the cookie header value and the session's CSRF token.
    pub async fn login(&self, actor: &str) -> (String, String) {
        let reply = self
            .post_form(
                "/login",
                None,
                &[("actor", actor), ("token", LOGIN), ("next", "/releases")],
            )
            .await;
        assert_eq!(reply.status, StatusCode::SEE_OTHER, "{}", reply.body);
        let set = reply.headers[header::SET_COOKIE].to_str().unwrap();
        let cookie = set.split(';').next().unwrap().to_owned();
        let page = self.get_with_cookie("/releases/default/qwq-model", &cookie).await;
        let csrf = extract(&page.body, "name=\"csrf\" value=\"", "\"").expect("csrf field");
        (cookie, csrf)
    }
}

pub fn extract(text: &str, before: &str, after: &str) -> Option<String> {
    let start = text.find(before)? + before.len();
    let end = text[start..].find(after)? + start;
    Some(text[start..end].to_owned())
}

pub fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| {
            if b.is_ascii_alphanumeric() || matches!(b, b'-' | b'_' | b'.' | b'~') {
                char::from(b).to_string()
            } else {
                format!("%{b:02X}")
            }
        })
        .collect()
}

/// One decision as an ingest line: routed to `pod` (`default/<pod>`) among two candidates, unless `outcome` says
/// otherwise.
pub fn decision_line(request_id: &str, at_ms: u64, target: &str, pod: &str, outcome: &str) -> String {
    let routed = outcome == "Routed";
    let endpoint = format!("127.0.0.{}:8000", if pod.ends_with('1') { 12 } else { 11 });
    let json = serde_json::json!({"decision": {
        "request_id": request_id, "received_at_ms": at_ms, "model": "qwq", "target_model": target,
        "criticality": "Critical", "pool": "reasoning-pool", "outcome": outcome,
        "endpoint": if routed { Some(endpoint.clone()) } else { None },
        "fallbacks": [],
        "candidates": [
            {"pod": format!("default/{pod}"), "endpoint": endpoint, "queue": 0, "running": 2, "kv_usage": 0.25,
             "prefix_match_blocks": 3, "prefix_mode": "precise", "lora_state": "not_applicable", "metrics_age_ms": 12,
             "scores": {"queue": 1.0, "kv-cache": 0.75}, "total": 1.75},
            {"pod": "default/other", "endpoint": "127.0.0.99:8000", "queue": 4, "running": 8, "kv_usage": 0.9,
             "prefix_match_blocks": 0, "lora_state": "not_applicable", "metrics_age_ms": 30,
             "scores": {"queue": 0.0, "kv-cache": 0.1}, "total": 0.1}
        ],
        "profile": "default", "reason": "max score 1.75", "scheduler_micros": 15,
        "status": if routed { 200 } else { 429 }, "ttft_ms": 42.5, "duration_ms": 90.0,
        "prompt_tokens": 10, "completion_tokens": 20, "cached_tokens": null
    }});
    json.to_string()
}

/// The decision of a mirrored copy of `original`, as an ingest line.
pub fn mirror_line(request_id: &str, original: &str, at_ms: u64, target: &str) -> String {
    let mut json: serde_json::Value =
        serde_json::from_str(&decision_line(request_id, at_ms, target, "pod-1", "Routed")).unwrap();
    json["decision"]["mirror_of"] = original.into();
    json.to_string()
}

pub fn sample_line(pod: &str, at_ms: i64, kv: f64) -> String {
    serde_json::json!({"sample": {"pod": format!("default/{pod}"), "pool": "reasoning-pool",
        "endpoint": "127.0.0.11:8000", "at_ms": at_ms, "queue": 1, "running": 3, "kv_usage": kv}})
    .to_string()
}
