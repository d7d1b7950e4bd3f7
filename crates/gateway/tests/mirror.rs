//! Traffic mirroring end to end: a served pool and a mirror pool of fake pods on loopback, a real gateway, real
//! HTTP through the proxy, and Envoy's shadow copies through ext_proc.

mod common;

use std::{
    net::IpAddr,
    time::{Duration, Instant},
};

use api::{MIRROR_PERCENT_ANNOTATION, MIRROR_TARGET_ANNOTATION};
use common::*;
use gateway::telemetry::{MirrorLabels, MirrorSkip, MirrorSkipLabels, OutcomeLabels};
use scheduler::EndpointId;

const WAIT: Duration = Duration::from_secs(20);

struct Setup {
    gw: gateway::Gateway,
    primary: Vec<FakePod>,
    mirror: Vec<FakePod>,
    base: String,
    dir: std::path::PathBuf,
}

/// An InferenceModel of `pool` with the mirror annotations when `mirror` is `(target, percent)`.
fn model(
    object: &str,
    name: &str,
    criticality: &str,
    pool: &str,
    target: &str,
    mirror: Option<(&str, &str)>,
) -> String {
    let annotations = mirror
        .map(|(to, percent)| {
            format!(
                "  annotations:\n    {MIRROR_TARGET_ANNOTATION}: {to}\n    {MIRROR_PERCENT_ANNOTATION}: \"{percent}\"\n"
            )
        })
        .unwrap_or_default();
    format!(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: InferenceModel\nmetadata:\n  name: {object}\n\
         {annotations}spec:\n  modelName: {name}\n  criticality: {criticality}\n  poolRef:\n    name: {pool}\n\
         \x20 targetModels:\n  - name: {target}\n    weight: 100\n"
    )
}

/// The models every test starts from: `qwq` mirrors `percent` % to `qwq-next` (an InferenceModel of the mirror
/// pool that serves `qwq-next-32b`), `batch` is Sheddable and mirrors half, `plain` mirrors nothing. All three
/// send the client's copy to `qwq-32b`, so their answers are byte-identical.
fn models(percent: &str) -> String {
    [
        model("qwq", "qwq", "Critical", "pool", "qwq-32b", Some(("qwq-next", percent))),
        model(
            "batch",
            "batch",
            "Sheddable",
            "pool",
            "qwq-32b",
            Some(("qwq-next", "50")),
        ),
        model("plain", "plain", "Critical", "pool", "qwq-32b", None),
        model("qwq-next", "qwq-next", "Critical", "mirror-pool", "qwq-next-32b", None),
    ]
    .join("---\n")
}

fn pods(prefix: &str, app: &str, ips: &[IpAddr]) -> String {
    ips.iter()
        .enumerate()
        .map(|(i, ip)| {
            format!(
                "apiVersion: v1\nkind: Pod\nmetadata:\n  name: {prefix}-{i}\n  labels:\n    app: {app}\nstatus:\n  podIP: {ip}\n\
                 \x20 conditions:\n  - type: Ready\n    status: \"True\"\n"
            )
        })
        .collect::<Vec<_>>()
        .join("---\n")
}

async fn fleet(block: u8) -> (u16, Vec<FakePod>) {
    let (port, listeners) = bind_pods(block, 2).await;
    let mut pods = Vec::new();
    for listener in listeners {
        pods.push(serve_fake_pod(listener).await);
    }
    (port, pods)
}

/// Two pods in 127.0.`block`.0/24 serve `pool`, two in 127.0.`block+1`.0/24 serve `mirror-pool`.
async fn setup(name: &str, block: u8, percent: &str, extra: &[&str]) -> Setup {
    let (port, primary) = fleet(block).await;
    let (mirror_port, mirror) = fleet(block + 1).await;
    let dir = temp_dir(name);
    let ips = |pods: &[FakePod]| pods.iter().map(|p| p.addr.ip()).collect::<Vec<_>>();
    let mirror_pool = format!(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: InferencePool\nmetadata:\n  name: mirror-pool\n\
         spec:\n  targetPortNumber: {mirror_port}\n  selector:\n    app: mirror\n"
    );
    std::fs::write(dir.join("pools.yaml"), format!("{}---\n{mirror_pool}", pool_yaml(port))).unwrap();
    std::fs::write(dir.join("models.yaml"), models(percent)).unwrap();
    std::fs::write(
        dir.join("pods.yaml"),
        format!(
            "{}---\n{}",
            pods_yaml(&ips(&primary)),
            pods("mirror", "mirror", &ips(&mirror))
        ),
    )
    .unwrap();
    let mut args = vec!["--pool", "pool"];
    args.extend_from_slice(extra);
    let gw = start_gateway(&dir, &args).await;
    let setup = Setup {
        base: format!("http://{}", gw.proxy_addr.unwrap()),
        gw,
        primary,
        mirror,
        dir,
    };
    let ids: Vec<EndpointId> = setup
        .primary
        .iter()
        .map(|p| EndpointId::new(p.addr.to_string()))
        .collect();
    wait_scraped(&setup.gw, &ids).await;
    setup.settle(|m| m.waiting_queue == 0).await;
    setup
}

impl Setup {
    /// Waits until the gateway has fresh metrics of every mirror pod that satisfy `ok`.
    async fn settle(&self, ok: impl Fn(&scheduler::EndpointMetrics) -> bool) {
        let mut scrapes = self.gw.director.metrics_store.subscribe();
        test_support::until(&mut scrapes, WAIT, "mirror pool metrics to settle", || {
            self.mirror.iter().all(|pod| {
                let m = self
                    .gw
                    .director
                    .metrics_store
                    .get(&EndpointId::new(pod.addr.to_string()));
                ok(&m) && m.updated_at.is_some_and(|t| t.elapsed() < Duration::from_millis(100))
            })
        })
        .await;
    }

    fn mirrored(&self, model: &str, outcome: &'static str) -> u64 {
        self.gw
            .director
            .recorder
            .metrics
            .mirror_requests
            .get_or_create(&MirrorLabels {
                model: model.into(),
                mirror_target: "qwq-next-32b".into(),
                outcome,
            })
            .get()
    }

    fn skipped(&self, model: &str, reason: MirrorSkip) -> u64 {
        self.gw
            .director
            .recorder
            .metrics
            .mirror_skipped
            .get_or_create(&MirrorSkipLabels {
                model: model.into(),
                reason,
            })
            .get()
    }

    fn requests(&self, model: &str) -> u64 {
        self.gw
            .director
            .recorder
            .metrics
            .requests
            .get_or_create(&OutcomeLabels {
                model: model.into(),
                target_model: "qwq-32b".into(),
                outcome: "Routed".into(),
            })
            .get()
    }

    fn received(pods: &[FakePod]) -> Vec<serde_json::Value> {
        pods.iter()
            .flat_map(|p| p.state.lock().unwrap().bodies.clone())
            .collect()
    }

    /// Waits until no request or copy is in flight, so every decision is recorded.
    async fn quiet(&self) {
        wait_idle(&self.gw).await;
    }

    /// Sends `n` requests for `model`, `concurrency` at a time; returns every (status, body) in order.
    async fn send(&self, model: &str, n: usize, concurrency: usize, stream: bool) -> Vec<(u16, String)> {
        let url = format!("{}/v1/completions", self.base);
        let body = format!(r#"{{"model":"{model}","prompt":"mirror me","max_tokens":4,"stream":{stream}}}"#);
        let c = client();
        let mut replies = Vec::with_capacity(n);
        for batch in (0..n).collect::<Vec<_>>().chunks(concurrency) {
            let calls = batch.iter().map(|_| {
                let (c, url, body) = (c.clone(), url.clone(), body.clone());
                async move {
                    let reply = c.post(&url, body).await;
                    (reply.status, reply.body)
                }
            });
            replies.extend(futures::future::join_all(calls).await);
        }
        replies
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mirrors_the_configured_share_to_the_mirror_pool() {
    let s = setup("mirror-share", 90, "10", &[]).await;
    let snapshot = s.gw.director.datastore.snapshot();
    let route = snapshot.model("qwq").unwrap().mirror.clone().expect("qwq mirrors");
    assert_eq!(route.pool, "mirror-pool");
    assert_eq!(route.policy.target, "qwq-next");
    assert_eq!(route.endpoints.len(), 2, "the mirror pool's own pods");
    assert!(snapshot.model("plain").unwrap().mirror.is_none());

    let replies = s.send("qwq", 2000, 16, false).await;
    s.quiet().await;
    assert!(
        replies.iter().all(|(status, _)| *status == 200),
        "every client request succeeds"
    );
    assert!(
        replies.iter().all(|(_, body)| body == &replies[0].1),
        "client answers are untouched"
    );

    // The accumulator makes the share exact: every tenth request is due; a due copy is only ever skipped (and
    // counted) when the mirror pool looked saturated for a moment.
    let mirrored = s.mirrored("qwq", "ok");
    let skipped = [MirrorSkip::Saturated, MirrorSkip::Busy, MirrorSkip::NoEndpoint]
        .map(|r| s.skipped("qwq", r))
        .iter()
        .sum::<u64>();
    assert_eq!(mirrored + skipped, 200, "10 % of 2000 requests were due");
    assert!((160..=240).contains(&mirrored), "mirrored {mirrored}, want 200 ± 40");

    let copies = Setup::received(&s.mirror);
    assert_eq!(copies.len() as u64, mirrored, "the mirror pool got exactly the copies");
    assert!(
        copies
            .iter()
            .all(|b| b["model"] == "qwq-next-32b" && b["prompt"] == "mirror me")
    );
    let originals = Setup::received(&s.primary);
    assert_eq!(originals.len(), 2000);
    assert!(originals.iter().all(|b| b["model"] == "qwq-32b"));
    assert_eq!(s.requests("qwq"), 2000, "copies stay out of switchyard_requests_total");

    let decisions = s.gw.director.recorder.decisions.latest(1000);
    let copy = decisions
        .iter()
        .find(|d| d.mirror_of.is_some())
        .expect("a copy's decision");
    let original = copy.mirror_of.as_deref().unwrap();
    assert_eq!(copy.request_id, format!("{original}-mirror"));
    assert_eq!(
        (copy.model.as_str(), copy.target_model.as_str()),
        ("qwq", "qwq-next-32b")
    );
    assert_eq!(copy.pool, "mirror-pool");
    assert_eq!(copy.status, Some(200));
    assert_eq!(
        copy.completion_tokens,
        Some(1),
        "usage read from the discarded response"
    );
    assert!(copy.ttft_ms.is_some());
    let mirror_ports: Vec<String> = s.mirror.iter().map(|p| p.addr.to_string()).collect();
    assert!(
        mirror_ports
            .iter()
            .any(|p| Some(p.as_str()) == copy.endpoint.as_ref().map(|e| e.as_str()))
    );
    assert!(
        decisions
            .iter()
            .any(|d| d.request_id == original && d.mirror_of.is_none()),
        "the original's own decision"
    );

    let text = client().get(&format!("http://{}/metrics", s.gw.admin_addr)).await.body;
    assert!(
        text.contains(r#"switchyard_mirror_requests_total{model="qwq",mirror_target="qwq-next-32b",outcome="ok"}"#)
    );
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failing_or_hanging_mirror_never_changes_the_client_answer() {
    let s = setup(
        "mirror-failing",
        92,
        "100",
        &["--mirror-timeout", "3s", "--mirror-max-inflight", "4"],
    )
    .await;
    // The baseline: the same requests for a model without mirroring, which the pods answer identically.
    let plain_json = s.send("plain", 1, 1, false).await.remove(0);
    let plain_sse = s.send("plain", 1, 1, true).await.remove(0);
    assert_eq!(plain_json.0, 200);
    assert!(plain_sse.1.contains("data: [DONE]"));

    for pod in &s.mirror {
        pod.state.lock().unwrap().fail_status = Some(500);
    }
    for stream in [false, true] {
        let baseline = if stream { &plain_sse } else { &plain_json };
        for reply in s.send("qwq", 10, 2, stream).await {
            assert_eq!(&reply, baseline, "a mirror answering 500 is invisible to the client");
        }
    }
    s.quiet().await;
    // Every request was due; a copy only goes unsent when four were still out (counted as busy).
    let busy_before = s.skipped("qwq", MirrorSkip::Busy);
    assert_eq!(s.mirrored("qwq", "error") + busy_before, 20);
    assert!(s.mirrored("qwq", "error") >= 10, "most copies were sent");
    assert_eq!(s.mirrored("qwq", "ok"), 0);
    let failed = s.gw.director.recorder.decisions.latest(50);
    assert!(
        failed
            .iter()
            .filter(|d| d.mirror_of.is_some())
            .all(|d| d.status == Some(500) && d.outcome == scheduler::Outcome::Error)
    );

    // A hanging mirror pool: copies wait for the timeout, the client never does, and at most 4 copies are out.
    for pod in &s.mirror {
        let mut state = pod.state.lock().unwrap();
        (state.fail_status, state.hang) = (None, true);
    }
    let started = Instant::now();
    for reply in s.send("qwq", 10, 1, false).await {
        assert_eq!(reply, plain_json);
    }
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "client answers waited for the mirror: {:?}",
        started.elapsed()
    );
    assert_eq!(
        s.skipped("qwq", MirrorSkip::Busy) - busy_before,
        6,
        "4 copies in flight, the other 6 skipped"
    );
    s.quiet().await;
    assert_eq!(s.mirrored("qwq", "timeout"), 4);
    assert_eq!(s.requests("qwq"), 30);
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sheddable_requests_and_a_saturated_mirror_pool_are_never_mirrored() {
    let s = setup("mirror-skips", 94, "10", &[]).await;
    for (status, _) in s.send("batch", 100, 4, false).await {
        assert_eq!(status, 200);
    }
    assert_eq!(
        s.skipped("batch", MirrorSkip::Sheddable),
        50,
        "half were due, none sent"
    );

    for pod in &s.mirror {
        pod.set(10, 0.2);
    }
    s.settle(|m| m.waiting_queue == 10).await;
    for (status, _) in s.send("qwq", 100, 4, false).await {
        assert_eq!(status, 200);
    }
    s.quiet().await;
    assert_eq!(s.skipped("qwq", MirrorSkip::Saturated), 10);
    assert_eq!(Setup::received(&s.mirror).len(), 0, "the mirror pool got nothing");
    assert_eq!(s.mirrored("qwq", "ok") + s.mirrored("batch", "ok"), 0);
    s.gw.stop().await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn invalid_mirror_annotations_are_rejected_and_the_last_good_state_stays() {
    let bad = model("qwq", "qwq", "Critical", "pool", "qwq-32b", Some(("qwq-next", "ten")));
    let err = gateway::datastore::dir::parse_documents(&bad).unwrap_err();
    assert_eq!(
        err.field.as_deref(),
        Some("metadata.annotations[switchyard.dev/mirror-percent]")
    );
    assert!(
        err.message.contains("from 0 to 100") && err.message.contains("\"ten\""),
        "{err}"
    );
    let orphan = model("qwq", "qwq", "Critical", "pool", "qwq-32b", None).replace(
        "metadata:\n",
        &format!("metadata:\n  annotations:\n    {MIRROR_PERCENT_ANNOTATION}: \"5\"\n"),
    );
    let err = gateway::datastore::dir::parse_documents(&orphan).unwrap_err();
    assert!(err.message.contains(MIRROR_TARGET_ANNOTATION), "{err}");

    let s = setup("mirror-invalid", 96, "10", &[]).await;
    let before = s.gw.director.datastore.snapshot().model("qwq").unwrap().mirror.clone();
    assert_eq!(before.as_ref().map(|m| m.policy.fraction.millionths()), Some(100_000));
    std::fs::write(s.dir.join("models.yaml"), models("110")).unwrap();
    // A file written after the broken one: once the gateway serves it, it has also read (and rejected) the other.
    std::fs::write(
        s.dir.join("sentinel.yaml"),
        model("sentinel", "sentinel", "Critical", "pool", "qwq-32b", None),
    )
    .unwrap();
    let datastore = &s.gw.director.datastore;
    let mut snapshots = datastore.subscribe();
    test_support::until(&mut snapshots, WAIT, "the sentinel model", || {
        datastore.snapshot().model("sentinel").is_some()
    })
    .await;
    assert_eq!(s.gw.director.datastore.snapshot().model("qwq").unwrap().mirror, before);
    s.gw.stop().await;
}

/// Envoy's shadow copies through ext_proc: `-shadow` authority, the original's `x-request-id`.
mod shadow {
    use envoy_types::pb::envoy::{
        config::core::v3::{HeaderMap, HeaderValue},
        service::ext_proc::v3::{
            HttpBody, HttpHeaders, ProcessingRequest, ProcessingResponse, body_mutation,
            external_processor_client::ExternalProcessorClient, processing_request, processing_response,
        },
    };
    use tokio::sync::mpsc;
    use tokio_stream::wrappers::ReceiverStream;

    use super::*;

    fn headers(pairs: &[(&str, &str)]) -> ProcessingRequest {
        let headers = HeaderMap {
            headers: pairs
                .iter()
                .map(|(k, v)| HeaderValue {
                    key: k.to_string(),
                    raw_value: v.as_bytes().to_vec(),
                    ..HeaderValue::default()
                })
                .collect(),
        };
        ProcessingRequest {
            request: Some(processing_request::Request::RequestHeaders(HttpHeaders {
                headers: Some(headers),
                ..HttpHeaders::default()
            })),
            ..ProcessingRequest::default()
        }
    }

    fn body(bytes: &[u8]) -> ProcessingRequest {
        ProcessingRequest {
            request: Some(processing_request::Request::RequestBody(HttpBody {
                body: bytes.to_vec(),
                end_of_stream: true,
                ..HttpBody::default()
            })),
            ..ProcessingRequest::default()
        }
    }

    enum Answer {
        /// The headers the picker set and the body sent on.
        Routed(Vec<(String, String)>, serde_json::Value),
        Immediate(i32),
    }

    fn destination(headers: &[(String, String)]) -> &str {
        headers
            .iter()
            .find(|(k, _)| k == "x-gateway-destination-endpoint")
            .map(|(_, v)| v.as_str())
            .expect("destination header")
    }

    /// Plays one request (and, when routed, a 200 JSON response with usage) as Envoy would for `authority`.
    async fn exchange(s: &Setup, authority: &str, model: &str, extra: &[(&str, &str)]) -> Answer {
        let mut client = ExternalProcessorClient::connect(format!("http://{}", s.gw.extproc_addr))
            .await
            .unwrap();
        let (tx, rx) = mpsc::channel(16);
        let mut answers = client.process(ReceiverStream::new(rx)).await.unwrap().into_inner();
        let mut next = async || -> ProcessingResponse {
            tokio::time::timeout(WAIT, answers.message())
                .await
                .expect("picker answered")
                .unwrap()
                .expect("stream open")
        };
        let payload = format!(r#"{{"model":"{model}","prompt":"shadow me"}}"#);
        let len = payload.len().to_string();
        let mut pairs = vec![
            (":method", "POST"),
            (":path", "/v1/completions"),
            (":authority", authority),
            ("x-request-id", "orig-7"),
            ("content-length", len.as_str()),
        ];
        pairs.extend_from_slice(extra);
        tx.send(headers(&pairs)).await.unwrap();
        tx.send(body(payload.as_bytes())).await.unwrap();
        let first = next().await.response.unwrap();
        let set = match first {
            processing_response::Response::ImmediateResponse(r) => {
                return Answer::Immediate(r.status.map_or(0, |s| s.code));
            }
            processing_response::Response::RequestHeaders(h) => h
                .response
                .unwrap()
                .header_mutation
                .unwrap()
                .set_headers
                .into_iter()
                .filter_map(|o| o.header)
                .map(|h| (h.key, String::from_utf8(h.raw_value).unwrap()))
                .collect::<Vec<_>>(),
            _ => panic!("unexpected first answer"),
        };
        let mut sent = Vec::new();
        loop {
            let Some(processing_response::Response::RequestBody(b)) = next().await.response else {
                panic!("expected body chunks");
            };
            match b.response.and_then(|r| r.body_mutation).and_then(|m| m.mutation) {
                Some(body_mutation::Mutation::StreamedResponse(chunk)) => {
                    sent.extend_from_slice(&chunk.body);
                    if chunk.end_of_stream {
                        break;
                    }
                }
                _ => panic!("expected a streamed body"),
            }
        }
        let response_headers = ProcessingRequest {
            request: Some(processing_request::Request::ResponseHeaders(HttpHeaders {
                headers: Some(HeaderMap {
                    headers: [(":status", "200"), ("content-type", "application/json")]
                        .iter()
                        .map(|(k, v)| HeaderValue {
                            key: k.to_string(),
                            raw_value: v.as_bytes().to_vec(),
                            ..HeaderValue::default()
                        })
                        .collect(),
                }),
                ..HttpHeaders::default()
            })),
            ..ProcessingRequest::default()
        };
        tx.send(response_headers).await.unwrap();
        next().await;
        let usage = ProcessingRequest {
            request: Some(processing_request::Request::ResponseBody(HttpBody {
                body: br#"{"usage":{"prompt_tokens":3,"completion_tokens":2}}"#.to_vec(),
                end_of_stream: true,
                ..HttpBody::default()
            })),
            ..ProcessingRequest::default()
        };
        tx.send(usage).await.unwrap();
        next().await;
        Answer::Routed(set, serde_json::from_slice(&sent).unwrap())
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn envoy_shadow_copies_are_routed_to_the_mirror_target_and_recorded() {
        let s = setup("mirror-shadow", 98, "10", &[]).await;

        // The original: routed normally, no mirror_of.
        let Answer::Routed(set, sent) = exchange(&s, "gateway.example", "qwq", &[]).await else {
            panic!("the original is routed");
        };
        assert!(s.primary.iter().any(|p| p.addr.to_string() == destination(&set)));
        assert_eq!(sent["model"], "qwq-32b");
        let marked = set.iter().find(|(k, _)| k == gateway::routing::MODEL_HEADER);
        assert_eq!(
            marked.map(|(_, v)| v.as_str()),
            Some("qwq"),
            "the original names its model for its shadow"
        );

        // Envoy's shadow of it (older Envoy appends to the whole authority, newer before the port). Envoy copies
        // the body its router saw, which the picker already rewrote to the split's target.
        let header = [(gateway::routing::MODEL_HEADER, "qwq")];
        type Headers<'a> = &'a [(&'a str, &'a str)];
        let shadows: [(&str, &str, Headers<'_>); 3] = [
            ("gateway.example-shadow", "qwq", &[]),
            ("gateway.example-shadow:8080", "qwq", &[]),
            ("gateway.example-shadow", "qwq-32b", &header),
        ];
        for (authority, model, extra) in shadows {
            let Answer::Routed(set, sent) = exchange(&s, authority, model, extra).await else {
                panic!("a shadow copy is routed");
            };
            let mirror = destination(&set);
            assert!(
                s.mirror.iter().any(|p| p.addr.to_string() == mirror),
                "{mirror} is a mirror pod"
            );
            assert_eq!(sent["model"], "qwq-next-32b", "rewritten to the mirror target");
        }
        s.quiet().await;
        let decisions = s.gw.director.recorder.decisions.latest(4);
        assert!(decisions[..3].iter().all(|d| d.mirror_of.as_deref() == Some("orig-7")
            && d.request_id == "orig-7-mirror"
            && d.model == "qwq"
            && d.completion_tokens == Some(2)));
        assert_eq!(decisions[3].mirror_of, None);
        assert_eq!(s.mirrored("qwq", "ok"), 3);
        assert_eq!(s.requests("qwq"), 1, "shadows stay out of switchyard_requests_total");

        // A Sheddable model's shadow is refused, which Envoy discards like any shadow answer.
        let Answer::Immediate(status) = exchange(&s, "gateway.example-shadow", "batch", &[]).await else {
            panic!("a Sheddable shadow is refused");
        };
        assert_eq!(status, 429);
        assert_eq!(s.skipped("batch", MirrorSkip::Sheddable), 1);
        s.gw.stop().await;
    }
}
