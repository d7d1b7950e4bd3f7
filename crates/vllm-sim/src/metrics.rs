//! Engine counters and histograms, rendered in Prometheus text format 0.0.4 under vLLM's metric names.

use std::fmt::Write as _;

/// vLLM v0.7 `vllm:time_to_first_token_seconds` buckets (they stop at 10 s).
pub const TTFT_BUCKETS: &[f64] = &[
    0.001, 0.005, 0.01, 0.02, 0.04, 0.06, 0.08, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 7.5, 10.0,
];
/// vLLM v0.7 `vllm:time_per_output_token_seconds` buckets.
pub const TPOT_BUCKETS: &[f64] = &[0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.4, 0.5, 0.75, 1.0, 2.5];
/// vLLM v0.7 request-latency buckets.
pub const E2E_BUCKETS: &[f64] = &[
    0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 2.5, 5.0, 10.0, 15.0, 20.0, 30.0, 40.0, 50.0, 60.0,
];

/// A fixed-bucket histogram.
#[derive(Debug, Clone, PartialEq)]
pub struct Histogram {
    bounds: &'static [f64],
    /// Per-bucket (non-cumulative) counts; the last slot is +Inf.
    counts: Vec<u64>,
    sum: f64,
    count: u64,
}

impl Histogram {
    pub fn new(bounds: &'static [f64]) -> Self {
        Self {
            bounds,
            counts: vec![0; bounds.len() + 1],
            sum: 0.0,
            count: 0,
        }
    }

    pub fn observe(&mut self, v: f64) {
        let i = self.bounds.partition_point(|&b| b < v);
        self.counts[i] += 1;
        self.sum += v;
        self.count += 1;
    }

    pub fn count(&self) -> u64 {
        self.count
    }

    pub fn sum(&self) -> f64 {
        self.sum
    }
}

/// Why a request stopped, as vLLM's `finish_reason`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub enum FinishReason {
    /// Reached `max_tokens` (or could never be scheduled, which vLLM also reports as `length`).
    Length,
    /// The client went away.
    Abort,
}

impl FinishReason {
    pub fn as_str(self) -> &'static str {
        match self {
            FinishReason::Length => "length",
            FinishReason::Abort => "abort",
        }
    }
}

/// Cumulative engine statistics. Latencies are in simulated seconds (wall time × time scale).
#[derive(Debug, Clone, PartialEq)]
pub struct EngineMetrics {
    pub num_preemptions: u64,
    pub prompt_tokens: u64,
    pub generation_tokens: u64,
    /// Prompt tokens looked up in the prefix cache at admission.
    pub prefix_cache_queries: u64,
    /// Of those, tokens found cached.
    pub prefix_cache_hits: u64,
    pub finished_length: u64,
    pub finished_abort: u64,
    pub ttft: Histogram,
    pub tpot: Histogram,
    pub e2e: Histogram,
}

impl Default for EngineMetrics {
    fn default() -> Self {
        Self {
            num_preemptions: 0,
            prompt_tokens: 0,
            generation_tokens: 0,
            prefix_cache_queries: 0,
            prefix_cache_hits: 0,
            finished_length: 0,
            finished_abort: 0,
            ttft: Histogram::new(TTFT_BUCKETS),
            tpot: Histogram::new(TPOT_BUCKETS),
            e2e: Histogram::new(E2E_BUCKETS),
        }
    }
}

impl EngineMetrics {
    pub(crate) fn record_finish(&mut self, reason: FinishReason) {
        match reason {
            FinishReason::Length => self.finished_length += 1,
            FinishReason::Abort => self.finished_abort += 1,
        }
    }
}

/// Everything one `/metrics` page shows, captured under the engine lock and rendered outside it.
#[derive(Debug, Clone)]
pub(crate) struct MetricsPage<'a> {
    pub(crate) model_name: &'a str,
    pub(crate) running: usize,
    pub(crate) waiting: usize,
    pub(crate) kv_usage: f64,
    pub(crate) prefix_caching: bool,
    pub(crate) block_size: usize,
    pub(crate) num_gpu_blocks: u32,
    /// `Some` when LoRA is enabled: (running adapters, waiting adapters, max_loras).
    pub(crate) lora: Option<(String, String, u32)>,
    pub(crate) unix_time: f64,
    /// Requests failed on purpose ([`crate::Fault::error_rate`]).
    pub(crate) injected_errors: u64,
    pub(crate) metrics: EngineMetrics,
}

impl MetricsPage<'_> {
    pub(crate) fn render(&self) -> String {
        let mut out = String::with_capacity(8 * 1024);
        let model = escape(self.model_name);
        let base = format!("model_name=\"{model}\"");
        let m = &self.metrics;

        gauge(
            &mut out,
            "vllm:num_requests_running",
            "Number of requests currently running on GPU.",
            &base,
            self.running as f64,
        );
        gauge(
            &mut out,
            "vllm:num_requests_waiting",
            "Number of requests waiting to be processed.",
            &base,
            self.waiting as f64,
        );
        gauge(
            &mut out,
            "vllm:num_requests_swapped",
            "Number of requests swapped to CPU.",
            &base,
            0.0,
        );
        gauge(
            &mut out,
            "vllm:gpu_cache_usage_perc",
            "GPU KV-cache usage. 1 means 100 percent usage.",
            &base,
            self.kv_usage,
        );
        gauge(
            &mut out,
            "vllm:kv_cache_usage_perc",
            "KV-cache usage. 1 means 100 percent usage.",
            &base,
            self.kv_usage,
        );
        gauge(
            &mut out,
            "vllm:cpu_cache_usage_perc",
            "CPU KV-cache usage. 1 means 100 percent usage.",
            &base,
            0.0,
        );
        let hit_rate = if !self.prefix_caching {
            -1.0
        } else if m.prefix_cache_queries == 0 {
            0.0
        } else {
            m.prefix_cache_hits as f64 / m.prefix_cache_queries as f64
        };
        gauge(
            &mut out,
            "vllm:gpu_prefix_cache_hit_rate",
            "GPU prefix cache block hit rate.",
            &base,
            hit_rate,
        );

        counter(
            &mut out,
            "vllm:num_preemptions_total",
            "Cumulative number of preemption from the engine.",
            &base,
            m.num_preemptions,
        );
        counter(
            &mut out,
            "vllm:prompt_tokens_total",
            "Number of prefill tokens processed.",
            &base,
            m.prompt_tokens,
        );
        counter(
            &mut out,
            "vllm:generation_tokens_total",
            "Number of generation tokens processed.",
            &base,
            m.generation_tokens,
        );
        counter(
            &mut out,
            "vllm:prefix_cache_queries_total",
            "Prefix cache queries, in terms of number of queried tokens.",
            &base,
            m.prefix_cache_queries,
        );
        counter(
            &mut out,
            "vllm:prefix_cache_hits_total",
            "Prefix cache hits, in terms of number of cached tokens.",
            &base,
            m.prefix_cache_hits,
        );

        header(
            &mut out,
            "vllm:request_success_total",
            "Count of successfully processed requests.",
            "counter",
        );
        for (reason, n) in [("length", m.finished_length), ("abort", m.finished_abort)] {
            let _ = writeln!(
                out,
                "vllm:request_success_total{{finished_reason=\"{reason}\",{base}}} {n}"
            );
        }

        // Not a vLLM metric (vLLM has no failure counter), hence the simulator's own prefix.
        counter(
            &mut out,
            "vllm_sim:injected_errors_total",
            "Requests answered with an injected HTTP 500.",
            &base,
            self.injected_errors,
        );

        if let Some((running, waiting, max_lora)) = &self.lora {
            header(
                &mut out,
                "vllm:lora_requests_info",
                "Running stats on lora requests.",
                "gauge",
            );
            let _ = writeln!(
                out,
                "vllm:lora_requests_info{{max_lora=\"{max_lora}\",running_lora_adapters=\"{}\",waiting_lora_adapters=\"{}\",{base}}} {}",
                escape(running),
                escape(waiting),
                fmt_f64(self.unix_time)
            );
        }

        header(
            &mut out,
            "vllm:cache_config_info",
            "Information of the LLMEngine CacheConfig",
            "gauge",
        );
        let _ = writeln!(
            out,
            "vllm:cache_config_info{{block_size=\"{}\",cache_dtype=\"auto\",enable_prefix_caching=\"{}\",gpu_memory_utilization=\"0.95\",num_cpu_blocks=\"0\",num_gpu_blocks=\"{}\",{base}}} 1.0",
            self.block_size,
            if self.prefix_caching { "True" } else { "False" },
            self.num_gpu_blocks
        );

        histogram(
            &mut out,
            "vllm:time_to_first_token_seconds",
            "Histogram of time to first token in seconds.",
            &base,
            &m.ttft,
        );
        histogram(
            &mut out,
            "vllm:time_per_output_token_seconds",
            "Histogram of time per output token in seconds.",
            &base,
            &m.tpot,
        );
        histogram(
            &mut out,
            "vllm:e2e_request_latency_seconds",
            "Histogram of end to end request latency in seconds.",
            &base,
            &m.e2e,
        );
        out
    }
}

fn header(out: &mut String, name: &str, help: &str, kind: &str) {
    let _ = writeln!(out, "# HELP {name} {help}");
    let _ = writeln!(out, "# TYPE {name} {kind}");
}

fn gauge(out: &mut String, name: &str, help: &str, labels: &str, v: f64) {
    header(out, name, help, "gauge");
    let _ = writeln!(out, "{name}{{{labels}}} {}", fmt_f64(v));
}

fn counter(out: &mut String, name: &str, help: &str, labels: &str, v: u64) {
    header(out, name, help, "counter");
    let _ = writeln!(out, "{name}{{{labels}}} {v}.0");
}

fn histogram(out: &mut String, name: &str, help: &str, labels: &str, h: &Histogram) {
    header(out, name, help, "histogram");
    let mut cumulative = 0;
    for (i, bound) in h.bounds.iter().enumerate() {
        cumulative += h.counts[i];
        let _ = writeln!(
            out,
            "{name}_bucket{{le=\"{}\",{labels}}} {cumulative}.0",
            fmt_f64(*bound)
        );
    }
    let _ = writeln!(out, "{name}_bucket{{le=\"+Inf\",{labels}}} {}.0", h.count);
    let _ = writeln!(out, "{name}_count{{{labels}}} {}.0", h.count);
    let _ = writeln!(out, "{name}_sum{{{labels}}} {}", fmt_f64(h.sum));
}

/// Python's float repr for the values we print: always a decimal point, like prometheus_client.
fn fmt_f64(v: f64) -> String {
    format!("{v:?}")
}

/// Label-value escaping of the text format.
fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn histogram_buckets_are_cumulative_with_inf() {
        let mut h = Histogram::new(&[0.1, 1.0]);
        h.observe(0.05);
        h.observe(0.1);
        h.observe(0.5);
        h.observe(20.0);
        let mut out = String::new();
        histogram(&mut out, "x", "help", "model_name=\"m\"", &h);
        assert!(out.contains("x_bucket{le=\"0.1\",model_name=\"m\"} 2.0\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"1.0\",model_name=\"m\"} 3.0\n"), "{out}");
        assert!(out.contains("x_bucket{le=\"+Inf\",model_name=\"m\"} 4.0\n"), "{out}");
        assert!(out.contains("x_count{model_name=\"m\"} 4.0\n"), "{out}");
        assert!(out.contains("# TYPE x histogram\n"));
    }

    #[test]
    fn page_has_vllm_names_and_hit_rate_minus_one_without_apc() {
        let page = MetricsPage {
            model_name: "qwq-32b",
            running: 3,
            waiting: 1,
            kv_usage: 0.25,
            prefix_caching: false,
            block_size: 16,
            num_gpu_blocks: 5000,
            lora: Some(("a,b".into(), String::new(), 4)),
            unix_time: 1.7e9,
            injected_errors: 7,
            metrics: EngineMetrics::default(),
        };
        let text = page.render();
        for line in [
            "vllm:num_requests_running{model_name=\"qwq-32b\"} 3.0",
            "vllm:num_requests_waiting{model_name=\"qwq-32b\"} 1.0",
            "vllm:kv_cache_usage_perc{model_name=\"qwq-32b\"} 0.25",
            "vllm:gpu_cache_usage_perc{model_name=\"qwq-32b\"} 0.25",
            "vllm:gpu_prefix_cache_hit_rate{model_name=\"qwq-32b\"} -1.0",
            "vllm:num_preemptions_total{model_name=\"qwq-32b\"} 0.0",
            "vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"a,b\",waiting_lora_adapters=\"\",model_name=\"qwq-32b\"} 1700000000.0",
            "# TYPE vllm:num_preemptions_total counter",
            "vllm_sim:injected_errors_total{model_name=\"qwq-32b\"} 7.0",
        ] {
            assert!(text.lines().any(|l| l == line), "missing {line:?} in\n{text}");
        }
        assert!(text.contains("vllm:cache_config_info{block_size=\"16\""));
        assert!(text.contains("num_gpu_blocks=\"5000\""));
        assert!(text.contains("enable_prefix_caching=\"False\""));
    }
}
