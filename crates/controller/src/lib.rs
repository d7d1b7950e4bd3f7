//! Switchyard controller: keeps InferencePool and InferenceModel status truthful (kube-rs controller shape), drives
//! guarded canary releases from the gateway's metrics, writes only while holding the leader Lease, and exports
//! reconcile metrics on `--metrics-listen`. With `--dir` it drives only the releases of a YAML directory.
//!
//! ```text
//!  Controller<InferencePool>  ◄── watches Pods (pool selects pod)
//!  Controller<InferenceModel> ◄── watches InferencePools (poolRef), InferenceModels (same modelName)
//!  Controller<CanaryRelease>  ◄── watches InferenceModels (modelRef); requeued every --canary-interval
//!        │ reconcile(obj, ctx) -> Result<Action>: read, decide (pure), server-side apply, Event
//!        ▼
//!  only while lease::LeaseElector says Leading
//! ```

/// Command-line flags.
pub mod args;
/// Guarded canary releases: state machine, gateway metrics, kube and dir drivers.
pub mod canary;
/// Lease-based leader election.
pub mod lease;
/// Prometheus metrics and the /metrics, /healthz server.
pub mod metrics;
/// The InferenceModel reconciler.
pub mod model;
/// The InferencePool reconciler.
pub mod pool;
/// Shared reconcile context, status writing and events.
pub mod status;

#[cfg(test)]
pub(crate) mod fixtures;

use std::{sync::Arc, time::Duration};

use anyhow::Context as _;
use api::{
    canary::CanaryRelease,
    v1alpha1::{InferenceModel, InferencePool},
};
use futures::StreamExt;
use k8s_openapi::api::core::v1::Pod;
use kube::{
    Api, Client,
    runtime::{
        Controller,
        controller::Action,
        events::{Recorder, Reporter},
        reflector::ObjectRef,
        watcher,
    },
};
use tokio_util::sync::CancellationToken;

pub use crate::status::Context;

/// The field manager of every status write, so server-side apply attributes the conditions to us.
pub const FIELD_MANAGER: &str = "switchyard-controller";

/// Why a reconcile failed.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    #[error("kubernetes api: {0}")]
    Kube(#[source] kube::Error),
    #[error("object {0} has no namespace")]
    NoNamespace(String),
    #[error(transparent)]
    Store(#[from] store::Error),
}

pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A short, bounded label for the errors metric.
    pub fn metric_label(&self) -> &'static str {
        match self {
            Error::Kube(kube::Error::Api(_)) => "api",
            Error::Kube(_) => "transport",
            Error::NoNamespace(_) => "no_namespace",
            Error::Store(store::Error::Kube {
                source: kube::Error::Api(_),
                ..
            }) => "api",
            Error::Store(store::Error::Kube { .. }) => "transport",
            // What the API server answered with a status code.
            Error::Store(store::Error::NotFound(_) | store::Error::ReleaseNotFound(_) | store::Error::Conflict(_)) => {
                "api"
            }
            Error::Store(store::Error::Invalid(_)) => "invalid",
            Error::Store(_) => "store",
        }
    }
}

impl From<kube::Error> for Error {
    fn from(error: kube::Error) -> Self {
        Error::Kube(error)
    }
}

/// Retry a failed reconcile after this long (the controller's own backoff spaces repeated failures further).
const ERROR_REQUEUE: Duration = Duration::from_secs(15);

/// Logs, counts and schedules a retry; shared by both controllers.
pub fn error_policy<K: kube::Resource<DynamicType = ()>>(obj: Arc<K>, error: &Error, ctx: Arc<Context>) -> Action {
    let kind = K::kind(&()).into_owned();
    tracing::warn!(%kind, object = %obj.meta().name.as_deref().unwrap_or(""), %error, "reconcile failed");
    ctx.metrics.reconcile_failed(&kind, error);
    Action::requeue(ERROR_REQUEUE)
}

/// What the release controller needs beyond the client.
#[derive(Clone, Debug)]
pub struct CanaryConfig {
    pub gateway_metrics_urls: Vec<String>,
    pub interval: Duration,
}

/// Runs the three controllers until `cancel` fires; called only while this replica leads.
pub async fn run_controllers(
    client: Client,
    metrics: Arc<metrics::Metrics>,
    identity: String,
    canary: CanaryConfig,
    cancel: CancellationToken,
) {
    let pools: Api<InferencePool> = Api::all(client.clone());
    let models: Api<InferenceModel> = Api::all(client.clone());
    let pods: Api<Pod> = Api::all(client.clone());
    let wc = watcher::Config::default();

    let model_controller = Controller::new(models.clone(), wc.clone());
    let model_store = model_controller.store();
    let pool_controller = Controller::new(pools.clone(), wc.clone());
    let pool_store = pool_controller.store();

    let release_controller = Controller::new(Api::<CanaryRelease>::all(client.clone()), wc.clone());
    let release_store = release_controller.store();
    let canary_ctx = Arc::new(canary::kube::CanaryContext {
        store: store::kube::KubeStore::new(client.clone(), canary::FIELD_MANAGER),
        recorder: Recorder::new(
            client.clone(),
            Reporter {
                controller: canary::FIELD_MANAGER.into(),
                instance: Some(identity.clone()),
            },
        ),
        metrics: metrics.clone(),
        releases: canary::Releases::new(canary.gateway_metrics_urls),
        interval: canary.interval,
    });
    let ctx = Arc::new(Context {
        client: client.clone(),
        recorder: Recorder::new(
            client,
            Reporter {
                controller: FIELD_MANAGER.into(),
                instance: Some(identity),
            },
        ),
        metrics,
        models: model_store.clone(),
    });
    let release_run = release_controller
        // A release re-evaluates when its InferenceModel changes (someone moved the weights, or added a target).
        .watches(models.clone(), wc.clone(), move |model: InferenceModel| {
            canary::kube::releases_of(&release_store.state(), &model)
                .into_iter()
                .map(|r| ObjectRef::from(&*r))
        })
        .graceful_shutdown_on(cancel.clone().cancelled_owned())
        .run(canary::kube::reconcile, canary::kube::error_policy, canary_ctx)
        .for_each(|_| async {});

    let by_name = model_store.clone();
    let by_pool = model_store;
    let model_run = model_controller
        // A model's acceptance depends on the other claims of its name, including deleted ones.
        .watches(models, wc.clone(), move |changed: InferenceModel| {
            model::same_name(&by_name.state(), &changed)
                .into_iter()
                .map(|m| ObjectRef::from(&*m))
        })
        .watches(pools, wc.clone(), move |pool: InferencePool| {
            model::referencing(&by_pool.state(), &pool)
                .into_iter()
                .map(|m| ObjectRef::from(&*m))
        })
        .graceful_shutdown_on(cancel.clone().cancelled_owned())
        .run(model::reconcile, error_policy, ctx.clone())
        .for_each(|_| async {});
    let pool_run = pool_controller
        .watches(pods, wc, move |pod: Pod| {
            pool::selecting(&pool_store.state(), &pod)
                .into_iter()
                .map(|p| ObjectRef::from(&*p))
        })
        .graceful_shutdown_on(cancel.cancelled_owned())
        .run(pool::reconcile, error_policy, ctx)
        .for_each(|_| async {});
    tracing::info!("controllers started");
    futures::join!(model_run, pool_run, release_run);
    tracing::info!("controllers stopped");
}

/// Entry point of the binary: metrics server, then leader election driving the controllers (or, with `--dir`,
/// the directory's canary releases), until a signal.
pub async fn run(args: args::Args) -> anyhow::Result<()> {
    if let Some(dir) = args.dir.clone() {
        return run_dir(args, dir).await;
    }
    let identity = args.identity.clone().context("--identity is required without --dir")?;
    let client = Client::try_default()
        .await
        .context("no usable Kubernetes configuration (in-cluster or KUBECONFIG)")?;
    let metrics = Arc::new(metrics::Metrics::default());
    let cancel = CancellationToken::new();

    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding --metrics-listen {}", args.metrics_listen))?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    let server = tokio::spawn({
        let (router, cancel) = (metrics::router(metrics.clone()), cancel.clone());
        async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(cancel.cancelled_owned())
                .await
        }
    });

    let namespace = args.lease_namespace.clone();
    let elector = lease::LeaseElector::new(
        Api::namespaced(client.clone(), &namespace),
        args.lease_name.clone(),
        identity.clone(),
        args.lease_duration,
    );
    let canary = CanaryConfig {
        gateway_metrics_urls: args.gateway_metrics_url.clone(),
        interval: args.canary_interval,
    };
    let elected = tokio::spawn(lease::run_elected(elector, metrics.clone(), cancel.clone(), {
        let (client, metrics) = (client, metrics);
        move |token| run_controllers(client.clone(), metrics.clone(), identity.clone(), canary.clone(), token)
    }));

    shutdown_signal().await;
    cancel.cancel();
    elected.await.context("leader election task")?;
    server.await.context("metrics server task")??;
    Ok(())
}

/// Dir mode: the canary driver over `dir`, and the metrics server for /healthz, until a signal.
async fn run_dir(args: args::Args, dir: std::path::PathBuf) -> anyhow::Result<()> {
    anyhow::ensure!(dir.is_dir(), "--dir {} is not a directory", dir.display());
    let metrics = Arc::new(metrics::Metrics::default());
    let cancel = CancellationToken::new();
    let listener = tokio::net::TcpListener::bind(args.metrics_listen)
        .await
        .with_context(|| format!("binding --metrics-listen {}", args.metrics_listen))?;
    tracing::info!(addr = %listener.local_addr()?, "metrics listening");
    let server = tokio::spawn({
        let (router, cancel) = (metrics::router(metrics), cancel.clone());
        async move {
            axum::serve(listener, router)
                .with_graceful_shutdown(cancel.cancelled_owned())
                .await
        }
    });
    let driver = canary::dir::DirDriver::new(dir, args.gateway_metrics_url.clone(), args.canary_interval);
    let driving = tokio::spawn(driver.run(cancel.clone()));
    shutdown_signal().await;
    cancel.cancel();
    driving.await.context("canary driver task")?;
    server.await.context("metrics server task")??;
    Ok(())
}

/// Waits for Ctrl-C or SIGTERM.
async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut signal) => {
                signal.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        () = ctrl_c => {},
        () = term => {},
    }
    tracing::info!("shutting down");
}
