//! Command line of `vllm-sim` (every flag also reads `SWITCHYARD_SIM_<NAME>`).

use std::net::SocketAddrV4;

use crate::config::{EngineConfig, Fault, ReplicaConfig, SchedulerKind};
use crate::profile::Profile;

/// Calibrated step-level vLLM simulator serving the OpenAI API and vLLM metrics.
#[derive(Debug, Clone, PartialEq, clap::Parser)]
#[command(name = "vllm-sim", version, about)]
pub struct Args {
    /// Address of the first replica; replica i listens on the i-th following IPv4 address, same port.
    #[arg(long, env = "SWITCHYARD_SIM_ADDR", default_value = "127.0.0.11:8000")]
    pub addr: SocketAddrV4,

    /// Number of replicas (each with its own engine).
    #[arg(long, env = "SWITCHYARD_SIM_REPLICAS", default_value_t = 1, value_parser = clap::value_parser!(u32).range(1..=1024))]
    pub replicas: u32,

    /// Step-time model.
    #[arg(long, env = "SWITCHYARD_SIM_PROFILE", value_enum, default_value_t = Profile::Qwq32b4xA10)]
    pub profile: Profile,

    /// Simulated time runs this many times faster than real time (10 = ten times faster).
    #[arg(long, env = "SWITCHYARD_SIM_TIME_SCALE", default_value_t = 1.0, value_parser = parse_time_scale)]
    pub time_scale: f64,

    /// KV-cache blocks (of 16 tokens) per replica.
    #[arg(long, env = "SWITCHYARD_SIM_NUM_GPU_BLOCKS", default_value_t = 5000, value_parser = clap::value_parser!(u32).range(1..))]
    pub num_gpu_blocks: u32,

    /// Enable automatic prefix caching.
    #[arg(long, env = "SWITCHYARD_SIM_PREFIX_CACHING")]
    pub prefix_caching: bool,

    /// Which vLLM scheduler to imitate.
    #[arg(long, env = "SWITCHYARD_SIM_SCHEDULER", value_enum, default_value_t = SchedulerKind::V0)]
    pub scheduler: SchedulerKind,

    /// Longest prompt + completion accepted, in tokens.
    #[arg(long, env = "SWITCHYARD_SIM_MAX_MODEL_LEN", default_value_t = 8192, value_parser = clap::value_parser!(u32).range(2..))]
    pub max_model_len: u32,

    /// Most requests running at once.
    #[arg(long, env = "SWITCHYARD_SIM_MAX_NUM_SEQS", default_value_t = 256, value_parser = clap::value_parser!(u32).range(1..))]
    pub max_num_seqs: u32,

    /// Token budget of one step [default: max(max-model-len, 2048) for v0, 2048 for v1].
    #[arg(long, env = "SWITCHYARD_SIM_MAX_NUM_BATCHED_TOKENS", value_parser = clap::value_parser!(u32).range(1..))]
    pub max_num_batched_tokens: Option<u32>,

    /// Name of the base model.
    #[arg(long, env = "SWITCHYARD_SIM_SERVED_MODEL_NAME", default_value = "qwq-32b")]
    pub served_model_name: String,

    /// Comma-separated model names served as LoRA adapters (needs --max-loras > 0).
    #[arg(long, env = "SWITCHYARD_SIM_LORA_ADAPTERS", value_delimiter = ',')]
    pub lora_adapters: Vec<String>,

    /// LoRA adapters resident at once (0 disables LoRA).
    #[arg(long, env = "SWITCHYARD_SIM_MAX_LORAS", default_value_t = 0)]
    pub max_loras: u32,

    /// Seed for response ids and fault draws (replica i uses seed + i); random when absent.
    #[arg(long, env = "SWITCHYARD_SIM_SEED")]
    pub seed: Option<u64>,

    /// Fault injection: share of generation requests (0–1) answered with HTTP 500 instead of being served.
    #[arg(long, env = "SWITCHYARD_SIM_ERROR_RATE", default_value_t = 0.0, value_parser = parse_rate)]
    pub error_rate: f64,

    /// Fault injection: apply --error-rate only to requests for this model name (base or adapter).
    #[arg(long, env = "SWITCHYARD_SIM_ERROR_MODEL")]
    pub error_model: Option<String>,

    /// Fault injection: every engine step takes this many times its profiled duration (1 = healthy).
    #[arg(long, env = "SWITCHYARD_SIM_SLOWDOWN", default_value_t = 1.0, value_parser = parse_slowdown)]
    pub slowdown: f64,

    /// Fault injection: apply --slow-factor only to requests for this model name (base or adapter).
    #[arg(long, env = "SWITCHYARD_SIM_SLOW_MODEL")]
    pub slow_model: Option<String>,

    /// Fault injection: a slow request's idle-replica TTFT is this many times the healthy one (1 = healthy). It
    /// waits (factor − 1) × its solo prefill time before entering the engine, counted in its TTFT; requests of
    /// other models and the shared batch keep their speed.
    #[arg(long, env = "SWITCHYARD_SIM_SLOW_FACTOR", default_value_t = 1.0, value_parser = parse_slowdown)]
    pub slow_factor: f64,

    /// vLLM's KV-event publisher, as vLLM takes it: JSON with `enable_kv_cache_events`, `publisher` ("zmq"),
    /// `endpoint` (`tcp://*:5557` binds each replica's own address), `replay_endpoint`, `topic`, `buffer_steps`,
    /// `hwm`, `max_queue_size`. Turns prefix caching on, as vLLM V1 has it on by default.
    #[arg(long, env = "SWITCHYARD_SIM_KV_EVENTS_CONFIG", value_parser = parse_kv_events_config)]
    pub kv_events_config: Option<crate::kv_events::KvEventsConfig>,

    /// The model's `tokenizer.json` (chat template from the `tokenizer_config.json` beside it), as vLLM loads it:
    /// token counts, prefix-cache blocks and KV events use its ids. Without it, a stand-in of about four characters
    /// per token.
    #[arg(long, env = "SWITCHYARD_SIM_TOKENIZER", value_parser = parse_tokenizer)]
    pub tokenizer: Option<crate::tokenize::Prompts>,
}

impl Args {
    /// The configuration shared by every replica (seeds are offset per replica by [`crate::run`]).
    pub fn replica_config(&self) -> ReplicaConfig {
        let engine = EngineConfig {
            scheduler: self.scheduler,
            profile: self.profile,
            num_gpu_blocks: self.num_gpu_blocks,
            prefix_caching: self.prefix_caching || self.kv_events_config.as_ref().is_some_and(|c| c.publishes()),
            max_model_len: self.max_model_len,
            max_num_seqs: self.max_num_seqs,
            max_num_batched_tokens: self
                .max_num_batched_tokens
                .unwrap_or_else(|| self.scheduler.default_max_num_batched_tokens(self.max_model_len)),
            max_loras: self.max_loras,
            ..EngineConfig::for_scheduler(self.scheduler)
        };
        ReplicaConfig {
            engine,
            served_model_name: self.served_model_name.clone(),
            lora_adapters: self.lora_adapters.iter().filter(|s| !s.is_empty()).cloned().collect(),
            time_scale: self.time_scale,
            seed: self.seed,
            fault: Fault {
                error_rate: self.error_rate,
                error_model: self.error_model.clone(),
                slowdown: self.slowdown,
                slow_model: self.slow_model.clone(),
                slow_factor: self.slow_factor,
            },
            kv_events: self.kv_events_config.clone().filter(|c| c.publishes()),
            prompts: self.tokenizer.clone().unwrap_or_default(),
        }
    }
}

fn parse_tokenizer(s: &str) -> Result<crate::tokenize::Prompts, String> {
    crate::tokenize::Prompts::load(std::path::Path::new(s)).map_err(|e| e.to_string())
}

fn parse_kv_events_config(s: &str) -> Result<crate::kv_events::KvEventsConfig, String> {
    crate::kv_events::KvEventsConfig::parse(s).map_err(|e| e.to_string())
}

fn parse_time_scale(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v > 0.0 {
        Ok(v)
    } else {
        Err(format!("must be a positive number, got {v}"))
    }
}

fn parse_rate(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if (0.0..=1.0).contains(&v) {
        Ok(v)
    } else {
        Err(format!("must be between 0 and 1, got {v}"))
    }
}

fn parse_slowdown(s: &str) -> Result<f64, String> {
    let v: f64 = s.parse().map_err(|e| format!("{e}"))?;
    if v.is_finite() && v >= 1.0 {
        Ok(v)
    } else {
        Err(format!("must be a number ≥ 1, got {v}"))
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    #[test]
    fn defaults() {
        let args = Args::try_parse_from(["vllm-sim"]).unwrap();
        assert_eq!(args.addr.to_string(), "127.0.0.11:8000");
        let cfg = args.replica_config();
        assert_eq!(cfg, ReplicaConfig::default());
    }

    #[test]
    fn v1_budget_default_and_lists() {
        let args = Args::try_parse_from([
            "vllm-sim",
            "--scheduler",
            "v1",
            "--profile",
            "zero-delay",
            "--lora-adapters",
            "a,b",
            "--max-loras",
            "2",
            "--prefix-caching",
            "--time-scale",
            "10",
        ])
        .unwrap();
        let cfg = args.replica_config();
        assert_eq!(cfg.engine.max_num_batched_tokens, 2048);
        assert_eq!(cfg.engine.profile, Profile::ZeroDelay);
        assert_eq!(cfg.lora_adapters, vec!["a", "b"]);
        assert!(cfg.engine.prefix_caching);
        assert_eq!(cfg.time_scale, 10.0);
        cfg.validate().unwrap();
    }

    #[test]
    fn fault_flags_reach_the_config() {
        let args = Args::try_parse_from([
            "vllm-sim",
            "--error-rate",
            "0.25",
            "--error-model",
            "v2",
            "--slowdown",
            "3",
            "--slow-model",
            "v2",
            "--slow-factor",
            "10",
            "--lora-adapters",
            "v2",
            "--max-loras",
            "1",
        ])
        .unwrap();
        let cfg = args.replica_config();
        assert_eq!(
            cfg.fault,
            Fault {
                error_rate: 0.25,
                error_model: Some("v2".into()),
                slowdown: 3.0,
                slow_model: Some("v2".into()),
                slow_factor: 10.0,
            }
        );
        cfg.validate().unwrap();
    }

    #[test]
    fn bad_flags_are_refused() {
        for bad in [
            &["vllm-sim", "--time-scale", "0"][..],
            &["vllm-sim", "--time-scale", "-2"],
            &["vllm-sim", "--scheduler", "v2"],
            &["vllm-sim", "--profile", "gpt"],
            &["vllm-sim", "--replicas", "0"],
            &["vllm-sim", "--addr", "[::1]:8000"],
            &["vllm-sim", "--error-rate", "1.1"],
            &["vllm-sim", "--slowdown", "0.5"],
            &["vllm-sim", "--slow-factor", "0"],
            &["vllm-sim", "--slow-factor", "inf"],
        ] {
            assert!(Args::try_parse_from(bad).is_err(), "{bad:?} accepted");
        }
    }
}
