//! Waiting on views without polling: "has the served version folded these offsets" and "has this
//! rebuilt version been swapped in", answered by a condition variable that the shards notify when
//! a view partition folds a batch, catches up, fails or is dropped.
//!
//! Why a condition variable: the waiters are user threads (tests, the demo, the HTTP front end),
//! and the wake-up must come from the shard the moment the state changes, without the shard ever
//! blocking. The shard's side is one atomic load per folded batch while nobody waits; when someone
//! does, it takes the mutex only to notify (the waiter holds it just to re-check a few atomics).
//! No lost wake-up: a waiter registers (`waiters += 1`) before checking, and the shard publishes
//! the new offset before reading `waiters`; both are `SeqCst`, so one of them sees the other, and
//! a notification sent while the waiter checks waits for the mutex the waiter is about to release
//! into `Condvar::wait`.

use std::collections::BTreeMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Condvar, Mutex};
use std::time::Duration;

use crate::producer::{Ack, BatchAck};

/// Wakes the user threads waiting on one view.
#[derive(Default)]
pub(crate) struct Notifier {
    generation: Mutex<u64>,
    changed: Condvar,
    waiters: AtomicUsize,
}

impl Notifier {
    /// Called on a shard after publishing a change (offsets folded, a swap, an error).
    pub(crate) fn notify(&self) {
        if self.waiters.load(Ordering::SeqCst) > 0 {
            let mut generation =
                self.generation.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *generation = generation.wrapping_add(1);
            self.changed.notify_all();
        }
    }

    /// Re-checks `check` after every notification until it gives a result or `timeout` passes
    /// (then `None`).
    pub(crate) fn wait<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        // A timeout is wall time by nature; it decides nothing in a view's state.
        #[allow(clippy::disallowed_methods)]
        let deadline = std::time::Instant::now() + timeout;
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut generation =
            self.generation.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = loop {
            if let Some(result) = check() {
                break Some(result);
            }
            #[allow(clippy::disallowed_methods)]
            let now = std::time::Instant::now();
            if now >= deadline {
                break None;
            }
            generation = self
                .changed
                .wait_timeout(generation, deadline - now)
                .unwrap_or_else(std::sync::PoisonError::into_inner)
                .0;
        };
        drop(generation);
        self.waiters.fetch_sub(1, Ordering::SeqCst);
        result
    }
}

/// Per-partition offsets a view must have folded: partition -> the first offset *not* needed (so
/// every record below it is). Built from what producers return (`Ack`, `BatchAck`, slices of
/// them), or by hand with `Offsets::new().at(partition, next_offset)`.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Offsets(pub(crate) BTreeMap<u32, u64>);

impl Offsets {
    pub fn new() -> Self {
        Offsets::default()
    }

    /// Requires every record of `partition` below `next_offset`.
    pub fn at(mut self, partition: u32, next_offset: u64) -> Self {
        self.require(partition, next_offset);
        self
    }

    fn require(&mut self, partition: u32, next_offset: u64) {
        let slot = self.0.entry(partition).or_insert(0);
        *slot = (*slot).max(next_offset);
    }

    /// Partition and the first offset not required, in partition order.
    pub fn iter(&self) -> impl Iterator<Item = (u32, u64)> + '_ {
        self.0.iter().map(|(p, o)| (*p, *o))
    }

    pub fn is_empty(&self) -> bool {
        self.0.is_empty()
    }
}

impl From<Ack> for Offsets {
    fn from(ack: Ack) -> Self {
        Offsets::new().at(ack.partition, ack.offset + 1)
    }
}

impl From<&Ack> for Offsets {
    fn from(ack: &Ack) -> Self {
        Offsets::from(*ack)
    }
}

impl From<BatchAck> for Offsets {
    fn from(ack: BatchAck) -> Self {
        Offsets::new().at(ack.partition, ack.last_offset + 1)
    }
}

impl From<&BatchAck> for Offsets {
    fn from(ack: &BatchAck) -> Self {
        Offsets::from(*ack)
    }
}

impl From<&[BatchAck]> for Offsets {
    fn from(acks: &[BatchAck]) -> Self {
        let mut offsets = Offsets::new();
        for ack in acks {
            offsets.require(ack.partition, ack.last_offset + 1);
        }
        offsets
    }
}

impl From<&Vec<BatchAck>> for Offsets {
    fn from(acks: &Vec<BatchAck>) -> Self {
        Offsets::from(acks.as_slice())
    }
}

impl From<&[Ack]> for Offsets {
    fn from(acks: &[Ack]) -> Self {
        let mut offsets = Offsets::new();
        for ack in acks {
            offsets.require(ack.partition, ack.offset + 1);
        }
        offsets
    }
}

impl From<&Vec<Ack>> for Offsets {
    fn from(acks: &Vec<Ack>) -> Self {
        Offsets::from(acks.as_slice())
    }
}

impl Extend<BatchAck> for Offsets {
    fn extend<I: IntoIterator<Item = BatchAck>>(&mut self, acks: I) {
        for ack in acks {
            self.require(ack.partition, ack.last_offset + 1);
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn acks_become_next_offsets_per_partition() {
        let acks = vec![
            BatchAck { partition: 1, base_offset: 0, last_offset: 9 },
            BatchAck { partition: 0, base_offset: 5, last_offset: 7 },
            BatchAck { partition: 1, base_offset: 10, last_offset: 19 },
        ];
        let offsets = Offsets::from(&acks);
        assert_eq!(offsets.iter().collect::<Vec<_>>(), vec![(0, 8), (1, 20)]);
        assert_eq!(Offsets::from(Ack { partition: 2, offset: 0 }), Offsets::new().at(2, 1));
    }

    #[test]
    fn a_notification_wakes_a_waiter_and_a_timeout_ends_the_wait() {
        let notifier = std::sync::Arc::new(Notifier::default());
        let flag = std::sync::Arc::new(std::sync::atomic::AtomicBool::new(false));
        let waiter = {
            let (notifier, flag) = (notifier.clone(), flag.clone());
            std::thread::spawn(move || {
                notifier.wait(Duration::from_secs(60), || flag.load(Ordering::SeqCst).then_some(()))
            })
        };
        while notifier.waiters.load(Ordering::SeqCst) == 0 {
            std::thread::yield_now();
        }
        flag.store(true, Ordering::SeqCst);
        notifier.notify();
        assert_eq!(waiter.join().expect("waiter"), Some(()));
        assert_eq!(notifier.wait(Duration::from_millis(1), || None::<()>), None);
        assert_eq!(notifier.waiters.load(Ordering::SeqCst), 0);
    }
}
