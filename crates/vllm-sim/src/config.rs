//! Validated configuration of one simulated replica and of its engine.

use std::fmt;

use crate::profile::Profile;

/// Which vLLM scheduler the engine imitates.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum)]
pub enum SchedulerKind {
    /// vLLM V0 default path: prefill-first, prefill-only steps, no chunking, 1% admission watermark.
    #[default]
    V0,
    /// vLLM V1: one token budget per step, running requests first, chunked prefill.
    V1,
}

impl SchedulerKind {
    /// vLLM's default `max_num_batched_tokens` for this scheduler at `max_model_len` 8192.
    pub fn default_max_num_batched_tokens(self, max_model_len: u32) -> u32 {
        match self {
            SchedulerKind::V0 => max_model_len.max(2048),
            SchedulerKind::V1 => 2048,
        }
    }
}

impl fmt::Display for SchedulerKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            SchedulerKind::V0 => "v0",
            SchedulerKind::V1 => "v1",
        })
    }
}

/// Scheduler and KV-cache parameters of one engine.
#[derive(Debug, Clone, PartialEq)]
pub struct EngineConfig {
    pub scheduler: SchedulerKind,
    pub profile: Profile,
    pub num_gpu_blocks: u32,
    pub prefix_caching: bool,
    pub max_model_len: u32,
    pub max_num_seqs: u32,
    pub max_num_batched_tokens: u32,
    /// LoRA adapters that may be resident at once (0 disables LoRA).
    pub max_loras: u32,
    /// Share of blocks V0 keeps free when admitting (vLLM's `watermark=0.01`).
    pub watermark: f64,
}

impl Default for EngineConfig {
    fn default() -> Self {
        Self::for_scheduler(SchedulerKind::V0)
    }
}

impl EngineConfig {
    /// The vLLM defaults for the given scheduler, on the QwQ-32B / 4×A10 profile.
    pub fn for_scheduler(scheduler: SchedulerKind) -> Self {
        let max_model_len = 8192;
        Self {
            scheduler,
            profile: Profile::default(),
            num_gpu_blocks: 5000,
            prefix_caching: false,
            max_model_len,
            max_num_seqs: 256,
            max_num_batched_tokens: scheduler.default_max_num_batched_tokens(max_model_len),
            max_loras: 0,
            watermark: 0.01,
        }
    }

    /// Blocks V0 keeps free when admitting.
    pub fn watermark_blocks(&self) -> usize {
        (self.watermark * f64::from(self.num_gpu_blocks)) as usize
    }

    /// Checks the combination makes sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        if self.num_gpu_blocks == 0 {
            return Err(ConfigError::Invalid("num_gpu_blocks must be at least 1".into()));
        }
        if self.max_num_seqs == 0 {
            return Err(ConfigError::Invalid("max_num_seqs must be at least 1".into()));
        }
        if self.max_model_len < 2 {
            return Err(ConfigError::Invalid("max_model_len must be at least 2".into()));
        }
        if self.max_num_batched_tokens == 0 {
            return Err(ConfigError::Invalid("max_num_batched_tokens must be at least 1".into()));
        }
        if !(0.0..1.0).contains(&self.watermark) {
            return Err(ConfigError::Invalid("watermark must be in [0, 1)".into()));
        }
        // Like vLLM: without chunked prefill a prompt must fit in one step.
        if self.scheduler == SchedulerKind::V0 && self.max_num_batched_tokens < self.max_model_len {
            return Err(ConfigError::Invalid(format!(
                "max_num_batched_tokens ({}) is smaller than max_model_len ({}) with the v0 scheduler, \
                 which does not chunk prefills",
                self.max_num_batched_tokens, self.max_model_len
            )));
        }
        Ok(())
    }
}

/// Everything one replica needs: the engine plus what the HTTP front end serves.
#[derive(Debug, Clone, PartialEq)]
pub struct ReplicaConfig {
    pub engine: EngineConfig,
    /// Base model name, as `--served-model-name`.
    pub served_model_name: String,
    /// Model names served as LoRA adapters on top of the base model.
    pub lora_adapters: Vec<String>,
    /// Simulated time runs this many times faster than wall-clock time.
    pub time_scale: f64,
    /// Seeds the response-id generator and the fault draws; random when absent.
    pub seed: Option<u64>,
    /// Deliberate misbehaviour, for testing what watches the replica (guarded releases); none by default.
    pub fault: Fault,
    /// vLLM's `--kv-events-config`: publish what the prefix cache stores and evicts. Off when absent.
    pub kv_events: Option<crate::kv_events::KvEventsConfig>,
    /// How prompts become token ids: the model's tokenizer (`--tokenizer`) or the stand-in.
    pub prompts: crate::tokenize::Prompts,
}

/// Faults a replica injects: a share of requests answered with HTTP 500, every step taking longer, and one
/// model's requests waiting before they reach the engine.
#[derive(Debug, Clone, PartialEq)]
pub struct Fault {
    /// Share of generation requests (0..=1) refused with HTTP 500 before they reach the engine.
    pub error_rate: f64,
    /// Fail only requests for this model name (a base model or an adapter); every request when absent. Lets one
    /// replica serving two targets play a healthy stable and a failing canary.
    pub error_model: Option<String>,
    /// Every engine step takes this many times its profiled duration (1 = as profiled).
    pub slowdown: f64,
    /// Requests for this model name (a base model or an adapter) are the slow ones; every request when absent.
    pub slow_model: Option<String>,
    /// A slow request's time to first token on an idle replica is this many times the healthy one (1 = healthy).
    ///
    /// The request waits `(slow_factor − 1) ×` the profiled time of prefilling its prompt alone before it enters
    /// the engine, and that wait counts in its TTFT (as vLLM's `arrival_time` is taken when the server receives
    /// the request). It is a per-request cost outside the shared batch, such as a new version's heavier prompt
    /// preprocessing: unlike [`Fault::slowdown`], which stretches every step and so every request co-batched
    /// with a slow one, the other models' requests on the same replica keep their latency. The waiting request
    /// is not yet in vLLM's queue, so `vllm:num_requests_waiting` does not count it. Under load the TTFT grows
    /// by less than the factor, since queueing in the engine is not multiplied; with the zero-delay profile the
    /// wait is zero.
    pub slow_factor: f64,
}

impl Default for Fault {
    fn default() -> Self {
        Self {
            error_rate: 0.0,
            error_model: None,
            slowdown: 1.0,
            slow_model: None,
            slow_factor: 1.0,
        }
    }
}

impl Default for ReplicaConfig {
    fn default() -> Self {
        Self {
            engine: EngineConfig::default(),
            served_model_name: "qwq-32b".into(),
            lora_adapters: Vec::new(),
            time_scale: 1.0,
            seed: None,
            fault: Fault::default(),
            kv_events: None,
            prompts: crate::tokenize::Prompts::StandIn,
        }
    }
}

impl ReplicaConfig {
    /// A replica whose steps take no time (for functional tests and overhead benchmarks).
    pub fn zero_delay() -> Self {
        let mut cfg = Self::default();
        cfg.engine.profile = Profile::ZeroDelay;
        cfg
    }

    /// Checks the combination makes sense.
    pub fn validate(&self) -> Result<(), ConfigError> {
        self.engine.validate()?;
        if !(self.time_scale.is_finite() && self.time_scale > 0.0) {
            return Err(ConfigError::Invalid(format!(
                "time_scale must be a positive number, got {}",
                self.time_scale
            )));
        }
        if !(0.0..=1.0).contains(&self.fault.error_rate) {
            return Err(ConfigError::Invalid(format!(
                "error_rate must be between 0 and 1, got {}",
                self.fault.error_rate
            )));
        }
        if !(self.fault.slowdown.is_finite() && self.fault.slowdown >= 1.0) {
            return Err(ConfigError::Invalid(format!(
                "slowdown must be a number ≥ 1, got {}",
                self.fault.slowdown
            )));
        }
        if !(self.fault.slow_factor.is_finite() && self.fault.slow_factor >= 1.0) {
            return Err(ConfigError::Invalid(format!(
                "slow_factor must be a number ≥ 1, got {}",
                self.fault.slow_factor
            )));
        }
        // A misspelt name would silently leave every model healthy.
        if let Some(slow) = &self.fault.slow_model
            && *slow != self.served_model_name
            && !self.lora_adapters.contains(slow)
        {
            return Err(ConfigError::Invalid(format!(
                "slow_model {slow:?} is neither the served model nor one of the lora adapters"
            )));
        }
        if self.served_model_name.is_empty() {
            return Err(ConfigError::Invalid("served_model_name must not be empty".into()));
        }
        if !self.lora_adapters.is_empty() && self.engine.max_loras == 0 {
            return Err(ConfigError::Invalid(
                "lora adapters are configured but max_loras is 0".into(),
            ));
        }
        for (i, name) in self.lora_adapters.iter().enumerate() {
            if name.is_empty() || name.contains(',') {
                return Err(ConfigError::Invalid(format!("invalid lora adapter name {name:?}")));
            }
            if *name == self.served_model_name || self.lora_adapters[..i].contains(name) {
                return Err(ConfigError::Invalid(format!("duplicate model name {name:?}")));
            }
        }
        Ok(())
    }
}

/// Why a configuration was refused.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("invalid simulator configuration: {0}")]
    Invalid(String),
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_follow_vllm() {
        let v0 = EngineConfig::for_scheduler(SchedulerKind::V0);
        assert_eq!(v0.max_num_batched_tokens, 8192);
        assert_eq!(v0.watermark_blocks(), 50);
        assert_eq!(
            EngineConfig::for_scheduler(SchedulerKind::V1).max_num_batched_tokens,
            2048
        );
        ReplicaConfig::default().validate().unwrap();
    }

    #[test]
    fn rejects_nonsense() {
        let cfg = ReplicaConfig {
            time_scale: 0.0,
            ..ReplicaConfig::default()
        };
        assert!(cfg.validate().is_err());

        let mut cfg = ReplicaConfig::default();
        cfg.engine.max_num_batched_tokens = 2048;
        assert!(cfg.validate().is_err(), "v0 cannot chunk a prompt");

        let mut cfg = ReplicaConfig {
            lora_adapters: vec!["a".into()],
            ..ReplicaConfig::default()
        };
        assert!(cfg.validate().is_err(), "adapters need max_loras");
        cfg.engine.max_loras = 1;
        cfg.validate().unwrap();
        cfg.lora_adapters.push("qwq-32b".into());
        assert!(cfg.validate().is_err());

        for fault in [
            Fault {
                error_rate: 1.5,
                ..Fault::default()
            },
            Fault {
                error_rate: f64::NAN,
                ..Fault::default()
            },
            Fault {
                slowdown: 0.5,
                ..Fault::default()
            },
            Fault {
                slow_factor: 0.9,
                ..Fault::default()
            },
            Fault {
                slow_factor: f64::INFINITY,
                ..Fault::default()
            },
            Fault {
                slow_model: Some("qwq-32b-v3".into()),
                slow_factor: 2.0,
                ..Fault::default()
            },
        ] {
            let cfg = ReplicaConfig {
                fault: fault.clone(),
                ..ReplicaConfig::default()
            };
            assert!(cfg.validate().is_err(), "{fault:?} accepted");
        }
    }
}
