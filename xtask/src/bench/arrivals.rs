//! Open-loop arrivals for the routing benchmark: gamma inter-arrival gaps like vLLM's benchmark_serving
//! (`--request-rate`, `--burstiness`), scheduled in simulated time, each request on its own task.

use std::{future::Future, time::Duration};

use rand::{Rng, SeedableRng, rngs::StdRng};
use tokio::{task::JoinSet, time::Instant};

/// How requests are released.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Arrival {
    /// A fixed number of clients, each sending its next request when the previous one finished.
    Closed,
    /// Requests at gamma-distributed gaps regardless of how the servers keep up (Poisson when burstiness is 1).
    Poisson,
}

/// When each request of an open-loop run is sent.
#[derive(Clone, Debug, PartialEq)]
pub(crate) struct Schedule {
    /// Offsets from the start in simulated seconds, non-decreasing, one per request.
    pub(crate) offsets: Vec<f64>,
    /// Mean offered rate over the run, requests per simulated second.
    pub(crate) offered_rate: f64,
    /// Rate at the first and the last request, requests per simulated second.
    pub(crate) ramp: (f64, f64),
    pub(crate) burstiness: f64,
}

/// Arrival offsets for `n` requests. Gap i is drawn from a gamma distribution with shape `burstiness` and mean
/// `1/rate_i`, as benchmark_serving does; `rate_i` moves linearly from `from` to `to` over the requests (by index,
/// so a ramp spends more wall time at its low end). The same seed gives the same schedule.
pub(crate) fn schedule(n: usize, from: f64, to: f64, burstiness: f64, seed: u64) -> Schedule {
    let mut rng = StdRng::seed_from_u64(seed ^ 0xA881_7A15);
    let mut at = 0.0;
    let offsets: Vec<f64> = (0..n)
        .map(|i| {
            let progress = if n > 1 { i as f64 / (n - 1) as f64 } else { 0.0 };
            let rate = from + (to - from) * progress;
            // The first request goes at t = 0, like benchmark_serving's first yield.
            if i > 0 {
                at += gamma(&mut rng, burstiness) / burstiness / rate;
            }
            at
        })
        .collect();
    let span = offsets.last().copied().unwrap_or(0.0);
    Schedule {
        offered_rate: if span > 0.0 { (n - 1) as f64 / span } else { f64::NAN },
        offsets,
        ramp: (from, to),
        burstiness,
    }
}

/// A draw from Gamma(shape, 1): Marsaglia and Tsang's squeeze method; shapes below 1 use the `U^(1/shape)` boost.
fn gamma(rng: &mut impl Rng, shape: f64) -> f64 {
    if shape < 1.0 {
        let u: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
        return gamma(rng, shape + 1.0) * u.powf(1.0 / shape);
    }
    let d = shape - 1.0 / 3.0;
    let c = 1.0 / (9.0 * d).sqrt();
    // Accepts with probability above 0.95 per round for every shape ≥ 1, so the bound is never reached in practice.
    for _ in 0..1_000 {
        let x = standard_normal(rng);
        let v = (1.0 + c * x).powi(3);
        if v <= 0.0 {
            continue;
        }
        let u: f64 = rng.random();
        if u < 1.0 - 0.0331 * x.powi(4) || u.ln() < 0.5 * x * x + d * (1.0 - v + v.ln()) {
            return d * v;
        }
    }
    d
}

/// Box–Muller.
fn standard_normal(rng: &mut impl Rng) -> f64 {
    let u1: f64 = rng.random::<f64>().max(f64::MIN_POSITIVE);
    let u2: f64 = rng.random();
    (-2.0 * u1.ln()).sqrt() * (std::f64::consts::TAU * u2).cos()
}

/// What an open-loop run sent and measured.
#[derive(Debug)]
pub(crate) struct OpenLoop<T> {
    /// One result per sent request, in send order.
    pub(crate) results: Vec<T>,
    /// Requests not sent because `max_in_flight` were still unanswered at their arrival time.
    pub(crate) dropped: usize,
    /// Requests per simulated second actually sent, first to last send.
    pub(crate) achieved_rate: f64,
}

/// Sends request i at `offsets[i] / time_scale` wall seconds after the start, each on its own task, with at most
/// `max_in_flight` unanswered (an arrival beyond that is dropped and counted, so a stuck server cannot make the
/// run unbounded); returns once every sent request has finished. Sending late never shifts later arrivals.
pub(crate) async fn open_loop<T, F, Fut>(
    offsets: &[f64],
    time_scale: f64,
    max_in_flight: usize,
    mut start: F,
) -> OpenLoop<T>
where
    T: Send + 'static,
    F: FnMut(usize) -> Fut,
    Fut: Future<Output = T> + Send + 'static,
{
    let began = Instant::now();
    let mut tasks = JoinSet::new();
    let mut finished: Vec<(usize, T)> = Vec::with_capacity(offsets.len());
    let (mut dropped, mut first, mut last) = (0, None, None);
    for (index, &offset) in offsets.iter().enumerate() {
        tokio::time::sleep_until(began + Duration::from_secs_f64(offset.max(0.0) / time_scale)).await;
        while let Some(done) = tasks.try_join_next() {
            finished.extend(done.ok());
        }
        if tasks.len() >= max_in_flight {
            dropped += 1;
            continue;
        }
        let sent = began.elapsed().as_secs_f64() * time_scale;
        first.get_or_insert(sent);
        last = Some(sent);
        let request = start(index);
        tasks.spawn(async move { (index, request.await) });
    }
    while let Some(done) = tasks.join_next().await {
        finished.extend(done.ok());
    }
    finished.sort_by_key(|(index, _)| *index);
    let sent = finished.len();
    let achieved_rate = match (first, last) {
        (Some(first), Some(last)) if last > first => (sent.saturating_sub(1)) as f64 / (last - first),
        _ => f64::NAN,
    };
    OpenLoop {
        results: finished.into_iter().map(|(_, result)| result).collect(),
        dropped,
        achieved_rate,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn gaps(s: &Schedule) -> Vec<f64> {
        s.offsets.windows(2).map(|w| w[1] - w[0]).collect()
    }

    fn mean_and_cv(v: &[f64]) -> (f64, f64) {
        let mean = v.iter().sum::<f64>() / v.len() as f64;
        let var = v.iter().map(|x| (x - mean).powi(2)).sum::<f64>() / v.len() as f64;
        (mean, var.sqrt() / mean)
    }

    #[test]
    fn poisson_gaps_have_the_rate_and_unit_coefficient_of_variation() {
        let s = schedule(20_001, 4.0, 4.0, 1.0, 0);
        let (mean, cv) = mean_and_cv(&gaps(&s));
        assert!((mean - 0.25).abs() < 0.01, "mean gap {mean}");
        assert!((cv - 1.0).abs() < 0.05, "cv {cv}");
        assert!((s.offered_rate - 4.0).abs() < 0.15, "offered {}", s.offered_rate);
        assert_eq!(s.offsets[0], 0.0);
        assert!(s.offsets.windows(2).all(|w| w[0] <= w[1]));
    }

    #[test]
    fn burstiness_is_the_gamma_shape() {
        // CV = 1/√shape: 0.25 is bursty (CV 2), 4 is smooth (CV 0.5); the mean stays 1/rate.
        for (shape, want_cv) in [(0.25, 2.0), (4.0, 0.5)] {
            let (mean, cv) = mean_and_cv(&gaps(&schedule(40_001, 2.0, 2.0, shape, 1)));
            assert!((mean - 0.5).abs() < 0.03, "shape {shape}: mean gap {mean}");
            assert!((cv - want_cv).abs() < want_cv * 0.08, "shape {shape}: cv {cv}");
        }
    }

    #[test]
    fn schedules_are_reproducible_per_seed() {
        assert_eq!(schedule(100, 1.0, 3.0, 1.0, 7), schedule(100, 1.0, 3.0, 1.0, 7));
        assert_ne!(schedule(100, 1.0, 3.0, 1.0, 7), schedule(100, 1.0, 3.0, 1.0, 8));
    }

    #[test]
    fn a_ramp_speeds_up_from_first_to_last_request() {
        let g = gaps(&schedule(30_001, 1.0, 3.0, 1.0, 2));
        let (early, _) = mean_and_cv(&g[..3_000]);
        let (late, _) = mean_and_cv(&g[g.len() - 3_000..]);
        assert!((early - 1.0 / 1.1).abs() < 0.08, "early mean gap {early}");
        assert!((late - 1.0 / 2.9).abs() < 0.03, "late mean gap {late}");
    }

    #[tokio::test(start_paused = true)]
    async fn open_loop_sends_on_schedule_and_drops_beyond_the_in_flight_bound() {
        // Simulated offsets 0, 10, 20, 30 s at time scale 10: wall 0, 1, 2, 3 s. Each request takes 1.5 s of wall
        // time, so with at most one in flight the second and fourth find the first and third still running.
        let began = Instant::now();
        let run = open_loop(&[0.0, 10.0, 20.0, 30.0], 10.0, 1, |index| async move {
            let sent = began.elapsed();
            tokio::time::sleep(Duration::from_millis(1_500)).await; // tidy: sleep is the test: paused-clock work
            (index, sent)
        })
        .await;
        let sent: Vec<(usize, u64)> = run.results.iter().map(|(i, at)| (*i, at.as_millis() as u64)).collect();
        assert_eq!(sent, vec![(0, 0), (2, 2_000)]);
        assert_eq!(run.dropped, 2);
        assert!((run.achieved_rate - 0.05).abs() < 1e-9, "{}", run.achieved_rate);

        let run = open_loop(&[0.0, 10.0, 20.0, 30.0], 10.0, 8, |index| async move { index }).await;
        assert_eq!((run.results, run.dropped), (vec![0, 1, 2, 3], 0));
        assert!((run.achieved_rate - 0.1).abs() < 1e-9);
    }
}
