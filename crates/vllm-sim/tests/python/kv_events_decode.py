"""Independent judge of the simulator's KV-event wire format: pyzmq sockets and msgspec structs written from vLLM's
own definitions (vllm/distributed/kv_events.py, the array-like tagged form), not from our Rust.

Subscribes and reads live batches (the harness keeps sending requests until this exits) until it has seen stores
and evictions, checks every event against vLLM's invariants, asks the replay socket for everything since the first
live sequence number and checks it returns the very same payloads, and prints a JSON summary on the last line.
"""

import argparse
import json
import sys
import time

import msgspec
import zmq
from vllm_kv_events import AllBlocksCleared, BlockRemoved, BlockStored, KVEventBatch


END_SEQ = (-1).to_bytes(8, "big", signed=True)


def fail(message):
    print(f"FAIL: {message}", flush=True)
    sys.exit(1)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("--endpoint", required=True)
    parser.add_argument("--replay", required=True)
    parser.add_argument("--topic", default="")
    parser.add_argument("--deadline", type=float, default=60.0)
    args = parser.parse_args()

    decoder = msgspec.msgpack.Decoder(type=KVEventBatch)
    context = zmq.Context.instance()
    sub = context.socket(zmq.SUB)
    sub.connect(args.endpoint)
    sub.setsockopt_string(zmq.SUBSCRIBE, args.topic)

    live = {}
    stored = removed = 0
    resident = set()
    # Blocks evicted and not stored again since: evicting one twice would be a lie. (A block stored before this
    # subscriber joined may be evicted without a store we saw.)
    evicted = set()
    deadline = time.monotonic() + args.deadline
    while not (stored and removed):
        if time.monotonic() > deadline:
            fail(f"no stores and evictions within {args.deadline}s (stored {stored}, removed {removed})")
        if not sub.poll(100):
            continue
        topic, seq_bytes, payload = sub.recv_multipart()
        if topic.decode() != args.topic:
            fail(f"topic {topic!r}")
        if len(seq_bytes) != 8:
            fail(f"sequence frame of {len(seq_bytes)} bytes")
        seq = int.from_bytes(seq_bytes, "big")
        batch = decoder.decode(payload)
        if batch.data_parallel_rank != 0:
            fail(f"data_parallel_rank {batch.data_parallel_rank}")
        if abs(batch.ts - time.time()) > 60:
            fail(f"timestamp {batch.ts} is not now")
        live[seq] = payload
        for event in batch.events:
            if isinstance(event, BlockStored):
                if event.block_size != 16 or len(event.token_ids) != 16 * len(event.block_hashes):
                    fail(f"{len(event.token_ids)} tokens for {len(event.block_hashes)} blocks of {event.block_size}")
                if event.medium != "GPU":
                    fail(f"medium {event.medium!r}")
                if event.parent_block_hash is not None and event.parent_block_hash == event.block_hashes[0]:
                    fail("a block is its own parent")
                stored += len(event.block_hashes)
                resident.update(event.block_hashes)
                evicted.difference_update(event.block_hashes)
            elif isinstance(event, BlockRemoved):
                for h in event.block_hashes:
                    if h in evicted:
                        fail(f"block {h} evicted twice without being stored in between")
                    resident.discard(h)
                    evicted.add(h)
                removed += len(event.block_hashes)

    seqs = sorted(live)
    if seqs != list(range(seqs[0], seqs[0] + len(seqs))):
        fail(f"live sequence numbers have gaps: {seqs[:10]}…")

    replayed = 0
    # A REQ socket accepts one reply and the publisher streams several, so ask on a DEALER with REQ's empty
    # delimiter frame: the ROUTER sees exactly what a REQ client sends.
    dealer = context.socket(zmq.DEALER)
    dealer.connect(args.replay)
    dealer.send_multipart([b"", seqs[0].to_bytes(8, "big")])
    while True:
        if not dealer.poll(int(args.deadline * 1000)):
            fail("replay never ended")
        frames = dealer.recv_multipart()
        if len(frames) != 3 or frames[0] != b"":
            fail(f"replay answer of {len(frames)} frames")
        _, seq_bytes, payload = frames
        if seq_bytes == END_SEQ:
            if payload != b"":
                fail("end marker with a payload")
            break
        seq = int.from_bytes(seq_bytes, "big")
        decoder.decode(payload)
        if seq in live and live[seq] != payload:
            fail(f"replayed batch {seq} differs from the live one")
        replayed += seq in live
    if replayed != len(live):
        fail(f"replay returned {replayed} of the {len(live)} live batches")

    print(json.dumps({"batches": len(live), "stored": stored, "removed": removed, "replayed": replayed}), flush=True)


if __name__ == "__main__":
    main()
