//! vLLM simulator: a step-level engine (continuous batching, paged KV cache, preemption, prefix caching,
//! LoRA slots, calibrated step times) behind an OpenAI-compatible HTTP API with vLLM's metrics.

pub mod args;
pub mod config;
pub mod engine;
mod kv;
pub mod kv_events;
pub mod kv_publisher;
pub mod metrics;
mod openai;
pub mod oracle;
pub mod profile;
mod replica;
mod server;
pub mod tokenize;

use std::net::{Ipv4Addr, SocketAddrV4};

use anyhow::Context as _;

pub use args::Args;
pub use config::{ConfigError, EngineConfig, Fault, ReplicaConfig, SchedulerKind};
pub use engine::{Engine, EngineSnapshot, NewRequest, RequestId, StepOutcome};
pub use kv::BLOCK_SIZE;
pub use profile::{Profile, StepModel, StepShape};
pub use replica::{ReplicaHandle, ReplicaStats, SpawnError, spawn_replica};

/// Runs `args.replicas` replicas on consecutive IPv4 addresses until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let cfg = args.replica_config();
    cfg.validate()?;
    let first = u32::from(*args.addr.ip());
    let mut replicas = Vec::with_capacity(args.replicas as usize);
    for i in 0..args.replicas {
        let ip = first
            .checked_add(i)
            .map(Ipv4Addr::from)
            .with_context(|| format!("replica {i} would need an address past 255.255.255.255"))?;
        let addr = SocketAddrV4::new(ip, args.addr.port());
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("binding replica {i} to {addr}"))?;
        let mut replica_cfg = cfg.clone();
        replica_cfg.seed = cfg.seed.map(|s| s.wrapping_add(u64::from(i)));
        let handle = spawn_replica(replica_cfg, listener).await?;
        tracing::info!(
            replica = i,
            addr = %handle.addr(),
            model = %cfg.served_model_name,
            profile = %cfg.engine.profile,
            scheduler = %cfg.engine.scheduler,
            num_gpu_blocks = cfg.engine.num_gpu_blocks,
            prefix_caching = cfg.engine.prefix_caching,
            time_scale = cfg.time_scale,
            "replica listening"
        );
        replicas.push(handle);
    }
    shutdown_signal().await?;
    tracing::info!(replicas = replicas.len(), "shutting down");
    let stopping = futures::future::join_all(replicas.into_iter().map(ReplicaHandle::shutdown));
    // Clients holding connections open must not keep the process alive forever.
    if tokio::time::timeout(std::time::Duration::from_secs(5), stopping)
        .await
        .is_err()
    {
        tracing::warn!("replicas did not stop within 5 s, exiting anyway");
    }
    Ok(())
}

async fn shutdown_signal() -> anyhow::Result<()> {
    #[cfg(unix)]
    {
        let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
            .context("installing the SIGTERM handler")?;
        tokio::select! {
            res = tokio::signal::ctrl_c() => res.context("waiting for Ctrl-C")?,
            _ = term.recv() => {}
        }
    }
    #[cfg(not(unix))]
    tokio::signal::ctrl_c().await.context("waiting for Ctrl-C")?;
    Ok(())
}
