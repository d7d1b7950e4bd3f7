//! The guarded-release state machine: given the spec, the current status, the time and what the gateway measured
//! over the current step's window, decide the next status and the canary weight to apply. Pure: no clock, no IO.
//!
//! ```text
//!  Pending ──first step──► Progressing ◄──Run── Paused
//!     │                     │  hold over, enough canary responses, within limits → next step
//!     │                     │  next step is 100 → Promoted
//!     │                     │  any limit broken (even mid-hold, even Paused) → RolledBack (0 %)
//!     └─ spec.control: Promote → Promoted (100 %), Abort → Aborted (0 %)
//!  Invalid (spec or InferenceModel unusable) → Pending again once both are fixed
//! ```

use api::canary::{
    CanaryReleaseSpec, CanaryReleaseStatus, Control, MAX_HISTORY, Phase, ReleaseEvent, TargetObservation,
};
use k8s_openapi::{
    apimachinery::pkg::apis::meta::v1::{Condition, Time},
    jiff::Timestamp,
};

/// Who the controller names as the actor of its own decisions.
pub const CONTROLLER_ACTOR: &str = "controller";

/// A breach needs at least this many canary responses (or minRequests, if smaller), so that one slow or failed
/// request early in a step cannot roll a release back.
pub const MIN_BREACH_SAMPLE: u64 = 10;

/// What the gateway counted for one target model over the window.
#[derive(Clone, Copy, Debug, Default, PartialEq)]
pub struct Window {
    /// Responses that the model server answered (successfully).
    pub ok: u64,
    /// Responses that failed: 5xx from the model server, a failed upstream, or no capacity.
    pub errors: u64,
    /// Requests shed with 429 before reaching a model server.
    pub sheds: u64,
    /// TTFT P90 in milliseconds, when any response in the window had a TTFT.
    pub ttft_p90_ms: Option<f64>,
}

impl Window {
    /// Responses, failed ones included.
    pub fn responses(&self) -> u64 {
        self.ok + self.errors
    }

    pub fn error_rate(&self) -> f64 {
        ratio(self.errors, self.responses())
    }

    /// Sheds over everything sent to this target (shed or answered).
    pub fn shed_rate(&self) -> f64 {
        ratio(self.sheds, self.responses() + self.sheds)
    }

    pub fn observation(&self) -> TargetObservation {
        TargetObservation {
            requests: self.responses(),
            ttft_p90_ms: self.ttft_p90_ms.map(|v| (v * 10.0).round() / 10.0),
            error_rate: round4(self.error_rate()),
            shed_rate: round4(self.shed_rate()),
        }
    }
}

fn ratio(n: u64, d: u64) -> f64 {
    if d == 0 { 0.0 } else { n as f64 / d as f64 }
}

fn round4(v: f64) -> f64 {
    (v * 10_000.0).round() / 10_000.0
}

/// The gateway's measurement of the current window, or why there is none.
#[derive(Clone, Debug, PartialEq)]
pub enum Measurement {
    Measured {
        stable: Window,
        canary: Window,
        /// When the window's baseline was taken: the step's start, or later when the controller restarted mid-step
        /// (the baseline lives in memory, so a restart restarts the step's window).
        since: Timestamp,
    },
    /// No data: a gateway's /metrics was unreachable or unparsable. The release holds; it never advances on it.
    Unavailable(String),
}

/// Everything one evaluation needs.
#[derive(Clone, Debug)]
pub struct Input<'a> {
    pub spec: &'a CanaryReleaseSpec,
    pub status: &'a CanaryReleaseStatus,
    /// Whether the InferenceModel can be released: `Ok` with the other targets (set to weight 0), or why not.
    pub model: Result<Vec<String>, String>,
    pub measurement: Measurement,
    pub now: Timestamp,
    /// Who set `spec.control` (the dashboard user), named in the history for operator actions.
    pub operator: &'a str,
}

/// What one evaluation decided.
#[derive(Clone, Debug, PartialEq)]
pub struct Output {
    pub status: CanaryReleaseStatus,
    /// Canary percent to apply to the InferenceModel's weights now, when it changed.
    pub apply_percent: Option<u32>,
    /// A new measurement window starts now (a new step, or a resume): take a fresh baseline.
    pub new_window: bool,
}

/// Evaluates a release once.
pub fn evaluate(input: &Input<'_>) -> Output {
    let mut eval = Eval {
        status: input.status.clone(),
        now: input.now,
        apply_percent: None,
        new_window: false,
    };
    eval.run(input);
    eval.status.conditions = conditions(&input.status.conditions, &eval.status, input.now);
    Output {
        status: eval.status,
        apply_percent: eval.apply_percent,
        new_window: eval.new_window,
    }
}

struct Eval {
    status: CanaryReleaseStatus,
    now: Timestamp,
    apply_percent: Option<u32>,
    new_window: bool,
}

impl Eval {
    fn run(&mut self, input: &Input<'_>) {
        let spec = input.spec;
        if self.status.phase.is_finished() {
            return;
        }
        if let Err(errors) = spec.validate() {
            let message = errors.iter().map(ToString::to_string).collect::<Vec<_>>().join("; ");
            return self.invalid(format!("invalid spec: {message}"));
        }
        let others = match &input.model {
            Ok(others) => others,
            Err(problem) => return self.invalid(problem.clone()),
        };
        if self.status.phase == Phase::Invalid {
            self.event(
                Phase::Pending,
                CONTROLLER_ACTOR,
                "the spec and the InferenceModel are valid again".into(),
            );
            self.status.phase = Phase::Pending;
            self.status.step = None;
        }
        let note = if others.is_empty() {
            String::new()
        } else {
            format!(" (other targets {} are held at weight 0)", others.join(", "))
        };

        match spec.control {
            Control::Abort => {
                let reason = format!("aborted by {} at {} %", input.operator, self.status.canary_percent);
                return self.finish(Phase::Aborted, 0, input.operator, reason);
            }
            Control::Promote => {
                let reason = format!("promoted by {} from {} %", input.operator, self.status.canary_percent);
                return self.finish(Phase::Promoted, 100, input.operator, reason);
            }
            Control::Run | Control::Pause => {}
        }

        let steps = spec.steps();
        let Some(index) = self.status.step else {
            if spec.control == Control::Pause {
                if self.status.phase != Phase::Paused {
                    self.event(
                        Phase::Paused,
                        input.operator,
                        format!("paused by {} before the first step", input.operator),
                    );
                }
                self.status.phase = Phase::Paused;
                self.status.message = format!("paused before the first step{note}");
                return;
            }
            return self.start_step(
                0,
                steps[0],
                CONTROLLER_ACTOR,
                format!("first step: canary gets {} %", steps[0]),
                &note,
            );
        };
        let index = (index as usize).min(steps.len() - 1);

        // Limits are enforced in every active phase, paused included, before anything else.
        let (stable, canary, since) = match &input.measurement {
            Measurement::Measured { stable, canary, since } => (*stable, *canary, *since),
            Measurement::Unavailable(why) => {
                self.control_phase(input, &note);
                self.status.message = format!("holding at {} %: no metrics ({why}){note}", self.status.canary_percent);
                return;
            }
        };
        self.status.stable = Some(stable.observation());
        self.status.canary = Some(canary.observation());
        let min_requests = u64::from(spec.min_requests());
        if canary.responses() >= min_requests.min(MIN_BREACH_SAMPLE)
            && let Some(breach) = breach(spec, &stable, &canary)
        {
            let from = self.status.canary_percent;
            let reason = format!("rolled back from {from} %: {breach}");
            return self.finish(Phase::RolledBack, 0, CONTROLLER_ACTOR, reason);
        }
        if self.control_phase(input, &note) {
            return;
        }

        let started = [self.status.step_started_at.as_ref().map(|t| t.0), Some(since)]
            .into_iter()
            .flatten()
            .max()
            .unwrap_or(self.now);
        let held = self.now.duration_since(started).as_secs_f64().max(0.0);
        let hold = spec.hold().as_secs_f64();
        let percent = self.status.canary_percent;
        if held < hold {
            self.status.message = format!(
                "holding {percent} % for {:.0} s more; canary {} of {min_requests} responses{note}",
                hold - held,
                canary.responses()
            );
            return;
        }
        if canary.responses() < min_requests {
            let message = format!(
                "hold extended at {percent} %: canary has {} of the {min_requests} responses a step needs",
                canary.responses()
            );
            let already = self.status.history.last().is_some_and(|e| {
                e.reason.starts_with("hold extended") && e.to_percent == percent && e.phase == Phase::Progressing
            });
            if !already {
                self.event(Phase::Progressing, CONTROLLER_ACTOR, message.clone());
            }
            self.status.message = format!("{message}{note}");
            return;
        }
        let health = healthy_summary(spec, &stable, &canary);
        match steps.get(index + 1) {
            Some(&100) | None => self.finish(
                Phase::Promoted,
                100,
                CONTROLLER_ACTOR,
                format!("promoted after {percent} %: {health}"),
            ),
            Some(&next) => self.start_step(
                index + 1,
                next,
                CONTROLLER_ACTOR,
                format!("{percent} % → {next} %: {health}"),
                &note,
            ),
        }
    }

    /// Applies `spec.control` Pause/Run to an active step; returns whether the release is paused.
    fn control_phase(&mut self, input: &Input<'_>, note: &str) -> bool {
        let percent = self.status.canary_percent;
        match (input.spec.control, self.status.phase) {
            (Control::Pause, Phase::Paused) => {
                self.status.message = format!(
                    "paused at {percent} % by {}; limits are still enforced{note}",
                    input.operator
                );
                true
            }
            (Control::Pause, _) => {
                self.event(
                    Phase::Paused,
                    input.operator,
                    format!("paused by {} at {percent} %", input.operator),
                );
                self.status.phase = Phase::Paused;
                self.status.message = format!(
                    "paused at {percent} % by {}; limits are still enforced{note}",
                    input.operator
                );
                true
            }
            (_, Phase::Paused) => {
                self.event(
                    Phase::Progressing,
                    input.operator,
                    format!(
                        "resumed by {} at {percent} %; the step's measurement starts again",
                        input.operator
                    ),
                );
                self.status.phase = Phase::Progressing;
                self.status.step_started_at = Some(Time(self.now));
                self.new_window = true;
                self.status.message = format!("resumed at {percent} %{note}");
                true
            }
            _ => false,
        }
    }

    fn start_step(&mut self, index: usize, percent: u32, actor: &str, reason: String, note: &str) {
        let from = self.status.canary_percent;
        self.status.phase = Phase::Progressing;
        self.status.step = Some(index as u32);
        self.status.canary_percent = percent;
        self.status.step_started_at = Some(Time(self.now));
        self.status.message = format!("holding {percent} %{note}");
        self.push(from, percent, Phase::Progressing, actor, reason);
        self.apply_percent = Some(percent);
        self.new_window = true;
    }

    fn finish(&mut self, phase: Phase, percent: u32, actor: &str, reason: String) {
        let from = self.status.canary_percent;
        self.status.phase = phase;
        self.status.canary_percent = percent;
        self.status.message = reason.clone();
        self.push(from, percent, phase, actor, reason);
        self.apply_percent = Some(percent);
    }

    fn invalid(&mut self, message: String) {
        if self.status.phase != Phase::Invalid || self.status.message != message {
            self.event(Phase::Invalid, CONTROLLER_ACTOR, message.clone());
        }
        self.status.phase = Phase::Invalid;
        self.status.message = message;
    }

    /// A history entry that does not move the weights.
    fn event(&mut self, phase: Phase, actor: &str, reason: String) {
        let percent = self.status.canary_percent;
        self.push(percent, percent, phase, actor, reason);
    }

    fn push(&mut self, from: u32, to: u32, phase: Phase, actor: &str, reason: String) {
        self.status.history.push(ReleaseEvent {
            time: Time(self.now),
            from_percent: from,
            to_percent: to,
            phase,
            actor: actor.to_owned(),
            reason,
        });
        let excess = self.status.history.len().saturating_sub(MAX_HISTORY);
        self.status.history.drain(..excess);
    }
}

/// The first limit the canary breaks, as a sentence naming the limit and the numbers.
pub fn breach(spec: &CanaryReleaseSpec, stable: &Window, canary: &Window) -> Option<String> {
    let limits = &spec.limits;
    if let (Some(c), Some(s)) = (canary.ttft_p90_ms, stable.ttft_p90_ms) {
        let ratio = limits.ttft_p90_ratio();
        if s > 0.0 && c > ratio * s {
            return Some(format!(
                "canary TTFT P90 {c:.0} ms is {:.2}× stable's {s:.0} ms, above maxTtftP90Ratio {ratio}×",
                c / s
            ));
        }
    }
    let (ce, se, limit) = (canary.error_rate(), stable.error_rate(), limits.error_rate_increase());
    if ce > se + limit {
        return Some(format!(
            "canary error rate {} ({} of {}) exceeds stable's {} by more than maxErrorRateIncrease {}",
            pct(ce),
            canary.errors,
            canary.responses(),
            pct(se),
            pct(limit)
        ));
    }
    let (cs, ss, limit) = (canary.shed_rate(), stable.shed_rate(), limits.shed_rate_increase());
    if cs > ss + limit {
        return Some(format!(
            "canary shed rate {} ({} shed) exceeds stable's {} by more than maxShedRateIncrease {}",
            pct(cs),
            canary.sheds,
            pct(ss),
            pct(limit)
        ));
    }
    None
}

/// Why a step passed, with the numbers it passed on.
fn healthy_summary(spec: &CanaryReleaseSpec, stable: &Window, canary: &Window) -> String {
    let ttft = match (canary.ttft_p90_ms, stable.ttft_p90_ms) {
        (Some(c), Some(s)) => format!(
            "canary TTFT P90 {c:.0} ms vs stable {s:.0} ms (limit {}×)",
            spec.limits.ttft_p90_ratio()
        ),
        (Some(c), None) => format!("canary TTFT P90 {c:.0} ms, stable has no TTFT in the window to compare with"),
        (None, _) => "canary has no TTFT in the window".to_owned(),
    };
    format!(
        "{} canary responses within limits; {ttft}, error rate {} vs {}, shed rate {} vs {}",
        canary.responses(),
        pct(canary.error_rate()),
        pct(stable.error_rate()),
        pct(canary.shed_rate()),
        pct(stable.shed_rate())
    )
}

fn pct(fraction: f64) -> String {
    format!("{:.1} %", fraction * 100.0)
}

/// Ready (progressing, paused or promoted) and Degraded (rolled back or invalid), keeping lastTransitionTime when
/// a condition's status did not flip.
fn conditions(current: &[Condition], status: &CanaryReleaseStatus, now: Timestamp) -> Vec<Condition> {
    let (ready, ready_reason) = match status.phase {
        Phase::Pending => ("False", "Pending"),
        Phase::Progressing => ("True", "Progressing"),
        Phase::Paused => ("True", "Paused"),
        Phase::Promoted => ("True", "Promoted"),
        Phase::RolledBack => ("False", "RolledBack"),
        Phase::Aborted => ("False", "Aborted"),
        Phase::Invalid => ("False", "Invalid"),
    };
    let degraded = matches!(status.phase, Phase::RolledBack | Phase::Invalid);
    let desired = [
        ("Ready", ready, ready_reason),
        ("Degraded", if degraded { "True" } else { "False" }, ready_reason),
    ];
    desired
        .into_iter()
        .map(|(type_, state, reason)| {
            let previous = current.iter().find(|c| c.type_ == type_);
            let last_transition_time = match previous {
                Some(c) if c.status == state => c.last_transition_time.clone(),
                _ => Time(now),
            };
            Condition {
                last_transition_time,
                message: status.message.clone(),
                observed_generation: None,
                reason: reason.to_owned(),
                status: state.to_owned(),
                type_: type_.to_owned(),
            }
        })
        .collect()
}

#[cfg(test)]
mod tests;
