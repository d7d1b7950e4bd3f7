//! What a guarded release is judged on: the gateway's Prometheus text (`switchyard_requests_total` by model, target
//! model and outcome; the `switchyard_request_ttft_seconds` histogram), scraped from every gateway replica, summed,
//! and diffed against the snapshot taken when the step started.
//!
//! Only the lines needed are parsed, by hand: the gateway's own exposition is simple (no escapes in our label
//! values, one sample per line).

use std::{collections::BTreeMap, time::Duration};

use bytes::Bytes;
use http_body_util::{BodyExt as _, Empty};
use hyper_util::{
    client::legacy::{Client, connect::HttpConnector},
    rt::TokioExecutor,
};

use super::machine::Window;

const REQUESTS: &str = "switchyard_requests_total";
const TTFT_BUCKET: &str = "switchyard_request_ttft_seconds_bucket";

/// Cumulative counts of one (model, target model) pair.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct TargetTotals {
    pub ok: f64,
    pub errors: f64,
    pub sheds: f64,
    /// Cumulative TTFT histogram: (upper bound in seconds, count), sorted by bound, `+Inf` last.
    pub ttft: Vec<(f64, f64)>,
}

/// Every (model, target model) pair's totals across the scraped gateways.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct Totals {
    targets: BTreeMap<(String, String), TargetTotals>,
}

impl Totals {
    /// Parses one gateway's exposition.
    pub fn parse(text: &str) -> Totals {
        let mut totals = Totals::default();
        for line in text.lines() {
            let Some((name, labels, value)) = sample(line) else {
                continue;
            };
            let label = |key: &str| labels.iter().find(|(k, _)| *k == key).map(|(_, v)| v.to_string());
            let (Some(model), Some(target)) = (label("model"), label("target_model")) else {
                continue;
            };
            let entry = totals.targets.entry((model, target)).or_default();
            match name {
                REQUESTS => match label("outcome").as_deref() {
                    Some("Routed") => entry.ok += value,
                    Some("Error" | "NoCapacity503") => entry.errors += value,
                    Some("Shed429") => entry.sheds += value,
                    _ => {}
                },
                TTFT_BUCKET => {
                    let Some(le) = label("le").and_then(|le| parse_f64(&le)) else {
                        continue;
                    };
                    add_bucket(&mut entry.ttft, le, value);
                }
                _ => {}
            }
        }
        totals
    }

    /// Adds another gateway's totals (every replica routes a share of the traffic).
    pub fn add(&mut self, other: &Totals) {
        for (key, theirs) in &other.targets {
            let ours = self.targets.entry(key.clone()).or_default();
            ours.ok += theirs.ok;
            ours.errors += theirs.errors;
            ours.sheds += theirs.sheds;
            for &(le, count) in &theirs.ttft {
                add_bucket(&mut ours.ttft, le, count);
            }
        }
    }

    /// The totals of `target` when requested as `model`; zero when never seen.
    pub fn target(&self, model: &str, target: &str) -> TargetTotals {
        self.targets
            .get(&(model.to_owned(), target.to_owned()))
            .cloned()
            .unwrap_or_default()
    }
}

fn add_bucket(buckets: &mut Vec<(f64, f64)>, le: f64, count: f64) {
    match buckets.binary_search_by(|(b, _)| b.total_cmp(&le)) {
        Ok(i) => buckets[i].1 += count,
        Err(i) => buckets.insert(i, (le, count)),
    }
}

impl TargetTotals {
    /// What happened since `baseline`. A counter that went down means the gateway restarted; then everything it
    /// counted since is the window.
    pub fn since(&self, baseline: &TargetTotals) -> Window {
        let reset = self.ok < baseline.ok || self.errors < baseline.errors || self.sheds < baseline.sheds;
        let base = if reset { &TargetTotals::default() } else { baseline };
        let buckets: Vec<(f64, f64)> = self
            .ttft
            .iter()
            .map(|&(le, count)| {
                let before = base.ttft.iter().find(|(b, _)| *b == le).map_or(0.0, |(_, c)| *c);
                (le, (count - before).max(0.0))
            })
            .collect();
        Window {
            ok: (self.ok - base.ok).max(0.0).round() as u64,
            errors: (self.errors - base.errors).max(0.0).round() as u64,
            sheds: (self.sheds - base.sheds).max(0.0).round() as u64,
            ttft_p90_ms: quantile(0.9, &buckets).map(|s| s * 1e3),
        }
    }
}

/// The `q` quantile of a cumulative histogram, interpolating linearly inside the bucket it falls in (as
/// Prometheus' `histogram_quantile` does; the lowest bucket starts at 0, and a quantile in `+Inf` is the highest
/// finite bound). `None` without observations.
pub fn quantile(q: f64, buckets: &[(f64, f64)]) -> Option<f64> {
    let total = buckets.last()?.1;
    if total <= 0.0 {
        return None;
    }
    let rank = q * total;
    let mut previous = (0.0, 0.0);
    for &(le, count) in buckets {
        if count >= rank {
            if le.is_infinite() {
                return Some(previous.0);
            }
            let in_bucket = count - previous.1;
            let fraction = if in_bucket > 0.0 {
                (rank - previous.1) / in_bucket
            } else {
                1.0
            };
            return Some(previous.0 + (le - previous.0) * fraction);
        }
        previous = (le, count);
    }
    Some(previous.0)
}

/// A sample line's name, labels and value.
type Sample<'a> = (&'a str, Vec<(&'a str, &'a str)>, f64);

/// `name{labels} value` (labels optional); `None` for comments and lines we cannot read.
fn sample(line: &str) -> Option<Sample<'_>> {
    let line = line.trim();
    if line.is_empty() || line.starts_with('#') {
        return None;
    }
    let (head, value) = match line.find('}') {
        Some(close) => (&line[..=close], line[close + 1..].trim()),
        None => line.split_once(' ')?,
    };
    let value = parse_f64(value.split_whitespace().next()?)?;
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, rest.strip_suffix('}')?),
        None => (head, ""),
    };
    let labels = labels
        .split(',')
        .filter(|pair| !pair.trim().is_empty())
        .filter_map(|pair| {
            let (k, v) = pair.split_once('=')?;
            Some((k.trim(), v.trim().trim_matches('"')))
        })
        .collect();
    Some((name, labels, value))
}

fn parse_f64(text: &str) -> Option<f64> {
    match text {
        "+Inf" | "Inf" => Some(f64::INFINITY),
        "-Inf" => Some(f64::NEG_INFINITY),
        _ => text.parse().ok(),
    }
}

/// Fetches and sums the gateways' /metrics.
#[derive(Clone, Debug)]
pub struct Scraper {
    urls: Vec<String>,
    timeout: Duration,
    client: Client<HttpConnector, Empty<Bytes>>,
}

impl Scraper {
    pub fn new(urls: Vec<String>, timeout: Duration) -> Scraper {
        Scraper {
            urls,
            timeout,
            client: Client::builder(TokioExecutor::new()).build_http(),
        }
    }

    /// The summed totals of every gateway, or why there are none. One unreachable gateway makes the whole scrape
    /// unavailable: a partial sum would judge the canary on part of its traffic.
    pub async fn scrape(&self) -> Result<Totals, String> {
        if self.urls.is_empty() {
            return Err("no --gateway-metrics-url configured".into());
        }
        let fetches = self.urls.iter().map(|url| self.fetch(url));
        let mut totals = Totals::default();
        for result in futures::future::join_all(fetches).await {
            totals.add(&Totals::parse(&result?));
        }
        Ok(totals)
    }

    async fn fetch(&self, url: &str) -> Result<String, String> {
        let uri: hyper::Uri = url.parse().map_err(|e| format!("{url}: {e}"))?;
        let request = async {
            let response = self.client.get(uri).await.map_err(|e| format!("{url}: {e}"))?;
            if !response.status().is_success() {
                return Err(format!("{url}: HTTP {}", response.status()));
            }
            let body = response
                .into_body()
                .collect()
                .await
                .map_err(|e| format!("{url}: {e}"))?
                .to_bytes();
            String::from_utf8(body.to_vec()).map_err(|_| format!("{url}: body is not UTF-8"))
        };
        tokio::time::timeout(self.timeout, request)
            .await
            .map_err(|_| format!("{url}: no answer within {:?}", self.timeout))?
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const TEXT: &str = r#"# HELP switchyard_requests Requests by model, target model and routing outcome.
# TYPE switchyard_requests counter
switchyard_requests_total{model="qwq",target_model="qwq-32b",outcome="Routed"} 90
switchyard_requests_total{model="qwq",target_model="qwq-32b",outcome="Error"} 6
switchyard_requests_total{model="qwq",target_model="qwq-32b",outcome="NoCapacity503"} 4
switchyard_requests_total{model="qwq",target_model="qwq-32b",outcome="Shed429"} 3
switchyard_requests_total{model="qwq",target_model="",outcome="NotFound404"} 9
switchyard_request_ttft_seconds_bucket{le="0.1",model="qwq",target_model="qwq-32b"} 10
switchyard_request_ttft_seconds_bucket{le="0.2",model="qwq",target_model="qwq-32b"} 50
switchyard_request_ttft_seconds_bucket{le="0.4",model="qwq",target_model="qwq-32b"} 90
switchyard_request_ttft_seconds_bucket{le="+Inf",model="qwq",target_model="qwq-32b"} 90
switchyard_request_ttft_seconds_count{model="qwq",target_model="qwq-32b"} 90
# EOF
"#;

    #[test]
    fn outcomes_are_folded_into_ok_errors_and_sheds() {
        let totals = Totals::parse(TEXT);
        let t = totals.target("qwq", "qwq-32b");
        assert_eq!((t.ok, t.errors, t.sheds), (90.0, 10.0, 3.0));
        assert_eq!(t.ttft.len(), 4);
        assert_eq!(totals.target("qwq", "other"), TargetTotals::default());
    }

    #[test]
    fn quantiles_interpolate_inside_the_bucket() {
        let buckets = [(0.1, 10.0), (0.2, 50.0), (0.4, 90.0), (f64::INFINITY, 90.0)];
        // Rank 81 of 90 lies 31/40 into (0.2, 0.4].
        let p90 = quantile(0.9, &buckets).unwrap();
        assert!((p90 - (0.2 + 0.2 * 31.0 / 40.0)).abs() < 1e-9, "{p90}");
        assert!((quantile(0.5, &buckets).unwrap() - (0.1 + 0.1 * 35.0 / 40.0)).abs() < 1e-9);
        // In the first bucket, from 0.
        assert!((quantile(0.05, &buckets).unwrap() - 0.045).abs() < 1e-9);
        assert_eq!(quantile(0.9, &[(0.1, 0.0), (f64::INFINITY, 0.0)]), None);
        assert_eq!(
            quantile(0.9, &[(0.1, 1.0), (f64::INFINITY, 10.0)]),
            Some(0.1),
            "+Inf answers the top bound"
        );
    }

    #[test]
    fn windows_diff_against_the_baseline_and_survive_a_gateway_restart() {
        let before = Totals::parse(TEXT).target("qwq", "qwq-32b");
        let after_text = TEXT
            .replace("outcome=\"Routed\"} 90", "outcome=\"Routed\"} 190")
            .replace(
                "le=\"0.4\",model=\"qwq\",target_model=\"qwq-32b\"} 90",
                "le=\"0.4\",model=\"qwq\",target_model=\"qwq-32b\"} 140",
            )
            .replace(
                "le=\"+Inf\",model=\"qwq\",target_model=\"qwq-32b\"} 90",
                "le=\"+Inf\",model=\"qwq\",target_model=\"qwq-32b\"} 190",
            );
        let after = Totals::parse(&after_text).target("qwq", "qwq-32b");
        let window = after.since(&before);
        assert_eq!((window.ok, window.errors, window.sheds), (100, 0, 0));
        // 50 new observations in (0.2, 0.4], 50 above 0.4: P90 is the top finite bound.
        assert_eq!(window.ttft_p90_ms, Some(400.0));

        let restarted =
            Totals::parse("switchyard_requests_total{model=\"qwq\",target_model=\"qwq-32b\",outcome=\"Routed\"} 5\n");
        assert_eq!(restarted.target("qwq", "qwq-32b").since(&before).ok, 5);
    }

    #[test]
    fn gateways_are_summed() {
        let mut sum = Totals::parse(TEXT);
        sum.add(&Totals::parse(TEXT));
        let t = sum.target("qwq", "qwq-32b");
        assert_eq!((t.ok, t.ttft[1]), (180.0, (0.2, 100.0)));
    }

    #[tokio::test]
    async fn an_unreachable_gateway_is_no_data() {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let url = format!("http://{}/metrics", listener.local_addr().unwrap());
        drop(listener);
        let scraper = Scraper::new(vec![url.clone()], Duration::from_secs(2));
        let error = scraper.scrape().await.unwrap_err();
        assert!(error.starts_with(&url), "{error}");
        assert!(Scraper::new(Vec::new(), Duration::from_secs(1)).scrape().await.is_err());
    }
}
