//! Decoding of vLLM's KV-event batches (the msgpack payload of each ZMQ message): the array-like tagged msgspec
//! form `[ts, [event, …], data_parallel_rank?]`, events `["BlockStored", hashes, parent, token_ids, block_size,
//! lora_id, medium?, lora_name?, …]`, `["BlockRemoved", hashes, medium?]`, `["AllBlocksCleared"]`.
//!
//! Tolerant where vLLM versions differ (trailing fields added over time; block hashes as integers or as bytes,
//! the latter folded to 64 bits), strict where a wrong value would corrupt the index (counts, types), and
//! unknown event tags are skipped so a newer engine does not break an older gateway.

use xxhash_rust::xxh3::xxh3_64;

/// Largest payload decoded; a batch of one scheduler step is far smaller.
pub const MAX_PAYLOAD_BYTES: usize = 16 << 20;

/// One decoded batch.
#[derive(Clone, Debug, PartialEq)]
pub struct Batch {
    pub ts: f64,
    pub events: Vec<Event>,
    pub data_parallel_rank: Option<i64>,
}

/// One decoded event; block hashes are the engine's, as 64-bit values.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Event {
    Stored {
        hashes: Vec<u64>,
        parent: Option<u64>,
        tokens: Vec<u32>,
        block_size: usize,
        lora_id: Option<u32>,
    },
    Removed {
        hashes: Vec<u64>,
    },
    Cleared,
}

/// Why a payload was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum DecodeError {
    #[error("payload of {0} bytes exceeds the {MAX_PAYLOAD_BYTES}-byte limit")]
    TooLarge(usize),
    #[error("not msgpack: {0}")]
    Msgpack(String),
    #[error("{0}")]
    Shape(String),
}

fn shape(message: impl Into<String>) -> DecodeError {
    DecodeError::Shape(message.into())
}

/// Decodes one payload.
pub fn decode(payload: &[u8]) -> Result<Batch, DecodeError> {
    if payload.len() > MAX_PAYLOAD_BYTES {
        return Err(DecodeError::TooLarge(payload.len()));
    }
    let mut rest = payload;
    let value = rmpv::decode::read_value(&mut rest).map_err(|e| DecodeError::Msgpack(e.to_string()))?;
    if !rest.is_empty() {
        return Err(shape(format!("{} bytes after the batch", rest.len())));
    }
    let fields = value.as_array().ok_or_else(|| shape("a batch must be an array"))?;
    let ts = match fields.first() {
        Some(rmpv::Value::F64(ts)) => *ts,
        Some(rmpv::Value::F32(ts)) => f64::from(*ts),
        Some(v) if v.as_i64().is_some() => v.as_i64().unwrap_or_default() as f64,
        _ => return Err(shape("a batch starts with its timestamp")),
    };
    let raw_events = fields
        .get(1)
        .and_then(rmpv::Value::as_array)
        .ok_or_else(|| shape("a batch's second field is its events"))?;
    let data_parallel_rank = fields.get(2).and_then(rmpv::Value::as_i64);
    let mut events = Vec::with_capacity(raw_events.len());
    for (i, raw) in raw_events.iter().enumerate() {
        if let Some(event) = decode_event(raw).map_err(|e| shape(format!("event {i}: {e}")))? {
            events.push(event);
        }
    }
    Ok(Batch {
        ts,
        events,
        data_parallel_rank,
    })
}

/// `None` for an event of a kind this gateway does not know.
fn decode_event(raw: &rmpv::Value) -> Result<Option<Event>, DecodeError> {
    let fields = raw.as_array().ok_or_else(|| shape("an event must be an array"))?;
    let tag = fields
        .first()
        .and_then(rmpv::Value::as_str)
        .ok_or_else(|| shape("an event starts with its tag"))?;
    let field = |i: usize, name: &str| fields.get(i).ok_or_else(|| shape(format!("{tag} without {name}")));
    match tag {
        "BlockStored" => {
            let hashes = hashes(field(1, "block_hashes")?)?;
            let parent = match field(2, "parent_block_hash")? {
                rmpv::Value::Nil => None,
                value => Some(hash(value)?),
            };
            let tokens = field(3, "token_ids")?
                .as_array()
                .ok_or_else(|| shape("token_ids must be an array"))?
                .iter()
                .map(|t| t.as_u64().and_then(|t| u32::try_from(t).ok()))
                .collect::<Option<Vec<u32>>>()
                .ok_or_else(|| shape("token ids must be 32-bit unsigned integers"))?;
            let block_size = field(4, "block_size")?
                .as_u64()
                .and_then(|b| usize::try_from(b).ok())
                .filter(|&b| b > 0)
                .ok_or_else(|| shape("block_size must be a positive integer"))?;
            let lora_id = match fields.get(5) {
                None | Some(rmpv::Value::Nil) => None,
                Some(v) => Some(
                    v.as_u64()
                        .and_then(|id| u32::try_from(id).ok())
                        .ok_or_else(|| shape("lora_id must be an integer"))?,
                ),
            };
            if tokens.len() != hashes.len() * block_size {
                return Err(shape(format!(
                    "{} token ids for {} blocks of {block_size}",
                    tokens.len(),
                    hashes.len()
                )));
            }
            Ok(Some(Event::Stored {
                hashes,
                parent,
                tokens,
                block_size,
                lora_id,
            }))
        }
        "BlockRemoved" => Ok(Some(Event::Removed {
            hashes: hashes(field(1, "block_hashes")?)?,
        })),
        "AllBlocksCleared" => Ok(Some(Event::Cleared)),
        _ => Ok(None),
    }
}

fn hashes(value: &rmpv::Value) -> Result<Vec<u64>, DecodeError> {
    value
        .as_array()
        .ok_or_else(|| shape("block_hashes must be an array"))?
        .iter()
        .map(hash)
        .collect()
}

/// An engine block hash: an integer (any sign, as its 64 bits) or bytes (newer vLLM; folded to 64 bits).
fn hash(value: &rmpv::Value) -> Result<u64, DecodeError> {
    match value {
        rmpv::Value::Integer(i) => i
            .as_u64()
            .or_else(|| i.as_i64().map(|v| v as u64))
            .ok_or_else(|| shape("block hash out of range")),
        rmpv::Value::Binary(bytes) => Ok(xxh3_64(bytes)),
        _ => Err(shape("a block hash must be an integer or bytes")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// The simulator's encoder is an independent writer of the same format: what it encodes must decode.
    #[test]
    fn the_simulators_batches_decode() {
        use vllm_sim::kv_events::{KvEvent, encode_batch};
        let events = [
            KvEvent::BlockStored {
                block_hashes: vec![u64::MAX, 2],
                parent: Some(9),
                token_ids: (0..32).collect(),
                block_size: 16,
                lora_id: Some(1),
            },
            KvEvent::BlockRemoved { block_hashes: vec![7] },
            KvEvent::AllBlocksCleared,
        ];
        let mut payload = Vec::new();
        encode_batch(12.5, &events, Some(0), &mut payload);
        assert_eq!(
            decode(&payload),
            Ok(Batch {
                ts: 12.5,
                events: vec![
                    Event::Stored {
                        hashes: vec![u64::MAX, 2],
                        parent: Some(9),
                        tokens: (0..32).collect(),
                        block_size: 16,
                        lora_id: Some(1),
                    },
                    Event::Removed { hashes: vec![7] },
                    Event::Cleared,
                ],
                data_parallel_rank: Some(0),
            })
        );
    }

    #[test]
    fn garbage_and_wrong_shapes_are_refused_with_a_reason() {
        // Cut inside the timestamp.
        assert!(matches!(decode(&[0x92, 0xcb, 0x3f]), Err(DecodeError::Msgpack(_))));
        assert_eq!(decode(&[0x01]), Err(shape("a batch must be an array")));
        assert_eq!(decode(&[0x90]), Err(shape("a batch starts with its timestamp")));
        // [1.0, [["BlockStored", [1], nil, [1, 2], 4, nil]]]: 2 tokens for a block of 4.
        let payload = [
            0x92, 0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0x91, 0x96, 0xab, b'B', b'l', b'o', b'c', b'k', b'S', b't', b'o',
            b'r', b'e', b'd', 0x91, 0x01, 0xc0, 0x92, 0x01, 0x02, 0x04, 0xc0,
        ];
        assert_eq!(decode(&payload), Err(shape("event 0: 2 token ids for 1 blocks of 4")));
        // An unknown tag is skipped, not an error: [1.0, [["BlockMoved"]]].
        let payload = [
            0x92, 0xcb, 0x3f, 0xf0, 0, 0, 0, 0, 0, 0, 0x91, 0x91, 0xaa, b'B', b'l', b'o', b'c', b'k', b'M', b'o', b'v',
            b'e', b'd',
        ];
        assert_eq!(decode(&payload).map(|b| b.events), Ok(vec![]));
        assert_eq!(
            decode(&vec![0; MAX_PAYLOAD_BYTES + 1]),
            Err(DecodeError::TooLarge(MAX_PAYLOAD_BYTES + 1))
        );
    }
}
