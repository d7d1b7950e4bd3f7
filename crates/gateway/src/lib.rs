//! Switchyard gateway: the data plane. A datastore fed by a provider, a metrics scraper, one scheduler, and thin
//! adapters (the standalone proxy now, Envoy ext_proc next) that share them through the [`routing::Director`].

pub mod admin;
pub mod args;
pub mod datastore;
pub mod decisions;
pub mod error;
pub mod ext_proc;
#[cfg(test)]
mod fuzz;
pub mod health;
pub mod kv_events;
pub mod openai;
pub mod proxy;
pub mod routing;
pub mod scrape;
pub mod shipper;
pub mod spool;
pub mod telemetry;
pub mod usage;

use std::{net::SocketAddr, sync::Arc};

use anyhow::Context as _;
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    args::Args,
    decisions::DecisionLog,
    routing::{Director, Recorder},
};

/// A started gateway: its bound addresses and the handle to stop it.
pub struct Gateway {
    pub admin_addr: SocketAddr,
    /// The bounds every listener shares (connections, buffered request bytes).
    pub front: serve::Front,
    pub proxy_addr: Option<SocketAddr>,
    pub extproc_addr: SocketAddr,
    pub health_addr: SocketAddr,
    pub director: Arc<Director>,
    /// The engines' KV events, when `--kv-events-port` is given.
    pub kv_events: Option<Arc<kv_events::subscriber::KvState>>,
    cancel: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

/// Binds every listener and starts the provider, scraper and servers; returns once they are listening.
pub async fn start(args: Args) -> anyhow::Result<Gateway> {
    let scheduler_config = match &args.scheduler_config {
        Some(path) => {
            let text = std::fs::read_to_string(path)
                .with_context(|| format!("reading scheduler config {}", path.display()))?;
            scheduler::SchedulerConfig::from_yaml(&text)
                .with_context(|| format!("invalid scheduler config {}", path.display()))?
        }
        None => scheduler::SchedulerConfig::default(),
    };
    let scheduler = scheduler::Scheduler::new(&scheduler_config).context("building the scheduler")?;

    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    let datastore = datastore::Datastore::new(args.pool.clone());
    match &args.dir {
        Some(dir) => {
            let provider = datastore::dir::DirProvider::open(dir, args.dir_poll)
                .with_context(|| format!("opening --dir {}", dir.display()))?;
            tasks.spawn(provider.run(datastore.clone(), cancel.clone()));
        }
        // clap requires exactly one of --dir and --kube.
        None => {
            let client = kube::Client::try_default()
                .await
                .context("--kube: no usable Kubernetes configuration (in-cluster or KUBECONFIG)")?;
            let namespace = args
                .pool
                .as_deref()
                .and_then(|p| datastore::PoolName::parse(p).namespace);
            let provider = datastore::KubeProvider::new(client, namespace);
            tasks.spawn(provider.run(datastore.clone(), cancel.clone()));
        }
    }

    let metrics_store = Arc::new(scrape::MetricsStore::default());
    tasks.spawn({
        let (snapshots, store, cancel) = (datastore.subscribe(), metrics_store.clone(), cancel.clone());
        let (interval, timeout) = (args.scrape_interval, args.scrape_timeout);
        async move {
            scrape::run_scraper(snapshots, store, interval, timeout, cancel).await;
            Ok(())
        }
    });

    let mut metrics = telemetry::Metrics::new(&metrics_store);
    let front = serve::Front::new(args.limits.clone());
    metrics.register(|registry| front.register_metrics(registry));
    let kv_events = args.kv_events_port.map(|port| {
        let state = Arc::new(kv_events::subscriber::KvState::default());
        metrics.register(|registry| state.register_metrics(registry));
        let config = kv_events::subscriber::SubscriberConfig {
            port,
            replay_port: args.kv_events_replay_port,
            topic: args.kv_events_topic.clone(),
            silence: args.kv_events_silence,
        };
        let (snapshots, state_for_task, cancel) = (datastore.subscribe(), state.clone(), cancel.clone());
        tasks.spawn(async move {
            kv_events::subscriber::run(snapshots, state_for_task, config, cancel).await;
            Ok(())
        });
        tracing::info!(port, "following the engines' kv events");
        state
    });
    let shipper = match (&args.dashboard_url, &args.dashboard_token) {
        (Some(url), Some(token)) => {
            let config = shipper::ShipperConfig {
                url: url.clone(),
                token: token.clone(),
                spool: args
                    .dashboard_spool_dir
                    .clone()
                    .map(|dir| (dir, args.dashboard_spool_bytes)),
            };
            let (shipper, drain) = shipper::spawn(config, metrics.shipper.clone(), cancel.clone()).await?;
            tasks.spawn(async move {
                let _ = drain.await;
                Ok(())
            });
            tasks.spawn({
                let (datastore, store, shipper, cancel) = (
                    datastore.clone(),
                    metrics_store.clone(),
                    shipper.clone(),
                    cancel.clone(),
                );
                async move {
                    shipper::run_sampler(datastore, store, shipper, cancel).await;
                    Ok(())
                }
            });
            tracing::info!(url = %url, "shipping decisions and pod samples to the dashboard");
            Some(shipper)
        }
        _ => None,
    };
    let tokenizer = match &args.tokenizer {
        Some(path) => {
            let tokenizer = tokenizer::Tokenizer::from_file(path).with_context(|| "loading --tokenizer".to_string())?;
            if !tokenizer.has_chat_template() {
                tracing::warn!(path = %path.display(), "tokenizer has no chat template: chat requests are scored approximately");
            }
            Some(Arc::new(tokenizer))
        }
        None => None,
    };
    let recorder = Recorder::new(metrics, DecisionLog::new(args.decisions_kept), shipper);
    let mut director =
        Director::new(datastore, metrics_store, scheduler, recorder).with_mirror_max_inflight(args.mirror_max_inflight);
    match (&kv_events, tokenizer) {
        (Some(kv), Some(tokenizer)) => {
            director = director.with_precise(routing::precise::Precise {
                kv: kv.clone(),
                tokenizer,
            });
        }
        (Some(_), None) => tracing::warn!(
            "kv events are followed but no --tokenizer is set: prompts cannot be matched to blocks, routing stays approximate"
        ),
        (None, Some(_)) => tracing::warn!("--tokenizer without --kv-events-port: routing stays approximate"),
        (None, None) => {}
    }
    let director = Arc::new(director);

    let admin = TcpListener::bind(args.admin_listen)
        .await
        .with_context(|| format!("binding --admin-listen {}", args.admin_listen))?;
    let admin_addr = admin.local_addr()?;
    tasks.spawn(serve(
        &front,
        admin,
        serve::Site::new("admin", ADMIN_MAX_BODY),
        admin::router(director.clone(), args.debug_decisions),
        &cancel,
    ));
    tracing::info!(addr = %admin_addr, "admin listening");

    let proxy_addr = match args.proxy_listen {
        Some(addr) => {
            let listener = TcpListener::bind(addr)
                .await
                .with_context(|| format!("binding --proxy-listen {addr}"))?;
            let bound = listener.local_addr()?;
            let config = proxy::ProxyConfig {
                max_body_bytes: args.max_body_bytes,
                connect_timeout: args.connect_timeout,
                mirror_timeout: args.mirror_timeout,
            };
            let site = serve::Site {
                render: proxy::rejection_body,
                ..serve::Site::new("proxy", args.max_body_bytes)
            };
            tasks.spawn(serve(
                &front,
                listener,
                site,
                proxy::router(director.clone(), config),
                &cancel,
            ));
            tracing::info!(addr = %bound, "proxy listening");
            Some(bound)
        }
        None => None,
    };

    let health = health::Health::new().await;
    tasks.spawn({
        let (health, director, cancel) = (health.clone(), director.clone(), cancel.clone());
        async move {
            health.track(director, cancel).await;
            Ok(())
        }
    });
    let listener = TcpListener::bind(args.health_listen)
        .await
        .with_context(|| format!("binding --health-listen {}", args.health_listen))?;
    let health_addr = listener.local_addr()?;
    tasks.spawn(health::serve(listener, health.clone(), cancel.clone()));
    tracing::info!(addr = %health_addr, "grpc health listening");

    let listener = TcpListener::bind(args.extproc_listen)
        .await
        .with_context(|| format!("binding --extproc-listen {}", args.extproc_listen))?;
    let extproc_addr = listener.local_addr()?;
    let picker = ext_proc::Picker::new(
        director.clone(),
        ext_proc::ExtProcConfig {
            max_body_bytes: args.max_extproc_body_bytes,
            fallbacks: args.extproc_fallbacks,
            budget: front.budget().clone(),
            max_streams: args.extproc_max_streams,
            request_idle_timeout: args.extproc_request_idle_timeout,
            response_idle_timeout: args.extproc_response_idle_timeout,
        },
        cancel.clone(),
    );
    tasks.spawn(ext_proc::serve(listener, picker, health, cancel.clone()));
    tracing::info!(addr = %extproc_addr, "ext_proc listening");

    Ok(Gateway {
        admin_addr,
        front,
        proxy_addr,
        extproc_addr,
        health_addr,
        director,
        kv_events,
        cancel,
        tasks,
    })
}

/// Largest body the admin listener takes: it has no endpoint that reads one.
const ADMIN_MAX_BODY: usize = 64 << 10;

/// Serves `router` behind the front door's bounds until `cancel` fires.
fn serve(
    front: &serve::Front,
    listener: TcpListener,
    site: serve::Site,
    router: axum::Router,
    cancel: &CancellationToken,
) -> impl Future<Output = anyhow::Result<()>> + use<> {
    let (front, cancel) = (front.clone(), cancel.clone());
    async move {
        front.serve(listener, site, router, cancel).await;
        Ok(())
    }
}

impl Gateway {
    /// Runs until `shutdown` resolves or a task fails, then stops everything.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let result = tokio::select! {
            () = shutdown => Ok(()),
            Some(joined) = self.tasks.join_next() => match joined {
                Ok(Ok(())) => Err(anyhow::anyhow!("a gateway task stopped unexpectedly")),
                Ok(Err(err)) => Err(err),
                Err(err) => Err(anyhow::anyhow!("a gateway task panicked: {err}")),
            },
        };
        self.stop().await;
        result
    }

    /// Cancels every task and waits for them to end.
    pub async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Waits for Ctrl-C or SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if let Err(err) = tokio::signal::ctrl_c().await {
            tracing::error!(error = %err, "cannot listen for ctrl-c");
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(err) => {
                tracing::error!(error = %err, "cannot listen for sigterm");
                std::future::pending::<()>().await;
            }
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}

/// Entry point of the binary: start, then serve until a signal.
pub async fn run(args: Args) -> anyhow::Result<()> {
    start(args).await?.run_until(shutdown_signal()).await
}
