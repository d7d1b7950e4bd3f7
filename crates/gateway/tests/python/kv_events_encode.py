"""Independent writer of vLLM's KV-event payloads, for the gateway's decoder: msgspec structs written from vLLM's
definitions (vllm/distributed/kv_events.py, array-like tagged form) in two generations — with `medium` and
`lora_name` (vLLM 0.11) and without (0.9) — and block hashes as integers and as bytes.

Prints one line per payload: the payload in hex, a tab, and what it holds as JSON, in the gateway's terms.
"""

import json

import msgspec
from vllm_kv_events import (
    AllBlocksCleared,
    BlockRemoved,
    BlockStored,
    EventBatch,
    OldBlockRemoved,
    OldBlockStored,
)


encoder = msgspec.msgpack.Encoder()


def emit(batch, expect):
    print(encoder.encode(batch).hex() + "\t" + json.dumps(expect), flush=True)


tokens = list(range(1000, 1032))
emit(
    EventBatch(
        ts=1700000000.25,
        events=[
            BlockStored([2**63 + 5, 17], None, tokens, 16, None, "GPU", None),
            BlockStored([99], 17, list(range(16)), 16, 3, "GPU", "sql-lora"),
            BlockRemoved([17], "GPU"),
            AllBlocksCleared(),
        ],
        data_parallel_rank=0,
    ),
    {
        "ts": 1700000000.25,
        "rank": 0,
        "events": [
            {"stored": [2**63 + 5, 17], "parent": None, "tokens": tokens, "block_size": 16, "lora": None},
            {"stored": [99], "parent": 17, "tokens": list(range(16)), "block_size": 16, "lora": 3},
            {"removed": [17]},
            {"cleared": True},
        ],
    },
)
emit(
    EventBatch(ts=5.5, events=[OldBlockStored([1], None, list(range(4)), 4, None), OldBlockRemoved([1])]),
    {
        "ts": 5.5,
        "rank": None,
        "events": [
            {"stored": [1], "parent": None, "tokens": list(range(4)), "block_size": 4, "lora": None},
            {"removed": [1]},
        ],
    },
)
# Newer vLLM names blocks by bytes (a sha256 digest): the gateway folds them to 64 bits, the same way every time.
digest = bytes(range(32))
emit(
    EventBatch(ts=7.0, events=[BlockStored([digest], None, list(range(16)), 16, None, "GPU", None), BlockRemoved([digest], "GPU")], data_parallel_rank=1),
    {
        "ts": 7.0,
        "rank": 1,
        "events": [
            {"stored": ["bytes:" + digest.hex()], "parent": None, "tokens": list(range(16)), "block_size": 16, "lora": None},
            {"removed": ["bytes:" + digest.hex()]},
        ],
    },
)
