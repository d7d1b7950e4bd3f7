//! The director shared by the proxy and ext_proc adapters: parse → model lookup → canary split → schedule → decision.
//!
//! Adapters hand in the raw body and get back either a plan (endpoint, fallbacks, body to send) or a [`RouteError`];
//! when the response is done they call [`Director::finish`] so the decision record gets its response fields.
//!
//! Mirroring is decided here too. In proxy mode [`Director::route`] attaches a [`MirrorCopy`] to every request due
//! for one (an exact share per model, kept by a credit accumulator, not a coin flip); in ext_proc mode Envoy sends
//! the shadow copies and [`Director::route_shadow`] routes them. Either way a copy's decision carries `mirror_of`
//! and is counted in the `mirror_*` metrics, never in `requests`/`request_ttft_seconds`, which the canary
//! controller reads per target model.

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use bytes::Bytes;
use scheduler::{Criticality, Decision, Endpoint, EndpointId, Outcome, Request, Scheduler, TargetWeight};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::{
    datastore::{Datastore, EndpointView, ModelView, Snapshot},
    decisions::DecisionLog,
    error::RouteError,
    openai::{ApiKind, ParsedRequest, parse_request},
    scrape::MetricsStore,
    telemetry::{
        Metrics, MirrorLabels, MirrorSkip, MirrorSkipLabels, ModelLabels, OutcomeLabels, PodLabels, TokenLabels,
    },
    usage::Usage,
};

/// Mirrored copies in flight at most unless the gateway is told otherwise.
pub const DEFAULT_MIRROR_MAX_INFLIGHT: usize = 256;

/// Suffix of a mirrored copy's request id: `<client request id>-mirror`.
pub const MIRROR_ID_SUFFIX: &str = "-mirror";

/// Request header the ext_proc picker sets on a request of a mirroring model: the model the client asked for.
/// Envoy's shadow copy carries it, while its body already names the split's target.
pub const MODEL_HEADER: &str = "x-switchyard-model";

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
    /// Prompt tokens counted in the endpoint's prefill backlog until the first response byte (then 0).
    pub prefill_tokens: u64,
    /// The LoRA adapter this request holds on its endpoint (in [`EndpointLoad::adapters`]) until it finishes.
    pub adapter: Option<String>,
    /// Proxy mode: a copy of this request to send to the model's mirror target. Boxed: a plan inside a plan.
    pub mirror: Option<Box<MirrorCopy>>,
}

/// A mirrored copy of a routed request: send `plan.body` to `plan.endpoint`, read and discard the response, then
/// pass the plan to [`Director::finish`]. Holds one of the bounded in-flight slots until dropped.
#[derive(Debug)]
pub struct MirrorCopy {
    pub plan: RoutePlan,
    /// One of the bounded in-flight slots: keep it until the copy is finished.
    pub slot: OwnedSemaphorePermit,
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
    /// What this gateway has outstanding on each endpoint; fed to the `inflight` and `prefill-backlog` scorers.
    endpoint_inflight: std::sync::Mutex<std::collections::HashMap<EndpointId, EndpointLoad>>,
    /// Per model, millionths of a request owed to its mirror: each request adds the mirror fraction, and a copy is
    /// due whenever a whole one has accumulated, so 10 % is exactly every tenth request.
    mirror_credit: std::sync::Mutex<std::collections::HashMap<String, u32>>,
    mirror_permits: Arc<Semaphore>,
}

/// This gateway's unfinished work on one endpoint.
#[derive(Clone, Debug, Default)]
struct EndpointLoad {
    /// Requests routed and not finished.
    requests: u32,
    /// Prompt tokens (uncached on the endpoint) of those requests whose first response byte has not come back.
    prefill_tokens: u64,
    /// LoRA adapters of those requests, each with its count of unfinished requests (a handful at most: a
    /// server holds `max_loras` adapters).
    adapters: Vec<(Arc<str>, u32)>,
}

/// Characters per token, the estimate the prefix blocks use too.
const CHARS_PER_TOKEN: usize = 4;

/// Identity of a copy: its own request id, the original's, and when the original arrived.
struct CopyIds {
    request_id: String,
    mirror_of: String,
    received_at_ms: u64,
}

/// Where a copy goes: the mirror route's pool, split and pods, or the served pool's for an unconfigured shadow.
struct CopyRoute<'a> {
    pool: &'a str,
    targets: &'a [TargetWeight],
    endpoints: &'a [EndpointView],
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
            mirror_credit: Default::default(),
            mirror_permits: Arc::new(Semaphore::new(DEFAULT_MIRROR_MAX_INFLIGHT)),
        }
    }

    /// Bounds the mirrored copies in flight (proxy mode); a copy due beyond it is skipped as `busy`.
    pub fn with_mirror_max_inflight(mut self, max: usize) -> Director {
        self.mirror_permits = Arc::new(Semaphore::new(max));
        self
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

    /// Routes one request of the standalone proxy, with its mirrored copy when one is due. Errors are recorded as
    /// finished decisions here; a plan (and its copy's plan) must be passed to `finish`.
    pub fn route(&self, kind: ApiKind, raw: Bytes, request_id: String) -> Result<RoutePlan, RouteError> {
        self.route_inner(kind, raw, request_id, None, CopyKind::Mirror)
    }

    /// Routes a shadow copy Envoy mirrored (ext_proc mode): to the model's mirror target when it has one, else
    /// like the original; always as Sheddable, since a copy must never take capacity the original needs. A copy
    /// that is not worth sending is refused (429 when saturated or Sheddable, 503 without an endpoint) and counted
    /// as skipped; Envoy discards a shadow's answer either way. `mirror_of` is the original's request id, and
    /// `model` the [`MODEL_HEADER`] the picker set on the original, if any.
    pub fn route_shadow(
        &self,
        kind: ApiKind,
        raw: Bytes,
        mirror_of: String,
        model: Option<String>,
    ) -> Result<RoutePlan, RouteError> {
        let request_id = format!("{mirror_of}{MIRROR_ID_SUFFIX}");
        self.route_inner(kind, raw, request_id, None, CopyKind::Shadow { mirror_of, model })
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
        self.route_inner(kind, raw, request_id, subset, CopyKind::None)
    }

    fn route_inner(
        &self,
        kind: ApiKind,
        raw: Bytes,
        request_id: String,
        subset: Option<&[String]>,
        copy: CopyKind,
    ) -> Result<RoutePlan, RouteError> {
        let started = Instant::now();
        let received_at_ms = SystemTime::now()
            .duration_since(UNIX_EPOCH)
            .map(|d| d.as_millis() as u64)
            .unwrap_or(0);
        let snapshot = self.datastore.snapshot();
        let pool_name = snapshot.pool().map(|p| p.name.clone()).unwrap_or_default();
        let shadow_of = match &copy {
            CopyKind::Shadow { mirror_of, .. } => Some(mirror_of.clone()),
            CopyKind::None | CopyKind::Mirror => None,
        };
        let record = |model: &str, err: RouteError| {
            let mut decision = empty_decision(&request_id, received_at_ms, model, &pool_name, &err);
            decision.profile = self.scheduler.profile_name().to_owned();
            decision.mirror_of = shadow_of.clone();
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
        let model = match &copy {
            CopyKind::Shadow { model, .. } => shadowed_model(&snapshot, model.as_deref(), &parsed.model),
            CopyKind::None | CopyKind::Mirror => snapshot.model(&parsed.model),
        };
        let Some(model) = model else {
            return Err(record(&parsed.model, RouteError::UnknownModel(parsed.model.clone())));
        };
        if let CopyKind::Shadow { mirror_of, .. } = copy {
            let ids = CopyIds {
                request_id,
                mirror_of,
                received_at_ms,
            };
            return self.route_shadow_copy(&snapshot, model, &parsed, raw, ids);
        }
        let mut rng = rand::rng();
        let Some(target) = scheduler::pick_target(&model.targets, &mut rng) else {
            let err = RouteError::NoCapacity(format!("model {:?} has no target with a non-zero weight", model.name));
            return Err(record(&parsed.model, err));
        };
        let target = target.to_owned();

        // Held until the pick is counted, so two concurrent requests never both see a pod as idle: the
        // critical section is one scheduling decision, microseconds long.
        let mut inflight = self.endpoint_inflight.lock().unwrap_or_else(|p| p.into_inner());
        let endpoints = self.candidates(
            &inflight,
            snapshot
                .endpoints()
                .iter()
                .filter(|e| subset.is_none_or(|subset| in_subset(subset, &e.id))),
        );
        if subset.is_some() && endpoints.is_empty() {
            let err = RouteError::NoCapacity("failed to find candidate pods for serving the request".into());
            return Err(record(&parsed.model, err));
        }
        let lora_adapter = self.lora_adapter(&target);
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
                let prefill_tokens = self.claim(&mut inflight, &endpoint, &endpoints, &decision, &request);
                let adapter = request.lora_adapter;
                drop(inflight);
                let mirror = match copy {
                    CopyKind::Mirror => self.mirror_copy(model, &parsed, &raw, &decision, received_at_ms),
                    CopyKind::None | CopyKind::Shadow { .. } => None,
                };
                Ok(RoutePlan {
                    body: parsed.body_for_target(raw, &target),
                    stream: parsed.stream,
                    fallbacks: decision.fallbacks.clone(),
                    endpoint,
                    decision,
                    started,
                    prefill_tokens,
                    adapter,
                    mirror,
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

    /// The scheduler's view of `views`: each with its latest metrics and this gateway's requests in flight to it.
    fn candidates<'a>(
        &self,
        inflight: &std::collections::HashMap<EndpointId, EndpointLoad>,
        views: impl Iterator<Item = &'a EndpointView>,
    ) -> Vec<Endpoint> {
        views
            .map(|e| {
                let load = inflight.get(&e.id);
                Endpoint {
                    id: e.id.clone(),
                    pod: e.pod.clone(),
                    metrics: self.metrics_store.get(&e.id),
                    inflight: load.map_or(0, |l| l.requests),
                    pending_prefill_tokens: load.map_or(0, |l| l.prefill_tokens),
                    inflight_adapters: load
                        .map_or_else(Vec::new, |l| l.adapters.iter().map(|(name, _)| name.clone()).collect()),
                }
            })
            .collect()
    }

    /// Counts a routed request on its endpoint; returns the prompt tokens it adds to the endpoint's prefill
    /// backlog (those the endpoint is not believed to hold in its prefix cache).
    fn claim(
        &self,
        inflight: &mut std::collections::HashMap<EndpointId, EndpointLoad>,
        endpoint: &EndpointId,
        endpoints: &[Endpoint],
        decision: &scheduler::Decision,
        request: &Request,
    ) -> u64 {
        let caches = endpoints
            .iter()
            .find(|e| &e.id == endpoint)
            .is_none_or(|e| e.metrics.prefix_caching != Some(false));
        let matched_blocks = decision
            .candidates
            .iter()
            .find(|c| &c.endpoint == endpoint)
            .map_or(0, |c| c.prefix_match_blocks as usize);
        let cached_chars = if caches {
            matched_blocks * self.scheduler.prefix_config().block_size_chars.get()
        } else {
            0
        };
        let tokens = (request.prompt.len().saturating_sub(cached_chars) / CHARS_PER_TOKEN) as u64;
        let load = inflight.entry(endpoint.clone()).or_default();
        load.requests += 1;
        load.prefill_tokens += tokens;
        if let Some(adapter) = request.lora_adapter.as_deref() {
            match load.adapters.iter_mut().find(|(name, _)| &**name == adapter) {
                Some((_, count)) => *count += 1,
                None => load.adapters.push((adapter.into(), 1)),
            }
        }
        tokens
    }

    /// The target as a LoRA adapter when any scrape listed it as one, even if it is resident nowhere now (then its
    /// request must go to a free slot, not be scored like a base-model request), else `None`.
    fn lora_adapter(&self, target: &str) -> Option<String> {
        self.metrics_store.is_adapter(target).then(|| target.to_owned())
    }

    /// The first response byte of a routed request came back: its prompt is no longer waiting for prefill.
    pub fn first_byte(&self, plan: &mut RoutePlan) {
        let tokens = std::mem::take(&mut plan.prefill_tokens);
        if tokens == 0 {
            return;
        }
        let mut inflight = self.endpoint_inflight.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(load) = inflight.get_mut(&plan.endpoint) {
            load.prefill_tokens = load.prefill_tokens.saturating_sub(tokens);
        }
    }

    /// Whether this request of `model` is due for a copy; advances the model's credit.
    fn mirror_due(&self, model: &str, fraction: api::validate::Fraction) -> bool {
        const ONE: u32 = api::validate::Fraction::ONE;
        let mut credits = self.mirror_credit.lock().unwrap_or_else(|p| p.into_inner());
        let credit = match credits.get_mut(model) {
            Some(credit) => credit,
            None => credits.entry(model.to_owned()).or_default(),
        };
        *credit += fraction.millionths();
        if *credit >= ONE {
            *credit -= ONE;
            true
        } else {
            false
        }
    }

    fn skip_mirror(&self, model: &str, reason: MirrorSkip) {
        self.metrics
            .mirror_skipped
            .get_or_create(&MirrorSkipLabels {
                model: model.to_owned(),
                reason,
            })
            .inc();
    }

    /// The proxy's copy of a routed request, when the model mirrors and this request is due for it.
    fn mirror_copy(
        &self,
        model: &ModelView,
        parsed: &ParsedRequest,
        raw: &Bytes,
        original: &Decision,
        received_at_ms: u64,
    ) -> Option<Box<MirrorCopy>> {
        let route = model.mirror.as_ref()?;
        if !self.mirror_due(&model.name, route.policy.fraction) {
            return None;
        }
        if model.criticality == Criticality::Sheddable {
            self.skip_mirror(&model.name, MirrorSkip::Sheddable);
            return None;
        }
        let Ok(permit) = self.mirror_permits.clone().try_acquire_owned() else {
            self.skip_mirror(&model.name, MirrorSkip::Busy);
            return None;
        };
        let copy_route = CopyRoute {
            pool: &route.pool,
            targets: &route.targets,
            endpoints: &route.endpoints,
        };
        let ids = CopyIds {
            request_id: format!("{}{MIRROR_ID_SUFFIX}", original.request_id),
            mirror_of: original.request_id.clone(),
            received_at_ms,
        };
        match self.schedule_copy(&model.name, &copy_route, parsed, raw.clone(), ids) {
            Ok(plan) => Some(Box::new(MirrorCopy { plan, slot: permit })),
            Err(reason) => {
                self.skip_mirror(&model.name, reason);
                None
            }
        }
    }

    /// [`Director::route_shadow`] once the model is known.
    fn route_shadow_copy(
        &self,
        snapshot: &Snapshot,
        model: &ModelView,
        parsed: &ParsedRequest,
        raw: Bytes,
        ids: CopyIds,
    ) -> Result<RoutePlan, RouteError> {
        if model.criticality == Criticality::Sheddable {
            self.skip_mirror(&model.name, MirrorSkip::Sheddable);
            return Err(RouteError::Shed);
        }
        let pool = snapshot.pool().map(|p| p.name.as_str()).unwrap_or_default();
        let route = match &model.mirror {
            Some(mirror) => CopyRoute {
                pool: &mirror.pool,
                targets: &mirror.targets,
                endpoints: &mirror.endpoints,
            },
            None => CopyRoute {
                pool,
                targets: &model.targets,
                endpoints: snapshot.endpoints(),
            },
        };
        self.schedule_copy(&model.name, &route, parsed, raw, ids)
            .map_err(|reason| {
                self.skip_mirror(&model.name, reason);
                match reason {
                    MirrorSkip::Saturated | MirrorSkip::Sheddable | MirrorSkip::Busy => RouteError::Shed,
                    MirrorSkip::NoEndpoint => RouteError::NoCapacity("no ready endpoint for the mirrored copy".into()),
                }
            })
    }

    /// Schedules a copy as Sheddable over the copy route's pods, so a saturated mirror pool turns it away.
    fn schedule_copy(
        &self,
        model: &str,
        route: &CopyRoute<'_>,
        parsed: &ParsedRequest,
        raw: Bytes,
        ids: CopyIds,
    ) -> Result<RoutePlan, MirrorSkip> {
        let started = Instant::now();
        if route.endpoints.is_empty() {
            return Err(MirrorSkip::NoEndpoint);
        }
        let mut rng = rand::rng();
        let target = scheduler::pick_target(route.targets, &mut rng)
            .ok_or(MirrorSkip::NoEndpoint)?
            .to_owned();
        let mut inflight = self.endpoint_inflight.lock().unwrap_or_else(|p| p.into_inner());
        let endpoints = self.candidates(&inflight, route.endpoints.iter());
        let request = Request {
            lora_adapter: self.lora_adapter(&target),
            request_id: ids.request_id,
            received_at_ms: ids.received_at_ms,
            model: model.to_owned(),
            target_model: target.clone(),
            criticality: Criticality::Sheddable,
            pool: route.pool.to_owned(),
            prompt: parsed.prompt.clone(),
        };
        let sched_started = Instant::now();
        let mut decision = self.scheduler.schedule(&request, &endpoints, sched_started, &mut rng);
        decision.scheduler_micros = sched_started.elapsed().as_micros() as u64;
        match (decision.outcome, decision.endpoint.clone()) {
            (Outcome::Routed, Some(endpoint)) => {
                self.metrics.inflight.inc();
                let prefill_tokens = self.claim(&mut inflight, &endpoint, &endpoints, &decision, &request);
                let adapter = request.lora_adapter;
                drop(inflight);
                decision.mirror_of = Some(ids.mirror_of);
                decision.reason = format!("mirrored copy: {}", decision.reason);
                Ok(RoutePlan {
                    body: parsed.body_for_target(raw, &target),
                    stream: parsed.stream,
                    fallbacks: decision.fallbacks.clone(),
                    endpoint,
                    decision,
                    started,
                    prefill_tokens,
                    adapter,
                    mirror: None,
                })
            }
            (Outcome::Shed429, _) => Err(MirrorSkip::Saturated),
            _ => Err(MirrorSkip::NoEndpoint),
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
            if let Some(load) = inflight.get_mut(&plan.endpoint) {
                load.requests = load.requests.saturating_sub(1);
                // A request that never produced a byte (refused, failed) leaves the backlog now.
                load.prefill_tokens = load.prefill_tokens.saturating_sub(plan.prefill_tokens);
                if let Some(adapter) = plan.adapter.as_deref()
                    && let Some(at) = load.adapters.iter().position(|(name, _)| &**name == adapter)
                {
                    load.adapters[at].1 -= 1;
                    if load.adapters[at].1 == 0 {
                        load.adapters.swap_remove(at);
                    }
                }
                if load.requests == 0 {
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
        if decision.mirror_of.is_some() {
            self.record_mirror(&decision);
            self.ship_and_keep(decision);
            return;
        }
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
        self.ship_and_keep(decision);
    }

    fn ship_and_keep(&self, decision: Decision) {
        if let Some(shipper) = self.shipper.get() {
            // Never waits: a full queue drops the copy and counts it.
            shipper.ship_decision(decision.clone());
        }
        self.decisions.push(decision);
    }

    /// A mirrored copy's metrics: `ok` when the mirror answered below 400, `timeout` when it never finished.
    fn record_mirror(&self, decision: &Decision) {
        let outcome = match decision.status {
            None => "timeout",
            Some(status) if status < 400 && decision.outcome == Outcome::Routed => "ok",
            Some(_) => "error",
        };
        self.metrics
            .mirror_requests
            .get_or_create(&MirrorLabels {
                model: decision.model.clone(),
                mirror_target: decision.target_model.clone(),
                outcome,
            })
            .inc();
        if outcome == "ok"
            && let Some(ttft) = decision.ttft_ms
        {
            let labels = ModelLabels {
                model: decision.model.clone(),
                target_model: decision.target_model.clone(),
            };
            self.metrics.mirror_ttft.get_or_create(&labels).observe(ttft / 1e3);
        }
    }
}

/// Which copy, if any, a routing call is about.
enum CopyKind {
    /// An ext_proc request: Envoy mirrors, the picker only routes.
    None,
    /// A proxy request: attach a mirrored copy when one is due.
    Mirror,
    /// A shadow copy Envoy made of the request `mirror_of`, with the original's [`MODEL_HEADER`].
    Shadow { mirror_of: String, model: Option<String> },
}

/// The model a shadow copy belongs to. Envoy copies the request as its router sees it, after the picker rewrote
/// `model` to the target of the split: the picker's [`MODEL_HEADER`] names the original model; without it, a name
/// that is not itself a mirroring model is looked up among the targets of the models that mirror.
fn shadowed_model<'a>(snapshot: &'a Snapshot, header: Option<&str>, name: &str) -> Option<&'a ModelView> {
    if let Some(model) = header.and_then(|h| snapshot.model(h)) {
        return Some(model);
    }
    let direct = snapshot.model(name);
    if direct.is_some_and(|m| m.mirror.is_some()) {
        return direct;
    }
    snapshot
        .models()
        .find(|m| m.mirror.is_some() && m.targets.iter().any(|t| t.name == name))
        .or(direct)
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
