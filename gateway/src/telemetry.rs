//! The gateway's own Prometheus metrics (request counts, TTFT and latency per model and target model).

use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct OutcomeLabels {
    pub model: String,
    pub target_model: String,
    pub outcome: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ModelLabels {
    pub model: String,
    pub target_model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct TokenLabels {
    pub model: String,
    pub target_model: String,
    pub kind: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabels {
    pub pod: String,
}

fn latency_histogram() -> Histogram {
    // 5 ms .. ~82 s: TTFT of a long prompt under load reaches tens of seconds, and a 10 s cap (vLLM 0.7) hides tails.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.005, 2.0, 15,
    ))
}

/// Every metric the gateway exports, registered once at start-up.
pub struct Metrics {
    registry: Registry,
    pub requests: Family<OutcomeLabels, Counter>,
    pub ttft: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub duration: Family<ModelLabels, Histogram, fn() -> Histogram>,
    pub tokens: Family<TokenLabels, Counter>,
    pub routed_to_pod: Family<PodLabels, Counter>,
    pub decision_seconds: Histogram,
    pub inflight: Gauge,
}

impl Metrics {
    /// Registers the gateway's metrics and the scraper's counters.
    pub fn new(scrape: &crate::scrape::MetricsStore) -> Metrics {
        let mut registry = Registry::with_prefix("switchyard");
        scrape.register_metrics(&mut registry);
        let requests = Family::<OutcomeLabels, Counter>::default();
        registry.register(
            "requests",
            "Requests by model, target model and routing outcome",
            requests.clone(),
        );
        let ttft = Family::<ModelLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "request_ttft_seconds",
            "Time to first response byte from the model server",
            ttft.clone(),
        );
        let duration = Family::<ModelLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "request_duration_seconds",
            "Time from request to the end of the response",
            duration.clone(),
        );
        let tokens = Family::<TokenLabels, Counter>::default();
        registry.register(
            "tokens",
            "Prompt and completion tokens reported by the model servers",
            tokens.clone(),
        );
        let routed_to_pod = Family::<PodLabels, Counter>::default();
        registry.register("pod_requests", "Requests routed to each pod", routed_to_pod.clone());
        let decision_seconds = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            1e-6, 2.0, 16,
        ));
        registry.register(
            "scheduler_decision_seconds",
            "Time spent in the scheduler per request",
            decision_seconds.clone(),
        );
        let inflight = Gauge::default();
        registry.register(
            "inflight_requests",
            "Requests being proxied right now",
            inflight.clone(),
        );
        Metrics {
            registry,
            requests,
            ttft,
            duration,
            tokens,
            routed_to_pod,
            decision_seconds,
            inflight,
        }
    }

    /// OpenMetrics text of every registered metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}
