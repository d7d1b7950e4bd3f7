//! Parsing, error messages, and proof that every option reaches the scheduler.

use std::time::{Duration, Instant};

use rand::{SeedableRng, rngs::SmallRng};

use super::*;
use crate::{
    Criticality, Decision, Endpoint, Outcome, Request, Scheduler,
    filter::FilterConfig,
    picker::PickerConfig,
    profile::{DecisionTree, Pipeline},
    scorer::{ScorerConfig, Weight},
};

fn parse(yaml: &str) -> SchedulerConfig {
    SchedulerConfig::from_yaml(yaml).unwrap_or_else(|e| panic!("{e}\n{yaml}"))
}

fn error(yaml: &str) -> String {
    match SchedulerConfig::from_yaml(yaml) {
        Ok(config) => panic!("accepted {config:?}"),
        Err(e) => e.to_string(),
    }
}

fn scheduler(yaml: &str) -> Scheduler {
    Scheduler::new(&parse(yaml)).unwrap_or_else(|e| panic!("{e}"))
}

fn route(scheduler: &Scheduler, request: &Request, endpoints: &[Endpoint], now: Instant) -> Decision {
    scheduler.schedule(request, endpoints, now, &mut SmallRng::seed_from_u64(5))
}

fn chosen(decision: &Decision) -> &str {
    decision.endpoint.as_ref().map_or("-", |id| id.as_str())
}

const EXAMPLE: &str = "
profile: prefix-heavy
fallbacks: 1
saturation: { queueDepthThreshold: 7, kvCacheThreshold: 0.9, metricsStalenessMs: 500 }
prefix: { blockSizeChars: 32, maxBlocks: 128, lruCapacityPerEndpoint: 1000 }
profiles:
  prefix-heavy:
    filters: [ { type: fresh-metrics, stalenessMs: 300 }, { type: least-queue } ]
    scorers: [ { type: queue, weight: 2 }, { type: kv-cache, weight: 2.5 }, { type: prefix-cache } ]
    picker: { type: weighted-random }
  strict-tree:
    type: decision-tree
    hasCapacity: { queueThreshold: 3, kvCacheThreshold: 0.7 }
    lowQueue: { threshold: 64 }
    loraAffinity: { threshold: 0.5 }
";

#[test]
fn the_documented_example_parses_into_typed_plugins() {
    let config = parse(EXAMPLE);
    assert_eq!(config.profile, "prefix-heavy");
    assert_eq!(config.fallbacks, 1);
    assert_eq!(config.saturation.queue_depth_threshold, 7);
    assert_eq!(config.prefix.block_size_chars.get(), 32);
    let weight = |w| Weight::new(w).unwrap_or_default();
    assert_eq!(
        config.profiles.get("prefix-heavy"),
        Some(&ProfileConfig::Pipeline(Pipeline {
            filters: vec![
                FilterConfig::FreshMetrics(crate::filter::FreshMetricsFilter { staleness_ms: 300 }),
                FilterConfig::LeastQueue {},
            ],
            scorers: vec![
                ScorerConfig::Queue { weight: weight(2.0) },
                ScorerConfig::KvCache { weight: weight(2.5) },
                ScorerConfig::PrefixCache { weight: weight(1.0) },
            ],
            picker: PickerConfig::WeightedRandom {},
        }))
    );
    let Some(ProfileConfig::DecisionTree(tree)) = config.profiles.get("strict-tree") else {
        panic!("strict-tree is not a tree: {:?}", config.profiles.get("strict-tree"))
    };
    assert_eq!((tree.has_capacity.queue_threshold, tree.low_queue.threshold), (3, 64));
    assert_eq!(
        config.profile_names(),
        ["default", "decision-tree", "prefix-heavy", "strict-tree"]
    );
}

#[test]
fn an_empty_document_is_the_default_config() {
    assert_eq!(parse(""), SchedulerConfig::default());
    assert_eq!(parse("{}"), SchedulerConfig::default());
    let scheduler = Scheduler::new(&SchedulerConfig::default()).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(scheduler.profile_name(), "default");
}

#[test]
fn the_default_profile_weights_queue_kv_prefix_and_lora() {
    let Some(ProfileConfig::Pipeline(pipeline)) = ProfileConfig::builtin("default") else {
        panic!("default is not a pipeline")
    };
    let weights: Vec<(&str, f64)> = pipeline
        .scorers
        .iter()
        .map(|s| (s.as_scorer().name(), s.weight()))
        .collect();
    assert_eq!(
        weights,
        [
            ("queue", 2.0),
            ("kv-cache", 2.0),
            ("prefix-cache", 4.0),
            ("inflight", 8.0),
            ("prefill-backlog", 4.0),
            ("lora-affinity", 8.0)
        ]
    );
    assert_eq!(pipeline.picker, PickerConfig::MaxScore {});
    assert_eq!(
        ProfileConfig::builtin("decision-tree"),
        Some(ProfileConfig::DecisionTree(DecisionTree::default()))
    );
}

#[test]
fn unknown_fields_are_rejected_everywhere() {
    for yaml in [
        "profiel: default",
        "saturation: { queueDepth: 5 }",
        "prefix: { blockSize: 64 }",
        "profiles: { p: { scorers: [], pickr: { type: random } } }",
        "profiles: { p: { scorers: [ { type: queue, wieght: 2 } ] } }",
        "profiles: { p: { filters: [ { type: low-queue, treshold: 2 } ] } }",
        "profiles: { p: { filters: [ { type: least-queue, threshold: 2 } ] } }",
        "profiles: { p: { picker: { type: max-score, maxNumOfEndpoints: 2 } } }",
        "profiles: { t: { type: decision-tree, kvCacheThreshold: 0.8 } }",
    ] {
        let message = error(yaml);
        assert!(message.contains("unknown field"), "{yaml}: {message}");
    }
}

#[test]
fn unknown_types_are_rejected_with_the_expected_ones() {
    for (yaml, expected) in [
        ("profiles: { p: { scorers: [ { type: latency } ] } }", "kv-cache"),
        ("profiles: { p: { filters: [ { type: magic } ] } }", "least-queue"),
        ("profiles: { p: { picker: { type: best } } }", "max-score"),
        ("profiles: { p: { type: tree } }", "decision-tree"),
    ] {
        let message = error(yaml);
        assert!(
            message.contains("unknown variant") && message.contains(expected),
            "{yaml}: {message}"
        );
    }
}

#[test]
fn negative_weights_are_rejected() {
    let message = error("profiles: { p: { scorers: [ { type: queue, weight: -2 } ] } }");
    assert!(
        message.contains("scorer weight must be a finite number ≥ 0, got -2"),
        "{message}"
    );
}

#[test]
fn an_unknown_profile_name_lists_the_known_ones() {
    let message = error("profile: fastest\nprofiles: { mine: { scorers: [] } }");
    assert_eq!(
        message,
        "unknown profile `fastest`, expected one of: default, decision-tree, mine"
    );
}

#[test]
fn out_of_range_values_are_rejected() {
    assert!(error("saturation: { kvCacheThreshold: 80 }").contains("saturation.kvCacheThreshold must be within 0..=1"));
    assert!(error("prefix: { blockSizeChars: 0 }").contains("nonzero"));
    assert!(error("fallbacks: -1").contains("invalid u64"));
}

// === every option is applied ===

#[test]
fn profile_selects_a_builtin_or_user_profile_and_a_user_profile_can_replace_a_builtin() {
    assert_eq!(scheduler("profile: decision-tree").profile_name(), "decision-tree");
    let now = Instant::now();
    let pool = [Endpoint::test("a", now).queue(9), Endpoint::test("b", now).queue(9)];
    let replaced = scheduler("profiles: { default: { scorers: [ { type: queue } ], picker: { type: random } } }");
    let decision = route(&replaced, &Request::test("hi"), &pool, now);
    assert_eq!(decision.profile, "default");
    assert_eq!(decision.reason.to_string(), "random pick among 2");
}

#[test]
fn fallbacks_sets_how_many_alternatives_are_returned() {
    let now = Instant::now();
    let pool: Vec<Endpoint> = (0..5).map(|i| Endpoint::test(&format!("p{i}"), now)).collect();
    for n in [0, 1, 3, 4, 9] {
        let decision = route(&scheduler(&format!("fallbacks: {n}")), &Request::test("hi"), &pool, now);
        assert_eq!(decision.fallbacks.len(), n.min(4));
    }
    assert_eq!(
        route(&scheduler(""), &Request::test("hi"), &pool, now).fallbacks.len(),
        2
    );
}

#[test]
fn saturation_thresholds_decide_shedding() {
    let scraped = Instant::now();
    let pool = [Endpoint::test("a", scraped).queue(6).kv(0.85)];
    let sheddable = Request::test("hi").criticality(Criticality::Sheddable);
    let outcome = |yaml: &str, now| route(&scheduler(yaml), &sheddable, &pool, now).outcome;
    assert_eq!(outcome("", scraped), Outcome::Shed429);
    assert_eq!(
        outcome("saturation: { queueDepthThreshold: 6 }", scraped),
        Outcome::Shed429
    );
    assert_eq!(
        outcome("saturation: { kvCacheThreshold: 0.9 }", scraped),
        Outcome::Shed429
    );
    let loose = "saturation: { queueDepthThreshold: 6, kvCacheThreshold: 0.9 }";
    assert_eq!(outcome(loose, scraped), Outcome::Routed);
    let later = scraped + Duration::from_millis(400);
    assert_eq!(outcome(loose, later), Outcome::Shed429);
    let patient = "saturation: { queueDepthThreshold: 6, kvCacheThreshold: 0.9, metricsStalenessMs: 500 }";
    assert_eq!(outcome(patient, later), Outcome::Routed);
}

#[test]
fn prefix_options_change_blocks_depth_and_memory() {
    let now = Instant::now();
    let pool = [Endpoint::test("a", now)];
    let prompt = "x".repeat(1000);
    let matched = |yaml: &str| {
        let scheduler = scheduler(yaml);
        route(&scheduler, &Request::test(&prompt), &pool, now);
        let decision = route(&scheduler, &Request::test(&prompt), &pool, now);
        (decision.candidates[0].prefix_match_blocks, scheduler.prefix_index_len())
    };
    assert_eq!(matched(""), (15, 15));
    assert_eq!(matched("prefix: { blockSizeChars: 100 }"), (10, 10));
    assert_eq!(matched("prefix: { blockSizeChars: 10, maxBlocks: 40 }"), (40, 40));
    assert_eq!(
        matched("prefix: { blockSizeChars: 10, lruCapacityPerEndpoint: 25 }"),
        (25, 25)
    );
}

#[test]
fn scorer_weights_change_the_pick() {
    let now = Instant::now();
    // a: short queue, fuller cache; b: longer queue, empty cache.
    let pool = [
        Endpoint::test("a", now).queue(0).kv(0.6),
        Endpoint::test("b", now).queue(4).kv(0.0),
    ];
    let pick = |queue_weight: f64| {
        let yaml = format!(
            "profile: p\nprofiles: {{ p: {{ scorers: [ {{ type: queue, weight: {queue_weight} }}, {{ type: kv-cache, weight: 2 }} ] }} }}"
        );
        chosen(&route(&scheduler(&yaml), &Request::test("hi"), &pool, now)).to_owned()
    };
    assert_eq!(pick(2.0), "a:8000");
    assert_eq!(pick(0.5), "b:8000");
}

#[test]
fn running_requests_and_lora_scorers_can_be_selected() {
    let now = Instant::now();
    let pool = [
        Endpoint::test("a", now).running(9).loras(&["x"], &[], 2),
        Endpoint::test("b", now).running(1).loras(&[], &[], 2),
    ];
    let yaml = |scorer: &str| format!("profile: p\nprofiles: {{ p: {{ scorers: [ {{ type: {scorer} }} ] }} }}");
    let request = Request::test("hi").lora("x");
    assert_eq!(
        chosen(&route(&scheduler(&yaml("running-requests")), &request, &pool, now)),
        "b:8000"
    );
    assert_eq!(
        chosen(&route(&scheduler(&yaml("lora-affinity")), &request, &pool, now)),
        "a:8000"
    );
}

#[test]
fn profile_filters_are_applied_in_order() {
    let now = Instant::now();
    let pool = [
        Endpoint::test("a", now).queue(0).kv(0.9),
        Endpoint::test("b", now).queue(1).kv(0.1),
        Endpoint::test("c", now).queue(8).kv(0.0),
    ];
    let yaml =
        "profile: p\nprofiles: { p: { filters: [ { type: low-queue, threshold: 5 }, { type: least-kv-cache } ] } }";
    let decision = route(&scheduler(yaml), &Request::test("hi"), &pool, now);
    assert_eq!(chosen(&decision), "b:8000");
    let removed: Vec<Option<&str>> = decision.candidates.iter().map(|c| c.filtered_by.as_deref()).collect();
    assert_eq!(removed, [Some("least-kv-cache"), None, Some("low-queue")]);
}

#[test]
fn the_picker_is_applied() {
    let now = Instant::now();
    let pool = [Endpoint::test("a", now), Endpoint::test("b", now).queue(3)];
    let wins = |picker: &str| {
        let yaml = format!(
            "profile: p\nprofiles: {{ p: {{ scorers: [ {{ type: queue }} ], picker: {{ type: {picker} }} }} }}"
        );
        let scheduler = scheduler(&yaml);
        (0..200)
            .filter(|&seed| {
                let decision = scheduler.schedule(&Request::test("hi"), &pool, now, &mut SmallRng::seed_from_u64(seed));
                chosen(&decision) == "a:8000"
            })
            .count()
    };
    assert_eq!(wins("max-score"), 200);
    assert_eq!(wins("weighted-random"), 200);
    let random = wins("random");
    assert!((60..=140).contains(&random), "{random}");
}

#[test]
fn decision_tree_parameters_are_applied() {
    let now = Instant::now();
    // Neither pod has capacity by default (queue > 5); with queueThreshold 6, b does.
    let pool = [
        Endpoint::test("a", now).queue(6).kv(0.9),
        Endpoint::test("b", now).queue(6).kv(0.1),
    ];
    let tree = |params: &str| {
        let yaml = format!("profile: t\nprofiles: {{ t: {{ type: decision-tree{params} }} }}");
        route(&scheduler(&yaml), &Request::test("hi"), &pool, now)
            .reason
            .to_string()
    };
    assert!(tree("").contains("has-capacity (failed)"), "{}", tree(""));
    let relaxed = tree(", hasCapacity: { queueThreshold: 6 }");
    assert!(relaxed.contains("has-capacity → least-queue"), "{relaxed}");
}

#[test]
fn config_errors_can_cross_threads() {
    fn assert_error<E: std::error::Error + Send + Sync + 'static>() {}
    assert_error::<ConfigError>();
}
