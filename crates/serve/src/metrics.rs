//! What the front door counts, per listener.

use prometheus_client::{
    encoding::EncodeLabelSet,
    metrics::{counter::Counter, family::Family, gauge::Gauge},
    registry::Registry,
};

use crate::Budget;

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct ListenerLabel {
    pub(crate) listener: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub(crate) struct RejectLabels {
    pub(crate) listener: String,
    pub(crate) reason: String,
}

#[derive(Clone, Debug, Default)]
pub(crate) struct Metrics {
    pub(crate) open: Family<ListenerLabel, Gauge>,
    pub(crate) refused: Family<ListenerLabel, Counter>,
    pub(crate) rejected: Family<RejectLabels, Counter>,
}

impl Metrics {
    pub(crate) fn register(&self, registry: &mut Registry, budget: &Budget) {
        registry.register("http_connections", "Open client connections", self.open.clone());
        registry.register(
            "http_connections_refused",
            "Connections closed on accept because --max-connections were open",
            self.refused.clone(),
        );
        registry.register(
            "http_requests_rejected",
            "Requests answered before the router by reason: too_large (413), body_idle and body_timeout (408), \
             over_budget (503, --max-buffered-bytes reached), broken (the client's body failed)",
            self.rejected.clone(),
        );
        registry.register(
            "http_buffered_request_bytes",
            "Request body bytes held in memory over every listener",
            budget.gauge(),
        );
    }
}
