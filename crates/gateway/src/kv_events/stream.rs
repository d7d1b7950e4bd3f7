//! The state of one pod's event stream: whether its sequence numbers are complete, so the precise index can be
//! trusted for that pod, or something was lost and the pod must be scored approximately until it is known again.
//!
//! Pure: the subscriber feeds it sequence numbers, replay results, decode failures and the time, and acts on what
//! it answers. The rules:
//! - the first batch of a fresh engine is sequence 0; a first batch past 0 asks for a replay from 0 (an engine the
//!   gateway met mid-stream), and without a complete one the pod stays approximate;
//! - a gap asks for a replay of the missing range; if the replay cannot cover it, the pod turns approximate;
//! - a sequence number going backwards is a restarted engine: its cache is empty, its state is dropped and, from
//!   sequence 0, it is precise again;
//! - an undecodable batch is a lost batch;
//! - a silent stream (no batch for the silence limit) is approximate until its next batch, which must continue
//!   the sequence;
//! - `AllBlocksCleared` makes a lost state whole again: the cache is known to be empty.

use std::time::{Duration, Instant};

/// How the pod is scored.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Mode {
    Precise,
    Approximate(Cause),
}

/// Why a pod is scored approximately.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Cause {
    /// No batch has arrived yet.
    NoEventsYet,
    /// Batches `from..to` were lost (a gap the replay could not fill, or an undecodable batch).
    Lost { from: u64, to: u64 },
    /// No batch for this long.
    Silent(Duration),
}

impl std::fmt::Display for Cause {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            Cause::NoEventsYet => f.write_str("no kv events received yet"),
            Cause::Lost { from, to } if to - from == 1 => write!(f, "kv event batch {from} was lost"),
            Cause::Lost { from, to } => write!(f, "kv event batches {from}..{to} were lost"),
            Cause::Silent(after) => write!(f, "no kv events for {after:?}"),
        }
    }
}

/// What the subscriber must do with a batch it just received.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    /// Apply it.
    Apply,
    /// Ask the replay socket for `from..` first (the batch itself is in that range), then apply in order.
    Replay { from: u64 },
    /// The engine restarted: drop the pod's blocks, then apply it.
    Restarted,
    /// Already applied (a replayed batch arriving live too); skip it.
    Duplicate,
}

/// One pod's stream.
#[derive(Clone, Debug)]
pub struct PodStream {
    /// The sequence number of the next batch, once any arrived.
    next: Option<u64>,
    mode: Mode,
    /// Whether everything since the engine started is known (so a recovery from silence may return to precise).
    whole: bool,
    last_batch: Option<Instant>,
}

impl Default for PodStream {
    fn default() -> PodStream {
        PodStream::new()
    }
}

impl PodStream {
    pub fn new() -> PodStream {
        PodStream {
            next: None,
            mode: Mode::Approximate(Cause::NoEventsYet),
            whole: false,
            last_batch: None,
        }
    }

    pub fn mode(&self) -> &Mode {
        &self.mode
    }

    /// A batch with sequence number `seq` arrived at `now`.
    pub fn received(&mut self, seq: u64, now: Instant) -> Verdict {
        self.last_batch = Some(now);
        match self.next {
            None if seq == 0 => self.accept(seq, true),
            None => Verdict::Replay { from: 0 },
            Some(next) if seq == next => self.accept(seq, self.whole),
            Some(next) if seq > next => Verdict::Replay { from: next },
            Some(_) if seq == 0 || self.replayed_past(seq) => {
                // Backwards: a new engine counting from its start.
                self.next = Some(seq + 1);
                self.whole = seq == 0;
                self.mode = if self.whole {
                    Mode::Precise
                } else {
                    Mode::Approximate(Cause::Lost { from: 0, to: seq })
                };
                Verdict::Restarted
            }
            Some(_) => Verdict::Duplicate,
        }
    }

    /// A replay asked for from `from` (because batch `live` arrived) answered with the contiguous run
    /// `first..=last` (`None`: nothing, or no replay socket). The subscriber applies what it got, in order, and the
    /// live batch too when the run does not reach it, then calls this.
    pub fn replayed(&mut self, from: u64, live: u64, got: Option<(u64, u64)>) {
        match got {
            Some((first, last)) if first <= from && last >= live => {
                let whole = self.whole || (self.next.is_none() && first == 0);
                self.next = Some(last + 1);
                self.whole = whole;
                self.mode = if whole {
                    Mode::Precise
                } else {
                    Mode::Approximate(Cause::Lost { from: 0, to: first })
                };
            }
            Some((first, _)) if first > from => self.lost(from, first, Some(live + 1)),
            _ => self.lost(from, live, Some(live + 1)),
        }
    }

    /// The batch `seq` could not be decoded: its events are lost.
    pub fn undecodable(&mut self, seq: u64) {
        self.lost(seq, seq + 1, Some(seq + 1));
    }

    /// A message without a readable sequence number arrived: whatever it carried is lost.
    pub fn malformed(&mut self) {
        let at = self.next.unwrap_or(0);
        self.lost(at, at + 1, None);
    }

    /// Called now and then: a stream silent for `limit` turns approximate until its next batch.
    pub fn check_silence(&mut self, now: Instant, limit: Duration) {
        if self.mode == Mode::Precise
            && let Some(last) = self.last_batch
            && now.saturating_duration_since(last) >= limit
        {
            self.mode = Mode::Approximate(Cause::Silent(limit));
        }
    }

    /// `AllBlocksCleared` was applied: the pod's cache is known to be empty, so its state is whole again.
    pub fn cleared(&mut self) {
        self.whole = true;
        self.mode = Mode::Precise;
    }

    fn accept(&mut self, seq: u64, whole: bool) -> Verdict {
        self.next = Some(seq + 1);
        self.whole = whole;
        if whole {
            self.mode = Mode::Precise;
        }
        Verdict::Apply
    }

    fn lost(&mut self, from: u64, to: u64, next: Option<u64>) {
        self.whole = false;
        self.mode = Mode::Approximate(Cause::Lost { from, to });
        if let Some(next) = next {
            self.next = Some(self.next.map_or(next, |n| n.max(next)));
        }
    }

    /// Whether `seq`, smaller than expected, is too far back to be a late duplicate of a replay.
    fn replayed_past(&self, seq: u64) -> bool {
        // Replays deliver batches before their live copies, so a live batch lagging by more than the batches
        // in flight is an engine that started again.
        self.next.is_some_and(|next| next - seq > REORDER_WINDOW)
    }
}

/// Live batches that may still arrive after their replayed copies.
const REORDER_WINDOW: u64 = 1024;

#[cfg(test)]
mod tests {
    use super::*;

    fn at(ms: u64) -> Instant {
        static START: std::sync::OnceLock<Instant> = std::sync::OnceLock::new();
        *START.get_or_init(Instant::now) + Duration::from_millis(ms)
    }

    #[test]
    fn a_fresh_engine_is_precise_from_its_first_batch() {
        let mut pod = PodStream::new();
        assert_eq!(pod.mode(), &Mode::Approximate(Cause::NoEventsYet));
        assert_eq!(pod.received(0, at(0)), Verdict::Apply);
        assert_eq!(pod.received(1, at(1)), Verdict::Apply);
        assert_eq!(pod.mode(), &Mode::Precise);
    }

    #[test]
    fn joining_mid_stream_asks_for_everything_and_stays_approximate_without_it() {
        let mut pod = PodStream::new();
        assert_eq!(pod.received(40, at(0)), Verdict::Replay { from: 0 });
        pod.replayed(0, 40, Some((0, 40)));
        assert_eq!(pod.mode(), &Mode::Precise);
        assert_eq!(pod.received(41, at(1)), Verdict::Apply);

        let mut late = PodStream::new();
        assert_eq!(late.received(40, at(0)), Verdict::Replay { from: 0 });
        // The bounded buffer only goes back to 30.
        late.replayed(0, 40, Some((30, 40)));
        assert_eq!(late.mode(), &Mode::Approximate(Cause::Lost { from: 0, to: 30 }));
        assert_eq!(late.received(41, at(1)), Verdict::Apply);
        assert!(matches!(late.mode(), Mode::Approximate(_)), "still incomplete");
        late.cleared();
        assert_eq!(late.mode(), &Mode::Precise);
    }

    #[test]
    fn a_gap_is_filled_by_a_replay_or_turns_the_pod_approximate() {
        let mut pod = PodStream::new();
        pod.received(0, at(0));
        assert_eq!(pod.received(3, at(1)), Verdict::Replay { from: 1 });
        pod.replayed(1, 3, Some((1, 3)));
        assert_eq!(pod.mode(), &Mode::Precise);
        // The live copy of a replayed batch is skipped.
        assert_eq!(pod.received(3, at(2)), Verdict::Duplicate);
        assert_eq!(pod.received(4, at(3)), Verdict::Apply);

        assert_eq!(pod.received(9, at(4)), Verdict::Replay { from: 5 });
        pod.replayed(5, 9, None);
        assert_eq!(pod.mode(), &Mode::Approximate(Cause::Lost { from: 5, to: 9 }));
        // The stream goes on after the loss without asking again.
        assert_eq!(pod.received(10, at(5)), Verdict::Apply);
    }

    #[test]
    fn a_restarted_engine_is_precise_again_from_sequence_zero() {
        let mut pod = PodStream::new();
        pod.received(0, at(0));
        pod.received(1, at(1));
        pod.undecodable(2);
        assert_eq!(pod.mode(), &Mode::Approximate(Cause::Lost { from: 2, to: 3 }));
        assert_eq!(pod.received(3, at(2)), Verdict::Apply);
        assert!(matches!(pod.mode(), Mode::Approximate(_)));
        assert_eq!(pod.received(0, at(3)), Verdict::Restarted);
        assert_eq!(pod.mode(), &Mode::Precise);
        assert_eq!(pod.received(1, at(4)), Verdict::Apply);
    }

    #[test]
    fn a_silent_stream_is_approximate_until_it_continues() {
        let mut pod = PodStream::new();
        pod.received(0, at(0));
        pod.check_silence(at(29_000), Duration::from_secs(30));
        assert_eq!(pod.mode(), &Mode::Precise);
        pod.check_silence(at(30_000), Duration::from_secs(30));
        assert_eq!(pod.mode(), &Mode::Approximate(Cause::Silent(Duration::from_secs(30))));
        assert_eq!(pod.received(1, at(31_000)), Verdict::Apply);
        assert_eq!(pod.mode(), &Mode::Precise);
    }
}
