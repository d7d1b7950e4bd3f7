//! Per-class figures of a routing run (criticality tiers, LoRA adapter tiers) and of its open-loop arrivals:
//! TTFT, SLO attainment and goodput, requests shed with 429, for the report and summary.json.

use std::{collections::BTreeMap, fmt::Write as _};

use serde_json::Value;

use crate::load::percentile;

/// The SLO of the `criticality-overload` workload (shared/reference/simulator.md §4, W5), in simulated ms.
pub(crate) const SLO_TTFT_MS: f64 = 2_000.0;
pub(crate) const SLO_TPOT_MS: f64 = 100.0;

/// One sent request as the class figures need it, times in simulated ms.
#[derive(Clone, Debug)]
pub(crate) struct Outcome {
    pub(crate) group: &'static str,
    /// HTTP status; 0 when no response arrived.
    pub(crate) status: u16,
    /// Streamed to the end.
    pub(crate) ok: bool,
    pub(crate) ttft_ms: f64,
    /// `None` for a completion of at most one token, which has no time per output token.
    pub(crate) tpot_ms: Option<f64>,
}

impl Outcome {
    fn meets_slo(&self) -> bool {
        self.ok && self.ttft_ms <= SLO_TTFT_MS && self.tpot_ms.is_none_or(|t| t <= SLO_TPOT_MS)
    }
}

/// Figures of one class in one run.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ClassFigures {
    pub(crate) sent: f64,
    pub(crate) ok: f64,
    /// Answered 429: shed by the gateway's admission.
    pub(crate) shed: f64,
    /// Neither streamed to the end nor shed.
    pub(crate) failed: f64,
    pub(crate) ttft_mean_ms: f64,
    pub(crate) ttft_p90_ms: f64,
    pub(crate) ttft_p99_ms: f64,
    pub(crate) tpot_mean_ms: f64,
    /// Requests meeting both SLOs per simulated second of the run.
    pub(crate) goodput_rps: f64,
    /// Share of sent requests that met both SLOs; a shed request counts as missed.
    pub(crate) slo_attainment: f64,
}

/// Open-loop figures of one run, requests per simulated second.
#[derive(Clone, Debug, Default, PartialEq)]
pub(crate) struct ArrivalFigures {
    pub(crate) offered_rate: f64,
    pub(crate) ramp: (f64, f64),
    pub(crate) burstiness: f64,
    pub(crate) achieved_rate: f64,
    /// Arrivals not sent because the in-flight bound was reached.
    pub(crate) dropped: f64,
}

/// What a run adds beyond the router table: figures per class, and its arrivals when open-loop.
#[derive(Clone, Debug, Default)]
pub(crate) struct RunExtras {
    pub(crate) classes: BTreeMap<&'static str, ClassFigures>,
    pub(crate) arrivals: Option<ArrivalFigures>,
}

/// Figures per class over a run that lasted `duration_s` simulated seconds.
pub(crate) fn figures(outcomes: &[Outcome], duration_s: f64) -> BTreeMap<&'static str, ClassFigures> {
    let mut groups: BTreeMap<&'static str, Vec<&Outcome>> = BTreeMap::new();
    for outcome in outcomes {
        groups.entry(outcome.group).or_default().push(outcome);
    }
    groups
        .into_iter()
        .map(|(group, outcomes)| {
            let ok: Vec<&&Outcome> = outcomes.iter().filter(|o| o.ok).collect();
            let mut ttfts: Vec<f64> = ok.iter().map(|o| o.ttft_ms).collect();
            ttfts.sort_by(f64::total_cmp);
            let tpots: Vec<f64> = ok.iter().filter_map(|o| o.tpot_ms).collect();
            let shed = outcomes.iter().filter(|o| o.status == 429).count();
            let met = outcomes.iter().filter(|o| o.meets_slo()).count() as f64;
            let sent = outcomes.len() as f64;
            let figures = ClassFigures {
                sent,
                ok: ok.len() as f64,
                shed: shed as f64,
                failed: (outcomes.len() - ok.len() - shed) as f64,
                ttft_mean_ms: mean(&ttfts),
                ttft_p90_ms: percentile(&ttfts, 90.0),
                ttft_p99_ms: percentile(&ttfts, 99.0),
                tpot_mean_ms: mean(&tpots),
                goodput_rps: if duration_s > 0.0 { met / duration_s } else { f64::NAN },
                slo_attainment: met / sent,
            };
            (group, figures)
        })
        .collect()
}

fn mean(v: &[f64]) -> f64 {
    if v.is_empty() {
        f64::NAN
    } else {
        v.iter().sum::<f64>() / v.len() as f64
    }
}

/// Whether the runs have anything the router table does not already say.
pub(crate) fn worth_reporting<'a>(mut runs: impl Iterator<Item = &'a RunExtras>) -> bool {
    runs.any(|r| r.arrivals.is_some() || r.classes.keys().any(|g| *g != "critical"))
}

const COLUMNS: [(&str, &str); 10] = [
    ("sent", "sent"),
    ("shed", "shed (429)"),
    ("failed", "failed"),
    ("ttft_mean_ms", "TTFT mean ms"),
    ("ttft_p90_ms", "TTFT P90 ms"),
    ("ttft_p99_ms", "TTFT P99 ms"),
    ("tpot_mean_ms", "TPOT ms"),
    ("goodput_rps", "goodput req/s"),
    ("slo_attainment", "SLO met"),
    ("ok", "ok"),
];

impl ClassFigures {
    fn field(&self, key: &str) -> f64 {
        match key {
            "sent" => self.sent,
            "ok" => self.ok,
            "shed" => self.shed,
            "failed" => self.failed,
            "ttft_mean_ms" => self.ttft_mean_ms,
            "ttft_p90_ms" => self.ttft_p90_ms,
            "ttft_p99_ms" => self.ttft_p99_ms,
            "tpot_mean_ms" => self.tpot_mean_ms,
            "goodput_rps" => self.goodput_rps,
            "slo_attainment" => self.slo_attainment,
            _ => f64::NAN,
        }
    }
}

/// Mean of a field over the runs that have the class.
fn class_mean(runs: &[&RunExtras], group: &str, key: &str) -> f64 {
    let values: Vec<f64> = runs
        .iter()
        .filter_map(|r| r.classes.get(group))
        .map(|c| c.field(key))
        .collect();
    mean(&values)
}

fn arrival_mean(runs: &[&RunExtras], pick: impl Fn(&ArrivalFigures) -> f64) -> f64 {
    mean(
        &runs
            .iter()
            .filter_map(|r| r.arrivals.as_ref())
            .map(pick)
            .collect::<Vec<_>>(),
    )
}

/// Markdown: one table per KV size with a row per router and class (means over seeds), and the open-loop rates.
/// `runs` yields `(num_gpu_blocks, router, the runs' extras)` in table order.
pub(crate) fn report<'a>(runs: impl Iterator<Item = (u32, &'a str, Vec<&'a RunExtras>)>) -> String {
    let mut md = String::new();
    let _ = writeln!(
        md,
        "\n## Per class\n\nSLO: TTFT ≤ {SLO_TTFT_MS:.0} ms and TPOT ≤ {SLO_TPOT_MS:.0} ms (simulated). Goodput counts the \
         requests meeting both per simulated second; a shed request (429) misses the SLO. Client-side routers and \
         peers cannot shed, so they send every class to the pods.\n"
    );
    let (mut last_blocks, mut open) = (None, None);
    for (blocks, router, extras) in runs {
        if last_blocks != Some(blocks) {
            last_blocks = Some(blocks);
            let _ = write!(md, "\n### num_gpu_blocks = {blocks}\n\n| router | class |");
            for (_, title) in COLUMNS.iter().take(COLUMNS.len() - 1) {
                let _ = write!(md, " {title} |");
            }
            let _ = writeln!(md, " offered / achieved req/s | dropped |");
            let _ = writeln!(md, "|---|---|{}---:|---:|", "---:|".repeat(COLUMNS.len() - 1));
        }
        let groups: std::collections::BTreeSet<&str> = extras.iter().flat_map(|r| r.classes.keys().copied()).collect();
        let arrivals = if extras.iter().any(|r| r.arrivals.is_some()) {
            format!(
                "{:.2} / {:.2}",
                arrival_mean(&extras, |a| a.offered_rate),
                arrival_mean(&extras, |a| a.achieved_rate)
            )
        } else {
            "closed loop".into()
        };
        let dropped = arrival_mean(&extras, |a| a.dropped);
        if let Some(first) = extras.iter().find_map(|r| r.arrivals.as_ref()) {
            open.get_or_insert((first.ramp, first.burstiness));
        }
        for (i, group) in groups.iter().enumerate() {
            let _ = write!(md, "| {router} | {group} |");
            for (key, _) in COLUMNS.iter().take(COLUMNS.len() - 1) {
                let value = class_mean(&extras, group, key);
                let _ = match *key {
                    "slo_attainment" => write!(md, " {:.1} % |", value * 100.0),
                    "goodput_rps" => write!(md, " {value:.2} |"),
                    _ => write!(md, " {value:.0} |"),
                };
            }
            if i == 0 {
                let dropped = if dropped.is_nan() {
                    "–".into()
                } else {
                    format!("{dropped:.0}")
                };
                let _ = writeln!(md, " {arrivals} | {dropped} |");
            } else {
                let _ = writeln!(md, " | |");
            }
        }
    }
    if let Some(((from, to), burstiness)) = open {
        let _ = writeln!(
            md,
            "\nOpen loop: gamma gaps with shape (burstiness) {burstiness}, the rate ramping from {from:.2} to {to:.2} \
             req/s (first seed) over the requests. Offered is the schedule's mean rate, achieved what the client sent \
             from first to last send; dropped arrivals found the in-flight bound full and were never sent."
        );
    }
    md
}

/// summary.json entries: `<router>_<blocks>_<class>_<field>` (class with spaces and `%`/`×` folded into `-`).
pub(crate) fn summary<'a>(runs: impl Iterator<Item = (u32, &'a str, Vec<&'a RunExtras>)>) -> Vec<(String, Value)> {
    let mut out = Vec::new();
    for (blocks, router, extras) in runs {
        let groups: std::collections::BTreeSet<&str> = extras.iter().flat_map(|r| r.classes.keys().copied()).collect();
        for group in groups {
            let slug: String = group
                .chars()
                .map(|c| if c.is_ascii_alphanumeric() { c } else { '-' })
                .collect::<String>()
                .split('-')
                .filter(|s| !s.is_empty())
                .collect::<Vec<_>>()
                .join("-");
            for (key, _) in COLUMNS {
                out.push((
                    format!("{router}_{blocks}_{slug}_{key}"),
                    class_mean(&extras, group, key).into(),
                ));
            }
        }
        if extras.iter().any(|r| r.arrivals.is_some()) {
            out.push((
                format!("{router}_{blocks}_offered_rate"),
                arrival_mean(&extras, |a| a.offered_rate).into(),
            ));
            out.push((
                format!("{router}_{blocks}_achieved_rate"),
                arrival_mean(&extras, |a| a.achieved_rate).into(),
            ));
            out.push((
                format!("{router}_{blocks}_dropped"),
                arrival_mean(&extras, |a| a.dropped).into(),
            ));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn outcome(group: &'static str, status: u16, ttft_ms: f64, tpot_ms: f64) -> Outcome {
        Outcome {
            group,
            status,
            ok: status == 200,
            ttft_ms,
            tpot_ms: Some(tpot_ms),
        }
    }

    #[test]
    fn figures_count_shed_and_slo_per_class() {
        let outcomes = [
            outcome("critical", 200, 500.0, 50.0),
            outcome("critical", 200, 2_500.0, 50.0),
            outcome("critical", 200, 1_000.0, 150.0),
            outcome("critical", 0, 0.0, 0.0),
            outcome("sheddable", 429, 0.0, 0.0),
            outcome("sheddable", 200, 1_500.0, 99.0),
        ];
        let figures = figures(&outcomes, 10.0);
        let critical = &figures["critical"];
        assert_eq!(
            (critical.sent, critical.ok, critical.shed, critical.failed),
            (4.0, 3.0, 0.0, 1.0)
        );
        assert_eq!(critical.slo_attainment, 0.25);
        assert!((critical.goodput_rps - 0.1).abs() < 1e-12);
        assert!((critical.ttft_mean_ms - 4_000.0 / 3.0).abs() < 1e-9);
        assert_eq!(critical.ttft_p99_ms, 2_500.0);
        let sheddable = &figures["sheddable"];
        assert_eq!(
            (sheddable.shed, sheddable.failed, sheddable.slo_attainment),
            (1.0, 0.0, 0.5)
        );
    }

    #[test]
    fn report_lists_every_router_and_class() {
        let run = RunExtras {
            classes: figures(
                &[
                    outcome("critical", 200, 100.0, 10.0),
                    outcome("sheddable", 429, 0.0, 0.0),
                ],
                1.0,
            ),
            arrivals: Some(ArrivalFigures {
                offered_rate: 5.0,
                ramp: (2.5, 7.5),
                burstiness: 1.0,
                achieved_rate: 4.9,
                dropped: 0.0,
            }),
        };
        assert!(worth_reporting(std::iter::once(&run)));
        let md = report(vec![(5_000, "default", vec![&run]), (5_000, "random", vec![&run])].into_iter());
        assert_eq!(md.matches("| default |").count(), 2, "{md}");
        assert!(md.contains("| random | sheddable | 1 | 1 |"), "{md}");
        assert!(md.contains("5.00 / 4.90"), "{md}");
        let keys: Vec<String> = summary(vec![(5_000, "default", vec![&run])].into_iter())
            .into_iter()
            .map(|(k, _)| k)
            .collect();
        assert!(keys.contains(&"default_5000_sheddable_shed".to_owned()), "{keys:?}");
        assert!(keys.contains(&"default_5000_achieved_rate".to_owned()));
        let closed = RunExtras {
            classes: figures(&[outcome("critical", 200, 1.0, 1.0)], 1.0),
            arrivals: None,
        };
        assert!(!worth_reporting(std::iter::once(&closed)));
    }
}
