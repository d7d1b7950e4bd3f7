//! Every transition of the guarded-release state machine, on hand-built windows.

use api::canary::{CanaryLimits, CanaryReleaseSpec, CanaryReleaseStatus, Control, Phase};

use super::*;

fn spec() -> CanaryReleaseSpec {
    CanaryReleaseSpec {
        model_ref: "qwq".into(),
        stable: "qwq-32b".into(),
        canary: "qwq-32b-v2".into(),
        steps: Some(vec![10, 50, 100]),
        hold: Some("30s".into()),
        min_requests: Some(20),
        limits: CanaryLimits::default(),
        control: Control::Run,
    }
}

fn at(seconds: i64) -> Timestamp {
    Timestamp::from_second(1_750_000_000 + seconds).unwrap()
}

fn healthy(n: u64) -> Window {
    Window {
        ok: n,
        errors: 0,
        sheds: 0,
        ttft_p90_ms: Some(200.0),
    }
}

fn measured(stable: Window, canary: Window) -> Measurement {
    Measurement::Measured {
        stable,
        canary,
        since: at(0),
    }
}

fn run(spec: &CanaryReleaseSpec, status: &CanaryReleaseStatus, measurement: Measurement, now: i64) -> Output {
    evaluate(&Input {
        spec,
        status,
        model: Ok(Vec::new()),
        measurement,
        now: at(now),
        operator: "alice",
    })
}

/// A release holding step `index` (percent `percent`) since t=0.
fn holding(index: u32, percent: u32) -> CanaryReleaseStatus {
    CanaryReleaseStatus {
        phase: Phase::Progressing,
        step: Some(index),
        canary_percent: percent,
        step_started_at: Some(Time(at(0))),
        ..CanaryReleaseStatus::default()
    }
}

#[test]
fn pending_applies_the_first_step() {
    let out = run(
        &spec(),
        &CanaryReleaseStatus::default(),
        Measurement::Unavailable("x".into()),
        0,
    );
    assert_eq!(out.apply_percent, Some(10));
    assert!(out.new_window);
    assert_eq!(
        (out.status.phase, out.status.step, out.status.canary_percent),
        (Phase::Progressing, Some(0), 10)
    );
    assert_eq!(out.status.step_started_at, Some(Time(at(0))));
    let event = out.status.history.last().unwrap();
    assert_eq!(
        (event.from_percent, event.to_percent, event.actor.as_str()),
        (0, 10, "controller")
    );
    let ready = out.status.conditions.iter().find(|c| c.type_ == "Ready").unwrap();
    assert_eq!((ready.status.as_str(), ready.reason.as_str()), ("True", "Progressing"));
}

#[test]
fn a_step_is_held_for_the_hold_time_then_advances_with_the_numbers() {
    let status = holding(0, 10);
    let early = run(&spec(), &status, measured(healthy(500), healthy(50)), 29);
    assert_eq!(early.apply_percent, None);
    assert_eq!(early.status.phase, Phase::Progressing);
    assert!(
        early.status.message.starts_with("holding 10 %"),
        "{}",
        early.status.message
    );
    assert_eq!(early.status.canary.as_ref().unwrap().requests, 50);

    let out = run(&spec(), &status, measured(healthy(500), healthy(50)), 30);
    assert_eq!(out.apply_percent, Some(50));
    assert!(out.new_window);
    assert_eq!((out.status.step, out.status.canary_percent), (Some(1), 50));
    assert_eq!(out.status.step_started_at, Some(Time(at(30))));
    let reason = &out.status.history.last().unwrap().reason;
    assert!(
        reason.starts_with("10 % → 50 %: 50 canary responses within limits"),
        "{reason}"
    );
    assert!(reason.contains("TTFT P90 200 ms vs stable 200 ms"), "{reason}");
}

#[test]
fn the_step_before_100_promotes() {
    let out = run(&spec(), &holding(1, 50), measured(healthy(100), healthy(100)), 31);
    assert_eq!(out.apply_percent, Some(100));
    assert_eq!((out.status.phase, out.status.canary_percent), (Phase::Promoted, 100));
    assert!(
        out.status
            .history
            .last()
            .unwrap()
            .reason
            .starts_with("promoted after 50 %")
    );
}

#[test]
fn too_few_requests_holds_longer_and_says_so_once() {
    let status = holding(0, 10);
    let out = run(&spec(), &status, measured(healthy(500), healthy(12)), 60);
    assert_eq!(out.apply_percent, None);
    assert_eq!(out.status.phase, Phase::Progressing);
    assert!(
        out.status
            .message
            .starts_with("hold extended at 10 %: canary has 12 of the 20"),
        "{}",
        out.status.message
    );
    assert_eq!(out.status.history.len(), 1);
    let again = run(&spec(), &out.status, measured(healthy(600), healthy(15)), 70);
    assert_eq!(again.status.history.len(), 1, "the extension is recorded once per step");
    let done = run(&spec(), &again.status, measured(healthy(900), healthy(20)), 80);
    assert_eq!(done.apply_percent, Some(50));
}

#[test]
fn a_breach_during_hold_rolls_back_immediately() {
    let slow = Window {
        ttft_p90_ms: Some(400.0),
        ..healthy(10)
    };
    let out = run(&spec(), &holding(1, 50), measured(healthy(100), slow), 3);
    assert_eq!(out.apply_percent, Some(0));
    assert_eq!((out.status.phase, out.status.canary_percent), (Phase::RolledBack, 0));
    let event = out.status.history.last().unwrap();
    assert_eq!(
        (event.from_percent, event.to_percent, event.phase),
        (50, 0, Phase::RolledBack)
    );
    assert!(event.reason.contains("maxTtftP90Ratio"), "{}", event.reason);
    assert!(
        event.reason.contains("400 ms is 2.00× stable's 200 ms"),
        "{}",
        event.reason
    );
    let degraded = out.status.conditions.iter().find(|c| c.type_ == "Degraded").unwrap();
    assert_eq!(degraded.status, "True");
}

#[test]
fn one_bad_response_is_not_enough_to_roll_back() {
    let one_failure = Window {
        ok: 0,
        errors: 1,
        ..Window::default()
    };
    let out = run(&spec(), &holding(0, 10), measured(healthy(100), one_failure), 3);
    assert_eq!(out.apply_percent, None);
    assert_eq!(out.status.phase, Phase::Progressing);
}

#[test]
fn error_and_shed_limits_are_relative_to_stable() {
    let stable = Window {
        ok: 90,
        errors: 10,
        ..healthy(0)
    };
    let within = Window {
        ok: 88,
        errors: 12,
        ..healthy(0)
    };
    assert_eq!(breach(&spec(), &stable, &within), None, "12 % vs 10 % + 2 %");
    let failing = Window {
        ok: 80,
        errors: 20,
        ..healthy(0)
    };
    let reason = breach(&spec(), &stable, &failing).unwrap();
    assert!(reason.contains("maxErrorRateIncrease"), "{reason}");
    assert!(reason.contains("20.0 % (20 of 100)"), "{reason}");

    let shedding = Window {
        sheds: 20,
        ..healthy(80)
    };
    let reason = breach(&spec(), &healthy(100), &shedding).unwrap();
    assert!(
        reason.contains("maxShedRateIncrease") && reason.contains("20.0 %"),
        "{reason}"
    );
}

#[test]
fn stable_without_ttft_is_not_compared_and_that_is_said() {
    let stable = Window {
        ttft_p90_ms: None,
        ..healthy(0)
    };
    let out = run(&spec(), &holding(0, 10), measured(stable, healthy(30)), 30);
    assert_eq!(out.apply_percent, Some(50));
    let reason = &out.status.history.last().unwrap().reason;
    assert!(reason.contains("stable has no TTFT in the window"), "{reason}");
}

#[test]
fn missing_metrics_hold_and_never_advance() {
    let out = run(
        &spec(),
        &holding(0, 10),
        Measurement::Unavailable("127.0.0.1:9 refused".into()),
        600,
    );
    assert_eq!(out.apply_percent, None);
    assert_eq!(out.status.phase, Phase::Progressing);
    assert!(
        out.status.message.contains("no metrics (127.0.0.1:9 refused)"),
        "{}",
        out.status.message
    );
}

#[test]
fn pause_holds_resume_restarts_the_window() {
    let mut paused_spec = spec();
    paused_spec.control = Control::Pause;
    let out = run(&paused_spec, &holding(0, 10), measured(healthy(500), healthy(500)), 100);
    assert_eq!((out.status.phase, out.apply_percent), (Phase::Paused, None));
    let event = out.status.history.last().unwrap();
    assert_eq!((event.actor.as_str(), event.phase), ("alice", Phase::Paused));
    let still = run(&paused_spec, &out.status, measured(healthy(500), healthy(500)), 200);
    assert_eq!((still.status.phase, still.apply_percent), (Phase::Paused, None));
    assert_eq!(still.status.history.len(), 1);

    let resumed = run(&spec(), &still.status, measured(healthy(500), healthy(500)), 300);
    assert_eq!(
        (resumed.status.phase, resumed.apply_percent),
        (Phase::Progressing, None)
    );
    assert!(resumed.new_window);
    assert_eq!(resumed.status.step_started_at, Some(Time(at(300))));
    assert!(
        resumed
            .status
            .history
            .last()
            .unwrap()
            .reason
            .starts_with("resumed by alice")
    );
}

#[test]
fn pause_still_rolls_back() {
    let mut paused_spec = spec();
    paused_spec.control = Control::Pause;
    let mut status = holding(1, 50);
    status.phase = Phase::Paused;
    let failing = Window {
        ok: 50,
        errors: 50,
        ..healthy(0)
    };
    let out = run(&paused_spec, &status, measured(healthy(100), failing), 5);
    assert_eq!((out.status.phase, out.apply_percent), (Phase::RolledBack, Some(0)));
}

#[test]
fn promote_and_abort_act_at_once_in_the_operators_name() {
    let mut s = spec();
    s.control = Control::Promote;
    let out = run(&s, &holding(0, 10), Measurement::Unavailable("x".into()), 1);
    assert_eq!(
        (out.status.phase, out.status.canary_percent, out.apply_percent),
        (Phase::Promoted, 100, Some(100))
    );
    assert_eq!(out.status.history.last().unwrap().actor, "alice");

    s.control = Control::Abort;
    let out = run(&s, &holding(1, 50), Measurement::Unavailable("x".into()), 1);
    assert_eq!(
        (out.status.phase, out.status.canary_percent, out.apply_percent),
        (Phase::Aborted, 0, Some(0))
    );
    assert_eq!(out.status.history.last().unwrap().reason, "aborted by alice at 50 %");
}

#[test]
fn terminal_phases_are_sticky() {
    for (phase, percent) in [(Phase::Promoted, 100), (Phase::RolledBack, 0), (Phase::Aborted, 0)] {
        let status = CanaryReleaseStatus {
            phase,
            canary_percent: percent,
            ..holding(1, percent)
        };
        for control in [Control::Run, Control::Pause, Control::Promote, Control::Abort] {
            let mut s = spec();
            s.control = control;
            let failing = Window {
                errors: 100,
                ..healthy(0)
            };
            let out = run(&s, &status, measured(healthy(100), failing), 1000);
            assert_eq!(out.apply_percent, None, "{phase:?} moved weights on {control:?}");
            assert_eq!((out.status.phase, out.status.canary_percent), (phase, percent));
            assert!(out.status.history.is_empty());
        }
    }
}

#[test]
fn invalid_spec_or_model_is_invalid_until_fixed() {
    let mut bad = spec();
    bad.steps = Some(vec![50, 10]);
    let out = run(
        &bad,
        &CanaryReleaseStatus::default(),
        Measurement::Unavailable("x".into()),
        0,
    );
    assert_eq!((out.status.phase, out.apply_percent), (Phase::Invalid, None));
    assert!(out.status.message.contains("spec.steps[1]"), "{}", out.status.message);

    let missing = evaluate(&Input {
        spec: &spec(),
        status: &out.status,
        model: Err("InferenceModel default/qwq has no target qwq-32b-v2".into()),
        measurement: Measurement::Unavailable("x".into()),
        now: at(1),
        operator: "alice",
    });
    assert_eq!(missing.status.phase, Phase::Invalid);
    assert_eq!(
        missing.status.message,
        "InferenceModel default/qwq has no target qwq-32b-v2"
    );
    assert_eq!(missing.status.history.len(), 2);

    let fixed = run(&spec(), &missing.status, Measurement::Unavailable("x".into()), 2);
    assert_eq!(
        (fixed.status.phase, fixed.apply_percent),
        (Phase::Progressing, Some(10))
    );
}

#[test]
fn other_targets_are_named_in_the_message() {
    let out = evaluate(&Input {
        spec: &spec(),
        status: &CanaryReleaseStatus::default(),
        model: Ok(vec!["qwq-32b-old".into()]),
        measurement: Measurement::Unavailable("x".into()),
        now: at(0),
        operator: "alice",
    });
    assert!(
        out.status
            .message
            .contains("other targets qwq-32b-old are held at weight 0"),
        "{}",
        out.status.message
    );
}

#[test]
fn a_restart_mid_step_restarts_the_hold_from_the_new_baseline() {
    let out = evaluate(&Input {
        spec: &spec(),
        status: &holding(0, 10),
        model: Ok(Vec::new()),
        measurement: Measurement::Measured {
            stable: healthy(100),
            canary: healthy(100),
            since: at(100),
        },
        now: at(110),
        operator: "alice",
    });
    assert_eq!(out.apply_percent, None, "only 10 s of the new window have passed");
}

#[test]
fn history_is_capped() {
    let mut status = holding(0, 10);
    for i in 0..MAX_HISTORY {
        status.history.push(ReleaseEvent {
            time: Time(at(i as i64)),
            from_percent: 10,
            to_percent: 10,
            phase: Phase::Progressing,
            actor: "controller".into(),
            reason: format!("old {i}"),
        });
    }
    let out = run(&spec(), &status, measured(healthy(100), healthy(100)), 30);
    assert_eq!(out.status.history.len(), MAX_HISTORY);
    assert_eq!(out.status.history[0].reason, "old 1");
}
