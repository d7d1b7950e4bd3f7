//! The audit vocabulary of Switchyard: the record of every routing decision and its NDJSON wire form.
//!
//! A leaf crate on purpose. The scheduler fills in the candidates it judged; the gateway completes a [`Record`]
//! with the response and logs and ships it; the dashboard decodes and stores it. Each of them depends on this
//! crate and none on another's internals, so the one wire format cannot drift between writer and reader.

mod ids;
mod record;
pub mod wire;

pub use ids::{EndpointId, PodName};
pub use record::{
    Candidate, Criticality, LoraState, MAX_NAME_BYTES, Outcome, PrefixMode, Record, Scores, bounded_name,
};
