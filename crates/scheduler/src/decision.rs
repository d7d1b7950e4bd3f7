//! What one scheduling run produced: the pick, its fallbacks, every candidate with its inputs and scores, and why.
//!
//! Only scheduling lives here. The audit record that adds the request's identity and the response
//! ([`audit::Record`]) is built by the gateway from this.

use std::fmt;

use crate::{Candidate, EndpointId, Outcome};

/// The scheduler's answer for one request.
#[derive(Clone, Debug, PartialEq)]
pub struct Decision {
    /// `Routed`, `Shed429` or `NoCapacity503`; the other outcomes are the gateway's.
    pub outcome: Outcome,
    pub endpoint: Option<EndpointId>,
    pub fallbacks: Vec<EndpointId>,
    pub candidates: Vec<Candidate>,
    /// The scheduling profile that ran.
    pub profile: String,
    pub reason: Reason,
}

/// Why the scheduler decided as it did.
#[derive(Clone, Debug, PartialEq)]
pub enum Reason {
    /// The pool had no ready endpoint to consider.
    NoReadyEndpoints,
    /// Every pod of the pool has failed its metrics scrapes for `after_ms` or longer: taken as gone.
    NoneAnswering { after_ms: u64 },
    /// A sheddable request met a saturated pool; `rule` is the saturation rule in words.
    PoolSaturated { rule: String },
    /// The profile's own account of its filters, scores and pick (or of the filter that left nothing).
    Profile(String),
}

impl fmt::Display for Reason {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Reason::NoReadyEndpoints => f.write_str("no ready endpoints in pool"),
            Reason::NoneAnswering { after_ms } => write!(
                f,
                "no ready endpoint: every pod's metrics scrape has failed for {after_ms} ms or longer"
            ),
            Reason::PoolSaturated { rule } => write!(f, "sheddable request shed: pool saturated, {rule}"),
            Reason::Profile(text) => f.write_str(text),
        }
    }
}
