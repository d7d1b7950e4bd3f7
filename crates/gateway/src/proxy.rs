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
    routing::{Director, Flight, Inbound, MirrorCopy},
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
    let data: Vec<_> = state
        .director
        .model_names()
        .into_iter()
        .map(|name| json!({ "id": name, "object": "model", "owned_by": "switchyard" }))
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

/// A request refused at the front door (size, timeouts, buffered bytes), in the upstream EPP's error format.
pub fn rejection_body(rejection: &serve::Rejection) -> Response {
    let code = match rejection {
        serve::Rejection::TooLarge { .. } => "PayloadTooLarge",
        serve::Rejection::BodyIdle(_) | serve::Rejection::BodyTimeout(_) => "RequestTimeout",
        serve::Rejection::OverBudget { .. } => "ServiceUnavailable",
        serve::Rejection::Broken(_) => "BadRequest",
    };
    let mut response = format!("inference error: {code} - {rejection}").into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; charset=utf-8"),
    );
    response
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
    let received = Instant::now();
    let (parts, body) = request.into_parts();
    let request_id = parts
        .headers
        .get(REQUEST_ID_HEADER)
        .and_then(|v| v.to_str().ok())
        .filter(|v| !v.is_empty() && v.len() <= 128)
        .map(str::to_owned)
        .unwrap_or_else(|| state.director.new_request_id());

    let limit = state.config.max_body_bytes;
    let body = match read_body(body, limit).await {
        Ok(raw) => raw,
        Err(err) => {
            // The body never reached the director, so nothing records the rejection but this log line.
            tracing::debug!(request_id = %request_id, error = %err, "rejected request body");
            return error_response(&err);
        }
    };
    let inbound = Inbound {
        kind,
        body,
        request_id: request_id.clone(),
        received,
    };
    let mut routed = match state.director.route(inbound) {
        Ok(routed) => routed,
        Err(err) => return error_response(&err),
    };

    let path = parts
        .uri
        .path_and_query()
        .map(|p| p.as_str())
        .unwrap_or(parts.uri.path())
        .to_owned();
    if let Some(copy) = routed.mirror.take() {
        send_mirror(&state, copy, &path, &parts.headers);
    }
    let mut flight = routed.flight;
    let targets = std::iter::once(flight.endpoint().clone()).chain(routed.fallbacks.iter().take(1).cloned());
    let mut last_error = None;
    for endpoint in targets {
        let upstream = match upstream_request(&endpoint, &path, &parts.headers, &routed.body, &request_id) {
            Ok(req) => req,
            Err(err) => {
                last_error = Some(err);
                break;
            }
        };
        match state.client.request(upstream).await {
            Ok(response) => {
                flight.served_by(endpoint.clone());
                return stream_back(flight, endpoint, response);
            }
            Err(err) if err.is_connect() => {
                // Nothing was sent to the client yet, so the next-best endpoint can still take the request.
                tracing::warn!(request_id = %request_id, endpoint = %endpoint, error = %err, "model server refused the connection");
                last_error = Some(format!("connecting to {endpoint}: {err}"));
            }
            Err(err) => {
                last_error = Some(format!("model server {endpoint} failed: {err}"));
                break;
            }
        }
    }
    let message = last_error.unwrap_or_else(|| "no endpoint left to try".into());
    let err = RouteError::BadGateway(message);
    flight.fail(&err);
    error_response(&err)
}

/// Sends a mirrored copy on its own task; its outcome only reaches the copy's audit record and the mirror metrics.
fn send_mirror(state: &ProxyState, copy: MirrorCopy, path: &str, headers: &HeaderMap) {
    let MirrorCopy { mut flight, body } = copy;
    let endpoint = flight.endpoint().clone();
    let request = upstream_request(&endpoint, path, headers, &body, flight.request_id()).and_then(|mut request| {
        let original = flight.mirror_of().unwrap_or_default();
        let value = HeaderValue::from_str(original).map_err(|e| format!("mirror-of header: {e}"))?;
        request.headers_mut().insert(MIRROR_OF_HEADER, value);
        Ok(request)
    });
    let (client, timeout) = (state.client.clone(), state.config.mirror_timeout);
    tokio::spawn(async move {
        let exchange = async {
            let response = client.request(request?).await.map_err(|e| format!("sending: {e}"))?;
            let content_type = response
                .headers()
                .get(header::CONTENT_TYPE)
                .and_then(|v| v.to_str().ok());
            flight.response(Some(response.status().as_u16()), content_type);
            let mut body = response.into_body();
            while let Some(frame) = body.frame().await {
                let frame = frame.map_err(|e| format!("reading the response: {e}"))?;
                if let Some(data) = frame.data_ref() {
                    flight.observe(data);
                }
            }
            Ok::<_, String>(())
        };
        match tokio::time::timeout(timeout, exchange).await {
            Ok(Ok(())) => flight.finish(),
            Ok(Err(error)) => {
                tracing::debug!(request_id = %flight.request_id(), endpoint = %endpoint, %error, "mirrored copy failed");
                flight.fail(error);
            }
            Err(_) => {
                tracing::debug!(request_id = %flight.request_id(), endpoint = %endpoint, ?timeout, "mirrored copy timed out");
                flight.time_out(timeout);
            }
        }
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
    body: &Bytes,
    request_id: &str,
) -> Result<http::Request<Full<Bytes>>, String> {
    let uri = format!("http://{endpoint}{path}");
    let mut builder = http::Request::post(&uri);
    for (name, value) in headers.iter().filter(|(name, _)| forwardable(name)) {
        builder = builder.header(name, value);
    }
    builder
        .header(header::CONTENT_LENGTH, body.len())
        .header(REQUEST_ID_HEADER, request_id)
        .body(Full::new(body.clone()))
        .map_err(|e| format!("building the upstream request to {uri}: {e}"))
}

fn stream_back(mut flight: Flight, endpoint: EndpointId, response: http::Response<hyper::body::Incoming>) -> Response {
    let (mut parts, body) = response.into_parts();
    let content_type = parts.headers.get(header::CONTENT_TYPE).and_then(|v| v.to_str().ok());
    flight.response(Some(parts.status.as_u16()), content_type);
    parts.headers.retain_forwardable();
    if let Ok(value) = HeaderValue::from_str(endpoint.as_str()) {
        parts.headers.insert(SERVED_HEADER, value);
    }
    if let Ok(value) = HeaderValue::from_str(flight.request_id()) {
        parts.headers.insert(REQUEST_ID_HEADER, value);
    }
    let observed = ObservedBody {
        inner: body,
        flight: Some(flight),
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

/// Passes the model server's body through untouched while its [`Flight`] watches it; the flight ends when the body
/// does or, if the client goes away first, when this is dropped (a 499).
struct ObservedBody {
    inner: hyper::body::Incoming,
    /// `None` once the flight ended.
    flight: Option<Flight>,
}

impl HttpBody for ObservedBody {
    type Data = Bytes;
    type Error = hyper::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, hyper::Error>>> {
        let this = &mut *self;
        let polled = Pin::new(&mut this.inner).poll_frame(cx);
        match &polled {
            Poll::Ready(Some(Ok(frame))) => {
                if let (Some(data), Some(flight)) = (frame.data_ref(), this.flight.as_mut()) {
                    flight.observe(data);
                }
            }
            Poll::Ready(Some(Err(err))) => {
                tracing::warn!(error = %err, "model server response body failed");
                if let Some(flight) = this.flight.take() {
                    flight.fail(err);
                }
            }
            Poll::Ready(None) => {
                if let Some(flight) = this.flight.take() {
                    flight.finish();
                }
            }
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
        // A body at its end whose last poll was never made still counts as complete; otherwise the client went
        // away mid-response and the dropped flight records a 499.
        if let Some(flight) = self.flight.take()
            && self.inner.is_end_stream()
        {
            flight.finish();
        }
    }
}
