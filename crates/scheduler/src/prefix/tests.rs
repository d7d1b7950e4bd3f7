//! Hashing and index behaviour, with the properties the scheduler relies on.

use std::num::NonZeroUsize;

use proptest::prelude::*;

use super::*;

fn config(block_size: usize, max_blocks: usize, capacity: usize) -> PrefixConfig {
    let nz = |n| NonZeroUsize::new(n).unwrap_or(NonZeroUsize::MIN);
    PrefixConfig {
        block_size_chars: nz(block_size),
        max_blocks: nz(max_blocks),
        lru_capacity_per_endpoint: nz(capacity),
    }
}

fn hashes(config: &PrefixConfig, model: &str, prompt: &str) -> Vec<u64> {
    let mut out = Vec::new();
    config.block_hashes(model, prompt, &mut out);
    out
}

fn id(name: &str) -> EndpointId {
    EndpointId::new(name)
}

#[test]
fn prompts_are_cut_into_whole_blocks_up_to_the_limit() {
    let config = config(4, 3, 100);
    assert!(hashes(&config, "m", "abc").is_empty());
    assert_eq!(hashes(&config, "m", "abcdefg").len(), 1);
    assert_eq!(hashes(&config, "m", &"x".repeat(100)).len(), 3);
}

#[test]
fn hashes_are_chained_and_seeded_with_the_model() {
    let config = config(4, 10, 100);
    let a = hashes(&config, "m", "aaaabbbbcccc");
    assert_eq!(a[0], xxh3_64_with_seed(b"aaaa", xxh3_64(b"m")));
    assert_eq!(a[1], xxh3_64_with_seed(b"bbbb", a[0]));
    // Same text, other model: nothing shared. Same first block, other second block: only h0 shared.
    assert_ne!(hashes(&config, "n", "aaaabbbbcccc")[0], a[0]);
    let b = hashes(&config, "m", "aaaaxxxxcccc");
    assert_eq!(b[0], a[0]);
    assert_ne!(b[2], a[2]);
}

#[test]
fn multibyte_text_is_cut_on_bytes_without_panicking() {
    let config = config(5, 10, 100);
    assert_eq!(hashes(&config, "m", "ééééé").len(), 2);
}

#[test]
fn the_longest_match_stops_at_the_first_divergent_block() {
    let config = config(4, 10, 100);
    let mut index = PrefixIndex::new();
    index.insert(
        &id("a"),
        &hashes(&config, "m", "aaaabbbbccccdddd"),
        config.lru_capacity_per_endpoint.get(),
    );
    assert_eq!(
        index.longest_match(&id("a"), &hashes(&config, "m", "aaaabbbbccccdddd")),
        4
    );
    assert_eq!(
        index.longest_match(&id("a"), &hashes(&config, "m", "aaaabbbbcccceeeeffff")),
        3
    );
    assert_eq!(
        index.longest_match(&id("a"), &hashes(&config, "m", "aaaaxbbbccccdddd")),
        1
    );
    assert_eq!(index.longest_match(&id("a"), &hashes(&config, "m", "zaaa")), 0);
    assert_eq!(index.longest_match(&id("b"), &hashes(&config, "m", "aaaabbbb")), 0);
}

#[test]
fn eviction_respects_capacity_and_drops_the_deepest_blocks_first() {
    let config = config(1, 100, 5);
    let mut index = PrefixIndex::new();
    index.insert(
        &id("a"),
        &hashes(&config, "m", "abcdefgh"),
        config.lru_capacity_per_endpoint.get(),
    );
    assert_eq!(index.len(), 5);
    assert_eq!(index.longest_match(&id("a"), &hashes(&config, "m", "abcdefgh")), 5);
    index.insert(
        &id("a"),
        &hashes(&config, "m", "xyz"),
        config.lru_capacity_per_endpoint.get(),
    );
    assert_eq!(index.len(), 5);
    assert_eq!(index.longest_match(&id("a"), &hashes(&config, "m", "abcdefgh")), 2);
    assert_eq!(index.longest_match(&id("a"), &hashes(&config, "m", "xyz")), 3);
}

#[test]
fn retain_forgets_endpoints_that_left_the_pool() {
    let config = config(1, 10, 10);
    let mut index = PrefixIndex::new();
    index.insert(
        &id("a"),
        &hashes(&config, "m", "abc"),
        config.lru_capacity_per_endpoint.get(),
    );
    index.insert(
        &id("b"),
        &hashes(&config, "m", "abc"),
        config.lru_capacity_per_endpoint.get(),
    );
    index.retain(|endpoint| endpoint == &id("b"));
    assert_eq!(index.longest_match(&id("a"), &hashes(&config, "m", "abc")), 0);
    assert_eq!(index.longest_match(&id("b"), &hashes(&config, "m", "abc")), 3);
    assert_eq!(index.len(), 3);
}

#[test]
fn a_full_endpoint_costs_about_fifty_bytes_per_entry() {
    let config = PrefixConfig::default();
    let mut index = PrefixIndex::new();
    let capacity = config.lru_capacity_per_endpoint.get();
    // Distinct prompts until the endpoint is full, then as many again so that eviction reuses nodes.
    let mut out = Vec::new();
    for i in 0..(2 * capacity / 200) {
        config.block_hashes("m", &format!("{i:064}").repeat(200), &mut out);
        index.insert(&id("a"), &out, config.lru_capacity_per_endpoint.get());
    }
    assert_eq!(index.len(), capacity);
    let per_entry = index.heap_bytes() as f64 / capacity as f64;
    // 65 536 buckets × 17 bytes + 31 250 nodes × 16 bytes, over 31 250 entries: 51.7.
    assert!((48.0..=56.0).contains(&per_entry), "{per_entry:.1} bytes per entry");
}

fn arb_prompt() -> impl Strategy<Value = String> {
    // A small alphabet and one-byte blocks make shared prefixes common.
    prop::collection::vec(prop::sample::select(vec!['a', 'b', 'c']), 0..24).prop_map(String::from_iter)
}

proptest! {
    #[test]
    fn a_fresh_insert_matches_in_full(prompts in prop::collection::vec(arb_prompt(), 1..20), capacity in 1usize..40) {
        let config = config(1, 16, capacity);
        let mut index = PrefixIndex::new();
        for prompt in &prompts {
            let chain = hashes(&config, "m", prompt);
            index.insert(&id("a"), &chain, config.lru_capacity_per_endpoint.get());
            prop_assert_eq!(index.longest_match(&id("a"), &chain), chain.len().min(capacity));
            prop_assert!(index.len() <= capacity);
        }
    }

    #[test]
    fn held_sets_stay_prefix_closed(prompts in prop::collection::vec(arb_prompt(), 1..40), capacity in 1usize..30) {
        let config = config(1, 16, capacity);
        let mut index = PrefixIndex::new();
        for prompt in &prompts {
            index.insert(&id("a"), &hashes(&config, "m", prompt), config.lru_capacity_per_endpoint.get());
        }
        let Some(lru) = index.endpoints.get(&id("a")) else { return Ok(()) };
        for prompt in &prompts {
            let chain = hashes(&config, "m", prompt);
            let held: Vec<bool> = chain.iter().map(|&h| lru.contains(h)).collect();
            // Held blocks form a prefix of the chain, and binary search finds its length.
            let leading = held.iter().take_while(|&&h| h).count();
            prop_assert!(held[leading..].iter().all(|&h| !h), "{prompt}: {held:?}");
            prop_assert_eq!(index.longest_match(&id("a"), &chain), leading);
        }
    }
}

#[test]
fn a_reported_kv_cache_bounds_the_index_and_a_new_capacity_restarts_it() {
    let config = config(64, 256, 31_250);
    // 5 000 blocks of 16 tokens: 80 000 tokens, 320 000 characters, 5 000 blocks of 64 characters.
    assert_eq!(config.capacity_for(Some(80_000)), 5_000);
    assert_eq!(config.capacity_for(None), 31_250);
    // A server larger than the configured bound never raises it; an empty one still gets one block.
    assert_eq!(config.capacity_for(Some(10_000_000)), 31_250);
    assert_eq!(config.capacity_for(Some(0)), 1);

    let mut index = PrefixIndex::new();
    let chain = hashes(&config, "m", &"x".repeat(64 * 3));
    index.insert(&id("a"), &chain, 31_250);
    assert_eq!(index.capacity(&id("a")), Some(31_250));
    index.insert(&id("a"), &chain, 2);
    assert_eq!(index.capacity(&id("a")), Some(2));
    assert_eq!(index.longest_match(&id("a"), &chain), 2, "held at most two blocks");
}
