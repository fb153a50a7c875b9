//! The read budget that keeps an executor's live writes ahead of its replay reads.
//!
//! Why: on a device without io_poll, glommio puts disk reads and writes on one ring (the main
//! ring), which the kernel takes in order, and the device queue behind it is first in, first out
//! too. A live write submitted after replay's read-ahead waits for every read in front of it:
//! issue 10 measured live appends queueing behind 16 x 1 MiB replay reads per reader. So reads
//! that share one `ReadAhead` (a shard hands the same one to every replay reader it runs: range
//! tasks and whole-partition replays) obey one budget, and the rule is:
//!
//! 1. **Together, not each**: all readers of a budget keep at most `depth` disk reads in flight
//!    (submitted, not completed) between them, so a live write queues behind at most `depth`
//!    replay reads. The shard's controller moves `depth` with the live latency it sees.
//! 2. **Writes first**: while a log on this executor has a write in flight (`writes_pending`),
//!    a reader of a budget starts a read only when none of the budget's reads is in flight: a
//!    write, or a burst of them, meets at most one new replay read in the ring.
//! 3. **Waits sleep**: a reader that needs its next read and has no room registers its waker and
//!    sleeps; it is woken when a read of the executor's budgets completes, when the executor's
//!    writes drain, or when a depth grows. Room always comes: there is no room only while one of
//!    the budget's reads is in flight, and its completion wakes the waiters.
//!
//! Read-ahead from memory (the tail cache) needs no budget. Readers without a `ReadAhead` (live
//! tail readers) keep the log's own `read_ahead_max` each, outside this rule.
//!
//! State is per executor (`thread_local!`), like the write-buffer pool: a shard is one thread.

use std::cell::{Cell, RefCell};
use std::future::Future;
use std::pin::Pin;
use std::rc::Rc;
use std::task::{Context, Poll, Waker};

thread_local! {
    /// Log writes in flight on this executor (`WritePending` guards alive).
    static WRITES_PENDING: Cell<usize> = const { Cell::new(0) };
    /// Readers of any budget on this executor waiting for room.
    static WAITERS: RefCell<Vec<Waker>> = const { RefCell::new(Vec::new()) };
}

/// How many log writes are in flight on this executor now.
pub fn writes_pending() -> usize {
    WRITES_PENDING.with(Cell::get)
}

/// Resolves once no log data write is in flight on this executor (checked now and whenever the
/// last one completes; fdatasyncs and a writer's steps before it submits are not counted): the
/// engine's accumulator appends staged batches early only then.
pub fn writes_drained() -> impl Future<Output = ()> {
    std::future::poll_fn(|cx| {
        if writes_pending() == 0 {
            return Poll::Ready(());
        }
        wait_for_wake_all(cx);
        Poll::Pending
    })
}

/// A log write in flight on this executor, from its submission to its completion (held by the
/// writer's write task).
pub(crate) struct WritePending(());

impl WritePending {
    pub(crate) fn new() -> WritePending {
        WRITES_PENDING.with(|w| w.set(w.get() + 1));
        WritePending(())
    }
}

impl Drop for WritePending {
    fn drop(&mut self) {
        let left = WRITES_PENDING.with(|w| {
            w.set(w.get() - 1);
            w.get()
        });
        if left == 0 {
            wake_all();
        }
    }
}

/// Registers the polling task for the next `wake_all` (once, however often it polls).
fn wait_for_wake_all(cx: &Context<'_>) {
    WAITERS.with(|w| {
        let mut waiters = w.borrow_mut();
        if !waiters.iter().any(|waker| waker.will_wake(cx.waker())) {
            waiters.push(cx.waker().clone());
        }
    });
}

fn wake_all() {
    let waiters = WAITERS.with(|w| std::mem::take(&mut *w.borrow_mut()));
    for waker in waiters {
        waker.wake();
    }
}

/// What a budget did since it was created: for tests and metrics.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct ReadBudgetStats {
    /// Disk reads in flight now, and the most at once.
    pub in_flight: usize,
    pub in_flight_peak: usize,
    /// Disk reads started, and of those the ones started while a log write was in flight.
    pub reads: u64,
    pub reads_while_writing: u64,
    /// The most reads in flight right after one was started while a log write was in flight.
    pub in_flight_peak_while_writing: usize,
    /// Times a reader found no room for the read it needed and slept.
    pub waits: u64,
}

/// The read budget shared by a group of readers (see the module docs), with the depth its owner
/// moves while they run. At least one read is always allowed. `!Send`: one executor's.
#[derive(Debug, Clone)]
pub struct ReadAhead(Rc<Budget>);

#[derive(Debug)]
struct Budget {
    depth: Cell<usize>,
    stats: Cell<ReadBudgetStats>,
}

impl ReadAhead {
    pub fn new(depth: usize) -> ReadAhead {
        ReadAhead(Rc::new(Budget {
            depth: Cell::new(depth.max(1)),
            stats: Cell::new(ReadBudgetStats::default()),
        }))
    }

    /// Takes effect at the readers' next planning step; reads already in flight finish.
    pub fn set(&self, depth: usize) {
        let grew = depth.max(1) > self.0.depth.get();
        self.0.depth.set(depth.max(1));
        if grew {
            wake_all();
        }
    }

    pub fn get(&self) -> usize {
        self.0.depth.get()
    }

    pub fn stats(&self) -> ReadBudgetStats {
        self.0.stats.get()
    }

    /// The reads the budget allows in flight now (rules 1 and 2).
    fn allowed(&self) -> usize {
        if writes_pending() > 0 {
            1
        } else {
            self.0.depth.get()
        }
    }

    /// Starts a read if the budget has room: the guard is held by the read until it completes.
    pub(crate) fn try_start(&self) -> Option<ReadInFlight> {
        let mut stats = self.0.stats.get();
        if stats.in_flight >= self.allowed() {
            return None;
        }
        stats.in_flight += 1;
        stats.in_flight_peak = stats.in_flight_peak.max(stats.in_flight);
        stats.reads += 1;
        if writes_pending() > 0 {
            stats.reads_while_writing += 1;
            stats.in_flight_peak_while_writing =
                stats.in_flight_peak_while_writing.max(stats.in_flight);
        }
        self.0.stats.set(stats);
        Some(ReadInFlight(self.0.clone()))
    }

    /// Sleeps until the budget may have room (rule 3); the caller tries again.
    pub(crate) fn room(&self) -> impl Future<Output = ()> + '_ {
        let mut stats = self.0.stats.get();
        stats.waits += 1;
        self.0.stats.set(stats);
        Room { budget: self, registered: false }
    }
}

/// A read of a budget in flight; its drop (the read completed, or was dropped) makes room.
pub(crate) struct ReadInFlight(Rc<Budget>);

impl Drop for ReadInFlight {
    fn drop(&mut self) {
        let mut stats = self.0.stats.get();
        stats.in_flight -= 1;
        self.0.stats.set(stats);
        wake_all();
    }
}

struct Room<'a> {
    budget: &'a ReadAhead,
    registered: bool,
}

impl Future for Room<'_> {
    type Output = ();
    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        // Woken (or room already): the caller tries again.
        if self.registered || self.budget.stats().in_flight < self.budget.allowed() {
            return Poll::Ready(());
        }
        wait_for_wake_all(cx);
        self.registered = true;
        Poll::Pending
    }
}
