//! End to end over loopback with the real simulator: three vllm-sim pods (QwQ-32B timing, 20× faster) behind the
//! proxy, mixed streaming and JSON traffic with shared prefixes.

mod common;

use std::{net::IpAddr, time::Duration};

use common::*;
use scheduler::EndpointId;
use vllm_sim::{ReplicaConfig, spawn_replica};

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn mixed_traffic_is_spread_over_every_simulated_pod() {
    let (port, listeners) = bind_pods(40, 3).await;
    let mut sims = Vec::new();
    for listener in listeners {
        let mut config = ReplicaConfig {
            time_scale: 20.0,
            ..ReplicaConfig::default()
        };
        config.engine.prefix_caching = true;
        sims.push(spawn_replica(config, listener).await.unwrap());
    }
    let ips: Vec<IpAddr> = sims.iter().map(|s| s.addr().ip()).collect();
    let models = [model_yaml("qwq", "qwq", "Critical", &[("qwq-32b", 100)])];
    let dir = pool_dir("e2e-sim", port, &ips, &models);
    let gw = start_gateway(&dir, &[]).await;
    let ids: Vec<EndpointId> = sims.iter().map(|s| EndpointId::new(s.addr().to_string())).collect();
    wait_scraped(&gw, &ids).await;
    let base = format!("http://{}", gw.proxy_addr.unwrap());

    let system = "You are a helpful assistant for platform engineers. ".repeat(40);
    let mut tasks = tokio::task::JoinSet::new();
    for i in 0..60 {
        let (base, system) = (base.clone(), system.clone());
        tasks.spawn(async move {
            let stream = i % 2 == 0;
            let prompt = if i % 3 == 0 {
                format!("{system} question {i}")
            } else {
                format!("unique question {i}")
            };
            let body = serde_json::json!({
                "model": "qwq", "prompt": prompt, "max_tokens": 12, "stream": stream,
                "stream_options": {"include_usage": true},
            });
            let reply = client().post(&format!("{base}/v1/completions"), body.to_string()).await;
            assert_eq!(reply.status, 200, "request {i}: {}", reply.body);
            if stream {
                assert!(reply.body.ends_with("data: [DONE]\n\n"), "request {i}: {}", reply.body);
            } else {
                let json: serde_json::Value = serde_json::from_str(&reply.body).unwrap();
                assert_eq!(json["usage"]["completion_tokens"], 12);
            }
            reply.headers["x-gateway-destination-endpoint-served"]
                .to_str()
                .unwrap()
                .to_owned()
        });
        // A closed loop of about a dozen clients, like the demo, rather than one burst.
        if tasks.len() >= 12 {
            tasks.join_next().await.unwrap().unwrap();
        }
    }
    while let Some(joined) = tasks.join_next().await {
        joined.unwrap();
    }
    for (sim, id) in sims.iter().zip(&ids) {
        assert!(sim.stats().requests_completed > 0, "pod {id} got no traffic");
    }
    let total: u64 = sims.iter().map(|s| s.stats().requests_completed).sum();
    assert_eq!(total, 60);

    let decisions = gw.director.recorder.decisions.latest(60);
    assert_eq!(decisions.len(), 60);
    for d in &decisions {
        assert_eq!(d.outcome, scheduler::Outcome::Routed);
        assert_eq!(d.target_model, "qwq-32b");
        assert_eq!(d.candidates.len(), 3);
        assert_eq!(
            d.completion_tokens,
            Some(12),
            "usage must be recorded for {}",
            d.request_id
        );
    }
    // Every replica finished its work: nothing in flight is left behind.
    for sim in &sims {
        let mut changes = sim.engine_changes();
        test_support::until(&mut changes, Duration::from_secs(5), "the simulator to drain", || {
            let engine = sim.engine_snapshot();
            engine.running + engine.waiting == 0
        })
        .await;
    }
    gw.stop().await;
}
