//! Behaviour of each scorer.

use std::time::Instant;

use super::*;
use crate::{Endpoint, Request, fixtures::CycleFixture};

fn run(scorer: &dyn Scorer, fixture: &CycleFixture) -> Vec<f64> {
    let candidates = fixture.all();
    let mut scores = vec![f64::NAN; candidates.len()];
    assert!(
        scorer.score(&fixture.cycle(), &candidates, &mut scores),
        "{} abstained",
        scorer.name()
    );
    scores
}

#[test]
fn queue_is_min_max_normalised() {
    let now = Instant::now();
    let endpoints = [2, 4, 10].map(|q| Endpoint::test("p", now).queue(q)).to_vec();
    let fixture = CycleFixture::new(Request::test(""), endpoints, now);
    assert_eq!(run(&QueueScorer, &fixture), vec![1.0, 0.75, 0.0]);
}

#[test]
fn equal_queues_all_score_one() {
    let now = Instant::now();
    let endpoints = [3, 3].map(|q| Endpoint::test("p", now).queue(q)).to_vec();
    let fixture = CycleFixture::new(Request::test(""), endpoints, now);
    assert_eq!(run(&QueueScorer, &fixture), vec![1.0, 1.0]);
}

#[test]
fn running_requests_is_min_max_normalised() {
    let now = Instant::now();
    let endpoints = [0, 5, 10].map(|r| Endpoint::test("p", now).running(r)).to_vec();
    let fixture = CycleFixture::new(Request::test(""), endpoints, now);
    assert_eq!(run(&RunningRequestsScorer, &fixture), vec![1.0, 0.5, 0.0]);
}

#[test]
fn inflight_falls_an_eighth_per_request_above_the_least_loaded() {
    let now = Instant::now();
    let endpoints = [1, 2, 5, 9, 30].map(|n| Endpoint::test("p", now).inflight(n)).to_vec();
    let fixture = CycleFixture::new(Request::test(""), endpoints, now);
    assert_eq!(run(&InflightScorer, &fixture), vec![1.0, 0.875, 0.5, 0.0, 0.0]);
}

#[test]
fn kv_cache_scores_free_cache() {
    let now = Instant::now();
    let endpoints = [0.0, 0.25, 1.0].map(|kv| Endpoint::test("p", now).kv(kv)).to_vec();
    let fixture = CycleFixture::new(Request::test(""), endpoints, now);
    assert_eq!(run(&KvCacheScorer, &fixture), vec![1.0, 0.75, 0.0]);
}

#[test]
fn prefix_cache_scores_the_matched_fraction() {
    let now = Instant::now();
    let endpoints = vec![
        Endpoint::test("a", now),
        Endpoint::test("b", now),
        Endpoint::test("c", now),
    ];
    let fixture = CycleFixture::new(Request::test(""), endpoints, now).prefix(4, &[4, 1, 0]);
    assert_eq!(run(&PrefixCacheScorer, &fixture), vec![1.0, 0.25, 0.0]);
}

#[test]
fn prefix_cache_scores_zero_for_prompts_shorter_than_a_block() {
    let now = Instant::now();
    let fixture = CycleFixture::new(Request::test(""), vec![Endpoint::test("a", now)], now).prefix(0, &[0]);
    assert_eq!(run(&PrefixCacheScorer, &fixture), vec![0.0]);
}

#[test]
fn lora_affinity_follows_the_ladder() {
    let now = Instant::now();
    let endpoints = vec![
        Endpoint::test("active", now).loras(&["x"], &[], 2),
        Endpoint::test("free", now).loras(&["y"], &[], 2),
        Endpoint::test("waiting", now).loras(&["y"], &["x"], 2),
        Endpoint::test("full", now).loras(&["y", "z"], &[], 2),
        Endpoint::test("silent", now),
    ];
    let fixture = CycleFixture::new(Request::test("").lora("x"), endpoints.clone(), now);
    assert_eq!(run(&LoraAffinityScorer, &fixture), vec![1.0, 0.8, 0.6, 0.0, 1.0]);
    let fixture = CycleFixture::new(Request::test(""), endpoints, now);
    let mut scores = [f64::NAN; 5];
    assert!(
        !LoraAffinityScorer.score(&fixture.cycle(), &fixture.all(), &mut scores),
        "rated a base-model request"
    );
}

#[test]
fn lora_affinity_counts_the_adapters_the_gateway_sent_since_the_last_scrape() {
    let now = Instant::now();
    let endpoints = vec![
        // Scraped idle, but the gateway has an `x` request there: x is resident or queued, join it.
        Endpoint::test("sent-x", now).loras(&[], &[], 2).sent(&["x"]),
        // Scraped with one free slot, which the gateway's `z` request has taken since.
        Endpoint::test("filled", now).loras(&["y"], &[], 2).sent(&["z"]),
        // A request of an adapter the scrape already lists takes no second slot.
        Endpoint::test("counted", now).loras(&["y"], &[], 2).sent(&["y"]),
    ];
    let fixture = CycleFixture::new(Request::test("").lora("x"), endpoints, now);
    assert_eq!(run(&LoraAffinityScorer, &fixture), vec![1.0, 0.0, 0.8]);
}

#[test]
fn negative_or_infinite_weights_are_rejected() {
    assert!(Weight::new(-1.0).is_err());
    assert!(Weight::new(f64::INFINITY).is_err());
    assert_eq!(Weight::new(0.0).map(Weight::get), Ok(0.0));
    assert_eq!(Weight::default().get(), 1.0);
}

#[test]
fn prefill_backlog_falls_with_the_tokens_ahead_of_the_request() {
    let now = Instant::now();
    // A 4 096-token prompt (16 384 characters, 256 blocks of 64) behind 0, 4 096 and 20 000 pending tokens.
    let endpoints = [0, 4_096, 20_000]
        .map(|t| Endpoint::test("p", now).pending_prefill(t))
        .to_vec();
    let fixture = CycleFixture::new(Request::test(&"x".repeat(16_384)), endpoints, now);
    assert_eq!(run(&PrefillBacklogScorer, &fixture), vec![1.0, 0.5, 0.0]);
}

#[test]
fn a_prefix_hit_shrinks_the_backlog_only_where_the_server_caches_prefixes() {
    let now = Instant::now();
    let endpoints = vec![
        // Holds 128 of the 256 blocks (2 048 tokens) and has 2 048 pending: 2 048 + 2 048 = 4 096 ahead.
        Endpoint::test("warm", now).pending_prefill(2_048),
        // Nothing cached, nothing pending: the whole 4 096-token prompt.
        Endpoint::test("cold", now),
        // Claims the same 128 blocks, but its server does not cache prefixes: 2 048 + 4 096 ahead.
        Endpoint::test("no-apc", now)
            .pending_prefill(2_048)
            .prefix_caching(false),
    ];
    let fixture = CycleFixture::new(Request::test(&"x".repeat(16_384)), endpoints, now).prefix(256, &[128, 0, 128]);
    assert_eq!(run(&PrefillBacklogScorer, &fixture), vec![1.0, 1.0, 0.75]);
}

#[test]
fn a_reported_queue_longer_than_the_gateways_own_backlog_counts_as_prompts_like_this_one() {
    let now = Instant::now();
    // A 1 024-token prompt; pod a reports 8 waiting requests the gateway did not send (8 × 1 024 = 8 192 tokens).
    let endpoints = vec![
        Endpoint::test("a", now).queue(8),
        Endpoint::test("b", now).pending_prefill(1_024),
    ];
    let fixture = CycleFixture::new(Request::test(&"x".repeat(4_096)), endpoints, now);
    assert_eq!(run(&PrefillBacklogScorer, &fixture), vec![0.125, 1.0]);
}
