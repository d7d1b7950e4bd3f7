//! The Envoy ext_proc endpoint picker (`envoy.service.ext_proc.v3.ExternalProcessor/Process`): a thin gRPC adapter
//! over the [`Director`], speaking the Gateway API Inference Extension's endpoint-picker protocol.
//!
//! One gRPC stream is one HTTP request. Envoy's messages go to a [`stream::Stream`] state machine as tonic asks for
//! answers; the chosen pod goes out as the `x-gateway-destination-endpoint` header and
//! as `dynamic_metadata["envoy.lb"]["x-gateway-destination-endpoint"]`, with the same value.

pub mod body;
pub mod convert;
pub mod envoy;
pub mod stream;

use std::{
    collections::VecDeque,
    pin::Pin,
    sync::Arc,
    time::{Duration, Instant},
};

use envoy_types::pb::envoy::service::ext_proc::v3::{
    ProcessingRequest, ProcessingResponse,
    external_processor_server::{ExternalProcessor, ExternalProcessorServer},
};
use tokio::{
    net::TcpListener,
    sync::{OwnedSemaphorePermit, Semaphore},
};
use tokio_util::sync::CancellationToken;
use tonic::{Request, Response, Status, Streaming};

use self::stream::{Flow, Stream};
use crate::routing::Director;

/// The gRPC service name Envoy health-checks the picker under.
pub const SERVICE_NAME: &str = "envoy.service.ext_proc.v3.ExternalProcessor";

/// Settings of the picker.
#[derive(Clone, Debug)]
pub struct ExtProcConfig {
    /// Largest request body buffered; larger ones get 413.
    pub max_body_bytes: usize,
    /// How many of the scheduler's fallbacks follow the pick in the destination (comma-separated); 0 sends one
    /// endpoint, which every gateway understands (some parse only one `ip:port`).
    pub fallbacks: usize,
    /// The process-wide budget of buffered request bytes, shared with the HTTP listeners.
    pub budget: serve::Budget,
    /// Streams open at once; more are refused with `RESOURCE_EXHAUSTED` (Envoy's failure mode then decides).
    pub max_streams: usize,
    /// Bound on the wait for Envoy's next message until the request is routed (headers and body); after it the
    /// wait is bounded by `response_idle_timeout`, since a busy model server may be slow to its first token.
    pub request_idle_timeout: Duration,
    pub response_idle_timeout: Duration,
}

/// The `ExternalProcessor` service.
#[derive(Clone)]
pub struct Picker {
    director: Arc<Director>,
    config: Arc<ExtProcConfig>,
    streams: Arc<Semaphore>,
    cancel: CancellationToken,
}

impl Picker {
    pub fn new(director: Arc<Director>, config: ExtProcConfig, cancel: CancellationToken) -> Picker {
        Picker {
            director,
            streams: Arc::new(Semaphore::new(config.max_streams)),
            config: Arc::new(config),
            cancel,
        }
    }

    /// The tonic service, with message limits that let a BUFFERED body of `max_body_bytes` through.
    pub fn into_service(self) -> ExternalProcessorServer<Picker> {
        let limit = self.config.max_body_bytes.saturating_add(64 << 10);
        ExternalProcessorServer::new(self)
            .max_decoding_message_size(limit)
            .max_encoding_message_size(limit)
    }
}

#[tonic::async_trait]
impl ExternalProcessor for Picker {
    type ProcessStream = Pin<Box<dyn futures::Stream<Item = Result<ProcessingResponse, Status>> + Send>>;

    async fn process(
        &self,
        request: Request<Streaming<ProcessingRequest>>,
    ) -> Result<Response<Self::ProcessStream>, Status> {
        let Ok(permit) = self.streams.clone().try_acquire_owned() else {
            tracing::warn!(
                max = self.config.max_streams,
                "ext_proc stream refused: --extproc-max-streams open"
            );
            return Err(Status::resource_exhausted("too many ext_proc streams open"));
        };
        let task = StreamTask {
            _permit: permit,
            config: self.config.clone(),
            stream: Stream::new(self.director.clone(), self.config.clone(), Instant::now()),
            inbound: request.into_inner(),
            pending: VecDeque::new(),
            scratch: Vec::new(),
            done: false,
            cancel: self.cancel.clone(),
        };
        Ok(Response::new(Box::pin(futures::stream::unfold(task, StreamTask::next))))
    }
}

/// One stream driven by tonic polling its answers: no task and no channel per request, and when Envoy resets the
/// stream tonic drops this, and with it the [`Stream`], which finishes its decision.
struct StreamTask {
    /// This stream's place among `--extproc-max-streams`, given back when tonic drops the stream.
    _permit: OwnedSemaphorePermit,
    config: Arc<ExtProcConfig>,
    stream: Stream,
    inbound: Streaming<ProcessingRequest>,
    pending: VecDeque<Result<ProcessingResponse, Status>>,
    scratch: Vec<ProcessingResponse>,
    done: bool,
    cancel: CancellationToken,
}

impl StreamTask {
    /// The next answer: a queued one, or whatever the next message from Envoy produces.
    async fn next(mut self) -> Option<(Result<ProcessingResponse, Status>, StreamTask)> {
        loop {
            if let Some(answer) = self.pending.pop_front() {
                return Some((answer, self));
            }
            if self.done {
                return None;
            }
            let idle = if self.stream.routed() {
                self.config.response_idle_timeout
            } else {
                self.config.request_idle_timeout
            };
            let message = tokio::select! {
                message = tokio::time::timeout(idle, self.inbound.message()) => match message {
                    Ok(message) => message,
                    Err(_) => {
                        tracing::debug!(?idle, routed = self.stream.routed(), "ext_proc stream idle: closed");
                        self.done = true;
                        return Some((Err(Status::deadline_exceeded(format!("no message for {idle:?}"))), self));
                    }
                },
                () = self.cancel.cancelled() => {
                    self.done = true;
                    return Some((Err(Status::unavailable("gateway shutting down")), self));
                }
            };
            let message = match message {
                Ok(Some(message)) => message,
                Ok(None) => return None,
                Err(status) => {
                    // Envoy resets the stream when the client goes away; nothing to answer.
                    tracing::debug!(code = ?status.code(), message = status.message(), "ext_proc stream ended by peer");
                    return None;
                }
            };
            let flow = self.stream.handle(message, &mut self.scratch);
            self.pending.extend(self.scratch.drain(..).map(Ok));
            match flow {
                Ok(Flow::Continue) => {}
                Ok(Flow::Close) => self.done = true,
                Err(status) => {
                    tracing::warn!(code = ?status.code(), message = status.message(), "ext_proc stream failed");
                    self.pending.push_back(Err(status));
                    self.done = true;
                }
            }
        }
    }
}

/// Serves the picker (and the gRPC health service, which Envoy's cluster health check calls on this port) until
/// `cancel` fires.
pub async fn serve(
    listener: TcpListener,
    picker: Picker,
    health: crate::health::Health,
    cancel: CancellationToken,
) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .tcp_nodelay(true)
        // Bodies arrive in 64 KiB chunks: windows of a few chunks keep a 1 MB body from stalling on
        // flow-control round trips.
        .initial_stream_window_size(1 << 20)
        .initial_connection_window_size(16 << 20)
        // Envoy multiplexes every request of a worker thread on one connection.
        .max_concurrent_streams(4096)
        .add_service(health.service())
        .add_service(picker.into_service())
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
            cancel.cancelled_owned(),
        )
        .await?;
    Ok(())
}
