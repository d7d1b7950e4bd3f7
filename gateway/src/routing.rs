//! The director shared by the proxy and ext_proc adapters: parse → model lookup → canary split → schedule → decision.
//!
//! Adapters hand in the raw body and get back either a plan (endpoint, fallbacks, body to send) or a [`RouteError`];
//! when the response is done they call [`Director::finish`] so the decision record gets its response fields.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use scheduler::{Decision, Endpoint, EndpointId, Outcome, Request, Scheduler};

use crate::{
    datastore::Datastore,
    decisions::DecisionLog,
    error::RouteError,
    openai::{ApiKind, parse_request},
    scrape::MetricsStore,
    telemetry::{Metrics, ModelLabels, OutcomeLabels, PodLabels, TokenLabels},
    usage::Usage,
};

/// What the adapter must do with a routed request.
#[derive(Debug)]
pub struct RoutePlan {
    pub decision: Decision,
    pub endpoint: EndpointId,
    pub fallbacks: Vec<EndpointId>,
    /// The body to send upstream (model rewritten when the split chose another target).
    pub body: Bytes,
    pub stream: bool,
    pub started: Instant,
}

/// What the adapter learnt from the model server's response.
#[derive(Debug, Default, Clone, Copy)]
pub struct ResponseStats {
    pub status: Option<u16>,
    pub ttft_ms: Option<f64>,
    pub usage: Option<Usage>,
    /// The endpoint that actually served the request, when a fallback was used.
    pub served_by_fallback: bool,
}

/// Shared routing state; one per process, used by every adapter.
pub struct Director {
    pub datastore: Datastore,
    pub metrics_store: Arc<MetricsStore>,
    pub scheduler: Scheduler,
    pub decisions: DecisionLog,
    pub metrics: Metrics,
    next_id: AtomicU64,
    /// Set when `--dashboard-url` is given: every finished decision is also queued for the dashboard.
    pub shipper: std::sync::OnceLock<crate::shipper::Shipper>,
    /// Requests routed to each endpoint and not yet finished; fed to the scheduler's `inflight` scorer.
    endpoint_inflight: std::sync::Mutex<std::collections::HashMap<EndpointId, u32>>,
}

impl Director {
    pub fn new(
        datastore: Datastore,
        metrics_store: Arc<MetricsStore>,
        scheduler: Scheduler,
        decisions: DecisionLog,
    ) -> Director {
        Director {
            metrics: Metrics::new(&metrics_store),
            datastore,
            metrics_store,
            scheduler,
            decisions,
            next_id: AtomicU64::new(0),
            shipper: std::sync::OnceLock::new(),
            endpoint_inflight: Default::default(),
        }
    }

    /// A request id unique within this process, used when the client sent no `x-request-id`.
    pub fn new_request_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        let now = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis())
            .unwrap_or(0);
        format!("{now:x}-{n}")
    }

    /// Routes one request. Errors are recorded as finished decisions here; a plan must be passed to `finish`.
    pub fn route(&self, kind: ApiKind, raw: Bytes, request_id: String) -> Result<RoutePlan, RouteError> {
        self.route_in_subset(kind, raw, request_id, None)
    }

    /// [`Director::route`] restricted to the pods whose IP is in `subset` (`ip` or `ip:port` entries), as Envoy's
    /// `envoy.lb.subset_hint` asks; an empty or non-matching subset is a 503 like upstream's.
    pub fn route_in_subset(
        &self,
        kind: ApiKind,
        raw: Bytes,
        request_id: String,
        subset: Option<&[String]>,
    ) -> Result<RoutePlan, RouteError> {
        let started = Instant::now();
        let received_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let snapshot = self.datastore.snapshot();
        let pool_name = snapshot.pool().map(|p| p.name.clone()).unwrap_or_default();
        let record = |model: &str, err: RouteError| {
            let mut decision = empty_decision(&request_id, received_at_ms, model, &pool_name, &err);
            decision.profile = self.scheduler.profile_name().to_owned();
            self.record(decision);
            err
        };

        let parsed = match parse_request(kind, &raw) {
            Ok(parsed) => parsed,
            Err(err) => return Err(record("", err)),
        };
        let Some(pool) = snapshot.pool() else {
            let reason = snapshot
                .pool_error()
                .unwrap_or("no InferencePool is configured")
                .to_owned();
            return Err(record(&parsed.model, RouteError::NoCapacity(reason)));
        };
        let Some(model) = snapshot.model(&parsed.model) else {
            return Err(record(&parsed.model, RouteError::UnknownModel(parsed.model.clone())));
        };
        let mut rng = rand::rng();
        let Some(target) = scheduler::pick_target(&model.targets, &mut rng) else {
            let err = RouteError::NoCapacity(format!("model {:?} has no target with a non-zero weight", model.name));
            return Err(record(&parsed.model, err));
        };
        let target = target.to_owned();

        // Held until the pick is counted, so two concurrent requests never both see a pod as idle: the
        // critical section is one scheduling decision, microseconds long.
        let mut inflight = self.endpoint_inflight.lock().unwrap_or_else(|p| p.into_inner());
        let endpoints: Vec<Endpoint> = snapshot
            .endpoints()
            .iter()
            .filter(|e| subset.is_none_or(|subset| in_subset(subset, &e.id)))
            .map(|e| Endpoint {
                id: e.id.clone(),
                pod: e.pod.clone(),
                metrics: self.metrics_store.get(&e.id),
                inflight: inflight.get(&e.id).copied().unwrap_or(0),
            })
            .collect();
        if subset.is_some() && endpoints.is_empty() {
            let err = RouteError::NoCapacity("failed to find candidate pods for serving the request".into());
            return Err(record(&parsed.model, err));
        }
        let lora_adapter = endpoints
            .iter()
            .any(|e| e.metrics.active_loras.contains(&target) || e.metrics.waiting_loras.contains(&target))
            .then(|| target.clone());
        let request = Request {
            request_id,
            received_at_ms,
            model: parsed.model.clone(),
            target_model: target.clone(),
            criticality: model.criticality,
            pool: pool.name.clone(),
            prompt: parsed.prompt.clone(),
            lora_adapter,
        };
        let sched_started = Instant::now();
        let mut decision = self.scheduler.schedule(&request, &endpoints, sched_started, &mut rng);
        let elapsed = sched_started.elapsed();
        decision.scheduler_micros = elapsed.as_micros() as u64;
        self.metrics.decision_seconds.observe(elapsed.as_secs_f64());

        match (decision.outcome, decision.endpoint.clone()) {
            (Outcome::Routed, Some(endpoint)) => {
                self.metrics.inflight.inc();
                *inflight.entry(endpoint.clone()).or_default() += 1;
                drop(inflight);
                Ok(RoutePlan {
                    body: parsed.body_for_target(raw, &target),
                    stream: parsed.stream,
                    fallbacks: decision.fallbacks.clone(),
                    endpoint,
                    decision,
                    started,
                })
            }
            (outcome, _) => {
                let err = match outcome {
                    Outcome::Shed429 => RouteError::Shed,
                    _ => RouteError::NoCapacity(format!(
                        "failed to find endpoint candidates for serving the request: {}",
                        decision.reason
                    )),
                };
                decision.outcome = err.outcome();
                decision.status = Some(err.http_status().as_u16());
                self.record(decision);
                Err(err)
            }
        }
    }

    /// Any ready endpoint of the pool, drawn at random: upstream's answer to a request without a body (a GET),
    /// which has no model to schedule for. `None` when the pool has no ready pod.
    pub fn pick_any(&self) -> Option<EndpointId> {
        use rand::seq::IndexedRandom as _;
        let snapshot = self.datastore.snapshot();
        snapshot.endpoints().choose(&mut rand::rng()).map(|e| e.id.clone())
    }

    /// Requests routed and not yet finished (each plan is counted until it is passed to [`Director::finish`]).
    pub fn inflight(&self) -> i64 {
        self.metrics.inflight.get()
    }

    /// Completes a routed request's decision with what the response showed, and records it.
    pub fn finish(&self, plan: RoutePlan, endpoint: EndpointId, stats: ResponseStats) {
        self.metrics.inflight.dec();
        {
            let mut inflight = self.endpoint_inflight.lock().unwrap_or_else(|p| p.into_inner());
            if let Some(count) = inflight.get_mut(&plan.endpoint) {
                *count = count.saturating_sub(1);
                if *count == 0 {
                    inflight.remove(&plan.endpoint);
                }
            }
        }
        let mut decision = plan.decision;
        if stats.served_by_fallback {
            decision.reason = format!(
                "{}; served by fallback {} after the primary refused",
                decision.reason, endpoint
            );
            decision.endpoint = Some(endpoint);
        }
        decision.status = stats.status;
        decision.ttft_ms = stats.ttft_ms;
        decision.duration_ms = Some(plan.started.elapsed().as_secs_f64() * 1e3);
        if stats.status.is_none_or(|s| s >= 500) {
            decision.outcome = Outcome::Error;
        }
        if let Some(usage) = stats.usage {
            decision.prompt_tokens = Some(usage.prompt_tokens);
            decision.completion_tokens = Some(usage.completion_tokens);
            decision.cached_tokens = usage.cached_tokens;
        }
        self.record(decision);
    }

    fn record(&self, decision: Decision) {
        let labels = ModelLabels {
            model: decision.model.clone(),
            target_model: decision.target_model.clone(),
        };
        self.metrics
            .requests
            .get_or_create(&OutcomeLabels {
                model: decision.model.clone(),
                target_model: decision.target_model.clone(),
                outcome: format!("{:?}", decision.outcome),
            })
            .inc();
        if decision.outcome == Outcome::Routed {
            if let Some(ttft) = decision.ttft_ms {
                self.metrics.ttft.get_or_create(&labels).observe(ttft / 1e3);
            }
            if let Some(duration) = decision.duration_ms {
                self.metrics.duration.get_or_create(&labels).observe(duration / 1e3);
            }
            if let Some(pod) = decision
                .candidates
                .iter()
                .find(|c| Some(&c.endpoint) == decision.endpoint.as_ref())
            {
                self.metrics
                    .routed_to_pod
                    .get_or_create(&PodLabels {
                        pod: pod.pod.as_str().to_owned(),
                    })
                    .inc();
            }
            for (kind, count) in [
                ("prompt", decision.prompt_tokens),
                ("completion", decision.completion_tokens),
            ] {
                if let Some(count) = count {
                    let labels = TokenLabels {
                        model: decision.model.clone(),
                        target_model: decision.target_model.clone(),
                        kind,
                    };
                    self.metrics.tokens.get_or_create(&labels).inc_by(count);
                }
            }
        }
        if let Some(shipper) = self.shipper.get() {
            // Never waits: a full queue drops the copy and counts it.
            shipper.ship_decision(decision.clone());
        }
        self.decisions.push(decision);
    }
}

/// Whether `endpoint` (`ip:port`) is named by a subset entry (`ip` or `ip:port`; IPv6 bracketed with a port).
fn in_subset(subset: &[String], endpoint: &EndpointId) -> bool {
    fn host(s: &str) -> Option<std::net::IpAddr> {
        let s = s.trim();
        s.parse::<std::net::SocketAddr>()
            .map(|a| a.ip())
            .or_else(|_| s.trim_start_matches('[').trim_end_matches(']').parse())
            .ok()
    }
    let Some(wanted) = host(endpoint.as_str()) else {
        return false;
    };
    subset.iter().any(|entry| host(entry) == Some(wanted))
}

fn empty_decision(request_id: &str, received_at_ms: u64, model: &str, pool: &str, err: &RouteError) -> Decision {
    Decision {
        request_id: request_id.to_owned(),
        received_at_ms,
        model: model.to_owned(),
        target_model: String::new(),
        criticality: scheduler::Criticality::Standard,
        pool: pool.to_owned(),
        outcome: err.outcome(),
        endpoint: None,
        fallbacks: Vec::new(),
        candidates: Vec::new(),
        profile: String::new(),
        reason: err.to_string(),
        scheduler_micros: 0,
        status: Some(err.http_status().as_u16()),
        ttft_ms: None,
        duration_ms: None,
        prompt_tokens: None,
        completion_tokens: None,
        cached_tokens: None,
        mirror_of: None,
    }
}
