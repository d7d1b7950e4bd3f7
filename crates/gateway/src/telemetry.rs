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

/// Labels of a mirrored copy: the client's model, the model the copy was sent as, and how it ended
/// (`ok`, `error` or `timeout`).
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorLabels {
    pub model: String,
    pub mirror_target: String,
    pub outcome: &'static str,
}

/// Why a request due for mirroring was not copied.
#[derive(Clone, Copy, Debug, Hash, PartialEq, Eq)]
pub enum MirrorSkip {
    /// The model is Sheddable: its copies would only add load where the original may be shed.
    Sheddable,
    /// The mirror pool has no endpoint with headroom.
    Saturated,
    /// The mirror pool has no ready endpoint.
    NoEndpoint,
    /// Too many copies already in flight.
    Busy,
}

impl MirrorSkip {
    pub fn as_str(self) -> &'static str {
        match self {
            MirrorSkip::Sheddable => "sheddable",
            MirrorSkip::Saturated => "saturated",
            MirrorSkip::NoEndpoint => "no_endpoint",
            MirrorSkip::Busy => "busy",
        }
    }
}

impl prometheus_client::encoding::EncodeLabelValue for MirrorSkip {
    fn encode(&self, encoder: &mut prometheus_client::encoding::LabelValueEncoder<'_>) -> std::fmt::Result {
        std::fmt::Write::write_str(encoder, self.as_str())
    }
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct MirrorSkipLabels {
    pub model: String,
    pub reason: MirrorSkip,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct PodLabels {
    pub pod: String,
}

fn latency_histogram() -> Histogram {
    // 5 ms .. ~142 s in steps of 1.25×: TTFT of a long prompt under load reaches tens of seconds (a 10 s cap, as in
    // vLLM 0.7, hides tails), and a guarded release compares P90s whose limit is often 1.2–1.5×, which doubling
    // buckets cannot resolve.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.005, 1.25, 47,
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
    /// Prompt tokenization for precise prefix routing, outside the scheduler's time.
    pub tokenize_seconds: Histogram,
    pub inflight: Gauge,
    pub shipper: crate::shipper::ShipperCounters,
    /// Mirrored copies, kept out of `requests`/`request_ttft_seconds`, which the canary controller reads.
    pub mirror_requests: Family<MirrorLabels, Counter>,
    pub mirror_skipped: Family<MirrorSkipLabels, Counter>,
    pub mirror_ttft: Family<ModelLabels, Histogram, fn() -> Histogram>,
}

impl Metrics {
    /// Registers the gateway's metrics, the scraper's counters and the per-pod gauges read from the scraped store.
    pub fn new(scrape: &std::sync::Arc<crate::scrape::MetricsStore>) -> Metrics {
        let mut registry = Registry::with_prefix("switchyard");
        scrape.register_metrics(&mut registry);
        registry.register_collector(Box::new(PodGauges(scrape.clone())));
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
        let tokenize_seconds = Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
            1e-6, 2.0, 20,
        ));
        registry.register(
            "tokenize_seconds",
            "Time spent tokenizing a prompt for precise prefix routing",
            tokenize_seconds.clone(),
        );
        let inflight = Gauge::default();
        registry.register(
            "inflight_requests",
            "Requests being proxied right now",
            inflight.clone(),
        );
        let shipper = crate::shipper::ShipperCounters::default();
        registry.register(
            "dashboard_shipped_records",
            "Decisions and pod samples delivered to the dashboard",
            shipper.shipped.clone(),
        );
        registry.register(
            "dashboard_dropped_records",
            "Decisions and pod samples dropped (dashboard queue full, unreachable or refusing)",
            shipper.dropped.clone(),
        );
        registry.register(
            "dashboard_too_large_records",
            "Records the dashboard refused as too large even when sent alone (also counted as dropped)",
            shipper.too_large.clone(),
        );
        registry.register(
            "dashboard_spooled_records",
            "Records written to the on-disk spool while the dashboard was unreachable (resent later)",
            shipper.spooled.clone(),
        );
        registry.register(
            "dashboard_spool_bytes",
            "Bytes waiting in the on-disk spool",
            shipper.spool_bytes.clone(),
        );
        let mirror_requests = Family::<MirrorLabels, Counter>::default();
        registry.register(
            "mirror_requests",
            "Mirrored copies of requests by model, mirror target and outcome (ok, error, timeout)",
            mirror_requests.clone(),
        );
        let mirror_skipped = Family::<MirrorSkipLabels, Counter>::default();
        registry.register(
            "mirror_skipped",
            "Requests due for mirroring that were not copied (sheddable, saturated, no_endpoint, busy)",
            mirror_skipped.clone(),
        );
        let mirror_ttft = Family::<ModelLabels, Histogram, fn() -> Histogram>::new_with_constructor(latency_histogram);
        registry.register(
            "mirror_ttft_seconds",
            "Time to first response byte of mirrored copies, by model and the target model they were sent as",
            mirror_ttft.clone(),
        );
        Metrics {
            mirror_requests,
            mirror_skipped,
            mirror_ttft,
            shipper,
            registry,
            requests,
            ttft,
            duration,
            tokens,
            routed_to_pod,
            decision_seconds,
            tokenize_seconds,
            inflight,
        }
    }

    /// Registers metrics kept elsewhere (e.g. the KV-event subscribers') in the gateway's registry.
    pub fn register(&mut self, register: impl FnOnce(&mut Registry)) {
        register(&mut self.registry);
    }

    /// OpenMetrics text of every registered metric.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut out, &self.registry);
        out
    }
}

/// Per-pod gauges (`pod_queue_size`, `pod_running_requests`, `pod_kv_cache_usage`, `pod_metrics_age_seconds`),
/// read from the scraped store at encode time so a pod that leaves the pool leaves the output with it.
#[derive(Debug)]
struct PodGauges(std::sync::Arc<crate::scrape::MetricsStore>);

impl prometheus_client::collector::Collector for PodGauges {
    fn encode(&self, mut encoder: prometheus_client::encoding::DescriptorEncoder<'_>) -> std::fmt::Result {
        use prometheus_client::{encoding::EncodeMetric as _, metrics::MetricType};
        let mut pods = self.0.all();
        pods.sort_by(|a, b| a.0.cmp(&b.0));
        type Read = fn(&scheduler::EndpointMetrics) -> f64;
        let gauges: [(&str, &str, Read); 4] = [
            (
                "pod_queue_size",
                "Requests waiting on the model server, as last scraped",
                |m| f64::from(m.waiting_queue),
            ),
            (
                "pod_running_requests",
                "Requests running on the model server, as last scraped",
                |m| f64::from(m.running),
            ),
            (
                "pod_kv_cache_usage",
                "KV-cache utilisation of the model server (0..1), as last scraped",
                |m| m.kv_cache_usage,
            ),
            (
                "pod_metrics_age_seconds",
                "Age of the pod's last successful scrape",
                |m| m.updated_at.map_or(f64::NAN, |t| t.elapsed().as_secs_f64()),
            ),
        ];
        for (name, help, read) in gauges {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Gauge)?;
            for (endpoint, metrics) in &pods {
                let labels = [("endpoint", endpoint.as_str())];
                prometheus_client::metrics::gauge::ConstGauge::new(read(metrics))
                    .encode(family.encode_family(&labels)?)?;
            }
        }
        Ok(())
    }
}
