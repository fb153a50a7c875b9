//! Single-executor building blocks for the Kafka front end: a change event, waiting for the first
//! of several futures, deadlines on the monotonic clock, and cross-shard calls.
//!
//! Everything here runs on one glommio executor (`!Send` state, no locks); the cross-shard call
//! sends a `Send` closure to another shard's job queue and awaits its reply on a flume channel
//! (flume wakes a parked glommio executor from any thread).

use std::cell::Cell;
use std::future::{poll_fn, Future};
use std::pin::Pin;
use std::task::Poll;
use std::time::Instant;

/// A future on the current executor (not `Send`).
pub(crate) type LocalFuture<'a, T> = Pin<Box<dyn Future<Output = T> + 'a>>;

/// "Something changed" (waiters re-check their own condition after every `notify`): the log's
/// executor-local event.
pub(crate) use kappa_storage::Event;

/// Bytes a shard holds in memory for Kafka at once (request frames, fetch responses). A holder
/// reserves before it allocates, may shrink its reservation to what it really used, and gives it
/// back when dropped. A reservation never waits forever: one larger than the whole budget is
/// refused by the caller first.
pub(crate) struct Budget {
    available: Cell<i64>,
    changed: Event,
}

/// A reservation, returned to its budget on drop.
pub(crate) struct Held {
    budget: std::rc::Rc<Budget>,
    bytes: Cell<i64>,
}

impl Budget {
    pub(crate) fn new(bytes: usize) -> std::rc::Rc<Budget> {
        std::rc::Rc::new(Budget {
            available: Cell::new(i64::try_from(bytes).unwrap_or(i64::MAX)),
            changed: Event::default(),
        })
    }

    /// Waits until `bytes` are free and takes them.
    pub(crate) async fn reserve(self: &std::rc::Rc<Self>, bytes: usize) -> Held {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        self.changed.wait_until(|| self.available.get() >= bytes).await;
        self.available.set(self.available.get() - bytes);
        Held { budget: self.clone(), bytes: Cell::new(bytes) }
    }

    #[cfg(test)]
    pub(crate) fn available(&self) -> i64 {
        self.available.get()
    }
}

impl Held {
    /// Sets the reservation to `bytes` now: shrinking frees the rest; growing (memory already
    /// spent, like a single batch larger than the asked maximum) is charged at once and paid
    /// back by later reservations waiting.
    pub(crate) fn resize(&self, bytes: usize) {
        let bytes = i64::try_from(bytes).unwrap_or(i64::MAX);
        let budget = &self.budget;
        budget.available.set(budget.available.get() + self.bytes.get() - bytes);
        self.bytes.set(bytes);
        budget.changed.notify();
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        let budget = &self.budget;
        budget.available.set(budget.available.get() + self.bytes.get());
        budget.changed.notify();
    }
}

/// Byte buffers a shard reuses for request frames and fetched batches. Frames and batches are
/// split off these buffers as `Bytes`; once every such `Bytes` is dropped (a produce drops its
/// frame when its append is done, a fetch its batches when the response is written) the
/// allocation goes to the next frame or batch. Fresh allocations of a megabyte or more come from
/// `mmap` or a trimmed heap, so without reuse every large request or fetched batch would fault
/// in (and zero) fresh pages. At most `max_buffers` buffers, each for items of at most
/// `max_bytes`, are kept: bounded memory whatever the connection count.
pub(crate) struct BufferPool {
    kept: std::cell::RefCell<Vec<bytes::BytesMut>>,
    max_buffers: usize,
    max_bytes: usize,
}

impl BufferPool {
    pub(crate) fn new(max_buffers: usize, max_bytes: usize) -> Self {
        BufferPool { kept: std::cell::RefCell::new(Vec::new()), max_buffers, max_bytes }
    }

    /// An empty buffer with room for `size` bytes: a kept one whose earlier bytes are all
    /// dropped (its allocation reused), else a new one.
    pub(crate) fn take(&self, size: usize) -> bytes::BytesMut {
        let mut kept = self.kept.borrow_mut();
        match kept.iter_mut().position(|b| b.try_reclaim(size)) {
            Some(at) => kept.swap_remove(at),
            None => bytes::BytesMut::with_capacity(size),
        }
    }

    /// Takes back a buffer an item of `size` bytes was split from (`BytesMut::split`); it is
    /// kept while there is room and the item was not larger than `max_bytes`.
    pub(crate) fn keep(&self, buffer: bytes::BytesMut, size: usize) {
        let mut kept = self.kept.borrow_mut();
        if size <= self.max_bytes && kept.len() < self.max_buffers {
            kept.push(buffer);
        }
    }
}

/// Monotonic time for protocol deadlines only (long polls, group sessions, rebalances): they
/// decide when to answer, never what is stored, so they need no `Clock`.
#[allow(clippy::disallowed_methods)]
pub(crate) fn now() -> Instant {
    Instant::now()
}

/// Sleeps until `deadline` (at once when it has passed).
pub(crate) async fn sleep_until(deadline: Instant) {
    let left = deadline.saturating_duration_since(now());
    if !left.is_zero() {
        glommio::timer::sleep(left).await;
    }
}

/// The output of whichever future finishes first; `None` for an empty list.
pub(crate) async fn first<T>(mut futures: Vec<LocalFuture<'_, T>>) -> Option<T> {
    if futures.is_empty() {
        return None;
    }
    poll_fn(|cx| {
        for future in futures.iter_mut() {
            if let Poll::Ready(value) = future.as_mut().poll(cx) {
                return Poll::Ready(Some(value));
            }
        }
        Poll::Pending
    })
    .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::rc::Rc;
    use std::time::Duration;

    fn run<F: Future<Output = ()> + 'static>(f: impl FnOnce() -> F + Send + 'static) {
        glommio::LocalExecutorBuilder::new(glommio::Placement::Unbound)
            .io_memory(1 << 20)
            .spawn(f)
            .expect("executor")
            .join()
            .expect("join");
    }

    #[test]
    fn event_wakes_waiters_and_first_takes_the_earliest() {
        run(|| async {
            let event = Rc::new(Event::default());
            let flag = Rc::new(Cell::new(false));
            let (e, f) = (event.clone(), flag.clone());
            let waiter = glommio::spawn_local(async move { e.wait_until(|| f.get()).await });
            glommio::timer::sleep(Duration::from_millis(5)).await;
            flag.set(true);
            event.notify();
            waiter.await;

            let slow: LocalFuture<'_, u32> = Box::pin(async {
                glommio::timer::sleep(Duration::from_secs(30)).await;
                1
            });
            let fast: LocalFuture<'_, u32> = Box::pin(async { 2 });
            assert_eq!(first(vec![slow, fast]).await, Some(2));
            assert_eq!(first::<u32>(Vec::new()).await, None);
        });
    }

    #[test]
    fn the_buffer_pool_reuses_an_allocation_once_its_bytes_are_dropped() {
        let pool = BufferPool::new(2, 1 << 20);
        let fill = |pool: &BufferPool, size: usize| {
            let mut buffer = pool.take(size);
            buffer.resize(size, 7);
            let item = buffer.split().freeze();
            pool.keep(buffer, size);
            item
        };
        let first = fill(&pool, 1000);
        let first_at = first.as_ptr();
        // Still referenced: the next item gets memory of its own.
        let second = fill(&pool, 1000);
        assert_ne!(second.as_ptr(), first_at);
        drop(first);
        // Dropped: its allocation is handed out again (no fresh pages).
        let third = fill(&pool, 1000);
        assert_eq!(third.as_ptr(), first_at);
        assert_eq!(&third[..], &[7u8; 1000][..]);
        // Bounded: at most 2 buffers, and none for items over the limit.
        drop((second, third));
        assert!(pool.kept.borrow().len() <= 2);
        // An item over max_bytes is not kept, one within it is. (Not checked by address: once
        // the pool lets go of a buffer, the allocator may well hand its address out again.)
        let pool = BufferPool::new(2, 1 << 20);
        drop(fill(&pool, 2 << 20));
        assert_eq!(pool.kept.borrow().len(), 0, "an item over max_bytes is not kept");
        drop(fill(&pool, 1 << 20));
        assert_eq!(pool.kept.borrow().len(), 1);
    }

    #[test]
    fn the_budget_waits_for_room_and_takes_back_what_is_dropped_or_shrunk() {
        run(|| async {
            let budget = Budget::new(100);
            let a = budget.reserve(80).await;
            let b2 = budget.clone();
            let waiting = glommio::spawn_local(async move { b2.reserve(50).await });
            glommio::timer::sleep(Duration::from_millis(5)).await;
            assert_eq!(budget.available(), 20, "the second reservation waits");
            a.resize(30);
            let b = waiting.await;
            assert_eq!(budget.available(), 20);
            b.resize(120); // a batch larger than asked for: charged at once
            assert_eq!(budget.available(), -50);
            drop(a);
            drop(b);
            assert_eq!(budget.available(), 100);
        });
    }
}
