//! A routed request in flight: the one handle through which an adapter reports the response, so the tracking that
//! both the proxy and ext_proc need (first byte, usage, status, fallback, cancellation) exists once.
//!
//! A [`Flight`] owns its audit record and its claim on the endpoint's load. The adapter tells it what it sees
//! ([`Flight::response`], [`Flight::observe`], [`Flight::served_by`]) and how it ended ([`Flight::finish`],
//! [`Flight::fail`], [`Flight::time_out`], [`Flight::abandon`]); dropping it unfinished records a 499, as nginx logs a
//! client that went away. Either way the claim is released and the record is recorded exactly once.

use std::{
    sync::Arc,
    time::{Duration, Instant},
};

use audit::{EndpointId, Outcome, Record};
use tokio::sync::OwnedSemaphorePermit;

use super::{
    ledger::{Claim, Ledger},
    recorder::Recorder,
};
use crate::usage::UsageObserver;

/// What the client sees when the gateway's side of a request goes away first: nginx's "client closed request".
pub const CLIENT_CLOSED: u16 = 499;

/// One routed request, from the decision to the end of its response.
#[derive(Debug)]
pub struct Flight {
    ledger: Arc<Ledger>,
    recorder: Arc<Recorder>,
    /// `None` once recorded. Boxed: a flight is moved between tasks and bodies, its record is a kilobyte.
    record: Option<Box<Record>>,
    claim: Option<Claim>,
    /// The endpoint the scheduler picked.
    pick: EndpointId,
    /// When the gateway received the request: TTFT and duration are measured from here, as the client sees them.
    received: Instant,
    status: Option<u16>,
    first_byte: Option<Instant>,
    usage: Option<UsageObserver>,
    served_by: Option<EndpointId>,
    /// A mirrored copy's slot among the bounded copies in flight, released with the flight.
    slot: Option<OwnedSemaphorePermit>,
}

impl Flight {
    pub(super) fn new(
        ledger: Arc<Ledger>,
        recorder: Arc<Recorder>,
        record: Record,
        claim: Claim,
        received: Instant,
    ) -> Flight {
        Flight {
            ledger,
            recorder,
            record: Some(Box::new(record)),
            pick: claim.endpoint.clone(),
            claim: Some(claim),
            received,
            status: None,
            first_byte: None,
            usage: None,
            served_by: None,
            slot: None,
        }
    }

    pub(super) fn with_slot(mut self, slot: OwnedSemaphorePermit) -> Flight {
        self.slot = Some(slot);
        self
    }

    /// The endpoint the scheduler picked.
    pub fn endpoint(&self) -> &EndpointId {
        &self.pick
    }

    pub fn request_id(&self) -> &str {
        self.record().map_or("", |r| r.request_id.as_str())
    }

    /// For a mirrored copy: the request id of the client request it copies.
    pub fn mirror_of(&self) -> Option<&str> {
        self.record().and_then(|r| r.mirror_of.as_deref())
    }

    /// The audit record as it stands (its response fields are filled in when the flight ends).
    pub fn record(&self) -> Option<&Record> {
        self.record.as_deref()
    }

    /// The response headers arrived (with their status, when the adapter sees it).
    pub fn response(&mut self, status: Option<u16>, content_type: Option<&str>) {
        self.status = status;
        self.usage = Some(UsageObserver::new(content_type));
    }

    /// The request was served by `endpoint`, which may be a fallback after the pick refused the connection.
    pub fn served_by(&mut self, endpoint: EndpointId) {
        self.served_by = Some(endpoint);
    }

    /// A chunk of the response body passed through; the first non-empty one is the first token.
    pub fn observe(&mut self, chunk: &[u8]) {
        if chunk.is_empty() {
            return;
        }
        if self.first_byte.is_none() {
            self.first_byte = Some(Instant::now());
            if let Some(claim) = self.claim.as_mut() {
                self.ledger.prefill_done(claim);
            }
        }
        self.usage
            .get_or_insert_with(|| UsageObserver::new(None))
            .observe(chunk);
    }

    /// The response ended normally.
    pub fn finish(mut self) {
        self.end(None);
    }

    /// The model server could not be reached or failed mid-response: recorded as 502 unless a status came back.
    pub fn fail(mut self, error: impl std::fmt::Display) {
        if self.status.is_none_or(|s| s < 400) {
            self.status = Some(502);
        }
        self.end(Some(format!("upstream failed: {error}")));
    }

    /// The gateway gave up waiting after `after`: no status is known.
    pub fn time_out(mut self, after: Duration) {
        self.status = None;
        self.end(Some(format!("timed out after {after:?}")));
    }

    /// The adapter's side went away before the response ended (`why` says which side); recorded as 499.
    pub fn abandon(mut self, why: &str) {
        self.status.get_or_insert(CLIENT_CLOSED);
        self.end(Some(why.to_owned()));
    }

    fn end(&mut self, note: Option<String>) {
        let Some(mut record) = self.record.take() else {
            return;
        };
        if let Some(served) = self.served_by.take()
            && record.endpoint.as_ref() != Some(&served)
        {
            record.reason = format!(
                "{}; served by fallback {served} after the primary refused",
                record.reason
            );
            record.endpoint = Some(served);
        }
        if let Some(note) = note {
            record.reason = format!("{}; {note}", record.reason);
        }
        record.status = self.status;
        record.ttft_ms = self
            .first_byte
            .map(|t| t.saturating_duration_since(self.received).as_secs_f64() * 1e3);
        record.duration_ms = Some(self.received.elapsed().as_secs_f64() * 1e3);
        if self.status.is_none_or(|s| s >= 500) {
            record.outcome = Outcome::Error;
        }
        if let Some(usage) = self.usage.as_mut().and_then(UsageObserver::finish) {
            record.prompt_tokens = Some(usage.prompt_tokens);
            record.completion_tokens = Some(usage.completion_tokens);
            record.cached_tokens = usage.cached_tokens;
        }
        self.recorder.record(*record);
        // After recording, so whoever sees the in-flight count drop also finds the record.
        if let Some(claim) = self.claim.take() {
            self.ledger.release(claim);
        }
        // Released only now, so a mirror's bound covers the whole exchange.
        self.slot.take();
    }
}

impl Drop for Flight {
    fn drop(&mut self) {
        if self.record.is_some() {
            self.status.get_or_insert(CLIENT_CLOSED);
            self.end(Some("client disconnected before the response ended".to_owned()));
        }
    }
}
