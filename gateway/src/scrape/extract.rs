//! Maps parsed samples to the scheduler's [`EndpointMetrics`] following the model-server protocol: vLLM names
//! first, SGLang names as fallbacks.

use scheduler::EndpointMetrics;

use super::parse::Sample;

/// Metric names per semantic, in order of preference.
const WAITING: &[&str] = &["vllm:num_requests_waiting", "sglang:num_queue_reqs"];
const RUNNING: &[&str] = &["vllm:num_requests_running", "sglang:num_running_reqs"];
/// vLLM renamed `gpu_cache_usage_perc` to `kv_cache_usage_perc`; servers in between export both.
const KV_USAGE: &[&str] = &["vllm:kv_cache_usage_perc", "vllm:gpu_cache_usage_perc", "sglang:token_usage"];
const LORA_INFO: &str = "vllm:lora_requests_info";

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
    Ok(EndpointMetrics {
        waiting_queue: count(waiting),
        running: count(running),
        kv_cache_usage,
        active_loras: lora.as_ref().map(|l| l.active.clone()).unwrap_or_default(),
        waiting_loras: lora.as_ref().map(|l| l.waiting.clone()).unwrap_or_default(),
        max_loras: lora.and_then(|l| l.max_loras),
        updated_at: None,
    })
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
            let mut values = samples.iter().filter(|s| s.name == *name && !s.value.is_nan()).map(|s| s.value);
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
    let series: Vec<_> = samples.iter().filter(|s| s.name == LORA_INFO && !s.value.is_nan()).collect();
    let newest = |candidates: &mut dyn Iterator<Item = &&Sample<'_>>| {
        candidates.copied().max_by(|a, b| a.value.total_cmp(&b.value))
    };
    let busy = |s: &&&Sample<'_>| {
        !adapters(s.label("running_lora_adapters")).is_empty() || !adapters(s.label("waiting_lora_adapters")).is_empty()
    };
    let chosen = newest(&mut series.iter().filter(busy)).or_else(|| newest(&mut series.iter()))?;
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
mod tests;
