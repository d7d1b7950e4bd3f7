//! The gateway's KV-event decoder against payloads written by an independent encoder: msgspec structs from vLLM's
//! own definitions (`tests/python/kv_events_encode.py`), two vLLM generations, integer and bytes block hashes.
//!
//! The interpreter is `$SWITCHYARD_PYTHON`, else the venv `cargo xtask ci` installs at `target/pyenv-extproc`.
//! Without it the test fails with the command that creates it: it never passes by skipping.

use std::path::Path;

use gateway::kv_events::decode::{Event, decode};
use serde_json::Value;

/// A hash as the encoder states it: an integer, or `bytes:<hex>` folded as the decoder folds bytes.
fn expected_hash(value: &Value) -> u64 {
    match value {
        Value::Number(n) => n.as_u64().expect("a u64 hash"),
        Value::String(s) => {
            let hex = s.strip_prefix("bytes:").expect("bytes:<hex>");
            let bytes: Vec<u8> = (0..hex.len())
                .step_by(2)
                .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
                .collect();
            xxhash_rust::xxh3::xxh3_64(&bytes)
        }
        other => panic!("unexpected hash {other}"),
    }
}

fn expected_event(value: &Value) -> Event {
    let hashes = |key: &str| value[key].as_array().unwrap().iter().map(expected_hash).collect();
    if value.get("stored").is_some() {
        Event::Stored {
            hashes: hashes("stored"),
            parent: value["parent"].as_u64(),
            tokens: value["tokens"]
                .as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect(),
            block_size: value["block_size"].as_u64().unwrap() as usize,
            lora_id: value["lora"].as_u64().map(|l| l as u32),
        }
    } else if value.get("removed").is_some() {
        Event::Removed {
            hashes: hashes("removed"),
        }
    } else {
        Event::Cleared
    }
}

#[test]
fn payloads_from_vllms_own_structs_decode_as_they_say() {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("tests/python/kv_events_encode.py");
    let output = std::process::Command::new(test_support::python())
        .env("PYTHONPATH", test_support::python_modules())
        .arg(&script)
        .output()
        .expect("python runs");
    let stdout = String::from_utf8_lossy(&output.stdout);
    assert!(
        output.status.success(),
        "encoder failed:\n{stdout}\n{}",
        String::from_utf8_lossy(&output.stderr)
    );
    let mut checked = 0;
    for line in stdout.lines() {
        let (hex, expect) = line.split_once('\t').expect("hex<TAB>json");
        let payload: Vec<u8> = (0..hex.len())
            .step_by(2)
            .map(|i| u8::from_str_radix(&hex[i..i + 2], 16).expect("hex"))
            .collect();
        let expect: Value = serde_json::from_str(expect).expect("json");
        let batch = decode(&payload).unwrap_or_else(|e| panic!("{e} for {expect}"));
        assert_eq!(batch.ts, expect["ts"].as_f64().unwrap());
        assert_eq!(batch.data_parallel_rank, expect["rank"].as_i64());
        let events: Vec<Event> = expect["events"]
            .as_array()
            .unwrap()
            .iter()
            .map(expected_event)
            .collect();
        assert_eq!(batch.events, events, "{expect}");
        checked += 1;
    }
    assert_eq!(checked, 3, "{stdout}");
}
