//! End-to-end behaviour of `Scheduler::schedule`: admission, outcomes, affinity, and the decision record.

use std::time::{Duration, Instant};

use rand::{SeedableRng, rngs::SmallRng};

use super::*;
use crate::{Endpoint, PrefixMode, Tokenized, fixtures::ids};

fn scheduler() -> Scheduler {
    Scheduler::new(&SchedulerConfig::default()).unwrap_or_else(|e| panic!("default config: {e}"))
}

fn route(scheduler: &Scheduler, request: &Request, endpoints: &[Endpoint], now: Instant, seed: u64) -> Decision {
    scheduler.schedule(request, endpoints, now, &mut SmallRng::seed_from_u64(seed))
}

fn chosen(decision: &Decision) -> &str {
    decision.endpoint.as_ref().map_or("-", |id| id.as_str())
}

/// About 13 KB, the prompt size of the speed target.
fn long_prompt(topic: &str) -> String {
    format!("You are a helpful assistant for {topic}. ").repeat(13_000 / (34 + topic.len()))
}

#[test]
fn scheduler_is_shareable_between_threads() {
    fn assert_send_sync<T: Send + Sync>() {}
    assert_send_sync::<Scheduler>();
}

#[test]
fn an_empty_pool_is_a_503() {
    let decision = route(&scheduler(), &Request::test("hi"), &[], Instant::now(), 1);
    assert_eq!(decision.outcome, Outcome::NoCapacity503);
    assert_eq!(decision.reason, Reason::NoReadyEndpoints);
    assert_eq!(decision.reason.to_string(), "no ready endpoints in pool");
    assert!(decision.candidates.is_empty() && decision.endpoint.is_none());
}

#[test]
fn a_sheddable_request_is_shed_when_saturated_while_critical_and_standard_are_routed() {
    let now = Instant::now();
    let pool = [
        Endpoint::test("a", now).queue(10).kv(0.9),
        Endpoint::test("b", now).queue(6).kv(0.5),
    ];
    let scheduler = scheduler();
    let shed = route(
        &scheduler,
        &Request::test("hi").criticality(Criticality::Sheddable),
        &pool,
        now,
        1,
    );
    assert_eq!(shed.outcome, Outcome::Shed429);
    assert!(
        shed.reason
            .to_string()
            .starts_with("sheddable request shed: pool saturated"),
        "{}",
        shed.reason
    );
    assert_eq!(shed.candidates.len(), 2);
    assert!(shed.endpoint.is_none());
    for criticality in [Criticality::Critical, Criticality::Standard] {
        let routed = route(&scheduler, &Request::test("hi").criticality(criticality), &pool, now, 1);
        assert_eq!(routed.outcome, Outcome::Routed);
        assert_eq!(chosen(&routed), "b:8000");
    }
}

#[test]
fn a_sheddable_request_is_routed_while_one_pod_has_headroom() {
    let now = Instant::now();
    let pool = [
        Endpoint::test("a", now).queue(10).kv(0.9),
        Endpoint::test("b", now).queue(5).kv(0.8),
    ];
    let decision = route(
        &scheduler(),
        &Request::test("hi").criticality(Criticality::Sheddable),
        &pool,
        now,
        1,
    );
    assert_eq!(decision.outcome, Outcome::Routed);
}

#[test]
fn stale_metrics_count_as_saturated() {
    let scraped = Instant::now();
    let pool = [Endpoint::test("a", scraped), Endpoint::test("b", scraped).scraped(None)];
    let request = Request::test("hi").criticality(Criticality::Sheddable);
    let decision = route(&scheduler(), &request, &pool, scraped + Duration::from_millis(250), 1);
    assert_eq!(decision.outcome, Outcome::Shed429);
    assert_eq!(decision.candidates[0].metrics_age_ms, Some(250));
    assert_eq!(decision.candidates[1].metrics_age_ms, None);
}

#[test]
fn filters_that_leave_nothing_give_a_503_naming_the_filter() {
    let config = SchedulerConfig::from_yaml(
        "profile: strict\nprofiles:\n  strict:\n    filters: [ { type: has-capacity, queueThreshold: 0 } ]\n",
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let scheduler = Scheduler::new(&config).unwrap_or_else(|e| panic!("{e}"));
    let now = Instant::now();
    let pool = [Endpoint::test("a", now).queue(1), Endpoint::test("b", now).queue(2)];
    let decision = route(&scheduler, &Request::test("hi"), &pool, now, 1);
    assert_eq!(decision.outcome, Outcome::NoCapacity503);
    assert_eq!(
        decision.reason.to_string(),
        "filter has-capacity removed every endpoint"
    );
    assert!(
        decision
            .candidates
            .iter()
            .all(|c| c.filtered_by.as_deref() == Some("has-capacity"))
    );
}

#[test]
fn the_same_prefix_follows_the_pod_it_was_sent_to() {
    let now = Instant::now();
    let scheduler = scheduler();
    let prompt = long_prompt("contract law");
    // First request: pod b is the only idle one, so it gets the prompt.
    let pool = [
        Endpoint::test("a", now).queue(3),
        Endpoint::test("b", now),
        Endpoint::test("c", now).queue(3),
    ];
    let first = route(&scheduler, &Request::test(&prompt), &pool, now, 1);
    assert_eq!(chosen(&first), "b:8000");
    assert_eq!(first.candidates[1].prefix_match_blocks, 0);

    // Then equal loads: the same prefix with a new question goes back to b, whatever the tie-break.
    let equal = [
        Endpoint::test("a", now),
        Endpoint::test("b", now),
        Endpoint::test("c", now),
    ];
    let follow_up = format!("{prompt} And what about torts?");
    for seed in 0..20 {
        let decision = route(&scheduler, &Request::test(&follow_up), &equal, now, seed);
        assert_eq!(chosen(&decision), "b:8000", "{}", decision.reason);
        // The first follow-up matches the original prompt's blocks; it then adds its own last block.
        let (b, total) = (&decision.candidates[1], follow_up.len() / 64);
        let expected = if seed == 0 { prompt.len() / 64 } else { total };
        assert_eq!(b.prefix_match_blocks as usize, expected);
        assert_eq!(b.scores.get("prefix-cache"), Some(&(expected as f64 / total as f64)));
        assert_eq!(decision.candidates[0].prefix_match_blocks, 0);
    }

    // Another model never matches the prefix.
    let mut other_model = Request::test(&follow_up);
    other_model.target_model = "other".into();
    let decision = route(&scheduler, &other_model, &equal, now, 1);
    assert!(decision.candidates.iter().all(|c| c.prefix_match_blocks == 0));
}

#[test]
fn an_engine_reported_prefix_outranks_the_guess_and_the_record_says_which_mode_scored_each_pod() {
    let now = Instant::now();
    let scheduler = scheduler();
    let prompt = long_prompt("shipping");
    // The guess: the prompt went to a.
    let pool = [Endpoint::test("a", now), Endpoint::test("b", now).queue(1)];
    assert_eq!(
        chosen(&route(&scheduler, &Request::test(&prompt), &pool, now, 1)),
        "a:8000"
    );

    // The engines say otherwise: a evicted it (0 blocks), b holds 150 of the prompt's 200 token blocks.
    let mut request = Request::test(&prompt);
    request.tokenized = Some(Tokenized {
        tokens: 3_200,
        blocks: 200,
        block_size: 16,
    });
    let mut a = Endpoint::test("a", now);
    a.precise_prefix = Some(0);
    let mut b = Endpoint::test("b", now);
    b.precise_prefix = Some(150);
    // c's events are not trusted: its approximate guess (nothing sent there) stands.
    let c = Endpoint::test("c", now);
    for seed in 0..10 {
        let decision = route(&scheduler, &request, &[a.clone(), b.clone(), c.clone()], now, seed);
        assert_eq!(chosen(&decision), "b:8000", "{}", decision.reason);
        let modes: Vec<_> = decision
            .candidates
            .iter()
            .map(|c| (c.prefix_mode, c.prefix_match_blocks))
            .collect();
        assert_eq!(
            modes,
            [
                (PrefixMode::Precise, 0),
                (PrefixMode::Precise, 150),
                (PrefixMode::Approximate, 0)
            ]
        );
        assert_eq!(decision.candidates[1].scores.get("prefix-cache"), Some(&0.75));
        // b prefills only the 800 tokens it does not hold.
        assert_eq!(scheduler.prefill_tokens(&request, &decision.candidates[1], true), 800);
        assert_eq!(
            scheduler.prefill_tokens(&request, &decision.candidates[1], false),
            3_200
        );
    }

    // Without a tokenized prompt a precise view cannot be used: every pod is approximate, and a still holds the guess.
    let mut untokenized = Request::test(&prompt);
    untokenized.tokenized = None;
    let decision = route(&scheduler, &untokenized, &[a, b, c], now, 1);
    assert!(
        decision
            .candidates
            .iter()
            .all(|c| c.prefix_mode == PrefixMode::Approximate)
    );
    assert_eq!(decision.candidates[0].prefix_match_blocks as usize, prompt.len() / 64);
}

#[test]
fn a_warm_pod_is_left_when_it_is_much_busier() {
    let now = Instant::now();
    let scheduler = scheduler();
    let prompt = long_prompt("astronomy");
    let pool = [Endpoint::test("a", now), Endpoint::test("b", now).queue(1)];
    assert_eq!(
        chosen(&route(&scheduler, &Request::test(&prompt), &pool, now, 1)),
        "a:8000"
    );
    let busy = [
        Endpoint::test("a", now).queue(20).kv(0.9),
        Endpoint::test("b", now).queue(0).kv(0.1),
    ];
    assert_eq!(
        chosen(&route(&scheduler, &Request::test(&prompt), &busy, now, 1)),
        "b:8000"
    );
}

#[test]
fn a_kv_saturated_pod_is_avoided() {
    let now = Instant::now();
    let scheduler = scheduler();
    let pool = [
        Endpoint::test("full", now).kv(0.97),
        Endpoint::test("roomy", now).kv(0.2),
    ];
    for seed in 0..20 {
        assert_eq!(
            chosen(&route(&scheduler, &Request::test("hi"), &pool, now, seed)),
            "roomy:8000"
        );
    }
}

#[test]
fn an_adapter_request_prefers_the_pod_with_the_adapter_active() {
    let now = Instant::now();
    let scheduler = scheduler();
    let pool = [
        Endpoint::test("none", now).loras(&["y", "z"], &[], 2),
        Endpoint::test("free", now).loras(&["y"], &[], 2),
        Endpoint::test("active", now).loras(&["x"], &[], 2),
    ];
    for seed in 0..20 {
        let decision = route(&scheduler, &Request::test("hi").lora("x"), &pool, now, seed);
        assert_eq!(chosen(&decision), "active:8000");
        assert_eq!(
            decision.fallbacks,
            vec![EndpointId::new("free:8000"), EndpointId::new("none:8000")]
        );
        let states: Vec<LoraState> = decision.candidates.iter().map(|c| c.lora_state).collect();
        assert_eq!(states, vec![LoraState::NoSlot, LoraState::FreeSlot, LoraState::Active]);
    }
}

#[test]
fn a_routed_decision_is_filled_in() {
    let now = Instant::now();
    let pool = [
        Endpoint::test("a", now).queue(2).running(7).kv(0.25),
        Endpoint::test("b", now).queue(0).kv(0.5),
        Endpoint::test("c", now).queue(1).kv(0.5),
        Endpoint::test("d", now + Duration::from_secs(1)).scraped(None),
    ];
    let mut request = Request::test("hello");
    request.model = "chat".into();
    request.received_at_ms = 42;
    let decision = route(&scheduler(), &request, &pool, now, 1);
    assert_eq!(decision.outcome, Outcome::Routed);
    assert_eq!(decision.profile, "default");
    assert_eq!(chosen(&decision), "b:8000");
    assert_eq!(
        decision.fallbacks,
        vec![EndpointId::new("c:8000"), EndpointId::new("a:8000")]
    );

    let a = &decision.candidates[0];
    assert_eq!((a.pod.as_str(), a.endpoint.as_str()), ("ns/a", "a:8000"));
    assert_eq!(
        (a.queue, a.running, a.kv_usage, a.metrics_age_ms),
        (2, 7, 0.25, Some(0))
    );
    assert_eq!(a.lora_state, LoraState::NotApplicable);
    assert_eq!(
        a.scores.keys().collect::<Vec<_>>(),
        ["queue", "kv-cache", "prefix-cache", "inflight", "prefill-backlog"]
    );
    // No pod has requests in flight, so `inflight` gives everyone its full weight; a's two queued requests count as
    // two more one-token prompts ahead of this one than on b.
    let expected = 2.0 * 0.0 + 2.0 * 0.75 + 4.0 * 0.0 + 8.0 + 4.0 * (1.0 - 2.0 / 8_192.0);
    assert!((a.total - expected).abs() < 1e-9, "{} vs {expected}", a.total);
    let b = &decision.candidates[1];
    assert_eq!(b.total, 2.0 + 1.0 + 8.0 + 4.0);
    assert_eq!(
        decision.reason.to_string(),
        "max score 15.00 of 20.00: queue 2.00, kv-cache 1.00, prefix-cache 0.00, inflight 8.00, prefill-backlog 4.00; 3 of 4 endpoints passed the filters"
    );
    let d = &decision.candidates[3];
    assert_eq!(d.filtered_by.as_deref(), Some("fresh-metrics"));
    assert!(d.scores.is_empty() && d.total == 0.0);
}

#[test]
fn fallbacks_are_distinct_endpoints() {
    let now = Instant::now();
    let pool = [
        Endpoint::test("a", now),
        Endpoint::test("a", now),
        Endpoint::test("b", now).queue(1),
    ];
    let decision = route(&scheduler(), &Request::test("hi"), &pool, now, 1);
    assert_eq!(chosen(&decision), "a:8000");
    assert_eq!(decision.fallbacks, vec![EndpointId::new("b:8000")]);
}

#[test]
fn the_decision_tree_profile_routes_without_scores() {
    let config = SchedulerConfig {
        profile: "decision-tree".into(),
        ..SchedulerConfig::default()
    };
    let scheduler = Scheduler::new(&config).unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(scheduler.profile_name(), "decision-tree");
    let now = Instant::now();
    let pool = [Endpoint::test("a", now).queue(9), Endpoint::test("b", now).queue(40)];
    let decision = route(&scheduler, &Request::test("hi"), &pool, now, 1);
    assert_eq!(decision.outcome, Outcome::Routed);
    assert_eq!(chosen(&decision), "a:8000");
    assert_eq!(decision.profile, "decision-tree");
    assert!(
        decision
            .candidates
            .iter()
            .all(|c| c.scores.is_empty() && c.total == 0.0)
    );
    assert_eq!(decision.candidates[1].filtered_by.as_deref(), Some("least-queue"));
    assert!(decision.fallbacks.is_empty());
}

#[test]
fn retain_endpoints_forgets_pods_that_left() {
    let now = Instant::now();
    let scheduler = scheduler();
    let prompt = long_prompt("geology");
    let pool = [Endpoint::test("a", now), Endpoint::test("b", now).queue(5)];
    assert_eq!(
        chosen(&route(&scheduler, &Request::test(&prompt), &pool, now, 1)),
        "a:8000"
    );
    let blocks = scheduler.prefix_index_len();
    assert_eq!(blocks, (prompt.len() / 64).min(256));
    assert!(scheduler.prefix_index_bytes() > 16 * blocks);

    scheduler.retain_endpoints(&ids(&pool));
    assert_eq!(scheduler.prefix_index_len(), blocks);
    scheduler.retain_endpoints(&ids(&pool[1..]));
    assert_eq!(scheduler.prefix_index_len(), 0);
    let decision = route(&scheduler, &Request::test(&prompt), &pool, now, 1);
    assert_eq!(decision.candidates[0].prefix_match_blocks, 0);
}

#[test]
fn concurrent_schedules_share_the_prefix_index() {
    let now = Instant::now();
    let scheduler = scheduler();
    let pool: Vec<Endpoint> = (0..8).map(|i| Endpoint::test(&format!("p{i}"), now)).collect();
    std::thread::scope(|scope| {
        for thread in 0..4u64 {
            let (scheduler, pool) = (&scheduler, &pool);
            scope.spawn(move || {
                for i in 0..50 {
                    let decision = route(
                        scheduler,
                        &Request::test(&long_prompt(&format!("t{thread}"))),
                        pool,
                        now,
                        i,
                    );
                    assert_eq!(decision.outcome, Outcome::Routed);
                }
            });
        }
    });
    // Each thread's prompt settled on one pod after its first request.
    assert_eq!(
        scheduler.prefix_index_len(),
        4 * (long_prompt("t0").len() / 64).min(256)
    );
}

#[test]
fn a_decision_scored_wholly_on_engine_blocks_leaves_the_guessing_index_alone() {
    let now = Instant::now();
    let scheduler = scheduler();
    let mut request = Request::test(&long_prompt("precise"));
    request.tokenized = Some(Tokenized {
        tokens: 3_200,
        blocks: 200,
        block_size: 16,
    });
    let precise = |name: &str| {
        let mut endpoint = Endpoint::test(name, now);
        endpoint.precise_prefix = Some(0);
        endpoint
    };
    route(&scheduler, &request, &[precise("a"), precise("b")], now, 1);
    assert_eq!(
        scheduler.prefix_index_len(),
        0,
        "no pod scored approximately, nothing guessed"
    );

    // One pod approximate: the index learns where the prompt went, so that pod's guess keeps working.
    let decision = route(&scheduler, &request, &[precise("a"), Endpoint::test("b", now)], now, 1);
    assert_eq!(decision.outcome, Outcome::Routed);
    assert!(scheduler.prefix_index_len() > 0);
}

#[test]
fn a_pool_whose_every_pod_stopped_answering_is_refused_at_once_and_one_answering_pod_is_enough() {
    let now = Instant::now();
    let scheduler = scheduler();
    let gone = |name: &str, for_ms: u64| {
        let mut endpoint = Endpoint::test(name, now);
        endpoint.metrics.unanswered_since = Some(now - Duration::from_millis(for_ms));
        endpoint
    };
    let decision = route(
        &scheduler,
        &Request::test("hi"),
        &[gone("a", 1_000), gone("b", 5_000)],
        now,
        1,
    );
    assert_eq!(decision.outcome, Outcome::NoCapacity503);
    assert_eq!(decision.reason, Reason::NoneAnswering { after_ms: 1_000 });
    assert_eq!(decision.candidates.len(), 2, "the record still shows every pod");

    // One pod failing only briefly, or never scraped yet, keeps the pool routable (stale metrics rank the pods).
    for answering in [gone("b", 999), Endpoint::test("b", now)] {
        let decision = route(&scheduler, &Request::test("hi"), &[gone("a", 1_000), answering], now, 1);
        assert_eq!(decision.outcome, Outcome::Routed, "{}", decision.reason);
    }

    // The window is the config's.
    let patient = Scheduler::new(
        &SchedulerConfig::from_yaml("saturation: { unansweredAfterMs: 10000 }").unwrap_or_else(|e| panic!("{e}")),
    )
    .unwrap_or_else(|e| panic!("{e}"));
    let decision = route(&patient, &Request::test("hi"), &[gone("a", 5_000)], now, 1);
    assert_eq!(decision.outcome, Outcome::Routed, "{}", decision.reason);
}
