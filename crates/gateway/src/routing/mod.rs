//! The director shared by the proxy and ext_proc adapters: parse → model lookup → canary split → schedule → a
//! [`Flight`] the adapter carries to the end of the response.
//!
//! One concern per file: this pipeline; [`ledger`] (this gateway's in-flight work per endpoint, fed back to the
//! scorers); [`mirror`] (which requests get a copy and where copies go); [`flight`] (one request's response
//! tracking, shared by both adapters); [`recorder`] (metrics, the decision log, the shipper). Adapters never edit
//! an audit record: everything they learn goes through the [`Flight`], and every refusal is recorded here.

pub mod flight;
mod ledger;
mod mirror;
pub mod precise;
pub mod recorder;

use std::{
    sync::{
        Arc,
        atomic::{AtomicU64, Ordering},
    },
    time::{Instant, SystemTime, UNIX_EPOCH},
};

use audit::Record;
use bytes::Bytes;
use scheduler::{Criticality, Decision, EndpointId, Outcome, Request, Scheduler, TargetWeight};

pub use self::{
    flight::Flight,
    mirror::{DEFAULT_MIRROR_MAX_INFLIGHT, MIRROR_ID_SUFFIX, MODEL_HEADER, MirrorCopy},
    recorder::Recorder,
};
use self::{ledger::Ledger, mirror::Mirroring};
use crate::{
    datastore::{Datastore, EndpointView, ModelView, Snapshot},
    error::RouteError,
    openai::{ApiKind, ParsedRequest, parse_request},
    scrape::MetricsStore,
};

/// A request as an adapter received it.
#[derive(Debug)]
pub struct Inbound {
    pub kind: ApiKind,
    pub body: Bytes,
    pub request_id: String,
    /// When the request arrived: TTFT and duration are measured from here, as the client experiences them.
    pub received: Instant,
}

/// What the adapter must do with a routed request.
#[derive(Debug)]
pub struct Routed {
    /// Carries the request to the end of its response; see [`Flight`].
    pub flight: Flight,
    /// The body to send upstream (model rewritten when the split chose another target).
    pub body: Bytes,
    /// Next-best endpoints, best first, for an adapter that can retry a refused connection.
    pub fallbacks: Vec<EndpointId>,
    /// ext_proc: the [`MODEL_HEADER`] value to set on the request (the model the client asked for) when the model
    /// mirrors, so Envoy's shadow copy can be traced back to it.
    pub model_header: Option<String>,
    /// Proxy mode: a copy of this request to send to the model's mirror target.
    pub mirror: Option<MirrorCopy>,
}

/// Shared routing state; one per process, used by every adapter.
pub struct Director {
    pub datastore: Datastore,
    pub metrics_store: Arc<MetricsStore>,
    pub scheduler: Scheduler,
    pub recorder: Arc<Recorder>,
    ledger: Arc<Ledger>,
    mirroring: Mirroring,
    precise: Option<precise::Precise>,
    next_id: AtomicU64,
}

/// Who a decision is about: its request id, the original's when it is a copy, and when the request arrived.
struct Ids {
    /// The decision's own id (request ids come from clients and may repeat).
    record_id: String,
    request_id: String,
    mirror_of: Option<String>,
    received_at_ms: u64,
    received: Instant,
}

/// Where a request may go: a pool's name, the model's split and the pool's pods that may take it.
struct Scope<'a> {
    pool: &'a str,
    targets: &'a [TargetWeight],
    endpoints: Vec<&'a EndpointView>,
    criticality: Criticality,
}

/// What scheduling within a [`Scope`] came to.
#[expect(
    clippy::large_enum_variant,
    reason = "returned once per request and unpacked at once; boxing would add an allocation to every routed request"
)]
enum Scheduled {
    Routed(Routed),
    /// No target has a non-zero weight.
    NoTarget,
    /// The scheduler refused: `Shed429` or `NoCapacity503`, with the record it produced (not yet recorded).
    Refused(Box<Record>),
}

impl Director {
    pub fn new(
        datastore: Datastore,
        metrics_store: Arc<MetricsStore>,
        scheduler: Scheduler,
        recorder: Recorder,
    ) -> Director {
        Director {
            ledger: Arc::new(Ledger::new(recorder.metrics.inflight.clone())),
            recorder: Arc::new(recorder),
            datastore,
            metrics_store,
            scheduler,
            mirroring: Mirroring::new(DEFAULT_MIRROR_MAX_INFLIGHT),
            precise: None,
            next_id: AtomicU64::new(0),
        }
    }

    /// Bounds the mirrored copies in flight (proxy mode); a copy due beyond it is skipped as `busy`.
    pub fn with_mirror_max_inflight(mut self, max: usize) -> Director {
        self.mirroring = Mirroring::new(max);
        self
    }

    /// Scores prompts on the engines' reported KV blocks where a pod's events are followed.
    pub fn with_precise(mut self, precise: precise::Precise) -> Director {
        self.precise = Some(precise);
        self
    }

    /// A request id unique within this process, used when the client sent no `x-request-id`.
    pub fn new_request_id(&self) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{:x}-{n}", unix_ms())
    }

    /// Routes one request of the standalone proxy, with its mirrored copy when one is due. A refusal is recorded
    /// here; a routed request is recorded when its [`Flight`] ends.
    pub fn route(&self, inbound: Inbound) -> Result<Routed, RouteError> {
        let snapshot = self.datastore.snapshot();
        let ids = Ids::of(&inbound, None);
        let (parsed, model) = self.admit(&snapshot, &inbound, &ids, |s, name| s.model(name))?;
        let scope = Scope::served(&snapshot, model, |_| true);
        let mut routed = self.route_original(scope, &parsed, inbound.body.clone(), &ids)?;
        routed.mirror = self.mirror_copy(model, &parsed, &inbound.body, &ids);
        Ok(routed)
    }

    /// Routes a request for ext_proc, restricted to the pods whose IP is in `subset` (`ip` or `ip:port` entries)
    /// when Envoy's `envoy.lb.subset_hint` names some; an empty or non-matching subset is a 503 like upstream's.
    pub fn route_in_subset(&self, inbound: Inbound, subset: Option<&[String]>) -> Result<Routed, RouteError> {
        let snapshot = self.datastore.snapshot();
        let ids = Ids::of(&inbound, None);
        let (parsed, model) = self.admit(&snapshot, &inbound, &ids, |s, name| s.model(name))?;
        let scope = Scope::served(&snapshot, model, |e| {
            subset.is_none_or(|subset| in_subset(subset, &e.id))
        });
        if subset.is_some() && scope.endpoints.is_empty() {
            let err = RouteError::NoCapacity("failed to find candidate pods for serving the request".into());
            return Err(self.reject(&ids, &parsed.model, scope.pool, err));
        }
        let mut routed = self.route_original(scope, &parsed, inbound.body, &ids)?;
        routed.model_header = model.mirror.is_some().then(|| model.name.clone());
        Ok(routed)
    }

    /// Routes a shadow copy Envoy mirrored (ext_proc mode): to the model's mirror target when it has one, else
    /// like the original; always as Sheddable, since a copy must never take capacity the original needs. A copy
    /// that is not worth sending is refused (429 when saturated or Sheddable, 503 without an endpoint) and counted
    /// as skipped; Envoy discards a shadow's answer either way. `inbound.request_id` is the original's, and
    /// `model_header` the [`MODEL_HEADER`] the picker set on the original, if any.
    pub fn route_shadow(&self, inbound: Inbound, model_header: Option<&str>) -> Result<Routed, RouteError> {
        let snapshot = self.datastore.snapshot();
        let ids = Ids::of(&inbound, Some(inbound.request_id.clone()));
        let (parsed, model) = self.admit(&snapshot, &inbound, &ids, |s, name| {
            mirror::shadowed_model(s, model_header, name)
        })?;
        self.route_shadow_copy(&snapshot, model, &parsed, inbound.body, ids)
    }

    /// Any ready endpoint of the pool, drawn at random: upstream's answer to a request without a body (a GET),
    /// which has no model to schedule for. `None` when the pool has no ready pod.
    pub fn pick_any(&self) -> Option<EndpointId> {
        use rand::seq::IndexedRandom as _;
        let snapshot = self.datastore.snapshot();
        snapshot.endpoints().choose(&mut rand::rng()).map(|e| e.id.clone())
    }

    /// Whether the pool has pods and every one has failed its scrapes for the scheduler's `unanswered_after_ms`:
    /// requests then get 503 at once, and readiness says so, so that Envoy's failure mode takes over.
    pub fn none_answering(&self) -> bool {
        let snapshot = self.datastore.snapshot();
        let metrics: Vec<_> = snapshot
            .endpoints()
            .iter()
            .map(|e| self.metrics_store.get(&e.id))
            .collect();
        self.scheduler
            .saturation()
            .none_answering(metrics.iter(), Instant::now())
    }

    /// The model names clients may request from the served pool (for `/v1/models`).
    pub fn model_names(&self) -> Vec<String> {
        self.datastore.snapshot().models().map(|m| m.name.clone()).collect()
    }

    /// Requests routed and not yet finished (each [`Flight`] is counted until it ends).
    pub fn inflight(&self) -> i64 {
        self.ledger.inflight()
    }

    /// Notified whenever [`Director::inflight`] changes.
    pub fn subscribe_inflight(&self) -> tokio::sync::watch::Receiver<i64> {
        self.ledger.subscribe()
    }

    /// Parses the body and finds its model (`find` looks it up); a failure is recorded and returned.
    fn admit<'s>(
        &self,
        snapshot: &'s Snapshot,
        inbound: &Inbound,
        ids: &Ids,
        find: impl FnOnce(&'s Snapshot, &str) -> Option<&'s ModelView>,
    ) -> Result<(ParsedRequest, &'s ModelView), RouteError> {
        let pool = snapshot.pool().map_or("", |p| p.name.as_str());
        let parsed = parse_request(inbound.kind, &inbound.body).map_err(|err| self.reject(ids, "", pool, err))?;
        // Not yet matched against the configuration: the client's name, bounded before it is kept or echoed.
        let asked = audit::bounded_name(&parsed.model);
        if snapshot.pool().is_none() {
            let reason = snapshot
                .pool_error()
                .unwrap_or("no InferencePool is configured")
                .to_owned();
            return Err(self.reject(ids, &asked, pool, RouteError::NoCapacity(reason)));
        }
        match find(snapshot, &parsed.model) {
            Some(model) => Ok((parsed, model)),
            None => Err(self.reject(ids, &asked, pool, RouteError::UnknownModel(asked.clone()))),
        }
    }

    /// Schedules a client request; a refusal becomes the matching [`RouteError`] and is recorded.
    fn route_original(
        &self,
        scope: Scope<'_>,
        parsed: &ParsedRequest,
        raw: Bytes,
        ids: &Ids,
    ) -> Result<Routed, RouteError> {
        match self.schedule(&scope, &parsed.model, parsed, raw, ids) {
            Scheduled::Routed(routed) => Ok(routed),
            Scheduled::NoTarget => {
                let err =
                    RouteError::NoCapacity(format!("model {:?} has no target with a non-zero weight", parsed.model));
                Err(self.reject(ids, &parsed.model, scope.pool, err))
            }
            Scheduled::Refused(mut record) => {
                let err = match record.outcome {
                    Outcome::Shed429 => RouteError::Shed,
                    _ => RouteError::NoCapacity(format!(
                        "failed to find endpoint candidates for serving the request: {}",
                        record.reason
                    )),
                };
                record.outcome = err.outcome();
                record.status = Some(err.http_status().as_u16());
                self.recorder.record(*record);
                Err(err)
            }
        }
    }

    /// Splits, schedules and claims: the one path every request and copy takes to an endpoint.
    fn schedule(&self, scope: &Scope<'_>, model: &str, parsed: &ParsedRequest, raw: Bytes, ids: &Ids) -> Scheduled {
        let mut rng = rand::rng();
        let Some(target) = scheduler::pick_target(scope.targets, &mut rng) else {
            return Scheduled::NoTarget;
        };
        let target = target.to_owned();
        let lora_adapter = self.lora_adapter(&target);
        let lookup = self
            .precise
            .as_ref()
            .and_then(|precise| precise.prepare(parsed, lora_adapter.is_some()));
        if let Some((_, took)) = &lookup {
            self.recorder.metrics.tokenize_seconds.observe(took.as_secs_f64());
        }
        let ledger = self.ledger.lock();
        let mut endpoints = ledger.candidates(&self.metrics_store, scope.endpoints.iter().copied());
        // The decision's time includes the precise lookup (tokenizing is timed apart, above).
        let decision_started = Instant::now();
        if let (Some(precise), Some((lookup, _))) = (&self.precise, &lookup) {
            precise.apply(lookup, &mut endpoints, ledger.pending());
        }
        let request = Request {
            request_id: ids.request_id.clone(),
            received_at_ms: ids.received_at_ms,
            model: model.to_owned(),
            lora_adapter,
            target_model: target,
            criticality: scope.criticality,
            pool: scope.pool.to_owned(),
            prompt: parsed.prompt.clone(),
            tokenized: lookup.as_ref().map(|(lookup, _)| lookup.tokenized),
        };
        let decision = self.scheduler.schedule(&request, &endpoints, Instant::now(), &mut rng);
        let elapsed = decision_started.elapsed();
        self.recorder.metrics.decision_seconds.observe(elapsed.as_secs_f64());
        let micros = u64::try_from(elapsed.as_micros()).unwrap_or(u64::MAX);
        let endpoint = match (decision.outcome, &decision.endpoint) {
            (Outcome::Routed, Some(endpoint)) => endpoint.clone(),
            _ => {
                drop(ledger);
                return Scheduled::Refused(Box::new(audit_record(ids, &request, decision, micros)));
            }
        };
        let keys = lookup.map(|(lookup, _)| lookup.keys);
        let tokens = ledger::prefill_tokens(&self.scheduler, &endpoint, &endpoints, &decision, &request);
        let claim = ledger.claim(&self.ledger, &endpoint, &request, tokens, keys);
        let fallbacks = decision.fallbacks.clone();
        let body = parsed.body_for_target(raw, &request.target_model);
        let record = audit_record(ids, &request, decision, micros);
        let flight = Flight::new(self.ledger.clone(), self.recorder.clone(), record, claim, ids.received);
        Scheduled::Routed(Routed {
            flight,
            body,
            fallbacks,
            model_header: None,
            mirror: None,
        })
    }

    /// Records a request refused before it was scheduled, and hands the error back.
    fn reject(&self, ids: &Ids, model: &str, pool: &str, err: RouteError) -> RouteError {
        let record = Record {
            record_id: ids.record_id.clone(),
            request_id: ids.request_id.clone(),
            received_at_ms: ids.received_at_ms,
            model: model.to_owned(),
            target_model: String::new(),
            criticality: Criticality::Standard,
            pool: pool.to_owned(),
            outcome: err.outcome(),
            endpoint: None,
            fallbacks: Vec::new(),
            candidates: Vec::new(),
            profile: self.scheduler.profile_name().to_owned(),
            reason: err.to_string(),
            scheduler_micros: 0,
            status: Some(err.http_status().as_u16()),
            ttft_ms: None,
            duration_ms: None,
            prompt_tokens: None,
            completion_tokens: None,
            cached_tokens: None,
            mirror_of: ids.mirror_of.clone(),
        };
        self.recorder.record(record);
        err
    }

    /// The target as a LoRA adapter when any scrape listed it as one, even if it is resident nowhere now (then its
    /// request must go to a free slot, not be scored like a base-model request), else `None`.
    fn lora_adapter(&self, target: &str) -> Option<String> {
        self.metrics_store.is_adapter(target).then(|| target.to_owned())
    }
}

impl Ids {
    /// 128 random bits as hex: unique over every gateway replica and restart without any coordination.
    fn new_record_id() -> String {
        format!("{:032x}", rand::random::<u128>())
    }

    /// A client chooses its request id (`x-request-id`), so the record keeps at most `audit::MAX_NAME_BYTES` of it.
    fn of(inbound: &Inbound, mirror_of: Option<String>) -> Ids {
        let mirror_of = mirror_of.map(|original| audit::bounded_name(&original));
        let request_id = match &mirror_of {
            Some(original) => format!("{original}{MIRROR_ID_SUFFIX}"),
            None => audit::bounded_name(&inbound.request_id),
        };
        Ids {
            record_id: Ids::new_record_id(),
            request_id,
            mirror_of,
            received_at_ms: unix_ms(),
            received: inbound.received,
        }
    }
}

impl<'a> Scope<'a> {
    /// The served pool's pods that pass `keep`, for `model`'s own split and criticality.
    fn served(snapshot: &'a Snapshot, model: &'a ModelView, keep: impl Fn(&EndpointView) -> bool) -> Scope<'a> {
        Scope {
            pool: snapshot.pool().map_or("", |p| p.name.as_str()),
            targets: &model.targets,
            endpoints: snapshot.endpoints().iter().filter(|e| keep(e)).collect(),
            criticality: model.criticality,
        }
    }
}

/// The audit record of a scheduled request, before the response fills in its status, TTFT and usage.
fn audit_record(ids: &Ids, request: &Request, decision: Decision, scheduler_micros: u64) -> Record {
    let reason = match ids.mirror_of {
        Some(_) => format!("mirrored copy: {}", decision.reason),
        None => decision.reason.to_string(),
    };
    Record {
        record_id: ids.record_id.clone(),
        request_id: request.request_id.clone(),
        received_at_ms: request.received_at_ms,
        model: request.model.clone(),
        target_model: request.target_model.clone(),
        criticality: request.criticality,
        pool: request.pool.clone(),
        outcome: decision.outcome,
        endpoint: decision.endpoint,
        fallbacks: decision.fallbacks,
        candidates: decision.candidates,
        profile: decision.profile,
        reason,
        scheduler_micros,
        status: None,
        ttft_ms: None,
        duration_ms: None,
        prompt_tokens: None,
        completion_tokens: None,
        cached_tokens: None,
        mirror_of: ids.mirror_of.clone(),
    }
}

fn unix_ms() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
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
