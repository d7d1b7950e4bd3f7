//! Tokenized prompt prefixes, so a prompt that starts like an earlier one only tokenizes what is new.
//!
//! Tokenizing costs about a microsecond a token (8 ms for an 8 K-token prompt), paid for every request, while the
//! prompts a cache-aware router exists for share long prefixes. llm-d's tokenizer keeps a prefix store for the
//! same reason. Text is cut into [`CHUNK_BYTES`] chunks named by a chained hash (a chunk's key stands for all the
//! text before it too); each cached chunk holds the tokens that end inside it, cut where the next token begins a
//! new word (the character after the cut is a space), so tokenizing the rest from there gives what tokenizing the
//! whole text gives: pre-tokenizers split at spaces, and no merge crosses one. A prompt is the tokens of its
//! longest cached run of chunks plus the rest, tokenized once and then cached chunk by chunk.
//!
//! Bounded: at most [`MAX_CHUNKS`] chunks (each its tokens, a few hundred bytes), the oldest dropped first.

use std::collections::{HashMap, VecDeque};

use xxhash_rust::xxh3::xxh3_64_with_seed;

/// Bytes of text per chunk: small enough that a prompt's new tail is mostly tokenized once, large enough that the
/// walk is short.
pub(crate) const CHUNK_BYTES: usize = 1_024;
/// Chunks remembered: 64 MB of prompt text, about 16 M tokens, ~70 MB of ids.
pub(crate) const MAX_CHUNKS: usize = 65_536;

/// The tokens ending inside one chunk, and where in the text the last of them ends.
#[derive(Debug)]
struct Chunk {
    tokens: Box<[u32]>,
    end: usize,
}

#[derive(Debug, Default)]
pub(crate) struct PrefixCache {
    chunks: HashMap<u64, Chunk>,
    /// Insertion order, for dropping the oldest.
    order: VecDeque<u64>,
}

/// The cached part of a text: its tokens and the byte offset the rest starts at.
#[derive(Debug, Default)]
pub(crate) struct Hit {
    pub(crate) tokens: Vec<u32>,
    pub(crate) covered: usize,
    /// Chunks matched (the rest of the chain is what may be added).
    chunks: usize,
}

/// Chained keys of the whole chunks of `text`.
fn keys(text: &str) -> Vec<u64> {
    let mut parent = 0x746f_6b65_6e73_0001_u64;
    text.as_bytes()
        .chunks_exact(CHUNK_BYTES)
        .map(|chunk| {
            parent = xxh3_64_with_seed(chunk, parent);
            parent
        })
        .collect()
}

impl PrefixCache {
    /// The tokens of the longest cached run of `text`'s leading chunks.
    pub(crate) fn lookup(&self, text: &str) -> Hit {
        let mut hit = Hit::default();
        for key in keys(text) {
            let Some(chunk) = self.chunks.get(&key) else {
                break;
            };
            hit.tokens.extend_from_slice(&chunk.tokens);
            hit.covered = chunk.end;
            hit.chunks += 1;
        }
        hit
    }

    /// Caches the chunks of `text` after `hit`, given the tokens of `text[hit.covered..]` and their byte offsets
    /// (relative to `hit.covered`). Stops at a chunk with no safe cut.
    pub(crate) fn insert(&mut self, text: &str, hit: &Hit, rest: &[u32], offsets: &[(usize, usize)]) {
        let bytes = text.as_bytes();
        let mut next = 0;
        let mut covered = hit.covered;
        for (i, key) in keys(text).into_iter().enumerate().skip(hit.chunks) {
            let boundary = (i + 1) * CHUNK_BYTES;
            // The last token ending inside this chunk right before a space.
            let mut cut = None;
            for (j, &(_, end)) in offsets.iter().enumerate().skip(next) {
                let end = end + hit.covered;
                // The space after the cut must be inside this chunk, which the key names; the next byte is not.
                if end >= boundary {
                    break;
                }
                if end > covered && bytes.get(end) == Some(&b' ') {
                    cut = Some((j, end));
                }
            }
            let Some((last, end)) = cut else {
                return;
            };
            self.put(
                key,
                Chunk {
                    tokens: rest[next..=last].into(),
                    end,
                },
            );
            next = last + 1;
            covered = end;
        }
    }

    fn put(&mut self, key: u64, chunk: Chunk) {
        if self.chunks.insert(key, chunk).is_none() {
            self.order.push_back(key);
        }
        while self.chunks.len() > MAX_CHUNKS {
            match self.order.pop_front() {
                Some(old) => {
                    self.chunks.remove(&old);
                }
                None => break,
            }
        }
    }

    #[cfg(test)]
    pub(crate) fn len(&self) -> usize {
        self.chunks.len()
    }
}
