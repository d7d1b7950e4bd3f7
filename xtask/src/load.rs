//! A small closed-loop HTTP load generator: bounded request count and deadline, per-request TTFT and latency.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};
use indicatif::ProgressBar;
use rand::{Rng, SeedableRng, rngs::SmallRng};
use tokio::sync::Mutex;

pub(crate) type HttpClient = Client<HttpConnector, Full<Bytes>>;

pub(crate) fn http_client() -> HttpClient {
    let mut connector = HttpConnector::new();
    connector.set_nodelay(true);
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(1024)
        .build(connector)
}

/// One request to send.
#[derive(Clone, Debug)]
pub(crate) struct RequestSpec {
    pub(crate) path: &'static str,
    pub(crate) body: Bytes,
}

/// What one request measured.
#[derive(Clone, Debug)]
pub(crate) struct Sample {
    pub(crate) status: u16,
    /// `x-gateway-destination-endpoint-served` of the response, when the gateway set it.
    pub(crate) served_by: Option<String>,
    pub(crate) ttft: Duration,
    pub(crate) latency: Duration,
    pub(crate) error: Option<String>,
}

/// Sends every request in `requests` with at most `concurrency` in flight; stops early at `deadline`.
pub(crate) async fn closed_loop(
    client: &HttpClient,
    base: &str,
    requests: Vec<RequestSpec>,
    concurrency: usize,
    deadline: Duration,
    progress: Option<ProgressBar>,
) -> Vec<Sample> {
    let queue = Arc::new(Mutex::new(requests.into_iter()));
    let until = Instant::now() + deadline;
    let mut workers = tokio::task::JoinSet::new();
    for _ in 0..concurrency.max(1) {
        let (queue, client, base, progress) = (queue.clone(), client.clone(), base.to_owned(), progress.clone());
        workers.spawn(async move {
            let mut samples = Vec::new();
            loop {
                let Some(spec) = queue.lock().await.next() else {
                    break;
                };
                let Some(left) = until.checked_duration_since(Instant::now()) else {
                    break;
                };
                let sample = match tokio::time::timeout(left, send(&client, &base, spec)).await {
                    Ok(sample) => sample,
                    Err(_) => break,
                };
                if let Some(bar) = &progress {
                    bar.inc(1);
                }
                samples.push(sample);
            }
            samples
        });
    }
    let mut all = Vec::new();
    while let Some(joined) = workers.join_next().await {
        all.extend(joined.unwrap_or_default());
    }
    all
}

pub(crate) async fn send(client: &HttpClient, base: &str, spec: RequestSpec) -> Sample {
    let started = Instant::now();
    let failed = |error: String| Sample {
        status: 0,
        served_by: None,
        ttft: started.elapsed(),
        latency: started.elapsed(),
        error: Some(error),
    };
    let request = match http::Request::post(format!("{base}{}", spec.path))
        .header("content-type", "application/json")
        .body(Full::new(spec.body))
    {
        Ok(request) => request,
        Err(err) => return failed(err.to_string()),
    };
    let response = match client.request(request).await {
        Ok(response) => response,
        Err(err) => return failed(err.to_string()),
    };
    let status = response.status().as_u16();
    let served_by = response
        .headers()
        .get("x-gateway-destination-endpoint-served")
        .and_then(|v| v.to_str().ok())
        .map(str::to_owned);
    let mut body = response.into_body();
    let mut ttft = None;
    while let Some(frame) = body.frame().await {
        match frame {
            Ok(frame) => {
                if frame.data_ref().is_some_and(|d| !d.is_empty()) {
                    ttft.get_or_insert_with(|| started.elapsed());
                }
            }
            Err(err) => {
                return Sample {
                    error: Some(err.to_string()),
                    ..failed(String::new())
                };
            }
        }
    }
    let latency = started.elapsed();
    Sample {
        status,
        served_by,
        ttft: ttft.unwrap_or(latency),
        latency,
        error: None,
    }
}

/// The demo's mixed traffic: chat and completions, streaming and not, some sharing a long system prompt.
pub(crate) fn mixed_requests(model: &str, count: usize, seed: u64) -> Vec<RequestSpec> {
    let mut rng = SmallRng::seed_from_u64(seed);
    let system = "You are a careful assistant for a platform team running vLLM on Kubernetes. ".repeat(12);
    (0..count)
        .map(|i| {
            let topic = [
                "kv cache",
                "prefix caching",
                "lora adapters",
                "tail latency",
                "canary releases",
            ][i % 5];
            let max_tokens = rng.random_range(8..48);
            let stream = rng.random_bool(0.5);
            let shared = rng.random_bool(0.6);
            let question = format!("Question {i}: explain {topic} in {} words.", rng.random_range(20..200));
            if rng.random_bool(0.5) {
                let mut messages = Vec::new();
                if shared {
                    messages.push(serde_json::json!({"role": "system", "content": system}));
                }
                messages.push(serde_json::json!({"role": "user", "content": question}));
                let body = serde_json::json!({
                    "model": model, "messages": messages, "max_tokens": max_tokens, "stream": stream,
                    "stream_options": {"include_usage": true},
                });
                RequestSpec {
                    path: "/v1/chat/completions",
                    body: Bytes::from(body.to_string()),
                }
            } else {
                let prompt = if shared {
                    format!("{system}{question}")
                } else {
                    question
                };
                let body = serde_json::json!({
                    "model": model, "prompt": prompt, "max_tokens": max_tokens, "stream": stream,
                    "stream_options": {"include_usage": true},
                });
                RequestSpec {
                    path: "/v1/completions",
                    body: Bytes::from(body.to_string()),
                }
            }
        })
        .collect()
}

/// Percentile (0..=100) of a sorted slice, nearest-rank.
pub(crate) fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let rank = ((p / 100.0) * sorted.len() as f64).ceil() as usize;
    sorted[rank.clamp(1, sorted.len()) - 1]
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn percentile_is_nearest_rank() {
        let data: Vec<f64> = (1..=100).map(f64::from).collect();
        assert_eq!(percentile(&data, 50.0), 50.0);
        assert_eq!(percentile(&data, 99.0), 99.0);
        assert_eq!(percentile(&data, 100.0), 100.0);
        assert_eq!(percentile(&[7.0], 99.0), 7.0);
        assert!(percentile(&[], 50.0).is_nan());
    }

    #[test]
    fn mixed_requests_are_reproducible_and_mixed() {
        let a = mixed_requests("qwq", 50, 7);
        let b = mixed_requests("qwq", 50, 7);
        assert_eq!(
            a.iter().map(|r| r.body.clone()).collect::<Vec<_>>(),
            b.iter().map(|r| r.body.clone()).collect::<Vec<_>>()
        );
        assert!(a.iter().any(|r| r.path == "/v1/chat/completions"));
        assert!(a.iter().any(|r| r.path == "/v1/completions"));
        assert!(a.iter().any(|r| r.body.windows(13).any(|w| w == b"\"stream\":true")));
    }
}
