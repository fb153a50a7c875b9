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
//!
//! That argument is checked by a loom model (`loom_models`, `cfg(loom)`, run by `.ci/run`): the
//! notifier's atomics, mutex and condvar are loom's there, and a lost wake-up shows as a
//! deadlock. Run with `RUSTFLAGS="--cfg loom -C target-cpu=x86-64-v3" CARGO_TARGET_DIR=target/loom
//! cargo test -p kappa-engine --lib loom_models`. It found that a plain load of `waiters` in
//! `notify` is not provably enough under loom's memory model (see `notify`).

use std::collections::BTreeMap;
use std::time::Duration;

#[cfg(loom)]
use loom::sync::{
    atomic::{AtomicUsize, Ordering},
    Condvar, Mutex,
};
#[cfg(not(loom))]
use std::sync::{
    atomic::{AtomicUsize, Ordering},
    Condvar, Mutex,
};

use crate::producer::{Ack, BatchAck};

/// Wakes the user threads waiting on one view.
pub(crate) struct Notifier {
    generation: Mutex<u64>,
    changed: Condvar,
    waiters: AtomicUsize,
}

impl Default for Notifier {
    fn default() -> Self {
        Notifier {
            generation: Mutex::new(0),
            changed: Condvar::new(),
            waiters: AtomicUsize::new(0),
        }
    }
}

impl Notifier {
    /// Called on a shard after publishing a change (offsets folded, a swap, an error).
    pub(crate) fn notify(&self) {
        // A read-modify-write, not a load: it reads the newest `waiters` in its modification
        // order and, paired with the waiter's `fetch_add`, orders the change published before it
        // for a waiter that registers after it (release on both sides). A plain SeqCst load is
        // enough in the C++ model (the store-load pair is totally ordered), but that argument
        // leans on SeqCst store-load ordering, which loom does not model: with a load, loom's
        // model reports a lost wake-up; with the RMW it proves none. One uncontended locked
        // instruction per folded batch.
        if self.waiters.fetch_add(0, Ordering::SeqCst) > 0 {
            let mut generation =
                self.generation.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
            *generation = generation.wrapping_add(1);
            self.changed.notify_all();
        }
    }

    /// Re-checks `check` after every notification until it gives a result or `timeout` passes
    /// (then `None`). A timeout too large for an `Instant` (`Duration::MAX`) never passes.
    // Under loom the deadline branch after the model's `continue` is unreachable.
    #[cfg_attr(loom, allow(unreachable_code))]
    pub(crate) fn wait<T>(
        &self,
        timeout: Duration,
        mut check: impl FnMut() -> Option<T>,
    ) -> Option<T> {
        // A timeout is wall time by nature; it decides nothing in a view's state.
        #[allow(clippy::disallowed_methods)]
        let deadline = std::time::Instant::now().checked_add(timeout);
        self.waiters.fetch_add(1, Ordering::SeqCst);
        let mut generation =
            self.generation.lock().unwrap_or_else(std::sync::PoisonError::into_inner);
        let result = loop {
            if let Some(result) = check() {
                break Some(result);
            }
            // loom has no clock: the model waits without a deadline, so a lost wake-up is a
            // deadlock it reports.
            #[cfg(loom)]
            {
                let _ = deadline;
                generation = self
                    .changed
                    .wait(generation)
                    .unwrap_or_else(std::sync::PoisonError::into_inner);
                continue;
            }
            generation = match deadline {
                Some(deadline) => {
                    #[allow(clippy::disallowed_methods)]
                    let now = std::time::Instant::now();
                    if now >= deadline {
                        break None;
                    }
                    self.changed
                        .wait_timeout(generation, deadline - now)
                        .unwrap_or_else(std::sync::PoisonError::into_inner)
                        .0
                }
                None => {
                    self.changed.wait(generation).unwrap_or_else(std::sync::PoisonError::into_inner)
                }
            };
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

#[cfg(all(test, not(loom)))]
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

/// loom models of the notifier: every interleaving of a shard publishing a change and notifying
/// against a user thread registering, checking and sleeping. A lost wake-up leaves the waiter
/// asleep forever, which loom reports as a deadlock.
#[cfg(all(test, loom))]
mod loom_models {
    use std::time::Duration;

    use loom::sync::atomic::{AtomicBool, AtomicU64, Ordering};
    use loom::sync::Arc;

    use super::Notifier;

    #[test]
    fn a_change_published_before_notify_always_wakes_the_waiter() {
        loom::model(|| {
            let notifier = Arc::new(Notifier::default());
            let folded = Arc::new(AtomicBool::new(false));
            let shard = {
                let (notifier, folded) = (notifier.clone(), folded.clone());
                loom::thread::spawn(move || {
                    folded.store(true, Ordering::SeqCst);
                    notifier.notify();
                })
            };
            let woke = notifier
                .wait(Duration::from_secs(1), || folded.load(Ordering::SeqCst).then_some(()));
            assert_eq!(woke, Some(()));
            shard.join().expect("shard");
        });
    }

    /// Two shards fold two partitions; the waiter needs both (`ViewHandle::wait_for` over
    /// several partitions), and wakes whatever order the changes and notifications land in.
    #[test]
    fn a_waiter_for_two_partitions_wakes_after_both_shards_notify() {
        // Three threads explore for minutes unbounded; three preemptions cover the interleavings
        // a lost wake-up needs (publish, check, register, notify), in seconds.
        let mut model = loom::model::Builder::new();
        model.preemption_bound = Some(3);
        model.check(|| {
            let notifier = Arc::new(Notifier::default());
            let folded = Arc::new([AtomicU64::new(0), AtomicU64::new(0)]);
            let shards: Vec<_> = (0..2)
                .map(|p| {
                    let (notifier, folded) = (notifier.clone(), folded.clone());
                    loom::thread::spawn(move || {
                        folded[p].store(10, Ordering::SeqCst);
                        notifier.notify();
                    })
                })
                .collect();
            let woke = notifier.wait(Duration::from_secs(1), || {
                folded.iter().all(|f| f.load(Ordering::SeqCst) >= 10).then_some(())
            });
            assert_eq!(woke, Some(()));
            for shard in shards {
                shard.join().expect("shard");
            }
        });
    }
}
