//! The gateway following a pod's KV events over real ZeroMQ on loopback: a test publisher plays the engine (PUB
//! and a ROUTER replay socket, payloads from the simulator's encoder) and misbehaves on purpose — garbage, a lost
//! batch, a restart with a new sequence, silence — while the test watches the pod's mode and the precise index.

mod common;

use std::{
    net::IpAddr,
    sync::{Arc, Mutex},
    time::Duration,
};

use bytes::Bytes;
use common::*;
use gateway::kv_events::stream::{Cause, Mode};
use scheduler::{
    EndpointId,
    prefix::precise::{BlockKey, block_keys},
};
use vllm_sim::kv_events::{KvEvent, encode_batch};
use zeromq::{Socket as _, SocketRecv as _, SocketSend as _, ZmqMessage};

const WAIT: Duration = Duration::from_secs(10);

/// The engine's side: a PUB socket and a replay ROUTER serving everything published so far.
struct Engine {
    publisher: zeromq::PubSocket,
    sent: Arc<Mutex<Vec<(u64, Bytes)>>>,
    replay_port: u16,
    port: u16,
}

impl Engine {
    async fn bind(ip: IpAddr) -> Engine {
        let mut publisher = zeromq::PubSocket::new();
        let bound = publisher.bind(&format!("tcp://{ip}:0")).await.expect("PUB binds");
        let mut router = zeromq::RouterSocket::new();
        let replay = router.bind(&format!("tcp://{ip}:0")).await.expect("ROUTER binds");
        let sent: Arc<Mutex<Vec<(u64, Bytes)>>> = Arc::default();
        let served = sent.clone();
        tokio::spawn(async move {
            while let Ok(request) = router.recv().await {
                let frames = request.into_vec();
                let start = u64::from_be_bytes(frames[2].as_ref().try_into().unwrap());
                let batches: Vec<(u64, Bytes)> = served
                    .lock()
                    .unwrap()
                    .iter()
                    .filter(|(s, _)| *s >= start)
                    .cloned()
                    .collect();
                for (seq, payload) in batches {
                    let answer = vec![
                        frames[0].clone(),
                        Bytes::new(),
                        Bytes::copy_from_slice(&seq.to_be_bytes()),
                        payload,
                    ];
                    router.send(ZmqMessage::try_from(answer).unwrap()).await.unwrap();
                }
                let end = vec![
                    frames[0].clone(),
                    Bytes::new(),
                    Bytes::copy_from_slice(&(-1i64).to_be_bytes()),
                    Bytes::new(),
                ];
                router.send(ZmqMessage::try_from(end).unwrap()).await.unwrap();
            }
        });
        Engine {
            publisher,
            sent,
            port: port_of(&bound.to_string()),
            replay_port: port_of(&replay.to_string()),
        }
    }

    /// Publishes `payload` as batch `seq`; `live: false` only records it for replay (a batch the network lost).
    async fn send(&mut self, seq: u64, payload: Bytes, live: bool) {
        self.sent.lock().unwrap().push((seq, payload.clone()));
        if live {
            let frames = vec![
                Bytes::from_static(b"kv"),
                Bytes::copy_from_slice(&seq.to_be_bytes()),
                payload,
            ];
            self.publisher
                .send(ZmqMessage::try_from(frames).unwrap())
                .await
                .unwrap();
        }
    }

    /// Forgets what a previous engine published (a restart empties the replay buffer).
    fn restart(&mut self) {
        self.sent.lock().unwrap().clear();
    }
}

fn port_of(endpoint: &str) -> u16 {
    endpoint.rsplit(':').next().unwrap().parse().unwrap()
}

/// A batch storing `blocks` blocks of 16 tokens (block `i` all `base + i`) as one chain with engine hashes
/// `hash0 + i`.
fn stored(base: u32, blocks: u32, hash0: u64) -> (Bytes, Vec<BlockKey>) {
    let tokens: Vec<u32> = (0..blocks).flat_map(|i| [base + i; 16]).collect();
    let event = KvEvent::BlockStored {
        block_hashes: (0..u64::from(blocks)).map(|i| hash0 + i).collect(),
        parent: None,
        token_ids: tokens.clone(),
        block_size: 16,
        lora_id: None,
    };
    let mut payload = Vec::new();
    encode_batch(1.0, &[event], Some(0), &mut payload);
    (Bytes::from(payload), block_keys(&tokens, 16, None, 64))
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_pods_stream_is_followed_through_garbage_gaps_restarts_and_silence() {
    let (port, listeners) = bind_pods(110, 1).await;
    let mut pods = Vec::new();
    for listener in listeners {
        pods.push(serve_fake_pod(listener).await);
    }
    let ip = pods[0].addr.ip();
    let id = EndpointId::new(pods[0].addr.to_string());
    let mut engine = Engine::bind(ip).await;
    let dir = temp_dir("kv-events");
    std::fs::write(dir.join("pool.yaml"), pool_yaml(port)).unwrap();
    std::fs::write(
        dir.join("models.yaml"),
        model_yaml("qwq", "qwq", "Critical", &[("qwq-32b", 100)]),
    )
    .unwrap();
    std::fs::write(dir.join("pods.yaml"), pods_yaml(&[ip])).unwrap();
    let (kv_port, replay_port) = (engine.port.to_string(), engine.replay_port.to_string());
    let gw = start_gateway(
        &dir,
        &[
            "--kv-events-port",
            &kv_port,
            "--kv-events-replay-port",
            &replay_port,
            "--kv-events-topic",
            "kv",
            "--kv-events-silence",
            "400ms",
        ],
    )
    .await;
    let state = gw.kv_events.clone().expect("--kv-events-port enables the subscribers");
    let mut changes = state.subscribe();
    let depth = |keys: &[BlockKey]| {
        state
            .index
            .lock()
            .unwrap()
            .longest_prefixes(keys)
            .into_iter()
            .find(|(pod, _)| *pod == id)
            .map_or(0, |(_, depth)| depth)
    };
    assert_eq!(state.mode(&id), Mode::Approximate(Cause::NoEventsYet));

    // A fresh engine's first batch. The subscription reaches the publisher some time after the gateway starts and
    // ZeroMQ drops what is published before it, so the first batch is sent again until it lands (a repeated
    // sequence 0 reads as the same fresh engine).
    let (first, first_keys) = stored(100, 3, 1000);
    let mut attempts = 0;
    while depth(&first_keys) != 3 || state.mode(&id) != Mode::Precise {
        assert!(attempts < 200, "the gateway never received the first batch");
        engine.restart();
        engine.send(0, first.clone(), true).await;
        let _ = tokio::time::timeout(Duration::from_millis(50), changes.changed()).await;
        attempts += 1;
    }

    // A lost batch (2) is replayed when batch 3 shows the gap.
    let (second, second_keys) = stored(200, 2, 2000);
    engine.send(1, stored(300, 1, 3000).0, true).await;
    engine.send(2, second, false).await;
    engine.send(3, stored(400, 1, 4000).0, true).await;
    test_support::until(&mut changes, WAIT, "the replayed batch", || depth(&second_keys) == 2).await;
    assert_eq!(state.mode(&id), Mode::Precise);

    // Garbage: the batch is lost, the pod turns approximate, visibly.
    engine.send(4, Bytes::from_static(b"\x92not msgpack"), true).await;
    test_support::until(&mut changes, WAIT, "approximate after garbage", || {
        state.mode(&id) == Mode::Approximate(Cause::Lost { from: 4, to: 5 })
    })
    .await;
    let metrics = gw.director.recorder.metrics.encode();
    assert!(
        metrics.contains("switchyard_kv_events_mode{pod=\"default/vllm-0\"} 0"),
        "{metrics}"
    );
    assert!(
        metrics.contains("switchyard_kv_events_gaps_total{pod=\"default/vllm-0\"} 2"),
        "{metrics}"
    );

    // The engine restarts with a new sequence: its cache is empty, and the pod is precise again.
    engine.restart();
    let (fresh, fresh_keys) = stored(500, 1, 5000);
    engine.send(0, fresh, true).await;
    test_support::until(&mut changes, WAIT, "precise after the restart", || {
        state.mode(&id) == Mode::Precise && depth(&fresh_keys) == 1
    })
    .await;
    assert_eq!(depth(&first_keys), 0, "a restarted engine's old blocks are gone");

    // The stream goes silent (killed): approximate after the silence limit, precise again when it continues.
    test_support::until(&mut changes, WAIT, "approximate when silent", || {
        matches!(state.mode(&id), Mode::Approximate(Cause::Silent(_)))
    })
    .await;
    engine.send(1, stored(600, 1, 6000).0, true).await;
    test_support::until(&mut changes, WAIT, "precise when it continues", || {
        state.mode(&id) == Mode::Precise
    })
    .await;

    // The pod leaves the pool: its subscriber stops, its blocks and its mode gauge go.
    std::fs::write(dir.join("pods.yaml"), "").unwrap();
    test_support::until(&mut changes, WAIT, "the pod's state dropped", || {
        depth(&fresh_keys) == 0 && !gw.director.recorder.metrics.encode().contains("kv_events_mode{")
    })
    .await;
    assert_eq!(state.index.lock().unwrap().resident_blocks(), 0);
    gw.stop().await;
}
