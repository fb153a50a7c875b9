//! A fold chasing the live tail (the parent module's doc, "Replay always catches up"): whether it
//! gains on the tail, and what the shard does when it does not.

use super::*;

/// Ticks between two judgements of a chase: a second.
pub(crate) const CHASE_TICKS: u64 = SLOTS as u64;

/// Whether a replay gains on the live tail: its lag (records between it and the readable end),
/// judged once a second of controller ticks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) struct Chase {
    tick: u64,
    lag: u64,
}

/// A chase's judgement (`Chase::look`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum ChaseStep {
    /// The lag shrank over the last second: the replay will catch up.
    Gaining,
    /// It did not, below the full level: raise the level (`ReplayControl::mark_behind`).
    Behind,
    /// It did not at the full level: replay's share cannot catch up; go on in the live queue.
    Promote,
}

impl Chase {
    pub(crate) fn new(tick: u64, lag: u64) -> Chase {
        Chase { tick, lag }
    }

    /// One look after a folded batch; a judgement at most once per `CHASE_TICKS`.
    pub(crate) fn look(&mut self, tick: u64, lag: u64, full_level: bool) -> Option<ChaseStep> {
        if tick < self.tick + CHASE_TICKS {
            return None;
        }
        let gaining = lag < self.lag;
        *self = Chase { tick, lag };
        Some(if gaining {
            ChaseStep::Gaining
        } else if full_level {
            ChaseStep::Promote
        } else {
            ChaseStep::Behind
        })
    }
}
