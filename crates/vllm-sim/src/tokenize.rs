//! How the simulator turns prompts into token ids: the model's real tokenizer when `--tokenizer` names one (so the
//! KV events carry the ids a gateway tokenizing the same prompt computes), else a deterministic stand-in of about
//! four characters per token.

use std::{path::Path, sync::Arc};

use tokenizer::{ChatMessage, Tokenizer};

/// Characters per token, the usual rule of thumb for English BPE vocabularies.
pub const CHARS_PER_TOKEN: usize = 4;

/// Id of every generated filler token (so identical conversations hash to identical KV blocks).
pub const FILLER_TOKEN_ID: u32 = 0x7f7f_0001;

/// Text of every generated filler token.
pub const FILLER_TEXT: &str = " tok";

/// The replica's tokenizer.
#[derive(Clone, Debug, Default)]
pub enum Prompts {
    /// [`tokenize`] and [`tokenize_chat`]: no files needed.
    #[default]
    StandIn,
    /// A `tokenizer.json` and its chat template; `filler` is the id of [`FILLER_TEXT`], the token every generated
    /// position holds, so a conversation sent back re-tokenizes to the blocks its answer filled.
    Model { tokenizer: Arc<Tokenizer>, filler: u32 },
}

impl PartialEq for Prompts {
    fn eq(&self, other: &Self) -> bool {
        match (self, other) {
            (Prompts::StandIn, Prompts::StandIn) => true,
            (Prompts::Model { tokenizer: a, .. }, Prompts::Model { tokenizer: b, .. }) => Arc::ptr_eq(a, b),
            _ => false,
        }
    }
}

impl Prompts {
    /// Loads a `tokenizer.json` (and the chat template of the `tokenizer_config.json` beside it).
    pub fn load(path: &Path) -> Result<Prompts, tokenizer::Error> {
        let tokenizer = Tokenizer::from_file(path)?;
        // Without the special tokens a completion would add: the id of the text alone.
        let filler = tokenizer
            .encode_plain(FILLER_TEXT)?
            .first()
            .copied()
            .unwrap_or(FILLER_TOKEN_ID);
        Ok(Prompts::Model {
            tokenizer: Arc::new(tokenizer),
            filler,
        })
    }

    /// Token ids of a completion prompt.
    pub fn text(&self, text: &str) -> Result<Vec<u32>, tokenizer::Error> {
        match self {
            Prompts::StandIn => Ok(tokenize(text)),
            Prompts::Model { tokenizer, .. } => tokenizer.encode(text),
        }
    }

    /// Token ids of a chat conversation.
    pub fn chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, tokenizer::Error> {
        match self {
            Prompts::StandIn => Ok(tokenize_chat(
                messages.iter().map(|m| (m.role.as_str(), m.content.as_str())),
            )),
            Prompts::Model { tokenizer, .. } => tokenizer.encode_chat(messages),
        }
    }

    /// The id of every generated token.
    pub fn filler(&self) -> u32 {
        match self {
            Prompts::StandIn => FILLER_TOKEN_ID,
            Prompts::Model { filler, .. } => *filler,
        }
    }
}

/// Token ids of `text`: one id per group of [`CHARS_PER_TOKEN`] characters (at least one), derived from
/// the bytes of the group so that identical text prefixes give identical ids.
pub fn tokenize(text: &str) -> Vec<u32> {
    let mut ids = Vec::with_capacity(text.len() / CHARS_PER_TOKEN + 1);
    let mut start = 0;
    let mut chars_in_group = 0;
    for (pos, ch) in text.char_indices() {
        chars_in_group += 1;
        if chars_in_group == CHARS_PER_TOKEN {
            let end = pos + ch.len_utf8();
            ids.push(token_id(&text.as_bytes()[start..end]));
            start = end;
            chars_in_group = 0;
        }
    }
    if start < text.len() || ids.is_empty() {
        ids.push(token_id(&text.as_bytes()[start..]));
    }
    ids
}

/// Token ids of a chat conversation: the concatenation of `role: content` lines.
pub fn tokenize_chat<'a>(messages: impl IntoIterator<Item = (&'a str, &'a str)>) -> Vec<u32> {
    let mut text = String::new();
    for (role, content) in messages {
        text.push_str(role);
        text.push_str(": ");
        text.push_str(content);
        text.push('\n');
    }
    tokenize(&text)
}

/// FNV-1a folded to 32 bits: cheap, stable across builds, good enough to tell chunks apart.
fn token_id(bytes: &[u8]) -> u32 {
    let mut h: u32 = 0x811c_9dc5;
    for &b in bytes {
        h ^= u32::from(b);
        h = h.wrapping_mul(0x0100_0193);
    }
    h
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_are_ceil_chars_over_four_at_least_one() {
        assert_eq!(tokenize("").len(), 1);
        assert_eq!(tokenize("abc").len(), 1);
        assert_eq!(tokenize("abcd").len(), 1);
        assert_eq!(tokenize("abcde").len(), 2);
        assert_eq!(tokenize(&"x".repeat(4000)).len(), 1000);
        // Counted in characters, not bytes.
        assert_eq!(tokenize("ééééé").len(), 2);
    }

    #[test]
    fn shared_prefixes_share_ids() {
        let a = tokenize("the same prefix here, then something else");
        let b = tokenize("the same prefix here, and a different tail");
        assert_eq!(a[..5], b[..5]);
        assert_ne!(a[5..], b[5..]);
        assert_eq!(tokenize("hello world"), tokenize("hello world"));
    }
}
