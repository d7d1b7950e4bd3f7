//! The ext_proc state machine driven message by message, without gRPC: each test plays Envoy's side of one stream
//! and checks the answers, the flow and the decision the [`Director`] recorded.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use api::{MIRROR_PERCENT_ANNOTATION, MIRROR_TARGET_ANNOTATION};
use audit::Record as Decision;
use envoy_types::pb::envoy::{
    config::core::v3::{HeaderMap, HeaderValue},
    extensions::filters::http::ext_proc::v3::processing_mode::BodySendMode,
    service::ext_proc::v3::{
        HttpHeaders, ProcessingRequest, ProcessingResponse, ProtocolConfiguration, body_mutation, processing_request,
        processing_response,
    },
};
use scheduler::{EndpointId, EndpointMetrics, Outcome};
use tonic::Code;

use super::{Flow, Stream};
use crate::ext_proc::envoy::{
    destination_metadata, message, request_body, request_trailers, response_body, response_trailers, served_metadata,
    set_headers,
};
use crate::{
    datastore::{Datastore, Event, dir::parse_documents},
    decisions::DecisionLog,
    ext_proc::{ExtProcConfig, convert},
    routing::{Director, MODEL_HEADER, Recorder},
    scrape::MetricsStore,
    telemetry::Metrics,
};

/// The served pool's pods; none of them exists, nothing is dialled.
const PODS: [&str; 3] = ["10.0.0.1:8000", "10.0.0.2:8000", "10.0.0.3:8000"];
/// The pods of `mirror-pool`, where `mirrored`'s copies go.
const MIRROR_PODS: [&str; 2] = ["10.0.1.1:8000", "10.0.1.2:8000"];

/// Bodies above this are refused; small, so the 413 cases stay small.
const MAX_BODY: usize = 4096;

/// The only place a [`Director`] is built (its constructor is about to change): pool `pool` with [`PODS`] and
/// models `qwq` (→ `qwq-32b`), `canary` (→ `canary-v2`, all weight), `direct` (itself), `batch` (Sheddable) and
/// `mirrored` (→ `qwq-32b`, every request shadowed to `qwq-next` in `mirror-pool`). Every pod has idle metrics
/// that never go stale, so admission never depends on how long a test takes.
fn director() -> Arc<Director> {
    let model = |name: &str, criticality: &str, pool: &str, targets: &str, annotations: &str| {
        format!(
            "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: InferenceModel\nmetadata:\n  name: {name}\n\
             {annotations}spec:\n  modelName: {name}\n  criticality: {criticality}\n  poolRef:\n    name: {pool}\n\
             \x20 targetModels:\n{targets}"
        )
    };
    let pod = |name: &str, app: &str, endpoint: &str| {
        let ip = endpoint.split(':').next().unwrap_or_default();
        format!(
            "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {name}\n  labels:\n    app: {app}\nstatus:\n  podIP: {ip}\n\
             \x20 conditions:\n  - type: Ready\n    status: \"True\"\n"
        )
    };
    let pool = |name: &str, app: &str| {
        format!(
            "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: InferencePool\nmetadata:\n  name: {name}\n\
             spec:\n  targetPortNumber: 8000\n  selector:\n    app: {app}\n"
        )
    };
    let mirror =
        format!("  annotations:\n    {MIRROR_TARGET_ANNOTATION}: qwq-next\n    {MIRROR_PERCENT_ANNOTATION}: \"100\"\n");
    let mut docs = vec![
        pool("pool", "vllm"),
        pool("mirror-pool", "mirror"),
        model("qwq", "Critical", "pool", "  - name: qwq-32b\n    weight: 100\n", ""),
        model(
            "canary",
            "Critical",
            "pool",
            "  - name: canary-v1\n    weight: 0\n  - name: canary-v2\n    weight: 100\n",
            "",
        ),
        model("direct", "Critical", "pool", "  - name: direct\n    weight: 100\n", ""),
        model("batch", "Sheddable", "pool", "  - name: qwq-32b\n    weight: 100\n", ""),
        model(
            "mirrored",
            "Critical",
            "pool",
            "  - name: qwq-32b\n    weight: 100\n",
            &mirror,
        ),
        model(
            "qwq-next",
            "Critical",
            "mirror-pool",
            "  - name: qwq-next-32b\n    weight: 100\n",
            "",
        ),
    ];
    docs.extend(
        PODS.iter()
            .enumerate()
            .map(|(i, e)| pod(&format!("vllm-{i}"), "vllm", e)),
    );
    docs.extend(
        MIRROR_PODS
            .iter()
            .enumerate()
            .map(|(i, e)| pod(&format!("mirror-{i}"), "mirror", e)),
    );

    let datastore = Datastore::new(Some("pool".into()));
    let resources = parse_documents(&docs.join("---\n")).expect("fixture YAML parses");
    datastore.apply(resources.into_iter().map(Event::Apply));
    assert_eq!(datastore.snapshot().endpoints().len(), PODS.len(), "every pod is ready");

    let metrics_store = Arc::new(MetricsStore::default());
    let scraped_now = EndpointMetrics {
        updated_at: Some(Instant::now()),
        ..EndpointMetrics::default()
    };
    for id in datastore.snapshot().scrape_targets() {
        metrics_store.insert(id, scraped_now.clone());
    }
    // A day: the metrics above are "fresh" for the whole test run, however slow the machine.
    let config = scheduler::SchedulerConfig::from_yaml("saturation: { metricsStalenessMs: 86400000 }").unwrap();
    let scheduler = scheduler::Scheduler::new(&config).unwrap();
    let recorder = Recorder::new(Metrics::new(&metrics_store), DecisionLog::new(100), None);
    Arc::new(Director::new(datastore, metrics_store, scheduler, recorder))
}

/// TTFT is measured from `started`; a start this far back makes the recorded TTFT at least this large.
const STARTED_AGO: Duration = Duration::from_millis(250);

fn config() -> ExtProcConfig {
    ExtProcConfig {
        max_body_bytes: MAX_BODY,
        fallbacks: 0,
        budget: serve::Budget::new(usize::MAX),
        max_streams: 16,
        request_idle_timeout: Duration::from_secs(30),
        response_idle_timeout: Duration::from_secs(30),
    }
}

fn stream(director: &Arc<Director>) -> Stream {
    let config = ExtProcConfig {
        max_body_bytes: MAX_BODY,
        ..config()
    };
    Stream::new(director.clone(), Arc::new(config), Instant::now() - STARTED_AGO)
}

/// Feeds one message; returns the flow (or the gRPC status) and the answers.
fn feed(stream: &mut Stream, message: ProcessingRequest) -> (Result<Flow, tonic::Status>, Vec<ProcessingResponse>) {
    let mut out = Vec::new();
    let flow = stream.handle(message, &mut out);
    (flow, out)
}

/// Feeds one message that must be accepted; returns the answers.
fn ok(stream: &mut Stream, message: ProcessingRequest) -> Vec<ProcessingResponse> {
    let (flow, out) = feed(stream, message);
    assert_eq!(flow.expect("message accepted"), Flow::Continue);
    out
}

// === Envoy's messages ===

fn headers_message(pairs: &[(&str, &str)], end_of_stream: bool) -> ProcessingRequest {
    let headers = HeaderMap {
        headers: pairs
            .iter()
            .map(|(k, v)| HeaderValue {
                key: (*k).to_owned(),
                raw_value: v.as_bytes().to_vec(),
                ..HeaderValue::default()
            })
            .collect(),
    };
    message(processing_request::Request::RequestHeaders(HttpHeaders {
        headers: Some(headers),
        end_of_stream,
        ..HttpHeaders::default()
    }))
}

/// A POST to the completions API with a client request id, and the body length when known.
fn post(content_length: Option<usize>) -> ProcessingRequest {
    let length = content_length.map(|n| n.to_string());
    let mut pairs = vec![
        (":method", "POST"),
        (":path", "/v1/completions"),
        (":authority", "gateway"),
        ("x-request-id", "req-1"),
    ];
    if let Some(length) = &length {
        pairs.push(("content-length", length));
    }
    headers_message(&pairs, false)
}

fn with_modes(mut message: ProcessingRequest, request: BodySendMode, response: BodySendMode) -> ProcessingRequest {
    message.protocol_config = Some(ProtocolConfiguration {
        request_body_mode: request as i32,
        response_body_mode: response as i32,
        ..ProtocolConfiguration::default()
    });
    message
}

fn response_headers(status: &str) -> ProcessingRequest {
    let pairs = [(":status", status), ("content-type", "application/json")];
    let mut m = headers_message(&pairs, false);
    let Some(processing_request::Request::RequestHeaders(h)) = m.request.take() else {
        unreachable!()
    };
    m.request = Some(processing_request::Request::ResponseHeaders(h));
    m
}

fn body_of(model: &str) -> Vec<u8> {
    format!(r#"{{"model":"{model}","prompt":"Who are you?"}}"#).into_bytes()
}

// === the picker's answers ===

/// The header answer of a routed request: the headers it sets and the destination in its dynamic metadata.
fn routed_headers(response: &ProcessingResponse) -> (Vec<(String, String)>, String, bool) {
    let Some(processing_response::Response::RequestHeaders(h)) = &response.response else {
        panic!("expected a request-headers answer, got {response:?}");
    };
    let common = h.response.clone().unwrap_or_default();
    (
        set_headers(&common),
        destination_metadata(response),
        common.clear_route_cache,
    )
}

fn header<'a>(headers: &'a [(String, String)], name: &str) -> Option<&'a str> {
    headers.iter().find(|(k, _)| k == name).map(|(_, v)| v.as_str())
}

/// A streamed body chunk (request or response): its bytes and end-of-stream flag.
fn streamed(response: &ProcessingResponse) -> (Vec<u8>, bool) {
    let body = match &response.response {
        Some(processing_response::Response::RequestBody(b) | processing_response::Response::ResponseBody(b)) => b,
        other => panic!("expected a body answer, got {other:?}"),
    };
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

/// The status and body of a local reply.
fn immediate(response: &ProcessingResponse) -> (i32, String) {
    match &response.response {
        Some(processing_response::Response::ImmediateResponse(r)) => (
            r.status.as_ref().map_or(0, |s| s.code),
            String::from_utf8_lossy(&r.body).into_owned(),
        ),
        other => panic!("expected an immediate response, got {other:?}"),
    }
}

/// The headers and body answers of a FULL_DUPLEX_STREAMED request routed in one go: (set headers, destination,
/// body sent back).
fn routed_full_duplex(out: &[ProcessingResponse]) -> (Vec<(String, String)>, String, serde_json::Value) {
    let (headers, destination, clear_route_cache) = routed_headers(&out[0]);
    assert!(
        clear_route_cache,
        "the route must be recomputed for the new destination"
    );
    assert_eq!(header(&headers, convert::DESTINATION_KEY), Some(destination.as_str()));
    let mut body = Vec::new();
    for (i, chunk) in out[1..].iter().enumerate() {
        let (bytes, end) = streamed(chunk);
        assert_eq!(end, i + 2 == out.len(), "only the last chunk ends the body");
        body.extend_from_slice(&bytes);
    }
    let length = body.len().to_string();
    assert_eq!(header(&headers, "content-length"), Some(length.as_str()));
    (
        headers,
        destination,
        serde_json::from_slice(&body).expect("body is JSON"),
    )
}

fn last_decision(director: &Director) -> Decision {
    director
        .recorder
        .decisions
        .latest(1)
        .pop()
        .expect("a decision was recorded")
}

// === request side ===

#[test]
fn a_request_without_a_body_goes_to_any_ready_pod() {
    let director = director();
    let get = |id: Option<&str>| {
        let mut pairs = vec![(":method", "GET"), (":path", "/v1/models"), (":authority", "gateway")];
        pairs.extend(id.map(|id| ("x-request-id", id)));
        headers_message(&pairs, true)
    };

    let mut s = stream(&director);
    let out = ok(&mut s, get(Some("client-id")));
    assert_eq!(out.len(), 1, "{out:?}");
    let (headers, destination, _) = routed_headers(&out[0]);
    assert!(PODS.contains(&destination.as_str()), "{destination}");
    assert_eq!(headers, [(convert::DESTINATION_KEY.to_owned(), destination)]);

    // Without a client id the picker makes one up and tells the upstream.
    let mut s = stream(&director);
    let (headers, _, _) = routed_headers(&ok(&mut s, get(None))[0]);
    let generated = header(&headers, "x-request-id").expect("a generated request id");
    assert!(!generated.is_empty());
    assert_eq!(director.inflight(), 0, "a body-less request is not scheduled");
}

#[test]
fn a_full_duplex_body_in_chunks_is_routed_once_complete_and_sent_back_rewritten() {
    let director = director();
    let mut s = stream(&director);
    let body = body_of("canary");
    let (first, rest) = body.split_at(10);
    let (second, third) = rest.split_at(10);

    assert_eq!(
        ok(&mut s, post(Some(body.len()))),
        [],
        "the header answer waits for the body"
    );
    assert_eq!(ok(&mut s, request_body(first, false)), []);
    assert_eq!(ok(&mut s, request_body(second, false)), []);
    let out = ok(&mut s, request_body(third, true));

    let (headers, destination, sent) = routed_full_duplex(&out);
    assert!(PODS.contains(&destination.as_str()), "{destination}");
    assert_eq!(header(&headers, "x-request-id"), None, "the client's id is kept");
    assert_eq!(header(&headers, MODEL_HEADER), None, "canary does not mirror");
    assert_eq!(sent["model"], "canary-v2");
    assert_eq!(sent["prompt"], "Who are you?");
    assert_eq!(director.inflight(), 1);
}

#[test]
fn a_body_larger_than_one_envoy_chunk_goes_back_in_several() {
    let director = director();
    let config = ExtProcConfig {
        max_body_bytes: 1 << 20,
        ..config()
    };
    let mut s = Stream::new(director.clone(), Arc::new(config), Instant::now());
    let prompt = "x".repeat(convert::BODY_CHUNK_BYTES + 1000);
    let body = format!(r#"{{"model":"direct","prompt":"{prompt}"}}"#).into_bytes();
    ok(&mut s, post(Some(body.len())));
    let out = ok(&mut s, request_body(&body, true));
    assert_eq!(out.len(), 3, "headers and two body chunks");
    assert_eq!(streamed(&out[1]).0.len(), convert::BODY_CHUNK_BYTES);
    let (_, _, sent) = routed_full_duplex(&out);
    assert_eq!(sent["prompt"].as_str().map(str::len), Some(prompt.len()));
}

#[test]
fn buffered_mode_answers_the_headers_at_once_and_routes_on_the_body() {
    let director = director();
    let mut s = stream(&director);
    let body = body_of("canary");
    let headers = with_modes(post(Some(body.len())), BodySendMode::Buffered, BodySendMode::Buffered);
    assert_eq!(ok(&mut s, headers), [convert::request_headers_continue()]);

    // The one buffered message is the whole body, whatever its flag says.
    let out = ok(&mut s, request_body(&body, false));
    assert_eq!(out.len(), 1, "{out:?}");
    let destination = destination_metadata(&out[0]);
    let Some(processing_response::Response::RequestBody(answer)) = &out[0].response else {
        panic!("the decision rides on the body answer: {out:?}");
    };
    let common = answer.response.clone().unwrap_or_default();
    assert!(common.clear_route_cache);
    let headers = set_headers(&common);
    assert_eq!(header(&headers, convert::DESTINATION_KEY), Some(destination.as_str()));
    let Some(body_mutation::Mutation::Body(new_body)) = common.body_mutation.and_then(|m| m.mutation) else {
        panic!("a rewritten body replaces the buffered one");
    };
    let sent: serde_json::Value = serde_json::from_slice(&new_body).unwrap();
    assert_eq!(sent["model"], "canary-v2");
    assert_eq!(
        header(&headers, "content-length"),
        Some(new_body.len().to_string().as_str())
    );

    // A body the split leaves alone is not replaced, so its length is not set either.
    let mut s = stream(&director);
    let body = body_of("direct");
    ok(
        &mut s,
        with_modes(post(Some(body.len())), BodySendMode::Buffered, BodySendMode::None),
    );
    let out = ok(&mut s, request_body(&body, true));
    let Some(processing_response::Response::RequestBody(answer)) = &out[0].response else {
        panic!("expected the body answer: {out:?}");
    };
    let common = answer.response.clone().unwrap_or_default();
    assert_eq!(common.body_mutation, None);
    assert_eq!(header(&set_headers(&common), "content-length"), None);
}

#[test]
fn request_trailers_end_a_body_whose_last_chunk_did_not() {
    let director = director();
    let mut s = stream(&director);
    ok(&mut s, post(None));
    assert_eq!(ok(&mut s, request_body(br#"{"model":"qwq","#, false)), []);
    assert_eq!(ok(&mut s, request_body(br#""prompt":"x"}"#, false)), []);
    let out = ok(&mut s, request_trailers());
    let (_, destination, sent) = routed_full_duplex(&out[..out.len() - 1]);
    assert!(PODS.contains(&destination.as_str()), "{destination}");
    assert_eq!(sent["model"], "qwq-32b");
    assert_eq!(out.last(), Some(&convert::request_trailers()));
}

#[test]
fn messages_out_of_order_fail_the_stream() {
    let director = director();
    let cases: [(&str, Vec<ProcessingRequest>); 5] = [
        ("response body first", vec![response_body(b"{}", true)]),
        ("response headers first", vec![response_headers("200")]),
        ("request body first", vec![request_body(b"{}", true)]),
        ("trailers first", vec![request_trailers()]),
        ("headers twice", vec![post(Some(2)), post(Some(2))]),
    ];
    for (case, mut messages) in cases {
        let mut s = stream(&director);
        let last = messages.pop().unwrap();
        for message in messages {
            ok(&mut s, message);
        }
        let (flow, out) = feed(&mut s, last);
        let status = flow.expect_err(case);
        assert_eq!(status.code(), Code::FailedPrecondition, "{case}: {status:?}");
        assert!(status.message().contains("protocol violation"), "{case}: {status:?}");
        assert_eq!(out, [], "{case}");
    }
}

#[test]
fn body_modes_that_cannot_route_on_the_whole_body_are_unimplemented() {
    let director = director();
    for mode in [BodySendMode::Streamed, BodySendMode::BufferedPartial] {
        let mut s = stream(&director);
        let (flow, out) = feed(&mut s, with_modes(post(Some(2)), mode, BodySendMode::None));
        let status = flow.expect_err("unsupported mode");
        assert_eq!(status.code(), Code::Unimplemented, "{mode:?}: {status:?}");
        assert!(
            status.message().contains("FULL_DUPLEX_STREAMED or BUFFERED"),
            "{status:?}"
        );
        assert_eq!(out, []);
    }
}

#[test]
fn an_oversize_body_gets_413_at_once_and_closes_the_stream() {
    let director = director();
    // Announced by Content-Length: refused on the headers.
    let mut s = stream(&director);
    let (flow, out) = feed(&mut s, post(Some(MAX_BODY + 1)));
    assert_eq!(flow.unwrap(), Flow::Close);
    let (status, body) = immediate(&out[0]);
    assert_eq!(status, 413);
    assert!(body.starts_with("inference error: "), "{body}");

    // Not announced: refused on the chunk that crosses the limit.
    let mut s = stream(&director);
    ok(&mut s, post(None));
    ok(&mut s, request_body(&[b' '; MAX_BODY / 2], false));
    let (flow, out) = feed(&mut s, request_body(&[b' '; MAX_BODY], false));
    assert_eq!(flow.unwrap(), Flow::Close);
    assert_eq!(immediate(&out[0]).0, 413);
    assert_eq!(
        director.recorder.decisions.latest(10).len(),
        0,
        "the director never saw either request"
    );
}

#[test]
fn an_unknown_model_gets_404_at_once_and_is_recorded() {
    let director = director();
    let mut s = stream(&director);
    let body = body_of("nope");
    ok(&mut s, post(Some(body.len())));
    let (flow, out) = feed(&mut s, request_body(&body, true));
    assert_eq!(flow.unwrap(), Flow::Close);
    assert_eq!(out.len(), 1, "{out:?}");
    let (status, message) = immediate(&out[0]);
    assert_eq!(status, 404);
    assert!(message.contains("nope"), "{message}");
    let decision = last_decision(&director);
    assert_eq!(decision.request_id, "req-1");
    assert_eq!(decision.outcome, Outcome::NotFound404);
    assert_eq!(decision.status, Some(404));
    assert_eq!(director.inflight(), 0);
}

#[test]
fn the_subset_hint_restricts_the_pods() {
    let director = director();
    for _ in 0..10 {
        let mut s = stream(&director);
        let body = body_of("qwq");
        let mut headers = post(Some(body.len()));
        headers.metadata_context = Some(convert::subset_metadata(&[PODS[2]]));
        ok(&mut s, headers);
        let (_, destination, _) = routed_full_duplex(&ok(&mut s, request_body(&body, true)));
        assert_eq!(destination, PODS[2]);
    }

    // A subset naming no pod of the pool leaves nothing to route to.
    let mut s = stream(&director);
    let body = body_of("qwq");
    let mut headers = post(Some(body.len()));
    headers.metadata_context = Some(convert::subset_metadata(&["10.9.9.9:8000"]));
    ok(&mut s, headers);
    let (flow, out) = feed(&mut s, request_body(&body, true));
    assert_eq!(flow.unwrap(), Flow::Close);
    assert_eq!(immediate(&out[0]).0, 503);
}

#[test]
fn a_shadow_authority_routes_a_mirrored_copy() {
    let director = director();
    // The original names its model for Envoy's shadow of it.
    let mut s = stream(&director);
    let body = body_of("mirrored");
    ok(&mut s, post(Some(body.len())));
    let (headers, destination, sent) = routed_full_duplex(&ok(&mut s, request_body(&body, true)));
    assert!(PODS.contains(&destination.as_str()), "{destination}");
    assert_eq!(header(&headers, MODEL_HEADER), Some("mirrored"));
    assert_eq!(sent["model"], "qwq-32b");

    // The shadow: Envoy appended `-shadow` to the host and copied the body its router saw, already rewritten.
    let mut shadow = stream(&director);
    let body = body_of("qwq-32b");
    let length = body.len().to_string();
    let pairs = [
        (":method", "POST"),
        (":path", "/v1/completions"),
        (":authority", "gateway-shadow:8080"),
        ("x-request-id", "req-1"),
        ("content-length", &length),
        (MODEL_HEADER, "mirrored"),
    ];
    ok(&mut shadow, headers_message(&pairs, false));
    let (headers, destination, sent) = routed_full_duplex(&ok(&mut shadow, request_body(&body, true)));
    assert!(MIRROR_PODS.contains(&destination.as_str()), "{destination}");
    assert_eq!(header(&headers, MODEL_HEADER), None, "a shadow is not shadowed again");
    assert_eq!(sent["model"], "qwq-next-32b");
    ok(&mut shadow, response_headers("200"));
    ok(&mut shadow, response_body(b"{}", true));

    let decision = last_decision(&director);
    assert_eq!(decision.mirror_of.as_deref(), Some("req-1"));
    assert_eq!(decision.request_id, "req-1-mirror");
    assert_eq!(decision.model, "mirrored");
    assert_eq!(decision.target_model, "qwq-next-32b");
    assert_eq!(decision.status, Some(200));
}

// === response side ===

/// A stream whose request for `model` was routed; returns it with its destination.
fn routed_stream(director: &Arc<Director>, model: &str) -> (Stream, String) {
    let mut s = stream(director);
    let body = body_of(model);
    ok(&mut s, post(Some(body.len())));
    let (_, destination, _) = routed_full_duplex(&ok(&mut s, request_body(&body, true)));
    (s, destination)
}

#[test]
fn the_response_body_is_echoed_and_its_end_completes_the_decision() {
    let director = director();
    let (mut s, destination) = routed_stream(&director, "qwq");
    assert_eq!(
        ok(&mut s, response_headers("200")),
        [convert::response_headers_continue()]
    );
    let first = br#"{"choices":[{"text":"hi"}],"#;
    let last = br#""usage":{"prompt_tokens":4,"completion_tokens":1}}"#;
    let out = ok(&mut s, response_body(first, false));
    assert_eq!(streamed(&out[0]), (first.to_vec(), false));
    assert_eq!(
        director.recorder.decisions.latest(1).len(),
        0,
        "not finished before the end of the body"
    );
    let out = ok(&mut s, response_body(last, true));
    assert_eq!(streamed(&out[0]), (last.to_vec(), true));

    let decision = last_decision(&director);
    assert_eq!(decision.request_id, "req-1");
    assert_eq!(decision.outcome, Outcome::Routed);
    assert_eq!(
        decision.endpoint.as_ref().map(EndpointId::as_str),
        Some(destination.as_str())
    );
    assert_eq!(decision.status, Some(200));
    let ttft = decision.ttft_ms.expect("ttft recorded");
    assert!(
        ttft >= STARTED_AGO.as_secs_f64() * 1e3,
        "measured from the stream's start: {ttft}"
    );
    assert_eq!((decision.prompt_tokens, decision.completion_tokens), (Some(4), Some(1)));
    assert_eq!(director.inflight(), 0);

    // Completed once: the stream ending afterwards records nothing more.
    drop(s);
    assert_eq!(director.recorder.decisions.latest(10).len(), 1);
}

#[test]
fn response_trailers_complete_the_decision_and_a_served_fallback_is_recorded() {
    let director = director();
    let (mut s, destination) = routed_stream(&director, "qwq");
    let fallback = PODS.iter().find(|p| **p != destination).unwrap();
    let mut headers = response_headers("503");
    // Envoy reports the host that actually served the request in the response's metadata.
    headers.metadata_context = Some(served_metadata(fallback));
    ok(&mut s, headers);
    ok(&mut s, response_body(b"upstream overloaded", false));
    assert_eq!(ok(&mut s, response_trailers()), [convert::response_trailers()]);

    let decision = last_decision(&director);
    assert_eq!(decision.status, Some(503));
    assert_eq!(decision.outcome, Outcome::Error);
    assert_eq!(decision.endpoint.as_ref().map(EndpointId::as_str), Some(*fallback));
    assert!(decision.reason.contains("served by fallback"), "{}", decision.reason);
    assert_eq!(director.inflight(), 0);
}

#[test]
fn a_non_streamed_response_body_is_answered_with_continue() {
    let director = director();
    let mut s = stream(&director);
    let body = body_of("qwq");
    ok(
        &mut s,
        with_modes(
            post(Some(body.len())),
            BodySendMode::FullDuplexStreamed,
            BodySendMode::Buffered,
        ),
    );
    ok(&mut s, request_body(&body, true));
    ok(&mut s, response_headers("200"));
    let usage = br#"{"usage":{"prompt_tokens":7,"completion_tokens":2}}"#;
    assert_eq!(
        ok(&mut s, response_body(usage, true)),
        [convert::response_body_continue()]
    );
    assert_eq!(
        last_decision(&director).completion_tokens,
        Some(2),
        "the usage is still read"
    );
}

#[test]
fn a_stream_dropped_mid_response_still_finishes_its_decision() {
    let director = director();
    // Gone before the response headers: recorded as 499, like a client that went away.
    let (s, _) = routed_stream(&director, "qwq");
    assert_eq!(director.inflight(), 1);
    drop(s);
    let decision = last_decision(&director);
    assert_eq!(decision.status, Some(499));
    assert_eq!(decision.outcome, Outcome::Routed, "not a server error");
    assert!(
        decision
            .reason
            .ends_with("; ext_proc stream ended before the response did"),
        "{}",
        decision.reason
    );
    assert_eq!(decision.ttft_ms, None);
    assert_eq!(director.inflight(), 0);

    // Gone after the headers and a first chunk: the status the pod sent is kept.
    let (mut s, _) = routed_stream(&director, "qwq");
    ok(&mut s, response_headers("200"));
    ok(&mut s, response_body(b"data: {}\n\n", false));
    drop(s);
    let decision = last_decision(&director);
    assert_eq!(decision.status, Some(200));
    assert!(decision.ttft_ms.is_some_and(|t| t >= STARTED_AGO.as_secs_f64() * 1e3));
    assert!(
        decision.reason.contains("ended before the response did"),
        "{}",
        decision.reason
    );
    assert_eq!(director.inflight(), 0);
}

// === Fuzzing (see `crate::fuzz`) ===

/// One message Envoy might send, in any order.
#[derive(Debug, Clone)]
enum Op {
    Headers {
        path: &'static str,
        method: &'static str,
        authority: &'static str,
        length: Option<String>,
        end: bool,
        modes: Option<(i32, i32)>,
    },
    Body(Vec<u8>, bool),
    Trailers,
    ResponseHeaders(&'static str),
    ResponseBody(Vec<u8>, bool),
    ResponseTrailers,
}

fn op() -> impl proptest::strategy::Strategy<Value = Op> {
    use proptest::prelude::*;
    let headers = (
        prop::sample::select(&["/v1/completions", "/v1/chat/completions", "/v1/models", "/x", ""][..]),
        prop::sample::select(&["POST", "GET", ""][..]),
        prop::sample::select(&["gateway", "gateway-shadow", ""][..]),
        proptest::option::of(prop_oneof!["[0-9]{1,4}", "[0-9]{8,24}", ".{0,6}"]),
        any::<bool>(),
        proptest::option::of((0..6i32, 0..6i32)),
    )
        .prop_map(|(path, method, authority, length, end, modes)| Op::Headers {
            path,
            method,
            authority,
            length,
            end,
            modes,
        });
    prop_oneof![
        headers,
        (crate::fuzz::request_bytes(), any::<bool>()).prop_map(|(b, end)| Op::Body(b, end)),
        Just(Op::Trailers),
        prop::sample::select(&["200", "500", "abc", ""][..]).prop_map(Op::ResponseHeaders),
        (crate::fuzz::response_bytes(), any::<bool>()).prop_map(|(b, end)| Op::ResponseBody(b, end)),
        Just(Op::ResponseTrailers),
    ]
}

fn envoy_message(op: &Op) -> ProcessingRequest {
    match op {
        Op::Headers {
            path,
            method,
            authority,
            length,
            end,
            modes,
        } => {
            let mut pairs = vec![
                (":path", *path),
                (":method", *method),
                (":authority", *authority),
                ("x-request-id", "fuzz"),
            ];
            if let Some(length) = length {
                pairs.push(("content-length", length.as_str()));
            }
            let mut m = headers_message(&pairs, *end);
            if let Some((request, response)) = modes {
                m.protocol_config = Some(ProtocolConfiguration {
                    request_body_mode: *request,
                    response_body_mode: *response,
                    ..ProtocolConfiguration::default()
                });
            }
            m
        }
        Op::Body(bytes, end) => request_body(bytes, *end),
        Op::Trailers => request_trailers(),
        Op::ResponseHeaders(status) => response_headers(status),
        Op::ResponseBody(bytes, end) => response_body(bytes, *end),
        Op::ResponseTrailers => response_trailers(),
    }
}

#[test]
fn fuzz_ext_proc_stream_state_machine() {
    use proptest::prelude::*;
    let report = crate::fuzz::Report::new("ext_proc stream state machine");
    let director = director();
    proptest!(crate::fuzz::config(), |(ops in prop::collection::vec(op(), 0..10))| {
        report.case();
        {
            let mut s = stream(&director);
            for op in &ops {
                let (flow, _) = feed(&mut s, envoy_message(op));
                // Envoy stops sending once the picker closed the stream or failed it.
                if !matches!(flow, Ok(Flow::Continue)) {
                    break;
                }
            }
        }
        // However the stream went, dropping it finished whatever it had started.
        prop_assert_eq!(director.inflight(), 0);
    });
}
