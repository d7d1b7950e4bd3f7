//! Maps parsed samples to the scheduler's [`EndpointMetrics`] following the model-server protocol: vLLM names
//! first, SGLang names as fallbacks.

use scheduler::EndpointMetrics;

use super::parse::Sample;

/// Metric names per semantic, in order of preference.
const WAITING: &[&str] = &["vllm:num_requests_waiting", "sglang:num_queue_reqs"];
const RUNNING: &[&str] = &["vllm:num_requests_running", "sglang:num_running_reqs"];
/// vLLM renamed `gpu_cache_usage_perc` to `kv_cache_usage_perc`; servers in between export both.
const KV_USAGE: &[&str] = &[
    "vllm:kv_cache_usage_perc",
    "vllm:gpu_cache_usage_perc",
    "sglang:token_usage",
];
const LORA_INFO: &str = "vllm:lora_requests_info";
const CACHE_CONFIG_INFO: &str = "vllm:cache_config_info";

/// The exposition lacks a metric the scheduler cannot route without.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("no {semantic} metric (looked for {})", .names.join(", "))]
pub struct MissingMetric {
    pub semantic: &'static str,
    pub names: &'static [&'static str],
}

/// Extracts the routing metrics; `updated_at` is left for the caller, who knows when the scrape happened.
pub fn extract(samples: &[Sample<'_>]) -> Result<EndpointMetrics, MissingMetric> {
    let waiting = gauge(samples, WAITING, "waiting queue", Aggregate::Sum)?;
    let running = gauge(samples, RUNNING, "running requests", Aggregate::Sum)?;
    let kv_cache_usage = gauge(samples, KV_USAGE, "kv-cache usage", Aggregate::Max)?.clamp(0.0, 1.0);
    let lora = lora_state(samples);
    let cache_config = samples.iter().find(|s| s.name == CACHE_CONFIG_INFO);
    Ok(EndpointMetrics {
        waiting_queue: count(waiting),
        running: count(running),
        kv_cache_usage,
        active_loras: lora.as_ref().map(|l| l.active.clone()).unwrap_or_default(),
        waiting_loras: lora.as_ref().map(|l| l.waiting.clone()).unwrap_or_default(),
        max_loras: lora.and_then(|l| l.max_loras),
        prefix_caching: cache_config
            .and_then(|c| c.label("enable_prefix_caching"))
            .and_then(parse_bool),
        kv_cache_tokens: cache_config.and_then(kv_cache_tokens),
        updated_at: None,
        unanswered_since: None,
    })
}

/// `vllm:cache_config_info` labels spell booleans the Python way.
fn parse_bool(text: &str) -> Option<bool> {
    match text {
        "True" | "true" => Some(true),
        "False" | "false" => Some(false),
        _ => None,
    }
}

fn kv_cache_tokens(info: &Sample<'_>) -> Option<u64> {
    let blocks: u64 = info.label("num_gpu_blocks")?.parse().ok()?;
    let block_size: u64 = info.label("block_size")?.parse().ok()?;
    blocks.checked_mul(block_size)
}

/// How several series of one gauge combine (vLLM V1 with data parallelism exports one per engine).
#[derive(Clone, Copy)]
enum Aggregate {
    /// Requests on every engine count.
    Sum,
    /// The fullest engine bounds what fits.
    Max,
}

/// The first name in `names` with a usable (non-NaN) value wins; NaN series count as missing.
fn gauge(
    samples: &[Sample<'_>],
    names: &'static [&'static str],
    semantic: &'static str,
    aggregate: Aggregate,
) -> Result<f64, MissingMetric> {
    names
        .iter()
        .find_map(|name| {
            let mut values = samples
                .iter()
                .filter(|s| s.name == *name && !s.value.is_nan())
                .map(|s| s.value);
            let first = values.next()?;
            Some(values.fold(first, |acc, v| match aggregate {
                Aggregate::Sum => acc + v,
                Aggregate::Max => acc.max(v),
            }))
        })
        .ok_or(MissingMetric { semantic, names })
}

fn count(value: f64) -> u32 {
    // `as` saturates: negative → 0, +Inf → u32::MAX.
    value.round() as u32
}

struct LoraState {
    active: Vec<String>,
    waiting: Vec<String>,
    max_loras: Option<u32>,
}

/// The series with the largest value (a timestamp: the newest) among those naming any adapter, as the upstream EPP
/// does; when every series is idle, the newest one still tells the adapter capacity.
fn lora_state(samples: &[Sample<'_>]) -> Option<LoraState> {
    let series = || samples.iter().filter(|s| s.name == LORA_INFO && !s.value.is_nan());
    let busy = |s: &&Sample<'_>| {
        !adapters(s.label("running_lora_adapters")).is_empty() || !adapters(s.label("waiting_lora_adapters")).is_empty()
    };
    let newest = |a: &&Sample<'_>, b: &&Sample<'_>| a.value.total_cmp(&b.value);
    let chosen = series()
        .filter(busy)
        .max_by(newest)
        .or_else(|| series().max_by(newest))?;
    Some(LoraState {
        active: adapters(chosen.label("running_lora_adapters")),
        waiting: adapters(chosen.label("waiting_lora_adapters")),
        max_loras: chosen.label("max_lora").and_then(|m| m.trim().parse().ok()),
    })
}

fn adapters(label: Option<&str>) -> Vec<String> {
    label
        .unwrap_or_default()
        .split(',')
        .map(str::trim)
        .filter(|a| !a.is_empty())
        .map(str::to_owned)
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::scrape::parse::parse;

    fn metrics(text: &str) -> Result<EndpointMetrics, MissingMetric> {
        extract(&parse(text).samples)
    }

    #[test]
    fn vllm_0_7_exposition_maps_to_routing_metrics() {
        let m = metrics(include_str!("fixtures/vllm-0.7.txt")).unwrap();
        assert_eq!(
            m,
            EndpointMetrics {
                waiting_queue: 3,
                running: 7,
                kv_cache_usage: 0.4212,
                // The newest series naming adapters, not the idle one nor an older busy one.
                active_loras: vec!["sql-lora".into()],
                waiting_loras: vec!["chat-lora".into(), "tweet-lora".into()],
                max_loras: Some(4),
                // 2 193 blocks of 16 tokens, prefix caching off (vLLM 0.7's V0 default).
                prefix_caching: Some(false),
                kv_cache_tokens: Some(35_088),
                updated_at: None,
                unanswered_since: None,
            }
        );
    }

    #[test]
    fn kv_cache_usage_prefers_the_new_name() {
        let text = "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\n\
                    vllm:gpu_cache_usage_perc 0.9\nvllm:kv_cache_usage_perc 0.25\n";
        assert_eq!(metrics(text).unwrap().kv_cache_usage, 0.25);
    }

    #[test]
    fn kv_cache_usage_is_clamped_and_nan_counts_as_missing() {
        let base = "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\n";
        assert_eq!(
            metrics(&format!("{base}vllm:kv_cache_usage_perc 1.7\n"))
                .unwrap()
                .kv_cache_usage,
            1.0
        );
        assert_eq!(
            metrics(&format!("{base}vllm:kv_cache_usage_perc -0.1\n"))
                .unwrap()
                .kv_cache_usage,
            0.0
        );
        let nan_then_old = format!("{base}vllm:kv_cache_usage_perc NaN\nvllm:gpu_cache_usage_perc 0.5\n");
        assert_eq!(metrics(&nan_then_old).unwrap().kv_cache_usage, 0.5);
        let err = metrics(&format!("{base}vllm:kv_cache_usage_perc NaN\n")).unwrap_err();
        assert_eq!(err.semantic, "kv-cache usage");
    }

    #[test]
    fn missing_core_metrics_are_an_error() {
        let err = metrics("vllm:num_requests_running 1\nvllm:kv_cache_usage_perc 0.1\n").unwrap_err();
        assert_eq!(
            err.to_string(),
            "no waiting queue metric (looked for vllm:num_requests_waiting, sglang:num_queue_reqs)"
        );
        assert_eq!(
            metrics("vllm:num_requests_waiting 1\nvllm:kv_cache_usage_perc 0.1\n")
                .unwrap_err()
                .semantic,
            "running requests"
        );
        assert_eq!(metrics("").unwrap_err().semantic, "waiting queue");
    }

    #[test]
    fn sglang_names_are_a_fallback() {
        let m = metrics("sglang:num_queue_reqs{tp_rank=\"0\"} 5\nsglang:num_running_reqs 2\nsglang:token_usage 0.3\n")
            .unwrap();
        assert_eq!(
            (m.waiting_queue, m.running, m.kv_cache_usage, m.max_loras),
            (5, 2, 0.3, None)
        );
    }

    #[test]
    fn per_engine_series_sum_queues_and_take_the_fullest_cache() {
        let text = "vllm:num_requests_waiting{engine=\"0\"} 2\nvllm:num_requests_waiting{engine=\"1\"} 3\n\
                    vllm:num_requests_running{engine=\"0\"} 4\nvllm:num_requests_running{engine=\"1\"} 1\n\
                    vllm:kv_cache_usage_perc{engine=\"0\"} 0.2\nvllm:kv_cache_usage_perc{engine=\"1\"} 0.7\n";
        let m = metrics(text).unwrap();
        assert_eq!((m.waiting_queue, m.running, m.kv_cache_usage), (5, 5, 0.7));
    }

    #[test]
    fn no_lora_series_means_lora_state_unknown() {
        let m =
            metrics("vllm:num_requests_waiting 0\nvllm:num_requests_running 0\nvllm:kv_cache_usage_perc 0\n").unwrap();
        assert_eq!((m.active_loras.len(), m.waiting_loras.len(), m.max_loras), (0, 0, None));
    }

    #[test]
    fn idle_lora_series_still_reports_capacity() {
        let text = "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\nvllm:kv_cache_usage_perc 0\n\
                    vllm:lora_requests_info{max_lora=\"2\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"} 10\n\
                    vllm:lora_requests_info{max_lora=\"8\",running_lora_adapters=\" , \",waiting_lora_adapters=\"\"} 20\n";
        let m = metrics(text).unwrap();
        assert!(m.active_loras.is_empty());
        assert!(m.waiting_loras.is_empty());
        assert_eq!(m.max_loras, Some(8));
    }

    #[test]
    fn busy_lora_series_beats_a_newer_idle_one() {
        let text = "vllm:num_requests_waiting 0\nvllm:num_requests_running 0\nvllm:kv_cache_usage_perc 0\n\
                    vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"a\",waiting_lora_adapters=\"\"} 10\n\
                    vllm:lora_requests_info{max_lora=\"4\",running_lora_adapters=\"\",waiting_lora_adapters=\"\"} 20\n";
        assert_eq!(metrics(text).unwrap().active_loras, ["a"]);
    }

    #[test]
    fn counts_round_and_saturate() {
        let m = metrics("vllm:num_requests_waiting -3\nvllm:num_requests_running 2.6\nvllm:kv_cache_usage_perc 0\n")
            .unwrap();
        assert_eq!((m.waiting_queue, m.running), (0, 3));
    }
}
