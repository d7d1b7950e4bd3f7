//! Parsing of OpenAI-style request bodies: the model name, the text hashed for prefix affinity, and the model rewrite.

use bytes::Bytes;
use serde_json::{Map, Value};

use crate::error::RouteError;

/// Which OpenAI endpoint a request was sent to; decides which fields are required.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ApiKind {
    Completions,
    ChatCompletions,
}

impl ApiKind {
    /// Matches by suffix like upstream, so `/openai/v1/chat/completions` behind a prefix rewrite still works.
    pub fn from_path(path: &str) -> Option<ApiKind> {
        if path.ends_with("/chat/completions") {
            Some(ApiKind::ChatCompletions)
        } else if path.ends_with("/completions") {
            Some(ApiKind::Completions)
        } else {
            None
        }
    }
}

/// A request body that passed validation.
#[derive(Debug, Clone)]
pub struct ParsedRequest {
    body: Map<String, Value>,
    kind: ApiKind,
    pub model: String,
    /// `prompt` text for completions, the JSON of `messages` for chat; hashed for prefix affinity.
    pub prompt: String,
    pub stream: bool,
}

/// Parses and validates a request body; the error messages follow the upstream EPP's.
pub fn parse_request(kind: ApiKind, raw: &[u8]) -> Result<ParsedRequest, RouteError> {
    if raw.iter().all(u8::is_ascii_whitespace) {
        return Err(RouteError::BadRequest("request body is empty".into()));
    }
    let body: Map<String, Value> = serde_json::from_slice(raw)
        .map_err(|e| RouteError::BadRequest(format!("error unmarshaling request body: {e}")))?;
    let model = match body.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        _ => {
            return Err(RouteError::BadRequest("model not found in request body".into()));
        }
    };
    let prompt = match kind {
        ApiKind::Completions => match body.get("prompt") {
            Some(Value::String(p)) if !p.is_empty() => p.clone(),
            Some(p @ Value::Array(items)) if !items.is_empty() => p.to_string(),
            _ => {
                return Err(RouteError::BadRequest(
                    "invalid completions request: must have a non-empty prompt field".into(),
                ));
            }
        },
        ApiKind::ChatCompletions => match body.get("messages") {
            Some(m @ Value::Array(items)) if !items.is_empty() => m.to_string(),
            _ => {
                return Err(RouteError::BadRequest(
                    "invalid chat completions request: must have valid messages field".into(),
                ));
            }
        },
    };
    let stream = matches!(body.get("stream"), Some(Value::Bool(true)));
    Ok(ParsedRequest {
        body,
        kind,
        model,
        prompt,
        stream,
    })
}

/// The prompt in the form a tokenizer takes it.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum PromptInput<'a> {
    /// A completion's text.
    Text(&'a str),
    /// A completion already given as token ids.
    Tokens(Vec<u32>),
    /// A chat conversation, each content's text parts joined.
    Chat(Vec<tokenizer::ChatMessage>),
}

impl ParsedRequest {
    /// The prompt to tokenize; `None` for shapes the server would refuse or batch (several prompts in one request).
    pub fn prompt_input(&self) -> Option<PromptInput<'_>> {
        if self.kind == ApiKind::ChatCompletions {
            let messages = self.body.get("messages")?.as_array()?;
            return Some(PromptInput::Chat(
                messages
                    .iter()
                    .map(|m| tokenizer::ChatMessage {
                        role: m.get("role").and_then(Value::as_str).unwrap_or_default().to_owned(),
                        content: tokenizer::content_text(m.get("content")),
                    })
                    .collect(),
            ));
        }
        let token_ids = |items: &[Value]| -> Option<Vec<u32>> {
            items
                .iter()
                .map(|v| v.as_u64().and_then(|id| u32::try_from(id).ok()))
                .collect()
        };
        match self.body.get("prompt")? {
            Value::String(text) => Some(PromptInput::Text(text)),
            Value::Array(items) => match items.as_slice() {
                [Value::String(text)] => Some(PromptInput::Text(text)),
                [Value::Array(ids)] => token_ids(ids).map(PromptInput::Tokens),
                ids => token_ids(ids).map(PromptInput::Tokens),
            },
            _ => None,
        }
    }

    /// The body to send upstream: the original bytes when the model is unchanged, else re-serialised with `model`
    /// replaced (keys come out sorted, as upstream's Go marshaller does).
    pub fn body_for_target(&self, raw: Bytes, target_model: &str) -> Bytes {
        if target_model == self.model {
            return raw;
        }
        let mut body = self.body.clone();
        body.insert("model".into(), Value::String(target_model.into()));
        Bytes::from(Value::Object(body).to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bad(kind: ApiKind, body: &str) -> String {
        match parse_request(kind, body.as_bytes()) {
            Err(RouteError::BadRequest(msg)) => msg,
            other => panic!("expected a bad request for {body:?}, got {other:?}"),
        }
    }

    #[test]
    fn rejects_malformed_bodies_with_upstream_messages() {
        assert_eq!(bad(ApiKind::Completions, ""), "request body is empty");
        assert!(bad(ApiKind::Completions, "{not json").starts_with("error unmarshaling request body"));
        assert_eq!(
            bad(ApiKind::Completions, r#"{"prompt":"hi"}"#),
            "model not found in request body"
        );
        assert_eq!(
            bad(ApiKind::Completions, r#"{"model":7,"prompt":"hi"}"#),
            "model not found in request body"
        );
        assert!(bad(ApiKind::Completions, r#"{"model":"m"}"#).contains("prompt"));
        assert!(bad(ApiKind::ChatCompletions, r#"{"model":"m","messages":[]}"#).contains("messages"));
        assert!(bad(ApiKind::Completions, "[1,2]").starts_with("error unmarshaling"));
    }

    #[test]
    fn the_prompt_input_is_text_token_ids_or_chat_messages() {
        let parse = |kind, body: &str| parse_request(kind, body.as_bytes()).unwrap_or_else(|e| panic!("{body}: {e}"));
        let completion = |body: &str| parse(ApiKind::Completions, body);
        assert_eq!(
            completion(r#"{"model":"m","prompt":"hello"}"#).prompt_input(),
            Some(PromptInput::Text("hello"))
        );
        assert_eq!(
            completion(r#"{"model":"m","prompt":["hello"]}"#).prompt_input(),
            Some(PromptInput::Text("hello"))
        );
        assert_eq!(
            completion(r#"{"model":"m","prompt":[1,2,3]}"#).prompt_input(),
            Some(PromptInput::Tokens(vec![1, 2, 3]))
        );
        assert_eq!(
            completion(r#"{"model":"m","prompt":[[4,5]]}"#).prompt_input(),
            Some(PromptInput::Tokens(vec![4, 5]))
        );
        // A batch of prompts, or ids that are not token ids, is not tokenized (the request stays approximate).
        assert_eq!(completion(r#"{"model":"m","prompt":["a","b"]}"#).prompt_input(), None);
        assert_eq!(completion(r#"{"model":"m","prompt":[-1]}"#).prompt_input(), None);
        // A completion's stray `messages` is not a conversation.
        assert_eq!(
            completion(r#"{"model":"m","prompt":"p","messages":[]}"#).prompt_input(),
            Some(PromptInput::Text("p"))
        );
        let chat = parse(
            ApiKind::ChatCompletions,
            r#"{"model":"m","messages":[{"role":"user","content":[{"type":"text","text":"a"},{"type":"text","text":"b"}]}]}"#,
        );
        let expected = tokenizer::ChatMessage {
            role: "user".into(),
            content: "ab".into(),
        };
        assert_eq!(chat.prompt_input(), Some(PromptInput::Chat(vec![expected])));
    }

    #[test]
    fn extracts_model_prompt_and_stream() {
        let chat = r#"{"model":"qwq","stream":true,"messages":[{"role":"user","content":"Who are you?"}]}"#;
        let parsed = parse_request(ApiKind::ChatCompletions, chat.as_bytes()).unwrap();
        assert_eq!(parsed.model, "qwq");
        assert!(parsed.stream);
        assert_eq!(parsed.prompt, r#"[{"content":"Who are you?","role":"user"}]"#);

        let completion = parse_request(ApiKind::Completions, br#"{"model":"qwq","prompt":"abc"}"#).unwrap();
        assert_eq!(completion.prompt, "abc");
        assert!(!completion.stream);
    }

    #[test]
    fn rewrites_model_only_when_it_changes() {
        let raw = Bytes::from_static(br#"{"prompt":"test2","model":"sql-lora","max_tokens":100}"#);
        let parsed = parse_request(ApiKind::Completions, &raw).unwrap();
        assert_eq!(parsed.body_for_target(raw.clone(), "sql-lora"), raw);
        assert_eq!(
            parsed.body_for_target(raw, "sql-lora-1fdg2"),
            Bytes::from_static(br#"{"max_tokens":100,"model":"sql-lora-1fdg2","prompt":"test2"}"#)
        );
    }

    #[test]
    fn api_kind_matches_by_suffix() {
        assert_eq!(
            ApiKind::from_path("/v1/chat/completions"),
            Some(ApiKind::ChatCompletions)
        );
        assert_eq!(ApiKind::from_path("/v1/completions"), Some(ApiKind::Completions));
        assert_eq!(ApiKind::from_path("/v1/models"), None);
    }
}
