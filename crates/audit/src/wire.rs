//! The ingest wire format: NDJSON, one [`Line`] per line, `{"decision": <Record>}` or `{"sample": <Sample>}`.
//!
//! The gateway's shipper encodes with [`encode`]; the dashboard's ingest decodes with [`parse`]. A batch is
//! all-or-nothing: one malformed line rejects it with its line number, so a gateway never believes a partly stored
//! batch was stored.

use serde::{Deserialize, Serialize};

use crate::Record;

/// One line of the ingest stream.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Line {
    Decision(Box<Record>),
    Sample(Sample),
}

/// Queue, running requests and KV-cache use of one pod at one time.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Sample {
    /// `namespace/name`.
    pub pod: String,
    pub pool: String,
    /// `ip:port`.
    pub endpoint: String,
    pub at_ms: u64,
    pub queue: u32,
    pub running: u32,
    /// 0..=1.
    pub kv_usage: f64,
}

/// A line that did not decode, with its 1-based number.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
#[error("line {line}: {message}")]
pub struct LineError {
    pub line: usize,
    pub message: String,
}

/// Appends `lines` to `out` as NDJSON, each followed by a newline.
pub fn encode<'a>(lines: impl IntoIterator<Item = &'a Line>, out: &mut Vec<u8>) {
    for line in lines {
        // Serialising plain data into a Vec cannot fail: every map key is a string and every number finite or null.
        if serde_json::to_writer(&mut *out, line).is_ok() {
            out.push(b'\n');
        }
    }
}

/// Decodes an NDJSON batch, each line with its 1-based number so a reader's own checks can name it too; blank
/// lines are skipped.
pub fn parse(body: &[u8]) -> Result<Vec<(usize, Line)>, LineError> {
    body.split(|&b| b == b'\n')
        .enumerate()
        .filter(|(_, line)| !line.iter().all(u8::is_ascii_whitespace))
        .map(|(i, line)| {
            let number = i + 1;
            serde_json::from_slice::<Line>(line)
                .map(|decoded| (number, decoded))
                .map_err(|e| LineError {
                    line: number,
                    message: e.to_string(),
                })
        })
        .collect()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::{Criticality, Outcome};

    fn record(id: &str) -> Record {
        Record {
            record_id: format!("rec-{id}"),
            request_id: id.into(),
            received_at_ms: 1,
            model: "m".into(),
            target_model: "m-v2".into(),
            criticality: Criticality::Critical,
            pool: "p".into(),
            outcome: Outcome::Routed,
            endpoint: Some("10.0.0.1:8000".into()),
            fallbacks: vec!["10.0.0.2:8000".into()],
            candidates: vec![],
            profile: "default".into(),
            reason: "max score 1.00 of 1.00: queue 1.00".into(),
            scheduler_micros: 12,
            status: Some(200),
            ttft_ms: Some(15.5),
            duration_ms: Some(40.0),
            prompt_tokens: Some(10),
            completion_tokens: Some(3),
            cached_tokens: None,
            mirror_of: Some("a".into()),
        }
    }

    #[test]
    fn a_batch_round_trips_and_keeps_its_order() {
        let lines = vec![
            Line::Decision(Box::new(record("a"))),
            Line::Sample(Sample {
                pod: "ns/pod".into(),
                pool: "p".into(),
                endpoint: "10.0.0.1:8000".into(),
                at_ms: 5,
                queue: 2,
                running: 1,
                kv_usage: 0.25,
            }),
            Line::Decision(Box::new(record("b"))),
        ];
        let mut out = Vec::new();
        encode(&lines, &mut out);
        assert_eq!(out.iter().filter(|&&b| b == b'\n').count(), 3);
        assert!(
            out.starts_with(br#"{"decision":{"record_id":"rec-a","request_id":"a","#),
            "{}",
            String::from_utf8_lossy(&out)
        );
        let decoded = parse(&out).unwrap();
        assert_eq!(decoded.iter().map(|(n, _)| *n).collect::<Vec<_>>(), [1, 2, 3]);
        assert_eq!(decoded.into_iter().map(|(_, line)| line).collect::<Vec<_>>(), lines);
    }

    #[test]
    fn long_names_are_cut_at_a_character_boundary() {
        assert_eq!(crate::bounded_name("qwq"), "qwq");
        let long = "é".repeat(200);
        let cut = crate::bounded_name(&long);
        assert!(cut.ends_with('…'));
        assert_eq!(cut.len(), crate::MAX_NAME_BYTES + '…'.len_utf8());
        assert!(long.starts_with(cut.trim_end_matches('…')));
    }

    #[test]
    fn a_bad_line_is_named_and_unknown_fields_are_refused() {
        let good =
            br#"{"sample":{"pod":"a/b","pool":"p","endpoint":"e","at_ms":1,"queue":0,"running":0,"kv_usage":0.5}}"#;
        let mut body = Vec::new();
        body.extend_from_slice(good);
        body.extend_from_slice(b"\n\n{\"sample\":{\"pod\":\"x\"}}\n");
        let err = parse(&body).unwrap_err();
        assert_eq!(err.line, 3);
        assert!(err.message.contains("missing field"), "{}", err.message);
        let err = parse(br#"{"something":{}}"#).unwrap_err();
        assert_eq!(err.line, 1);
        assert!(err.message.contains("unknown variant"), "{}", err.message);
    }
}
