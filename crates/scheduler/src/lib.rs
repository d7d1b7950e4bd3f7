//! Pure routing core of Switchyard: admission → filters → weighted scorers → picker, returning a [`Decision`] with its reasons.
//!
//! Nothing in this crate reads the clock, a global RNG or the network: the caller passes `now`, an RNG and a
//! snapshot of the endpoints, which keeps every decision reproducible in tests and benchmarks.

pub mod config;
pub mod cycle;
pub mod decision;
pub mod endpoint;
pub mod filter;
pub mod picker;
pub mod prefix;
pub mod profile;
pub mod request;
pub mod saturation;
pub mod scorer;
pub mod split;

mod scheduler;

#[cfg(test)]
mod fixtures;

pub use audit::{Candidate, Criticality, EndpointId, LoraState, Outcome, PodName, PrefixMode, Scores};
pub use config::{ConfigError, SchedulerConfig};
pub use cycle::PrefixHit;
pub use decision::{Decision, Reason};
pub use endpoint::{Endpoint, EndpointMetrics};
pub use request::{CHARS_PER_TOKEN, Request, Tokenized};
pub use scheduler::Scheduler;
pub use split::{TargetWeight, pick_target};
