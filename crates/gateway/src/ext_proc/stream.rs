//! The state machine of one ext_proc stream (one HTTP request through Envoy): collect the request body, ask the
//! [`Director`] for a pod, answer in the order Envoy's processing mode requires, then watch the response go by.
//!
//! A request whose `:authority` ends in `-shadow` is a copy Envoy's `request_mirror_policies` made: it is routed as
//! a mirrored copy ([`Director::route_shadow`]), so its decision carries `mirror_of` and the mirror metrics count it.
//!
//! It is synchronous and does no I/O: [`Stream::handle`] takes one message and appends the answers, so the gRPC
//! task around it stays a loop and the protocol can be tested message by message.

use std::{sync::Arc, time::Instant};

use envoy_types::pb::envoy::{
    config::core::v3::HeaderValueOption,
    extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode,
    service::ext_proc::v3::{HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, processing_request},
};
use tonic::Status;

use super::{
    ExtProcConfig,
    body::{BodyBuffer, BufferError},
    convert::{self, DESTINATION_KEY},
};
use crate::{
    error::RouteError,
    openai::ApiKind,
    routing::{Director, Flight, Inbound, MODEL_HEADER},
};

/// Whether the stream goes on after a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flow {
    Continue,
    /// A local reply was sent; Envoy ends the request, so the stream is closed.
    Close,
}

/// How Envoy sends the request body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum RequestMode {
    /// Chunks as they arrive; the header answer is held until the body is complete, and the body is sent back.
    FullDuplex,
    /// The whole body in one message after the headers were answered; the decision rides on the body answer.
    Buffered,
    /// No body is sent: the request is routed like a body-less one.
    NoBody,
}

/// How Envoy sends the response body.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum ResponseMode {
    /// Each chunk must be sent back (echoed unchanged).
    FullDuplex,
    /// Each message is answered with "continue"; Envoy keeps the bytes.
    Continue,
    /// No body is sent: the response headers end what the picker sees.
    NoBody,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    RequestHeaders,
    RequestBody,
    /// Routed (or passed through): the response is expected.
    Upstream,
}

/// One ext_proc stream.
pub struct Stream {
    director: Arc<Director>,
    config: Arc<ExtProcConfig>,
    started: Instant,
    phase: Phase,
    request_mode: RequestMode,
    response_mode: ResponseMode,
    kind: ApiKind,
    request_id: String,
    generated_request_id: bool,
    subset: Option<Vec<String>>,
    /// Set for Envoy's shadow copies: the request id (else the authority) of the request copied.
    shadow_of: Option<String>,
    /// The original's model, as the picker marked it on the original request ([`MODEL_HEADER`]).
    shadow_model: Option<String>,
    body: Option<BodyBuffer>,
    /// The routed request whose response is being watched; `None` before routing and once it ended.
    flight: Option<Flight>,
}

/// The local reply for a body that could not be buffered.
fn buffer_error(error: BufferError) -> RouteError {
    match error {
        BufferError::TooLarge { limit } => RouteError::PayloadTooLarge { limit },
        BufferError::OverBudget { .. } => RouteError::NoCapacity(error.to_string()),
    }
}

/// What Envoy appends to the host of a mirrored request.
pub const SHADOW_SUFFIX: &str = "-shadow";

impl Stream {
    /// `started` is when the first message arrived: TTFT is measured from there, as the client sees it.
    pub fn new(director: Arc<Director>, config: Arc<ExtProcConfig>, started: Instant) -> Stream {
        Stream {
            director,
            config,
            started,
            phase: Phase::RequestHeaders,
            request_mode: RequestMode::FullDuplex,
            response_mode: ResponseMode::FullDuplex,
            kind: ApiKind::Completions,
            request_id: String::new(),
            generated_request_id: false,
            subset: None,
            shadow_of: None,
            shadow_model: None,
            body: None,
            flight: None,
        }
    }

    /// Whether the request was routed (or passed through) and the response is awaited.
    pub fn routed(&self) -> bool {
        self.phase == Phase::Upstream
    }

    /// Handles one message from Envoy, appending the answers to `out`. A `Status` is an internal fault (a message
    /// out of order, an unsupported mode): the stream fails and the pool's failure mode decides in Envoy.
    pub fn handle(&mut self, message: ProcessingRequest, out: &mut Vec<ProcessingResponse>) -> Result<Flow, Status> {
        if let Some(config) = message.protocol_config {
            self.set_modes(config.request_body_mode, config.response_body_mode)?;
        }
        if let Some(subset) = convert::subset_hint(message.metadata_context.as_ref()) {
            self.subset = Some(subset);
        }
        if let Some(flight) = self.flight.as_mut()
            && let Some(served) = convert::served_endpoint(message.metadata_context.as_ref())
        {
            flight.served_by(served.into());
        }
        let Some(request) = message.request else {
            return Ok(Flow::Continue);
        };
        match request {
            processing_request::Request::RequestHeaders(headers) => self.request_headers(headers, out),
            processing_request::Request::RequestBody(body) => self.request_body(body, out),
            processing_request::Request::RequestTrailers(_) => {
                let flow = match self.phase {
                    // HTTP/2 trailers end a body whose last chunk did not carry end_of_stream.
                    Phase::RequestBody => self.route(out)?,
                    Phase::Upstream => Flow::Continue,
                    Phase::RequestHeaders => return Err(out_of_order("request trailers before request headers")),
                };
                if flow == Flow::Continue {
                    out.push(convert::request_trailers());
                }
                Ok(flow)
            }
            processing_request::Request::ResponseHeaders(headers) => self.response_headers(headers, out),
            processing_request::Request::ResponseBody(body) => self.response_body(body, out),
            processing_request::Request::ResponseTrailers(_) => {
                self.require_upstream("response trailers")?;
                self.finish();
                out.push(convert::response_trailers());
                Ok(Flow::Continue)
            }
        }
    }

    fn set_modes(&mut self, request: i32, response: i32) -> Result<(), Status> {
        self.request_mode = match BodySendMode::try_from(request) {
            Ok(BodySendMode::FullDuplexStreamed) => RequestMode::FullDuplex,
            Ok(BodySendMode::Buffered) => RequestMode::Buffered,
            Ok(BodySendMode::None) => RequestMode::NoBody,
            // The route must be chosen after the body was read, which STREAMED and BUFFERED_PARTIAL cannot express.
            other => {
                return Err(Status::unimplemented(format!(
                    "request_body_mode {other:?} is not supported; use FULL_DUPLEX_STREAMED or BUFFERED"
                )));
            }
        };
        self.response_mode = match BodySendMode::try_from(response) {
            Ok(BodySendMode::FullDuplexStreamed) => ResponseMode::FullDuplex,
            Ok(BodySendMode::None) => ResponseMode::NoBody,
            _ => ResponseMode::Continue,
        };
        Ok(())
    }

    fn request_headers(&mut self, headers: HttpHeaders, out: &mut Vec<ProcessingResponse>) -> Result<Flow, Status> {
        if self.phase != Phase::RequestHeaders {
            return Err(out_of_order("request headers twice"));
        }
        let map = headers.headers.as_ref();
        // Upstream's default when the path says nothing: the completions API.
        self.kind = convert::header(map, ":path")
            .map(|p| p.split('?').next().unwrap_or(p))
            .and_then(ApiKind::from_path)
            .unwrap_or(ApiKind::Completions);
        let client_id = convert::header(map, "x-request-id").filter(|v| !v.is_empty() && v.len() <= 128);
        match client_id {
            Some(id) => self.request_id = id.to_owned(),
            None => {
                self.request_id = self.director.new_request_id();
                self.generated_request_id = true;
            }
        }
        let authority = convert::header(map, ":authority").or_else(|| convert::header(map, "host"));
        if let Some(authority) = authority.filter(|a| is_shadow(a)) {
            // Envoy copies the original's headers, x-request-id included, into the shadow.
            self.shadow_of = Some(client_id.unwrap_or(authority).to_owned());
            self.shadow_model = convert::header(map, MODEL_HEADER).map(str::to_owned);
        }
        if headers.end_of_stream || self.request_mode == RequestMode::NoBody {
            return Ok(self.route_without_body(out));
        }
        let content_length = convert::header(map, "content-length").and_then(|v| v.trim().parse().ok());
        match BodyBuffer::new(self.config.max_body_bytes, content_length, &self.config.budget) {
            Ok(body) => self.body = Some(body),
            Err(error) => return Ok(self.reject(&buffer_error(error), out)),
        }
        self.phase = Phase::RequestBody;
        if self.request_mode == RequestMode::Buffered {
            out.push(convert::request_headers_continue());
        }
        Ok(Flow::Continue)
    }

    fn request_body(&mut self, body: HttpBody, out: &mut Vec<ProcessingResponse>) -> Result<Flow, Status> {
        if self.phase != Phase::RequestBody {
            return Err(out_of_order("request body outside the request-body phase"));
        }
        let buffer = self
            .body
            .as_mut()
            .ok_or_else(|| Status::internal("request body buffer missing"))?;
        if let Err(error) = buffer.push(body.body) {
            return Ok(self.reject(&buffer_error(error), out));
        }
        // In BUFFERED mode the single message is the whole body, whatever its flag says.
        if body.end_of_stream || self.request_mode == RequestMode::Buffered {
            return self.route(out);
        }
        Ok(Flow::Continue)
    }

    /// The body is complete: route it and answer the headers and body.
    fn route(&mut self, out: &mut Vec<ProcessingResponse>) -> Result<Flow, Status> {
        let inbound = Inbound {
            kind: self.kind,
            body: self.body.take().map(|mut b| b.take()).unwrap_or_default(),
            // A shadow is routed under the id of the request it copies.
            request_id: self.shadow_of.clone().unwrap_or_else(|| self.request_id.clone()),
            received: self.started,
        };
        let routed = match &self.shadow_of {
            Some(_) => self.director.route_shadow(inbound, self.shadow_model.as_deref()),
            None => self.director.route_in_subset(inbound, self.subset.as_deref()),
        };
        let routed = match routed {
            Ok(routed) => routed,
            Err(RouteError::Internal(message)) => return Err(Status::internal(message)),
            Err(err) => return Ok(self.reject(&err, out)),
        };
        let destination = std::iter::once(routed.flight.endpoint())
            .chain(routed.fallbacks.iter().take(self.config.fallbacks))
            .map(|e| e.as_str())
            .collect::<Vec<_>>()
            .join(",");
        let rewritten = routed.flight.record().is_some_and(|r| r.target_model != r.model);
        let body = routed.body;
        let mut headers = self.route_headers(&destination);
        if let Some(model) = &routed.model_header {
            headers.push(convert::set_header(MODEL_HEADER, model));
        }
        match self.request_mode {
            RequestMode::FullDuplex | RequestMode::NoBody => {
                headers.push(convert::set_header("content-length", &body.len().to_string()));
                out.push(convert::request_headers_routed(headers, &destination));
                convert::request_body_streamed(&body, out);
            }
            RequestMode::Buffered => {
                let new_body = rewritten.then(|| {
                    headers.push(convert::set_header("content-length", &body.len().to_string()));
                    Vec::from(body)
                });
                out.push(convert::request_body_buffered_routed(headers, new_body, &destination));
            }
        }
        // The body went back to Envoy; the flight lives as long as the response and keeps no copy of it.
        self.flight = Some(routed.flight);
        self.phase = Phase::Upstream;
        Ok(Flow::Continue)
    }

    /// A request without a body (a GET) has no model to schedule for; like upstream it goes to any ready pod.
    fn route_without_body(&mut self, out: &mut Vec<ProcessingResponse>) -> Flow {
        let Some(endpoint) = self.director.pick_any() else {
            return self.reject(&RouteError::Internal("no pods available in datastore".into()), out);
        };
        let headers = self.route_headers(endpoint.as_str());
        out.push(convert::request_headers_routed(headers, endpoint.as_str()));
        self.phase = Phase::Upstream;
        Flow::Continue
    }

    fn route_headers(&self, destination: &str) -> Vec<HeaderValueOption> {
        let mut headers = vec![convert::set_header(DESTINATION_KEY, destination)];
        if self.generated_request_id {
            headers.push(convert::set_header("x-request-id", &self.request_id));
        }
        headers
    }

    fn reject(&mut self, err: &RouteError, out: &mut Vec<ProcessingResponse>) -> Flow {
        if matches!(err, RouteError::PayloadTooLarge { .. } | RouteError::Internal(_)) {
            // The director never saw this request, so nothing recorded it yet.
            tracing::debug!(request_id = %self.request_id, error = %err, "ext_proc request rejected");
        }
        self.body = None;
        out.push(convert::immediate(err));
        Flow::Close
    }

    fn require_upstream(&self, what: &str) -> Result<(), Status> {
        if self.phase != Phase::Upstream {
            return Err(out_of_order(&format!("{what} before the request was routed")));
        }
        Ok(())
    }

    fn response_headers(&mut self, headers: HttpHeaders, out: &mut Vec<ProcessingResponse>) -> Result<Flow, Status> {
        self.require_upstream("response headers")?;
        if let Some(flight) = self.flight.as_mut() {
            let map = headers.headers.as_ref();
            // Real Envoy sends `:status`; upstream's tests send `status`.
            let status = convert::header(map, ":status")
                .or_else(|| convert::header(map, "status"))
                .and_then(|s| s.parse().ok());
            flight.response(status, convert::header(map, "content-type"));
        }
        out.push(convert::response_headers_continue());
        if headers.end_of_stream || self.response_mode == ResponseMode::NoBody {
            self.finish();
        }
        Ok(Flow::Continue)
    }

    fn response_body(&mut self, body: HttpBody, out: &mut Vec<ProcessingResponse>) -> Result<Flow, Status> {
        self.require_upstream("response body")?;
        if let Some(flight) = self.flight.as_mut() {
            flight.observe(&body.body);
        }
        let end = body.end_of_stream;
        out.push(match self.response_mode {
            ResponseMode::FullDuplex => convert::response_body_streamed(body.body, end),
            ResponseMode::Continue | ResponseMode::NoBody => convert::response_body_continue(),
        });
        if end {
            self.finish();
        }
        Ok(Flow::Continue)
    }

    /// The response ended: its flight records what it showed (once).
    fn finish(&mut self) {
        if let Some(flight) = self.flight.take() {
            flight.finish();
        }
    }
}

impl Drop for Stream {
    /// Envoy cancelled the stream (client gone, timeout) or it broke: the request is still recorded, so the
    /// in-flight count returns to zero and the record says what happened.
    fn drop(&mut self) {
        if let Some(flight) = self.flight.take() {
            flight.abandon("ext_proc stream ended before the response did");
        }
    }
}

/// Envoy appends the suffix to the whole authority (`host:port-shadow`) in older versions and to the host part
/// (`host-shadow:port`) in newer ones.
fn is_shadow(authority: &str) -> bool {
    authority.ends_with(SHADOW_SUFFIX)
        || authority
            .rsplit_once(':')
            .is_some_and(|(host, _)| host.ends_with(SHADOW_SUFFIX))
}

fn out_of_order(what: &str) -> Status {
    Status::failed_precondition(format!("ext_proc protocol violation: {what}"))
}

#[cfg(test)]
mod tests;
