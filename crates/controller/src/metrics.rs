//! Controller metrics (reconciles, their durations and errors, status writes, leadership) and the small HTTP
//! server that exposes them with `/healthz`.

use std::{sync::Arc, time::Instant};

use axum::{
    Router,
    extract::State,
    http::{HeaderValue, header},
    response::{IntoResponse, Response},
    routing::get,
};
use prometheus_client::{
    encoding::{EncodeLabelSet, text::encode},
    metrics::{counter::Counter, family::Family, gauge::Gauge, histogram::Histogram},
    registry::Registry,
};

use crate::Error;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct KindLabels {
    kind: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ErrorLabels {
    kind: String,
    error: String,
}

fn duration_histogram() -> Histogram {
    // 1 ms to ~16 s: a reconcile is a few API round trips.
    Histogram::new(prometheus_client::metrics::histogram::exponential_buckets(
        0.001, 2.0, 15,
    ))
}

/// Every controller metric, registered under the `switchyard_controller` prefix.
pub struct Metrics {
    registry: Registry,
    reconciles: Family<KindLabels, Counter>,
    errors: Family<ErrorLabels, Counter>,
    durations: Family<KindLabels, Histogram, fn() -> Histogram>,
    status_writes: Family<KindLabels, Counter>,
    leader: Gauge,
}

/// Records a reconcile's duration when dropped, so early returns and errors are timed too.
pub struct ReconcileTimer<'a> {
    metrics: &'a Metrics,
    kind: &'static str,
    start: Instant,
}

impl Default for Metrics {
    fn default() -> Self {
        let mut registry = Registry::with_prefix("switchyard_controller");
        let reconciles = Family::<KindLabels, Counter>::default();
        registry.register("reconciles", "Reconciles started, by kind", reconciles.clone());
        let errors = Family::<ErrorLabels, Counter>::default();
        registry.register(
            "reconcile_errors",
            "Failed reconciles, by kind and error",
            errors.clone(),
        );
        let durations = Family::<KindLabels, Histogram, fn() -> Histogram>::new_with_constructor(duration_histogram);
        registry.register(
            "reconcile_duration_seconds",
            "Time spent in one reconcile",
            durations.clone(),
        );
        let status_writes = Family::<KindLabels, Counter>::default();
        registry.register("status_writes", "Status patches sent, by kind", status_writes.clone());
        let leader = Gauge::default();
        registry.register("leader", "1 while this replica holds the leader Lease", leader.clone());
        Metrics {
            registry,
            reconciles,
            errors,
            durations,
            status_writes,
            leader,
        }
    }
}

impl Metrics {
    /// Counts a reconcile and times it until the returned guard drops.
    pub fn reconcile(&self, kind: &'static str) -> ReconcileTimer<'_> {
        self.reconciles.get_or_create(&KindLabels { kind: kind.into() }).inc();
        ReconcileTimer {
            metrics: self,
            kind,
            start: Instant::now(),
        }
    }

    pub fn reconcile_failed(&self, kind: &str, error: &Error) {
        let labels = ErrorLabels {
            kind: kind.into(),
            error: error.metric_label().into(),
        };
        self.errors.get_or_create(&labels).inc();
    }

    pub fn status_written(&self, kind: &'static str) {
        self.status_writes
            .get_or_create(&KindLabels { kind: kind.into() })
            .inc();
    }

    pub fn set_leader(&self, leading: bool) {
        self.leader.set(i64::from(leading));
    }

    /// The OpenMetrics text of every metric.
    pub fn encode(&self) -> String {
        let mut text = String::new();
        // Writing into a String cannot fail.
        let _ = encode(&mut text, &self.registry);
        text
    }
}

impl Drop for ReconcileTimer<'_> {
    fn drop(&mut self) {
        let labels = KindLabels { kind: self.kind.into() };
        self.metrics
            .durations
            .get_or_create(&labels)
            .observe(self.start.elapsed().as_secs_f64());
    }
}

/// `/metrics` and `/healthz`.
pub fn router(metrics: Arc<Metrics>) -> Router {
    Router::new()
        .route("/metrics", get(serve_metrics))
        .route("/healthz", get(|| async { "ok" }))
        .with_state(metrics)
}

async fn serve_metrics(State(metrics): State<Arc<Metrics>>) -> Response {
    let mut response = metrics.encode().into_response();
    response.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/openmetrics-text; version=1.0.0; charset=utf-8"),
    );
    response
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reconciles_errors_and_leadership_are_exported() {
        let metrics = Metrics::default();
        drop(metrics.reconcile("InferencePool"));
        metrics.reconcile_failed("InferencePool", &Error::NoNamespace("x".into()));
        metrics.status_written("InferencePool");
        metrics.set_leader(true);
        let text = metrics.encode();
        for line in [
            r#"switchyard_controller_reconciles_total{kind="InferencePool"} 1"#,
            r#"switchyard_controller_reconcile_errors_total{kind="InferencePool",error="no_namespace"} 1"#,
            r#"switchyard_controller_reconcile_duration_seconds_count{kind="InferencePool"} 1"#,
            r#"switchyard_controller_status_writes_total{kind="InferencePool"} 1"#,
            "switchyard_controller_leader 1",
        ] {
            assert!(text.contains(line), "{line} missing from:\n{text}");
        }
    }
}
