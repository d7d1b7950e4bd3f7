//! The routing request: what the scheduler needs to know about one client request.

use audit::Criticality;

/// A request after parsing and the canary split.
#[derive(Clone, Debug, PartialEq)]
pub struct Request {
    pub request_id: String,
    /// Unix milliseconds when the gateway received the request (wall clock, read at the edge).
    pub received_at_ms: u64,
    /// Model name as the client sent it.
    pub model: String,
    /// Model name after the weighted targetModels split; what the model server is asked for.
    pub target_model: String,
    pub criticality: Criticality,
    /// Pool name, copied into the decision.
    pub pool: String,
    /// The text hashed for prefix affinity: `prompt` for completions, the JSON of `messages` for chat.
    pub prompt: String,
    /// The LoRA adapter the request needs when `target_model` is served as an adapter.
    pub lora_adapter: Option<String>,
    /// The prompt as the model server's tokenizer cuts it, when the gateway has that tokenizer; `None` keeps the
    /// character estimate and the approximate prefix index.
    pub tokenized: Option<Tokenized>,
}

/// Sizes of a tokenized prompt (the tokens themselves stay with the gateway, which looks their blocks up).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Tokenized {
    pub tokens: u32,
    /// Full KV blocks of the prompt that were looked up (at most the index's depth limit).
    pub blocks: u32,
    /// Tokens per KV block, as the engines report it.
    pub block_size: u32,
}

/// Characters per token when the prompt was not tokenized: the usual rule of thumb for English BPE vocabularies.
pub const CHARS_PER_TOKEN: usize = 4;

impl Request {
    /// Prompt tokens: exact when tokenized, else estimated from the characters.
    pub fn prompt_tokens(&self) -> u64 {
        match self.tokenized {
            Some(t) => u64::from(t.tokens),
            None => (self.prompt.len() / CHARS_PER_TOKEN) as u64,
        }
    }
}
