//! Client-visible live latency: what producers see, carried from their threads to the shard's
//! live-latency controller.
//!
//! Why: the controller's shard-side windows (from the shard taking an append to its
//! acknowledgement, `replay`) cannot see the time a request waits in the shard's channel before
//! the request loop takes it, nor a client thread's wait for a CPU before it sees its
//! acknowledgement. During a rebuild those were most of the latency (issue 10: 27 ms at the
//! client while the shard-side p99 stayed inside the 5 ms budget, so the controller kept replay
//! at its full level). So the producer's handles (`PendingAck`, `PendingAcks`) record each
//! wait's latency, from the send to the moment the caller has the acknowledgement, here; the
//! controller drains it every tick into a window of its own and judges it like the others.
//!
//! A latency is counted in a log-linear bucket (8 per power of two: a value is known within
//! 12.5%, rounded up) of a fixed array of `CachePadded` atomic counters: one relaxed
//! `fetch_add` per acknowledgement, no lock, no allocation, no false sharing between buckets.
//! These are statistics that order nothing, so they use `std` atomics directly (not
//! `crate::sync`: no loom model depends on them).

use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Duration;

use crossbeam_utils::CachePadded;

/// Sub-buckets per power of two (3 bits of mantissa).
const SUB_BITS: u32 = 3;
const SUB: u64 = 1 << SUB_BITS;
/// Values at or past 2^`TOP_BIT` microseconds (about 19 hours) share the last bucket.
const TOP_BIT: u32 = 36;
/// Buckets: the values below `SUB` one each, then `SUB` per power of two up to `TOP_BIT`.
const BUCKETS: usize = ((TOP_BIT - SUB_BITS + 1) * SUB as u32) as usize;

/// Latencies in microseconds, counted per bucket until the controller drains them.
pub(crate) struct LatencyCounts {
    counts: Box<[CachePadded<AtomicU64>]>,
}

impl Default for LatencyCounts {
    fn default() -> Self {
        LatencyCounts {
            counts: (0..BUCKETS).map(|_| CachePadded::new(AtomicU64::new(0))).collect(),
        }
    }
}

impl std::fmt::Debug for LatencyCounts {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LatencyCounts").finish_non_exhaustive()
    }
}

/// The bucket of `us` microseconds.
fn bucket(us: u64) -> usize {
    let us = us.min((1 << TOP_BIT) - 1);
    if us < SUB {
        return us as usize;
    }
    let msb = 63 - us.leading_zeros();
    let sub = (us >> (msb - SUB_BITS)) & (SUB - 1);
    ((msb - SUB_BITS + 1) as u64 * SUB + sub) as usize
}

/// The highest value (microseconds) of bucket `index`: a p99 read from buckets is never lower
/// than the true one.
fn bucket_top(index: usize) -> u64 {
    let index = index as u64;
    if index < SUB {
        return index;
    }
    let msb = (index / SUB) as u32 + SUB_BITS - 1;
    let sub = index % SUB;
    let low = (SUB + sub) << (msb - SUB_BITS);
    low + (1 << (msb - SUB_BITS)) - 1
}

impl LatencyCounts {
    /// Counts one latency (any thread).
    pub(crate) fn record(&self, latency: Duration) {
        let us = u64::try_from(latency.as_micros()).unwrap_or(u64::MAX);
        self.counts[bucket(us)].fetch_add(1, Ordering::Relaxed);
    }

    /// Takes every count so far, calling `each(nanoseconds, count)` per non-empty bucket with
    /// the bucket's highest value.
    pub(crate) fn drain(&self, mut each: impl FnMut(u64, u64)) {
        for (index, count) in self.counts.iter().enumerate() {
            // A load first: most buckets are empty, and a swap would take their lines.
            if count.load(Ordering::Relaxed) == 0 {
                continue;
            }
            let n = count.swap(0, Ordering::Relaxed);
            if n > 0 {
                each(bucket_top(index).saturating_mul(1_000), n);
            }
        }
    }
}

/// What the clients of one shard saw; shared by the shard's `Life` (so every `Link` reaches it)
/// and its controller.
#[derive(Debug, Default)]
pub(crate) struct ClientLatency {
    /// From a producer's send to the caller holding its acknowledgement.
    pub(crate) ack: LatencyCounts,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn buckets_cover_every_value_in_order_and_round_up_by_at_most_an_eighth() {
        let mut last = 0;
        for us in (0..5_000u64).chain([1 << 20, (1 << 20) + 12_345, 1 << 35, u64::MAX]) {
            let b = bucket(us);
            assert!(b < BUCKETS, "{us}");
            assert!(b >= last || us >= 1 << 20, "monotone: {us}");
            last = b;
            let top = bucket_top(b);
            let us = us.min((1 << TOP_BIT) - 1);
            assert!(top >= us, "{us} in bucket {b} with top {top}");
            assert!(top - us <= us / 8, "{us}: top {top}");
            if b > 0 {
                assert!(bucket_top(b - 1) < us, "{us}: the bucket before ends below it");
            }
        }
    }

    #[test]
    fn drain_takes_the_counts_once() {
        let counts = LatencyCounts::default();
        for _ in 0..3 {
            counts.record(Duration::from_micros(9_000));
        }
        counts.record(Duration::from_micros(100));
        let mut seen = Vec::new();
        counts.drain(|ns, n| seen.push((ns, n)));
        assert_eq!(seen.len(), 2, "{seen:?}");
        assert_eq!(seen[0].1, 1);
        assert!((100_000..=112_500).contains(&seen[0].0), "{seen:?}");
        assert_eq!(seen[1].1, 3);
        assert!((9_000_000..=10_125_000).contains(&seen[1].0), "{seen:?}");
        let mut again = 0;
        counts.drain(|_, n| again += n);
        assert_eq!(again, 0, "drained");
    }
}
