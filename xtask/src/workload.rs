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
    /// W5: chat (input U[100,900], output U[100,400]), 70 % through the Critical model `qwq` and 30 % through the
    /// Sheddable `qwq-batch`, arriving open-loop with the rate ramping from 0.5× to 1.5× of saturation.
    CriticalityOverload,
    /// W4: billsum-shaped prompts (input U[1500,2000], output U[150,300]) for 11 LoRA adapters split 5×12 %,
    /// 5×6 %, 1×2 % (the remaining 8 % ask for the base model), on pods with few adapter slots.
    Lora,
    /// llm-d's precise-prefix shape: 24 groups each sharing a 6 000-token prefix (144 K tokens of prefixes, 1.8× one
    /// pod's KV cache at 5 000 blocks, a third of the fleet's: no pod can hold them all, the fleet can), a fresh
    /// 800-token question per request, 200 output tokens, arriving open-loop with the rate ramping from 0.5× to 1.5×
    /// of the uncached saturation estimate.
    PrefixOverCapacity,
}

/// Groups of the `prefix-over-capacity` workload.
const OVER_CAPACITY_GROUPS: usize = 24;

/// The name clients give the gateway for the base model (a Critical InferenceModel).
pub(crate) const GATEWAY_MODEL: &str = "qwq";
/// The Sheddable InferenceModel of the `criticality-overload` workload; it targets the same base model.
pub(crate) const SHEDDABLE_MODEL: &str = "qwq-batch";
/// The base model as the pods serve it: what client-side routers and peers ask for.
pub(crate) const SERVED_MODEL: &str = "qwq-32b";

/// Percent of `lora` requests per adapter (GIE's multilora benchmark split); the remaining 8 % use the base model.
const ADAPTER_SHARES: [u32; 11] = [12, 12, 12, 12, 12, 6, 6, 6, 6, 6, 2];

/// A LoRA adapter of the `lora` workload, by index into its share table.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) struct Adapter(u8);

impl Adapter {
    pub(crate) fn all() -> impl Iterator<Item = Adapter> {
        (0..ADAPTER_SHARES.len() as u8).map(Adapter)
    }

    /// The name the pods serve the adapter under; the gateway's InferenceModel uses the same name.
    pub(crate) fn name(self) -> String {
        format!("lora-{}", self.0)
    }
}

/// What a request asks for besides its prompt, and the group it is reported in.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub(crate) enum Class {
    /// The base model through the Critical InferenceModel (every request of W0, W3a and W7).
    Critical,
    /// The base model through the Sheddable InferenceModel: the gateway may answer 429 when the pool is saturated.
    Sheddable,
    Adapter(Adapter),
}

impl Class {
    /// The model name to send, given the name this router knows the base model by ([`GATEWAY_MODEL`] through the
    /// gateway, [`SERVED_MODEL`] otherwise); routers without InferenceModels cannot tell the classes apart.
    pub(crate) fn model(self, base: &str) -> String {
        match self {
            Class::Critical => base.to_owned(),
            Class::Sheddable if base == GATEWAY_MODEL => SHEDDABLE_MODEL.to_owned(),
            Class::Sheddable => base.to_owned(),
            Class::Adapter(adapter) => adapter.name(),
        }
    }

    /// The report group: adapters are grouped by their share tier, so each row has enough requests.
    pub(crate) fn group(self) -> &'static str {
        match self {
            Class::Critical => "critical",
            Class::Sheddable => "sheddable",
            Class::Adapter(Adapter(i)) => match ADAPTER_SHARES.get(usize::from(i)) {
                Some(12) => "lora 5×12 %",
                Some(6) => "lora 5×6 %",
                _ => "lora 1×2 %",
            },
        }
    }
}

impl Workload {
    pub(crate) fn name(self) -> &'static str {
        match self {
            Workload::Seed => "seed",
            Workload::SharedPrefix => "shared-prefix",
            Workload::MixedLongShort => "mixed-long-short",
            Workload::CriticalityOverload => "criticality-overload",
            Workload::Lora => "lora",
            Workload::PrefixOverCapacity => "prefix-over-capacity",
        }
    }

    /// Whether the workload runs open-loop unless `--arrival` says otherwise (W5 is defined by its arrival ramp).
    pub(crate) fn open_loop_by_default(self) -> bool {
        matches!(self, Workload::CriticalityOverload | Workload::PrefixOverCapacity)
    }

    /// The open-loop rate ramp as multiples of the base rate: `(first request, last request)`.
    pub(crate) fn rate_ramp(self) -> (f64, f64) {
        match self {
            Workload::CriticalityOverload | Workload::PrefixOverCapacity => (0.5, 1.5),
            _ => (1.0, 1.0),
        }
    }

    /// Extra InferenceModel documents for the gateway beside the Critical `qwq`, if the workload needs them.
    pub(crate) fn extra_models(self) -> Option<String> {
        match self {
            Workload::CriticalityOverload => Some(inference_model(SHEDDABLE_MODEL, "Sheddable", SERVED_MODEL)),
            Workload::Lora => Some(
                Adapter::all()
                    .map(|a| inference_model(&a.name(), "Critical", &a.name()))
                    .collect::<Vec<_>>()
                    .join("---\n"),
            ),
            _ => None,
        }
    }

    /// Extra `vllm-sim` flags: the `lora` workload's pods serve every adapter with `max_loras` slots.
    pub(crate) fn sim_args(self, max_loras: u32) -> Vec<String> {
        match self {
            Workload::Lora => vec![
                "--lora-adapters".into(),
                Adapter::all().map(Adapter::name).collect::<Vec<_>>().join(","),
                "--max-loras".into(),
                max_loras.to_string(),
            ],
            _ => Vec::new(),
        }
    }

    /// Whether the simulator should run with automatic prefix caching (vLLM 0.7's V0 default is off).
    pub(crate) fn prefix_caching(self) -> bool {
        matches!(self, Workload::SharedPrefix | Workload::PrefixOverCapacity)
    }

    pub(crate) fn default_requests(self) -> usize {
        match self {
            Workload::Seed => 3_000,
            Workload::SharedPrefix => 375,
            Workload::MixedLongShort => 1_500,
            Workload::CriticalityOverload => 3_000,
            Workload::Lora => 1_500,
            Workload::PrefixOverCapacity => 900,
        }
    }

    pub(crate) fn concurrency(self) -> usize {
        match self {
            Workload::Seed => 60,
            Workload::SharedPrefix => 40,
            Workload::MixedLongShort => 60,
            Workload::CriticalityOverload => 60,
            Workload::Lora => 60,
            Workload::PrefixOverCapacity => 60,
        }
    }
}

/// One benchmark request: a completion prompt (four characters per token) and exactly `output_tokens` to generate.
#[derive(Clone, Debug)]
pub(crate) struct BenchRequest {
    pub(crate) prompt: String,
    pub(crate) output_tokens: usize,
    pub(crate) class: Class,
}

/// An InferenceModel of the benchmark's pool, `modelName` served by `target`.
fn inference_model(name: &str, criticality: &str, target: &str) -> String {
    format!(
        "apiVersion: inference.networking.x-k8s.io/v1alpha1\nkind: InferenceModel\nmetadata:\n  name: {name}\nspec:\n  \
         criticality: {criticality}\n  modelName: {name}\n  poolRef:\n    group: inference.networking.x-k8s.io\n    \
         kind: InferencePool\n    name: reasoning-pool\n  targetModels:\n  - name: {target}\n    weight: 100\n"
    )
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
                        class: Class::Critical,
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
                    class: Class::Critical,
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
                        class: Class::Critical,
                    }
                } else {
                    let input = rng.random_range(60..=400);
                    BenchRequest {
                        prompt: text(input, rng.random()),
                        output_tokens: rng.random_range(50..=350),
                        class: Class::Critical,
                    }
                }
            })
            .collect(),
        Workload::CriticalityOverload => (0..n)
            .map(|_| {
                let class = if rng.random_bool(0.3) {
                    Class::Sheddable
                } else {
                    Class::Critical
                };
                let input = rng.random_range(100..=900);
                BenchRequest {
                    prompt: text(input, rng.random()),
                    output_tokens: rng.random_range(100..=400),
                    class,
                }
            })
            .collect(),
        Workload::Lora => (0..n)
            .map(|_| {
                let draw = rng.random_range(0..100);
                let class = ADAPTER_SHARES
                    .iter()
                    .scan(0, |sum, share| {
                        *sum += share;
                        Some(*sum)
                    })
                    .position(|upper| draw < upper)
                    .map_or(Class::Critical, |i| Class::Adapter(Adapter(i as u8)));
                let input = rng.random_range(1_500..=2_000);
                BenchRequest {
                    prompt: text(input, rng.random()),
                    output_tokens: rng.random_range(150..=300),
                    class,
                }
            })
            .collect(),
        Workload::PrefixOverCapacity => {
            let prefixes: Vec<String> = (0..OVER_CAPACITY_GROUPS).map(|_| text(6_000, rng.random())).collect();
            (0..n)
                .map(|_| BenchRequest {
                    prompt: format!(
                        "{}{}",
                        prefixes[rng.random_range(0..prefixes.len())],
                        text(800, rng.random())
                    ),
                    output_tokens: 200,
                    class: Class::Critical,
                })
                .collect()
        }
    }
}

/// Requests per simulated second that `pods` pods can sustain on this dataset, from the simulator's step model
/// (vllm-sim's QwQ-32B/4×A10 profile): each pod is busy all the time with one prefill per request plus decode
/// steps at the batch that fills the KV cache to the gateway's saturation threshold (80 %). It ignores queueing
/// and LoRA slots, so it is the knee of the latency curve, not a throughput anyone reaches with good TTFT.
pub(crate) fn saturation_rate(dataset: &[BenchRequest], pods: usize, num_gpu_blocks: u32) -> f64 {
    use vllm_sim::{StepModel, StepShape};
    let n = dataset.len().max(1) as f64;
    let input = dataset.iter().map(|r| r.prompt.len() / CHARS_PER_TOKEN).sum::<usize>() as f64 / n;
    let output = dataset.iter().map(|r| r.output_tokens).sum::<usize>() as f64 / n;
    let model = StepModel::QWQ_32B_4XA10;
    let mut prefill = StepShape::default();
    prefill.add_prefill(input as u64, 0);
    // A decoding sequence holds, on average, its prompt and half its output.
    let context = input + output / 2.0;
    let kv_tokens = f64::from(num_gpu_blocks) * vllm_sim::BLOCK_SIZE as f64;
    let batch = (0.8 * kv_tokens / context).clamp(1.0, 256.0).floor() as u64;
    let mut decode = StepShape::default();
    for _ in 0..batch {
        decode.add_decode(context as u64);
    }
    let per_request_ms = model.step_ms(&prefill) + output * model.step_ms(&decode) / batch as f64;
    pods as f64 * 1_000.0 / per_request_ms
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
    fn criticality_overload_is_seventy_percent_critical() {
        let reqs = generate(Workload::CriticalityOverload, 4_000, 5);
        let sheddable = reqs.iter().filter(|r| r.class == Class::Sheddable).count();
        assert!((1_080..1_320).contains(&sheddable), "{sheddable} sheddable of 4000");
        assert!(
            reqs.iter()
                .all(|r| matches!(r.class, Class::Critical | Class::Sheddable))
        );
        assert!(reqs.iter().all(|r| (100..=900).contains(&r.prompt_tokens())));
        assert!(reqs.iter().all(|r| (100..=400).contains(&r.output_tokens)));
        let again = generate(Workload::CriticalityOverload, 4_000, 5);
        assert!(
            reqs.iter()
                .zip(&again)
                .all(|(a, b)| a.class == b.class && a.prompt == b.prompt)
        );
        // Through the gateway the classes are two InferenceModels; direct to the pods both are the base model.
        assert_eq!(Class::Sheddable.model(GATEWAY_MODEL), SHEDDABLE_MODEL);
        assert_eq!(Class::Sheddable.model(SERVED_MODEL), SERVED_MODEL);
        assert_eq!(Class::Critical.model(GATEWAY_MODEL), GATEWAY_MODEL);
    }

    #[test]
    fn lora_shares_follow_the_multilora_split() {
        let n = 20_000;
        let reqs = generate(Workload::Lora, n, 11);
        let mut counts = std::collections::BTreeMap::new();
        for r in &reqs {
            *counts.entry(r.class).or_insert(0usize) += 1;
        }
        let share = |class| counts.get(&class).copied().unwrap_or(0) as f64 / n as f64 * 100.0;
        for (adapter, want) in Adapter::all().zip(ADAPTER_SHARES) {
            let got = share(Class::Adapter(adapter));
            assert!(
                (got - f64::from(want)).abs() < 1.0,
                "{} {got:.1} % want {want} %",
                adapter.name()
            );
        }
        assert!((share(Class::Critical) - 8.0).abs() < 1.0);
        assert_eq!(counts.len(), 12);
        assert!(reqs.iter().all(|r| (1_500..=2_000).contains(&r.prompt_tokens())));
        assert!(reqs.iter().all(|r| (150..=300).contains(&r.output_tokens)));
        assert_eq!(Class::Adapter(Adapter(3)).model(GATEWAY_MODEL), "lora-3");
        assert_eq!(Class::Adapter(Adapter(10)).group(), "lora 1×2 %");
        let sim = Workload::Lora.sim_args(2);
        assert_eq!(sim[1].split(',').count(), 11);
        assert_eq!(sim[3], "2");
    }

    #[test]
    fn extra_models_are_valid_inference_models() {
        assert!(Workload::Seed.extra_models().is_none());
        for (workload, count) in [(Workload::CriticalityOverload, 1), (Workload::Lora, 11)] {
            let text = workload.extra_models().unwrap();
            let docs: Vec<&str> = text.split("---\n").collect();
            assert_eq!(docs.len(), count);
            for doc in docs {
                let model: api::v1alpha1::InferenceModel = serde_saphyr::from_str(doc).unwrap();
                api::validate::validate_model(&model).unwrap();
                assert_eq!(model.spec.pool_ref.name, "reasoning-pool");
            }
        }
        let shed = Workload::CriticalityOverload.extra_models().unwrap();
        assert!(shed.contains("criticality: Sheddable") && shed.contains("modelName: qwq-batch"));
    }

    #[test]
    fn saturation_estimate_is_in_the_calibrated_range() {
        // Chat on five pods: a prefill of ~500 tokens (~220 ms) plus ~250 decode tokens at ~0.8 ms each in a batch
        // of ~100, about 0.43 s of engine time per request and pod.
        let chat = saturation_rate(&generate(Workload::CriticalityOverload, 2_000, 0), 5, 5_000);
        assert!((9.0..15.0).contains(&chat), "chat saturation {chat:.2} req/s");
        // Longer prompts cost more, so fewer requests per second; fewer KV blocks shrink the batch.
        let lora = saturation_rate(&generate(Workload::Lora, 2_000, 0), 5, 5_000);
        assert!(lora < chat / 1.5, "lora {lora:.2} chat {chat:.2}");
        assert!(saturation_rate(&generate(Workload::Lora, 2_000, 0), 5, 2_000) < lora);
    }

    #[test]
    fn over_capacity_prefixes_exceed_one_pod_and_recur() {
        let reqs = generate(Workload::PrefixOverCapacity, 900, 0);
        let mut groups: std::collections::HashMap<&str, usize> = std::collections::HashMap::new();
        for r in &reqs {
            assert_eq!(r.prompt_tokens(), 6_800);
            *groups.entry(&r.prompt[..24_000]).or_insert(0) += 1;
        }
        assert_eq!(groups.len(), OVER_CAPACITY_GROUPS);
        // 144 000 prefix tokens against one pod's 80 000 (5 000 blocks of 16) and five pods' 400 000.
        assert!(groups.len() * 6_000 > 5_000 * 16 && groups.len() * 6_000 < 5 * 5_000 * 16 / 2);
        assert!(groups.values().all(|&n| n >= 5), "every group recurs: {groups:?}");
    }

    #[test]
    fn mixed_workload_is_about_one_fifth_long() {
        let reqs = generate(Workload::MixedLongShort, 2_000, 3);
        let long = reqs.iter().filter(|r| r.prompt_tokens() >= 5_000).count();
        assert!((300..500).contains(&long), "{long} long documents of 2000");
    }
}
