//! Pipeline and decision-tree runs on hand-built cycles.

use std::time::Instant;

use rand::{SeedableRng, rngs::SmallRng};

use super::*;
use crate::{
    Criticality, Endpoint, Request,
    filter::{FilterConfig, HasCapacityFilter, LowQueueFilter},
    fixtures::CycleFixture,
    picker::PickerConfig,
    scorer::{ScorerConfig, Weight},
};

fn run(profile: &ProfileConfig, fixture: &CycleFixture, seed: u64) -> Run {
    Profile::new("p", profile.clone()).run(&fixture.cycle(), 3, &mut SmallRng::seed_from_u64(seed))
}

fn weight(w: f64) -> Weight {
    Weight::new(w).unwrap_or_default()
}

#[test]
fn a_pipeline_weights_and_sums_clamped_ratings() {
    let now = Instant::now();
    let endpoints = vec![
        Endpoint::test("a", now).queue(0).kv(0.5),
        Endpoint::test("b", now).queue(4).kv(f64::NAN),
    ];
    let fixture = CycleFixture::new(Request::test(""), endpoints, now);
    let pipeline = Pipeline {
        filters: Vec::new(),
        scorers: vec![
            ScorerConfig::Queue { weight: weight(2.0) },
            ScorerConfig::KvCache { weight: weight(1.0) },
        ],
        picker: PickerConfig::MaxScore {},
    };
    let run = run(&ProfileConfig::Pipeline(pipeline), &fixture, 1);
    assert_eq!(run.totals, vec![2.5, 0.0]);
    assert_eq!(run.ranked, vec![0, 1]);
    assert_eq!(run.ratings[1].values, vec![0.5, 0.0]);
    assert_eq!(run.reason, "max score 2.50 of 3.00: queue 2.00, kv-cache 0.50");
}

#[test]
fn a_pipeline_records_which_filter_removed_whom_and_stops_when_none_are_left() {
    let now = Instant::now();
    let endpoints = vec![Endpoint::test("a", now).queue(1), Endpoint::test("b", now).queue(9)];
    let fixture = CycleFixture::new(Request::test(""), endpoints, now);
    let pipeline = Pipeline {
        filters: vec![
            FilterConfig::LowQueue(LowQueueFilter { threshold: 5 }),
            FilterConfig::HasCapacity(HasCapacityFilter {
                queue_threshold: 0,
                kv_cache_threshold: 1.0,
            }),
        ],
        scorers: Vec::new(),
        picker: PickerConfig::MaxScore {},
    };
    let run = run(&ProfileConfig::Pipeline(pipeline), &fixture, 1);
    assert!(run.ranked.is_empty());
    assert_eq!(run.filtered_by, vec![Some("has-capacity"), Some("low-queue")]);
    assert_eq!(run.reason, "filter has-capacity removed every endpoint");
}

#[test]
fn max_score_reports_ties() {
    let now = Instant::now();
    let endpoints = vec![
        Endpoint::test("a", now),
        Endpoint::test("b", now),
        Endpoint::test("c", now).kv(0.5),
    ];
    let fixture = CycleFixture::new(Request::test(""), endpoints, now);
    let run = run(&ProfileConfig::Pipeline(Pipeline::default()), &fixture, 1);
    assert!(
        run.reason.starts_with(
            "max score 16.00 of 20.00: queue 2.00, kv-cache 2.00, prefix-cache 0.00, inflight 8.00, prefill-backlog 4.00; 2 tied"
        ),
        "{}",
        run.reason
    );
    assert!(run.reason.ends_with("; 2 tied, random tie-break"), "{}", run.reason);
}

fn tree() -> ProfileConfig {
    ProfileConfig::DecisionTree(DecisionTree::default())
}

#[test]
fn the_tree_keeps_upstream_v0_3_constants() {
    let tree = DecisionTree::default();
    assert_eq!(
        tree.has_capacity,
        HasCapacityFilter {
            queue_threshold: 5,
            kv_cache_threshold: 0.8
        }
    );
    assert_eq!(tree.low_queue.threshold, 128);
    assert_eq!(tree.lora_affinity.threshold, 0.999);
}

#[test]
fn a_critical_request_follows_lora_affinity_then_least_queue_and_kv_cache() {
    let now = Instant::now();
    let endpoints = vec![
        Endpoint::test("busy", now).queue(200).loras(&["x"], &[], 4),
        Endpoint::test("warm", now).queue(3).kv(0.5).loras(&["x"], &[], 4),
        Endpoint::test("cold", now).queue(0).loras(&[], &[], 4),
        Endpoint::test("warm-full", now).queue(3).kv(0.9).loras(&["x"], &[], 4),
    ];
    let request = Request::test("").lora("x").criticality(Criticality::Critical);
    let fixture = CycleFixture::new(request, endpoints, now);
    let run = run(&tree(), &fixture, 3);
    assert_eq!(run.ranked, vec![1]);
    assert_eq!(
        run.filtered_by,
        vec![Some("low-queue"), None, Some("lora-affinity"), Some("least-kv-cache")]
    );
    assert_eq!(
        run.reason,
        "decision tree: critical → low-queue → lora-affinity → least-queue → least-kv-cache; \
         random pick among 1; 1 of 4 endpoints passed the filters"
    );
    assert!(run.ratings.is_empty());
}

#[test]
fn a_standard_request_without_capacity_anywhere_is_routed_over_all_pods() {
    let now = Instant::now();
    let endpoints = vec![
        Endpoint::test("a", now).queue(9).kv(0.9),
        Endpoint::test("b", now).queue(30).kv(0.95),
    ];
    let fixture = CycleFixture::new(Request::test(""), endpoints, now);
    let run = run(&tree(), &fixture, 3);
    assert_eq!(run.ranked, vec![0]);
    assert_eq!(run.filtered_by, vec![None, Some("least-queue")]);
    assert!(
        run.reason
            .starts_with("decision tree: not critical → has-capacity (failed) → least-queue"),
        "{}",
        run.reason
    );
}

#[test]
fn a_standard_request_goes_to_pods_with_capacity() {
    let now = Instant::now();
    let endpoints = vec![
        Endpoint::test("a", now).queue(0).kv(0.95),
        Endpoint::test("b", now).queue(5).kv(0.2),
    ];
    let fixture = CycleFixture::new(Request::test(""), endpoints, now);
    let run = run(&tree(), &fixture, 3);
    assert_eq!(run.ranked, vec![1]);
    assert_eq!(run.filtered_by, vec![Some("has-capacity"), None]);
}

#[test]
fn the_tree_picks_uniformly_among_survivors() {
    let now = Instant::now();
    let endpoints = vec![Endpoint::test("a", now), Endpoint::test("b", now)];
    let fixture = CycleFixture::new(Request::test(""), endpoints, now);
    let wins_a = (0..400)
        .filter(|&seed| run(&tree(), &fixture, seed).ranked[0] == 0)
        .count();
    assert!((140..=260).contains(&wins_a), "{wins_a}");
}
