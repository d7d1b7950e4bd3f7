//! Precise prefix routing's per-request half: the prompt tokenized as the engines tokenize it, cut into blocks of
//! the engines' size, and looked up in the KV state their events report (kept by [`crate::kv_events`]).
//!
//! Tokenizing runs before the ledger's lock is taken (it is the one costly step, a few hundred microseconds for
//! a long prompt); the lookup runs under it, like the rest of the snapshot. A prompt that cannot be tokenized, a
//! LoRA request (engines name adapters by ids this gateway cannot know), or a pool whose engines have not
//! reported a block yet keeps every pod approximate, and the decision record says so per candidate.
//!
//! # What the engines have not reported yet
//! An engine reports a prompt's blocks once its prefill has computed them, which for a queued request is seconds
//! after it was routed. A follow-up with the same prefix arriving meanwhile would find no pod holding it and go
//! anywhere, to prefill the whole prefix again. So this gateway also counts its own requests in flight
//! ([`PendingBlocks`], kept in the ledger from claim to finish: a running request's blocks are pinned in its
//! engine's cache, so they are resident, or about to be, for exactly that long). A precise pod's depth is the
//! larger of what its engine reports and what this gateway has in flight there; nothing else this gateway
//! believes about a pod (what it sent long ago) counts, which is what the engine's events correct.

use std::{collections::HashMap, sync::Arc, time::Instant};

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
    pub(super) keys: Arc<[BlockKey]>,
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
        Some((
            Lookup {
                tokenized,
                keys: keys.into(),
            },
            started.elapsed(),
        ))
    }

    /// Fills in each endpoint's precise prefix: the larger of what its engine reports and what this gateway has in
    /// flight there (left `None` where the pod is approximate now).
    pub(super) fn apply(&self, lookup: &Lookup, endpoints: &mut [Endpoint], pending: &PendingBlocks) {
        let ids: Vec<EndpointId> = endpoints.iter().map(|e| e.id.clone()).collect();
        let depths = self.kv.precise_prefixes(&lookup.keys, &ids);
        let in_flight = pending.depths(&lookup.keys);
        for (endpoint, depth) in endpoints.iter_mut().zip(depths) {
            endpoint.precise_prefix =
                depth.map(|reported| reported.max(in_flight.get(&endpoint.id).copied().unwrap_or(0)));
        }
    }
}

/// The block keys of this gateway's precisely scored requests in flight, by endpoint (see the module docs).
/// Bounded by the requests in flight times [`MAX_BLOCKS`].
#[derive(Debug, Default)]
pub(super) struct PendingBlocks {
    /// Each key's endpoints with the count of in-flight requests there whose prompt has it.
    holders: HashMap<BlockKey, Vec<(EndpointId, u32)>>,
}

impl PendingBlocks {
    pub(super) fn add(&mut self, endpoint: &EndpointId, keys: &[BlockKey]) {
        for key in keys {
            let holders = self.holders.entry(*key).or_default();
            match holders.iter_mut().find(|(id, _)| id == endpoint) {
                Some((_, count)) => *count += 1,
                None => holders.push((endpoint.clone(), 1)),
            }
        }
    }

    pub(super) fn remove(&mut self, endpoint: &EndpointId, keys: &[BlockKey]) {
        for key in keys {
            let Some(holders) = self.holders.get_mut(key) else {
                continue;
            };
            if let Some(at) = holders.iter().position(|(id, _)| id == endpoint) {
                holders[at].1 -= 1;
                if holders[at].1 == 0 {
                    holders.swap_remove(at);
                }
            }
            if holders.is_empty() {
                self.holders.remove(key);
            }
        }
    }

    /// For each endpoint with the first of `keys` in flight, how many leading keys it has in flight.
    pub(super) fn depths(&self, keys: &[BlockKey]) -> HashMap<EndpointId, u32> {
        let mut depths = HashMap::new();
        let Some(first) = keys.first().and_then(|k| self.holders.get(k)) else {
            return depths;
        };
        let mut alive: Vec<&EndpointId> = first.iter().map(|(id, _)| id).collect();
        let mut depth = 1u32;
        for key in &keys[1..] {
            let holders = self.holders.get(key);
            alive.retain(|id| {
                let holds = holders.is_some_and(|h| h.iter().any(|(other, _)| other == *id));
                if !holds {
                    depths.insert((*id).clone(), depth);
                }
                holds
            });
            if alive.is_empty() {
                return depths;
            }
            depth += 1;
        }
        for id in alive {
            depths.insert(id.clone(), depth);
        }
        depths
    }

    /// Keys held, for tests.
    #[cfg(test)]
    fn len(&self) -> usize {
        self.holders.len()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn keys(tokens: &[u32]) -> Vec<BlockKey> {
        block_keys(tokens, 2, None, MAX_BLOCKS)
    }

    #[test]
    fn in_flight_prefixes_are_found_by_depth_and_forgotten_when_released() {
        let (a, b) = (EndpointId::new("a:8000"), EndpointId::new("b:8000"));
        let long = keys(&[1, 2, 3, 4, 5, 6, 7, 8]);
        let short = keys(&[1, 2, 3, 4, 9, 9]);
        let mut pending = PendingBlocks::default();
        pending.add(&a, &long);
        pending.add(&b, &short);
        pending.add(&b, &short);
        let depths = pending.depths(&long);
        assert_eq!((depths.get(&a), depths.get(&b)), (Some(&4), Some(&2)));
        assert!(pending.depths(&keys(&[9, 9])).is_empty());
        // b had two requests with the short prompt: one finishing leaves the other's blocks.
        pending.remove(&b, &short);
        assert_eq!(pending.depths(&short).get(&b), Some(&3));
        pending.remove(&b, &short);
        pending.remove(&a, &long);
        assert_eq!(pending.len(), 0, "nothing in flight, nothing held");
    }
}
