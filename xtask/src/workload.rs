//! Benchmark datasets, generated from a seed so every router sees the same requests (shared/reference/simulator.md §4).

use rand::{Rng, SeedableRng, rngs::StdRng};

/// About four characters per token, which is also how vllm-sim counts tokens.
const CHARS_PER_TOKEN: usize = 4;

/// The named workloads of the routing benchmark.
#[derive(clap::ValueEnum, Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Workload {
    /// W0, the seed's experiment: one shared 1 000-token prefix, input U[800,4000], output U[600,3000] (vLLM 0.7's
    /// random dataset with range ratio 0.2), closed loop of 60.
    Seed,
    /// W3a: ~75 groups × 5 prompts sharing a 4 000-token system prompt, 800-token questions, 600 output tokens.
    SharedPrefix,
    /// W7: 80 % short chat (≈220 in / 200 out) and 20 % long documents (5–7 K in, 300 out).
    MixedLongShort,
}

impl Workload {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Seed => "seed",
            Workload::SharedPrefix => "shared-prefix",
            Workload::MixedLongShort => "mixed-long-short",
        }
    }

    /// Whether the simulator should run with automatic prefix caching (vLLM 0.7's V0 default is off).
    pub(crate) fn prefix_caching(self) -> bool {
        matches!(self, Workload::SharedPrefix)
    }

    pub(crate) fn default_requests(self) -> usize {
        match self {
            Workload::Seed => 3_000,
            Workload::SharedPrefix => 375,
            Workload::MixedLongShort => 1_500,
        }
    }

    pub(crate) fn concurrency(self) -> usize {
        match self {
            Workload::Seed => 60,
            Workload::SharedPrefix => 40,
            Workload::MixedLongShort => 60,
        }
    }
}

/// One benchmark request: a completion prompt (four characters per token) and exactly `output_tokens` to generate.
#[derive(Clone, Debug)]
pub(crate) struct BenchRequest {
    pub(crate) prompt: String,
    pub(crate) output_tokens: usize,
}

/// Text of exactly `tokens` tokens, distinct for distinct `salt` values (so unrelated prompts share no blocks).
fn text(tokens: usize, salt: u64) -> String {
    let mut out = String::with_capacity(tokens * CHARS_PER_TOKEN);
    let mut word = salt.wrapping_mul(0x9E37_79B9_7F4A_7C15);
    for _ in 0..tokens {
        word = word
            .wrapping_mul(6_364_136_223_846_793_005)
            .wrapping_add(1_442_695_040_888_963_407);
        // Three letters and a space: four characters, one token.
        for shift in [40, 48, 56] {
            out.push(char::from(b'a' + ((word >> shift) % 26) as u8));
        }
        out.push(' ');
    }
    out
}

pub(crate) fn generate(workload: Workload, n: usize, seed: u64) -> Vec<BenchRequest> {
    let mut rng = StdRng::seed_from_u64(seed);
    match workload {
        Workload::Seed => {
            // Drawn once per run, like vLLM 0.7's prefix_token_ids.
            let prefix = text(1_000, rng.random());
            (0..n)
                .map(|_| {
                    let input = rng.random_range(800..=4_000);
                    BenchRequest {
                        prompt: format!("{prefix}{}", text(input, rng.random())),
                        output_tokens: rng.random_range(600..=3_000),
                    }
                })
                .collect()
        }
        Workload::SharedPrefix => {
            let groups = n.div_ceil(5).max(1);
            let systems: Vec<String> = (0..groups).map(|_| text(4_000, rng.random())).collect();
            // Each group's five questions arrive spread over the run, not back to back.
            let mut order: Vec<usize> = (0..n).map(|i| i % groups).collect();
            for i in (1..order.len()).rev() {
                order.swap(i, rng.random_range(0..=i));
            }
            order
                .into_iter()
                .map(|group| BenchRequest {
                    prompt: format!("{}{}", systems[group], text(800, rng.random())),
                    output_tokens: 600,
                })
                .collect()
        }
        Workload::MixedLongShort => (0..n)
            .map(|_| {
                if rng.random_bool(0.2) {
                    let input = rng.random_range(5_000..=7_000);
                    BenchRequest {
                        prompt: text(input, rng.random()),
                        output_tokens: 300,
                    }
                } else {
                    let input = rng.random_range(60..=400);
                    BenchRequest {
                        prompt: text(input, rng.random()),
                        output_tokens: rng.random_range(50..=350),
                    }
                }
            })
            .collect(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    impl BenchRequest {
        fn prompt_tokens(&self) -> usize {
            self.prompt.len() / CHARS_PER_TOKEN
        }
    }

    #[test]
    fn text_has_the_requested_token_count_and_differs_by_salt() {
        assert_eq!(text(250, 1).len(), 1_000);
        assert_ne!(text(10, 1), text(10, 2));
        assert_eq!(text(10, 3), text(10, 3));
    }

    #[test]
    fn seed_workload_matches_vllm_0_7_random_dataset() {
        let reqs = generate(Workload::Seed, 500, 0);
        let prefix = &reqs[0].prompt[..4_000];
        assert!(
            reqs.iter().all(|r| r.prompt.starts_with(prefix)),
            "one prefix shared by every prompt"
        );
        assert!(reqs.iter().all(|r| (1_800..=5_000).contains(&r.prompt_tokens())));
        assert!(reqs.iter().all(|r| (600..=3_000).contains(&r.output_tokens)));
        let mean = reqs.iter().map(|r| r.prompt_tokens()).sum::<usize>() as f64 / 500.0;
        assert!((3_200.0..3_600.0).contains(&mean), "mean prompt {mean}");
        // Same seed, same requests: routers are compared on identical work.
        assert_eq!(generate(Workload::Seed, 5, 0)[4].prompt, reqs[4].prompt);
        assert_ne!(generate(Workload::Seed, 5, 1)[4].prompt, reqs[4].prompt);
    }

    #[test]
    fn shared_prefix_groups_have_five_prompts_each() {
        let reqs = generate(Workload::SharedPrefix, 50, 7);
        let mut groups = std::collections::HashMap::new();
        for r in &reqs {
            *groups.entry(&r.prompt[..16_000]).or_insert(0) += 1;
        }
        assert_eq!(groups.len(), 10);
        assert!(groups.values().all(|&n| n == 5));
    }

    #[test]
    fn mixed_workload_is_about_one_fifth_long() {
        let reqs = generate(Workload::MixedLongShort, 2_000, 3);
        let long = reqs.iter().filter(|r| r.prompt_tokens() >= 5_000).count();
        assert!((300..500).contains(&long), "{long} long documents of 2000");
    }
}
