//! The standalone OpenAI-compatible proxy: a thin adapter that asks the [`Director`] where to go and streams the
//! model server's answer back chunk by chunk.
//!
//! A request the director marked for mirroring also gets its copy sent on a task of its own: the client's response
//! never waits for it, and the copy's response is read only for its status, TTFT and usage, then dropped.

use std::{
    pin::Pin,
    sync::Arc,
    task::{Context, Poll},
    time::{Duration, Instant},
};

use axum::{
    Json, Router,
    body::Body,
    extract::{Request, State},
    http::{HeaderMap, HeaderName, HeaderValue, StatusCode, header},
    response::{IntoResponse, Response},
    routing::{get, post},
};
use bytes::Bytes;
use http_body::{Body as HttpBody, Frame, SizeHint};
use http_body_util::{BodyExt, Full, Limited};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use scheduler::EndpointId;
use serde_json::json;

use crate::{
    error::RouteError,
    openai::ApiKind,
    routing::{Director, MirrorCopy, ResponseStats, RoutePlan},
    usage::UsageObserver,
};

/// Header naming the endpoint that served the request, as upstream's `x-gateway-destination-endpoint-served`.
pub const SERVED_HEADER: &str = "x-gateway-destination-endpoint-served";
pub const REQUEST_ID_HEADER: &str = "x-request-id";
/// Header on a mirrored copy naming the request id of the client request it duplicates.
pub const MIRROR_OF_HEADER: &str = "x-switchyard-mirror-of";

/// Proxy settings.
#[derive(Clone, Debug)]
pub struct ProxyConfig {
    pub max_body_bytes: usize,
    /// Bound on connecting to a model server; a refused or timed-out connect moves to the next-best endpoint.
    pub connect_timeout: Duration,
    /// Bound on one mirrored copy, from sending it to the end of its discarded response.
    pub mirror_timeout: Duration,
}

#[derive(Clone)]
struct ProxyState {
    director: Arc<Director>,
    client: Client<HttpConnector, Full<Bytes>>,
    config: ProxyConfig,
}

/// The proxy's routes: `/v1/completions`, `/v1/chat/completions` and `/v1/models`.
pub fn router(director: Arc<Director>, config: ProxyConfig) -> Router {
    let mut connector = HttpConnector::new();
    connector.set_connect_timeout(Some(config.connect_timeout));
    connector.set_nodelay(true);
    let client = Client::builder(TokioExecutor::new())
        .pool_idle_timeout(Duration::from_secs(30))
        .build(connector);
    let state = ProxyState {
        director,
        client,
        config,
    };
    Router::new()
        .route("/v1/completions", post(completions))
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/models", get(models))
        .fallback(not_found)
        .with_state(state)
}

async fn completions(State(state): State<ProxyState>, request: Request) -> Response {
    proxy(state, ApiKind::Completions, request).await
}

async fn chat_completions(State(state): State<ProxyState>, request: Request) -> Response {
    proxy(state, ApiKind::ChatCompletions, request).await
}

async fn models(State(state): State<ProxyState>) -> Json<serde_json::Value> {
    let snapshot = state.director.datastore.snapshot();
    let data: Vec<_> = snapshot
        .models()
        .map(|m| json!({ "id": m.name, "object": "model", "owned_by": "switchyard" }))
        .collect();
    Json(json!({ "object": "list", "data": data }))
}

async fn not_found(request: Request) -> Response {
    let err = format!(
        "inference error: NotFound - no route for {} {}",
        request.method(),
        request.uri().path()
    );
    (StatusCode::NOT_FOUND, err).into_response()
}

fn error_response(err: &RouteError) -> Response {
    let mut response = (err.http_status(), err.body()).into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
}

async fn proxy(state: ProxyState, kind: ApiKind, request: Request) -> Response {
    let (parts, body) = request.into_parts();
    let request_id = parts
        .headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| state.director.new_request_id());

    let limit = state.config.max_body_bytes;
    let raw = match read_body(body, limit).await {
        Ok(raw) => raw,
        Err(err) => {
            // The body never reached the director, so record the rejection here.
            tracing::debug!(request_id = %request_id, error = %err, "rejected request body");
            return error_response(&err);
        }
    };
    let mut plan = match state.director.route(kind, raw, request_id.clone()) {
        Ok(plan) => plan,
        Err(err) => return error_response(&err),
    };

    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(parts.uri.path())
        .to_owned();
    if let Some(copy) = plan.mirror.take() {
        send_mirror(&state, *copy, &path, &parts.headers);
    }
    let targets = std::iter::once(plan.endpoint.clone()).chain(plan.fallbacks.iter().take(1).cloned());
    let mut served_by_fallback = false;
    let mut last_error = None;
    for endpoint in targets {
        let upstream = match upstream_request(&endpoint, &path, &parts.headers, &plan, &request_id) {
            Ok(req) => req,
            Err(err) => {
                last_error = Some(err);
                break;
            }
        };
        match state.client.request(upstream).await {
            Ok(response) => {
                return stream_back(state.director.clone(), plan, endpoint, served_by_fallback, response);
            }
            Err(err) if err.is_connect() => {
                // Nothing was sent to the client yet, so the next-best endpoint can still take the request.
                tracing::warn!(request_id = %request_id, endpoint = %endpoint, error = %err, "model server refused the connection");
                served_by_fallback = true;
                last_error = Some(format!("connecting to {endpoint}: {err}"));
            }
            Err(err) => {
                last_error = Some(format!("model server {endpoint} failed: {err}"));
                break;
            }
        }
    }
    let message = last_error.unwrap_or_else(|| "no endpoint left to try".into());
    let endpoint = plan.endpoint.clone();
    state.director.finish(
        plan,
        endpoint,
        ResponseStats {
            status: Some(502),
            ..ResponseStats::default()
        },
    );
    (
        StatusCode::BAD_GATEWAY,
        format!("inference error: BadGateway - {message}"),
    )
        .into_response()
}

/// Sends a mirrored copy on its own task; its outcome only reaches the decision record and the mirror metrics.
fn send_mirror(state: &ProxyState, copy: MirrorCopy, path: &str, headers: &HeaderMap) {
    let MirrorCopy { mut plan, slot } = copy;
    let id = plan.decision.request_id.clone();
    let request = upstream_request(&plan.endpoint, path, headers, &plan, &id).and_then(|mut request| {
        let original = plan.decision.mirror_of.as_deref().unwrap_or_default();
        let value = HeaderValue::from_str(original).map_err(|e| format!("mirror-of header: {e}"))?;
        request.headers_mut().insert(MIRROR_OF_HEADER, value);
        Ok(request)
    });
    let (director, client, timeout) = (
        state.director.clone(),
        state.client.clone(),
        state.config.mirror_timeout,
    );
    tokio::spawn(async move {
        let endpoint = plan.endpoint.clone();
        let mut first_byte = None;
        let exchange = async {
            let response = client.request(request?).await.map_err(|e| format!("sending: {e}"))?;
            let status = response.status().as_u16();
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            let mut usage = UsageObserver::new(content_type);
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("reading the response: {e}"))?;
                if let Some(data) = frame.data_ref().filter(|d| !d.is_empty()) {
                    first_byte.get_or_insert_with(Instant::now);
                    usage.observe(data);
                }
            }
            Ok::<_, String>((status, usage.finish()))
        };
        let outcome = tokio::time::timeout(timeout, exchange).await;
        let started = plan.started;
        let mut stats = ResponseStats {
            ttft_ms: first_byte.map(|t: Instant| (t - started).as_secs_f64() * 1e3),
            ..ResponseStats::default()
        };
        match outcome {
            Ok(Ok((status, usage))) => {
                stats.status = Some(status);
                stats.usage = usage;
            }
            Ok(Err(error)) => {
                tracing::debug!(request_id = %id, endpoint = %endpoint, %error, "mirrored copy failed");
                plan.decision.reason.push_str(&format!("; mirror failed: {error}"));
                stats.status = Some(502);
            }
            Err(_) => {
                tracing::debug!(request_id = %id, endpoint = %endpoint, ?timeout, "mirrored copy timed out");
                plan.decision
                    .reason
                    .push_str(&format!("; mirror timed out after {timeout:?}"));
            }
        }
        director.finish(plan, endpoint, stats);
        // Released only now, so the bound covers the whole exchange.
        drop(slot);
    });
}

async fn read_body(body: Body, limit: usize) -> Result<Bytes, RouteError> {
    match Limited::new(body, limit).collect().await {
        Ok(collected) => Ok(collected.to_bytes()),
        Err(err) if err.downcast_ref::<http_body_util::LengthLimitError>().is_some() => {
            Err(RouteError::PayloadTooLarge { limit })
        }
        Err(err) => Err(RouteError::BadRequest(format!("error reading request body: {err}"))),
    }
}

/// Hop-by-hop headers and those we recompute are not forwarded.
fn forwardable(name: &HeaderName) -> bool {
    !matches!(
        name.as_str(),
        "host"
            | "content-length"
            | "connection"
            | "keep-alive"
            | "proxy-connection"
            | "transfer-encoding"
            | "te"
            | "trailer"
            | "upgrade"
    )
}

fn upstream_request(
    endpoint: &EndpointId,
    path: &str,
    headers: &HeaderMap,
    plan: &RoutePlan,
    request_id: &str,
) -> Result<http::Request<Full<Bytes>>, String> {
    let uri = format!("http://{endpoint}{path}");
    let mut builder = http::Request::post(&uri);
    for (name, value) in headers.iter().filter(|(name, _)| forwardable(name)) {
        builder = builder.header(name, value);
    }
    builder
        .header(header::CONTENT_LENGTH, plan.body.len())
        .header(REQUEST_ID_HEADER, request_id)
        .body(Full::new(plan.body.clone()))
        .map_err(|e| format!("building the upstream request to {uri}: {e}"))
}

fn stream_back(
    director: Arc<Director>,
    plan: RoutePlan,
    endpoint: EndpointId,
    served_by_fallback: bool,
    response: http::Response<hyper::body::Incoming>,
) -> Response {
    let (mut parts, body) = response.into_parts();
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    let usage = UsageObserver::new(content_type);
    parts.headers.retain_forwardable();
    if let Ok(value) = HeaderValue::from_str(endpoint.as_str()) {
        parts.headers.insert(SERVED_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(&plan.decision.request_id) {
        parts.headers.insert(REQUEST_ID_HEADER, value);
    }
    let stats = ResponseStats {
        status: Some(parts.status.as_u16()),
        served_by_fallback,
        ..ResponseStats::default()
    };
    let observed = ObservedBody {
        inner: body,
        usage,
        first_byte: None,
        finish: Some(Finish {
            director,
            plan,
            endpoint,
            stats,
        }),
    };
    Response::from_parts(parts, Body::new(observed))
}

trait RetainForwardable {
    fn retain_forwardable(&mut self);
}

impl RetainForwardable for HeaderMap {
    fn retain_forwardable(&mut self) {
        let drop: Vec<HeaderName> = self.keys().filter(|name| !forwardable(name)).cloned().collect();
        for name in drop {
            self.remove(&name);
        }
    }
}

struct Finish {
    director: Arc<Director>,
    plan: RoutePlan,
    endpoint: EndpointId,
    stats: ResponseStats,
}

/// Passes the model server's body through untouched while timing the first byte and reading usage; the decision
/// is finished when the body ends or, if the client goes away first, when it is dropped.
struct ObservedBody {
    inner: hyper::body::Incoming,
    usage: UsageObserver,
    first_byte: Option<Instant>,
    finish: Option<Finish>,
}

impl ObservedBody {
    fn complete(&mut self) {
        if let Some(mut finish) = self.finish.take() {
            // Measured from when the gateway received the request, as the client experiences it.
            let received = finish.plan.started;
            finish.stats.ttft_ms = self.first_byte.map(|t| (t - received).as_secs_f64() * 1e3);
            finish.stats.usage = self.usage.finish();
            finish.director.finish(finish.plan, finish.endpoint, finish.stats);
        }
    }
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let Some(data) = frame.data_ref().filter(|d| !d.is_empty()) {
                    if this.first_byte.is_none()
                        && let Some(finish) = this.finish.as_mut()
                    {
                        finish.director.first_byte(&mut finish.plan);
                    }
                    this.first_byte.get_or_insert_with(Instant::now);
                    this.usage.observe(data);
                }
            }
            Poll::Ready(Some(Err(err))) => {
                tracing::warn!(error = %err, "model server response body failed");
                if let Some(finish) = this.finish.as_mut() {
                    finish.stats.status = Some(502);
                }
                this.complete();
            }
            Poll::Ready(None) => this.complete(),
            Poll::Pending => {}
        }
        polled
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

impl Drop for ObservedBody {
    fn drop(&mut self) {
        if self.finish.is_some() && !self.inner.is_end_stream() {
            // The client went away mid-response: record that, the model server connection is dropped with us.
            if let Some(finish) = self.finish.as_mut() {
                finish
                    .plan
                    .decision
                    .reason
                    .push_str("; client disconnected before the response ended");
                // 499 as nginx logs it: not a server error, so the outcome stays Routed.
                finish.stats.status = Some(499);
            }
        }
        self.complete();
    }
}
