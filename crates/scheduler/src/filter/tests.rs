//! Behaviour of each filter, plus the property that no filter adds an endpoint.

use std::time::{Duration, Instant};

use proptest::prelude::*;
use rand::{SeedableRng, rngs::SmallRng};

use super::*;
use crate::{Endpoint, Request, fixtures::CycleFixture};

fn run(filter: &dyn Filter, fixture: &CycleFixture) -> Vec<usize> {
    filter.filter(&fixture.cycle(), &fixture.all(), &mut SmallRng::seed_from_u64(7))
}

fn pool(now: Instant, queues_and_kv: &[(u32, f64)]) -> Vec<Endpoint> {
    queues_and_kv
        .iter()
        .enumerate()
        .map(|(i, &(q, kv))| Endpoint::test(&format!("p{i}"), now).queue(q).kv(kv))
        .collect()
}

#[test]
fn least_queue_keeps_the_lowest_band_not_only_the_minimum() {
    let now = Instant::now();
    // Range 0..=8 over 4 pods: the band is [0, 2].
    let fixture = CycleFixture::new(
        Request::test(""),
        pool(now, &[(0, 0.0), (2, 0.0), (3, 0.0), (8, 0.0)]),
        now,
    );
    assert_eq!(run(&LeastQueueFilter, &fixture), vec![0, 1]);
}

#[test]
fn least_queue_keeps_everyone_when_queues_are_equal() {
    let now = Instant::now();
    let fixture = CycleFixture::new(Request::test(""), pool(now, &[(4, 0.0), (4, 0.0)]), now);
    assert_eq!(run(&LeastQueueFilter, &fixture), vec![0, 1]);
}

#[test]
fn least_kv_cache_keeps_the_lowest_band() {
    let now = Instant::now();
    // Range 0.1..=0.9 over 2 pods: the band is [0.1, 0.5].
    let fixture = CycleFixture::new(Request::test(""), pool(now, &[(0, 0.9), (0, 0.5), (0, 0.1)]), now);
    assert_eq!(run(&LeastKvCacheFilter, &fixture), vec![2]);
    let fixture = CycleFixture::new(Request::test(""), pool(now, &[(0, 0.9), (0, 0.1)]), now);
    assert_eq!(run(&LeastKvCacheFilter, &fixture), vec![1]);
}

#[test]
fn low_queue_is_a_strict_threshold() {
    let now = Instant::now();
    let fixture = CycleFixture::new(Request::test(""), pool(now, &[(127, 0.0), (128, 0.0)]), now);
    assert_eq!(run(&LowQueueFilter::default(), &fixture), vec![0]);
    assert_eq!(run(&LowQueueFilter { threshold: 129 }, &fixture), vec![0, 1]);
}

#[test]
fn has_capacity_needs_both_a_short_queue_and_free_kv_cache() {
    let now = Instant::now();
    let fixture = CycleFixture::new(Request::test(""), pool(now, &[(5, 0.8), (6, 0.1), (0, 0.81)]), now);
    assert_eq!(run(&HasCapacityFilter::default(), &fixture), vec![0]);
}

#[test]
fn fresh_metrics_drops_stale_pods_but_fails_open() {
    let scraped = Instant::now();
    let endpoints = vec![
        Endpoint::test("a", scraped),
        Endpoint::test("b", scraped + Duration::from_millis(300)),
        Endpoint::test("c", scraped).scraped(None),
    ];
    let fixture = CycleFixture::new(Request::test(""), endpoints, scraped + Duration::from_millis(400));
    assert_eq!(run(&FreshMetricsFilter::default(), &fixture), vec![1]);
    let fixture = CycleFixture {
        now: scraped + Duration::from_secs(5),
        ..fixture
    };
    assert_eq!(run(&FreshMetricsFilter::default(), &fixture), vec![0, 1, 2]);
}

fn lora_pool(now: Instant) -> Vec<Endpoint> {
    vec![
        Endpoint::test("active", now).loras(&["x"], &[], 2),
        Endpoint::test("free", now).loras(&["y"], &[], 2),
        Endpoint::test("full", now).loras(&["y", "z"], &[], 2),
        Endpoint::test("silent", now),
    ]
}

#[test]
fn lora_affinity_prefers_pods_with_the_adapter_active() {
    let now = Instant::now();
    let fixture = CycleFixture::new(Request::test("").lora("x"), lora_pool(now), now);
    assert_eq!(run(&LoraAffinityFilter::default(), &fixture), vec![0]);
    // With threshold 0 the preference flips to pods with a free slot.
    assert_eq!(run(&LoraAffinityFilter { threshold: 0.0 }, &fixture), vec![1]);
}

#[test]
fn lora_affinity_falls_back_to_free_slots_then_to_everyone() {
    let now = Instant::now();
    let fixture = CycleFixture::new(Request::test("").lora("new"), lora_pool(now), now);
    assert_eq!(run(&LoraAffinityFilter::default(), &fixture), vec![0, 1]);
    let fixture = CycleFixture::new(Request::test("").lora("new"), lora_pool(now)[2..].to_vec(), now);
    assert_eq!(run(&LoraAffinityFilter::default(), &fixture), vec![0, 1]);
}

#[test]
fn lora_filters_pass_requests_without_an_adapter() {
    let now = Instant::now();
    let fixture = CycleFixture::new(Request::test(""), lora_pool(now), now);
    assert_eq!(run(&LoraAffinityFilter::default(), &fixture), vec![0, 1, 2, 3]);
    assert_eq!(run(&LowCostLoraFilter, &fixture), vec![0, 1, 2, 3]);
}

#[test]
fn low_cost_lora_keeps_active_or_free_slot_pods() {
    let now = Instant::now();
    let fixture = CycleFixture::new(Request::test("").lora("x"), lora_pool(now), now);
    assert_eq!(run(&LowCostLoraFilter, &fixture), vec![0, 1]);
}

fn all_filters() -> Vec<FilterConfig> {
    vec![
        FilterConfig::LeastQueue {},
        FilterConfig::LeastKvCache {},
        FilterConfig::LowQueue(LowQueueFilter { threshold: 4 }),
        FilterConfig::LoraAffinity(LoraAffinityFilter { threshold: 0.5 }),
        FilterConfig::LowCostLora {},
        FilterConfig::HasCapacity(HasCapacityFilter::default()),
        FilterConfig::FreshMetrics(FreshMetricsFilter::default()),
    ]
}

fn arb_endpoint(now: Instant) -> impl Strategy<Value = Endpoint> {
    (0u32..10, 0.0..1.0f64, any::<bool>(), 0usize..3, 0u32..3, any::<bool>()).prop_map(
        move |(queue, kv, fresh, active, max, lora)| {
            let mut endpoint = Endpoint::test("p", now).queue(queue).kv(kv);
            if !fresh {
                endpoint = endpoint.scraped(None);
            }
            if lora {
                endpoint = endpoint.loras(&["x", "y", "z"][..active], &[], max);
            }
            endpoint
        },
    )
}

proptest! {
    #[test]
    fn filters_never_add_endpoints(
        endpoints in prop::collection::vec(arb_endpoint(Instant::now()), 0..12),
        subset in prop::collection::vec(any::<bool>(), 12),
        adapter in prop::option::of(prop::sample::select(vec!["x", "w"])),
        seed in any::<u64>(),
    ) {
        let now = endpoints.first().and_then(|e| e.metrics.updated_at).unwrap_or_else(Instant::now);
        let mut request = Request::test("");
        if let Some(adapter) = adapter {
            request = request.lora(adapter);
        }
        let fixture = CycleFixture::new(request, endpoints, now);
        let candidates: Vec<usize> = fixture.all().into_iter().filter(|&i| subset[i]).collect();
        for config in all_filters() {
            let kept = config.as_filter().filter(&fixture.cycle(), &candidates, &mut SmallRng::seed_from_u64(seed));
            // A subsequence of the input: nothing added, nothing duplicated, order kept.
            let mut rest = candidates.iter();
            for idx in &kept {
                prop_assert!(rest.any(|c| c == idx), "{} returned {:?} from {:?}", config.as_filter().name(), kept, candidates);
            }
        }
    }
}
