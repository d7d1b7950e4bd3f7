//! The in-memory log of the last N routing decisions, served as JSON on `/debug/decisions`.

use std::{collections::VecDeque, sync::Mutex};

use audit::Record as Decision;

/// A bounded ring of finished decisions; the oldest falls out when it is full.
#[derive(Debug)]
pub struct DecisionLog {
    capacity: usize,
    ring: Mutex<VecDeque<Decision>>,
}

impl DecisionLog {
    pub fn new(capacity: usize) -> DecisionLog {
        DecisionLog {
            capacity,
            ring: Mutex::new(VecDeque::with_capacity(capacity.min(4096))),
        }
    }

    pub fn push(&self, decision: Decision) {
        if self.capacity == 0 {
            return;
        }
        let mut ring = self.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        if ring.len() == self.capacity {
            ring.pop_front();
        }
        ring.push_back(decision);
    }

    /// The newest `limit` decisions, newest first.
    pub fn latest(&self, limit: usize) -> Vec<Decision> {
        let ring = self.ring.lock().unwrap_or_else(|poisoned| poisoned.into_inner());
        ring.iter().rev().take(limit).cloned().collect()
    }
}

#[cfg(test)]
mod tests {
    use audit::{Criticality, Outcome};

    use super::*;

    fn decision(id: usize) -> Decision {
        Decision {
            record_id: format!("rec-{id}"),
            request_id: id.to_string(),
            received_at_ms: 0,
            model: "m".into(),
            target_model: "m".into(),
            criticality: Criticality::Standard,
            pool: "p".into(),
            outcome: Outcome::Routed,
            endpoint: None,
            fallbacks: vec![],
            candidates: vec![],
            profile: "default".into(),
            reason: String::new(),
            scheduler_micros: 0,
            status: None,
            ttft_ms: None,
            duration_ms: None,
            prompt_tokens: None,
            completion_tokens: None,
            cached_tokens: None,
            mirror_of: None,
        }
    }

    #[test]
    fn keeps_the_newest_up_to_capacity() {
        let log = DecisionLog::new(3);
        for id in 0..5 {
            log.push(decision(id));
        }
        let ids: Vec<_> = log.latest(10).into_iter().map(|d| d.request_id).collect();
        assert_eq!(ids, ["4", "3", "2"]);
        assert_eq!(log.latest(1)[0].request_id, "4");
    }
}
