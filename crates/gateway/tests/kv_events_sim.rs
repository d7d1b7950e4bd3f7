//! The simulator's KV events reach the gateway's precise index end to end: two vllm-sim pods publish over ZeroMQ
//! (`--kv-events-config`), the gateway follows both (`--kv-events-port`), and after a request the index holds
//! exactly the prompt's full blocks on the pod that served it — what the engine holds, not what was sent.

mod common;

use std::{net::IpAddr, time::Duration};

use common::*;
use gateway::kv_events::stream::Mode;
use scheduler::{EndpointId, prefix::precise::block_keys};
use vllm_sim::{ReplicaConfig, kv_events::KvEventsConfig, spawn_replica, tokenize::tokenize};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_index_holds_what_each_engine_holds() {
    let (port, listeners) = bind_pods(111, 2).await;
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
    let mut sims = Vec::new();
    for listener in listeners {
        let mut replica = ReplicaConfig::zero_delay();
        replica.engine.prefix_caching = true;
        replica.kv_events = Some(config.clone());
        sims.push(spawn_replica(replica, listener).await.unwrap());
    }
    let dir = temp_dir("kv-events-sim");
    let ips: Vec<IpAddr> = sims.iter().map(|s| s.addr().ip()).collect();
    std::fs::write(dir.join("pool.yaml"), pool_yaml(port)).unwrap();
    std::fs::write(
        dir.join("model.yaml"),
        model_yaml("qwq", "qwq", "Critical", &[("qwq-32b", 100)]),
    )
    .unwrap();
    std::fs::write(dir.join("pods.yaml"), pods_yaml(&ips)).unwrap();
    let (kv, replay) = (kv_port.to_string(), replay_port.to_string());
    let gw = start_gateway(
        &dir,
        &[
            "--kv-events-port",
            &kv,
            "--kv-events-replay-port",
            &replay,
            "--kv-events-topic",
            "kv",
        ],
    )
    .await;
    let ids: Vec<EndpointId> = sims.iter().map(|s| EndpointId::new(s.addr().to_string())).collect();
    wait_scraped(&gw, &ids).await;
    let state = gw.kv_events.clone().unwrap();
    let base = format!("http://{}", gw.proxy_addr.unwrap());

    // Distinct prompts until both pods have served one and both streams are complete. A batch published before the
    // subscription reached its pod is replayed from the pod's buffer, so the streams end up whole either way.
    let mut changes = state.subscribe();
    let mut served: Vec<(EndpointId, Vec<u32>)> = Vec::new();
    for i in 0..200 {
        let complete = ids
            .iter()
            .all(|id| state.mode(id) == Mode::Precise && served.iter().any(|(p, _)| p == id));
        if complete {
            break;
        }
        assert!(
            i < 199,
            "both pods never became precise: {:?}",
            ids.iter().map(|id| state.mode(id)).collect::<Vec<_>>()
        );
        let prompt = format!(
            "request {i}: {}",
            "the quick brown fox jumps over the lazy dog ".repeat(12)
        );
        let body = serde_json::json!({"model": "qwq", "prompt": prompt, "max_tokens": 2});
        let reply = client().post(&format!("{base}/v1/completions"), body.to_string()).await;
        assert_eq!(reply.status, 200, "{}", reply.body);
        let pod = reply.headers["x-gateway-destination-endpoint-served"].to_str().unwrap();
        served.push((EndpointId::new(pod), tokenize(&prompt)));
        let _ = tokio::time::timeout(Duration::from_millis(100), changes.changed()).await;
    }

    // The last prompt each pod served is held there, every full block of it, and nowhere else.
    for id in &ids {
        let (_, tokens) = served.iter().rev().find(|(p, _)| p == id).unwrap();
        let keys = block_keys(tokens, vllm_sim::BLOCK_SIZE, None, 1024);
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
