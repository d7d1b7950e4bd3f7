//! Mirroring: which requests get a copy and where a copy goes.
//!
//! In proxy mode [`Director::route`] attaches a [`MirrorCopy`] to every request due for one (an exact share per
//! model, kept by a credit accumulator, not a coin flip); in ext_proc mode Envoy sends the shadow copies and
//! [`Director::route_shadow`] routes them. Either way a copy's record carries `mirror_of` and is counted in the
//! `mirror_*` metrics, never in `requests`/`request_ttft_seconds`, which the canary controller reads per target.

use std::{
    collections::HashMap,
    sync::{Arc, Mutex},
};

use bytes::Bytes;
use scheduler::Criticality;
use tokio::sync::Semaphore;

use super::{Director, Ids, Scheduled, Scope};
use crate::{
    datastore::{ModelView, Snapshot},
    error::RouteError,
    openai::ParsedRequest,
    routing::Flight,
    telemetry::{MirrorSkip, MirrorSkipLabels},
};

/// Mirrored copies in flight at most unless the gateway is told otherwise.
pub const DEFAULT_MIRROR_MAX_INFLIGHT: usize = 256;

/// Suffix of a mirrored copy's request id: `<client request id>-mirror`.
pub const MIRROR_ID_SUFFIX: &str = "-mirror";

/// Request header the ext_proc picker sets on a request of a mirroring model: the model the client asked for.
/// Envoy's shadow copy carries it, while its body already names the split's target.
pub const MODEL_HEADER: &str = "x-switchyard-model";

/// A mirrored copy of a routed request: send `body` to `flight.endpoint()`, read the response through the flight
/// and discard it. The flight holds one of the bounded in-flight slots until it ends.
#[derive(Debug)]
pub struct MirrorCopy {
    pub flight: Flight,
    pub body: Bytes,
}

/// The mirroring state of the director.
pub(super) struct Mirroring {
    /// Per model, millionths of a request owed to its mirror: each request adds the mirror fraction, and a copy is
    /// due whenever a whole one has accumulated, so 10 % is exactly every tenth request.
    credit: Mutex<HashMap<String, u32>>,
    permits: Arc<Semaphore>,
}

impl Mirroring {
    pub(super) fn new(max_inflight: usize) -> Mirroring {
        Mirroring {
            credit: Mutex::default(),
            permits: Arc::new(Semaphore::new(max_inflight)),
        }
    }

    /// Whether this request of `model` is due for a copy; advances the model's credit.
    fn due(&self, model: &str, fraction: api::validate::Fraction) -> bool {
        const ONE: u32 = api::validate::Fraction::ONE;
        let mut credits = self.credit.lock().unwrap_or_else(|p| p.into_inner());
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
}

impl Director {
    /// The proxy's copy of a routed request, when the model mirrors and this request is due for it.
    pub(super) fn mirror_copy(
        &self,
        model: &ModelView,
        parsed: &ParsedRequest,
        raw: &Bytes,
        original: &Ids,
    ) -> Option<MirrorCopy> {
        let route = model.mirror.as_ref()?;
        if !self.mirroring.due(&model.name, route.policy.fraction) {
            return None;
        }
        if model.criticality == Criticality::Sheddable {
            self.skip_mirror(&model.name, MirrorSkip::Sheddable);
            return None;
        }
        let Ok(slot) = self.mirroring.permits.clone().try_acquire_owned() else {
            self.skip_mirror(&model.name, MirrorSkip::Busy);
            return None;
        };
        let scope = Scope {
            pool: &route.pool,
            targets: &route.targets,
            endpoints: route.endpoints.iter().collect(),
            criticality: Criticality::Sheddable,
        };
        let ids = Ids {
            record_id: Ids::new_record_id(),
            request_id: format!("{}{}", original.request_id, super::MIRROR_ID_SUFFIX),
            mirror_of: Some(original.request_id.clone()),
            received_at_ms: original.received_at_ms,
            received: original.received,
        };
        match self.schedule_copy(&model.name, &scope, parsed, raw.clone(), &ids) {
            Ok(copy) => Some(MirrorCopy {
                flight: copy.flight.with_slot(slot),
                body: copy.body,
            }),
            Err(reason) => {
                self.skip_mirror(&model.name, reason);
                None
            }
        }
    }

    /// [`Director::route_shadow`] once the model is known.
    pub(super) fn route_shadow_copy(
        &self,
        snapshot: &Snapshot,
        model: &ModelView,
        parsed: &ParsedRequest,
        raw: Bytes,
        ids: Ids,
    ) -> Result<super::Routed, RouteError> {
        if model.criticality == Criticality::Sheddable {
            self.skip_mirror(&model.name, MirrorSkip::Sheddable);
            return Err(RouteError::Shed);
        }
        let scope = match &model.mirror {
            Some(mirror) => Scope {
                pool: &mirror.pool,
                targets: &mirror.targets,
                endpoints: mirror.endpoints.iter().collect(),
                criticality: Criticality::Sheddable,
            },
            None => Scope {
                criticality: Criticality::Sheddable,
                ..Scope::served(snapshot, model, |_| true)
            },
        };
        self.schedule_copy(&model.name, &scope, parsed, raw, &ids)
            .map(|copy| super::Routed {
                flight: copy.flight,
                body: copy.body,
                fallbacks: Vec::new(),
                model_header: None,
                mirror: None,
            })
            .map_err(|reason| {
                self.skip_mirror(&model.name, reason);
                match reason {
                    MirrorSkip::Saturated | MirrorSkip::Sheddable | MirrorSkip::Busy => RouteError::Shed,
                    MirrorSkip::NoEndpoint => RouteError::NoCapacity("no ready endpoint for the mirrored copy".into()),
                }
            })
    }

    /// Schedules a copy as Sheddable over the scope's pods, so a saturated mirror pool turns it away. A refused
    /// copy is not recorded: it is counted as skipped.
    fn schedule_copy(
        &self,
        model: &str,
        scope: &Scope<'_>,
        parsed: &ParsedRequest,
        raw: Bytes,
        ids: &Ids,
    ) -> Result<MirrorCopy, MirrorSkip> {
        if scope.endpoints.is_empty() {
            return Err(MirrorSkip::NoEndpoint);
        }
        match self.schedule(scope, model, parsed, raw, ids) {
            Scheduled::Routed(routed) => Ok(MirrorCopy {
                flight: routed.flight,
                body: routed.body,
            }),
            Scheduled::Refused(record) if record.outcome == scheduler::Outcome::Shed429 => Err(MirrorSkip::Saturated),
            Scheduled::Refused(_) | Scheduled::NoTarget => Err(MirrorSkip::NoEndpoint),
        }
    }

    fn skip_mirror(&self, model: &str, reason: MirrorSkip) {
        self.recorder
            .metrics
            .mirror_skipped
            .get_or_create(&MirrorSkipLabels {
                model: model.to_owned(),
                reason,
            })
            .inc();
    }
}

/// The model a shadow copy belongs to. Envoy copies the request as its router sees it, after the picker rewrote
/// `model` to the target of the split: the picker's [`MODEL_HEADER`] names the original model; without it, a name
/// that is not itself a mirroring model is looked up among the targets of the models that mirror.
pub(super) fn shadowed_model<'a>(snapshot: &'a Snapshot, header: Option<&str>, name: &str) -> Option<&'a ModelView> {
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
