//! Switchyard dashboard: the routing audit (every decision with its candidates and scores), canary releases edited
//! in the browser, and per-pod KV-cache history, on SQLite.
//!
//! [`app`] builds the whole router from an [`AppState`] so tests drive it with `oneshot`; [`start`] binds, migrates
//! and spawns the retention task; `main.rs` only parses flags and calls [`run`].

pub mod args;
pub mod auth;
pub mod db;
pub mod error;
pub mod ingest;
pub mod releases;
mod routes;
pub mod time;

use std::{net::SocketAddr, sync::Arc, time::Duration};

use anyhow::Context as _;
use prometheus_client::{metrics::counter::Counter, registry::Registry};
use store::{Store, dir::DirStore, kube::KubeStore};
use tokio::{net::TcpListener, task::JoinSet};
use tokio_util::sync::CancellationToken;

use crate::{
    args::Args,
    auth::{Secret, Sessions},
    db::Db,
    releases::NoReleaseStore,
};

/// The field manager of every apply in kube mode, so `managedFields` shows which fields the dashboard set.
pub const FIELD_MANAGER: &str = "switchyard-dashboard";

/// Everything a handler needs, shared by all requests. One context rather than many extensions, so a handler's
/// signature shows all it can touch.
#[derive(Clone)]
pub struct AppState {
    pub db: Db,
    pub releases: Arc<dyn Store>,
    pub sessions: Arc<Sessions>,
    pub logins: Arc<auth::LoginThrottle>,
    pub config: Arc<Config>,
    pub counters: Arc<Counters>,
    /// The front door the app is served behind, for its metrics; `None` when a test drives the router directly.
    pub front: Option<serve::Front>,
}

/// Settings fixed at start-up.
#[derive(Debug)]
pub struct Config {
    pub login_token: Secret,
    pub ingest_token: Secret,
    pub secure_cookies: bool,
    pub retain: Duration,
}

/// Ingest counters exported on `/metrics`.
#[derive(Debug, Default)]
pub struct Counters {
    pub decisions: Counter,
    pub samples: Counter,
    pub batches: Counter,
    pub rejected: Counter,
}

impl AppState {
    /// Every metric of the dashboard, for `/metrics` (registered per scrape: a handful of shared handles).
    pub fn registry(&self) -> Registry {
        let mut registry = Registry::with_prefix("switchyard_dashboard");
        let c = &self.counters;
        registry.register(
            "ingested_decisions",
            "Decisions stored from ingest batches",
            c.decisions.clone(),
        );
        registry.register(
            "ingested_samples",
            "Pod samples stored from ingest batches",
            c.samples.clone(),
        );
        registry.register("ingest_batches", "Ingest batches stored", c.batches.clone());
        registry.register(
            "ingest_rejected",
            "Ingest batches refused (token, size or format)",
            c.rejected.clone(),
        );
        if let Some(front) = &self.front {
            front.register_metrics(&mut registry);
        }
        registry
    }
}

impl AppState {
    pub fn new(db: Db, releases: Arc<dyn Store>, config: Config) -> AppState {
        AppState {
            db,
            releases,
            sessions: Arc::new(Sessions::default()),
            logins: Arc::new(auth::LoginThrottle::default()),
            config: Arc::new(config),
            counters: Arc::new(Counters::default()),
            front: None,
        }
    }
}

/// The whole HTTP surface: pages, JSON API, ingest, static files, health and metrics.
pub fn app(state: AppState) -> axum::Router {
    routes::router(state)
}

/// A started dashboard: its address and the handle to stop it.
pub struct Dashboard {
    pub addr: SocketAddr,
    pub state: AppState,
    cancel: CancellationToken,
    tasks: JoinSet<anyhow::Result<()>>,
}

fn read_token(value: Option<String>, file: Option<&std::path::Path>, what: &str) -> anyhow::Result<Secret> {
    if let Some(path) = file {
        let text = std::fs::read_to_string(path).with_context(|| format!("reading {what} file {}", path.display()))?;
        let token = text.trim();
        anyhow::ensure!(!token.is_empty(), "{what} file {} is empty", path.display());
        return Ok(Secret::new(token));
    }
    match value {
        Some(token) if !token.trim().is_empty() => Ok(Secret::new(token.trim())),
        _ => {
            let token = Secret::random();
            // Printed once so a person running it by hand can log in; set the flag or file to choose one.
            tracing::warn!(token = token.expose(), "no {what} given; generated one for this run");
            Ok(token)
        }
    }
}

/// Opens the database, binds the listener and spawns the server and retention tasks.
pub async fn start(args: Args) -> anyhow::Result<Dashboard> {
    let db = Db::open(&args.db)
        .await
        .with_context(|| format!("opening database {}", args.db))?;
    let releases: Arc<dyn Store> = match (&args.dir, args.kube) {
        (Some(dir), false) => Arc::new(DirStore::new(dir)),
        (None, true) => {
            let client = kube::Client::try_default()
                .await
                .context("connecting to the kubernetes api for --kube")?;
            Arc::new(KubeStore::new(client, FIELD_MANAGER))
        }
        (None, false) => {
            tracing::warn!("neither --dir nor --kube given: the releases pages stay empty");
            Arc::new(NoReleaseStore)
        }
        (Some(_), true) => anyhow::bail!("give either --dir or --kube, not both"),
    };
    let config = Config {
        login_token: read_token(args.login_token, args.login_token_file.as_deref(), "login token")?,
        ingest_token: read_token(args.ingest_token, args.ingest_token_file.as_deref(), "ingest token")?,
        secure_cookies: auth::secure_cookies(args.listen, args.insecure_cookies),
        retain: args.retain,
    };
    let front = serve::Front::new(args.limits.clone());
    let state = AppState {
        front: Some(front.clone()),
        ..AppState::new(db, releases, config)
    };
    let listener = TcpListener::bind(args.listen)
        .await
        .with_context(|| format!("binding --listen {}", args.listen))?;
    let addr = listener.local_addr()?;
    let cancel = CancellationToken::new();
    let mut tasks = JoinSet::new();
    tasks.spawn({
        let (router, cancel) = (app(state.clone()), cancel.clone());
        // The front door's body limit is the largest any route takes (ingest's); routes keep their own below it.
        let site = serve::Site::new("dashboard", ingest::MAX_BODY_BYTES);
        async move {
            front.serve(listener, site, router, cancel).await;
            Ok(())
        }
    });
    tasks.spawn(retention(state.db.clone(), args.retain, cancel.clone()));
    tracing::info!(%addr, "dashboard listening");
    Ok(Dashboard {
        addr,
        state,
        cancel,
        tasks,
    })
}

/// How often old rows are deleted.
const RETENTION_EVERY: Duration = Duration::from_secs(60);
/// Rows per DELETE, small enough that ingest gets the write lock between batches.
const RETENTION_BATCH: i64 = 5_000;

async fn retention(db: Db, retain: Duration, cancel: CancellationToken) -> anyhow::Result<()> {
    let mut tick = tokio::time::interval(RETENTION_EVERY);
    loop {
        tokio::select! {
            () = cancel.cancelled() => return Ok(()),
            _ = tick.tick() => {}
        }
        let cutoff = time::now_ms() - i64::try_from(retain.as_millis()).unwrap_or(i64::MAX);
        match db.delete_before(cutoff, RETENTION_BATCH).await {
            Ok(0) => {}
            Ok(deleted) => tracing::info!(deleted, "retention removed old rows"),
            Err(err) => tracing::warn!(error = %err, "retention failed"),
        }
        if let Err(err) = db.optimize().await {
            tracing::warn!(error = %err, "pragma optimize failed");
        }
    }
}

impl Dashboard {
    /// Runs until `shutdown` resolves or a task fails, then stops everything.
    pub async fn run_until(mut self, shutdown: impl Future<Output = ()>) -> anyhow::Result<()> {
        let result = tokio::select! {
            () = shutdown => Ok(()),
            Some(joined) = self.tasks.join_next() => match joined {
                Ok(Ok(())) => Err(anyhow::anyhow!("a dashboard task stopped unexpectedly")),
                Ok(Err(err)) => Err(err),
                Err(err) => Err(anyhow::anyhow!("a dashboard task panicked: {err}")),
            },
        };
        self.stop().await;
        result
    }

    pub async fn stop(mut self) {
        self.cancel.cancel();
        while self.tasks.join_next().await.is_some() {}
    }
}

/// Entry point of the binary: start, then serve until Ctrl-C or SIGTERM.
pub async fn run(args: Args) -> anyhow::Result<()> {
    let dashboard = start(args).await?;
    dashboard
        .run_until(async {
            let term = async {
                #[cfg(unix)]
                if let Ok(mut signal) = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
                    signal.recv().await;
                    return;
                }
                std::future::pending::<()>().await;
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {},
                () = term => {},
            }
        })
        .await
}
