//! End-to-end tests of the ext_proc endpoint picker: a tonic client plays Envoy's message order (request headers,
//! body chunks, trailers, response headers, response body chunks) against a real gateway over fake pods.

mod common;

use std::{net::IpAddr, time::Duration};

use common::*;
use envoy_types::pb::envoy::{
    config::core::v3::{HeaderMap, HeaderValue, Metadata},
    extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode,
    service::ext_proc::v3::{
        BodyResponse, CommonResponse, HttpHeaders, HttpTrailers, ProcessingRequest, ProcessingResponse,
        ProtocolConfiguration, body_mutation, external_processor_client::ExternalProcessorClient, processing_request,
        processing_response,
    },
};
use gateway::ext_proc::{
    convert,
    envoy::{destination_metadata, message, request_body, response_body, served_metadata, set_headers},
};
use scheduler::EndpointId;
use tokio::sync::mpsc;
use tokio_stream::wrappers::ReceiverStream;
use tonic::transport::Channel;

const WAIT: Duration = Duration::from_secs(10);

struct Setup {
    gw: gateway::Gateway,
    pods: Vec<FakePod>,
    client: ExternalProcessorClient<Channel>,
}

/// `n` fake pods in 127.0.`block`.0/24; models `qwq` (Critical → qwq-32b), `batch` (Sheddable → qwq-32b),
/// `canary` (Critical → canary-v2, all weight), `sql-lora` (Critical → sql-lora-1fdg2) and `direct` (itself).
async fn setup(name: &str, block: u8, n: u8, extra: &[&str]) -> Setup {
    // A pool without pods still needs a port to declare.
    let (port, listeners) = if n == 0 {
        (8000, Vec::new())
    } else {
        bind_pods(block, n).await
    };
    let mut pods = Vec::new();
    for listener in listeners {
        pods.push(serve_fake_pod(listener).await);
    }
    let dir = temp_dir(name);
    let ips: Vec<IpAddr> = pods.iter().map(|p| p.addr.ip()).collect();
    std::fs::write(dir.join("pool.yaml"), pool_yaml(port)).unwrap();
    let models = [
        model_yaml("qwq", "qwq", "Critical", &[("qwq-32b", 100)]),
        model_yaml("batch", "batch", "Sheddable", &[("qwq-32b", 100)]),
        model_yaml("canary", "canary", "Critical", &[("canary-v1", 0), ("canary-v2", 100)]),
        model_yaml("sql-lora", "sql-lora", "Critical", &[("sql-lora-1fdg2", 100)]),
        model_yaml("direct", "direct", "Critical", &[("direct", 100)]),
    ];
    std::fs::write(dir.join("models.yaml"), models.join("---\n")).unwrap();
    if !pods.is_empty() {
        std::fs::write(dir.join("pods.yaml"), pods_yaml(&ips)).unwrap();
    }
    let gw = start_gateway(&dir, extra).await;
    let ids: Vec<EndpointId> = pods.iter().map(|p| EndpointId::new(p.addr.to_string())).collect();
    wait_scraped(&gw, &ids).await;
    let client = ExternalProcessorClient::connect(format!("http://{}", gw.extproc_addr))
        .await
        .unwrap();
    Setup { gw, pods, client }
}

impl Setup {
    fn id(&self, i: usize) -> String {
        self.pods[i].addr.to_string()
    }

    /// Sets (queue, kv) per pod and waits until the gateway has scraped exactly those values.
    async fn load(&self, loads: &[(u32, f64)]) {
        for (pod, (queue, kv)) in self.pods.iter().zip(loads) {
            pod.set(*queue, *kv);
        }
        self.settle(|i, m| (m.waiting_queue, m.kv_cache_usage) == loads[i])
            .await;
    }

    async fn settle(&self, ok: impl Fn(usize, &scheduler::EndpointMetrics) -> bool) {
        let mut scrapes = self.gw.director.metrics_store.subscribe();
        test_support::until(&mut scrapes, WAIT, "scraped metrics to settle", || {
            self.pods.iter().enumerate().all(|(i, pod)| {
                let m = self
                    .gw
                    .director
                    .metrics_store
                    .get(&EndpointId::new(pod.addr.to_string()));
                ok(i, &m) && m.updated_at.is_some_and(|t| t.elapsed() < Duration::from_millis(100))
            })
        })
        .await;
    }

    async fn envoy(&self) -> Envoy {
        Envoy::open(self.client.clone()).await
    }

    /// One full exchange through a fresh stream: the request, and when it is routed a short JSON response, so the
    /// decision is finished (and the pod's in-flight count back down) when this returns.
    async fn ask(&self, path: &str, body: &str) -> Answer {
        let mut envoy = self.envoy().await;
        let answer = envoy.request(path, body.as_bytes(), 1 << 16, None).await;
        if matches!(answer, Answer::Routed(_)) {
            let usage = r#"{"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
            envoy.respond("application/json", &[usage], None).await;
        }
        answer
    }

    /// The newest decision once every stream has finished (a routed decision is recorded when its stream ends).
    async fn last_decision(&self) -> audit::Record {
        wait_idle(&self.gw).await;
        self.gw.director.recorder.decisions.latest(1).remove(0)
    }

    /// The newest decision once every stream but one held open has finished.
    async fn decision_while_one_stays_open(&self) -> audit::Record {
        wait_inflight(&self.gw, 1).await;
        self.gw.director.recorder.decisions.latest(1).remove(0)
    }

    async fn inflight_returns_to_zero(&self) {
        wait_idle(&self.gw).await;
    }
}

/// Envoy's side of one ext_proc stream.
struct Envoy {
    tx: mpsc::Sender<ProcessingRequest>,
    rx: tonic::Streaming<ProcessingResponse>,
}

/// What the picker answered to a request.
#[derive(Debug)]
enum Answer {
    Routed(Routed),
    Immediate { status: i32, body: String },
}

#[derive(Debug)]
struct Routed {
    /// Headers the picker set, in order.
    headers: Vec<(String, String)>,
    /// `dynamic_metadata["envoy.lb"]["x-gateway-destination-endpoint"]`.
    metadata_destination: String,
    clear_route_cache: bool,
    /// The body sent back, concatenated, and the size of each chunk.
    body: Vec<u8>,
    chunks: Vec<usize>,
}

impl Routed {
    fn header(&self, name: &str) -> Option<&str> {
        self.headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
    }

    fn destination(&self) -> &str {
        let header = self
            .header("x-gateway-destination-endpoint")
            .expect("destination header");
        assert_eq!(header, self.metadata_destination, "header and metadata must agree");
        header
    }
}

impl Answer {
    fn routed(self) -> Routed {
        match self {
            Answer::Routed(r) => r,
            other => panic!("expected a routed answer, got {other:?}"),
        }
    }

    fn immediate(self) -> (i32, String) {
        match self {
            Answer::Immediate { status, body } => (status, body),
            other => panic!("expected an immediate response, got {other:?}"),
        }
    }
}

fn header_map(pairs: &[(&str, &str)]) -> HeaderMap {
    HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue {
                key: k.to_string(),
                raw_value: v.as_bytes().to_vec(),
                ..HeaderValue::default()
            })
            .collect(),
    }
}

fn request_headers(path: &str, body_len: Option<usize>, end_of_stream: bool) -> ProcessingRequest {
    let len = body_len.map(|n| n.to_string());
    let mut pairs = vec![
        (":method", if end_of_stream { "GET" } else { "POST" }),
        (":path", path),
        (":authority", "gateway"),
        ("content-type", "application/json"),
        ("x-request-id", "test-request-id"),
    ];
    if let Some(len) = &len {
        pairs.push(("content-length", len));
    }
    message(processing_request::Request::RequestHeaders(HttpHeaders {
        headers: Some(header_map(&pairs)),
        end_of_stream,
        ..HttpHeaders::default()
    }))
}

fn response_headers(status: &str, content_type: &str, served: Option<&str>) -> ProcessingRequest {
    let mut m = message(processing_request::Request::ResponseHeaders(HttpHeaders {
        headers: Some(header_map(&[(":status", status), ("content-type", content_type)])),
        ..HttpHeaders::default()
    }));
    if let Some(served) = served {
        m.metadata_context = Some(served_metadata(served));
    }
    m
}

fn streamed(body: &BodyResponse) -> (Vec<u8>, bool) {
    match body
        .response
        .as_ref()
        .and_then(|r| r.body_mutation.as_ref())
        .and_then(|m| m.mutation.as_ref())
    {
        Some(body_mutation::Mutation::StreamedResponse(s)) => (s.body.clone(), s.end_of_stream),
        other => panic!("expected a streamed body, got {other:?}"),
    }
}

impl Envoy {
    async fn open(mut client: ExternalProcessorClient<Channel>) -> Envoy {
        let (tx, rx) = mpsc::channel(256);
        let rx = client.process(ReceiverStream::new(rx)).await.unwrap().into_inner();
        Envoy { tx, rx }
    }

    /// Sends one message; once the picker has closed the stream (after a local reply) Envoy stops sending, and
    /// so does this, silently.
    async fn send(&self, message: ProcessingRequest) {
        let _ = self.tx.send(message).await;
    }

    async fn recv(&mut self) -> Result<Option<ProcessingResponse>, tonic::Status> {
        tokio::time::timeout(WAIT, self.rx.message())
            .await
            .expect("picker did not answer")
    }

    async fn next(&mut self) -> processing_response::Response {
        let message = self.recv().await.unwrap().expect("stream ended");
        message.response.expect("empty response")
    }

    /// Sends a request like Envoy in FULL_DUPLEX_STREAMED mode and reads the routing answer.
    async fn request(&mut self, path: &str, body: &[u8], chunk: usize, metadata: Option<Metadata>) -> Answer {
        let mut headers = request_headers(path, Some(body.len()), false);
        headers.metadata_context = metadata;
        self.send(headers).await;
        if body.is_empty() {
            self.send(request_body(b"", true)).await;
        }
        let pieces: Vec<&[u8]> = body.chunks(chunk.max(1)).collect();
        for (i, piece) in pieces.iter().enumerate() {
            self.send(request_body(piece, i + 1 == pieces.len())).await;
        }
        self.read_answer().await
    }

    async fn read_answer(&mut self) -> Answer {
        let first = self.recv().await.unwrap().expect("stream ended");
        let metadata_destination = match &first.response {
            Some(processing_response::Response::ImmediateResponse(r)) => {
                let answer = Answer::Immediate {
                    status: r.status.as_ref().map_or(0, |s| s.code),
                    body: String::from_utf8_lossy(&r.body).into_owned(),
                };
                // The picker closes the stream after a local reply.
                assert!(
                    self.recv().await.unwrap().is_none(),
                    "stream must end after a local reply"
                );
                return answer;
            }
            Some(processing_response::Response::RequestHeaders(_)) => destination_metadata(&first),
            other => panic!("the header answer must come first, got {other:?}"),
        };
        let Some(processing_response::Response::RequestHeaders(headers)) = first.response else {
            unreachable!()
        };
        let common = headers.response.unwrap_or_default();
        let mut routed = Routed {
            headers: set_headers(&common),
            metadata_destination,
            clear_route_cache: common.clear_route_cache,
            body: Vec::new(),
            chunks: Vec::new(),
        };
        loop {
            match self.next().await {
                processing_response::Response::RequestBody(body) => {
                    let (bytes, end) = streamed(&body);
                    routed.chunks.push(bytes.len());
                    routed.body.extend_from_slice(&bytes);
                    if end {
                        return Answer::Routed(routed);
                    }
                }
                other => panic!("expected body chunks after the headers, got {other:?}"),
            }
        }
    }

    /// Plays the model server's response; returns the echoed chunks. Each chunk must come back before the next is
    /// sent, which proves the picker does not hold the response back.
    async fn respond(&mut self, content_type: &str, chunks: &[&str], served: Option<&str>) -> Vec<String> {
        self.send(response_headers("200", content_type, served)).await;
        match self.next().await {
            processing_response::Response::ResponseHeaders(_) => {}
            other => panic!("expected a response-headers answer, got {other:?}"),
        }
        let mut echoed = Vec::new();
        for (i, chunk) in chunks.iter().enumerate() {
            let last = i + 1 == chunks.len();
            self.send(response_body(chunk.as_bytes(), last)).await;
            match self.next().await {
                processing_response::Response::ResponseBody(body) => {
                    let (bytes, end) = streamed(&body);
                    assert_eq!(end, last, "end_of_stream must be echoed");
                    echoed.push(String::from_utf8(bytes).unwrap());
                }
                other => panic!("expected a response-body answer, got {other:?}"),
            }
        }
        echoed
    }
}

const CHAT: &str = r#"{"model":"qwq","messages":[{"role":"user","content":"Who are you?"}]}"#;

fn body_json(routed: &Routed) -> serde_json::Value {
    serde_json::from_slice(&routed.body).expect("routed body is JSON")
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn picks_the_least_loaded_pod_and_answers_in_envoys_order() {
    let s = setup("xp-least", 60, 3, &[]).await;
    s.load(&[(3, 0.2), (0, 0.1), (10, 0.2)]).await;
    let routed = s.ask("/v1/chat/completions", CHAT).await.routed();
    assert_eq!(routed.destination(), s.id(1));
    assert!(
        routed.clear_route_cache,
        "the route must be recomputed for the new destination"
    );
    // qwq → qwq-32b: the body was rewritten and Content-Length follows it.
    let body = body_json(&routed);
    assert_eq!(body["model"], "qwq-32b");
    assert_eq!(body["messages"][0]["content"], "Who are you?");
    assert_eq!(
        routed.header("content-length"),
        Some(routed.body.len().to_string().as_str())
    );
    assert_eq!(
        routed.header("x-request-id"),
        None,
        "a client request id is kept, not replaced"
    );
    let decision = s.last_decision().await;
    assert_eq!(decision.request_id, "test-request-id");
    assert_eq!(decision.endpoint.as_ref().unwrap().as_str(), s.id(1));
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_kv_saturated_pod_is_avoided() {
    let s = setup("xp-kv", 61, 3, &[]).await;
    s.load(&[(1, 0.95), (1, 0.3), (1, 0.6)]).await;
    for _ in 0..5 {
        let routed = s
            .ask("/v1/completions", r#"{"model":"qwq","prompt":"hi"}"#)
            .await
            .routed();
        assert_eq!(routed.destination(), s.id(1));
    }
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn prefix_affinity_keeps_a_shared_prompt_on_one_pod() {
    let s = setup("xp-prefix", 62, 3, &[]).await;
    s.load(&[(0, 0.2), (0, 0.2), (0, 0.2)]).await;
    let system = "You are a careful assistant that answers in French. ".repeat(40);
    let ask = |i: usize| format!(r#"{{"model":"qwq","prompt":"{system} question {i}"}}"#);
    let first = s
        .ask("/v1/completions", &ask(0))
        .await
        .routed()
        .destination()
        .to_owned();
    for i in 1..6 {
        let routed = s.ask("/v1/completions", &ask(i)).await.routed();
        assert_eq!(routed.destination(), first, "request {i} left the warm pod");
    }
    let decision = &s.last_decision().await;
    let winner = decision
        .candidates
        .iter()
        .find(|c| c.endpoint.as_str() == first)
        .unwrap();
    assert!(winner.prefix_match_blocks > 0, "{decision:?}");
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lora_affinity_beats_a_lower_kv_cache() {
    let s = setup("xp-lora", 63, 3, &[]).await;
    // Upstream's "select lora despite higher kv cache usage" case.
    s.pods[0].set_lora(&["foo", "bar"], 2);
    s.pods[1].set_lora(&["foo", "sql-lora-1fdg2"], 2);
    s.pods[2].set_lora(&["foo"], 2);
    for (pod, kv) in s.pods.iter().zip([0.2, 0.4, 0.35]) {
        pod.set(10, kv);
    }
    s.settle(|i, m| m.waiting_queue == 10 && m.active_loras.len() == [2, 2, 1][i])
        .await;
    let routed = s
        .ask("/v1/completions", r#"{"model":"sql-lora","prompt":"select"}"#)
        .await
        .routed();
    assert_eq!(routed.destination(), s.id(1));
    assert_eq!(body_json(&routed)["model"], "sql-lora-1fdg2");
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn lora_requests_go_where_a_slot_is_free_or_the_adapter_already_went() {
    let s = setup("xp-lora-own", 79, 3, &[]).await;
    // A scrape lists the adapter once, so the gateway knows `sql-lora-1fdg2` is an adapter...
    s.pods[0].set_lora(&["sql-lora-1fdg2"], 2);
    s.settle(|i, m| m.active_loras.len() == [1, 0, 0][i]).await;
    // ...and then it is resident nowhere: pods 0 and 2 have both slots taken by other adapters, pod 1 has none.
    s.pods[0].set_lora(&["a", "b"], 2);
    s.pods[1].set_lora(&[], 2);
    s.pods[2].set_lora(&["c", "d"], 2);
    s.settle(|i, m| m.active_loras.len() == [2, 0, 2][i] && m.max_loras == Some(2))
        .await;
    for i in 0..5 {
        let body = format!(r#"{{"model":"sql-lora","prompt":"cold adapter {i}"}}"#);
        let routed = s.ask("/v1/completions", &body).await.routed();
        assert_eq!(
            routed.destination(),
            s.id(1),
            "request {i} went to a pod without a free adapter slot"
        );
    }

    // Now pods 1 and 2 each report one free slot. While the gateway's own request for the adapter is unfinished on
    // pod 1, the scrape does not show it there yet, but the next request for it joins it on pod 1 rather than
    // taking pod 2's last slot, even though pod 1 carries one more request.
    s.pods[1].set_lora(&["x"], 2);
    s.pods[2].set_lora(&["y"], 2);
    s.settle(|i, m| m.active_loras.len() == [2, 1, 1][i]).await;
    let mut held = s.envoy().await;
    let first = held
        .request(
            "/v1/completions",
            br#"{"model":"sql-lora","prompt":"held"}"#,
            1 << 16,
            None,
        )
        .await
        .routed();
    let on = first.destination().to_owned();
    let next = s
        .ask("/v1/completions", r#"{"model":"sql-lora","prompt":"follows"}"#)
        .await
        .routed();
    assert_eq!(
        next.destination(),
        on,
        "the second request did not join the adapter's batch"
    );
    let d = s.decision_while_one_stays_open().await;
    let joined = d.candidates.iter().find(|c| c.endpoint.as_str() == on).unwrap();
    assert_eq!(
        (joined.inflight, joined.lora_state),
        (1, scheduler::LoraState::Active),
        "{d:?}"
    );
    drop(held);
    s.inflight_returns_to_zero().await;
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn canary_split_rewrites_the_model_and_content_length() {
    let s = setup("xp-canary", 64, 1, &[]).await;
    let original = r#"{"model":"canary","prompt":"ünïcödé prompt","max_tokens":7}"#;
    // One byte per chunk: the split falls inside UTF-8 sequences and inside the model name.
    let routed = s
        .envoy()
        .await
        .request("/v1/completions", original.as_bytes(), 1, None)
        .await
        .routed();
    let body = body_json(&routed);
    assert_eq!(body["model"], "canary-v2");
    assert_eq!(body["prompt"], "ünïcödé prompt");
    assert_eq!(body["max_tokens"], 7);
    assert_ne!(routed.body.len(), original.len());
    assert_eq!(routed.header("content-length").unwrap(), routed.body.len().to_string());
    let d = &s.last_decision().await;
    assert_eq!((d.model.as_str(), d.target_model.as_str()), ("canary", "canary-v2"));

    // An unchanged model keeps the client's bytes exactly.
    let same = r#"{"prompt":"x",  "model":"direct"}"#;
    let routed = s.ask("/v1/completions", same).await.routed();
    assert_eq!(routed.body, same.as_bytes());
    assert_eq!(routed.header("content-length").unwrap(), same.len().to_string());
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_get_upstream_statuses_and_bodies() {
    let s = setup("xp-bad", 65, 1, &["--max-extproc-body-bytes", "4096"]).await;
    let cases: &[(&str, &str, String, i32, &str)] = &[
        (
            "unknown model",
            "/v1/completions",
            r#"{"model":"gpt-9","prompt":"x"}"#.into(),
            404,
            "inference error: NotFound - model \"gpt-9\" is not served by this pool",
        ),
        (
            "bad json",
            "/v1/completions",
            "no healthy upstream".into(),
            400,
            "inference error: BadRequest - error unmarshaling request body",
        ),
        (
            "empty body",
            "/v1/completions",
            String::new(),
            400,
            "inference error: BadRequest - request body is empty",
        ),
        (
            "missing model",
            "/v1/completions",
            r#"{"prompt":"hello world"}"#.into(),
            400,
            "inference error: BadRequest - model not found in request body",
        ),
        (
            "chat without messages",
            "/v1/chat/completions",
            r#"{"model":"qwq"}"#.into(),
            400,
            "inference error: BadRequest - invalid chat completions request",
        ),
        (
            "too large",
            "/v1/completions",
            format!(r#"{{"model":"qwq","prompt":"{}"}}"#, "x".repeat(5000)),
            413,
            "inference error: PayloadTooLarge - request body is larger than the limit of 4096 bytes",
        ),
    ];
    for (what, path, body, status, message) in cases {
        let (got, text) = s.ask(path, body).await.immediate();
        assert_eq!(got, *status, "{what}: {text}");
        assert!(text.starts_with(message), "{what}: {text:?}");
    }
    // Content-Length over the limit is refused before any body byte.
    let mut envoy = s.envoy().await;
    envoy
        .send(request_headers("/v1/completions", Some(1 << 20), false))
        .await;
    assert_eq!(envoy.read_answer().await.immediate().0, 413);
    assert_eq!(s.pods[0].received(), 0);
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn no_ready_pods_is_503_and_a_body_less_request_500() {
    let s = setup("xp-nopods", 66, 0, &[]).await;
    wait_synced(&s.gw).await;
    let (status, body) = s.ask("/v1/chat/completions", CHAT).await.immediate();
    assert_eq!(status, 503);
    assert!(body.starts_with("inference error: ServiceUnavailable - "), "{body}");
    let mut envoy = s.envoy().await;
    envoy.send(request_headers("/v1/models", None, true)).await;
    let (status, body) = envoy.read_answer().await.immediate();
    assert_eq!(status, 500);
    assert_eq!(body, "inference error: Internal - no pods available in datastore");
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sheddable_gets_429_under_saturation_while_critical_is_routed() {
    let s = setup("xp-shed", 67, 2, &[]).await;
    s.load(&[(50, 0.99), (50, 0.99)]).await;
    let (status, body) = s
        .ask("/v1/completions", r#"{"model":"batch","prompt":"x"}"#)
        .await
        .immediate();
    assert_eq!(status, 429);
    assert_eq!(
        body,
        "inference error: ResourceExhausted - system saturated, sheddable request dropped"
    );
    let routed = s
        .ask("/v1/completions", r#"{"model":"qwq","prompt":"x"}"#)
        .await
        .routed();
    assert!([s.id(0), s.id(1)].contains(&routed.destination().to_owned()));
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_1mb_body_in_64kb_chunks_comes_back_whole_in_small_chunks() {
    let s = setup("xp-1mb", 68, 2, &[]).await;
    let filler = "Ω lorem ipsum dolor sit amet ".repeat(36_000);
    let body = format!(r#"{{"model":"qwq-32b-missing","prompt":"{filler}"}}"#);
    assert!(body.len() > 1_000_000);
    // Unknown model first, so the size alone is not what makes it pass.
    let (status, _) = s.ask("/v1/completions", &body).await.immediate();
    assert_eq!(status, 404);

    let body = body.replace("qwq-32b-missing", "qwq");
    let routed = s
        .envoy()
        .await
        .request("/v1/completions", body.as_bytes(), 65_536, None)
        .await
        .routed();
    assert!(
        routed.chunks.iter().all(|&n| n <= convert::BODY_CHUNK_BYTES),
        "{:?}",
        routed.chunks
    );
    assert_eq!(body_json(&routed)["prompt"], filler);
    assert_eq!(routed.header("content-length").unwrap(), routed.body.len().to_string());
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_response_streams_through_and_completes_the_decision() {
    let s = setup("xp-response", 69, 2, &[]).await;
    s.load(&[(0, 0.1), (5, 0.5)]).await;
    let mut envoy = s.envoy().await;
    let routed = envoy
        .request(
            "/v1/completions",
            br#"{"model":"qwq","prompt":"hi","stream":true}"#,
            7,
            None,
        )
        .await
        .routed();
    assert_eq!(routed.destination(), s.id(0));
    assert_eq!(s.gw.director.inflight(), 1);
    let sse = [
        "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":null}\n\n",
        "data: {\"choices\":[{\"text\":\"b\"}],\"us",
        "age\":null}\n\ndata: {\"choices\":[],\"usage\":{\"prompt_tokens\":7,\"completion_tokens\":10}}\n\n",
        "data: [DONE]\n\n",
        "",
    ];
    // Envoy reports that the second pod served it (say, after a retry).
    let echoed = envoy.respond("text/event-stream", &sse, Some(&s.id(1))).await;
    assert_eq!(echoed, sse);
    s.inflight_returns_to_zero().await;
    let d = &s.last_decision().await;
    assert_eq!(d.status, Some(200));
    assert_eq!((d.prompt_tokens, d.completion_tokens), (Some(7), Some(10)));
    assert!(d.ttft_ms.is_some() && d.duration_ms.is_some());
    assert_eq!(
        d.endpoint.as_ref().unwrap().as_str(),
        s.id(1),
        "the served endpoint is recorded"
    );

    // A JSON response, usage in the body, trailers at the end.
    let mut envoy = s.envoy().await;
    envoy
        .request("/v1/completions", br#"{"model":"qwq","prompt":"hi"}"#, 1 << 16, None)
        .await
        .routed();
    let json = r#"{"object":"text_completion","usage":{"prompt_tokens":3,"completion_tokens":2}}"#;
    let (a, b) = json.split_at(20);
    envoy.send(response_headers("200", "application/json", None)).await;
    envoy.next().await;
    envoy.send(response_body(a.as_bytes(), false)).await;
    envoy.next().await;
    envoy.send(response_body(b.as_bytes(), false)).await;
    envoy.next().await;
    envoy
        .send(message(processing_request::Request::ResponseTrailers(
            HttpTrailers::default(),
        )))
        .await;
    assert!(matches!(
        envoy.next().await,
        processing_response::Response::ResponseTrailers(_)
    ));
    s.inflight_returns_to_zero().await;
    let d = &s.last_decision().await;
    assert_eq!((d.prompt_tokens, d.completion_tokens), (Some(3), Some(2)));
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_subset_hint_restricts_the_candidates() {
    let s = setup("xp-subset", 70, 3, &[]).await;
    s.load(&[(0, 0.1), (0, 0.1), (9, 0.7)]).await;
    let chat = CHAT.as_bytes();
    // Only the busy pod is allowed: it is chosen despite its load.
    let only_busy = convert::subset_metadata(&[&s.id(2)]);
    let routed = s
        .envoy()
        .await
        .request("/v1/chat/completions", chat, 1 << 16, Some(only_busy))
        .await
        .routed();
    assert_eq!(routed.destination(), s.id(2));
    let decision = &s.last_decision().await;
    assert_eq!(decision.candidates.len(), 1);

    let all = convert::subset_metadata(&[&s.id(0), &s.id(1), &s.id(2)]);
    let routed = s
        .envoy()
        .await
        .request("/v1/chat/completions", chat, 1 << 16, Some(all))
        .await
        .routed();
    assert_ne!(routed.destination(), s.id(2));

    for subset in [vec!["127.0.99.1:8000"], vec![]] {
        let meta = convert::subset_metadata(&subset);
        let (status, body) = s
            .envoy()
            .await
            .request("/v1/chat/completions", chat, 1 << 16, Some(meta))
            .await
            .immediate();
        assert_eq!(status, 503, "{subset:?}");
        assert_eq!(
            body,
            "inference error: ServiceUnavailable - failed to find candidate pods for serving the request"
        );
    }
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn buffered_mode_answers_headers_first_and_routes_on_the_body() {
    let s = setup("xp-buffered", 71, 2, &[]).await;
    s.load(&[(4, 0.5), (0, 0.1)]).await;
    let mut envoy = s.envoy().await;
    let mut headers = request_headers("/v1/completions", Some(40), false);
    headers.protocol_config = Some(ProtocolConfiguration {
        request_body_mode: BodySendMode::Buffered as i32,
        response_body_mode: BodySendMode::Buffered as i32,
        ..ProtocolConfiguration::default()
    });
    envoy.send(headers).await;
    match envoy.next().await {
        processing_response::Response::RequestHeaders(h) => {
            assert!(set_headers(&h.response.unwrap_or_default()).is_empty())
        }
        other => panic!("BUFFERED: headers are answered at once, got {other:?}"),
    }
    envoy
        .send(request_body(br#"{"model":"canary","prompt":"buffered"}"#, true))
        .await;
    let answer = envoy.recv().await.unwrap().unwrap();
    let destination = destination_metadata(&answer);
    let Some(processing_response::Response::RequestBody(body)) = answer.response else {
        panic!("expected the body answer");
    };
    let common = body.response.unwrap();
    let headers = set_headers(&common);
    assert!(common.clear_route_cache);
    assert!(headers.contains(&("x-gateway-destination-endpoint".into(), s.id(1))));
    assert_eq!(destination, s.id(1));
    let Some(body_mutation::Mutation::Body(new_body)) = common.body_mutation.and_then(|m| m.mutation) else {
        panic!("the rewritten body replaces the buffered one");
    };
    let value: serde_json::Value = serde_json::from_slice(&new_body).unwrap();
    assert_eq!(value["model"], "canary-v2");
    assert!(headers.contains(&("content-length".into(), new_body.len().to_string())));

    // The response is only observed: "continue" answers, usage still read.
    envoy.send(response_headers("200", "application/json", None)).await;
    envoy.next().await;
    envoy
        .send(response_body(
            br#"{"usage":{"prompt_tokens":4,"completion_tokens":1}}"#,
            true,
        ))
        .await;
    match envoy.next().await {
        processing_response::Response::ResponseBody(b) => {
            assert_eq!(b.response.unwrap(), CommonResponse::default())
        }
        other => panic!("expected a continue, got {other:?}"),
    }
    s.inflight_returns_to_zero().await;
    assert_eq!(s.last_decision().await.prompt_tokens, Some(4));
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn requests_without_a_body_go_to_any_ready_pod_and_trailers_end_a_body() {
    let s = setup("xp-get", 72, 2, &["--extproc-fallbacks", "1"]).await;
    let mut envoy = s.envoy().await;
    envoy.send(request_headers("/v1/models", None, true)).await;
    let answer = envoy.recv().await.unwrap().unwrap();
    let destination = destination_metadata(&answer);
    assert!([s.id(0), s.id(1)].contains(&destination));

    // HTTP/2 trailers end a body whose last chunk had no end_of_stream; one fallback follows the pick.
    let mut envoy = s.envoy().await;
    envoy.send(request_headers("/v1/completions", None, false)).await;
    envoy.send(request_body(br#"{"model":"qwq","#, false)).await;
    envoy.send(request_body(br#""prompt":"x"}"#, false)).await;
    envoy
        .send(message(processing_request::Request::RequestTrailers(
            HttpTrailers::default(),
        )))
        .await;
    let routed = envoy.read_answer().await.routed();
    let dest: Vec<&str> = routed.destination().split(',').collect();
    assert_eq!(dest.len(), 2, "{dest:?}");
    assert_ne!(dest[0], dest[1]);
    assert!(matches!(
        envoy.next().await,
        processing_response::Response::RequestTrailers(_)
    ));
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn protocol_violations_are_grpc_errors() {
    let s = setup("xp-violation", 73, 1, &[]).await;
    let mut envoy = s.envoy().await;
    envoy.send(response_body(b"{}", true)).await;
    let status = envoy.recv().await.unwrap_err();
    assert_eq!(status.code(), tonic::Code::FailedPrecondition, "{status:?}");

    let mut envoy = s.envoy().await;
    let mut headers = request_headers("/v1/completions", Some(2), false);
    headers.protocol_config = Some(ProtocolConfiguration {
        request_body_mode: BodySendMode::Streamed as i32,
        ..ProtocolConfiguration::default()
    });
    envoy.send(headers).await;
    assert_eq!(envoy.recv().await.unwrap_err().code(), tonic::Code::Unimplemented);
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn two_hundred_concurrent_streams_all_route_and_finish() {
    let s = setup("xp-200", 74, 3, &[]).await;
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..200 {
        let client = s.client.clone();
        tasks.spawn(async move {
            let mut envoy = Envoy::open(client).await;
            let body = format!(r#"{{"model":"qwq","prompt":"request {i} {}"}}"#, "y".repeat(i * 10));
            let routed = envoy
                .request("/v1/completions", body.as_bytes(), 100, None)
                .await
                .routed();
            let usage = r#"{"usage":{"prompt_tokens":1,"completion_tokens":1}}"#;
            envoy.respond("application/json", &[usage], None).await;
            routed.destination().to_owned()
        });
    }
    let mut per_pod = std::collections::HashMap::<String, usize>::new();
    while let Some(done) = tasks.join_next().await {
        *per_pod.entry(done.unwrap()).or_default() += 1;
    }
    assert_eq!(per_pod.values().sum::<usize>(), 200);
    s.inflight_returns_to_zero().await;
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_client_that_cancels_mid_stream_leaks_nothing() {
    let s = setup("xp-cancel", 75, 2, &[]).await;
    // Cancelled while the body is still arriving: nothing was routed.
    let envoy = s.envoy().await;
    envoy.send(request_headers("/v1/completions", Some(100), false)).await;
    envoy.send(request_body(br#"{"model":"qwq","#, false)).await;
    drop(envoy);

    // Cancelled after routing, while the response streams: the decision is finished as 499.
    let mut envoy = s.envoy().await;
    envoy
        .request(
            "/v1/completions",
            br#"{"model":"qwq","prompt":"cancel me"}"#,
            1 << 16,
            None,
        )
        .await
        .routed();
    envoy.send(response_headers("200", "text/event-stream", None)).await;
    envoy.next().await;
    envoy.send(response_body(b"data: {}\n\n", false)).await;
    envoy.next().await;
    assert_eq!(s.gw.director.inflight(), 1);
    drop(envoy);
    s.inflight_returns_to_zero().await;
    let d = &s.last_decision().await;
    assert_eq!(d.status, Some(200), "the status seen is kept");
    assert!(
        d.reason.contains("ext_proc stream ended before the response did"),
        "{}",
        d.reason
    );

    // And many at once.
    let mut envoys = Vec::new();
    for i in 0..50 {
        let mut envoy = s.envoy().await;
        let body = format!(r#"{{"model":"qwq","prompt":"c{i}"}}"#);
        envoy
            .request("/v1/completions", body.as_bytes(), 1 << 16, None)
            .await
            .routed();
        envoys.push(envoy);
    }
    assert_eq!(s.gw.director.inflight(), 50);
    drop(envoys);
    s.inflight_returns_to_zero().await;
    assert_eq!(s.last_decision().await.status, Some(499));
    s.gw.stop().await;
}

async fn channel(addr: std::net::SocketAddr) -> Channel {
    Channel::from_shared(format!("http://{addr}"))
        .unwrap()
        .connect()
        .await
        .unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn grpc_health_reports_liveness_and_readiness() {
    use tonic_health::pb::{HealthCheckRequest, health_check_response::ServingStatus, health_client::HealthClient};
    let s = setup("xp-health", 76, 1, &[]).await;
    for addr in [s.gw.health_addr, s.gw.extproc_addr] {
        let mut health = HealthClient::new(channel(addr).await);
        for service in ["liveness", "readiness", gateway::ext_proc::SERVICE_NAME, ""] {
            // The health service's own Watch stream announces every status change: no polling.
            let mut updates = health
                .watch(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner();
            let serving = async {
                while let Some(update) = updates.message().await.unwrap() {
                    if update.status == ServingStatus::Serving as i32 {
                        return;
                    }
                }
                panic!("{service:?} watch on {addr} ended before SERVING");
            };
            tokio::time::timeout(WAIT, serving)
                .await
                .unwrap_or_else(|_| panic!("{service:?} never SERVING on {addr}"));
        }
    }
    s.gw.stop().await;

    // A directory without a pool is synced but not ready.
    let dir = temp_dir("xp-health-empty");
    let gw = start_gateway(&dir, &[]).await;
    let health = HealthClient::new(channel(gw.health_addr).await);
    wait_synced(&gw).await;
    let check = |service: &'static str| {
        let mut health = health.clone();
        async move {
            health
                .check(HealthCheckRequest {
                    service: service.into(),
                })
                .await
                .unwrap()
                .into_inner()
                .status
        }
    };
    assert_eq!(check("liveness").await, ServingStatus::Serving as i32);
    assert_eq!(check("readiness").await, ServingStatus::NotServing as i32);
    assert_eq!(
        check(gateway::ext_proc::SERVICE_NAME).await,
        ServingStatus::NotServing as i32
    );
    gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pod_gauges_are_exported_for_the_dashboard() {
    let s = setup("xp-gauges", 77, 2, &[]).await;
    s.load(&[(3, 0.25), (0, 0.5)]).await;
    // One routed request with a response, so the per-model histograms and counters have a series.
    s.ask("/v1/completions", r#"{"model":"qwq","prompt":"x"}"#)
        .await
        .routed();
    let text = s.gw.director.recorder.metrics.encode();
    let dashboard = std::fs::read_to_string(concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/../../deploy/grafana/switchyard.json"
    ))
    .unwrap();
    for word in dashboard.split(|c: char| !(c.is_ascii_alphanumeric() || c == '_')) {
        if let Some(name) = word.strip_prefix("switchyard_").map(|_| word) {
            let family = ["_bucket", "_sum", "_count"]
                .iter()
                .find_map(|suffix| name.strip_suffix(suffix))
                .unwrap_or(name);
            assert!(
                text.contains(&format!("{family}{{")) || text.contains(&format!("{family} ")),
                "the dashboard queries {name}, which the gateway does not export"
            );
        }
    }
    let line = format!("switchyard_pod_queue_size{{endpoint=\"{}\"}} 3", s.id(0));
    assert!(text.contains(&line), "{line} missing from:\n{text}");
    let kv = format!("switchyard_pod_kv_cache_usage{{endpoint=\"{}\"}} 0.5", s.id(1));
    assert!(text.contains(&kv), "{kv} missing");
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_prompt_counts_in_its_pods_prefill_backlog_until_the_first_response_byte() {
    let s = setup("xp-backlog", 78, 2, &[]).await;
    s.load(&[(0, 0.1), (0, 0.1)]).await;
    let backlog_on = |d: &audit::Record, pod: &str| {
        d.candidates
            .iter()
            .find(|c| c.endpoint.as_str() == pod)
            .map(|c| c.pending_prefill_tokens)
    };

    // A: a 400-character prompt (100 tokens), routed and left waiting for its first byte.
    let mut first = s.envoy().await;
    let prompt = "y".repeat(400);
    let body = format!(r#"{{"model":"qwq","prompt":"{prompt}","stream":true}}"#);
    let a = first
        .request("/v1/completions", body.as_bytes(), 7, None)
        .await
        .routed();
    let a_pod = a.destination().to_owned();

    // B is decided while A waits: A's pod carries A's 100 tokens.
    let mut second = s.envoy().await;
    second
        .request("/v1/completions", br#"{"model":"qwq","prompt":"hi"}"#, 7, None)
        .await
        .routed();
    second.respond("application/json", &["{}", ""], None).await;
    let b = s.decision_while_one_stays_open().await;
    assert_eq!(backlog_on(&b, &a_pod), Some(100), "{:?}", b.candidates);

    // A's first byte arrives (the stream goes on): the backlog is gone, A still counts as in flight.
    first.send(response_headers("200", "text/event-stream", None)).await;
    first.next().await;
    first.send(response_body(b"data: {}\n\n", false)).await;
    first.next().await;
    let mut third = s.envoy().await;
    third
        .request("/v1/completions", br#"{"model":"qwq","prompt":"hi"}"#, 7, None)
        .await
        .routed();
    third.respond("application/json", &["{}", ""], None).await;
    let c = s.decision_while_one_stays_open().await;
    assert_eq!(backlog_on(&c, &a_pod), Some(0));
    let a_inflight = c
        .candidates
        .iter()
        .find(|cand| cand.endpoint.as_str() == a_pod)
        .map(|cand| cand.inflight);
    assert_eq!(a_inflight, Some(1));
    first.send(response_body(b"", true)).await;
    first.next().await;
    s.inflight_returns_to_zero().await;
    s.gw.stop().await;
}

/// Waits (bounded) until the gateway holds `n` buffered request bytes, woken by the budget's changes.
async fn buffered(gw: &gateway::Gateway, n: usize) {
    let budget = gw.front.budget();
    test_support::until(&mut budget.subscribe(), WAIT, &format!("{n} buffered bytes"), || {
        budget.used() == n
    })
    .await;
}

#[tokio::test]
async fn a_claimed_length_reserves_nothing_and_bodies_past_the_budget_or_idle_streams_are_ended() {
    let s = setup(
        "xp-budget",
        113,
        1,
        &["--extproc-request-idle-timeout=500ms", "--max-buffered-bytes=1048576"],
    )
    .await;
    // A body claimed at 16 MiB that sends one byte holds one byte, not the claim.
    let mut claim = s.envoy().await;
    claim
        .send(request_headers("/v1/completions", Some(16 << 20), false))
        .await;
    claim.send(request_body(b"{", false)).await;
    buffered(&s.gw, 1).await;

    // A body that would take the process past --max-buffered-bytes gets 503 at once.
    let mut big = s.envoy().await;
    big.send(request_headers("/v1/completions", Some(2 << 20), false)).await;
    big.send(request_body(&vec![b' '; 1 << 20], false)).await;
    let (status, body) = big.read_answer().await.immediate();
    assert_eq!(status, 503, "{body}");
    assert!(body.contains("too many request bytes"), "{body}");

    // The claim, silent past the request idle timeout, is ended and gives its byte back.
    let status = claim.recv().await.expect_err("an idle stream ends with an error");
    assert_eq!(status.code(), tonic::Code::DeadlineExceeded, "{status:?}");
    buffered(&s.gw, 0).await;
    s.gw.stop().await;
}

#[tokio::test]
async fn streams_past_the_limit_are_refused_with_resource_exhausted() {
    let s = setup("xp-streams", 114, 1, &["--extproc-max-streams=2"]).await;
    let (first, second) = (s.envoy().await, s.envoy().await);
    let (_tx, rx) = mpsc::channel::<ProcessingRequest>(1);
    let refused = s.client.clone().process(ReceiverStream::new(rx)).await;
    let status = refused.expect_err("a third stream while two are open");
    assert_eq!(status.code(), tonic::Code::ResourceExhausted, "{status:?}");
    drop((first, second));
    s.gw.stop().await;
}

/// Waits (bounded, on the health service's Watch stream) until `service` reports `status`.
async fn health_becomes(addr: std::net::SocketAddr, service: &str, status: i32) {
    use tonic_health::pb::{HealthCheckRequest, health_client::HealthClient};
    let mut updates = HealthClient::new(channel(addr).await)
        .watch(HealthCheckRequest {
            service: service.into(),
        })
        .await
        .unwrap()
        .into_inner();
    let reached = async {
        while let Some(update) = updates.message().await.unwrap() {
            if update.status == status {
                return;
            }
        }
        panic!("the {service:?} watch ended before status {status}");
    };
    tokio::time::timeout(WAIT, reached)
        .await
        .unwrap_or_else(|_| panic!("{service:?} never reached status {status}"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_no_pod_answering_requests_get_503_at_once_readiness_says_so_and_both_recover() {
    use tonic_health::pb::health_check_response::ServingStatus;
    let s = setup("xp-all-down", 115, 2, &[]).await;
    for pod in &s.pods {
        pod.state.lock().unwrap().down = true;
    }
    let mut scrapes = s.gw.director.metrics_store.subscribe();
    test_support::until(&mut scrapes, WAIT, "every pod unanswered", || {
        s.gw.director.none_answering()
    })
    .await;

    let (status, body) = s
        .ask("/v1/completions", r#"{"model":"qwq","prompt":"anyone?"}"#)
        .await
        .immediate();
    assert_eq!(status, 503, "{body}");
    assert!(
        body.contains("no ready endpoint: every pod's metrics scrape has failed"),
        "{body}"
    );
    assert_eq!(
        s.pods.iter().map(FakePod::received).sum::<usize>(),
        0,
        "no dead pod was tried"
    );
    let readyz = client().get(&format!("http://{}/readyz", s.gw.admin_addr)).await;
    assert_eq!(readyz.status, 503, "{}", readyz.body);
    health_becomes(s.gw.health_addr, "readiness", ServingStatus::NotServing as i32).await;

    for pod in &s.pods {
        pod.state.lock().unwrap().down = false;
    }
    test_support::until(&mut scrapes, WAIT, "a pod answering again", || {
        !s.gw.director.none_answering()
    })
    .await;
    health_becomes(s.gw.health_addr, "readiness", ServingStatus::Serving as i32).await;
    assert_eq!(
        client().get(&format!("http://{}/readyz", s.gw.admin_addr)).await.status,
        200
    );
    s.ask("/v1/completions", r#"{"model":"qwq","prompt":"back?"}"#)
        .await
        .routed();
    s.gw.stop().await;
}
