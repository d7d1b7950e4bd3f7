//! Property-based fuzzing of what a client or a model server controls: the OpenAI body parser, the usage/SSE
//! extractor and the Prometheus parser here, the ext_proc state machine beside its other tests
//! (`ext_proc::stream::tests::fuzz_*`). Each takes arbitrary bytes and grammar-shaped inputs, and must neither panic
//! nor break its own invariants.
//!
//! `cargo test` runs each with [`DEFAULT_CASES`] cases; `cargo xtask fuzz` runs them in release with
//! `SWITCHYARD_FUZZ_CASES` (10 million by default) and prints cases per second. Not coverage-guided (cargo-fuzz needs
//! a nightly toolchain this project does not use); the grammars stand in for the guidance.

use proptest::{
    prelude::*,
    test_runner::{Config, FileFailurePersistence},
};

use crate::{
    openai::{ApiKind, parse_request},
    scrape::{extract::extract, parse::parse},
    usage::UsageObserver,
};

/// Cases per target in an ordinary test run.
pub(crate) const DEFAULT_CASES: u32 = 2_000;

/// The proptest configuration of every fuzz target: `SWITCHYARD_FUZZ_CASES` cases (else [`DEFAULT_CASES`]), no
/// failure files written into the source tree.
pub(crate) fn config() -> Config {
    let cases = std::env::var("SWITCHYARD_FUZZ_CASES")
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(DEFAULT_CASES);
    Config {
        cases,
        failure_persistence: Some(Box::new(FileFailurePersistence::Off)),
        ..Config::default()
    }
}

/// Prints how many cases a target ran and how fast, for `cargo xtask fuzz`'s report.
pub(crate) struct Report {
    target: &'static str,
    started: std::time::Instant,
    cases: std::sync::atomic::AtomicU64,
}

impl Report {
    pub(crate) fn new(target: &'static str) -> Report {
        Report {
            target,
            started: std::time::Instant::now(),
            cases: std::sync::atomic::AtomicU64::new(0),
        }
    }

    pub(crate) fn case(&self) {
        self.cases.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
    }
}

impl Drop for Report {
    fn drop(&mut self) {
        let cases = self.cases.load(std::sync::atomic::Ordering::Relaxed);
        let secs = self.started.elapsed().as_secs_f64();
        println!(
            "fuzz {}: {cases} cases in {secs:.1} s ({:.0} per second), no failure",
            self.target,
            cases as f64 / secs.max(1e-9)
        );
    }
}

/// A JSON value of bounded depth whose strings and keys are drawn from `words`: shaped like requests, so the parser
/// gets past `serde_json` into its own checks.
fn json_value(words: &'static [&'static str]) -> impl Strategy<Value = serde_json::Value> {
    let leaf = prop_oneof![
        Just(serde_json::Value::Null),
        any::<bool>().prop_map(serde_json::Value::Bool),
        any::<i64>().prop_map(serde_json::Value::from),
        any::<f64>()
            .prop_map(|f| serde_json::Number::from_f64(f).map_or(serde_json::Value::Null, serde_json::Value::Number)),
        prop::sample::select(words).prop_map(|w| serde_json::Value::String(w.to_owned())),
        ".{0,40}".prop_map(serde_json::Value::String),
    ];
    leaf.prop_recursive(4, 48, 6, move |inner| {
        prop_oneof![
            prop::collection::vec(inner.clone(), 0..6).prop_map(serde_json::Value::Array),
            prop::collection::vec((prop::sample::select(words), inner), 0..6).prop_map(|pairs| {
                serde_json::Value::Object(pairs.into_iter().map(|(k, v)| (k.to_owned(), v)).collect())
            }),
        ]
    })
}

const REQUEST_WORDS: &[&str] = &[
    "model",
    "prompt",
    "messages",
    "role",
    "content",
    "user",
    "system",
    "text",
    "type",
    "image_url",
    "stream",
    "max_tokens",
    "qwq",
    "",
    "\u{0}",
    "é",
    "🦀",
    "0",
    "-1",
    "1e309",
];

/// Bytes: arbitrary, or a request-shaped JSON document, or such a document cut or corrupted at one byte.
pub(crate) fn request_bytes() -> impl Strategy<Value = Vec<u8>> {
    let shaped = || json_value(REQUEST_WORDS).prop_map(|v| v.to_string().into_bytes());
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        shaped(),
        (shaped(), any::<prop::sample::Index>(), any::<u8>()).prop_map(|(mut bytes, at, byte)| {
            if !bytes.is_empty() {
                let i = at.index(bytes.len());
                if byte % 2 == 0 {
                    bytes.truncate(i);
                } else {
                    bytes[i] = byte;
                }
            }
            bytes
        }),
    ]
}

const SSE_WORDS: &[&str] = &[
    "usage",
    "prompt_tokens",
    "completion_tokens",
    "total_tokens",
    "prompt_tokens_details",
    "cached_tokens",
    "choices",
    "data",
    "[DONE]",
];

/// A response body: arbitrary bytes, or SSE events and JSON bodies built from usage-shaped values.
pub(crate) fn response_bytes() -> impl Strategy<Value = Vec<u8>> {
    let event = json_value(SSE_WORDS).prop_map(|v| format!("data: {v}\n\n"));
    prop_oneof![
        prop::collection::vec(any::<u8>(), 0..512),
        prop::collection::vec(event, 0..6).prop_map(|events| events.concat().into_bytes()),
        json_value(SSE_WORDS).prop_map(|v| v.to_string().into_bytes()),
        "(data: |event: |: |\n|\r\n|\\[DONE\\]|\\{|\\}|\"usage\"|:|[0-9]{1,25}){0,40}".prop_map(String::into_bytes),
    ]
}

/// An exposition text: arbitrary, or lines built from vLLM's metric names, labels, values and comments.
fn exposition() -> impl Strategy<Value = String> {
    let name = prop::sample::select(
        &[
            "vllm:num_requests_waiting",
            "vllm:num_requests_running",
            "vllm:kv_cache_usage_perc",
            "vllm:gpu_cache_usage_perc",
            "vllm:lora_requests_info",
            "vllm:cache_config_info",
            "up",
            "",
        ][..],
    );
    let labels = prop::collection::vec(("[a-z_]{0,12}", "[^\"\\\\\n]{0,12}|\\\\\"|\\\\"), 0..4).prop_map(|pairs| {
        let inner: Vec<String> = pairs.iter().map(|(k, v)| format!("{k}=\"{v}\"")).collect();
        format!("{{{}}}", inner.join(","))
    });
    let value = prop_oneof![
        any::<f64>().prop_map(|f| f.to_string()),
        Just("NaN".to_owned()),
        Just("+Inf".to_owned()),
        Just("-Inf".to_owned()),
        "[0-9eE.+-]{0,12}",
    ];
    let line = prop_oneof![
        (name.clone(), labels, value).prop_map(|(n, l, v)| format!("{n}{l} {v}")),
        name.prop_map(|n| format!("# TYPE {n} gauge")),
        ".{0,60}",
    ];
    prop_oneof![
        prop::collection::vec(line, 0..12).prop_map(|lines| lines.join("\n")),
        ".{0,300}",
    ]
}

/// Splits `bytes` into chunks at the given cut points, as a network would.
fn chunks(bytes: &[u8], cuts: &[prop::sample::Index]) -> Vec<Vec<u8>> {
    let mut points: Vec<usize> = cuts.iter().map(|c| c.index(bytes.len() + 1)).collect();
    points.push(0);
    points.push(bytes.len());
    points.sort_unstable();
    points.windows(2).map(|w| bytes[w[0]..w[1]].to_vec()).collect()
}

#[test]
fn fuzz_openai_body_parser() {
    let report = Report::new("openai body parser");
    let kinds = [ApiKind::Completions, ApiKind::ChatCompletions];
    proptest!(config(), |(bytes in request_bytes(), chat in any::<bool>())| {
        report.case();
        let kind = kinds[usize::from(chat)];
        if let Ok(parsed) = parse_request(kind, &bytes) {
            prop_assert!(!parsed.model.is_empty(), "a parsed request names its model");
            let _ = parsed.prompt_input();
            let rewritten = parsed.body_for_target(bytes::Bytes::from(bytes.clone()), "target-model");
            let again = parse_request(kind, &rewritten);
            prop_assert!(again.is_ok(), "a rewritten body parses again: {:?}", again.err());
            prop_assert_eq!(again.map(|p| p.model).unwrap_or_default(), "target-model");
        }
    });
}

#[test]
fn fuzz_usage_and_sse_extractor() {
    let report = Report::new("usage/SSE extractor");
    const CONTENT_TYPES: [Option<&str>; 4] = [
        None,
        Some("application/json"),
        Some("text/event-stream"),
        Some("text/plain"),
    ];
    proptest!(config(), |(
        body in response_bytes(),
        cuts in prop::collection::vec(any::<prop::sample::Index>(), 0..8),
        content_type in prop::sample::select(&CONTENT_TYPES[..]),
    )| {
        report.case();
        let mut whole = UsageObserver::new(content_type);
        whole.observe(&body);
        let mut pieces = UsageObserver::new(content_type);
        for chunk in chunks(&body, &cuts) {
            pieces.observe(&chunk);
        }
        // However the network cut the body, the usage read is the same.
        prop_assert_eq!(whole.finish(), pieces.finish());
    });
}

#[test]
fn fuzz_prometheus_parser() {
    let report = Report::new("prometheus parser");
    proptest!(config(), |(text in exposition())| {
        report.case();
        let parsed = parse(&text);
        if let Ok(metrics) = extract(&parsed.samples) {
            prop_assert!((0.0..=1.0).contains(&metrics.kv_cache_usage), "{}", metrics.kv_cache_usage);
        }
    });
}
