//! Tail-delivery latency: when each recent append was taken, so a consumer at the tail can tell
//! how long its records took from the shard taking the append to the consumer being handed them.
//!
//! Why: append latency alone says nothing of the live path's other half. A consumer following
//! the tail waits for the write, the readable event, its task's turn in the live queue and its
//! channel; replay competes for each of those (the CPU, the io_uring). The controller holds this
//! latency to the budget too (`replay::ReplayControl::record_tail`).
//!
//! Only partitions someone follows keep marks: the shard creates a partition's `TailMarks` when
//! a consumer subscribes and drops them with its last subscription. Each append pushes one mark
//! (its offsets and the instant the shard took it); at most `TAIL_MARKS_MAX` are kept, so a
//! consumer further behind than that many appends gets no sample (its lag is in the consumer
//! metrics). A consumer counts as at the tail once it has caught up with the readable end
//! once: a consumer reading history from the beginning is not measured until then.

use std::collections::VecDeque;
use std::time::Instant;

/// Appends remembered per followed partition.
pub(crate) const TAIL_MARKS_MAX: usize = 1024;

/// The most recent appends of one partition: `[base, next)` offsets and when the shard took it.
#[derive(Debug, Default)]
pub(crate) struct TailMarks {
    marks: VecDeque<(u64, u64, Instant)>,
}

impl TailMarks {
    /// Remembers an append of `[base, next)` taken at `at`; the oldest mark goes past the bound.
    pub(crate) fn push(&mut self, base: u64, next: u64, at: Instant) {
        if self.marks.len() == TAIL_MARKS_MAX {
            self.marks.pop_front();
        }
        self.marks.push_back((base, next, at));
    }

    /// When the shard took the append holding `offset`, if it is among the remembered ones.
    /// Newest first: a consumer at the tail asks about the last few.
    pub(crate) fn taken_at(&self, offset: u64) -> Option<Instant> {
        self.marks
            .iter()
            .rev()
            .take_while(|(_, next, _)| *next > offset)
            .find(|(base, _, _)| *base <= offset)
            .map(|(_, _, at)| *at)
    }
}

#[cfg(test)]
mod tests {
    use std::time::{Duration, Instant};

    use super::*;

    #[test]
    fn marks_find_the_append_holding_an_offset_and_forget_the_oldest() {
        #[allow(clippy::disallowed_methods)] // A fixed origin; the test moves time by hand.
        let t0 = Instant::now();
        let at = |ms: u64| t0 + Duration::from_millis(ms);
        let mut marks = TailMarks::default();
        marks.push(0, 10, at(1));
        marks.push(10, 11, at(2));
        marks.push(11, 50, at(3));
        assert_eq!(marks.taken_at(0), Some(at(1)));
        assert_eq!(marks.taken_at(9), Some(at(1)));
        assert_eq!(marks.taken_at(10), Some(at(2)));
        assert_eq!(marks.taken_at(49), Some(at(3)));
        assert_eq!(marks.taken_at(50), None, "not appended yet");
        for i in 0..TAIL_MARKS_MAX as u64 {
            marks.push(50 + i, 51 + i, at(10 + i));
        }
        assert_eq!(marks.marks.len(), TAIL_MARKS_MAX, "bounded");
        assert_eq!(marks.taken_at(0), None, "forgotten: older than the bound");
        assert_eq!(marks.taken_at(50), Some(at(10)));
    }
}
