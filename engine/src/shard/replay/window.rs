//! The controller's sliding windows of live latency: one histogram per tick, the last
//! `SLOTS` ticks merged for each judgement.

use super::*;

/// Live latencies of the last second, one histogram per tick: a sample stays in the window for
/// `SLOTS` ticks, then its slot is reset.
pub(crate) struct LiveWindow {
    slots: Vec<hdrhistogram::Histogram<u64>>,
    current: usize,
    merged: hdrhistogram::Histogram<u64>,
}

impl LiveWindow {
    pub(crate) fn new() -> LiveWindow {
        LiveWindow {
            slots: (0..SLOTS).map(|_| histogram()).collect(),
            current: 0,
            merged: histogram(),
        }
    }

    pub(crate) fn record(&mut self, ns: u64) {
        self.slots[self.current].saturating_record(ns);
    }

    pub(crate) fn record_n(&mut self, ns: u64, count: u64) {
        self.slots[self.current].saturating_record_n(ns, count);
    }

    /// The current tick's samples so far.
    pub(super) fn slot(&self) -> &hdrhistogram::Histogram<u64> {
        &self.slots[self.current]
    }

    /// The p99 and sample count of the last `SLOTS` ticks (this one included); then the window
    /// moves one tick, dropping the oldest tick's samples.
    pub(crate) fn advance(&mut self) -> (u64, u64) {
        let LiveWindow { slots, current, merged } = self;
        merged.reset();
        for slot in slots.iter() {
            let _ = merged.add(slot);
        }
        let out = (merged.value_at_quantile(0.99), merged.len());
        *current = (*current + 1) % SLOTS;
        slots[*current].reset();
        out
    }
}

pub(super) fn histogram() -> hdrhistogram::Histogram<u64> {
    hdrhistogram::Histogram::new_with_bounds(1_000, 60_000_000_000, 2)
        .expect("static histogram bounds are valid")
}
