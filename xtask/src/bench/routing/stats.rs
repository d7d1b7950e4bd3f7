//! Figures of a run (simulated time) from what its clients measured (wall time).

use std::collections::BTreeMap;

use crate::{bench::classes, load::percentile};

use super::clients::Measured;

/// Figures of one run, in simulated time.
#[derive(Clone, Debug, Default)]
pub(crate) struct RunResult {
    pub(crate) ttft_mean_ms: f64,
    pub(crate) ttft_median_ms: f64,
    pub(crate) ttft_p90_ms: f64,
    pub(crate) ttft_p99_ms: f64,
    pub(crate) ttft_p99_excl_warmup_ms: f64,
    pub(crate) tpot_mean_ms: f64,
    pub(crate) itl_mean_ms: f64,
    pub(crate) itl_p99_ms: f64,
    pub(crate) output_tok_s: f64,
    pub(crate) kv_spread: f64,
    pub(crate) preemptions: f64,
    pub(crate) errors: f64,
    pub(crate) duration_s: f64,
    pub(crate) ttfts_ms: Vec<f64>,
    pub(crate) kv_series: BTreeMap<String, Vec<(f64, f64)>>,
    pub(crate) extras: classes::RunExtras,
}

pub(crate) const FIELDS: [(&str, &str); 13] = [
    ("ttft_mean_ms", "TTFT mean ms"),
    ("ttft_median_ms", "TTFT median ms"),
    ("ttft_p90_ms", "TTFT P90 ms"),
    ("ttft_p99_ms", "TTFT P99 ms"),
    ("ttft_p99_excl_warmup_ms", "P99 excl. warm-up"),
    ("tpot_mean_ms", "TPOT ms"),
    ("itl_mean_ms", "ITL mean ms"),
    ("itl_p99_ms", "ITL P99 ms"),
    ("output_tok_s", "out tok/s"),
    ("kv_spread", "KV spread"),
    ("preemptions", "preemptions"),
    ("errors", "errors"),
    ("duration_s", "duration s"),
];

impl RunResult {
    pub(crate) fn field(&self, key: &str) -> f64 {
        match key {
            "ttft_mean_ms" => self.ttft_mean_ms,
            "ttft_median_ms" => self.ttft_median_ms,
            "ttft_p90_ms" => self.ttft_p90_ms,
            "ttft_p99_ms" => self.ttft_p99_ms,
            "ttft_p99_excl_warmup_ms" => self.ttft_p99_excl_warmup_ms,
            "tpot_mean_ms" => self.tpot_mean_ms,
            "itl_mean_ms" => self.itl_mean_ms,
            "itl_p99_ms" => self.itl_p99_ms,
            "output_tok_s" => self.output_tok_s,
            "kv_spread" => self.kv_spread,
            "preemptions" => self.preemptions,
            "errors" => self.errors,
            "duration_s" => self.duration_s,
            _ => f64::NAN,
        }
    }
}

pub(super) fn summarize(
    measured: Vec<Measured>,
    wall: f64,
    scale: f64,
    warmup: usize,
    preemptions: f64,
    kv_series: BTreeMap<String, Vec<(f64, f64)>>,
) -> RunResult {
    let ms = |wall_s: f64| wall_s * scale * 1e3;
    let ok: Vec<&Measured> = measured.iter().filter(|m| m.ok).collect();
    let mut ttfts: Vec<f64> = ok.iter().map(|m| ms(m.ttft)).collect();
    let mut late: Vec<f64> = ok.iter().filter(|m| m.index >= warmup).map(|m| ms(m.ttft)).collect();
    let mut itls: Vec<f64> = ok.iter().flat_map(|m| m.itls.iter().map(|&g| ms(g))).collect();
    let tpots: Vec<f64> = ok
        .iter()
        .filter(|m| m.output_tokens > 1)
        .map(|m| ms(m.latency - m.ttft) / (m.output_tokens - 1) as f64)
        .collect();
    let output_tokens: u64 = ok.iter().map(|m| m.output_tokens).sum();
    for v in [&mut ttfts, &mut late, &mut itls] {
        v.sort_by(f64::total_cmp);
    }
    let avg = |v: &[f64]| {
        if v.is_empty() {
            f64::NAN
        } else {
            v.iter().sum::<f64>() / v.len() as f64
        }
    };
    // Spread: at each sampling instant, the most loaded pod's KV use minus the least loaded one's, averaged.
    let samples = kv_series.values().map(Vec::len).min().unwrap_or(0);
    let spread = avg(&(0..samples)
        .map(|i| {
            let at: Vec<f64> = kv_series.values().map(|s| s[i].1).collect();
            at.iter().cloned().fold(f64::MIN, f64::max) - at.iter().cloned().fold(f64::MAX, f64::min)
        })
        .collect::<Vec<_>>());
    RunResult {
        ttft_mean_ms: avg(&ttfts),
        ttft_median_ms: percentile(&ttfts, 50.0),
        ttft_p90_ms: percentile(&ttfts, 90.0),
        ttft_p99_ms: percentile(&ttfts, 99.0),
        ttft_p99_excl_warmup_ms: percentile(&late, 99.0),
        tpot_mean_ms: avg(&tpots),
        itl_mean_ms: avg(&itls),
        itl_p99_ms: percentile(&itls, 99.0),
        output_tok_s: output_tokens as f64 / (wall * scale),
        kv_spread: spread,
        preemptions,
        errors: (measured.len() - ok.len()) as f64,
        duration_s: wall * scale,
        ttfts_ms: ttfts,
        kv_series,
        extras: classes::RunExtras::default(),
    }
}

/// The mean of one figure over runs (seeds).
pub(crate) fn mean(runs: &[RunResult], key: &str) -> f64 {
    runs.iter().map(|r| r.field(key)).sum::<f64>() / runs.len().max(1) as f64
}

/// Half the range of `key` over the runs (seeds): the ± a mean is printed with.
pub(crate) fn spread(runs: &[RunResult], key: &str) -> f64 {
    let values = runs.iter().map(|r| r.field(key));
    let (min, max) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(lo, hi), v| (lo.min(v), hi.max(v)));
    if runs.is_empty() { 0.0 } else { (max - min) / 2.0 }
}
