//! Precise prefix routing's per-request half: the prompt tokenized as the engines tokenize it, cut into blocks of
//! the engines' size, and looked up in the KV state their events report (kept by [`crate::kv_events`]).
//!
//! Tokenizing runs before the ledger's lock is taken (it is the one costly step, a few hundred microseconds for
//! a long prompt); the lookup runs under it, like the rest of the snapshot. A prompt that cannot be tokenized, a
//! LoRA request (engines name adapters by ids this gateway cannot know), or a pool whose engines have not
//! reported a block yet keeps every pod approximate, and the decision record says so per candidate.

use std::{sync::Arc, time::Instant};

use scheduler::{
    Endpoint, EndpointId, Tokenized,
    prefix::precise::{BlockKey, block_keys},
};
use tokenizer::Tokenizer;

use crate::{
    kv_events::subscriber::KvState,
    openai::{ParsedRequest, PromptInput},
};

/// Blocks looked up per prompt: 16 384 tokens in vLLM's 16-token blocks. Deeper blocks rarely decide a pick, and
/// the walk stops anyway where the last pod drops out.
pub const MAX_BLOCKS: usize = 1_024;

/// What precise routing needs: the engines' reported state and the model's tokenizer.
#[derive(Debug, Clone)]
pub struct Precise {
    pub kv: Arc<KvState>,
    pub tokenizer: Arc<Tokenizer>,
}

/// A prompt ready to look up.
#[derive(Debug)]
pub(super) struct Lookup {
    pub(super) tokenized: Tokenized,
    keys: Vec<BlockKey>,
}

impl Precise {
    /// Tokenizes the prompt and cuts it into block keys; `None` when this request cannot be scored precisely.
    pub(super) fn prepare(&self, parsed: &ParsedRequest, lora: bool) -> Option<(Lookup, std::time::Duration)> {
        if lora {
            return None;
        }
        let block_size = self.kv.block_size()?;
        let started = Instant::now();
        let tokens = match parsed.prompt_input()? {
            PromptInput::Text(text) => self.tokenizer.encode(text),
            PromptInput::Tokens(ids) => Ok(ids),
            PromptInput::Chat(messages) => self.tokenizer.encode_chat(&messages),
        };
        let tokens = match tokens {
            Ok(tokens) => tokens,
            Err(error) => {
                tracing::debug!(%error, "prompt not tokenized; scoring it approximately");
                return None;
            }
        };
        let keys = block_keys(&tokens, block_size as usize, None, MAX_BLOCKS);
        let tokenized = Tokenized {
            tokens: u32::try_from(tokens.len()).unwrap_or(u32::MAX),
            blocks: u32::try_from(keys.len()).unwrap_or(u32::MAX),
            block_size,
        };
        Some((Lookup { tokenized, keys }, started.elapsed()))
    }

    /// Fills in each endpoint's engine-reported prefix (left `None` where the pod is approximate now).
    pub(super) fn apply(&self, lookup: &Lookup, endpoints: &mut [Endpoint]) {
        let ids: Vec<EndpointId> = endpoints.iter().map(|e| e.id.clone()).collect();
        let depths = self.kv.precise_prefixes(&lookup.keys, &ids);
        for (endpoint, depth) in endpoints.iter_mut().zip(depths) {
            endpoint.precise_prefix = depth;
        }
    }
}
