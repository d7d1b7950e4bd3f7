//! Step-time model: how long one engine step takes for a given batch shape (pure, no clock).

use std::fmt;

/// A named hardware/model calibration. The step time is a roofline-style formula whose
/// coefficients come from `shared/reference/simulator.md` §3.3.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, Default, clap::ValueEnum)]
pub enum Profile {
    /// QwQ-32B (bf16) on 4×A10 with TP=4, vLLM v0.7 V0, enforce-eager.
    #[default]
    #[value(name = "qwq-32b-4xa10")]
    Qwq32b4xA10,
    /// Every step takes zero time; for measuring proxy overhead against a "direct" baseline.
    #[value(name = "zero-delay")]
    ZeroDelay,
}

impl Profile {
    /// The coefficients of this profile.
    pub fn model(self) -> StepModel {
        match self {
            Profile::Qwq32b4xA10 => StepModel::QWQ_32B_4XA10,
            Profile::ZeroDelay => StepModel::ZERO,
        }
    }

    /// Stable name, as accepted by `--profile`.
    pub fn as_str(self) -> &'static str {
        match self {
            Profile::Qwq32b4xA10 => "qwq-32b-4xa10",
            Profile::ZeroDelay => "zero-delay",
        }
    }
}

impl fmt::Display for Profile {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.as_str())
    }
}

/// Coefficients of
/// `step_ms = fixed + max(weight_floor, compute·T) + extra·T + per_decode_seq·B + per_kilo_context·C/1000
///            + Σ attention·n_i·(n_i/2 + c_i)`.
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct StepModel {
    /// CPU scheduling, sampling and NCCL latency paid by every step.
    pub fixed_ms: f64,
    /// Time to stream the weights once: the decode floor.
    pub weight_floor_ms: f64,
    /// Linear-layer compute per token; competes with the weight floor (roofline `max`).
    pub compute_ms_per_token: f64,
    /// Per-token cost beyond linear compute (mostly PCIe all-reduce bandwidth).
    pub extra_ms_per_token: f64,
    /// Sampling and output processing per decoding sequence.
    pub per_decode_seq_ms: f64,
    /// Reading the KV cache of decoding sequences, per 1000 tokens of context.
    pub per_kilo_context_ms: f64,
    /// Prefill attention FLOPs coefficient.
    pub attention_ms: f64,
}

impl StepModel {
    /// Calibrated QwQ-32B / 4×A10 / TP=4 model.
    pub const QWQ_32B_4XA10: StepModel = StepModel {
        fixed_ms: 7.0,
        weight_floor_ms: 35.6,
        compute_ms_per_token: 0.217,
        extra_ms_per_token: 0.213,
        per_decode_seq_ms: 0.10,
        per_kilo_context_ms: 0.16,
        attention_ms: 6.55e-6,
    };

    /// Every step is free.
    pub const ZERO: StepModel = StepModel {
        fixed_ms: 0.0,
        weight_floor_ms: 0.0,
        compute_ms_per_token: 0.0,
        extra_ms_per_token: 0.0,
        per_decode_seq_ms: 0.0,
        per_kilo_context_ms: 0.0,
        attention_ms: 0.0,
    };

    /// Duration of one step of the given shape, in (simulated) milliseconds. An empty step costs nothing.
    pub fn step_ms(&self, shape: &StepShape) -> f64 {
        if shape.is_empty() {
            return 0.0;
        }
        let t = shape.tokens as f64;
        self.fixed_ms
            + self.weight_floor_ms.max(self.compute_ms_per_token * t)
            + self.extra_ms_per_token * t
            + self.per_decode_seq_ms * shape.decode_seqs as f64
            + self.per_kilo_context_ms * shape.decode_context as f64 / 1000.0
            + self.attention_ms * shape.prefill_attention
    }

    /// How long prefilling a `tokens`-long prompt takes on an otherwise idle engine that computes at most
    /// `chunk` tokens per step (one step when `chunk` covers the prompt).
    pub fn solo_prefill_ms(&self, tokens: u64, chunk: u64) -> f64 {
        self.solo_prefill_after_hit_ms(tokens, 0, chunk)
    }

    /// [`StepModel::solo_prefill_ms`] of a prompt whose first `cached` tokens are already in the prefix cache:
    /// only the rest is computed, though it still attends over the cached part.
    pub fn solo_prefill_after_hit_ms(&self, tokens: u64, cached: u64, chunk: u64) -> f64 {
        let chunk = chunk.max(1);
        let mut done = cached.min(tokens);
        let mut total = 0.0;
        while done < tokens {
            let new = chunk.min(tokens - done);
            let mut shape = StepShape::default();
            shape.add_prefill(new, done);
            total += self.step_ms(&shape);
            done += new;
        }
        total
    }
}

/// What a step computes, accumulated by the scheduler while it builds the batch.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct StepShape {
    /// T: tokens computed in the step (one per decode, n_i per prefill).
    pub tokens: u64,
    /// B: number of decoding sequences.
    pub decode_seqs: u64,
    /// C: summed context length of the decoding sequences.
    pub decode_context: u64,
    /// Σ n_i·(n_i/2 + c_i) over the prefills of the step.
    pub prefill_attention: f64,
}

impl StepShape {
    /// Adds one decoding sequence whose context (including the token being computed) is `context` long.
    pub fn add_decode(&mut self, context: u64) {
        self.tokens += 1;
        self.decode_seqs += 1;
        self.decode_context += context;
    }

    /// Adds a prefill (or prefill chunk) of `new` tokens on top of `cached` already-computed ones.
    pub fn add_prefill(&mut self, new: u64, cached: u64) {
        self.tokens += new;
        let n = new as f64;
        self.prefill_attention += n * (n / 2.0 + cached as f64);
    }

    /// True when nothing is computed.
    pub fn is_empty(&self) -> bool {
        self.tokens == 0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn prefill_ms(n: u64) -> f64 {
        let mut s = StepShape::default();
        s.add_prefill(n, 0);
        StepModel::QWQ_32B_4XA10.step_ms(&s)
    }

    fn decode_ms(batch: u64, ctx_per_seq: u64) -> f64 {
        let mut s = StepShape::default();
        for _ in 0..batch {
            s.add_decode(ctx_per_seq);
        }
        StepModel::QWQ_32B_4XA10.step_ms(&s)
    }

    fn assert_close(got: f64, want: f64, rel: f64) {
        assert!(
            (got - want).abs() <= want * rel,
            "got {got:.1} ms, want {want:.1} ms ±{:.0}%",
            rel * 100.0
        );
    }

    #[test]
    fn lone_prefill_matches_reference_table() {
        // simulator.md §3.3: n = 512 / 1K / 2K / 3.4K / 5K / 8K (decimal K).
        for (n, want) in [
            (512, 230.0),
            (1000, 440.0),
            (2000, 880.0),
            (3400, 1510.0),
            (5000, 2240.0),
            (8000, 3660.0),
        ] {
            assert_close(prefill_ms(n), want, 0.02);
        }
    }

    #[test]
    fn decode_matches_reference_table() {
        for (b, want) in [(1, 43.6), (4, 46.7), (8, 50.7), (12, 54.8), (16, 58.9)] {
            assert_close(decode_ms(b, 4400), want, 0.02);
        }
    }

    #[test]
    fn cached_tokens_only_cost_attention() {
        let model = StepModel::QWQ_32B_4XA10;
        let mut cold = StepShape::default();
        cold.add_prefill(3400, 0);
        let mut warm = StepShape::default();
        warm.add_prefill(2400, 1000);
        let (cold, warm) = (model.step_ms(&cold), model.step_ms(&warm));
        assert!(warm < cold - 400.0, "warm {warm} cold {cold}");
        // The cached 1000 tokens still appear in the attention term.
        let mut fresh_2400 = StepShape::default();
        fresh_2400.add_prefill(2400, 0);
        assert!(warm > model.step_ms(&fresh_2400));
    }

    #[test]
    fn solo_prefill_sums_its_chunks() {
        let model = StepModel::QWQ_32B_4XA10;
        assert_close(model.solo_prefill_ms(1000, 8192), 440.0, 0.02);
        assert_eq!(model.solo_prefill_ms(1000, 8192), prefill_ms(1000));
        // Two chunks pay the per-step cost twice and the second attends to the first.
        let chunked = model.solo_prefill_ms(4096, 2048);
        assert!(
            chunked > prefill_ms(4096) - 10.0 && chunked > 2.0 * prefill_ms(2048),
            "{chunked}"
        );
        assert_eq!(model.solo_prefill_ms(0, 2048), 0.0);
    }

    #[test]
    fn zero_delay_and_empty_steps_cost_nothing() {
        let mut s = StepShape::default();
        assert_eq!(StepModel::QWQ_32B_4XA10.step_ms(&s), 0.0);
        s.add_prefill(8000, 100);
        s.add_decode(4000);
        assert_eq!(Profile::ZeroDelay.model().step_ms(&s), 0.0);
    }
}
