//! gRPC health (`grpc.health.v1.Health`) for Kubernetes probes and Envoy's cluster health check: `liveness` is
//! SERVING while the process runs; `readiness`, the ExternalProcessor service and the overall `""` service only
//! once the datastore has synced and the served pool exists, and not while every pod of the pool has stopped answering
//! its scrapes (`Director::none_answering`), so Envoy's failure mode takes over.

use std::{sync::Arc, time::Duration};

use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tonic_health::{
    ServingStatus,
    pb::health_server::HealthServer,
    server::{HealthReporter, HealthService},
};

use crate::routing::Director;

pub const LIVENESS: &str = "liveness";
pub const READINESS: &str = "readiness";

/// How often readiness is re-checked; the provider marks the datastore synced without a notification.
const RECHECK: Duration = Duration::from_millis(100);

/// The shared health state; each listener gets its own service over it.
#[derive(Clone, Debug)]
pub struct Health {
    reporter: HealthReporter,
}

impl Health {
    /// Starts NOT_SERVING except for liveness.
    pub async fn new() -> Health {
        let reporter = HealthReporter::new();
        reporter.set_service_status(LIVENESS, ServingStatus::Serving).await;
        for service in gated_services() {
            reporter.set_service_status(service, ServingStatus::NotServing).await;
        }
        Health { reporter }
    }

    pub fn service(&self) -> HealthServer<HealthService> {
        HealthServer::new(HealthService::from_health_reporter(self.reporter.clone()))
    }

    /// Follows the datastore: readiness flips as soon as it is synced with a pool, and back if the pool goes away.
    pub async fn track(self, director: Arc<Director>, cancel: CancellationToken) {
        let mut snapshots = director.datastore.subscribe();
        let mut ready = None;
        loop {
            let now = director.datastore.is_synced()
                && director.datastore.snapshot().pool().is_some()
                && !director.none_answering();
            if ready != Some(now) {
                let status = if now {
                    ServingStatus::Serving
                } else {
                    ServingStatus::NotServing
                };
                for service in gated_services() {
                    self.reporter.set_service_status(service, status).await;
                }
                tracing::info!(ready = now, "grpc readiness changed");
                ready = Some(now);
            }
            tokio::select! {
                () = cancel.cancelled() => return,
                Ok(()) = snapshots.changed() => {}
                () = tokio::time::sleep(RECHECK) => {}
            }
        }
    }
}

fn gated_services() -> [&'static str; 3] {
    [READINESS, crate::ext_proc::SERVICE_NAME, ""]
}

/// Serves only the health service on its own port (`--health-listen`), for the kubelet's gRPC probes.
pub async fn serve(listener: TcpListener, health: Health, cancel: CancellationToken) -> anyhow::Result<()> {
    tonic::transport::Server::builder()
        .add_service(health.service())
        .serve_with_incoming_shutdown(
            tonic::transport::server::TcpIncoming::from(listener),
            cancel.cancelled_owned(),
        )
        .await?;
    Ok(())
}
