//! Status condition types and reasons of the CRDs, and the rule for updating a condition list without losing the
//! time of the last real transition.

use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// The condition types the controller writes.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum ConditionType {
    /// InferencePool: routable pods exist and the endpoint picker is healthy.
    Ready,
    /// InferenceModel: the model name is this object's and its spec is valid.
    Accepted,
    /// Both kinds: every reference (poolRef, extensionRef, attach-to listener) resolves.
    ResolvedRefs,
}

/// Why a condition has its status; the CamelCase strings are API.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Reason {
    /// Ready=True.
    Ready,
    /// Ready=False: no selected pod is Ready.
    NoReadyPods,
    /// Ready=False: the extensionRef Service has no ready endpoints.
    EndpointPickerNotHealthy,
    /// Accepted=True.
    Accepted,
    /// Accepted=False: an older InferenceModel of the same pool claims the model name.
    ModelNameInUse,
    /// Accepted=False: the spec breaks a rule the schema cannot express (e.g. every weight 0).
    InvalidSpec,
    /// Accepted or Ready=Unknown: not evaluated yet.
    Pending,
    /// ResolvedRefs=True.
    ResolvedRefs,
    /// ResolvedRefs=False: the poolRef names no InferencePool.
    PoolNotFound,
    /// ResolvedRefs=False: the extensionRef names no Service (or an unsupported kind).
    InvalidExtensionRef,
    /// ResolvedRefs=False: the attach-to annotation names no such Gateway listener, or cannot be parsed.
    GatewayListenerNotFound,
}

/// Condition status, as the strings Kubernetes uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Status {
    True,
    False,
    Unknown,
}

impl ConditionType {
    pub fn as_str(self) -> &'static str {
        match self {
            ConditionType::Ready => "Ready",
            ConditionType::Accepted => "Accepted",
            ConditionType::ResolvedRefs => "ResolvedRefs",
        }
    }
}

impl Reason {
    pub fn as_str(self) -> &'static str {
        match self {
            Reason::Ready => "Ready",
            Reason::NoReadyPods => "NoReadyPods",
            Reason::EndpointPickerNotHealthy => "EndpointPickerNotHealthy",
            Reason::Accepted => "Accepted",
            Reason::ModelNameInUse => "ModelNameInUse",
            Reason::InvalidSpec => "InvalidSpec",
            Reason::Pending => "Pending",
            Reason::ResolvedRefs => "ResolvedRefs",
            Reason::PoolNotFound => "PoolNotFound",
            Reason::InvalidExtensionRef => "InvalidExtensionRef",
            Reason::GatewayListenerNotFound => "GatewayListenerNotFound",
        }
    }
}

impl Status {
    pub fn as_str(self) -> &'static str {
        match self {
            Status::True => "True",
            Status::False => "False",
            Status::Unknown => "Unknown",
        }
    }

    pub fn from_bool(ok: bool) -> Self {
        if ok { Status::True } else { Status::False }
    }
}

/// One condition as the controller decides it, before timestamps.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Desired {
    pub type_: ConditionType,
    pub status: Status,
    pub reason: Reason,
    pub message: String,
}

impl Desired {
    pub fn new(type_: ConditionType, status: Status, reason: Reason, message: impl Into<String>) -> Self {
        Desired {
            type_,
            status,
            reason,
            message: message.into(),
        }
    }
}

/// Builds the condition list for `desired`, keeping `lastTransitionTime` from `current` when a condition's status
/// did not change (so the time means "when it last flipped", as the API conventions require), and `now` otherwise.
pub fn merge(current: &[Condition], desired: &[Desired], generation: Option<i64>, now: Timestamp) -> Vec<Condition> {
    desired
        .iter()
        .map(|d| {
            let previous = current.iter().find(|c| c.type_ == d.type_.as_str());
            let last_transition_time = match previous {
                Some(c) if c.status == d.status.as_str() => c.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                last_transition_time,
                message: d.message.clone(),
                observed_generation: generation,
                reason: d.reason.as_str().to_owned(),
                status: d.status.as_str().to_owned(),
                type_: d.type_.as_str().to_owned(),
            }
        })
        .collect()
}

/// Whether two condition lists say the same thing, ignoring order.
pub fn same(a: &[Condition], b: &[Condition]) -> bool {
    a.len() == b.len() && a.iter().all(|c| b.contains(c))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn at(seconds: i64) -> Timestamp {
        Timestamp::from_second(seconds).unwrap()
    }

    #[test]
    fn transition_time_moves_only_when_the_status_changes() {
        let ready = |status, reason| Desired::new(ConditionType::Ready, status, reason, "m");
        let first = merge(&[], &[ready(Status::False, Reason::NoReadyPods)], Some(1), at(10));
        assert_eq!(first[0].last_transition_time, Time(at(10)));
        assert_eq!(
            (first[0].status.as_str(), first[0].reason.as_str()),
            ("False", "NoReadyPods")
        );

        // Same status, new reason and generation: the transition time stays.
        let again = merge(
            &first,
            &[ready(Status::False, Reason::EndpointPickerNotHealthy)],
            Some(2),
            at(20),
        );
        assert_eq!(again[0].last_transition_time, Time(at(10)));
        assert_eq!(again[0].observed_generation, Some(2));

        let flipped = merge(&again, &[ready(Status::True, Reason::Ready)], Some(2), at(30));
        assert_eq!(flipped[0].last_transition_time, Time(at(30)));
        assert!(!same(&again, &flipped));
        assert!(same(&flipped, &flipped.iter().rev().cloned().collect::<Vec<_>>()));
    }
}
