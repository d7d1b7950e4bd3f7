//! The simulator's KV events reach the gateway's precise index end to end: two vllm-sim pods publish over ZeroMQ
//! (`--kv-events-config`), the gateway follows both (`--kv-events-port`), and after a request the index holds
//! exactly the prompt's full blocks on the pod that served it — what the engine holds, not what was sent. With a
//! tokenizer (the project's synthetic one, loaded from files by both sides), requests are scored on those blocks.

mod common;

use std::{net::IpAddr, time::Duration};

use common::*;
use gateway::kv_events::stream::Mode;
use scheduler::{EndpointId, PrefixMode, prefix::precise::block_keys};
use vllm_sim::{
    ReplicaConfig,
    kv_events::KvEventsConfig,
    spawn_replica,
    tokenize::{Prompts, tokenize},
};

/// Two simulated pods publishing KV events on shared ports, and a gateway following them; with `tokenizer`, both
/// the pods and the gateway tokenize with it.
async fn start(
    block: u8,
    tokenizer: Option<&std::path::Path>,
) -> (gateway::Gateway, Vec<vllm_sim::ReplicaHandle>, Vec<EndpointId>) {
    let (port, listeners) = bind_pods(block, 2).await;
    // One port for every pod's events and one for replay, as a pool's pods share them; free on the first address,
    // and each pod binds its own address.
    let free = |ip: IpAddr| {
        std::net::TcpListener::bind((ip, 0))
            .unwrap()
            .local_addr()
            .unwrap()
            .port()
    };
    let first_ip = listeners[0].local_addr().unwrap().ip();
    let (kv_port, replay_port) = (free(first_ip), free(first_ip));
    let config = KvEventsConfig::parse(&format!(
        r#"{{"enable_kv_cache_events": true, "publisher": "zmq", "endpoint": "tcp://*:{kv_port}",
            "replay_endpoint": "tcp://*:{replay_port}", "topic": "kv"}}"#
    ))
    .unwrap();
    let prompts = tokenizer.map_or(Prompts::StandIn, |path| Prompts::load(path).unwrap());
    let mut sims = Vec::new();
    for listener in listeners {
        let mut replica = ReplicaConfig::zero_delay();
        replica.engine.prefix_caching = true;
        replica.kv_events = Some(config.clone());
        replica.prompts = prompts.clone();
        sims.push(spawn_replica(replica, listener).await.unwrap());
    }
    let ips: Vec<IpAddr> = sims.iter().map(|s| s.addr().ip()).collect();
    let models = [model_yaml("qwq", "qwq", "Critical", &[("qwq-32b", 100)])];
    let dir = pool_dir(&format!("kv-events-sim-{block}"), port, &ips, &models);
    let (kv, replay) = (kv_port.to_string(), replay_port.to_string());
    let mut args = vec![
        "--kv-events-port".to_owned(),
        kv,
        "--kv-events-replay-port".into(),
        replay,
        "--kv-events-topic".into(),
        "kv".into(),
    ];
    if let Some(path) = tokenizer {
        args.extend(["--tokenizer".to_owned(), path.display().to_string()]);
    }
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let gw = start_gateway(&dir, &args).await;
    let ids: Vec<EndpointId> = sims.iter().map(|s| EndpointId::new(s.addr().to_string())).collect();
    wait_scraped(&gw, &ids).await;
    (gw, sims, ids)
}

/// Sends distinct prompts until both pods have served one and both streams are complete (a batch published before
/// the subscription reached its pod is replayed from the pod's buffer, so the streams end up whole either way).
/// Returns each prompt with the pod that served it.
async fn warm_up(gw: &gateway::Gateway, ids: &[EndpointId]) -> Vec<(EndpointId, String)> {
    let state = gw.kv_events.clone().unwrap();
    let base = format!("http://{}", gw.proxy_addr.unwrap());
    let mut changes = state.subscribe();
    let mut served: Vec<(EndpointId, String)> = Vec::new();
    for i in 0..200 {
        let complete = ids
            .iter()
            .all(|id| state.mode(id) == Mode::Precise && served.iter().any(|(p, _)| p == id));
        if complete {
            return served;
        }
        let prompt = format!(
            "request {i}: {}",
            "the quick brown fox jumps over the lazy dog ".repeat(12)
        );
        let body = serde_json::json!({"model": "qwq", "prompt": prompt, "max_tokens": 2});
        let reply = client().post(&format!("{base}/v1/completions"), body.to_string()).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let pod = reply.headers["x-gateway-destination-endpoint-served"].to_str().unwrap();
        served.push((EndpointId::new(pod), prompt));
        let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
    }
    panic!(
        "both pods never became precise: {:?}",
        ids.iter().map(|id| state.mode(id)).collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_holds_what_each_engine_holds() {
    let (gw, sims, ids) = start(111, None).await;
    let state = gw.kv_events.clone().unwrap();
    let mut changes = state.subscribe();
    let served = warm_up(&gw, &ids).await;

    // The last prompt each pod served is held there, every full block of it, and nowhere else.
    for id in &ids {
        let (_, prompt) = served.iter().rev().find(|(p, _)| p == id).unwrap();
        let keys = block_keys(&tokenize(prompt), vllm_sim::BLOCK_SIZE, None, 1024);
        test_support::until(
            &mut changes,
            Duration::from_secs(10),
            "the served prompt's blocks",
            || state.index.lock().unwrap().longest_prefixes(&keys) == [(id.clone(), keys.len() as u32)],
        )
        .await;
    }
    gw.stop().await;
    for sim in sims {
        sim.shutdown().await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn with_a_tokenizer_requests_are_scored_on_the_engines_blocks() {
    let dir = temp_dir("kv-events-tokenizer");
    let tokenizer_path = tokenizer::synthetic::write_dir(&dir).unwrap();
    let tokenizer = tokenizer::Tokenizer::from_file(&tokenizer_path).unwrap();
    let (gw, sims, ids) = start(112, Some(&tokenizer_path)).await;
    let state = gw.kv_events.clone().unwrap();
    let mut changes = state.subscribe();
    warm_up(&gw, &ids).await;
    let base = format!("http://{}", gw.proxy_addr.unwrap());

    // A long system prompt, then a question: served by one pod, whose engine then reports its blocks.
    let system = "you are the ops bot for our gpu fleet ".repeat(40);
    let chat = |question: &str| {
        serde_json::json!({"model": "qwq", "max_tokens": 2, "messages": [
            {"role": "system", "content": system},
            {"role": "user", "content": question},
        ]})
        .to_string()
    };
    let reply = client()
        .post(&format!("{base}/v1/chat/completions"), chat("why is pod a slow"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let first = EndpointId::new(reply.headers["x-gateway-destination-endpoint-served"].to_str().unwrap());
    let messages = [
        tokenizer::ChatMessage {
            role: "system".into(),
            content: system.clone(),
        },
        tokenizer::ChatMessage {
            role: "user".into(),
            content: "why is pod a slow".into(),
        },
    ];
    let tokens = tokenizer.encode_chat(&messages).unwrap();
    let keys = block_keys(&tokens, vllm_sim::BLOCK_SIZE, None, 1024);
    test_support::until(
        &mut changes,
        Duration::from_secs(10),
        "the conversation's blocks",
        || {
            state.precise_prefixes(&keys, &ids)
                == ids
                    .iter()
                    .map(|id| Some(if *id == first { keys.len() as u32 } else { 0 }))
                    .collect::<Vec<_>>()
        },
    )
    .await;

    // The same system prompt with another question: scored precisely on both pods, and the pod holding the
    // system prompt's blocks holds all of them (the question's own blocks differ).
    let reply = client()
        .post(&format!("{base}/v1/chat/completions"), chat("and pod b"))
        .await;
    assert_eq!(reply.status, 200, "{}", reply.body);
    let record = gw.director.recorder.decisions.latest(1).remove(0);
    let system_blocks = {
        let system_only = tokenizer
            .encode_plain(&format!("<|im_start|>system\n{system}<|im_end|>\n"))
            .unwrap();
        (system_only.len() / vllm_sim::BLOCK_SIZE) as u32
    };
    for candidate in &record.candidates {
        assert_eq!(candidate.prefix_mode, PrefixMode::Precise, "{record:?}");
        if candidate.endpoint == first {
            assert!(candidate.prefix_match_blocks >= system_blocks, "{record:?}");
        } else {
            assert_eq!(candidate.prefix_match_blocks, 0, "{record:?}");
        }
    }
    assert_eq!(record.endpoint.as_ref(), Some(&first), "{record:?}");
    gw.stop().await;
    for sim in sims {
        sim.shutdown().await;
    }
}
