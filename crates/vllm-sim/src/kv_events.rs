//! vLLM's KV-cache events: what the simulated prefix cache stores and evicts, encoded byte for byte as vLLM's
//! `ZmqEventPublisher` sends them (`vllm/distributed/kv_events.py`, the array-like msgspec form).
//!
//! Wire form of one message (ZMQ multipart): `[topic, sequence as 8-byte big-endian, payload]`. The payload is a
//! msgpack `KVEventBatch` array `[ts, [event, …], data_parallel_rank]`; each event is a tagged array whose first
//! element is its class name: `["BlockStored", block_hashes, parent_block_hash, token_ids, block_size, lora_id,
//! medium, lora_name]`, `["BlockRemoved", block_hashes, medium]`, `["AllBlocksCleared"]`. Block hashes are the
//! engine's 64-bit chained hashes (vLLM's `ExternalBlockHash` int form).

use serde::Deserialize;

/// The storage tier vLLM names for blocks in GPU memory.
pub const MEDIUM_GPU: &str = "GPU";

/// One change of the prefix cache.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum KvEvent {
    /// Full blocks became resident and findable by hash; `parent` is the hash of the block before the first.
    BlockStored {
        block_hashes: Vec<u64>,
        parent: Option<u64>,
        /// The tokens of every stored block, `block_size` per block.
        token_ids: Vec<u32>,
        block_size: u32,
        lora_id: Option<u32>,
    },
    /// Blocks were evicted: their hashes no longer find them.
    BlockRemoved { block_hashes: Vec<u64> },
    /// The whole prefix cache was dropped.
    AllBlocksCleared,
}

/// The `--kv-events-config` JSON, with vLLM's field names and defaults (`vllm/config/kv_events.py`).
#[derive(Clone, Debug, PartialEq, Eq, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KvEventsConfig {
    #[serde(default)]
    pub enable_kv_cache_events: bool,
    /// `"zmq"` publishes; `"null"` (vLLM's default) collects nothing.
    #[serde(default = "null_publisher")]
    pub publisher: String,
    /// Where the PUB socket binds (`tcp://*:5557`: each replica binds its own address) or connects to.
    #[serde(default = "default_endpoint")]
    pub endpoint: String,
    /// The ROUTER socket answering replay requests, if any (e.g. `tcp://*:5558`).
    #[serde(default)]
    pub replay_endpoint: Option<String>,
    /// Past batches kept for replay.
    #[serde(default = "default_buffer_steps")]
    pub buffer_steps: usize,
    /// High-water mark of the PUB socket (accepted for compatibility; the queue below bounds memory here).
    #[serde(default = "default_hwm")]
    pub hwm: usize,
    /// Batches waiting to be published; beyond it a batch is dropped and its sequence number skipped, so
    /// subscribers see the gap.
    #[serde(default = "default_max_queue_size")]
    pub max_queue_size: usize,
    #[serde(default)]
    pub topic: String,
}

fn null_publisher() -> String {
    "null".into()
}
fn default_endpoint() -> String {
    "tcp://*:5557".into()
}
fn default_buffer_steps() -> usize {
    10_000
}
fn default_hwm() -> usize {
    100_000
}
fn default_max_queue_size() -> usize {
    100_000
}

/// Why a `--kv-events-config` was refused.
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum KvEventsConfigError {
    #[error("--kv-events-config is not valid JSON for vLLM's KVEventsConfig: {0}")]
    Json(String),
    #[error("--kv-events-config: publisher {0:?} is not supported (use \"zmq\" or \"null\")")]
    Publisher(String),
    #[error("--kv-events-config: endpoint {0:?} must be tcp://host:port")]
    Endpoint(String),
    #[error("--kv-events-config: buffer_steps and max_queue_size must be at least 1")]
    Bounds,
}

impl KvEventsConfig {
    /// Parses and checks the flag's JSON.
    pub fn parse(json: &str) -> Result<KvEventsConfig, KvEventsConfigError> {
        let config: KvEventsConfig =
            serde_json::from_str(json).map_err(|e| KvEventsConfigError::Json(e.to_string()))?;
        if !matches!(config.publisher.as_str(), "zmq" | "null") {
            return Err(KvEventsConfigError::Publisher(config.publisher));
        }
        for endpoint in std::iter::once(&config.endpoint).chain(&config.replay_endpoint) {
            let valid = endpoint
                .strip_prefix("tcp://")
                .and_then(|rest| rest.rsplit_once(':'))
                .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
            if !valid {
                return Err(KvEventsConfigError::Endpoint(endpoint.clone()));
            }
        }
        if config.buffer_steps == 0 || config.max_queue_size == 0 {
            return Err(KvEventsConfigError::Bounds);
        }
        Ok(config)
    }

    /// Whether the engine should record events and a publisher send them.
    pub fn publishes(&self) -> bool {
        self.enable_kv_cache_events && self.publisher == "zmq"
    }
}

/// Encodes one `KVEventBatch` payload.
pub fn encode_batch(ts: f64, events: &[KvEvent], data_parallel_rank: Option<u32>, out: &mut Vec<u8>) {
    // Writing msgpack into a Vec cannot fail; the results are ignored for that reason only.
    let len = if data_parallel_rank.is_some() { 3 } else { 2 };
    let _ = rmp::encode::write_array_len(out, len);
    let _ = rmp::encode::write_f64(out, ts);
    let _ = rmp::encode::write_array_len(out, events.len() as u32);
    for event in events {
        encode_event(event, out);
    }
    if let Some(rank) = data_parallel_rank {
        let _ = rmp::encode::write_uint(out, u64::from(rank));
    }
}

fn encode_event(event: &KvEvent, out: &mut Vec<u8>) {
    match event {
        KvEvent::BlockStored {
            block_hashes,
            parent,
            token_ids,
            block_size,
            lora_id,
        } => {
            let _ = rmp::encode::write_array_len(out, 8);
            let _ = rmp::encode::write_str(out, "BlockStored");
            write_hashes(block_hashes, out);
            match parent {
                Some(h) => {
                    let _ = rmp::encode::write_uint(out, *h);
                }
                None => {
                    let _ = rmp::encode::write_nil(out);
                }
            }
            let _ = rmp::encode::write_array_len(out, token_ids.len() as u32);
            for &t in token_ids {
                let _ = rmp::encode::write_uint(out, u64::from(t));
            }
            let _ = rmp::encode::write_uint(out, u64::from(*block_size));
            match lora_id {
                Some(id) => {
                    let _ = rmp::encode::write_uint(out, u64::from(*id));
                }
                None => {
                    let _ = rmp::encode::write_nil(out);
                }
            }
            let _ = rmp::encode::write_str(out, MEDIUM_GPU);
            // lora_name: the simulator knows adapters by id only.
            let _ = rmp::encode::write_nil(out);
        }
        KvEvent::BlockRemoved { block_hashes } => {
            let _ = rmp::encode::write_array_len(out, 3);
            let _ = rmp::encode::write_str(out, "BlockRemoved");
            write_hashes(block_hashes, out);
            let _ = rmp::encode::write_str(out, MEDIUM_GPU);
        }
        KvEvent::AllBlocksCleared => {
            let _ = rmp::encode::write_array_len(out, 1);
            let _ = rmp::encode::write_str(out, "AllBlocksCleared");
        }
    }
}

fn write_hashes(hashes: &[u64], out: &mut Vec<u8>) {
    let _ = rmp::encode::write_array_len(out, hashes.len() as u32);
    for &h in hashes {
        let _ = rmp::encode::write_uint(out, h);
    }
}

/// Appends `event` to `events`, merging it into the last one when it continues it (the next block of the same
/// chain, or another eviction), so one step's events stay few.
pub(crate) fn push_merged(events: &mut Vec<KvEvent>, event: KvEvent) {
    match (events.last_mut(), event) {
        (
            Some(KvEvent::BlockStored {
                block_hashes,
                token_ids,
                lora_id,
                ..
            }),
            KvEvent::BlockStored {
                block_hashes: new_hashes,
                parent: Some(parent),
                token_ids: new_tokens,
                lora_id: new_lora,
                ..
            },
        ) if block_hashes.last() == Some(&parent) && *lora_id == new_lora => {
            block_hashes.extend(new_hashes);
            token_ids.extend(new_tokens);
        }
        (Some(KvEvent::BlockRemoved { block_hashes }), KvEvent::BlockRemoved { block_hashes: new }) => {
            block_hashes.extend(new);
        }
        (_, event) => events.push(event),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn stored(hash: u64, parent: Option<u64>) -> KvEvent {
        KvEvent::BlockStored {
            block_hashes: vec![hash],
            parent,
            token_ids: vec![hash as u32; 2],
            block_size: 2,
            lora_id: None,
        }
    }

    #[test]
    fn a_chain_of_stores_and_a_run_of_evictions_merge() {
        let mut events = Vec::new();
        push_merged(&mut events, stored(1, None));
        push_merged(&mut events, stored(2, Some(1)));
        // Another chain: a new event.
        push_merged(&mut events, stored(9, Some(7)));
        push_merged(&mut events, KvEvent::BlockRemoved { block_hashes: vec![5] });
        push_merged(&mut events, KvEvent::BlockRemoved { block_hashes: vec![6] });
        assert_eq!(
            events,
            [
                KvEvent::BlockStored {
                    block_hashes: vec![1, 2],
                    parent: None,
                    token_ids: vec![1, 1, 2, 2],
                    block_size: 2,
                    lora_id: None,
                },
                stored(9, Some(7)),
                KvEvent::BlockRemoved {
                    block_hashes: vec![5, 6]
                },
            ]
        );
    }

    #[test]
    fn a_batch_encodes_as_vllms_array_like_tagged_structs() {
        let mut out = Vec::new();
        encode_batch(1.5, &[stored(3, None), KvEvent::AllBlocksCleared], Some(0), &mut out);
        let expected: &[u8] = &[
            0x93, // [ts, events, rank]
            0xcb, 0x3f, 0xf8, 0, 0, 0, 0, 0, 0,    // 1.5 as float64
            0x92, // two events
            0x98, // BlockStored has 8 elements with its tag
            0xab, b'B', b'l', b'o', b'c', b'k', b'S', b't', b'o', b'r', b'e', b'd', 0x91, 0x03, // [3]
            0xc0, // parent: nil
            0x92, 0x03, 0x03, // token ids
            0x02, // block size
            0xc0, // lora_id
            0xa3, b'G', b'P', b'U', // medium
            0xc0, // lora_name
            0x91, 0xb0, b'A', b'l', b'l', b'B', b'l', b'o', b'c', b'k', b's', b'C', b'l', b'e', b'a', b'r', b'e', b'd',
            0x00, // data_parallel_rank
        ];
        assert_eq!(out, expected);
    }

    #[test]
    fn the_config_flag_takes_vllms_json_and_refuses_mistakes() {
        let config = KvEventsConfig::parse(
            r#"{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:5557",
                "replay_endpoint": "tcp://*:5558", "topic": "kv", "buffer_steps": 50, "hwm": 10}"#,
        )
        .unwrap();
        assert!(config.publishes());
        assert_eq!(config.replay_endpoint.as_deref(), Some("tcp://*:5558"));
        assert_eq!((config.buffer_steps, config.hwm, config.topic.as_str()), (50, 10, "kv"));
        assert!(!KvEventsConfig::parse("{}").unwrap().publishes());
        assert!(matches!(
            KvEventsConfig::parse(r#"{"enable_kv_cache_event": true}"#),
            Err(KvEventsConfigError::Json(_))
        ));
        assert_eq!(
            KvEventsConfig::parse(r#"{"publisher": "nats"}"#),
            Err(KvEventsConfigError::Publisher("nats".into()))
        );
        assert_eq!(
            KvEventsConfig::parse(r#"{"endpoint": "ipc:///tmp/x"}"#),
            Err(KvEventsConfigError::Endpoint("ipc:///tmp/x".into()))
        );
        assert_eq!(
            KvEventsConfig::parse(r#"{"buffer_steps": 0}"#),
            Err(KvEventsConfigError::Bounds)
        );
    }
}
