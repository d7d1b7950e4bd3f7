//! Prompt tokenization as the model server does it, so the gateway's block keys match the engine's blocks.
//!
//! A [`Tokenizer`] is HF `tokenizers` loaded from a `tokenizer.json`, plus the model's chat template (the
//! `chat_template` of the `tokenizer_config.json` beside it, rendered with minijinja as vLLM renders it with
//! Jinja2). Completions are encoded with the tokenizer's special tokens (vLLM's default for `/v1/completions`);
//! chat messages are rendered with `add_generation_prompt` and encoded without them, because the template
//! already wrote them. [`synthetic`] builds the small real tokenizer the tests, the demo and the benchmarks use.

mod prefix_cache;
pub mod synthetic;

use std::{
    path::{Path, PathBuf},
    sync::{Mutex, PoisonError},
};

use minijinja::{Environment, context};
use serde::Serialize;

/// Bound on a rendered chat prompt, so a template cannot turn a bounded body into an unbounded string.
pub const MAX_RENDERED_BYTES: usize = 64 << 20;

/// Why a tokenizer could not be loaded or a prompt not tokenized.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("reading {path}: {source}")]
    Read { path: PathBuf, source: std::io::Error },
    #[error("{path} is not a tokenizer.json this build understands: {message}")]
    Parse { path: PathBuf, message: String },
    #[error("{path}: {message}")]
    Config { path: PathBuf, message: String },
    #[error("the chat template does not compile: {0}")]
    Template(String),
    #[error("rendering the chat template: {0}")]
    Render(String),
    #[error("the rendered chat prompt exceeds {MAX_RENDERED_BYTES} bytes")]
    TooLong,
    #[error("this tokenizer has no chat template")]
    NoChatTemplate,
    #[error("encoding: {0}")]
    Encode(String),
}

/// One chat message as the template sees it (content parts already joined into text).
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct ChatMessage {
    pub role: String,
    pub content: String,
}

/// A loaded tokenizer and its chat template.
#[derive(Debug)]
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    /// The compiled template lives in its own environment, named "chat".
    chat: Option<Environment<'static>>,
    /// Special tokens a template may refer to by name (`bos_token`, `eos_token`).
    bos_token: String,
    eos_token: String,
    /// Tokenized prefixes of earlier texts; see [`prefix_cache`].
    prefixes: Mutex<prefix_cache::PrefixCache>,
}

impl Tokenizer {
    /// Loads `path` (a `tokenizer.json`) and, when a `tokenizer_config.json` sits beside it, its chat template and
    /// special tokens.
    pub fn from_file(path: &Path) -> Result<Tokenizer, Error> {
        let json = std::fs::read(path).map_err(|source| Error::Read {
            path: path.to_owned(),
            source,
        })?;
        let config_path = path.with_file_name("tokenizer_config.json");
        let config = match std::fs::read(&config_path) {
            Ok(bytes) => Some(
                serde_json::from_slice::<serde_json::Value>(&bytes).map_err(|e| Error::Config {
                    path: config_path.clone(),
                    message: e.to_string(),
                })?,
            ),
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
            Err(source) => {
                return Err(Error::Read {
                    path: config_path,
                    source,
                });
            }
        };
        let string = |key: &str| config.as_ref().and_then(|c| c.get(key)).and_then(special_token_text);
        let template = string("chat_template");
        Tokenizer::from_parts(&json, template.as_deref(), string("bos_token"), string("eos_token")).map_err(|e| match e
        {
            Error::Parse { message, .. } => Error::Parse {
                path: path.to_owned(),
                message,
            },
            other => other,
        })
    }

    /// Builds a tokenizer from a `tokenizer.json`'s bytes and an optional chat template.
    pub fn from_parts(
        json: &[u8],
        chat_template: Option<&str>,
        bos_token: Option<String>,
        eos_token: Option<String>,
    ) -> Result<Tokenizer, Error> {
        let inner = tokenizers::Tokenizer::from_bytes(json).map_err(|e| Error::Parse {
            path: PathBuf::from("tokenizer.json"),
            message: e.to_string(),
        })?;
        let chat = match chat_template {
            Some(source) => {
                let mut env = Environment::new();
                // HF templates call `raise_exception` to reject conversations they cannot render.
                env.add_function("raise_exception", |message: String| -> Result<(), minijinja::Error> {
                    Err(minijinja::Error::new(minijinja::ErrorKind::InvalidOperation, message))
                });
                env.add_template_owned("chat", source.to_owned())
                    .map_err(|e| Error::Template(e.to_string()))?;
                Some(env)
            }
            None => None,
        };
        Ok(Tokenizer {
            inner,
            chat,
            bos_token: bos_token.unwrap_or_default(),
            eos_token: eos_token.unwrap_or_default(),
            prefixes: Mutex::default(),
        })
    }

    /// Whether chat requests can be tokenized.
    pub fn has_chat_template(&self) -> bool {
        self.chat.is_some()
    }

    /// Token ids of a completion prompt, with the tokenizer's special tokens (as vLLM's `/v1/completions`).
    pub fn encode(&self, text: &str) -> Result<Vec<u32>, Error> {
        self.encode_with(text, true)
    }

    /// The chat prompt the model sees: `messages` through the template, with the generation prompt appended.
    pub fn render_chat(&self, messages: &[ChatMessage]) -> Result<String, Error> {
        let env = self.chat.as_ref().ok_or(Error::NoChatTemplate)?;
        let template = env.get_template("chat").map_err(|e| Error::Render(e.to_string()))?;
        let rendered = template
            .render(context! {
                messages => messages,
                add_generation_prompt => true,
                bos_token => self.bos_token.as_str(),
                eos_token => self.eos_token.as_str(),
            })
            .map_err(|e| Error::Render(e.to_string()))?;
        if rendered.len() > MAX_RENDERED_BYTES {
            return Err(Error::TooLong);
        }
        Ok(rendered)
    }

    /// Token ids of a chat conversation: rendered, then encoded without adding special tokens (the template wrote
    /// them), as vLLM's `/v1/chat/completions`.
    pub fn encode_chat(&self, messages: &[ChatMessage]) -> Result<Vec<u32>, Error> {
        self.encode_with(&self.render_chat(messages)?, false)
    }

    /// Token ids of `text` alone, without the special tokens a completion would get.
    pub fn encode_plain(&self, text: &str) -> Result<Vec<u32>, Error> {
        self.encode_with(text, false)
    }

    /// Encodes `text`, reusing the tokens of a cached prefix and caching what was new. Special tokens a
    /// post-processor adds (a BOS) belong to the first chunk; texts whose post-processor appends tokens are not
    /// cached.
    fn encode_with(&self, text: &str, special: bool) -> Result<Vec<u32>, Error> {
        let hit = self.cache().lookup(text);
        let rest = &text[hit.covered..];
        let encoding = self
            .inner
            .encode(rest, special && hit.covered == 0)
            .map_err(|e| Error::Encode(e.to_string()))?;
        let (ids, offsets) = (encoding.get_ids(), encoding.get_offsets());
        let trailing_special = encoding.get_special_tokens_mask().last() == Some(&1) && ids.len() > 1;
        if !trailing_special && !rest.is_empty() {
            self.cache().insert(text, &hit, ids, offsets);
        }
        let mut tokens = hit.tokens;
        tokens.extend_from_slice(ids);
        Ok(tokens)
    }

    fn cache(&self) -> std::sync::MutexGuard<'_, prefix_cache::PrefixCache> {
        self.prefixes.lock().unwrap_or_else(PoisonError::into_inner)
    }
}

/// A special token in a `tokenizer_config.json`: a string, or an `AddedToken` object with a `content` field.
fn special_token_text(value: &serde_json::Value) -> Option<String> {
    match value {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Object(o) => o.get("content").and_then(|c| c.as_str()).map(str::to_owned),
        _ => None,
    }
}

/// The text of an OpenAI message's `content`: a string, or the `text` of its parts joined; absent or null is empty.
pub fn content_text(content: Option<&serde_json::Value>) -> String {
    match content {
        Some(serde_json::Value::String(s)) => s.clone(),
        Some(serde_json::Value::Array(parts)) => parts
            .iter()
            .filter_map(|p| p.get("text").and_then(|t| t.as_str()))
            .collect(),
        _ => String::new(),
    }
}

#[cfg(test)]
mod tests;
