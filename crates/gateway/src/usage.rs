//! Extraction of token usage from a model server's response, JSON or SSE, while the bytes stream through untouched.

use serde_json::Value;

/// Bodies larger than this are not kept for usage parsing; a JSON completion is far smaller in practice.
const MAX_JSON_BODY: usize = 1 << 20;

/// Token counts reported by the model server.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct Usage {
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cached_tokens: Option<u64>,
}

/// Watches response chunks and remembers the usage block, without ever holding back a chunk.
#[derive(Debug)]
pub struct UsageObserver {
    sse: bool,
    /// JSON: the body so far (bounded); SSE: the current incomplete line.
    buf: Vec<u8>,
    overflow: bool,
    usage: Option<Usage>,
}

impl UsageObserver {
    pub fn new(content_type: Option<&str>) -> UsageObserver {
        let sse = content_type.is_some_and(|ct| ct.starts_with("text/event-stream"));
        UsageObserver {
            sse,
            buf: Vec::new(),
            overflow: false,
            usage: None,
        }
    }

    pub fn observe(&mut self, chunk: &[u8]) {
        if !self.sse {
            if self.buf.len() + chunk.len() > MAX_JSON_BODY {
                self.overflow = true;
                self.buf = Vec::new();
            } else if !self.overflow {
                self.buf.extend_from_slice(chunk);
            }
            return;
        }
        // SSE events can be split anywhere, so keep the partial last line until its newline arrives.
        let mut rest = chunk;
        while let Some(pos) = rest.iter().position(|&b| b == b'\n') {
            if self.buf.is_empty() {
                self.sse_line(&rest[..pos]);
            } else {
                self.buf.extend_from_slice(&rest[..pos]);
                let line = std::mem::take(&mut self.buf);
                self.sse_line(&line);
            }
            rest = &rest[pos + 1..];
        }
        if self.buf.len() + rest.len() <= MAX_JSON_BODY {
            self.buf.extend_from_slice(rest);
        } else {
            self.buf.clear();
        }
    }

    fn sse_line(&mut self, line: &[u8]) {
        let Some(data) = line.strip_prefix(b"data:") else {
            return;
        };
        let data = data.trim_ascii();
        // Most chunks carry no usage: skip them without a JSON parse.
        if data == b"[DONE]" || !contains(data, b"\"usage\"") {
            return;
        }
        if let Some(usage) = serde_json::from_slice::<Value>(data).ok().as_ref().and_then(usage_of) {
            self.usage = Some(usage);
        }
    }

    /// The usage seen so far; for JSON bodies this parses the collected body.
    pub fn finish(&mut self) -> Option<Usage> {
        if !self.sse && !self.overflow && !self.buf.is_empty() {
            self.usage = serde_json::from_slice::<Value>(&self.buf)
                .ok()
                .as_ref()
                .and_then(usage_of);
            self.buf = Vec::new();
        }
        self.usage
    }
}

fn contains(haystack: &[u8], needle: &[u8]) -> bool {
    haystack.windows(needle.len()).any(|w| w == needle)
}

fn usage_of(value: &Value) -> Option<Usage> {
    let usage = value.get("usage")?.as_object()?;
    let count = |key: &str| usage.get(key).and_then(Value::as_u64);
    let cached = ["prompt_tokens_details", "prompt_token_details"]
        .iter()
        .find_map(|k| usage.get(*k)?.get("cached_tokens")?.as_u64());
    Some(Usage {
        prompt_tokens: count("prompt_tokens").or_else(|| count("input_tokens"))?,
        completion_tokens: count("completion_tokens")
            .or_else(|| count("output_tokens"))
            .unwrap_or(0),
        cached_tokens: cached,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn json_usage_is_read_at_the_end() {
        let mut obs = UsageObserver::new(Some("application/json"));
        let body = br#"{"object":"text_completion","usage":{"prompt_tokens":12,"completion_tokens":5,"prompt_tokens_details":{"cached_tokens":8}}}"#;
        for chunk in body.chunks(7) {
            obs.observe(chunk);
        }
        assert_eq!(
            obs.finish(),
            Some(Usage {
                prompt_tokens: 12,
                completion_tokens: 5,
                cached_tokens: Some(8)
            })
        );
    }

    #[test]
    fn sse_usage_survives_arbitrary_splits() {
        let stream = "data: {\"choices\":[{\"text\":\"a\"}],\"usage\":null}\n\n\
                      data: {\"choices\":[],\"usage\":{\"prompt_tokens\":3,\"completion_tokens\":2}}\n\n\
                      data: [DONE]\n\n";
        for split in 1..stream.len() {
            let mut obs = UsageObserver::new(Some("text/event-stream"));
            let (a, b) = stream.as_bytes().split_at(split);
            obs.observe(a);
            obs.observe(b);
            assert_eq!(
                obs.finish(),
                Some(Usage {
                    prompt_tokens: 3,
                    completion_tokens: 2,
                    cached_tokens: None
                }),
                "split at {split}"
            );
        }
    }

    #[test]
    fn garbage_gives_no_usage() {
        let mut obs = UsageObserver::new(Some("application/json"));
        obs.observe(b"<html>oops</html>");
        assert_eq!(obs.finish(), None);
        let mut sse = UsageObserver::new(Some("text/event-stream"));
        sse.observe(b"data: {\"usage\": broken\n\n");
        assert_eq!(sse.finish(), None);
    }
}
