//! Ingest: a gateway's NDJSON batch ([`audit::wire`], the one wire format the shipper writes) checked and turned
//! into rows to store.
//!
//! A batch is all-or-nothing: one malformed line rejects it with the line number, so a gateway never believes a
//! partly stored batch was stored.

pub use audit::wire::LineError;
use audit::wire::{self, Line};

use crate::db::{NewDecision, NewSample};

/// Largest accepted batch body; the gateway's shipper sends far smaller ones.
pub const MAX_BODY_BYTES: usize = 32 << 20;

/// A parsed batch, ready to store.
#[derive(Debug, Default)]
pub struct Batch {
    pub decisions: Vec<NewDecision>,
    pub samples: Vec<NewSample>,
}

/// Parses and checks an NDJSON batch; blank lines are skipped.
pub fn parse(body: &[u8]) -> Result<Batch, LineError> {
    let mut batch = Batch::default();
    for (number, line) in wire::parse(body)? {
        let error = |message: String| LineError { line: number, message };
        match line {
            Line::Decision(d) => batch
                .decisions
                .push(NewDecision::from_decision(&d).map_err(|e| error(e.to_string()))?),
            Line::Sample(s) => {
                if !(0.0..=1.0).contains(&s.kv_usage) || s.pod.is_empty() {
                    return Err(error("sample needs a pod and kv_usage in 0..=1".into()));
                }
                batch.samples.push(NewSample {
                    at_ms: i64::try_from(s.at_ms).map_err(|_| error("sample at_ms out of range".into()))?,
                    pod: s.pod,
                    pool: s.pool,
                    endpoint: s.endpoint,
                    queue: s.queue,
                    running: s.running,
                    kv_usage: s.kv_usage,
                });
            }
        }
    }
    Ok(batch)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn decisions_and_samples_parse_and_bad_lines_are_named() {
        let decision = r#"{"decision":{"request_id":"r1","received_at_ms":5,"model":"qwq","target_model":"qwq-32b",
            "criticality":"Critical","pool":"p","outcome":"Routed","endpoint":"127.0.0.11:8000","fallbacks":[],
            "candidates":[{"pod":"default/a","endpoint":"127.0.0.11:8000","queue":1,"running":2,"kv_usage":0.5,
            "prefix_match_blocks":0,"lora_state":"not_applicable","metrics_age_ms":3,"scores":{"queue":1.0},
            "total":1.0}],"profile":"default","reason":"max score","scheduler_micros":12,"status":200,
            "ttft_ms":10.5,"duration_ms":20.0,"prompt_tokens":5,"completion_tokens":7,"cached_tokens":null}}"#
            .replace('\n', "");
        let sample = r#"{"sample":{"pod":"default/a","pool":"p","endpoint":"127.0.0.11:8000","at_ms":5,"queue":1,"running":2,"kv_usage":0.25}}"#;
        let body = format!("{decision}\n\n{sample}\n");
        let batch = parse(body.as_bytes()).unwrap();
        assert_eq!(batch.decisions.len(), 1);
        assert_eq!(batch.decisions[0].pod.as_deref(), Some("default/a"));
        assert_eq!(batch.samples[0].kv_usage, 0.25);

        let err = parse(format!("{sample}\n{{\"decision\": 1}}").as_bytes()).unwrap_err();
        assert_eq!(err.line, 2);
        let err = parse(sample.replace("0.25", "1.5").as_bytes()).unwrap_err();
        assert!(err.message.contains("kv_usage"));
    }
}
