//! Where every finished request's audit record goes: the gateway's metrics, the in-memory decision log and, when
//! a dashboard is configured, the shipper.
//!
//! Given to the [`super::Director`] when it is built; nothing is attached afterwards, so no request can be
//! recorded by a half-configured recorder.

use audit::{Outcome, Record};

use crate::{
    decisions::DecisionLog,
    shipper::Shipper,
    telemetry::{Metrics, MirrorLabels, ModelLabels, OutcomeLabels, PodLabels, TokenLabels},
};

/// The `model` label of requests whose model is not a configured one.
pub const UNKNOWN_MODEL: &str = "unknown";

/// Records finished decisions; shared by the director and every in-flight request.
pub struct Recorder {
    pub metrics: Metrics,
    pub decisions: DecisionLog,
    shipper: Option<Shipper>,
}

impl std::fmt::Debug for Recorder {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Recorder")
            .field("decisions", &self.decisions)
            .field("shipper", &self.shipper)
            .finish_non_exhaustive()
    }
}

impl Recorder {
    pub fn new(metrics: Metrics, decisions: DecisionLog, shipper: Option<Shipper>) -> Recorder {
        Recorder {
            metrics,
            decisions,
            shipper,
        }
    }

    /// Counts `record` in the metrics, ships it (never waiting: a full queue drops and counts) and keeps it.
    pub fn record(&self, record: Record) {
        if record.mirror_of.is_some() {
            self.count_mirror(&record);
        } else {
            self.count(&record);
        }
        if let Some(shipper) = &self.shipper {
            shipper.ship_decision(record.clone());
        }
        self.decisions.push(record);
    }

    /// A client request's metrics: the `requests` counter by outcome and, when routed, TTFT, duration, the pod
    /// and the tokens. Label values come only from configured objects: a request refused before its model was
    /// resolved to a target (bad body, unknown model, no pool) counts under model `unknown`, so clients cannot mint
    /// series.
    fn count(&self, record: &Record) {
        let metrics = &self.metrics;
        let model = if record.target_model.is_empty() {
            UNKNOWN_MODEL.to_owned()
        } else {
            record.model.clone()
        };
        metrics
            .requests
            .get_or_create(&OutcomeLabels {
                model,
                target_model: record.target_model.clone(),
                outcome: format!("{:?}", record.outcome),
            })
            .inc();
        if record.outcome != Outcome::Routed {
            return;
        }
        let labels = ModelLabels {
            model: record.model.clone(),
            target_model: record.target_model.clone(),
        };
        if let Some(ttft) = record.ttft_ms {
            metrics.ttft.get_or_create(&labels).observe(ttft / 1e3);
        }
        if let Some(duration) = record.duration_ms {
            metrics.duration.get_or_create(&labels).observe(duration / 1e3);
        }
        if let Some(pod) = record
            .candidates
            .iter()
            .find(|c| Some(&c.endpoint) == record.endpoint.as_ref())
        {
            metrics
                .routed_to_pod
                .get_or_create(&PodLabels {
                    pod: pod.pod.as_str().to_owned(),
                })
                .inc();
        }
        for (kind, count) in [
            ("prompt", record.prompt_tokens),
            ("completion", record.completion_tokens),
        ] {
            if let Some(count) = count {
                let labels = TokenLabels {
                    model: record.model.clone(),
                    target_model: record.target_model.clone(),
                    kind,
                };
                metrics.tokens.get_or_create(&labels).inc_by(count);
            }
        }
    }

    /// A mirrored copy's metrics, kept apart from `requests`/`request_ttft_seconds` (which the canary controller
    /// reads per target): `ok` when the mirror answered below 400, `timeout` when it never finished.
    fn count_mirror(&self, record: &Record) {
        let outcome = match record.status {
            None => "timeout",
            Some(status) if status < 400 && record.outcome == Outcome::Routed => "ok",
            Some(_) => "error",
        };
        self.metrics
            .mirror_requests
            .get_or_create(&MirrorLabels {
                model: record.model.clone(),
                mirror_target: record.target_model.clone(),
                outcome,
            })
            .inc();
        if outcome == "ok"
            && let Some(ttft) = record.ttft_ms
        {
            let labels = ModelLabels {
                model: record.model.clone(),
                target_model: record.target_model.clone(),
            };
            self.metrics.mirror_ttft.get_or_create(&labels).observe(ttft / 1e3);
        }
    }
}
